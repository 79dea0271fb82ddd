//! Chaos on etcd with real agents: etcd stalled (SIGSTOP) far past the lease TTL, or killed and restarted empty; entries, leadership and watches come back without touching the app.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use autopilot_testkit::Etcd;
use common::*;

/// The lease TTL the agents run with: a 10 s stall is five TTLs.
const TTL: &str = "2s";

/// A job with a port and a passing health check that campaigns in an
/// election (no roles: its entry is the plain `web` one).
fn web_config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "web", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
            health: {{ exec: "true", interval: "200ms", ttl: 2 }},
            election: {{ name: "web-primary", ttl: "2s" }} }}],
}}"#
    )
}

/// An agent that only watches `web`, with a safety-net interval far longer
/// than the test: only the catalog's change notification can wake it.
fn watcher_config() -> &'static str {
    r#"{
  control: { socket: "@SOCKET@" },
  watches: [{ name: "web", interval: 600 }],
  jobs: [{ name: "idle", exec: "sleep 600" }],
}"#
}

fn agent(d: &Dir, name: &str, url: &str, config: &str) -> Agent {
    let sub = d.child(name);
    let a = start_with(
        &sub,
        config,
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_HOSTNAME", name),
            ("AUTOPILOT_ETCD_TTL", TTL),
        ],
    );
    a.ready();
    a
}

/// What the agent's `/v3/status` says is in the catalog for its `web` job.
fn claimed(a: &Agent) -> serde_json::Value {
    a.status()["jobs"][0]["registration"]["catalog"].clone()
}

fn leads(a: &Agent) -> bool {
    a.status()["jobs"][0]["election"]["leader"] == true
}

/// Polls until `web-h1` is listed; returns how long it took from `from`.
fn back_after(url: &str, from: Instant) -> Duration {
    assert!(
        wait_for(Duration::from_secs(10), || passing_ids(url, "web")
            == Some(vec!["web-h1".into()])),
        "the entry never came back"
    );
    from.elapsed()
}

/// The CLI that reads the catalog is a new process with its own etcd
/// connection; its start is part of each poll, so allow it on top of 1 s.
const BACK_WITHIN: Duration = Duration::from_millis(1500);

fn stall(seconds: u64) {
    let d = Dir::new(&format!("chaos-stall{seconds}"));
    let etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/chaos", etcd.endpoint());
    let a = agent(&d, "h1", &url, &web_config(free_port()));
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into()
    ])));
    assert!(wait_for(Duration::from_secs(10), || leads(&a)), "h1 leads");
    assert!(wait_for(Duration::from_secs(5), || claimed(&a) == "passing"));
    let pid = a.job_pid("web").expect("pid");

    etcd.pause();
    let stalled = Instant::now();
    // Past the TTL the entry is gone from etcd: the agent stops claiming it.
    assert!(
        wait_for(Duration::from_secs(9), || claimed(&a).is_null()),
        "during the stall /v3/status still claims the entry: {}",
        a.status()
    );
    let gone = stalled.elapsed();
    eprintln!("status stopped claiming the entry {gone:?} into the stall");
    // The last keep-alive went out at most TTL/3 before the stall.
    assert!(
        gone >= Duration::from_millis(1300),
        "not before the TTL: {gone:?}"
    );
    let st = a.status();
    assert_eq!(st["catalog"]["degraded"], true, "{st}");
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(stalled.elapsed()));
    etcd.resume();
    let resumed = Instant::now();

    let took = back_after(&url, resumed);
    eprintln!("entry back {took:?} after etcd resumed from a {seconds} s stall");
    assert!(took < BACK_WITHIN, "entry back within 1 s: {took:?}");
    assert!(wait_for(Duration::from_secs(3), || claimed(&a) == "passing"));
    assert_eq!(a.job_pid("web"), Some(pid), "the app was never restarted");
    // The seat expired with its lease during the stall; nobody else wants
    // it, so h1 wins it again.
    assert!(
        wait_for(Duration::from_secs(5), || leads(&a)),
        "h1 leads again after the stall: {}",
        a.status()
    );
    let lead_back = resumed.elapsed();
    eprintln!("leading again {lead_back:?} after etcd resumed");
    assert_eq!(a.status()["catalog"]["degraded"], false);
    drop(a);
    drop(etcd);
}

#[test]
fn a_10s_stall_loses_nothing() {
    stall(10);
}

#[test]
fn a_60s_stall_loses_nothing() {
    stall(60);
}

#[test]
fn an_empty_restart_loses_nothing_and_watches_keep_seeing_changes() {
    let d = Dir::new("chaos-empty");
    let mut etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/chaos", etcd.endpoint());
    let a = agent(&d, "h1", &url, &web_config(free_port()));
    let w = agent(&d, "w1", &url, watcher_config());
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into()
    ])));
    assert!(wait_for(Duration::from_secs(5), || w.status()["watches"]
        [0]["passing"]
        == 1));
    let pid = a.job_pid("web").expect("pid");

    etcd.restart_empty();
    let answering = Instant::now();
    let took = back_after(&url, answering);
    eprintln!("entry back {took:?} after an empty etcd answered");
    assert!(took < BACK_WITHIN, "entry back within 1 s: {took:?}");
    assert_eq!(a.job_pid("web"), Some(pid), "the app was never restarted");
    assert!(
        wait_for(Duration::from_secs(5), || leads(&a)),
        "h1 leads again"
    );
    assert!(wait_for(Duration::from_secs(5), || w.status()["watches"]
        [0]["passing"]
        == 1));

    // A change on the new cluster reaches the watcher (its safety-net
    // re-read is 10 minutes away): stopping h1 deregisters web-h1.
    drop(a);
    let stopped = Instant::now();
    assert!(
        wait_for(
            Duration::from_secs(5),
            || w.status()["watches"][0]["passing"] == 0
        ),
        "the watch went silent after the empty restart: {}",
        w.status()
    );
    eprintln!(
        "watcher saw the change {:?} after h1 stopped",
        stopped.elapsed()
    );
    drop(w);
    drop(etcd);
}
