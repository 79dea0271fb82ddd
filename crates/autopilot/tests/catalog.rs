//! Several real agents sharing one embedded catalog: registration, health, expiry, maintenance, watches and the catalog CLI.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn url(dir: &Path) -> String {
    format!("local://{}", dir.display())
}

/// Where a test's catalog lives: a local directory or an etcd URL. The same
/// test bodies run against both backends.
#[derive(Clone)]
enum Cat {
    Local(std::path::PathBuf),
    Etcd(String),
}

impl Cat {
    fn url(&self) -> String {
        match self {
            Cat::Local(p) => url(p),
            Cat::Etcd(u) => u.clone(),
        }
    }
}

/// Short leases on etcd, so expiry tests stay quick.
const ETCD_TTL: &str = "2s";

fn cat_env(cat: &Cat) -> Vec<(&'static str, String)> {
    vec![
        ("AUTOPILOT_CATALOG", cat.url()),
        ("AUTOPILOT_ETCD_TTL", ETCD_TTL.to_string()),
    ]
}

/// `autopilot catalog instances NAME --json` against a catalog.
fn instances(cat: &Cat, name: &str) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args([
            "catalog",
            "--catalog",
            &cat.url(),
            "instances",
            name,
            "--json",
        ])
        .output()
        .expect("run catalog cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("instances json")
}

fn statuses(cat: &Cat, name: &str) -> Vec<(String, String)> {
    instances(cat, name)
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or("").to_string(),
                i["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// An agent advertising `web` on `port` as host `host`, healthy while `<dir>/ok-<host>` exists.
fn web_agent(dir: &Dir, host: &str, port: u16, cat: &Cat) -> Agent {
    let sub = dir.child(host);
    let flag = dir.path(&format!("ok-{host}"));
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "web", exec: "sleep 60", port: {port}, interfaces: ["static:127.0.0.1"], tags: ["v1"],
            health: {{ exec: "test -e {flag}", interval: "100ms", ttl: 2, timeout: "1s" }} }}]
}}"#,
        flag = flag.display()
    );
    let env = cat_env(cat);
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("AUTOPILOT_HOSTNAME", host));
    let a = start_with(&sub, &cfg, &[], &vars);
    a.ready();
    a
}

#[test]
fn registration_health_maintenance_and_graceful_stop() {
    let d = Dir::new("catreg");
    registration_body(&d, &Cat::Local(d.path("catalog")));
}

#[test]
fn registration_health_maintenance_and_graceful_stop_on_etcd() {
    let d = Dir::new("catreg-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    registration_body(&d, &Cat::Etcd(format!("etcd://{}/reg", etcd.endpoint())));
}

fn registration_body(d: &Dir, cat: &Cat) {
    let cat = cat.clone();
    let mut a = web_agent(d, "h1", 8001, &cat);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        instances(&cat, "web").is_empty(),
        "not registered before the first passing check"
    );

    let t = Instant::now();
    d.write("ok-h1", "");
    assert!(wait_for(Duration::from_secs(5), || statuses(&cat, "web")
        == [("web-h1".into(), "passing".into())]));
    eprintln!(
        "registered {:?} after the check started passing",
        t.elapsed()
    );
    let i = &instances(&cat, "web")[0];
    assert_eq!(
        (
            i["name"].as_str(),
            i["address"].as_str(),
            i["port"].as_u64()
        ),
        (Some("web"), Some("127.0.0.1"), Some(8001))
    );
    assert_eq!(i["tags"], serde_json::json!(["v1"]));
    assert!(
        i["lastHeartbeat"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    let st = a.status();
    assert_eq!(st["jobs"][0]["registration"]["catalog"], "passing");

    std::fs::remove_file(d.path("ok-h1")).expect("rm");
    let t = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || statuses(&cat, "web")
        == [("web-h1".into(), "critical".into())]));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "critical within one interval (+cli time): {:?}",
        t.elapsed()
    );
    d.write("ok-h1", "");
    assert!(wait_for(Duration::from_secs(5), || statuses(&cat, "web")
        == [("web-h1".into(), "passing".into())]));

    assert_eq!(a.cli(&["maintenance", "enable"]).0, 0);
    assert!(
        wait_for(Duration::from_secs(5), || instances(&cat, "web").is_empty()),
        "maintenance deregisters"
    );
    assert_eq!(a.cli(&["maintenance", "disable"]).0, 0);
    assert!(
        wait_for(Duration::from_secs(5), || statuses(&cat, "web")
            == [("web-h1".into(), "passing".into())]),
        "and re-registers"
    );

    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(143));
    assert!(
        instances(&cat, "web").is_empty(),
        "graceful stop deregisters at once"
    );
}

#[test]
fn killed_agent_entry_expires_after_its_ttl() {
    let d = Dir::new("catkill");
    killed_body(&d, &Cat::Local(d.path("catalog")));
}

#[test]
fn killed_agent_keys_expire_with_its_lease_on_etcd() {
    let d = Dir::new("catkill-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    killed_body(&d, &Cat::Etcd(format!("etcd://{}/kill", etcd.endpoint())));
}

fn killed_body(d: &Dir, cat: &Cat) {
    let cat = cat.clone();
    d.write("ok-h1", "");
    let mut a = web_agent(d, "h1", 8001, &cat);
    assert!(wait_for(Duration::from_secs(5), || instances(&cat, "web")
        .len()
        == 1));
    let job_pid = a.status()["jobs"][0]["pid"].as_i64().expect("job pid") as i32;
    a.signal(libc::SIGKILL);
    a.wait(Duration::from_secs(5));
    killpg(job_pid, libc::SIGKILL);
    let t = Instant::now();
    assert_eq!(
        instances(&cat, "web").len(),
        1,
        "the entry outlives its agent for a while"
    );
    assert!(wait_for(Duration::from_secs(5), || instances(&cat, "web").is_empty()));
    let took = t.elapsed();
    // The TTL is 2 s from the last keep-alive; etcd revokes expired leases
    // on a 500 ms tick, and each poll here is a CLI run. Well under the
    // default 5 s TTL, so it is the agent's own short lease that expired.
    assert!(
        took <= Duration::from_millis(3500),
        "gone within its 2 s TTL (plus expiry tick and polling): {took:?}"
    );
}

#[test]
fn watch_handlers_fire_once_per_change_in_order_across_agents() {
    let d = Dir::new("catwatch");
    watch_body(&d, &Cat::Local(d.path("catalog")));
}

#[test]
fn watch_handlers_fire_once_per_change_in_order_across_agents_on_etcd() {
    let d = Dir::new("catwatch-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    watch_body(&d, &Cat::Etcd(format!("etcd://{}/watch", etcd.endpoint())));
}

fn watch_body(d: &Dir, cat: &Cat) {
    let cat = cat.clone();
    let log = d.path("changes");
    let watcher_dir = d.child("watcher");
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  watches: [{{ name: "web", interval: 30 }}, {{ name: "web", tag: "v2", interval: 30 }}],
  jobs: [
    {{ name: "app", exec: "sleep 60" }},
    {{ name: "on-change", when: {{ source: "watch.web", each: "changed" }},
       exec: ["sh", "-c", "python3 -c 'import json,os; print(\" \".join(str(i[\"port\"]) for i in json.load(open(os.environ[\"AUTOPILOT_WATCH_FILE\"]))))' >> {log}"] }},
    {{ name: "on-v2", when: {{ source: "watch.web.v2", each: "changed" }}, exec: "sh -c 'echo v2 >> {log2}'" }},
  ]
}}"#,
        log = log.display(),
        log2 = d.path("v2").display()
    );
    let env = cat_env(&cat);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let w = start_with(&watcher_dir, &cfg, &[], &vars);
    w.ready();
    d.write("ok-h1", "");
    d.write("ok-h2", "");
    let a1 = web_agent(d, "h1", 8001, &cat);
    assert!(
        wait_for(Duration::from_secs(5), || d.lines("changes") == ["8001"]),
        "{:?}",
        d.lines("changes")
    );
    let a2 = web_agent(d, "h2", 8002, &cat);
    assert!(
        wait_for(Duration::from_secs(5), || d.lines("changes")
            == ["8001", "8001 8002"]),
        "{:?}",
        d.lines("changes")
    );
    let ids: Vec<String> = statuses(&cat, "web").into_iter().map(|s| s.0).collect();
    assert_eq!(
        ids,
        vec!["web-h1", "web-h2"],
        "same job, distinct hosts, distinct IDs"
    );
    drop(a1);
    assert!(
        wait_for(Duration::from_secs(5), || d.lines("changes")
            == ["8001", "8001 8002", "8002"]),
        "{:?}",
        d.lines("changes")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.lines("changes").len(), 3, "exactly one run per change");
    assert!(
        d.lines("v2").is_empty(),
        "the v2-tagged watch saw no v2 instance, so no change"
    );
    let st = w.status();
    assert_eq!(st["watches"][0]["passing"], 1);
    assert_eq!(st["watches"][1]["passing"], 0);
    drop(a2);
}

#[test]
fn catalog_cli_lists_and_streams() {
    let d = Dir::new("catcli");
    let cat = Cat::Local(d.path("catalog"));
    let mut watch = Command::new(bin())
        .args(["catalog", "--catalog", &cat.url(), "watch", "api", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("catalog watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("[]"));
    let port = free_port();
    let a = start_with(
        &d,
        &format!(
            r#"{{ control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "api", port: 7000, interfaces: "static:127.0.0.1", initial_status: "passing" }},
         {{ name: "app", exec: "sleep 60" }}],
  telemetry: {{ port: {port}, interfaces: ["static:127.0.0.1"] }} }}"#
        ),
        &[],
        &[
            ("AUTOPILOT_CATALOG", &cat.url()),
            ("AUTOPILOT_HOSTNAME", "box"),
        ],
    );
    a.ready();
    let line = lines
        .next()
        .and_then(|l| l.ok())
        .expect("a change is streamed");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v[0]["id"], "api-box", "advertise-only job registered");
    let _ = watch.kill();
    let _ = watch.wait();

    let out = Command::new(bin())
        .args(["catalog", "services", "--json"])
        .env("AUTOPILOT_CATALOG", cat.url())
        .output()
        .expect("services");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["_nodes", "api", "containerpilot"],
        "the telemetry endpoint registers itself (and the agent its node entry)"
    );
    let out = Command::new(bin())
        .args(["catalog", "--catalog", &cat.url(), "instances", "api"])
        .output()
        .expect("instances");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("api-box") && text.contains("127.0.0.1:7000") && text.contains("passing"),
        "{text}"
    );
    let keys: Vec<String> = instances(&cat, "api")[0]
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        vec![
            "address",
            "id",
            "lastHeartbeat",
            "name",
            "port",
            "status",
            "tags"
        ]
    );
}

#[test]
fn bad_catalog_paths_and_consul_configs_fail_clearly() {
    let d = Dir::new("catbad");
    let cfg = r#"{ control: { socket: "@SOCKET@" }, jobs: [{ name: "app", exec: "touch @DIR@/started" }] }"#;
    let corrupt = d.path("corrupt");
    std::fs::create_dir_all(&corrupt).expect("dir");
    std::fs::write(corrupt.join("catalog.db"), vec![b'x'; 4096]).expect("garbage");
    for bad in [
        corrupt.clone(),
        Path::new("/proc/autopilot/catalog").to_path_buf(),
    ] {
        let mut a = start_with(&d, cfg, &[], &[("AUTOPILOT_CATALOG", &url(&bad))]);
        let code = a.wait(Duration::from_secs(10));
        assert!(matches!(code, Some(c) if c != 0), "non-zero exit");
        let log = a.log();
        assert!(
            log.contains("catalog") && log.contains(&bad.display().to_string()),
            "{log}"
        );
        assert!(!d.path("started").exists());
    }
    let consul = r#"{ consul: "localhost:8500", control: { socket: "@SOCKET@" }, jobs: [{ name: "app", exec: "true" }] }"#;
    let sub = Dir::new("catconsul");
    let socket = sub.path("ctl.sock");
    let cfg_path = sub.write(
        "c.json5",
        &consul.replace("@SOCKET@", &socket.display().to_string()),
    );
    // Without AUTOPILOT_CATALOG the consul block chooses the Consul backend
    // (tests/containerpilot_fields.rs); AUTOPILOT_CATALOG takes precedence.
    let out = Command::new(bin())
        .args(["-config", cfg_path.to_str().expect("utf8")])
        .env("AUTOPILOT_CATALOG", url(&sub.path("cat")))
        .env("AUTOPILOT_STATE_DIR", sub.path("state"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "AUTOPILOT_CATALOG overrides the consul block"
    );
}

/// Regression: the first keep-alive was scheduled for the 5 s default before
/// any entry existed, so a 2 s entry lapsed and came back seconds later.
#[test]
fn a_short_ttl_entry_never_lapses() {
    let d = Dir::new("cat-ttl");
    let cat = Cat::Local(d.path("catalog"));
    std::fs::write(d.path("ok-a"), "").expect("flag");
    let _a = web_agent(&d, "a", autopilot_testkit::free_port(), &cat);
    assert!(wait_for(Duration::from_secs(5), || statuses(&cat, "web")
        .len()
        == 1));
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        assert_eq!(
            statuses(&cat, "web"),
            [("web-a".to_string(), "passing".to_string())]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
