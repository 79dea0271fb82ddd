//! The etcd backend against real etcd servers started on loopback: the shared conformance suite, clusters, outages, TLS and auth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_catalog_etcd::{EtcdCatalog, EtcdOptions};
use autopilot_testkit::{Etcd, TempDir, endpoints, etcdctl, make_certs, make_certs_with};

fn opts(endpoints: &str, prefix: &str, ttl_s: u64) -> EtcdOptions {
    EtcdOptions {
        endpoints: endpoints.split(',').map(str::to_string).collect(),
        prefix: prefix.to_string(),
        lease_ttl: Duration::from_secs(ttl_s),
        ..Default::default()
    }
}

async fn connect(o: EtcdOptions, owner: &str) -> Arc<dyn Catalog> {
    Arc::new(
        EtcdCatalog::connect(o, owner)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn reg(id: &str, name: &str) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port: 80,
        tags: vec![],
        status: Status::Passing,
        ttl: Duration::from_secs(10),
        deregister_critical_after: None,
        seat: None,
    }
}

async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_single_node() {
    let dir = TempDir::new("etcd-conf");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let open = |agent: String| {
        let ep = ep.clone();
        async move { connect(opts(&ep, "/conformance", 2), &format!("agent-{agent}")).await }
    };
    autopilot_catalog::conformance::run_all(open, "etcd", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_environments_apart() {
    let dir = TempDir::new("etcd-prefix");
    let etcd = Etcd::single(&dir.0);
    let prod = connect(opts(&etcd.endpoint(), "/prod", 5), "p").await;
    let lab = connect(opts(&etcd.endpoint(), "/lab", 5), "l").await;
    prod.register(&reg("web-1", "web")).await.expect("register");
    assert_eq!(prod.instances("web").await.expect("read").len(), 1);
    assert!(lab.instances("web").await.expect("read").is_empty());
    assert!(lab.services().await.expect("read").is_empty());
    // The layout is readable with etcdctl.
    let keys = etcdctl(
        &etcd.endpoint(),
        &["get", "--prefix", "--keys-only", "/prod/instances/"],
    );
    assert!(keys.contains("/prod/instances/web/web-1"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_three_is_invisible() {
    let dir = TempDir::new("etcd-three");
    let mut cluster = Etcd::cluster(&dir.0, 3);
    let eps = endpoints(&cluster);
    let a = connect(opts(&eps, "/t", 5), "a").await;
    let b = connect(opts(&eps, "/t", 5), "b").await;
    let mut changes = b.changes();
    a.register(&reg("web-a", "web")).await.expect("register");
    cluster[0].kill();
    // Registration, status writes, keep-alives and watches go on.
    let t = Instant::now();
    let ok = eventually(Duration::from_secs(10), async || {
        a.register(&reg("web-b", "web")).await.is_ok()
    })
    .await;
    assert!(ok, "writes fail over to another member");
    eprintln!("first write after the member loss took {:?}", t.elapsed());
    assert!(
        a.set_status("web-a", Status::Critical)
            .await
            .expect("status")
    );
    assert_eq!(a.keep_alive().await.expect("keep-alive"), 2);
    changes.borrow_and_update();
    a.deregister("web-b").await.expect("deregister");
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("watch still live")
        .expect("open");
    let got = b.instances("web").await.expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, Status::Critical);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_across_a_reconnect_misses_no_change() {
    let dir = TempDir::new("etcd-reconnect");
    let mut cluster = Etcd::cluster(&dir.0, 3);
    // The watcher talks to m0 only; the writer to the other two.
    let watcher = connect(opts(&cluster[0].endpoint(), "/t", 5), "w").await;
    let writer = connect(opts(&endpoints(&cluster[1..]), "/t", 5), "x").await;
    let mut changes = watcher.changes();
    changes.borrow_and_update();
    cluster[0].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = eventually(Duration::from_secs(10), async || {
        writer.register(&reg("db-1", "db")).await.is_ok()
    })
    .await;
    assert!(
        ok,
        "the writer's side of the cluster keeps working while the watcher is cut off"
    );
    changes.borrow_and_update();
    cluster[0].restart();
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the change made during the outage is delivered after reconnecting")
        .expect("open");
    assert_eq!(watcher.instances("db").await.expect("read").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_restored_after_etcd_returns() {
    let dir = TempDir::new("etcd-outage");
    let mut etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let a = connect(opts(&ep, "/t", 2), "a").await;
    a.register(&reg("svc-1", "svc")).await.expect("register");
    etcd.kill();
    assert!(
        a.keep_alive().await.is_err(),
        "an unreachable cluster is an error, not a hang"
    );
    assert!(
        a.instances("svc").await.is_err(),
        "and never an empty answer"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.restart();
    let t = Instant::now();
    let back = eventually(Duration::from_secs(5), async || {
        let _ = a.keep_alive().await;
        a.instances("svc")
            .await
            .map(|v| v.len() == 1)
            .unwrap_or(false)
    })
    .await;
    assert!(back, "registration restored");
    eprintln!("restored {:?} after etcd answered again", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_expires_with_its_lease() {
    let dir = TempDir::new("etcd-lease");
    let etcd = Etcd::single(&dir.0);
    let a = connect(opts(&etcd.endpoint(), "/t", 2), "a").await;
    let b = connect(opts(&etcd.endpoint(), "/t", 2), "b").await;
    a.register(&reg("x-1", "x")).await.expect("register");
    drop(a);
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(8), async || b
            .instances("x")
            .await
            .expect("read")
            .is_empty())
        .await
    );
    eprintln!("gone after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = TempDir::new("etcd-tls");
    let server = make_certs(&dir.0, "server");
    let client = make_certs(&dir.0, "client");
    let etcd = Etcd::single_tls(&dir.0, server.clone());
    let mut o = opts(&etcd.endpoint(), "/tls", 5);
    o.ca = Some(client.ca.clone());
    o.cert = Some(client.cert.clone());
    o.key = Some(client.key.clone());
    let c = connect(o.clone(), "a").await;
    c.register(&reg("s-1", "s"))
        .await
        .expect("register over TLS");
    assert_eq!(c.instances("s").await.expect("read").len(), 1);
    // Without a client certificate the server refuses.
    let mut anon = o.clone();
    anon.cert = None;
    anon.key = None;
    let e = EtcdCatalog::connect(anon, "b")
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("etcd://"), "{e}");
    // Without TLS at all, too.
    let plain = opts(&etcd.endpoint(), "/tls", 5);
    assert!(EtcdCatalog::connect(plain, "c").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password_auth_and_clear_errors() {
    let dir = TempDir::new("etcd-auth");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    autopilot_testkit::enable_auth(&ep, "agent", "agentpw", "/prod");

    let mut o = opts(&ep, "/prod", 5);
    o.username = Some("agent".into());
    o.password = Some("agentpw".into());
    let c = connect(o.clone(), "a").await;
    c.register(&reg("s-1", "s"))
        .await
        .expect("register with auth");

    let mut bad = o.clone();
    bad.password = Some("wrong".into());
    let e = EtcdCatalog::connect(bad, "b")
        .await
        .err()
        .expect("bad password refused")
        .to_string();
    assert!(e.contains("authentication failed"), "{e}");

    let mut other = o.clone();
    other.prefix = "/staging".into();
    let e = EtcdCatalog::connect(other, "c")
        .await
        .err()
        .expect("prefix refused")
        .to_string();
    assert!(e.contains("not allowed to use the prefix /staging"), "{e}");

    let mut bad_prefix = o.clone();
    bad_prefix.prefix = "prod".into();
    let e = EtcdCatalog::connect(bad_prefix, "d")
        .await
        .err()
        .expect("invalid prefix")
        .to_string();
    assert!(e.contains("must start with '/'"), "{e}");

    let port = autopilot_testkit::free_port();
    let e = EtcdCatalog::connect(opts(&format!("127.0.0.1:{port}"), "/prod", 5), "e")
        .await
        .err()
        .expect("no server")
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// Calls `keep_alive` as the registrar does (every 100 ms while failing)
/// until `b` lists `id` under `service`; returns how long that took.
async fn until_listed(
    a: &Arc<dyn Catalog>,
    b: &Arc<dyn Catalog>,
    service: &str,
    id: &str,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let _ = a.keep_alive().await;
        if let Ok(list) = b.instances(service).await
            && list.iter().any(|i| i.id == id)
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Every request made while etcd is stalled returns (an error) within its
/// deadline instead of hanging.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(8), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung past its deadline on a stalled etcd"));
    eprintln!(
        "{what} returned after {:?} on a stalled etcd",
        started.elapsed()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_in_a_stall_is_replaced_and_held_locks_are_dropped() {
    let dir = TempDir::new("etcd-stall");
    let etcd = Etcd::single(&dir.0);
    let a = connect(opts(&etcd.endpoint(), "/stall", 2), "a").await;
    let b = connect(opts(&etcd.endpoint(), "/stall", 30), "b").await;
    a.register(&reg("web-1", "web")).await.expect("register");
    a.keep_alive().await.expect("keep-alive");
    a.lock("held").await.expect("lock");
    let me = autopilot_catalog::Candidate {
        id: "a".into(),
        address: "127.0.0.1".into(),
        port: 1,
    };
    let t1 = a
        .campaign("stall", &me, Duration::from_secs(2))
        .await
        .expect("campaign")
        .expect("a leads");

    // A stall three times the lease TTL.
    etcd.pause();
    let stalled = Instant::now();
    assert!(bounded("keep_alive", a.keep_alive()).await.is_err());
    assert!(
        bounded("campaign", a.campaign("stall", &me, Duration::from_secs(2)))
            .await
            .is_err()
    );
    assert!(bounded("instances", a.instances("web")).await.is_err());
    assert!(bounded("resign", a.resign("nothing-held")).await.is_ok());
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(stalled.elapsed())).await;
    etcd.resume();

    let took = until_listed(&a, &b, "web", "web-1", Duration::from_secs(10))
        .await
        .expect("the entry returns after the stall");
    eprintln!("entry back {took:?} after etcd resumed");
    assert!(
        took < Duration::from_secs(1),
        "entry back within 1 s: {took:?}"
    );
    // The seat's lease expired too: campaigning wins a new term.
    let t2 = a
        .campaign("stall", &me, Duration::from_secs(2))
        .await
        .expect("campaign")
        .expect("a leads again");
    assert!(t2 > t1);
    // The held lock died with the lease: b can take it, and a does not
    // believe it still holds it (its lock call waits like anyone's).
    tokio::time::timeout(Duration::from_secs(5), b.lock("held"))
        .await
        .expect("b is granted the lock a lost")
        .expect("lock");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), a.lock("held"))
            .await
            .is_err(),
        "a must not silently re-acquire a lock it lost"
    );
    b.unlock("held").await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_restart_restores_entries_and_watches_follow_the_new_cluster() {
    let dir = TempDir::new("etcd-empty");
    let mut etcd = Etcd::single(&dir.0);
    let a = connect(opts(&etcd.endpoint(), "/empty", 2), "a").await;
    let b = connect(opts(&etcd.endpoint(), "/empty", 30), "b").await;
    // Enough history that the old revision is far ahead of the new cluster's.
    for i in 0..30 {
        b.kv_put("filler", &i.to_string()).await.expect("put");
    }
    a.register(&reg("web-1", "web")).await.expect("register");
    a.keep_alive().await.expect("keep-alive");
    let mut changes = b.changes();

    etcd.restart_empty();
    let took = until_listed(&a, &b, "web", "web-1", Duration::from_secs(10))
        .await
        .expect("the entry returns after an empty restart");
    eprintln!("entry back {took:?} after etcd answered");
    assert!(
        took < Duration::from_secs(1),
        "entry back within 1 s: {took:?}"
    );

    // The watch follows the new cluster: a change made now wakes readers.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(3) {
        changes.borrow_and_update();
        if tokio::time::timeout(Duration::from_millis(300), changes.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    changes.borrow_and_update();
    b.kv_put("after", "1").await.expect("put");
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("a change after the restart wakes readers")
        .expect("watch alive");
}

/// Connects with TLS material that is wrong in one way; returns the error.
async fn tls_error(
    endpoint: &str,
    ca: &std::path::Path,
    client: &autopilot_testkit::Tls,
) -> String {
    let mut o = opts(endpoint, "/tls", 5);
    o.ca = Some(ca.to_path_buf());
    o.cert = Some(client.cert.clone());
    o.key = Some(client.key.clone());
    let e = EtcdCatalog::connect(o, "t")
        .await
        .err()
        .expect("a TLS mistake is refused")
        .to_string();
    eprintln!("{e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_say_what_is_wrong() {
    let dir = TempDir::new("etcd-tlsbad");
    let good = dir.0.join("good");
    let other = dir.0.join("other");
    for d in [
        &good,
        &other,
        &dir.0.join("a"),
        &dir.0.join("b"),
        &dir.0.join("c"),
    ] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let server = make_certs(&good, "server");
    let client = make_certs(&good, "client");
    let expired = make_certs_with(&good, "expired", "IP:127.0.0.1,DNS:localhost", -1);
    let misnamed = make_certs_with(&good, "misnamed", "DNS:example.com", 2);
    let stranger = make_certs(&other, "stranger");
    let etcd = Etcd::single_tls(&dir.0.join("a"), server.clone());

    // A CA that did not sign the server's certificate.
    let e = tls_error(&etcd.endpoint(), &stranger.ca, &client).await;
    assert!(
        e.contains("not signed by") && e.contains(&stranger.ca.display().to_string()),
        "{e}"
    );
    // A file that is not PEM.
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("junk");
    let e = tls_error(&etcd.endpoint(), &junk, &client).await;
    assert!(
        e.contains("PEM") && e.contains(&junk.display().to_string()),
        "{e}"
    );
    let bad_key = autopilot_testkit::Tls {
        key: junk.clone(),
        ..client.clone()
    };
    let e = tls_error(&etcd.endpoint(), &server.ca, &bad_key).await;
    assert!(e.contains("PEM") && e.contains("client key"), "{e}");
    // Our own client certificate has expired: said before connecting (the
    // server would drop the connection without a reason).
    let e = tls_error(&etcd.endpoint(), &server.ca, &expired).await;
    assert!(
        e.contains("client certificate")
            && e.contains("expired on")
            && e.contains(&expired.cert.display().to_string()),
        "{e}"
    );
    drop(etcd);

    // The server's certificate has expired.
    let etcd = Etcd::single_tls(&dir.0.join("b"), expired.clone());
    let e = tls_error(&etcd.endpoint(), &server.ca, &client).await;
    assert!(
        e.contains("has expired") && e.contains(&server.ca.display().to_string()),
        "{e}"
    );
    drop(etcd);

    // The server's certificate is for another host name.
    let etcd = Etcd::single_tls(&dir.0.join("c"), misnamed.clone());
    let e = tls_error(&etcd.endpoint(), &server.ca, &client).await;
    assert!(
        e.contains("not valid for") && e.contains("127.0.0.1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_queues_again_on_the_new_lease() {
    let dir = TempDir::new("etcd-lockwait");
    let etcd = Etcd::single(&dir.0);
    let a = connect(opts(&etcd.endpoint(), "/lockwait", 2), "a").await;
    let b = connect(opts(&etcd.endpoint(), "/lockwait", 30), "b").await;
    b.lock("l").await.expect("b holds the lock");
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("l").await })
    };
    // a waits; then a stall far past a's TTL (but not b's) kills a's lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    etcd.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.resume();
    // a's session renews as the registrar would: a new lease.
    let renewed = Instant::now();
    while renewed.elapsed() < Duration::from_secs(5) && a.keep_alive().await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if waiter.is_finished() {
        panic!(
            "b still holds the lock, yet a's wait ended: {:?}",
            waiter.await
        );
    }
    b.unlock("l").await.expect("unlock");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter gets the lock once b lets go")
        .expect("join");
    got.expect("lock");
    // a holds it on its live lease: it outlasts the old lease's TTL while
    // a keeps its session alive, so b waits.
    let held = Instant::now();
    let b_waits = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("l").await })
    };
    while held.elapsed() < Duration::from_secs(4) {
        a.keep_alive().await.expect("keep-alive");
        assert!(!b_waits.is_finished(), "a's lock died with a lease");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.unlock("l").await.expect("unlock");
    tokio::time::timeout(Duration::from_secs(5), b_waits)
        .await
        .expect("b gets it after a")
        .expect("join")
        .expect("lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_terms_keep_growing_after_etcd_loses_its_data() {
    use autopilot_catalog::Candidate;
    let dir = TempDir::new("etcd-terms");
    let mut etcd = Etcd::single(&dir.0);
    let c = connect(opts(&etcd.endpoint(), "/terms", 3), "a").await;
    let me = Candidate {
        id: "a".into(),
        address: "127.0.0.1".into(),
        port: 1,
    };
    let ttl = Duration::from_secs(2);
    // History, so the old cluster's revisions are far ahead of a new one's
    // (terms taken from revisions would go backwards after the restart).
    for i in 0..30 {
        c.kv_put("filler", &i.to_string()).await.expect("put");
    }
    let mut last = 0;
    // Terms grow with every new seat, whatever else is written meanwhile.
    for i in 0..3 {
        c.kv_put(&format!("noise/{i}"), "x").await.expect("put");
        let t = c
            .campaign("db", &me, ttl)
            .await
            .expect("campaign")
            .expect("wins");
        assert!(t > last, "term {t} after {last}");
        assert_eq!(
            c.leader("db").await.expect("leader").map(|l| l.term),
            Some(t)
        );
        last = t;
        c.resign("db").await.expect("resign");
    }
    // etcd comes back empty: its revisions (and the term counter) restart,
    // but a term granted now is still above every term granted before.
    etcd.restart_empty();
    let mut t = None;
    for _ in 0..100 {
        if let Ok(Some(won)) = c.campaign("db", &me, ttl).await {
            t = Some(won);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = t.expect("wins on the new cluster");
    assert!(t > last, "the fencing token went back from {last} to {t}");
    c.resign("db").await.expect("resign");
}

/// etcd's count of gRPC streams or unary calls started for `method`.
fn started(etcd: &Etcd, method: &str) -> f64 {
    autopilot_testkit::metric_sum(
        &etcd.metrics().expect("etcd metrics"),
        "grpc_server_started_total",
        &[&format!("grpc_method=\"{method}\"")],
    )
}

/// Whether a change receiver was bumped since it was last marked seen.
fn bumped(rx: &mut tokio::sync::watch::Receiver<u64>) -> bool {
    let b = rx.has_changed().unwrap_or(false);
    rx.borrow_and_update();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_under_a_prefix_wake_only_its_readers_and_starting_agents_wake_nobody() {
    let dir = TempDir::new("etcd-demux");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let a = connect(opts(&ep, "/dm", 10), "a").await;
    let mut web = a.changes_under("instances/web/");
    let mut key = a.changes_under("kv/_fleet/maintenance/n1");
    let mut all = a.changes();
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    // Agents connecting (the start-up check) and taking their session
    // lease (the agents/ key) wake no watcher at all.
    let revision = |t: &str| {
        t.lines()
            .find_map(|l| l.split("\"revision\":").nth(1))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rev0 = revision(&etcdctl(&ep, &["endpoint", "status", "-w", "json"]));
    let mut others: Vec<Arc<dyn Catalog>> = Vec::new();
    for i in 0..5 {
        others.push(connect(opts(&ep, "/dm", 10), &format!("o{i}")).await);
    }
    let rev1 = revision(&etcdctl(&ep, &["endpoint", "status", "-w", "json"]));
    assert_eq!(rev0, rev1, "connecting wrote to etcd");
    // A session lease and its agents/ key: outside the watched range.
    others[0]
        .register(&reg("db-o0", "db"))
        .await
        .expect("register");
    settle().await;
    assert!(bumped(&mut all), "an instance write wakes changes()");
    assert!(!bumped(&mut web), "a db entry woke the web readers");
    assert!(!bumped(&mut key), "a db entry woke the intent reader");
    others[1]
        .register(&reg("web-o1", "web"))
        .await
        .expect("register");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), web.changed())
            .await
            .is_ok(),
        "a web entry did not wake the web readers"
    );
    web.borrow_and_update();
    settle().await;
    assert!(!bumped(&mut key));
    others[2]
        .kv_put("_fleet/maintenance/n1", "{}")
        .await
        .expect("put");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), key.changed())
            .await
            .is_ok()
    );
    key.borrow_and_update();
    others[2]
        .kv_put("_fleet/maintenance/n10", "{}")
        .await
        .expect("put");
    settle().await;
    // A byte prefix: n10 starts with n1 (readers of one key re-check it).
    assert!(bumped(&mut key));
    assert!(!bumped(&mut web));
    // Locks and sessions of other agents: no reader of web or the key wakes.
    assert!(others[3].try_lock("x").await.expect("try_lock"));
    settle().await;
    assert!(!bumped(&mut web) && !bumped(&mut key));
    // The same prefix asked twice shares one counter; a receiver dropped
    // and asked again still sees later changes.
    let mut web2 = a.changes_under("instances/web/");
    drop(web);
    others[1].deregister("web-o1").await.expect("deregister");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), web2.changed())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_lease_keeps_one_keep_alive_stream() {
    let dir = TempDir::new("etcd-seat-stream");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let a = connect(opts(&ep, "/ss", 10), "a").await;
    let me = autopilot_catalog::Candidate {
        id: "db-a".into(),
        address: "127.0.0.1".into(),
        port: 5432,
    };
    let ttl = Duration::from_secs(3);
    let term = a.campaign("e", &me, ttl).await.expect("campaign");
    assert!(term.is_some());
    let before = started(&etcd, "LeaseKeepAlive");
    for _ in 0..10 {
        assert_eq!(a.campaign("e", &me, ttl).await.expect("renew"), term);
    }
    let streams = started(&etcd, "LeaseKeepAlive") - before;
    assert!(
        streams <= 1.0,
        "10 renewals opened {streams} keep-alive streams"
    );
    // Resigning ends the seat (and its stream); winning again works.
    a.resign("e").await.expect("resign");
    let again = a.campaign("e", &me, ttl).await.expect("campaign");
    assert!(again > term);
    assert_eq!(a.campaign("e", &me, ttl).await.expect("renew"), again);
}
