//! Self-repair with the real binary, real processes and the embedded catalog (one case on etcd too): a failing job is
//! restarted and passes probation; one that keeps failing climbs restart → reimage → replace
//! (data moved aside, snapshot restored, the agent exits with the replace code); a kill -9 of the
//! agent mid-probation continues the ladder from the persisted record; the repair events reach hooks; a warning watchdog never repairs, an error one does.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use autopilot_core::repair::{HistoryRecord, NodeRecord, NodeState, Outcome};
use autopilot_core::spec::RepairStep;
use common::*;

/// A job `app` whose health fails while `@DIR@/fail` exists, with a
/// repair ladder, hooks that log the repair events, and (with `snapshot`)
/// snapshots of `@DIR@/data/db.txt` into `store`.
fn config(ladder: &str, snapshot: Option<&str>) -> String {
    config_with(ladder, snapshot, "")
}

/// Prometheus text from the agent's telemetry endpoint.
fn metrics(addr: &str) -> String {
    http_tcp(addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// As [`config`], with `watchdogs` (a JSON5 list, or empty).
fn config_with(ladder: &str, snapshot: Option<&str>, watchdogs: &str) -> String {
    let snap = snapshot.map_or(String::new(), |store| {
        format!(
            r#"snapshot: {{
      store: "{store}", interval: "300ms", retain: 2, dataDir: "@DIR@/data",
      create: ["sh", "-c", "cp @DIR@/data/db.txt \"$AUTOPILOT_SNAPSHOT_FILE\""],
      restore: ["sh", "-c", "cp \"$AUTOPILOT_SNAPSHOT_FILE\" \"$AUTOPILOT_DATA_DIR/db.txt\""],
    }},"#
        )
    });
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  {watchdogs}
  jobs: [
    {{ name: "app",
      exec: ["sh", "-c", "mkdir -p @DIR@/data; test -s @DIR@/data/db.txt || echo original > @DIR@/data/db.txt; while :; do sleep 0.1; done"],
      port: 8080, interfaces: ["static:127.0.0.1"],
      health: {{ exec: "test ! -e @DIR@/fail", interval: "100ms", ttl: 2 }},
      {snap}
      repair: {{ ladder: {ladder}, probation: "1s", grace: "2s", budget: 1,
                replace: ["sh", "-c", "echo replaced >> @DIR@/replaced"], replaceTimeout: "5s", exitCode: 75 }},
    }},
    {{ name: "on-started", when: {{ source: "app", each: "repairStarted" }}, exec: ["sh", "-c", "echo started >> @DIR@/events"] }},
    {{ name: "on-finished", when: {{ source: "app", each: "repairFinished" }}, exec: ["sh", "-c", "echo finished >> @DIR@/events"] }},
    {{ name: "on-failed", when: {{ source: "app", each: "repairFailed" }}, exec: ["sh", "-c", "echo failed >> @DIR@/events"] }},
  ]
}}"#
    )
}

fn catalog_url(d: &Dir) -> String {
    format!("local://{}", d.path("catalog").display())
}

/// Runs `f` against the test's catalog.
fn with_catalog<T>(
    url: &str,
    f: impl AsyncFnOnce(&dyn autopilot_catalog::Catalog) -> T,
) -> Option<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let etcd = autopilot_config::EtcdConfig::default();
        let catalog = autopilot_runtime::catalog::open(url, "repair-test", &etcd)
            .await
            .ok()?;
        Some(f(catalog.as_ref()).await)
    })
}

/// The live instances of `service`.
fn instances(url: &str, service: &str) -> Vec<autopilot_catalog::Instance> {
    with_catalog(url, async |c| {
        c.instances(service).await.unwrap_or_default()
    })
    .unwrap_or_default()
}

/// The service's history, oldest first.
fn history(url: &str) -> Vec<HistoryRecord> {
    with_catalog(url, async |c| {
        c.kv_list(&autopilot_core::repair::history_prefix("app"))
            .await
            .unwrap_or_default()
    })
    .unwrap_or_default()
    .iter()
    .filter_map(|(_, v)| HistoryRecord::decode(v))
    .collect()
}

fn node_record(url: &str, node: &str) -> Option<NodeRecord> {
    with_catalog(url, async |c| {
        c.kv_get(&autopilot_core::repair::node_record_key("app", node))
            .await
            .ok()
            .flatten()
    })
    .flatten()
    .and_then(|v| NodeRecord::decode(&v))
}

fn steps(h: &[HistoryRecord]) -> Vec<(RepairStep, Option<Outcome>)> {
    h.iter().map(|r| (r.step, r.outcome)).collect()
}

fn events(d: &Dir) -> Vec<String> {
    d.lines("events")
}

#[test]
fn a_failing_job_is_restarted_and_passes_its_probation() {
    let d = Dir::new("repair-restart");
    let url = catalog_url(&d);
    restart_body(&d, &url);
}

#[test]
fn a_failing_job_is_restarted_on_etcd() {
    let d = Dir::new("repair-restart-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    restart_body(&d, &format!("etcd://{}/repair", etcd.endpoint()));
}

/// A failing job is restarted, passes probation once healthy again, and
/// the history, events, /status, node record, node entry and metrics say so.
fn restart_body(d: &Dir, url: &str) {
    let url = url.to_string();
    let port = autopilot_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let telemetry = format!(r#"telemetry: {{ port: {port}, interfaces: ["static:127.0.0.1"] }},"#);
    let a = start_with(
        d,
        &config_with(r#"["restart", "replace"]"#, None, &telemetry),
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", "n1"),
            ("AUTOPILOT_CATALOG", &url),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || a.status()["jobs"][0]["health"]
            == "healthy"),
        "the job comes up healthy; log:\n{}",
        a.log()
    );
    let pid = a.job_pid("app").expect("pid");
    d.write("fail", "");
    assert!(
        wait_for(Duration::from_secs(15), || a
            .job_pid("app")
            .is_some_and(|p| p != pid)),
        "the job is restarted; log:\n{}",
        a.log()
    );
    assert!(
        wait_for(
            Duration::from_secs(5),
            || a.status()["jobs"][0]["repair"]["state"] == "probation"
        ),
        "the node is in probation after the restart: {}",
        a.status()["jobs"][0]["repair"]
    );
    std::fs::remove_file(d.path("fail")).expect("clear the flag");
    assert!(
        wait_for(Duration::from_secs(10), || history(&url)
            .iter()
            .any(|r| r.outcome == Some(Outcome::Succeeded))),
        "the restart succeeds after its probation: {:?}; log:\n{}",
        history(&url),
        a.log()
    );
    assert_eq!(
        steps(&history(&url)),
        vec![(RepairStep::Restart, Some(Outcome::Succeeded))]
    );
    assert!(
        wait_for(Duration::from_secs(5), || events(d)
            == ["started", "finished"]),
        "repairStarted and repairFinished reach their hooks: {:?}",
        events(d)
    );
    // The history is closed first, then the slot given back, then the
    // node shown and recorded healthy.
    assert!(
        wait_for(
            Duration::from_secs(5),
            || a.status()["jobs"][0]["repair"]["state"] == "healthy"
        ),
        "{}",
        a.status()
    );
    assert!(
        wait_for(Duration::from_secs(5), || node_record(&url, "app-n1")
            .map(|r| r.state)
            == Some(NodeState::Healthy)),
        "{:?}",
        node_record(&url, "app-n1")
    );
    let lines = [
        r#"autopilot_repair_state{job="app",state="healthy"} 1"#,
        r#"autopilot_repair_state{job="app",state="probation"} 0"#,
        r#"autopilot_repair_actions_total{job="app",outcome="succeeded",step="restart"} 1"#,
    ];
    assert!(
        wait_for(Duration::from_secs(5), || {
            let m = metrics(&addr);
            lines.iter().all(|l| m.contains(l))
        }),
        "{lines:?} in the metrics:\n{}",
        metrics(&addr)
    );
    let healthy_entry = || {
        instances(&url, "_repair.app").iter().any(|i| {
            i.id == "_repair.app.app-n1"
                && i.status == autopilot_catalog::Status::Passing
                && i.tags.iter().any(|t| t == "state=healthy")
        })
    };
    assert!(
        wait_for(Duration::from_secs(5), healthy_entry),
        "the node entry shows the node healthy: {:?}",
        instances(&url, "_repair.app")
    );
    // The node entry is an entry of its own: the job stays registered.
    assert!(
        wait_for(Duration::from_secs(5), || instances(&url, "app")
            .iter()
            .any(
                |i| i.id == "app-n1" && i.status == autopilot_catalog::Status::Passing
            )),
        "the job's own instance is listed beside its node entry: {:?}",
        instances(&url, "app")
    );
}

#[test]
fn a_job_that_keeps_failing_climbs_to_reimage_then_replace() {
    let d = Dir::new("repair-ladder");
    let url = catalog_url(&d);
    let store = format!("file://{}", d.path("store").display());
    let mut a = start_with(
        &d,
        &config(r#"["restart", "reimage", "replace"]"#, Some(&store)),
        &[],
        &[("AUTOPILOT_HOSTNAME", "n1")],
    );
    a.ready();
    let snapshotted = || {
        with_catalog(&url, async |c| {
            c.kv_get("snapshots/app/index").await.ok().flatten()
        })
        .flatten()
        .is_some_and(|i| i.contains("sha256"))
    };
    assert!(
        wait_for(Duration::from_secs(15), snapshotted),
        "a snapshot is recorded; log:\n{}",
        a.log()
    );
    // Local damage the snapshot does not hold.
    d.write("data/local.txt", "damage");
    d.write("fail", "");
    assert_eq!(
        a.wait(Duration::from_secs(60)),
        Some(75),
        "the agent exits with the replace code; log:\n{}",
        a.log()
    );
    assert_eq!(d.lines("replaced"), ["replaced"], "the replace hook ran");
    assert_eq!(
        steps(&history(&url)),
        vec![
            (RepairStep::Restart, Some(Outcome::Failed)),
            (RepairStep::Reimage, Some(Outcome::Failed)),
            (RepairStep::Replace, Some(Outcome::Replaced)),
        ],
        "log:\n{}",
        a.log()
    );
    // The old data directory is kept aside; the new one holds the snapshot.
    let aside: Vec<_> = std::fs::read_dir(&d.0)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.reimage-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 1, "one directory moved aside: {aside:?}");
    assert!(aside[0].join("local.txt").exists(), "the old data is kept");
    assert!(
        !d.path("data/local.txt").exists(),
        "the new data holds only the snapshot"
    );
    assert_eq!(d.read("data/db.txt").trim(), "original");
    // Each event's hook runs as its own process: a failure and the next
    // step's start, published together, may append in either order.
    let mut seen = events(&d);
    seen.sort();
    assert_eq!(
        seen,
        ["failed", "failed", "started", "started", "started"],
        "every step's events reach the hooks"
    );
}

#[test]
fn a_kill_9_mid_probation_continues_the_ladder() {
    let d = Dir::new("repair-crash");
    let url = catalog_url(&d);
    let cfg = config(r#"["restart", "replace"]"#, None);
    let env = [("AUTOPILOT_HOSTNAME", "n1")];
    let mut a = start_with(&d, &cfg, &[], &env);
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || a.status()["jobs"][0]["health"]
            == "healthy"),
        "healthy; log:\n{}",
        a.log()
    );
    d.write("fail", "");
    assert!(
        wait_for(Duration::from_secs(15), || node_record(&url, "app-n1")
            .is_some_and(
                |r| r.state == NodeState::Probation && r.step == Some(RepairStep::Restart)
            )),
        "the restart's probation is persisted; log:\n{}",
        a.log()
    );
    let job = a.job_pid("app");
    a.signal(libc::SIGKILL);
    assert!(a.wait(Duration::from_secs(5)).is_some());
    if let Some(p) = job {
        killpg(p, libc::SIGKILL);
        kill(p, libc::SIGKILL);
    }
    let mut b = start_with(&d, &cfg, &[], &env);
    b.ready();
    assert_eq!(
        b.wait(Duration::from_secs(60)),
        Some(75),
        "the restarted agent goes on with replace, not another restart; log:\n{}",
        b.log()
    );
    assert_eq!(
        steps(&history(&url)),
        vec![
            (RepairStep::Restart, Some(Outcome::Interrupted)),
            (RepairStep::Replace, Some(Outcome::Replaced)),
        ],
        "log:\n{}",
        b.log()
    );
    assert_eq!(d.lines("replaced"), ["replaced"]);
}

#[test]
fn a_warning_watchdog_never_repairs_and_an_error_one_does() {
    let d = Dir::new("repair-watchdog");
    let url = catalog_url(&d);
    let watchdogs = r#"watchdogs: [
    { name: "slow", exec: ["sh", "-c", "echo slow but alive; exit 1"], interval: "100ms", job: "app" },
    { name: "disk", exec: ["sh", "-c", "test -e @DIR@/wdfail && { echo disk gone; exit 2; }; echo fine"], interval: "100ms" },
  ],"#;
    let a = start_with(
        &d,
        &config_with(r#"["restart", "replace"]"#, None, watchdogs),
        &[],
        &[("AUTOPILOT_HOSTNAME", "n1")],
    );
    a.ready();
    let shown = |name: &str| {
        a.status()["watchdogs"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(10), || shown("slow")["status"]
            == "warning"),
        "the warning is shown in /status: {}; log:\n{}",
        a.status(),
        a.log()
    );
    assert_eq!(shown("slow")["message"], "slow but alive");
    assert_eq!(shown("slow")["job"], "app");
    assert!(
        wait_for(Duration::from_secs(5), || instances(&url, "_watchdogs")
            .iter()
            .any(|i| i.id == "n1.slow"
                && i.status == autopilot_catalog::Status::Warning
                && i.tags.iter().any(|t| t == "status=warning"))),
        "the warning is published as a _watchdogs entry: {:?}",
        instances(&url, "_watchdogs")
    );
    // Longer than `grace`: a warning never reaches the repair machine.
    assert!(
        !wait_for(Duration::from_secs(3), || !history(&url).is_empty()
            || a.status()["jobs"][0]["repair"]["state"] != "healthy"),
        "a warning started a repair: {:?}",
        history(&url)
    );
    d.write("wdfail", "");
    assert!(
        wait_for(Duration::from_secs(10), || history(&url)
            .iter()
            .any(
                |r| r.step == RepairStep::Restart && r.reason.contains("disk gone")
            )),
        "an error watchdog (for every job) starts a restart: {:?}; log:\n{}",
        history(&url),
        a.log()
    );
    std::fs::remove_file(d.path("wdfail")).expect("clear");
    assert!(
        wait_for(Duration::from_secs(10), || history(&url)
            .iter()
            .any(|r| r.outcome == Some(Outcome::Succeeded))),
        "the restart passes its probation once the watchdog is ok: {:?}; log:\n{}",
        history(&url),
        a.log()
    );
}
