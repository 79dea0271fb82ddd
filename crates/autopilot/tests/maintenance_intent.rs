//! The maintenance intent end to end on a real etcd with two agents: an intent written to `_fleet/maintenance/<node>` puts that node (only) in maintenance within about a second and is recorded as applied, an intent off brings it back, a restarted agent starts in maintenance while the intent stands, and garbage in the key is logged and ignored. The `_nodes` entries follow.
// Tests start the real binary and etcd as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use autopilot_testkit::Etcd;
use common::*;
use serde_json::Value;

/// How long an intent may take to be applied and visible in the catalog:
/// the agent applies it within a second; the rest is the catalog round trip
/// and this test's polling on a shared machine.
const APPLY: Duration = Duration::from_secs(2);

fn config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "web", exec: "sleep 300", port: {port}, interfaces: ["static:127.0.0.1"],
            health: {{ exec: "true", interval: "200ms", ttl: 3 }} }}],
}}"#
    )
}

fn agent(dir: &Dir, node: &str, url: &str, port: u16) -> Agent {
    let a = start_with(
        dir,
        &config(port),
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_HOSTNAME", node),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    a.ready();
    a
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin()).args(args).output().expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn instances(url: &str, service: &str) -> Vec<Value> {
    let (code, out) = run(&["catalog", "--catalog", url, "instances", service, "--json"]);
    if code != 0 {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_default()
}

/// The `_nodes` entry of `node`, if any.
fn node_entry(url: &str, node: &str) -> Option<Value> {
    instances(url, "_nodes")
        .into_iter()
        .find(|i| i["id"] == node)
}

fn has_tag(entry: &Value, tag: &str) -> bool {
    entry["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == tag))
}

fn tag(entry: &Value, key: &str) -> Option<String> {
    entry["tags"].as_array()?.iter().find_map(|t| {
        t.as_str()?
            .strip_prefix(&format!("{key}="))
            .map(str::to_string)
    })
}

fn passing_web(url: &str, id: &str) -> bool {
    instances(url, "web")
        .iter()
        .any(|i| i["id"] == id && i["status"] == "passing")
}

fn intent(url: &str, node: &str) -> Option<Value> {
    let (code, out) = run(&[
        "kv",
        "--catalog",
        url,
        "get",
        &format!("_fleet/maintenance/{node}"),
    ]);
    if code != 0 {
        return None;
    }
    serde_json::from_str(out.trim()).ok()
}

fn put_intent(url: &str, node: &str, on: bool, id: &str) {
    let value = format!(
        r#"{{"on": {on}, "id": "{id}", "by": "test", "at_ms": {at}, "applied_ms": null, "applied_by": null, "outcome": null}}"#,
        at = autopilot_catalog::now_ms()
    );
    put_raw(url, node, &value);
}

fn put_raw(url: &str, node: &str, value: &str) {
    let (code, out) = run(&[
        "kv",
        "--catalog",
        url,
        "put",
        &format!("_fleet/maintenance/{node}"),
        value,
    ]);
    assert_eq!(code, 0, "kv put: {out}");
}

/// Waits until node `node` shows maintenance `on` everywhere: its entry's
/// tag and status, its job's entry, and the intent `id` recorded as applied
/// by the session the entry names. Returns how long it took.
fn wait_applied(url: &str, node: &str, on: bool, id: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let ok = wait_for(limit, || {
        let Some(e) = node_entry(url, node) else {
            return false;
        };
        let status = if on { "warning" } else { "passing" };
        let Some(i) = intent(url, node) else {
            return false;
        };
        has_tag(&e, &format!("maintenance={on}"))
            && e["status"] == status
            && passing_web(url, &format!("web-{node}")) != on
            && i["id"] == id
            && i["outcome"] == "applied"
            && i["applied_ms"].as_u64().is_some()
            && tag(&e, "session").is_some_and(|s| i["applied_by"] == s.as_str())
    });
    ok.then(|| t0.elapsed())
}

#[test]
fn the_intent_moves_one_node_in_and_out_of_maintenance() {
    let d = Dir::new("maint-intent");
    let etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/maint", etcd.endpoint());
    let (da, db) = (d.child("na"), d.child("nb"));
    let mut a = Some(agent(&da, "na", &url, free_port()));
    let b = agent(&db, "nb", &url, free_port());
    assert!(
        wait_for(Duration::from_secs(15), || passing_web(&url, "web-na")
            && passing_web(&url, "web-nb")
            && node_entry(&url, "na")
                .is_some_and(|e| has_tag(&e, "maintenance=false"))
            && node_entry(&url, "nb")
                .is_some_and(|e| has_tag(&e, "maintenance=false"))),
        "both nodes up; entries {:?}",
        instances(&url, "_nodes")
    );
    let na = node_entry(&url, "na").expect("entry");
    assert_eq!(na["status"], "passing");
    assert!(has_tag(&na, "job=web"), "{na}");
    assert!(has_tag(
        &na,
        &format!("version={}", env!("CARGO_PKG_VERSION"))
    ));
    assert!(tag(&na, "started").is_some_and(|s| s.ends_with('Z')));
    assert!(tag(&na, "session").is_some_and(|s| s.starts_with("na/")));
    assert_eq!(na["address"], "127.0.0.1");
    // The node's health log has its job's first transition.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let (code, out) = run(&["kv", "--catalog", &url, "get", "_fleet/health/na"]);
            code == 0
                && serde_json::from_str::<Vec<Value>>(out.trim()).is_ok_and(|log| {
                    log.iter().any(|t| {
                        t["job"] == "web"
                            && t["status"] == "healthy"
                            && t["at_ms"].as_u64().is_some()
                    })
                })
        }),
        "no health log for na"
    );

    // On: node A only.
    put_intent(&url, "na", true, "00000000000000a1");
    let took = wait_applied(&url, "na", true, "00000000000000a1", APPLY);
    assert!(
        took.is_some(),
        "intent on not applied within {APPLY:?}: entry {:?}, intent {:?}\n{}",
        node_entry(&url, "na"),
        intent(&url, "na"),
        a.as_ref().map(Agent::log).unwrap_or_default()
    );
    // The agent applied it within a second of the write (same clock).
    let i = intent(&url, "na").expect("intent");
    let lag = i["applied_ms"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_sub(i["at_ms"].as_u64().unwrap_or(0));
    assert!(lag <= 1000, "applied {lag} ms after the write: {i}");
    assert_eq!(a.as_ref().expect("agent").status()["maintenance"], true);
    assert_eq!(b.status()["maintenance"], false);
    assert!(passing_web(&url, "web-nb"), "node B untouched");
    assert!(node_entry(&url, "nb").is_some_and(|e| has_tag(&e, "maintenance=false")));

    // Off: back in service.
    put_intent(&url, "na", false, "00000000000000a2");
    assert!(
        wait_applied(&url, "na", false, "00000000000000a2", APPLY + APPLY).is_some(),
        "intent off not applied: {:?} {:?}",
        node_entry(&url, "na"),
        intent(&url, "na")
    );

    // On again, then A's agent restarts while the intent stands: it starts
    // in maintenance (its job never enters the catalog) and records the
    // intent under its new session.
    put_intent(&url, "na", true, "00000000000000a3");
    assert!(wait_applied(&url, "na", true, "00000000000000a3", APPLY).is_some());
    let old_session = tag(&node_entry(&url, "na").expect("entry"), "session");
    drop(a.take());
    assert!(
        wait_for(Duration::from_secs(10), || node_entry(&url, "na").is_none()),
        "a stopped agent removes its node entry"
    );
    a = Some(agent(&da, "na", &url, free_port()));
    let restarted = Instant::now();
    let mut seen_web = false;
    let ok = wait_for(Duration::from_secs(10), || {
        seen_web |= passing_web(&url, "web-na");
        node_entry(&url, "na")
            .is_some_and(|e| tag(&e, "session") != old_session && has_tag(&e, "maintenance=true"))
            && wait_applied(&url, "na", true, "00000000000000a3", Duration::ZERO).is_some()
    });
    assert!(
        ok,
        "restarted agent not in maintenance: {:?} {:?}",
        node_entry(&url, "na"),
        intent(&url, "na")
    );
    // Its job runs (health checks pass) but stays out of the catalog.
    let agent_a = a.as_ref().expect("agent");
    assert!(wait_for(Duration::from_secs(5), || {
        agent_a.status()["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["name"] == "web"))
    }));
    assert!(
        !wait_for(Duration::from_secs(1), || passing_web(&url, "web-na")) && !seen_web,
        "web-na registered after the restart ({:?} since)",
        restarted.elapsed()
    );
    assert_eq!(agent_a.status()["maintenance"], true);

    // Garbage is ignored and logged; the node stays as it was.
    for bad in ["garbage", r#"{"on": "yes"}"#, "[1,2,3]"] {
        put_raw(&url, "na", bad);
        assert!(
            wait_for(Duration::from_secs(5), || agent_a
                .log()
                .matches("ignoring the maintenance intent")
                .count()
                >= 1
                && agent_a.log().contains("unusable reads so far")),
            "no log line for {bad:?}:\n{}",
            agent_a.log()
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || agent_a
            .log()
            .matches("ignoring the maintenance intent")
            .count()
            >= 3),
        "each distinct bad value is logged:\n{}",
        agent_a.log()
    );
    assert_eq!(agent_a.status()["maintenance"], true);
    assert!(node_entry(&url, "na").is_some_and(|e| has_tag(&e, "maintenance=true")));
    assert!(passing_web(&url, "web-nb"));
    // A valid intent after the garbage works again.
    put_intent(&url, "na", false, "00000000000000a4");
    assert!(
        wait_applied(&url, "na", false, "00000000000000a4", APPLY + APPLY).is_some(),
        "intent after garbage not applied:\n{}",
        agent_a.log()
    );
    drop((a, b));
}
