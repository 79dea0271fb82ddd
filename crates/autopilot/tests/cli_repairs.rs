//! `autopilot repairs list` against the embedded catalog and a real etcd: node entries, the exhausted marker and the history seeded as agents write them, shown as a table and as JSON, `--limit`, hostile values (control characters, huge and broken JSON, unreadable tags) cleaned or skipped with a note, and the exit codes (0, 1 no data for the service, 2 a bad name, 3 unreachable).
//!
//! Node entries (`_repair.<service>`) are registered into the real catalog
//! through the `Catalog` trait, standing in for the agents; KV records are
//! written with `autopilot kv put`. Nothing is mocked and no agent runs.
// Tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_core::repair::{self, HistoryRecord, NodeState, Outcome, RepairView};
use autopilot_core::spec::RepairStep;
use common::{Dir, bin};

const S: &str = "api";

/// A real catalog the test writes node entries into.
struct Store {
    url: String,
    rt: tokio::runtime::Runtime,
    /// The agents' session (their entries live on it).
    agents: Arc<dyn Catalog>,
    _etcd: Option<autopilot_testkit::Etcd>,
    _dir: Dir,
}

impl Store {
    fn local(tag: &str) -> Store {
        let dir = Dir::new(tag);
        let path = dir.path("catalog");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let agents: Arc<dyn Catalog> = {
            let _in = rt.enter();
            Arc::new(
                autopilot_catalog_local::LocalCatalog::open(&path, "test-agents")
                    .expect("open catalog"),
            )
        };
        Store {
            url: format!("local://{}", path.display()),
            rt,
            agents,
            _etcd: None,
            _dir: dir,
        }
    }

    fn etcd(tag: &str) -> Store {
        let dir = Dir::new(tag);
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let opts = autopilot_catalog_etcd::EtcdOptions {
            endpoints: vec![etcd.endpoint()],
            prefix: "/rp".into(),
            lease_ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let agents: Arc<dyn Catalog> = Arc::new(
            rt.block_on(autopilot_catalog_etcd::EtcdCatalog::connect(
                opts,
                "test-agents",
            ))
            .expect("connect"),
        );
        Store {
            url: format!("etcd://{}/rp", etcd.endpoint()),
            rt,
            agents,
            _etcd: Some(etcd),
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_at(&self.url, args)
    }

    fn kv_put(&self, key: &str, value: &str) {
        let (code, _, err) = self.cli(&["kv", "put", key, value]);
        assert_eq!(code, 0, "kv put {key}: {err}");
    }

    /// Publishes a node entry with the tags an agent writes.
    fn node(&self, id: &str, view: &RepairView, leader: bool, status: Status) {
        self.node_tags(
            id,
            repair::node_tags(view, leader, "2026-11-28T12:00:00.000Z"),
            status,
        );
    }

    fn node_tags(&self, id: &str, tags: Vec<String>, status: Status) {
        let reg = Registration {
            id: id.into(),
            name: repair::node_service(S),
            address: "127.0.0.1".into(),
            port: 0,
            tags,
            status,
            ttl: Duration::from_secs(120),
            deregister_critical_after: None,
            seat: None,
        };
        self.rt
            .block_on(self.agents.register(&reg))
            .expect("register node entry");
    }

    fn history(&self, ms: u64, node: &str, step: RepairStep, outcome: Option<Outcome>) {
        let rec = HistoryRecord {
            node: node.into(),
            job: S.into(),
            step,
            attempt: 1,
            reason: "its health check is failing".into(),
            started: format!("2026-11-28T12:00:{:02}.000Z", ms % 60),
            ended: outcome.map(|_| "2026-11-28T12:01:00.000Z".into()),
            outcome,
            message: outcome.map(|o| format!("ended {}", o.as_str())),
        };
        self.kv_put(
            &repair::history_key(S, ms, node),
            &serde_json::to_string(&rec).expect("encode"),
        );
    }
}

fn cli_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("AUTOPILOT_CATALOG", url)
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn view(state: NodeState, step: Option<RepairStep>, attempt: u32) -> RepairView {
    RepairView {
        state,
        step,
        attempt,
        reason: (state != NodeState::Healthy).then(|| "its health check is failing".into()),
        since: Duration::ZERO,
        waiting_for_budget: false,
        holds_slot: false,
        exhausted: false,
        running: false,
    }
}

/// Three nodes (healthy; failing, waiting for the budget; leader in
/// probation holding the slot), three history records and the marker.
fn seed(s: &Store) {
    s.node(
        "api-a",
        &view(NodeState::Healthy, None, 0),
        false,
        Status::Passing,
    );
    let mut waiting = view(NodeState::Failure, None, 0);
    waiting.waiting_for_budget = true;
    s.node("api-b", &waiting, false, Status::Critical);
    let mut fixing = view(NodeState::Probation, Some(RepairStep::Reimage), 2);
    fixing.holds_slot = true;
    s.node("api-c", &fixing, true, Status::Warning);
    s.history(
        1_764_331_200_001,
        "api-c",
        RepairStep::Restart,
        Some(Outcome::Failed),
    );
    s.history(1_764_331_200_002, "api-c", RepairStep::Reimage, None);
    s.history(
        1_764_331_100_000,
        "api-a",
        RepairStep::Restart,
        Some(Outcome::Succeeded),
    );
    s.kv_put(
        &repair::exhausted_key(S),
        r#"{"since":"2026-11-28T12:00:05.000Z","by":"api-b"}"#,
    );
}

fn check_seeded(s: &Store) {
    let (code, out, err) = s.cli(&["repairs", "list", S]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("service api: 3 nodes, in repair: 1 (1 slot held), waiting for budget: 1"),
        "{out}"
    );
    assert!(
        out.contains("budget: EXHAUSTED since 2026-11-28T12:00:05.000Z (first denied: api-b)"),
        "{out}"
    );
    let row = |id: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("api-a").contains("healthy"), "{out}");
    assert!(
        row("api-b").contains("failure") && row("api-b").contains("waiting"),
        "{out}"
    );
    let c = row("api-c");
    assert!(
        c.contains("probation") && c.contains("reimage") && c.contains("slot,leader"),
        "{out}"
    );
    // History, newest first: the running reimage, the failed restart, then a's.
    let hist: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("history (newest first, 3 of 3)"))
        .skip(2)
        .collect();
    assert_eq!(hist.len(), 3, "{out}");
    assert!(
        hist[0].contains("reimage") && hist[0].contains("running"),
        "{out}"
    );
    assert!(
        hist[1].contains("restart") && hist[1].contains("failed"),
        "{out}"
    );
    assert!(
        hist[2].contains("api-a") && hist[2].contains("succeeded"),
        "{out}"
    );

    let (code, out, err) = s.cli(&["repairs", "list", S, "-o", "json", "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let svc = &v["services"][0];
    assert_eq!(svc["service"], S);
    assert_eq!(svc["inRepair"], 1);
    assert_eq!(svc["slotsHeld"], 1);
    assert_eq!(svc["waitingForBudget"], 1);
    assert_eq!(svc["budgetExhausted"]["by"], "api-b");
    assert_eq!(svc["historyTotal"], 3);
    assert_eq!(
        svc["history"].as_array().map(Vec::len),
        Some(1),
        "--limit 1"
    );
    assert_eq!(svc["history"][0]["step"], "reimage");
    assert!(svc["history"][0]["outcome"].is_null());
    let nodes = svc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let c = nodes.iter().find(|n| n["id"] == "api-c").expect("api-c");
    assert_eq!(c["state"], "probation");
    assert_eq!(c["step"], "reimage");
    assert_eq!(c["attempt"], 2);
    assert_eq!(c["holdsSlot"], true);
    assert_eq!(c["leader"], true);
    assert_eq!(c["live"], true);
    assert_eq!(c["status"], "warning");

    // Every service with repair data, when none is named.
    let (code, out, err) = s.cli(&["repairs", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let names: Vec<_> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["service"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, [S]);

    let (code, _, err) = s.cli(&["repairs", "list", "nothing-here"]);
    assert_eq!(code, 1, "no data for the service: {err}");
    assert!(err.contains("no repair data for \"nothing-here\""), "{err}");
    let (code, _, err) = s.cli(&["repairs", "list", "a/b"]);
    assert_eq!(code, 2, "a name that is no key segment: {err}");
}

#[test]
fn list_shows_nodes_budget_and_history_local() {
    let s = Store::local("repairs-local");
    let (code, out, err) = s.cli(&["repairs", "list"]);
    assert_eq!(code, 0, "no data at all is no error without a name: {err}");
    assert!(out.contains("no repair data"), "{out}");
    seed(&s);
    check_seeded(&s);
}

#[test]
fn list_shows_nodes_budget_and_history_etcd() {
    let s = Store::etcd("repairs-etcd");
    seed(&s);
    check_seeded(&s);
}

#[test]
fn hostile_values_are_cleaned_or_skipped() {
    let s = Store::local("repairs-hostile");
    let evil = format!("reason=\u{1b}[2J\u{7}{}", "x".repeat(5000));
    s.node_tags(
        "api-\u{1b}evil",
        vec![
            "state=failure".into(),
            "attempt=99999999999999".into(),
            evil,
        ],
        Status::Critical,
    );
    s.node_tags("api-junk", vec!["state=sleeping".into()], Status::Passing);
    s.kv_put(&repair::history_key(S, 1, "api-x"), "not json at all");
    s.kv_put(
        &repair::history_key(S, 2, "api-x"),
        &format!(r#"{{"node":"{}"}}"#, "y".repeat(70_000)),
    );
    s.kv_put(&repair::node_record_key(S, "api-gone"), "[[[");
    s.kv_put(
        &repair::node_record_key(S, "api-left"),
        r#"{"state":"probation","step":"replace","attempt":3,"reason":"bye","extra":1}"#,
    );
    s.kv_put(&repair::exhausted_key(S), "\u{1b}garbage");

    let (code, out, err) = s.cli(&["repairs", "list", S]);
    assert_eq!(code, 0, "hostile data is no crash: {err}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "no control characters reach the terminal: {out:?}"
    );
    assert!(
        out.lines().all(|l| l.chars().count() < 1000),
        "capped: {out}"
    );
    assert!(out.contains("1 node entries skipped (unreadable)"), "{out}");
    assert!(out.contains("1 node records skipped (unreadable)"), "{out}");
    assert!(
        out.contains("2 history records skipped (unreadable)"),
        "{out}"
    );
    assert!(out.contains("EXHAUSTED (marker unreadable)"), "{out}");
    let left = out
        .lines()
        .find(|l| l.contains("api-left"))
        .unwrap_or_default();
    assert!(
        left.contains("probation") && left.contains("replace") && left.contains("gone"),
        "a node left in repair without a live entry is shown from its record: {out}"
    );

    let (code, out, err) = s.cli(&["repairs", "list", S, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let svc = &v["services"][0];
    assert_eq!(svc["notes"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(svc["budgetExhausted"]["unreadable"], true);
    let evil = svc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["state"] == "failure")
        .expect("the evil node");
    let reason = evil["reason"].as_str().unwrap_or_default();
    assert!(
        reason.chars().count() <= 200 && !reason.contains('\u{1b}'),
        "{reason:?}"
    );
    assert_eq!(
        evil["attempt"], 0,
        "an attempt that does not fit reads as 0"
    );
}

#[test]
fn unreachable_catalog_exits_3() {
    let dir = Dir::new("repairs-unreach");
    let missing = format!("local://{}", dir.path("none").display());
    let (code, _, err) = cli_at(&missing, &["repairs", "list", S]);
    assert_eq!(code, 3, "{err}");
    assert!(!dir.path("none").exists(), "a reader creates no catalog");
    let port = autopilot_testkit::refused_port();
    let url = format!("etcd://127.0.0.1:{}/rp", port.port);
    let (code, _, err) = cli_at(&url, &["repairs", "list", "--timeout", "2s"]);
    assert_eq!(code, 3, "{err}");
}
