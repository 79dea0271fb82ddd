//! ContainerPilot's documented example configs (same shape, local commands) run unchanged with
//! the real binary: they keep running while any job can run, and SIGTERM runs the stop hooks.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn job<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["jobs"].as_array()?.iter().find(|j| j["name"] == name)
}

fn status_of(a: &Agent, name: &str) -> String {
    job(&a.status(), name)
        .and_then(|j| j["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn the_configuration_schema_example_runs_until_sigterm() {
    let d = Dir::new("cp-schema");
    let (port, tport) = (free_port(), free_port());
    let text = fixture("cp-schema.json5")
        .replace("@PORT@", &port.to_string())
        .replace("@TPORT@", &tport.to_string())
        .replace("@BIN@", bin());
    let mut a = start(&d, &text);
    a.ready();
    let healthy = |a: &Agent| job(&a.status(), "app").is_some_and(|j| j["health"] == "healthy");
    assert!(
        wait_for(Duration::from_secs(20), || healthy(&a)),
        "the app became healthy after its dependency and setup; log:\n{}",
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || status_of(&a, "cleanup")
            == "stopped"
            && status_of(&a, "setup") == "stopped"),
        "{}",
        a.log()
    );
    assert_eq!(d.read("cleanup").trim(), "cleaned");
    assert!(
        wait_for(Duration::from_secs(10), || !d.lines("changes").is_empty()
            && d.lines("ticks").len() >= 2),
        "the watch handler ran and the sensor ticks; log:\n{}",
        a.log()
    );
    // Both one-shots are done; the container still runs and serves.
    assert!(
        a.wait(Duration::ZERO).is_none(),
        "exited early; log:\n{}",
        a.log()
    );
    let (code, _) = http_tcp(&format!("127.0.0.1:{port}"), "/").expect("the app answers");
    assert_eq!(code, 200);
    assert_eq!(
        a.status()["jobs"][0]["main"],
        true,
        "the app is the main job"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            http_tcp(&format!("127.0.0.1:{tport}"), "/metrics").is_some_and(|(c, body)| {
                c == 200 && body.contains("my_namespace_my_subsystem_my_events_count")
            })
        }),
        "telemetry serves the sensor's metric; log:\n{}",
        a.log()
    );
    assert_eq!(d.lines("order"), ["setup", "app"]);

    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "within stopTimeout: {took:?}"
    );
    assert_eq!(d.lines("order"), ["setup", "app", "preStop", "postStop"]);
}

#[test]
fn the_setup_then_app_example_keeps_the_app_after_setup() {
    let d = Dir::new("cp-setup");
    let mut a = start(&d, &fixture("cp-setup-chain.json5"));
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || status_of(&a, "setup")
            == "stopped"
            && d.lines("order") == ["setup", "app"]),
        "{}",
        a.log()
    );
    assert!(
        a.wait(Duration::ZERO).is_none(),
        "exited early; log:\n{}",
        a.log()
    );
    let app = a.job_pid("app").expect("the app runs");
    assert!(alive(app));
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(d.lines("order"), ["setup", "app", "preStop"]);
}

#[test]
fn one_shot_jobs_only_run_to_the_last_tick_then_exit_0() {
    let d = Dir::new("cp-batch");
    let mut a = start(&d, &fixture("cp-batch.json5"));
    assert_eq!(
        a.wait(Duration::from_secs(20)),
        Some(0),
        "exits once no job can run; log:\n{}",
        a.log()
    );
    assert_eq!(d.lines("order"), ["setup", "migrate"]);
    assert_eq!(d.lines("ticks").len(), 3, "the first run and two restarts");
}
