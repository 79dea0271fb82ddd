//! `autopilot cockpit` end to end: the real binary serving the API over a real etcd with real agents: reads of the fleet, tokens (401, 403, a 0644 token file refused), an audited pause/resume, the event stream within a second of an instance turning critical, HTTPS, and a maintenance intent the agent applies.
//!
//! Requests go through `curl` (plain and `--cacert` for HTTPS). Everything
//! waits on a condition with a deadline; every process started is stopped
//! when the test ends, whatever happens.
// Tests run the real binary, etcd, openssl and curl as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_testkit::Etcd;
use common::*;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "read-token-abcdefghijkl";

fn config(db_port: u16, web_port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 600", port: {db_port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "test ! -e @DIR@/sick-db", interval: "100ms", ttl: 2 }},
       election: {{ name: "db", ttl: "3s" }} }},
    {{ name: "web", exec: "sleep 600", port: {web_port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "test ! -e @DIR@/sick-web", interval: "100ms", ttl: 2 }} }},
  ]
}}"#
    )
}

struct Node {
    dir: Dir,
    _agent: Agent,
}

fn start_node(d: &Dir, name: &str, catalog: &str, i: u16) -> Node {
    let dir = d.child(name);
    let agent = start_with(
        &dir,
        &config(17100 + i, 18100 + i),
        &[],
        &[
            ("AUTOPILOT_CATALOG", catalog),
            ("AUTOPILOT_HOSTNAME", name),
            ("AUTOPILOT_INTERFACE", "static:127.0.0.1"),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    agent.ready();
    Node { dir, _agent: agent }
}

/// A running `autopilot cockpit`; dropping it stops it (SIGTERM, then SIGKILL).
struct Cockpit {
    child: Child,
    log: PathBuf,
    url: String,
    ca: Option<PathBuf>,
}

impl Drop for Cockpit {
    fn drop(&mut self) {
        // Never signal a pid already reaped: it may be another process's now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        kill(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cockpit_cmd(catalog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("cockpit")
        .args(["--catalog", catalog])
        .args(args)
        .env_remove("AUTOPILOT_CATALOG")
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .stdin(Stdio::null());
    c
}

/// Starts the cockpit on a free loopback port and waits for its "listening" line.
fn start_cockpit(d: &Dir, tag: &str, catalog: &str, args: &[&str], ca: Option<&Path>) -> Cockpit {
    let log = d.path(&format!("cockpit-{tag}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let child = cockpit_cmd(catalog, &["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("spawn cockpit");
    let mut c = Cockpit {
        child,
        log,
        url: String::new(),
        ca: ca.map(Path::to_path_buf),
    };
    let mut url = None;
    wait_for(Duration::from_secs(15), || {
        url = std::fs::read_to_string(&c.log).ok().and_then(|l| {
            l.lines()
                .find_map(|l| l.strip_prefix("cockpit listening on "))
                .map(str::to_string)
        });
        url.is_some()
    });
    c.url = url.unwrap_or_else(|| {
        panic!(
            "no listening line; log:\n{}",
            std::fs::read_to_string(&c.log).unwrap_or_default()
        )
    });
    c
}

impl Cockpit {
    /// One request with curl: (status, JSON body or Null).
    fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(ca) = &self.ca {
            c.arg("--cacert").arg(ca);
        }
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if body.is_some() {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        c.arg(format!("{}{path}", self.url))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("curl");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            if let Some(b) = body {
                stdin.write_all(b.as_bytes()).expect("write body");
            }
        }
        let out = child.wait_with_output().expect("curl output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {path}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.req("GET", path, token, None)
    }

    /// A GET that must succeed with the admin token.
    fn read(&self, path: &str) -> Value {
        let (code, v) = self.get(path, Some(ADMIN));
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }
}

/// `curl -N` reading the event stream into a file; killed on drop.
struct Stream {
    child: Child,
    file: PathBuf,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stream {
    fn open(c: &Cockpit, d: &Dir, token: &str) -> Stream {
        let file = d.path("events.txt");
        let out = std::fs::File::create(&file).expect("events file");
        let child = Command::new("curl")
            .args(["-sN", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}/api/v1/events", c.url))
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("curl events");
        Stream { child, file }
    }

    /// (event name, revision) of every complete event so far.
    fn events(&self) -> Vec<(String, u64)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut out = Vec::new();
        for block in text.split("\n\n") {
            let mut name = None;
            let mut rev = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                }
                if let Some(data) = line.strip_prefix("data: ") {
                    rev = serde_json::from_str::<Value>(data)
                        .ok()
                        .and_then(|v| v["revision"].as_u64());
                }
            }
            if let (Some(n), Some(r)) = (name, rev) {
                out.push((n, r));
            }
        }
        out
    }
}

fn token_file(d: &Dir, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = d.write(name, text);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

fn kv_get(catalog: &str, key: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(["kv", "get", key, "--catalog", catalog])
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .output()
        .expect("kv get");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn leader_id(catalog: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(["leader", "db", "--json", "--catalog", catalog])
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["id"].as_str().map(str::to_string)
}

fn service<'a>(overview: &'a Value, name: &str) -> Option<&'a Value> {
    overview["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Instances of `web` as the API shows them: (id, status).
fn web_instances(c: &Cockpit) -> Vec<(String, String)> {
    let (code, v) = c.get("/api/v1/services/web", Some(ADMIN));
    if code != 200 {
        return Vec::new();
    }
    v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_string(),
                        i["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cockpit_serves_the_fleet_with_tokens_audit_events_and_tls() {
    let d = Dir::new("cockpit-api");
    let etcd = Etcd::single(&d.0);
    let catalog = format!("etcd://{}/cockpit", etcd.endpoint());
    let nodes: Vec<Node> = (1..=3)
        .map(|i| start_node(&d, &format!("n{i}"), &catalog, i))
        .collect();
    let tokens = token_file(
        &d,
        "tokens",
        &format!("# who may use the cockpit\nadmin alice {ADMIN}\nread  bob   {READER}\n"),
        0o600,
    );
    let c = start_cockpit(
        &d,
        "main",
        &catalog,
        &["--token-file", &tokens.display().to_string()],
        None,
    );
    assert!(c.url.starts_with("http://127.0.0.1:"), "{}", c.url);

    // --- tokens --------------------------------------------------------------
    let (code, v) = c.get("/api/v1/services", None);
    assert_eq!(code, 401, "no token: {v}");
    assert!(v["error"].is_string(), "errors are JSON: {v}");
    assert_eq!(
        c.get("/api/v1/services", Some("not-a-known-token-at-all"))
            .0,
        401
    );
    assert_eq!(
        c.get("/api/v1/openapi.json", None).0,
        200,
        "the document is open"
    );
    let (code, who) = c.get("/api/v1/whoami", Some(READER));
    assert_eq!(code, 200);
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("bob"), Some("read"))
    );
    let (code, v) = c.req(
        "POST",
        "/api/v1/elections/db/pause",
        Some(READER),
        Some("{}"),
    );
    assert_eq!(code, 403, "a read token on an action: {v}");
    assert_eq!(
        kv_get(&catalog, "_cluster/db/paused"),
        None,
        "nothing written"
    );

    // --- reads: the fleet as the agents registered it ------------------------
    let mut overview = Value::Null;
    let settled = wait_for(Duration::from_secs(20), || {
        overview = c.get("/api/v1/overview", Some(READER)).1;
        let full = |name: &str| {
            service(&overview, name).is_some_and(|s| s["passing"] == 3 && s["total"] == 3)
        };
        full("web")
            && overview["elections"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["name"] == "db" && e["leader"].is_object())
            })
    });
    assert!(settled, "overview never showed the fleet: {overview}");
    for field in [
        "revision",
        "generated_ms",
        "services",
        "elections",
        "nodes",
        "failing",
        "repairs",
        "rollouts",
    ] {
        assert!(!overview[field].is_null(), "overview.{field}: {overview}");
    }
    let services = c.read("/api/v1/services");
    let names: Vec<&str> = services
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&"web") && names.contains(&"db"),
        "{services}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with('_')),
        "reserved services hidden: {services}"
    );
    let mut web = web_instances(&c);
    web.sort();
    assert_eq!(
        web,
        ["web-n1", "web-n2", "web-n3"]
            .map(|i| (i.to_string(), "passing".to_string()))
            .to_vec()
    );
    let leader = leader_id(&catalog).expect("db has a leader");
    let election = c.read("/api/v1/elections/db");
    assert!(
        election.to_string().contains(&leader),
        "the election's view names its leader {leader}: {election}"
    );
    let elections = c.read("/api/v1/elections");
    let db = elections
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "db"))
        .expect("db in elections");
    assert_eq!(db["leader"]["id"], leader.as_str(), "{elections}");
    assert_eq!(c.get("/api/v1/services/nosuch", Some(ADMIN)).0, 404);
    assert_eq!(c.get("/api/v1/nosuch", Some(ADMIN)).0, 404);
    assert_eq!(c.get("/api/v1/kv?limit=100000", Some(ADMIN)).0, 400);

    // --- actions: pause/resume, audited with who ---------------------------------
    let (code, v) = c.req(
        "POST",
        "/api/v1/elections/db/pause",
        Some(ADMIN),
        Some("{}"),
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["accepted"], true, "{v}");
    let audit_key = v["audit"].as_str().expect("the audit key").to_string();
    assert!(audit_key.starts_with("_fleet/audit/"), "{audit_key}");
    assert!(
        kv_get(&catalog, "_cluster/db/paused").is_some(),
        "the pause intent is written"
    );
    let entry: Value =
        serde_json::from_str(&kv_get(&catalog, &audit_key).expect("the audit entry"))
            .expect("audit JSON");
    assert_eq!(
        (
            entry["who"].as_str(),
            entry["action"].as_str(),
            entry["target"].as_str()
        ),
        (Some("alice"), Some("pause"), Some("db")),
        "{entry}"
    );
    assert_eq!(entry["outcome"], "accepted", "{entry}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let at = entry["at_ms"].as_u64().expect("at_ms");
    assert!(at <= now && now - at < 60_000, "when: {at} vs {now}");
    let (code, v) = c.req("POST", "/api/v1/elections/db/resume", Some(ADMIN), None);
    assert_eq!(code, 202, "{v}");
    assert_eq!(kv_get(&catalog, "_cluster/db/paused"), None, "resumed");
    let audit = c.read("/api/v1/audit?limit=10");
    let text = audit.to_string();
    assert!(text.contains("resume") && text.contains("alice"), "{audit}");
    // Refused and malformed actions.
    let (code, v) = c.req(
        "POST",
        "/api/v1/elections/db/switchover",
        Some(ADMIN),
        Some(r#"{"to": "db-nobody"}"#),
    );
    assert!(
        matches!(code, 400 | 404 | 409),
        "switchover to a stranger: {code} {v}"
    );
    assert!(v["error"].is_string(), "{v}");
    let audit = c.read("/api/v1/audit?limit=10");
    let refused = audit["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["action"] == "switchover"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        refused["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("refused: ")),
        "a refused action is audited too: {audit}"
    );
    assert_eq!(refused["who"], "alice", "{refused}");
    let (code, v) = c.req(
        "POST",
        "/api/v1/nodes/n1/maintenance",
        Some(ADMIN),
        Some("{not json"),
    );
    assert_eq!(code, 400, "{v}");
    let big = format!(r#"{{"on": true, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let (code, v) = c.req(
        "POST",
        "/api/v1/nodes/n1/maintenance",
        Some(ADMIN),
        Some(&big),
    );
    assert_eq!(code, 413, "{v}");

    // --- events: a change within a second of an instance turning critical -----
    let stream = Stream::open(&c, &d, READER);
    assert!(
        wait_for(Duration::from_secs(5), || stream
            .events()
            .first()
            .is_some_and(|(n, _)| n == "hello")),
        "no hello: {:?}",
        stream.events()
    );
    nodes[1].dir.write("sick-web", "");
    let mut critical_at = None;
    let mut revision = 0;
    assert!(
        wait_for(Duration::from_secs(15), || {
            let o = c.get("/api/v1/overview", Some(ADMIN)).1;
            let failing = o["failing"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|i| i["id"] == "web-n2" && i["status"] == "critical")
            });
            if failing {
                critical_at = Some(Instant::now());
                revision = o["revision"].as_u64().unwrap_or(0);
            }
            failing
        }),
        "web-n2 never turned critical"
    );
    let seen = critical_at.expect("seen critical");
    let delivered = wait_for(Duration::from_secs(1), || {
        stream
            .events()
            .iter()
            .any(|(n, r)| n == "change" && *r >= revision)
    });
    assert!(
        delivered,
        "no change event with revision >= {revision} within 1 s (after {:?}): {:?}",
        seen.elapsed(),
        stream.events()
    );
    assert!(
        web_instances(&c).contains(&("web-n2".to_string(), "critical".to_string())),
        "{:?}",
        web_instances(&c)
    );
    let _ = std::fs::remove_file(nodes[1].dir.path("sick-web"));
    drop(stream);

    // --- HTTPS, and actions refused without tokens -----------------------------
    let certs = d.child("certs");
    let tls = autopilot_testkit::make_certs(&certs.0, "cockpit");
    let s = start_cockpit(
        &d,
        "tls",
        &catalog,
        &[
            "--tls-cert",
            &tls.cert.display().to_string(),
            "--tls-key",
            &tls.key.display().to_string(),
        ],
        Some(&tls.ca),
    );
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let (code, who) = s.get("/api/v1/whoami", None);
    assert_eq!(
        (code, who["role"].as_str()),
        (200, Some("anonymous")),
        "{who}"
    );
    let (code, v) = s.get("/api/v1/services", None);
    assert_eq!(code, 200, "reads are open without tokens: {v}");
    let (code, v) = s.req("POST", "/api/v1/elections/db/pause", None, Some("{}"));
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("--token-file")),
        "{v}"
    );
    let plain = Command::new("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "{}/api/v1/whoami",
            s.url.replacen("https", "http", 1)
        ))
        .output()
        .expect("curl");
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "plain HTTP is not served on the TLS port"
    );
    drop(s);

    // --- a silent catalog: 503 within the deadline, not a hung request -------
    etcd.pause();
    let t = Instant::now();
    let (code, v) = c.get("/api/v1/overview", Some(ADMIN));
    let took = t.elapsed();
    etcd.resume();
    assert_eq!(code, 503, "{v}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");

    // --- SIGTERM stops it, exit 0 ----------------------------------------------
    let mut c = c;
    kill(c.child.id() as i32, libc::SIGTERM);
    let mut status = None;
    assert!(
        wait_for(Duration::from_secs(5), || {
            status = c.child.try_wait().ok().flatten();
            status.is_some()
        }),
        "the cockpit did not stop on SIGTERM"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    drop(c);
    drop(nodes);
    drop(etcd);
}

#[test]
fn bad_settings_exit_2_naming_the_problem() {
    let d = Dir::new("cockpit-settings");
    let catalog = format!("local://{}", d.path("catalog").display());
    let run = |args: &[&str]| {
        let out = cockpit_cmd(&catalog, args).output().expect("run cockpit");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let open = token_file(&d, "open-tokens", &format!("admin alice {ADMIN}\n"), 0o644);
    let (code, err) = run(&["--token-file", &open.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("open-tokens") && err.contains("644"), "{err}");
    let bad = token_file(&d, "bad-tokens", "admin alice short\n", 0o600);
    let (code, err) = run(&["--token-file", &bad.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad-tokens:1"), "{err}");
    let (code, err) = run(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--token-file"), "{err}");
    let missing = d.path("missing.pem");
    let m = missing.display().to_string();
    let (code, err) = run(&["--tls-cert", &m, "--tls-key", &m]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.pem"), "{err}");
}

/// Needs the agent side of maintenance intents (the `_nodes` entry and
/// `_fleet/maintenance/<node>`).
#[test]
fn a_maintenance_intent_is_applied_by_the_agent() {
    let d = Dir::new("cockpit-maint");
    let etcd = Etcd::single(&d.0);
    let catalog = format!("etcd://{}/maint", etcd.endpoint());
    let node = start_node(&d, "m1", &catalog, 9);
    let tokens = token_file(&d, "tokens", &format!("admin alice {ADMIN}\n"), 0o600);
    let c = start_cockpit(
        &d,
        "maint",
        &catalog,
        &["--token-file", &tokens.display().to_string()],
        None,
    );
    // The node is known once its agent has published its `_nodes` entry.
    assert!(
        wait_for(Duration::from_secs(15), || c
            .get("/api/v1/nodes/m1", Some(ADMIN))
            .0
            == 200
            && web_instances(&c)
                == vec![("web-m1".to_string(), "passing".to_string())]),
        "node m1: {}",
        c.get("/api/v1/nodes/m1", Some(ADMIN)).1
    );
    for on in [true, false] {
        let (code, v) = c.req(
            "POST",
            "/api/v1/nodes/m1/maintenance",
            Some(ADMIN),
            Some(&format!(r#"{{"on": {on}}}"#)),
        );
        assert_eq!(code, 202, "{v}");
        let id = v["intent"]["id"].as_str().expect("intent id").to_string();
        let asked = Instant::now();
        let mut detail = Value::Null;
        let applied = wait_for(Duration::from_secs(5), || {
            detail = c.read("/api/v1/nodes/m1");
            let m = &detail["intent"];
            m["id"] == id.as_str() && m["outcome"] == "applied" && m["applied_ms"].is_u64()
        });
        assert!(applied, "maintenance {on} not applied: {detail}");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "applied after {:?}",
            asked.elapsed()
        );
        // In maintenance the agent deregisters its jobs; out of it they return.
        let want: Vec<(String, String)> = if on {
            Vec::new()
        } else {
            vec![("web-m1".to_string(), "passing".to_string())]
        };
        assert!(
            wait_for(Duration::from_secs(10), || web_instances(&c) == want),
            "maintenance {on}: web is {:?}",
            web_instances(&c)
        );
        let nodes = c.read("/api/v1/nodes");
        let me = nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == "m1"))
            .cloned()
            .unwrap_or(Value::Null);
        assert!(
            wait_for(Duration::from_secs(5), || {
                c.read("/api/v1/nodes")
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["node"] == "m1").cloned())
                    .is_some_and(|n| n["maintenance"] == on)
            }),
            "the _nodes entry shows maintenance {on}: {me}"
        );
    }
    let audit = c.read("/api/v1/audit?limit=5").to_string();
    assert!(
        audit.contains("maintenance") && audit.contains("alice"),
        "{audit}"
    );
    drop(c);
    drop(node);
    drop(etcd);
}
