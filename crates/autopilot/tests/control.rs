//! The control socket, the CLI flags and subcommands, reload, and `/metrics`.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

const CONFIG: &str = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: "sleep 30" },
    { name: "show", when: { source: "SIGHUP" }, exec: ["sh", "-c", "echo \"[$GREETING]\" >> @DIR@/env"] },
  ],
  telemetry: { port: @PORT@, interfaces: ["static:127.0.0.1"], metrics: [
    { namespace: "app", name: "hits", help: "hits served", type: "counter" },
    { name: "temperature", help: "current temperature", type: "gauge" },
    { name: "latency", help: "request latency", type: "histogram" },
    { name: "size", help: "payload size", type: "summary" },
  ] },
}"#;

fn start_cfg(d: &Dir, port: u16) -> Agent {
    let a = start(d, &CONFIG.replace("@PORT@", &port.to_string()));
    a.ready();
    a
}

#[test]
fn every_endpoint_and_cli_flag() {
    let d = Dir::new("ctl");
    let port = free_port();
    let a = start_cfg(&d, port);
    let mode = std::fs::metadata(&a.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket is private");

    assert_eq!(
        http_unix(&a.socket, "GET", "/v3/ping", ""),
        Some((200, "ok".into()))
    );
    assert_eq!(a.cli(&["-ping"]).0, 0);
    assert_eq!(a.cli(&["ping"]).0, 0);
    assert!(a.cli(&["-version"]).1.starts_with("autopilot "));
    assert!(a.cli(&["version"]).1.starts_with("autopilot "));

    // putenv: set, observe in a job, clear.
    let (c, out) = a.cli(&["-putenv", "GREETING=hello=world", "-putenv", "OTHER=1"]);
    assert_eq!(c, 0, "{out}");
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || d.lines("env")
        == ["[hello=world]"]));
    assert_eq!(a.cli(&["putenv", "GREETING"]).0, 0);
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || d.lines("env")
        == ["[hello=world]", "[]"]));
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/environ", r#"{"1BAD": "x"}"#).map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/environ", r#"{"A": 5}"#).map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/environ", "not json").map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/environ", r#"{"B": null}"#).map(|r| r.0),
        Some(200)
    );
    let (c, out) = a.cli(&["-putenv", "=x"]);
    assert_ne!(c, 0, "{out}");

    // putmetric through flags, subcommand and HTTP.
    assert_eq!(
        a.cli(&["-putmetric", "app_hits=2", "-putmetric", "temperature=21.5"])
            .0,
        0
    );
    assert_eq!(
        a.cli(&["putmetric", "app_hits=3", "latency=0.2", "size=10"])
            .0,
        0
    );
    let (c, out) = a.cli(&["-putmetric", "nosuch=1"]);
    assert_ne!(c, 0);
    assert!(out.contains("unknown metric \"nosuch\""), "{out}");
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/metric", r#"{"app_hits": "x"}"#).map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/metric", r#"{"app_hits": -1}"#).map(|r| r.0),
        Some(400)
    );
    // A bad entry applies nothing, not even the good one beside it.
    assert_eq!(
        http_unix(
            &a.socket,
            "POST",
            "/v3/metric",
            r#"{"temperature": 99, "nosuch": 1}"#
        )
        .map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http_unix(&a.socket, "POST", "/v3/metric", r#"{"size": 30}"#).map(|r| r.0),
        Some(200)
    );

    // maintenance: idempotent, reports whether it changed anything.
    let post = |p: &str| http_unix(&a.socket, "POST", p, "").expect("maintenance");
    assert_eq!(
        post("/v3/maintenance/enable"),
        (200, r#"{"updated":true}"#.into())
    );
    assert_eq!(
        post("/v3/maintenance/enable"),
        (200, r#"{"updated":false}"#.into())
    );
    assert!(a.status()["maintenance"].as_bool().unwrap_or(false));
    let (c, out) = a.cli(&["-maintenance", "disable"]);
    assert_eq!((c, out.trim()), (0, r#"{"updated":true}"#));
    let (c, out) = a.cli(&["maintenance", "disable"]);
    assert_eq!((c, out.trim()), (0, r#"{"updated":false}"#));
    assert_ne!(a.cli(&["-maintenance", "sideways"]).0, 0);

    // status, human and JSON.
    let (c, out) = a.cli(&["status"]);
    assert_eq!(c, 0);
    assert!(out.contains("app") && out.contains("running"), "{out}");
    let (c, out) = a.cli(&["status", "--json"]);
    assert_eq!(c, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["jobs"][0]["name"], "app");
    assert_eq!(v["jobs"][0]["main"], true);
    assert!(v["jobs"][0]["pid"].as_u64().is_some());

    // /metrics, parsed by a Prometheus text parser.
    let addr = format!("127.0.0.1:{port}");
    let (code, body) = http_tcp(&addr, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| s.value.clone())
    };
    assert_eq!(
        value("app_hits"),
        Some(prometheus_parse::Value::Counter(5.0))
    );
    assert_eq!(
        value("temperature"),
        Some(prometheus_parse::Value::Gauge(21.5))
    );
    assert!(matches!(
        value("latency"),
        Some(prometheus_parse::Value::Histogram(_))
    ));
    assert!(matches!(
        value("size"),
        Some(prometheus_parse::Value::Summary(_))
    ));
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "autopilot_events" && s.labels.get("code") == Some("startup"))
    );
    let (code, body) = http_tcp(&addr, "/status").expect("status");
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(st["jobs"][1]["name"], "show");
}

#[test]
fn reload_applies_a_good_config_and_keeps_running_on_a_bad_one() {
    let d = Dir::new("reload");
    let v1 = r#"{ control: { socket: "@SOCKET@" }, jobs: [
      { name: "app", exec: ["sh", "-c", "echo v1 >> @DIR@/runs; trap 'exit 0' TERM; for i in $(seq 300); do sleep 0.1; done"] }] }"#;
    let mut a = start(&d, v1);
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || d.lines("runs") == ["v1"]));
    let v2 = v1
        .replace("v1", "v2")
        .replace("@SOCKET@", &a.socket.display().to_string())
        .replace("@DIR@", &d.0.display().to_string());
    std::fs::write(&a.config, v2).expect("write v2");
    let (c, out) = a.cli(&["-reload"]);
    assert_eq!(c, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(5), || d.lines("runs") == ["v1", "v2"]),
        "{}",
        a.log()
    );

    std::fs::write(
        &a.config,
        "{ jobs: [ { name: 'x', exec: 'true', bogus: 1 } ] }",
    )
    .expect("write bad");
    let (c, out) = a.cli(&["reload"]);
    assert_ne!(c, 0);
    assert!(
        out.contains("jobs[0].bogus") && out.contains("unknown field"),
        "{out}"
    );
    // Still running the v2 job, untouched.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines("runs"), vec!["v1", "v2"]);
    assert_eq!(a.status()["jobs"][0]["status"], "running");
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn template_flag_renders_the_config() {
    let d = Dir::new("template");
    let cfg = d.write(
        "t.json5",
        "{ jobs: [{ name: '{{ .NAME | default \"dflt\" }}', exec: 'x={{ .VAL }}' }] }",
    );
    let out = std::process::Command::new(bin())
        .args(["-config", cfg.to_str().expect("utf8"), "-template"])
        .env("VAL", "a=b")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{ jobs: [{ name: 'dflt', exec: 'x=a=b' }] }"
    );
    let dest = d.path("rendered.json5");
    let out = std::process::Command::new(bin())
        .args([
            "-template",
            "-out",
            dest.to_str().expect("utf8"),
            "-config",
            cfg.to_str().expect("utf8"),
        ])
        .env("NAME", "n")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(d.read("rendered.json5").contains("name: 'n'"));
    // The path also comes from $CONTAINERPILOT, then $AUTOPILOT_CONFIG.
    for var in ["CONTAINERPILOT", "AUTOPILOT_CONFIG"] {
        let out = std::process::Command::new(bin())
            .args(["template"])
            .env_remove("CONTAINERPILOT")
            .env(var, &cfg)
            .output()
            .expect("run");
        assert!(out.status.success(), "{var}");
    }
}

#[test]
fn cli_against_a_missing_agent_fails_clearly() {
    let d = Dir::new("noagent");
    let (c, out) = cli(&d.path("none.json5"), &d.path("none.sock"), &["-ping"]);
    assert_eq!(c, 3, "an agent that cannot be reached is 'unreachable'");
    assert!(
        out.contains("cannot reach the agent") && out.contains("none.sock"),
        "{out}"
    );
    let help = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .expect("help");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("maintenance"));
}

/// A hook's `autopilot` client commands reach the agent that runs it,
/// without `--socket` or `--config`: the agent passes `$AUTOPILOT_SOCKET`.
#[test]
fn a_hook_reaches_its_own_agent_without_flags() {
    let d = Dir::new("ctl-hook");
    let cfg = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: "sleep 30" },
    { name: "hook", when: { source: "SIGHUP" },
      exec: ["sh", "-c", "env -u CONTAINERPILOT -u AUTOPILOT_CONFIG @BIN@ ping > @DIR@/ping 2>&1; echo $? >> @DIR@/ping; echo \"$AUTOPILOT_SOCKET\" > @DIR@/socket"] },
  ],
}"#
    .replace("@BIN@", bin());
    let a = start(&d, &cfg);
    a.ready();
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(10), || !d
        .lines("socket")
        .is_empty()));
    let ping = d.lines("ping");
    assert_eq!(
        ping.last().map(String::as_str),
        Some("0"),
        "the hook's ping reached its agent: {ping:?}"
    );
    assert_eq!(d.lines("socket"), [a.socket.display().to_string()]);
}
