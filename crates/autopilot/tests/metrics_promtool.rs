//! The agent's `/metrics` against real etcd, checked by `promtool check metrics`: an agent with an election, a snapshot, a template and a repair job exposes the new families (build info, process, elections, catalog requests, snapshots, repair) with sane values, and nothing promtool calls an error. Also `promtool check rules` and `promtool test rules` on examples/prometheus.
// Tests start the real binary, etcd and promtool as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use autopilot_testkit::Etcd;
use common::*;

/// Counters that keep their ContainerPilot-compatible names (no `_total`):
/// promtool's lint warns about them, and that is all it may say.
const LEGACY_COUNTERS: [&str; 5] = [
    "autopilot_template_renders",
    "autopilot_template_command_failures",
    "autopilot_job_restarts",
    "autopilot_health_checks",
    "autopilot_events",
];

fn promtool() -> &'static str {
    "promtool"
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/prometheus")
}

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The value of the first series of family `name` whose labels contain `needle`.
fn value_with(text: &str, name: &str, needle: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, v) = rest.split_once("} ")?;
        labels.contains(needle).then(|| v.trim().parse().ok())?
    })
}

fn config(dir: &Dir, port: u16, tport: u16, store: &Path) -> String {
    dir.write(
        "t.tmpl",
        "db at {{ range service \"db\" }}{{ .Port }}{{ end }}\n",
    );
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  stopTimeout: "2s",
  jobs: [{{
    name: "db", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
    health: {{ exec: "true", interval: "200ms", ttl: 3 }},
    election: {{ name: "db-primary", ttl: "2s" }},
    snapshot: {{
      name: "db-set", store: "file://{store}", dataDir: "@DIR@/data", interval: "1s", retain: 2,
      create: ["sh", "-c", "echo data > \"$AUTOPILOT_SNAPSHOT_FILE\""],
      restore: ["sh", "-c", "true"],
    }},
    repair: {{ ladder: ["restart"], probation: "1s", grace: "4s", budget: 1 }},
  }}],
  templates: [{{ source: "@DIR@/t.tmpl", dest: "@DIR@/t.out" }}],
  telemetry: {{ port: {tport}, interfaces: ["static:127.0.0.1"] }},
}}"#,
        store = store.display()
    )
}

#[test]
fn metrics_pass_promtool_and_show_the_new_families() {
    let d = Dir::new("metrics-promtool");
    let etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/metrics", etcd.endpoint());
    let store = d.path("store");
    std::fs::create_dir_all(&store).expect("store");
    std::fs::create_dir_all(d.path("data")).expect("data");
    let (port, tport) = (free_port(), free_port());
    let a = start_with(
        &d,
        &config(&d, port, tport, &store),
        &[],
        &[
            ("AUTOPILOT_CATALOG", &url),
            ("AUTOPILOT_HOSTNAME", "m1"),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    a.ready();
    let addr = format!("127.0.0.1:{tport}");
    let scrape = || {
        http_tcp(&addr, "/metrics")
            .filter(|(c, _)| *c == 200)
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let mut text = String::new();
    let ready = wait_for(Duration::from_secs(20), || {
        text = scrape();
        value(&text, "autopilot_election_leader{election=\"db-primary\"}") == Some(1.0)
            && value(
                &text,
                "autopilot_snapshot_last_success_timestamp_seconds{set=\"db-set\"}",
            )
            .is_some()
            && value_with(&text, "autopilot_template_renders", "written").is_some()
            && value_with(&text, "autopilot_repair_state", "state=\"healthy\"") == Some(1.0)
            && value(&text, "autopilot_catalog_registered").is_some_and(|v| v >= 1.0)
    });
    assert!(ready, "families missing:\n{text}\nlog:\n{}", a.log());

    // promtool: exit 0, or 3 (lint problems) when the only problems are the
    // legacy counter names; never a parse error (exit 1).
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "promtool exit {code:?}:\n{report}\n{text}"
    );
    assert!(!report.contains("error"), "promtool error:\n{report}");
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let legacy = LEGACY_COUNTERS
            .iter()
            .any(|n| line == format!("{n} counter metrics should have \"_total\" suffix"));
        assert!(legacy, "unexpected promtool complaint: {line:?}\n{report}");
    }
    assert_eq!(
        code == Some(3),
        !report.trim().is_empty(),
        "exit 3 iff complaints:\n{report}"
    );

    // Sane values.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value_with(
            &text,
            "autopilot_build_info",
            &format!("version=\"{version}\"")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("autopilot_build_info{commit=\"")),
        "{text}"
    );
    let term = value(&text, "autopilot_election_term{election=\"db-primary\"}");
    assert!(term.is_some_and(|t| t >= 1.0), "term {term:?}");
    assert!(
        value(
            &text,
            "autopilot_election_transitions_total{election=\"db-primary\"}"
        )
        .is_some_and(|t| t >= 1.0),
        "{text}"
    );
    let rss = value(&text, "process_resident_memory_bytes");
    assert!(rss.is_some_and(|v| v > 1e6), "rss {rss:?}");
    assert!(value(&text, "process_virtual_memory_bytes") >= rss);
    let fds = value(&text, "process_open_fds");
    assert!(fds.is_some_and(|v| v >= 3.0), "fds {fds:?}");
    assert!(value(&text, "process_max_fds") > fds);
    let now = autopilot_catalog::now_ms() as f64 / 1000.0;
    let start = value(&text, "process_start_time_seconds").expect("start time");
    assert!(
        start <= now && start > now - 600.0,
        "start {start}, now {now}"
    );
    assert!(value(&text, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0));
    let snap = value(
        &text,
        "autopilot_snapshot_last_success_timestamp_seconds{set=\"db-set\"}",
    )
    .expect("snapshot");
    assert!(snap <= now && snap > now - 60.0, "snapshot at {snap}");
    assert!(
        value(&text, "autopilot_snapshot_duration_seconds{set=\"db-set\"}")
            .is_some_and(|v| (0.0..30.0).contains(&v))
    );
    for op in ["campaign", "kv_get", "kv_cas", "register"] {
        let n = value(
            &text,
            &format!("autopilot_catalog_request_duration_seconds_count{{operation=\"{op}\"}}"),
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{op}: {n:?}\n{text}");
        assert!(
            value(
                &text,
                &format!("autopilot_catalog_request_errors_total{{operation=\"{op}\"}}")
            )
            .is_some(),
            "{op} errors"
        );
    }
    assert_eq!(
        value(&text, "autopilot_repair_budget_exhausted{job=\"db\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value(&text, "autopilot_maintenance"), Some(0.0));
    assert_eq!(value(&text, "autopilot_catalog_degraded"), Some(0.0));
    drop(a);
}

fn promtool_ok(args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(examples())
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_example_alerts_are_valid_and_each_fires() {
    let (ok, out) = promtool_ok(&["check", "rules", "alerts.yml"]);
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "{out}");
    let (ok, out) = promtool_ok(&["test", "rules", "alerts_test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // Every alert of alerts.yml has a test case that expects it to fire.
    let rules = std::fs::read_to_string(examples().join("alerts.yml")).expect("alerts.yml");
    let tests = std::fs::read_to_string(examples().join("alerts_test.yml")).expect("tests");
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for n in names {
        assert!(
            tests.contains(&format!(
                "alertname: {n}\n        exp_alerts:\n          - "
            )),
            "no firing test for {n}"
        );
    }
}
