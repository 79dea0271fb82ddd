//! The `consul://` backend against a real `autopilot consul-api` server (over an embedded catalog): the catalog conformance suite, and two agents that see each other and fail an election over.
// Tests start the real binary (server and agents) as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::Catalog;
use autopilot_catalog_consul::{ConsulCatalog, ConsulOptions};
use common::*;

/// `autopilot consul-api` on a free loopback port over an embedded catalog
/// in `dir`; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &Dir) -> Server {
        Server::start_at(dir, &format!("127.0.0.1:{}", free_port()), "server-catalog")
    }

    /// On `addr`, over the embedded catalog `dir/catalog`.
    fn start_at(dir: &Dir, addr: &str, catalog: &str) -> Server {
        let addr = addr.to_string();
        let log = std::fs::File::create(dir.path("consul-api.log")).expect("log");
        let child = Command::new(bin())
            .args([
                "consul-api",
                "--listen",
                &addr,
                "--catalog",
                &format!("local://{}", dir.path(catalog).display()),
            ])
            .env("AUTOPILOT_STATE_DIR", dir.path("server-state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn consul-api");
        let s = Server { child, addr };
        assert!(
            wait_for(Duration::from_secs(20), || get(
                &s.addr,
                "/v1/status/leader"
            )
            .is_some_and(|(code, _)| code == 200)),
            "consul-api did not come up: {}",
            dir.read("consul-api.log")
        );
        s
    }
}

/// A GET with the Host header the server accepts (it refuses other hosts,
/// as Consul's DNS-rebinding guard does).
fn get(addr: &str, uri: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {uri} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_autopilot_consul_api() {
    let d = Dir::new("consul-conf");
    let server = Server::start(&d);
    let rest = format!("{}/conformance", server.addr);
    let open = |agent: String| {
        let rest = rest.clone();
        async move {
            let opts = ConsulOptions::parse(&rest).expect("url");
            let c = ConsulCatalog::connect(opts, &format!("agent-{agent}"))
                .await
                .expect("connect");
            Arc::new(c) as Arc<dyn Catalog>
        }
    };
    let t = Instant::now();
    // Lock sessions (Consul's minimum TTL, 10 s) are invalidated within two
    // TTLs, as Consul grants; entries go one TTL after they turn critical.
    autopilot_catalog::conformance::run_all(open, "consul", Duration::from_secs(20)).await;
    eprintln!("conformance on consul-api took {:?}", t.elapsed());
}

/// A server replaced by one that knows nothing (a new Consul cluster, or
/// one that lost its data): the next keep-alive registers the entries
/// again and takes the held lock again on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_state_is_restored() {
    let d = Dir::new("consul-restore");
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_at(&d, &addr, "catalog-1");
    let opts = ConsulOptions::parse(&format!("{addr}/restore")).expect("url");
    let c = ConsulCatalog::connect(opts, "agent-r")
        .await
        .expect("connect");
    let reg = autopilot_catalog::Registration {
        id: "web-r".into(),
        name: "web".into(),
        address: "127.0.0.1".into(),
        port: 80,
        tags: vec!["t".into()],
        status: autopilot_catalog::Status::Passing,
        ttl: Duration::from_secs(10),
        deregister_critical_after: None,
        seat: None,
    };
    c.register(&reg).await.expect("register");
    assert!(c.try_lock("job").await.expect("lock"));
    assert_eq!(c.instances("web").await.expect("read").len(), 1);

    drop(server);
    // While the server is down, keep-alives fail (an outage, not a panic).
    assert!(c.keep_alive().await.is_err());
    let _server = Server::start_at(&d, &addr, "catalog-2");
    assert!(
        c.instances("web").await.expect("read").is_empty(),
        "the new server starts empty"
    );
    assert_eq!(c.keep_alive().await.expect("keep-alive"), 1);
    let back = c.instances("web").await.expect("read");
    assert_eq!(
        back.iter()
            .map(|i| (i.id.as_str(), i.tags.clone()))
            .collect::<Vec<_>>(),
        [("web-r", vec!["t".to_string()])]
    );
    assert!(
        c.holds_lock("job").await.expect("holds"),
        "lock taken again"
    );
}

fn config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  watches: [{{ name: "web", interval: 60 }}],
  jobs: [{{ name: "web", exec: "sleep 120", port: {port}, interfaces: ["static:127.0.0.1"],
            health: {{ exec: "true", interval: "200ms", ttl: 2 }},
            election: {{ name: "web-primary", ttl: "2s" }} }}],
}}"#
    )
}

fn agent(d: &Dir, host: &str, url: &str, port: u16) -> Agent {
    let dir = d.child(host);
    let a = start_with(
        &dir,
        &config(port),
        &[],
        &[("AUTOPILOT_CATALOG", url), ("AUTOPILOT_HOSTNAME", host)],
    );
    a.ready();
    a
}

/// `autopilot leader web-primary --json` through the Consul backend: (id, term).
fn leader(url: &str) -> Option<(String, u64)> {
    let out = Command::new(bin())
        .args(["leader", "web-primary", "--json", "--catalog", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["id"].as_str()?.to_string(), v["term"].as_u64()?))
}

/// How many passing `web` instances an agent's own watch sees.
fn seen(a: &Agent) -> Option<u64> {
    a.status()["watches"][0]["passing"].as_u64()
}

#[test]
fn two_agents_see_each_other_and_fail_over() {
    let d = Dir::new("consul-e2e");
    let server = Server::start(&d);
    let url = format!("consul://{}/e2e", server.addr);
    let agents = [
        agent(&d, "h1", &url, free_port()),
        agent(&d, "h2", &url, free_port()),
    ];
    // Each agent's watch (blocking queries on the server) sees both.
    assert!(
        wait_for(Duration::from_secs(15), || agents
            .iter()
            .all(|a| seen(a) == Some(2))),
        "watches: {:?} / {:?}",
        agents[0].status()["watches"],
        agents[1].status()["watches"]
    );
    assert_eq!(
        passing_ids(&url, "web"),
        Some(vec!["web-h1".to_string(), "web-h2".to_string()])
    );
    let st = agents[0].status();
    assert_eq!(
        st["catalog"]["url"],
        "consul://".to_string() + &server.addr + "/e2e"
    );
    assert_eq!(st["catalog"]["degraded"], false, "{st}");

    // One leader; kill -9 its agent and its job: the other takes over with
    // a higher term once the seat's session lapses, and its watch sees the
    // dead instance go.
    assert!(
        wait_for(Duration::from_secs(20), || leader(&url).is_some()),
        "no leader: {}\n{}\n{}",
        agents[0].log(),
        agents[1].log(),
        d.read("consul-api.log")
    );
    let (id1, term1) = leader(&url).expect("a leader");
    let (dead, alive) = if id1 == "web-h1" { (0, 1) } else { (1, 0) };
    let job_pid = agents[dead].status()["jobs"][0]["pid"]
        .as_i64()
        .expect("pid") as i32;
    let t = Instant::now();
    agents[dead].signal(libc::SIGKILL);
    killpg(job_pid, libc::SIGKILL);
    assert!(
        wait_for(Duration::from_secs(15), || leader(&url)
            .is_some_and(|(i, _)| i != id1)),
        "no failover: {}",
        d.child(if alive == 0 { "h1" } else { "h2" })
            .read("agent.log")
    );
    let failover = t.elapsed();
    let (id2, term2) = leader(&url).expect("a new leader");
    assert_eq!(id2, if alive == 0 { "web-h1" } else { "web-h2" });
    assert!(term2 > term1, "fencing term grows: {term1} -> {term2}");
    eprintln!("failover after kill -9 took {failover:?}");
    // The seat lapses 2 s after its last renewal; the survivor's next
    // campaign ends it (+ the CLI's start).
    assert!(failover < Duration::from_secs(5), "{failover:?}");
    assert!(
        wait_for(Duration::from_secs(10), || seen(&agents[alive]) == Some(1)),
        "the survivor's watch drops the dead instance: {:?}",
        agents[alive].status()["watches"]
    );
}
