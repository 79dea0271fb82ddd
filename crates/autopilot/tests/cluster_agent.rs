//! Clusters, the agent's side, with three real agents on both backends: the fast crash failover (and the stalls and half-deaths that must keep the TTL path), ranking by published position and priority, the pause, failover and switchover intents, and the member record's position and presence listener across a restart or a reload.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PYTHON: &str = "/usr/bin/python3";

/// A TCP server that accepts and closes connections, writing its pid first.
const SERVER: &str = "import socket,os,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen(1); open(sys.argv[2],'w').write(str(os.getpid())); [c.close() for c in iter(lambda: s.accept()[0], None)]";

fn config(port: u16, election: &str) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: ["{PYTHON}", "-c", "{SERVER}", "{port}", "@DIR@/server.pid"],
       port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ tcp: "127.0.0.1:{port}", interval: "200ms", ttl: "2s" }},
       election: {election} }},
  ]
}}"#
    )
}

struct Node {
    dir: Dir,
    agent: Agent,
    id: String,
}

impl Node {
    fn server_pid(&self) -> Option<i32> {
        self.dir.read("server.pid").trim().parse().ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stopped processes must be able to stop; the server outlives a
        // killed agent, so it is ours to kill.
        let server = self.server_pid();
        // Never pid -1 (a reaped agent's): that would signal every process.
        if self.agent.child.is_some() {
            kill(self.agent.pid(), libc::SIGCONT);
        }
        if let Some(pid) = server {
            kill(pid, libc::SIGCONT);
        }
        if self.agent.child.is_some() {
            self.agent.signal(libc::SIGTERM);
            self.agent.wait(Duration::from_secs(5));
        }
        if let Some(pid) = server {
            kill(pid, libc::SIGKILL);
        }
    }
}

fn node(d: &Dir, host: &str, url: &str, election: &str) -> Node {
    let dir = d.child(host);
    let port = free_port();
    let agent = start_with(
        &dir,
        &config(port, election),
        &[],
        &[("AUTOPILOT_CATALOG", url), ("AUTOPILOT_HOSTNAME", host)],
    );
    agent.ready();
    Node {
        dir,
        agent,
        id: format!("db-{host}"),
    }
}

fn cluster(d: &Dir, url: &str, elections: [&str; 3]) -> Vec<Node> {
    elections
        .iter()
        .enumerate()
        .map(|(i, e)| node(d, &format!("n{}", i + 1), url, e))
        .collect()
}

/// `autopilot leader db --json`: (id, term).
fn leader(url: &str) -> Option<(String, u64)> {
    let out = Command::new(bin())
        .args(["leader", "db", "--json", "--catalog", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["id"].as_str()?.to_string(), v["term"].as_u64()?))
}

/// The member records of `db` as the CLI reads them: (id, tags).
fn members(url: &str) -> Vec<(String, Vec<String>)> {
    let out = Command::new(bin())
        .args([
            "catalog",
            "--catalog",
            url,
            "instances",
            "_members.db",
            "--json",
        ])
        .output()
        .expect("cli");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter()
        .map(|i| {
            let tags = i["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (i["id"].as_str().unwrap_or_default().to_string(), tags)
        })
        .collect()
}

fn kv(url: &str, args: &[&str]) -> bool {
    Command::new(bin())
        .arg("kv")
        .args(args)
        .args(["--catalog", url])
        .status()
        .expect("kv")
        .success()
}

fn kv_get(url: &str, key: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(["kv", "get", key, "--catalog", url])
        .output()
        .expect("kv get");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Starts three nodes and waits for a leader and for every member record
/// (with its presence listener); returns the nodes and the leader's index.
fn settled(d: &Dir, url: &str, elections: [&str; 3]) -> (Vec<Node>, usize, u64) {
    let nodes = cluster(d, url, elections);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let m = members(url);
            m.len() == 3
                && m.iter()
                    .all(|(_, t)| t.iter().any(|t| t.starts_with("probe=")))
                && passing_ids(url, "_members.db").is_some_and(|p| p.len() == 3)
        }),
        "member records: {:?}",
        members(url)
    );
    let mut found = None;
    assert!(
        wait_for(Duration::from_secs(15), || {
            found = leader(url);
            found.is_some()
        }),
        "no leader"
    );
    let (id, term) = found.expect("leader");
    let i = nodes.iter().position(|n| n.id == id).expect("a node leads");
    (nodes, i, term)
}

/// Waits for a leader other than `old`; returns it and how long it took.
fn next_leader(url: &str, old: &str, since: Instant, limit: Duration) -> (String, u64, Duration) {
    let mut found = None;
    let ok = wait_for(limit, || {
        found = leader(url).filter(|(id, _)| id != old);
        found.is_some()
    });
    assert!(ok, "no new leader within {limit:?}");
    let (id, term) = found.expect("leader");
    (id, term, since.elapsed())
}

const TTL5: &str = r#"{ name: "db", ttl: "5s" }"#;

fn crash_of_agent_and_server(d: &Dir, url: &str) {
    let (mut nodes, l, term) = settled(d, url, [TTL5; 3]);
    let old = nodes[l].id.clone();
    let server = nodes[l].server_pid().expect("the leader's server pid");
    let t0 = Instant::now();
    kill(nodes[l].agent.pid(), libc::SIGKILL);
    kill(server, libc::SIGKILL);
    let (id, term2, took) = next_leader(url, &old, t0, Duration::from_secs(10));
    println!("fast crash failover on {url}: new leader {id} (term {term2}) after {took:?}");
    assert!(term2 > term);
    assert!(
        took < Duration::from_secs(2),
        "kill -9 of agent and server: the fast path elects within 2 s at TTL 5 s, took {took:?}"
    );
    // The survivors voted: their suspect tags named the dead leader's term
    // (cleared again once the new leader is in place).
    let log: String = nodes.iter().map(|n| n.agent.log()).collect();
    assert!(log.contains("voting it dead"), "{log}");
    nodes[l].agent.wait(Duration::from_secs(5));
}

/// A stopped agent (its listener's queue fills: connections time out) and
/// a stopped server must never count as dead: the seat goes only by TTL.
fn stalls_keep_the_ttl_path(d: &Dir, url: &str) {
    let (nodes, l, _) = settled(d, url, [TTL5; 3]);
    // The earliest a seat can go by TTL: the leader renews every ttl/3, so
    // its last renewal was at most 5/3 s before the stop, and the seat
    // lives 5 s after it; allow the margin the leader demotes by (1 s).
    let ttl_floor = Duration::from_millis(5000 - 1667 - 1000);
    // 1. The agent stopped, its server running.
    let old = nodes[l].id.clone();
    let t0 = Instant::now();
    kill(nodes[l].agent.pid(), libc::SIGSTOP);
    let (id, _, took) = next_leader(url, &old, t0, Duration::from_secs(12));
    println!("SIGSTOP of the leader's agent on {url}: new leader {id} after {took:?}");
    assert!(
        took >= ttl_floor,
        "a stalled agent lost its seat early: {took:?}"
    );
    kill(nodes[l].agent.pid(), libc::SIGCONT);
    // 2. The new leader's agent and server both stopped: every probe times out.
    let n = nodes.iter().position(|x| x.id == id).expect("leader node");
    let server = nodes[n].server_pid().expect("server pid");
    let t0 = Instant::now();
    kill(nodes[n].agent.pid(), libc::SIGSTOP);
    kill(server, libc::SIGSTOP);
    let (id2, _, took) = next_leader(url, &id, t0, Duration::from_secs(12));
    println!("SIGSTOP of the leader's agent and server on {url}: new leader {id2} after {took:?}");
    assert!(
        took >= ttl_floor,
        "a stalled node (timeouts, not refusals) lost its seat early: {took:?}"
    );
    kill(server, libc::SIGCONT);
    kill(nodes[n].agent.pid(), libc::SIGCONT);
}

/// The agent killed but its server still accepting: not dead, TTL path.
fn crash_of_agent_only(d: &Dir, url: &str) {
    let (nodes, l, _) = settled(d, url, [TTL5; 3]);
    let old = nodes[l].id.clone();
    let t0 = Instant::now();
    kill(nodes[l].agent.pid(), libc::SIGKILL);
    let (id, _, took) = next_leader(url, &old, t0, Duration::from_secs(12));
    println!("kill -9 of the leader's agent only on {url}: new leader {id} after {took:?}");
    assert!(
        took >= Duration::from_millis(5000 - 1667 - 1000),
        "a live server's node lost its seat before its TTL: {took:?}"
    );
}

#[test]
fn fast_failover_on_the_embedded_catalog() {
    let d = Dir::new("cl-fast-local");
    let url = format!("local://{}", d.path("catalog").display());
    crash_of_agent_and_server(&d, &url);
}

#[test]
fn fast_failover_on_etcd() {
    let d = Dir::new("cl-fast-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    crash_of_agent_and_server(&d, &format!("etcd://{}/fast", etcd.endpoint()));
}

// Not on the embedded catalog: a SIGSTOP that lands inside one of the
// stopped agent's SQLite write transactions keeps the database locked for
// every agent on the machine until it resumes ("database is locked"), so
// nobody can be elected at all (a limitation of the shared SQLite file,
// reported separately). kill -9 never has that problem: the kernel
// releases the dead process's file locks.

#[test]
fn stalls_keep_the_ttl_path_on_etcd() {
    let d = Dir::new("cl-stall-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    stalls_keep_the_ttl_path(&d, &format!("etcd://{}/stall", etcd.endpoint()));
}

#[test]
fn a_live_server_keeps_the_ttl_path_on_the_embedded_catalog() {
    let d = Dir::new("cl-half-local");
    let url = format!("local://{}", d.path("catalog").display());
    crash_of_agent_only(&d, &url);
}

#[test]
fn a_live_server_keeps_the_ttl_path_on_etcd() {
    let d = Dir::new("cl-half-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    crash_of_agent_only(&d, &format!("etcd://{}/half", etcd.endpoint()));
}

fn post_position(n: &Node, body: &str) -> (u16, String) {
    http_unix(&n.agent.socket, "POST", "/v3/cluster/position", body).expect("control socket")
}

/// The followers of leader `l`, in candidate ID order.
fn followers(nodes: &[Node], l: usize) -> Vec<usize> {
    (0..nodes.len()).filter(|i| *i != l).collect()
}

/// Most advanced eligible wins; priority 0 never leads, even ahead of all.
fn ranking(d: &Dir, url: &str) {
    let p0 = r#"{ name: "db", ttl: "5s", priority: 0 }"#;
    let mut nodes = cluster(d, url, [TTL5, p0, TTL5]);
    nodes.push(node(d, "n4", url, TTL5));
    let mut found = None;
    assert!(wait_for(Duration::from_secs(15), || {
        found = leader(url);
        found.is_some() && passing_ids(url, "_members.db").is_some_and(|p| p.len() == 4)
    }));
    let (old, _) = found.expect("leader");
    let l = nodes.iter().position(|n| n.id == old).expect("leader node");
    assert_ne!(l, 1, "priority 0 never leads");
    // The two eligible followers: the one with the larger ID is further ahead.
    let f: Vec<usize> = followers(&nodes, l)
        .into_iter()
        .filter(|i| *i != 1)
        .collect();
    let (x, y) = (f[0], f[1]);
    for (i, pos) in [(1, "2000"), (x, "1000"), (y, "0/4B0"), (l, "1500")] {
        let body = format!(r#"{{"election": null, "position": "{pos}"}}"#);
        assert_eq!(post_position(&nodes[i], &body), (200, String::new()));
    }
    // Bad bodies name the field.
    for (body, field) in [
        (r#"{"position": "x"}"#, "position"),
        (r#"{"election": "nope", "position": "1"}"#, "election"),
        (r#"{"election": 5, "position": "1"}"#, "election"),
        (r#"{}"#, "position"),
        (r#"[1]"#, "object"),
    ] {
        let (code, text) = post_position(&nodes[0], body);
        assert_eq!(code, 400, "{body}");
        assert!(text.contains(field), "{body}: {text}");
    }
    let st = nodes[y].agent.status();
    let e = &st["jobs"][0]["election"];
    assert_eq!(
        (e["position"].as_u64(), e["priority"].as_u64()),
        (Some(1200), Some(1)),
        "{e}"
    );
    assert!(
        e["probe"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{e}"
    );
    let yid = format!("db.{}", nodes[y].id);
    assert!(
        wait_for(Duration::from_secs(5), || members(url).iter().any(
            |(id, t)| *id == yid && t.contains(&"position=1200".to_string())
        )),
        "{:?}",
        members(url)
    );
    // The leader hands over (a graceful stop resigns).
    let t0 = Instant::now();
    nodes[l].agent.signal(libc::SIGTERM);
    let (id, _, took) = next_leader(url, &old, t0, Duration::from_secs(10));
    println!("ranking on {url}: {id} after {took:?}");
    assert_eq!(id, nodes[y].id, "the most advanced eligible member wins");
    nodes[l].agent.wait(Duration::from_secs(5));
}

#[test]
fn ranking_on_the_embedded_catalog() {
    let d = Dir::new("cl-rank-local");
    let url = format!("local://{}", d.path("catalog").display());
    ranking(&d, &url);
}

#[test]
fn ranking_on_etcd() {
    let d = Dir::new("cl-rank-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    ranking(&d, &format!("etcd://{}/rank", etcd.endpoint()));
}

/// Paused: a crashed leader is not replaced (no fast path, nobody
/// campaigns); resumed: it is.
#[test]
fn pause_holds_a_free_seat() {
    let d = Dir::new("cl-pause");
    let url = format!("local://{}", d.path("catalog").display());
    let (mut nodes, l, _) = settled(&d, &url, [TTL5; 3]);
    let old = nodes[l].id.clone();
    let since = format!(r#"{{"since_ms": {}}}"#, now_ms());
    assert!(kv(&url, &["put", "_cluster/db/paused", &since]));
    let server = nodes[l].server_pid().expect("server pid");
    let t0 = Instant::now();
    kill(nodes[l].agent.pid(), libc::SIGKILL);
    kill(server, libc::SIGKILL);
    // A bounded window: an absence has no event. The TTL path alone would
    // elect within ~5 s, the fast path within 1 s.
    let mut seen = None;
    let moved = wait_for(Duration::from_secs(8), || {
        seen = leader(&url).filter(|(id, _)| *id != old);
        seen.is_some()
    });
    assert!(!moved, "paused, yet {seen:?} took over");
    assert!(
        !nodes
            .iter()
            .any(|n| n.agent.log().contains("voting it dead")),
        "no fast path while paused"
    );
    assert!(kv(&url, &["del", "_cluster/db/paused"]));
    let (id, _, took) = next_leader(&url, &old, t0, Duration::from_secs(10));
    println!("resumed: {id} leads {took:?} after the crash");
    nodes[l].agent.wait(Duration::from_secs(5));
}

/// A failover intent: only its target campaigns, ignoring the ranking,
/// and deletes the intent once elected.
#[test]
fn failover_intent_picks_the_target() {
    let d = Dir::new("cl-failover");
    let url = format!("local://{}", d.path("catalog").display());
    let (mut nodes, l, _) = settled(&d, &url, [TTL5; 3]);
    let old = nodes[l].id.clone();
    // The follower the ranking would pick last.
    let target = *followers(&nodes, l).last().expect("follower");
    let to = nodes[target].id.clone();
    let intent = format!(r#"{{"to": "{to}", "deadline_ms": {}}}"#, now_ms() + 30_000);
    assert!(kv(&url, &["put", "_cluster/db/failover", &intent]));
    let t0 = Instant::now();
    nodes[l].agent.signal(libc::SIGTERM);
    let (id, _, took) = next_leader(&url, &old, t0, Duration::from_secs(10));
    println!("failover to {to}: {id} after {took:?}");
    assert_eq!(id, to);
    assert!(
        wait_for(Duration::from_secs(5), || kv_get(
            &url,
            "_cluster/db/failover"
        )
        .is_none()),
        "the target deletes the intent once elected"
    );
    nodes[l].agent.wait(Duration::from_secs(5));
}

/// A switchover intent: the leader resigns for a ready target, which
/// alone campaigns and deletes the intent; the old leader does not retake.
#[test]
fn switchover_intent_hands_over() {
    let d = Dir::new("cl-switchover");
    let url = format!("local://{}", d.path("catalog").display());
    let (nodes, l, term) = settled(&d, &url, [TTL5; 3]);
    let old = nodes[l].id.clone();
    let target = *followers(&nodes, l).last().expect("follower");
    let to = nodes[target].id.clone();
    let now = now_ms();
    let intent = format!(
        r#"{{"from": "{old}", "to": "{to}", "at_ms": {now}, "deadline_ms": {}}}"#,
        now + 30_000
    );
    let t0 = Instant::now();
    assert!(kv(&url, &["put", "_cluster/db/switchover", &intent]));
    let (id, term2, took) = next_leader(&url, &old, t0, Duration::from_secs(10));
    println!("switchover to {to}: {id} (term {term2}) after {took:?}");
    assert_eq!(id, to);
    assert!(term2 > term);
    assert!(
        wait_for(Duration::from_secs(5), || kv_get(
            &url,
            "_cluster/db/switchover"
        )
        .is_none()),
        "the target deletes the intent once elected"
    );
    // The old leader is still running and does not take the seat back.
    assert_eq!(leader(&url).map(|(id, _)| id), Some(to));
    assert!(
        nodes[l].agent.log().contains("switchover"),
        "{}",
        nodes[l].agent.log()
    );
}

/// A hostile member record (huge numbers, garbage tags, a forged vote, a
/// probe address nobody listens on, a host name) and unreadable intents
/// neither crash nor wedge the agents: the fast path still elects.
#[test]
fn hostile_records_and_intents_do_not_wedge_the_agents() {
    let d = Dir::new("cl-hostile");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let url = format!("etcd://{}/hostile", etcd.endpoint());
    let (nodes, l, term) = settled(&d, &url, [TTL5; 3]);
    let long = "x".repeat(100_000);
    let tags = serde_json::json!([
        "priority=99999999999999999999",
        "position=18446744073709551615",
        "maxlag=-5",
        format!("suspect={term}"),
        "suspect=18446744073709551616",
        "probe=127.0.0.1:1",
        "probe=[::1",
        "=",
        "",
        long,
    ]);
    let record = serde_json::json!({
        "id": "db.evil", "name": "_members.db", "address": "no-such-host.invalid", "port": 65535,
        "tags": tags, "status": "passing", "owner": "evil/1/1", "registered_ms": 1u64,
        "critical_since_ms": null, "deregister_after_ms": null,
    });
    autopilot_testkit::etcdctl(
        &etcd.endpoint(),
        &[
            "put",
            "/hostile/instances/_members.db/db.evil",
            &record.to_string(),
        ],
    );
    for (key, value) in [
        ("_cluster/db/switchover", r#"{"from": 5, "at_ms": 1e300}"#),
        ("_cluster/db/failover", "[[[["),
        ("_cluster/db/reinit/", "{}"),
        ("_cluster/db/unknown", "\u{7f}\u{1b}"),
    ] {
        assert!(kv(&url, &["put", key, value]), "{key}");
    }
    assert!(
        wait_for(Duration::from_secs(5), || members(&url).len() == 4),
        "{:?}",
        members(&url)
    );
    let old = nodes[l].id.clone();
    let server = nodes[l].server_pid().expect("server pid");
    let t0 = Instant::now();
    kill(nodes[l].agent.pid(), libc::SIGKILL);
    kill(server, libc::SIGKILL);
    let (id, _, took) = next_leader(&url, &old, t0, Duration::from_secs(10));
    println!("with a hostile member and intents: {id} after {took:?}");
    // The forged member ranks first (the highest position) but never
    // campaigns: the next rank waits one grace (500 ms) more.
    assert!(took < Duration::from_secs(2), "{took:?}");
    for (i, n) in nodes.iter().enumerate() {
        if i != l {
            assert!(alive(n.agent.pid()), "agent {} died", n.id);
        }
    }
}

fn snapshot_config(port: u16, store: &str) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db",
       exec: ["sh", "-c", "test -e @DIR@/data/db.txt || echo fresh > @DIR@/data/db.txt; exec {PYTHON} -c \"$0\" \"$@\"", "{SERVER}", "{port}", "@DIR@/server.pid"],
       port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ tcp: "127.0.0.1:{port}", interval: "200ms", ttl: "2s" }},
       election: {{ name: "db", ttl: "5s" }},
       snapshot: {{
         store: "{store}", interval: "300ms", retain: 2, leaderOnly: true, dataDir: "@DIR@/data",
         create: ["sh", "-c", "cp @DIR@/data/db.txt \"$AUTOPILOT_SNAPSHOT_FILE\""],
         restore: ["sh", "-c", "cp \"$AUTOPILOT_SNAPSHOT_FILE\" \"$AUTOPILOT_DATA_DIR/db.txt\""],
       }} }},
  ]
}}"#
    )
}

/// A reinit intent: the named follower stops its job, empties its data
/// directory, deletes the intent and starts again through restore-before-
/// start; the leader refuses one.
#[test]
fn reinit_rebuilds_a_follower_from_the_snapshot() {
    let d = Dir::new("cl-reinit");
    let url = format!("local://{}", d.path("catalog").display());
    let store = format!("file://{}", d.child("store").0.display());
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let host = format!("n{i}");
            let dir = d.child(&host);
            std::fs::create_dir_all(dir.path("data")).expect("data dir");
            let agent = start_with(
                &dir,
                &snapshot_config(free_port(), &store),
                &[],
                &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", &host)],
            );
            agent.ready();
            Node {
                dir,
                agent,
                id: format!("db-{host}"),
            }
        })
        .collect();
    let mut found = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            found = leader(&url);
            found.is_some()
                && passing_ids(&url, "_members.db").is_some_and(|p| p.len() == 3)
                && nodes.iter().all(|n| n.dir.read("data/db.txt") == "fresh\n")
        }),
        "cluster did not settle: {found:?}"
    );
    let (lid, _) = found.expect("leader");
    let l = nodes.iter().position(|n| n.id == lid).expect("leader node");
    let f = followers(&nodes, l)[0];
    let before = nodes[f].server_pid().expect("server pid");
    std::fs::write(nodes[f].dir.path("data/junk"), "stale").expect("junk");
    std::fs::write(nodes[f].dir.path("data/db.txt"), "diverged\n").expect("diverge");
    let key = format!("_cluster/db/reinit/{}", nodes[f].id);
    let leader_key = format!("_cluster/db/reinit/{lid}");
    let body = format!(r#"{{"requested_ms": {}}}"#, now_ms());
    assert!(kv(&url, &["put", &leader_key, &body]));
    assert!(kv(&url, &["put", &key, &body]));
    assert!(
        wait_for(Duration::from_secs(15), || kv_get(&url, &key).is_none()
            && nodes[f].server_pid().is_some_and(|p| p != before)
            && nodes[f].dir.read("data/db.txt") == "fresh\n"),
        "not reinitialised: intent {:?}, pid {:?}, data {:?}\n{}",
        kv_get(&url, &key),
        nodes[f].server_pid(),
        nodes[f].dir.read("data/db.txt"),
        nodes[f].agent.log()
    );
    assert!(!nodes[f].dir.path("data/junk").exists(), "emptied first");
    assert!(
        nodes[f]
            .agent
            .log()
            .contains("reinit: data directory emptied")
    );
    // Back as a passing member; the leader refused its own reinit and still leads.
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url,
        "_members.db"
    )
    .is_some_and(|p| p.len() == 3)));
    assert_eq!(leader(&url).map(|(id, _)| id), Some(lid.clone()));
    assert!(
        kv_get(&url, &leader_key).is_some(),
        "the leader's intent stays"
    );
    assert!(
        nodes[l].agent.log().contains("reinit") && nodes[l].agent.log().contains("refused"),
        "{}",
        nodes[l].agent.log()
    );
}

/// One node whose job restarts after a crash.
fn restarting_node(d: &Dir, url: &str) -> Node {
    let dir = d.child("n1");
    let port = free_port();
    let cfg = config(port, TTL5).replace("port: ", r#"restarts: "unlimited", port: "#);
    let agent = start_with(
        &dir,
        &cfg,
        &[],
        &[("AUTOPILOT_CATALOG", url), ("AUTOPILOT_HOSTNAME", "n1")],
    );
    agent.ready();
    Node {
        dir,
        agent,
        id: "db-n1".into(),
    }
}

/// The tags of this node's member record, once it has a probe address.
fn own_tags(url: &str, n: &Node) -> Option<Vec<String>> {
    let id = format!("db.{}", n.id);
    members(url)
        .into_iter()
        .find(|(i, t)| *i == id && t.iter().any(|t| t.starts_with("probe=")))
        .map(|(_, t)| t)
}

/// Review finding 12: the position a hook published describes the data of
/// the run that published it; once the job stops (its member record goes),
/// the restarted job's record carries no position until a hook publishes
/// one again.
#[test]
fn a_stopped_job_forgets_its_position() {
    let d = Dir::new("cl-posclear");
    let url = format!("local://{}", d.path("catalog").display());
    let n = restarting_node(&d, &url);
    assert!(wait_for(Duration::from_secs(15), || own_tags(&url, &n)
        .is_some()
        && n.server_pid().is_some()));
    let body = r#"{"election": null, "position": "1200"}"#;
    assert_eq!(post_position(&n, body), (200, String::new()));
    assert!(wait_for(Duration::from_secs(5), || own_tags(&url, &n)
        .is_some_and(|t| t.contains(&"position=1200".to_string()))));
    let old = n.server_pid().expect("server pid");
    kill(old, libc::SIGKILL);
    let back = wait_for(Duration::from_secs(15), || {
        n.server_pid().is_some_and(|p| p != old)
            && passing_ids(&url, "_members.db").is_some_and(|p| p.len() == 1)
            && own_tags(&url, &n).is_some_and(|t| !t.iter().any(|t| t.starts_with("position=")))
    });
    assert!(back, "tags after the restart: {:?}", own_tags(&url, &n));
    let st = n.agent.status();
    assert!(
        st["jobs"][0]["election"]["position"].is_null(),
        "{}",
        st["jobs"][0]["election"]
    );
}

/// Review finding 18: a reload that moves the job to another address
/// moves its presence listener (the probe tag) there too.
#[test]
fn a_reload_moves_the_presence_listener() {
    let d = Dir::new("cl-presence-ip");
    let url = format!("local://{}", d.path("catalog").display());
    let n = node(&d, "n1", &url, TTL5);
    let mut probe = None;
    assert!(wait_for(Duration::from_secs(15), || {
        probe = own_tags(&url, &n).and_then(|t| {
            t.into_iter()
                .find_map(|t| t.strip_prefix("probe=").map(str::to_string))
        });
        probe.is_some()
    }));
    assert!(
        probe
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{probe:?}"
    );
    let text = std::fs::read_to_string(&n.agent.config).expect("config");
    std::fs::write(
        &n.agent.config,
        text.replace(
            r#"interfaces: ["static:127.0.0.1"]"#,
            r#"interfaces: ["static:127.0.0.2"]"#,
        ),
    )
    .expect("new config");
    let (code, out) = n.agent.cli(&["reload"]);
    assert_eq!(code, 0, "{out}");
    let moved = wait_for(Duration::from_secs(15), || {
        probe = own_tags(&url, &n).and_then(|t| {
            t.into_iter()
                .find_map(|t| t.strip_prefix("probe=").map(str::to_string))
        });
        probe
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.2:"))
    });
    assert!(
        moved,
        "probe after the reload: {probe:?}\n{}",
        n.agent.log()
    );
    let addr = probe.expect("probe");
    assert!(
        std::net::TcpStream::connect_timeout(
            &addr.parse().expect("probe address"),
            Duration::from_secs(2)
        )
        .is_ok(),
        "the presence listener answers on {addr}"
    );
}

/// A reinit intent for a member that never turned healthy (so never
/// campaigned) is still carried out; a refusal (no data directory yet) is
/// asked again without a new intent; an intent whose `requested_ms` was
/// handled already is deleted, never carried out twice.
#[test]
fn reinit_runs_without_campaigning_rearms_and_never_repeats() {
    let d = Dir::new("cl-reinit-watch");
    let url = format!("local://{}", d.path("catalog").display());
    let store = format!("file://{}", d.child("store").0.display());
    let dir = d.child("n1");
    let dead = free_port();
    // Healthy never: the check asks a port nobody listens on.
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: ["sh", "-c", "echo x >> @DIR@/starts; exec sleep 1000"],
       port: {dead}, interfaces: ["static:127.0.0.1"],
       health: {{ tcp: "127.0.0.1:{dead}", interval: "200ms", ttl: "2s" }},
       election: {{ name: "db", ttl: "5s" }},
       snapshot: {{ store: "{store}", interval: "1h", dataDir: "@DIR@/data",
                   create: ["sh", "-c", "true"], restore: ["sh", "-c", "true"] }} }},
  ]
}}"#
    );
    // At first a symlink to a directory: a reinit refuses it.
    let real = d.child("real");
    std::fs::create_dir_all(&real.0).expect("mkdir");
    std::os::unix::fs::symlink(&real.0, dir.path("data")).expect("symlink");
    let agent = start_with(
        &dir,
        &cfg,
        &[],
        &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", "n1")],
    );
    agent.ready();
    let starts = || dir.read("starts").lines().count();
    assert!(wait_for(Duration::from_secs(10), || starts() == 1));
    let key = "_cluster/db/reinit/db-n1";
    let first = format!(r#"{{"requested_ms": {}}}"#, now_ms());
    assert!(kv(&url, &["put", key, &first]));
    // Refused: the data directory is a symlink.
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("reinit refused")),
        "never asked: {}",
        agent.log()
    );
    std::fs::remove_file(dir.path("data")).expect("unlink");
    std::fs::create_dir_all(dir.path("data")).expect("data dir");
    std::fs::write(dir.path("data/junk"), "stale").expect("junk");
    // Asked again on its own, without a new intent.
    assert!(
        wait_for(Duration::from_secs(20), || kv_get(&url, key).is_none()
            && !dir.path("data/junk").exists()
            && starts() == 2),
        "not reinitialised: intent {:?}, starts {}\n{}",
        kv_get(&url, key),
        starts(),
        agent.log()
    );
    // The same request again: deleted, never carried out twice.
    std::fs::write(dir.path("data/junk"), "kept").expect("junk");
    assert!(kv(&url, &["put", key, &first]));
    assert!(
        wait_for(Duration::from_secs(10), || kv_get(&url, key).is_none()),
        "a handled intent stays: {}",
        agent.log()
    );
    assert_eq!(dir.read("data/junk"), "kept");
    assert_eq!(starts(), 2);
    // A new request is carried out.
    let second = format!(r#"{{"requested_ms": {}}}"#, now_ms().saturating_add(1));
    assert!(kv(&url, &["put", key, &second]));
    assert!(
        wait_for(Duration::from_secs(20), || kv_get(&url, key).is_none()
            && !dir.path("data/junk").exists()
            && starts() == 3),
        "second request not carried out: starts {}\n{}",
        starts(),
        agent.log()
    );
    assert_eq!(
        agent
            .log()
            .matches("reinit: data directory emptied")
            .count(),
        2
    );
}
