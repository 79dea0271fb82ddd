//! Hook helpers on both backends: `autopilot kv` and `autopilot lock`.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn ap(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .env("AUTOPILOT_CATALOG", url)
        .env("AUTOPILOT_ETCD_TTL", "2s")
        .output()
        .expect("run");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn kv_body(url: &str) {
    // A read never creates a catalog (that would be exit 3), so write first.
    assert_eq!(ap(url, &["kv", "put", "seed", "x"]).0, 0);
    assert_eq!(ap(url, &["kv", "get", "cfg/primary"]).0, 1, "absent");
    assert_eq!(ap(url, &["kv", "put", "cfg/primary", "10.0.0.1:6379"]).0, 0);
    assert_eq!(
        ap(url, &["kv", "get", "cfg/primary"]),
        (0, "10.0.0.1:6379\n".into())
    );
    assert_eq!(
        ap(url, &["kv", "cas", "cfg/primary", "wrong", "x"]).0,
        1,
        "cas refuses a stale value"
    );
    assert_eq!(
        ap(
            url,
            &["kv", "cas", "cfg/primary", "10.0.0.1:6379", "10.0.0.2:6379"]
        )
        .0,
        0
    );
    assert_eq!(
        ap(
            url,
            &["kv", "cas", "--absent", "cfg/bootstrapped", "node-a"]
        )
        .0,
        0,
        "first wins"
    );
    assert_eq!(
        ap(
            url,
            &["kv", "cas", "--absent", "cfg/bootstrapped", "node-b"]
        )
        .0,
        1,
        "second loses"
    );
    let (code, out) = ap(url, &["kv", "ls", "cfg/", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"cfg/bootstrapped": "node-a", "cfg/primary": "10.0.0.2:6379"})
    );
    assert_eq!(ap(url, &["kv", "del", "cfg/primary"]).0, 0);
    assert_eq!(ap(url, &["kv", "del", "cfg/primary"]).0, 1);
}

fn lock_body(url: &str, dir: &Dir) {
    let log = dir.path("critical");
    let script = format!(
        "echo start >> {l}; sleep 0.3; echo end >> {l}",
        l = log.display()
    );
    let callers: Vec<_> = (0..5)
        .map(|_| {
            Command::new(bin())
                .args(["lock", "failover", "--", "sh", "-c", &script])
                .env("AUTOPILOT_CATALOG", url)
                .env("AUTOPILOT_ETCD_TTL", "2s")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn lock")
        })
        .collect();
    for mut c in callers {
        assert!(c.wait().expect("wait").success());
    }
    let lines = dir.lines("critical");
    assert_eq!(lines.len(), 10, "{lines:?}");
    for pair in lines.chunks(2) {
        assert_eq!(
            pair,
            ["start", "end"],
            "never two holders at once: {lines:?}"
        );
    }
    // The command's exit code is passed through.
    assert_eq!(ap(url, &["lock", "x", "--", "sh", "-c", "exit 3"]).0, 3);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn kv_on_the_embedded_catalog() {
    let d = Dir::new("kv-local");
    kv_body(&format!("local://{}", d.path("catalog").display()));
}

#[test]
fn kv_on_etcd() {
    let d = Dir::new("kv-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    kv_body(&format!("etcd://{}/kv", etcd.endpoint()));
}

#[test]
fn lock_serialises_five_callers_on_the_embedded_catalog() {
    let d = Dir::new("lock-local");
    lock_body(&format!("local://{}", d.path("catalog").display()), &d);
}

#[test]
fn lock_serialises_five_callers_on_etcd() {
    let d = Dir::new("lock-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    lock_body(&format!("etcd://{}/lock", etcd.endpoint()), &d);
}

/// A hook reaches a TLS etcd configured only in the config file: the agent
/// passes its catalog URL and credentials down as `AUTOPILOT_*` variables.
#[test]
fn hooks_inherit_the_agents_catalog_and_credentials() {
    let d = Dir::new("hook-env");
    let server = autopilot_testkit::make_certs(&d.0, "server");
    let client = autopilot_testkit::make_certs(&d.0, "client");
    let etcd = autopilot_testkit::Etcd::single_tls(&d.0, server);
    let url = format!("etcd://{}/hooks", etcd.endpoint());
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  etcd: {{ ca: "{ca}", cert: "{cert}", key: "{key}" }},
  jobs: [
    {{ name: "hook", exec: ["{bin}", "kv", "put", "hooked", "yes"] }},
    {{ name: "idle", exec: "sleep 600" }},
  ],
}}"#,
        ca = client.ca.display(),
        cert = client.cert.display(),
        key = client.key.display(),
        bin = bin(),
    );
    let agent = start_with(&d, &cfg, &[], &[("AUTOPILOT_CATALOG", &url)]);
    agent.ready();
    let read = || {
        Command::new(bin())
            .args(["kv", "get", "hooked"])
            .env("AUTOPILOT_CATALOG", &url)
            .env("AUTOPILOT_ETCD_CA", &client.ca)
            .env("AUTOPILOT_ETCD_CERT", &client.cert)
            .env("AUTOPILOT_ETCD_KEY", &client.key)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(10), || read() == "yes"),
        "the hook did not reach the TLS catalog:\n{}",
        agent.log()
    );
}
