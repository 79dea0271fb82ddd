//! The conformance suite every catalog backend must pass, run by each backend's own tests against a real store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Catalog, Registration, Status};

fn reg(id: &str, name: &str, port: u16, ttl_ms: u64) -> Registration {
    Registration {
        id: id.to_string(),
        name: name.to_string(),
        address: "127.0.0.1".to_string(),
        port,
        tags: vec!["a".into(), "b".into()],
        status: Status::Passing,
        ttl: Duration::from_millis(ttl_ms),
        deregister_critical_after: None,
        seat: None,
    }
}

async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs every check. `open(agent)` must open a new session (a new agent)
/// on the same store each time it is called; `tag` keeps service names of
/// concurrent runs apart; `expiry` bounds how long an entry outlives its
/// last keep-alive (the entry TTL of 1 s, or the backend's lease TTL).
pub async fn run_all<F, Fut>(open: F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    register_read_and_status(&open, tag).await;
    sessions_share_but_own_their_entries(&open, tag).await;
    expiry_keep_alive_and_change_notification(&open, tag, expiry).await;
    deregister_critical_after(&open, tag).await;
    hostile_data_round_trips(&open, tag).await;
    key_value(&open, tag).await;
    locks_exclude_and_expire(&open, tag, expiry).await;
    try_locks(&open, tag, expiry).await;
    elections(&open, tag, expiry).await;
    seat_bound_entries(&open, tag, expiry).await;
    end_seat(&open, tag).await;
}

/// Another session ends a seat at once, but only the seat it names: the
/// bound entry goes with it, watchers hear of it, the seat is free for
/// the next campaign, and a seat won again since (a higher term) or held
/// by another id is never touched.
async fn end_seat<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    use crate::{Candidate, Leader, Seat};
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let election = format!("end-{tag}");
    let service = format!("end-primary-{tag}");
    let me = |id: &str, port| Candidate {
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
    };
    // Long enough that only `end_seat` can free the seat within the test.
    let ttl = Duration::from_secs(30);
    let bound = |term: u64| Registration {
        seat: Some(Seat {
            election: election.clone(),
            term,
        }),
        ..reg("a-1", &service, 1, 60_000)
    };
    let gone = Leader {
        id: "a-1".into(),
        address: "127.0.0.1".into(),
        port: 1,
        term: 1,
    };
    assert!(
        !b.end_seat(&election, &gone).await.expect("end_seat"),
        "no seat: nothing ended"
    );

    let t1 = a
        .campaign(&election, &me("a-1", 1), ttl)
        .await
        .expect("campaign")
        .expect("a wins");
    a.register(&bound(t1)).await.expect("bound entry");
    let held = b.leader(&election).await.expect("leader").expect("held");
    assert_eq!((held.id.as_str(), held.term), ("a-1", t1));

    // The wrong id, or another term, is not this seat.
    let wrong_id = Leader {
        id: "b-1".into(),
        ..held.clone()
    };
    assert!(!b.end_seat(&election, &wrong_id).await.expect("end_seat"));
    let later = Leader {
        term: t1 + 1,
        ..held.clone()
    };
    assert!(!b.end_seat(&election, &later).await.expect("end_seat"));
    assert_eq!(
        b.leader(&election).await.expect("leader"),
        Some(held.clone())
    );
    assert_eq!(b.instances(&service).await.expect("read").len(), 1);

    // The right one ends at once, with its bound entry, and wakes watchers.
    let mut changes = b.changes();
    changes.borrow_and_update();
    assert!(b.end_seat(&election, &held).await.expect("end_seat"));
    assert_eq!(b.leader(&election).await.expect("leader"), None);
    assert!(
        b.instances(&service).await.expect("read").is_empty(),
        "the bound entry went with the seat"
    );
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("an ended seat is notified")
        .expect("notifier alive");
    assert!(
        !b.end_seat(&election, &held).await.expect("end_seat"),
        "ending it twice ends nothing"
    );

    // The seat is free at once, and a seat won again is never touched by
    // a request naming the ended one.
    let t2 = a
        .campaign(&election, &me("a-1", 1), ttl)
        .await
        .expect("campaign")
        .expect("the seat is free at once");
    assert!(t2 > t1, "a new seat has a higher term: {t1} then {t2}");
    a.register(&bound(t2)).await.expect("bound entry");
    assert!(!b.end_seat(&election, &held).await.expect("end_seat"));
    let again = b.leader(&election).await.expect("leader").expect("held");
    assert_eq!((again.id.as_str(), again.term), ("a-1", t2));
    assert_eq!(b.instances(&service).await.expect("read").len(), 1);
    assert_eq!(
        a.campaign(&election, &me("a-1", 1), ttl)
            .await
            .expect("renew"),
        Some(t2),
        "the holder still renews its seat"
    );

    // b takes the freed seat at once after ending a's.
    assert!(b.end_seat(&election, &again).await.expect("end_seat"));
    let t3 = b
        .campaign(&election, &me("b-1", 2), ttl)
        .await
        .expect("campaign")
        .expect("b wins the ended seat at once");
    assert!(t3 > t2);
    assert!(b.instances(&service).await.expect("read").is_empty());
    b.resign(&election).await.expect("resign");
    a.deregister("a-1").await.expect("cleanup");
}

/// An entry bound to an election seat lives and dies with the seat: it is
/// refused without the seat, disappears when the leader resigns, and
/// disappears together with an abandoned seat, never after it, so a reader
/// never sees two leaders' entries.
async fn seat_bound_entries<F, Fut>(open: &F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    use crate::{Candidate, CatalogError, Seat};
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let election = format!("seat-{tag}");
    let service = format!("seat-primary-{tag}");
    let me = |id: &str, port| Candidate {
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
    };
    let ttl = Duration::from_secs(2);
    let bound = |id: &str, port: u16, term: u64| Registration {
        seat: Some(Seat {
            election: election.clone(),
            term,
        }),
        // The session's own entries outlive the seat by far: only the seat
        // can make the bound entry disappear this early.
        ..reg(id, &service, port, 60_000)
    };
    // Without the seat: refused, and nothing is written.
    match a.register(&bound("a-1", 1, 1)).await {
        Err(CatalogError::SeatLost { .. }) => {}
        other => panic!("a bound entry without its seat must be refused, got {other:?}"),
    }
    assert!(a.instances(&service).await.expect("read").is_empty());

    let t1 = a
        .campaign(&election, &me("a-1", 1), ttl)
        .await
        .expect("campaign")
        .expect("a wins");
    // A stale term is not the seat held now.
    if t1 > 1 {
        assert!(matches!(
            a.register(&bound("a-1", 1, t1 - 1)).await,
            Err(CatalogError::SeatLost { .. })
        ));
    }
    a.register(&bound("a-1", 1, t1)).await.expect("bound entry");
    assert_eq!(a.instances(&service).await.expect("read").len(), 1);
    // Status changes keep the binding.
    assert!(a.set_status("a-1", Status::Critical).await.expect("status"));
    assert!(a.set_status("a-1", Status::Passing).await.expect("status"));
    assert_eq!(b.instances(&service).await.expect("read").len(), 1);

    // Resigning ends the entry with the seat.
    a.resign(&election).await.expect("resign");
    assert!(
        b.instances(&service).await.expect("read").is_empty(),
        "a resigned leader's bound entry is gone at once"
    );
    // Its keep-alive does not bring it back.
    a.keep_alive().await.expect("keep-alive");
    assert!(b.instances(&service).await.expect("read").is_empty());

    // A seat that is abandoned (its holder stops renewing) takes the entry
    // with it: at no instant does b's new seat coexist with a's entry.
    let t2 = a
        .campaign(&election, &me("a-1", 1), ttl)
        .await
        .expect("campaign")
        .expect("a wins again");
    assert!(t2 > t1);
    a.register(&bound("a-1", 1, t2)).await.expect("bound entry");
    let start = Instant::now();
    let mut won = None;
    while won.is_none() && start.elapsed() < ttl + expiry + Duration::from_secs(3) {
        // a keeps its session alive but not its seat.
        a.keep_alive().await.expect("keep-alive");
        // Two reads cannot be one snapshot: judge the entries only when the
        // seat is the same before and after reading them.
        let before = b.leader(&election).await.expect("leader");
        let listed = b.instances(&service).await.expect("read");
        let after = b.leader(&election).await.expect("leader");
        if before == after {
            match (&after, listed.len()) {
                (Some(l), 1) => assert_eq!(l.term, t2, "the entry listed is the live seat's"),
                (Some(l), n) => panic!("{n} entries listed under the seat of term {}", l.term),
                (None, 0) => {}
                (None, n) => panic!("{n} entries listed with no seat"),
            }
        }
        won = b
            .campaign(&election, &me("b-1", 2), ttl)
            .await
            .expect("campaign");
        if won.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let t3 = won.expect("the abandoned seat expires");
    assert!(t3 > t2);
    assert!(
        b.instances(&service).await.expect("read").is_empty(),
        "the old leader's entry went with its seat"
    );
    // Writing to the lost seat is refused, not resurrected.
    assert!(matches!(
        a.register(&bound("a-1", 1, t2)).await,
        Err(CatalogError::SeatLost { .. })
    ));
    b.register(&Registration {
        seat: Some(Seat {
            election: election.clone(),
            term: t3,
        }),
        ..reg("b-1", &service, 2, 60_000)
    })
    .await
    .expect("the new leader's entry");
    let listed = a.instances(&service).await.expect("read");
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["b-1"]
    );
    b.resign(&election).await.expect("resign");
    a.deregister("a-1").await.expect("cleanup");
}

async fn elections<F, Fut>(open: &F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    use crate::Candidate;
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let name = format!("primary-{tag}");
    let me = |id: &str, port| Candidate {
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
    };
    let ttl = Duration::from_secs(2);
    assert_eq!(a.leader(&name).await.expect("leader"), None);
    let t1 = a
        .campaign(&name, &me("a", 1), ttl)
        .await
        .expect("campaign")
        .expect("a wins");
    assert_eq!(
        b.campaign(&name, &me("b", 2), ttl).await.expect("campaign"),
        None,
        "one leader"
    );
    assert_eq!(
        a.campaign(&name, &me("a", 1), ttl).await.expect("renew"),
        Some(t1),
        "renewal keeps the term"
    );
    let l = b
        .leader(&name)
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!((l.id.as_str(), l.port, l.term), ("a", 1, t1));
    a.resign(&name).await.expect("resign");
    let t2 = b
        .campaign(&name, &me("b", 2), ttl)
        .await
        .expect("campaign")
        .expect("b wins after a resigns");
    assert!(t2 > t1, "fencing tokens strictly increase: {t1} then {t2}");
    // b stops renewing: after the TTL, a can win with a higher term.
    let start = Instant::now();
    let mut t3 = None;
    while t3.is_none() && start.elapsed() < ttl + expiry + Duration::from_secs(3) {
        t3 = a.campaign(&name, &me("a", 1), ttl).await.expect("campaign");
        if t3.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let t3 = t3.expect("an abandoned leadership expires");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "not before the TTL: {:?}",
        start.elapsed()
    );
    assert!(t3 > t2);
    a.resign(&name).await.expect("resign");
}

async fn key_value<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let k = |s: &str| format!("kv-{tag}/{s}");
    assert_eq!(a.kv_get(&k("x")).await.expect("get"), None);
    let mut changes = b.changes();
    changes.borrow_and_update();
    a.kv_put(&k("x"), "1").await.expect("put");
    // Templates re-render on key writes, so they are notified like registrations.
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("a key write is notified")
        .expect("notifier alive");
    assert_eq!(b.kv_get(&k("x")).await.expect("get").as_deref(), Some("1"));
    assert!(
        !b.kv_cas(&k("x"), Some("0"), "2").await.expect("cas"),
        "wrong expectation"
    );
    assert!(b.kv_cas(&k("x"), Some("1"), "2").await.expect("cas"));
    assert!(!a.kv_cas(&k("x"), None, "3").await.expect("cas"), "exists");
    assert!(
        a.kv_cas(&k("y"), None, "new").await.expect("cas"),
        "create if absent"
    );
    a.kv_put(&k("z/deep"), "weird \"value\"\n")
        .await
        .expect("put");
    let listed = a.kv_list(&k("")).await.expect("ls");
    assert_eq!(
        listed,
        vec![
            (k("x"), "2".into()),
            (k("y"), "new".into()),
            (k("z/deep"), "weird \"value\"\n".into())
        ]
    );
    // A conditional delete deletes only the value it names.
    assert!(
        !a.kv_delete_if(&k("y"), "old").await.expect("del if"),
        "another value is kept"
    );
    assert_eq!(
        b.kv_get(&k("y")).await.expect("get").as_deref(),
        Some("new")
    );
    assert!(a.kv_delete_if(&k("y"), "new").await.expect("del if"));
    assert_eq!(b.kv_get(&k("y")).await.expect("get"), None);
    assert!(!a.kv_delete_if(&k("y"), "new").await.expect("del if"));
    assert!(a.kv_delete(&k("x")).await.expect("del"));
    assert!(!a.kv_delete(&k("x")).await.expect("del"));
    assert!(a.kv_get("").await.is_err(), "empty keys are refused");
}

async fn locks_exclude_and_expire<F, Fut>(open: &F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let name = format!("lock-{tag}");
    a.lock(&name).await.expect("a locks");
    assert!(
        a.holds_lock(&name).await.expect("holds"),
        "the holder holds it"
    );
    assert!(
        !b.holds_lock(&name).await.expect("holds"),
        "nobody else does"
    );
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            b.lock(&name).await.expect("b locks");
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "b waits while a holds the lock");
    let released = Instant::now();
    a.unlock(&name).await.expect("unlock");
    assert!(!a.holds_lock(&name).await.expect("holds"), "released");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("b gets it")
        .expect("task");
    assert!(
        got.duration_since(released) < Duration::from_millis(500),
        "handed over promptly"
    );
    // b now holds the lock and never sends a keep-alive: like a killed
    // holder, it loses the lock once its session expires.
    let c = open("c".into()).await;
    let t = Instant::now();
    tokio::time::timeout(expiry + Duration::from_secs(5), c.lock(&name))
        .await
        .expect("an abandoned lock expires")
        .expect("c locks");
    assert!(t.elapsed() >= Duration::from_millis(200));
    c.unlock(&name).await.expect("unlock");
}

/// `try_lock` takes a free lock at once and never waits: of two sessions
/// racing, exactly one wins; it is the same lock as `lock`'s (released by
/// `unlock`, queued behind by `lock` waiters, never handed to two holders)
/// and dies with its session.
async fn try_locks<F, Fut>(open: &F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    // Races: exactly one of two sessions wins each fresh lock.
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    for round in 0..5 {
        let name = format!("try-{tag}/race-{round}");
        let (x, y) = tokio::join!(a.try_lock(&name), b.try_lock(&name));
        let (x, y) = (x.expect("a tries"), y.expect("b tries"));
        assert!(x ^ y, "round {round}: exactly one wins, got a={x} b={y}");
        let (winner, loser) = if x { (&a, &b) } else { (&b, &a) };
        assert!(winner.holds_lock(&name).await.expect("holds"));
        assert!(!loser.holds_lock(&name).await.expect("holds"));
        assert!(
            winner.try_lock(&name).await.expect("again"),
            "the holder still holds it"
        );
        assert!(
            !loser.try_lock(&name).await.expect("again"),
            "held: refused at once"
        );
        // The holder's unlock frees it for the other's try at once.
        winner.unlock(&name).await.expect("unlock");
        assert!(!winner.holds_lock(&name).await.expect("holds"));
        assert!(
            loser.try_lock(&name).await.expect("after unlock"),
            "free after unlock"
        );
        assert!(loser.holds_lock(&name).await.expect("holds"));
        loser.unlock(&name).await.expect("unlock");
    }

    // A lock taken by try_lock queues `lock` waiters; while one waits,
    // try_lock wins nothing, and the waiter is handed the lock alone.
    let (h, w, t) = (
        open("h".into()).await,
        open("w".into()).await,
        open("t".into()).await,
    );
    let name = format!("try-{tag}/queue");
    assert!(h.try_lock(&name).await.expect("h tries"));
    let waiter = {
        let (w, name) = (w.clone(), name.clone());
        tokio::spawn(async move {
            w.lock(&name).await.expect("w locks");
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "w waits while h holds the lock");
    assert!(!t.try_lock(&name).await.expect("t tries"), "h holds it");
    let released = Instant::now();
    h.unlock(&name).await.expect("unlock");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("w gets it")
        .expect("task");
    assert!(
        got.duration_since(released) < Duration::from_millis(1500),
        "handed over promptly"
    );
    assert!(w.holds_lock(&name).await.expect("holds"));
    assert!(
        !t.try_lock(&name).await.expect("t tries"),
        "the waiter holds it now"
    );
    assert!(
        !t.holds_lock(&name).await.expect("holds"),
        "no double holder"
    );
    assert!(!h.try_lock(&name).await.expect("h tries"));
    w.unlock(&name).await.expect("unlock");
    assert!(t.try_lock(&name).await.expect("t tries"), "free again");
    t.unlock(&name).await.expect("unlock");

    // A holder that never keeps its session alive loses the lock with it.
    let (d, e) = (open("d".into()).await, open("e".into()).await);
    let name = format!("try-{tag}/expire");
    assert!(d.try_lock(&name).await.expect("d tries"));
    let start = Instant::now();
    let freed = eventually(expiry + d.lock_ttl() + Duration::from_secs(3), || async {
        // e stays alive while it waits; d does not.
        let _ = e.keep_alive().await;
        e.try_lock(&name).await.expect("e tries")
    })
    .await;
    assert!(
        freed,
        "an abandoned try_lock'd lock expires with its session"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "not before the session expires: {:?}",
        start.elapsed()
    );
    assert!(e.holds_lock(&name).await.expect("holds"));
    assert!(!d.holds_lock(&name).await.expect("holds"));
    e.unlock(&name).await.expect("unlock");
}

async fn register_read_and_status<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let a = open("a".into()).await;
    let svc = format!("web-{tag}");
    a.register(&reg(&format!("{svc}-h1"), &svc, 8080, 30_000))
        .await
        .expect("register");
    let got = a.instances(&svc).await.expect("instances");
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!(
        (i.id.as_str(), i.name.as_str(), i.address.as_str(), i.port),
        (&*format!("{svc}-h1"), &*svc, "127.0.0.1", 8080)
    );
    assert_eq!(i.tags, vec!["a", "b"]);
    assert_eq!(i.status, Status::Passing);
    assert!(i.last_heartbeat.ends_with('Z'));
    let services = a.services().await.expect("services");
    let s = services.iter().find(|s| s.name == svc).expect("listed");
    assert_eq!((s.instances, s.passing), (1, 1));

    assert!(
        a.set_status(&format!("{svc}-h1"), Status::Critical)
            .await
            .expect("status")
    );
    assert_eq!(
        a.instances(&svc).await.expect("read")[0].status,
        Status::Critical
    );
    assert!(
        a.set_status(&format!("{svc}-h1"), Status::Passing)
            .await
            .expect("status")
    );
    assert!(
        !a.set_status("no-such-id", Status::Passing)
            .await
            .expect("status")
    );

    // Re-registering replaces the entry.
    let mut r = reg(&format!("{svc}-h1"), &svc, 9090, 30_000);
    r.tags = vec!["z".into()];
    a.register(&r).await.expect("re-register");
    let got = a.instances(&svc).await.expect("read");
    assert_eq!(
        (got.len(), got[0].port, got[0].tags.clone()),
        (1, 9090, vec!["z".to_string()])
    );

    a.deregister(&format!("{svc}-h1"))
        .await
        .expect("deregister");
    assert!(a.instances(&svc).await.expect("read").is_empty());
    a.deregister(&format!("{svc}-h1"))
        .await
        .expect("deregister twice is fine");
    assert!(
        a.instances("never-registered")
            .await
            .expect("read")
            .is_empty()
    );
}

async fn sessions_share_but_own_their_entries<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let svc = format!("db-{tag}");
    a.register(&reg(&format!("{svc}-ha"), &svc, 5432, 30_000))
        .await
        .expect("a");
    b.register(&reg(&format!("{svc}-hb"), &svc, 5432, 30_000))
        .await
        .expect("b");
    let ids: Vec<String> = b
        .instances(&svc)
        .await
        .expect("read")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![format!("{svc}-ha"), format!("{svc}-hb")]);
    assert!(
        !b.set_status(&format!("{svc}-ha"), Status::Critical)
            .await
            .expect("status"),
        "b does not own a's entry"
    );
    b.deregister(&format!("{svc}-ha")).await.expect("no-op");
    assert_eq!(
        a.instances(&svc).await.expect("read").len(),
        2,
        "b cannot remove a's entry"
    );
    assert_eq!(a.keep_alive().await.expect("keep-alive"), 1);
    a.deregister(&format!("{svc}-ha")).await.expect("a");
    b.deregister(&format!("{svc}-hb")).await.expect("b");
}

async fn expiry_keep_alive_and_change_notification<F, Fut>(open: &F, tag: &str, expiry: Duration)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let (a, b) = (open("a".into()).await, open("b".into()).await);
    let svc = format!("cache-{tag}");
    let mut changes = b.changes();
    changes.borrow_and_update();
    let t = Instant::now();
    a.register(&reg(&format!("{svc}-h1"), &svc, 6379, 1_000))
        .await
        .expect("register");
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("a change is notified")
        .expect("notifier alive");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "notified in {:?}",
        t.elapsed()
    );
    // Kept alive past its TTL...
    let step = (expiry / 3).min(Duration::from_millis(400));
    let until = Instant::now() + expiry + Duration::from_millis(500);
    while Instant::now() < until {
        tokio::time::sleep(step).await;
        assert_eq!(a.keep_alive().await.expect("keep-alive"), 1);
    }
    assert_eq!(
        b.instances(&svc).await.expect("read").len(),
        1,
        "kept alive past its TTL"
    );
    // ...then expires once the keep-alives stop, and watchers hear of it.
    changes.borrow_and_update();
    let t = Instant::now();
    let gone = eventually(Duration::from_secs(3), || async {
        b.instances(&svc).await.expect("read").is_empty()
    })
    .await;
    assert!(gone, "entry expired");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "not before its TTL: {:?}",
        t.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("expiry is notified")
        .expect("notifier alive");
}

async fn deregister_critical_after<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let a = open("a".into()).await;
    let svc = format!("flaky-{tag}");
    let mut r = reg(&format!("{svc}-h1"), &svc, 80, 30_000);
    r.deregister_critical_after = Some(Duration::from_millis(500));
    a.register(&r).await.expect("register");
    assert!(
        a.set_status(&r.id, Status::Critical)
            .await
            .expect("critical")
    );
    let gone = eventually(Duration::from_secs(4), || async {
        let _ = a.keep_alive().await;
        a.instances(&svc).await.expect("read").is_empty()
    })
    .await;
    assert!(
        gone,
        "a critical entry is removed after deregisterCriticalServiceAfter"
    );
}

async fn hostile_data_round_trips<F, Fut>(open: &F, tag: &str)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Catalog>>,
{
    let a = open("a".into()).await;
    let svc = format!("odd-{tag}");
    let mut r = reg(
        &format!("{svc}-'; DROP TABLE instances;--"),
        &svc,
        1,
        30_000,
    );
    r.tags = vec![
        "\"quoted\"".into(),
        "line\nbreak".into(),
        "ünïcödé".into(),
        "{{ .X }}".into(),
    ];
    r.address = "::1".into();
    a.register(&r).await.expect("register");
    let got = a.instances(&svc).await.expect("read");
    assert_eq!(got[0].id, r.id);
    assert_eq!(got[0].tags, r.tags);
    a.deregister(&r.id).await.expect("deregister");
}
