//! Fleet rollouts end to end: eight agents on a real etcd run a small HTTP service from artifacts behind the nginx blueprint, through good, bad and corrupted versions, a killed CLI and a killed agent.
//!
//! One scenario, in phases, because each phase needs the whole fleet (etcd,
//! eight agents, nginx) and starting it once keeps the wall time small:
//!
//! 1. a good version rolls through `1,25%,50%,100%` with a 2 s probation,
//!    units in order, every instance ends on it, and a client hammering
//!    nginx meanwhile sees no failed request;
//! 2. a bad version (its `/health` answers 500) stops in unit 0 and rolls
//!    back; no instance outside unit 0 ever started it (the service logs
//!    every start with its version);
//! 3. `deploy --wait` is SIGKILLed mid-rollout: the agents finish it;
//! 4. an agent (and its service, as a container would go) is kill -9'd
//!    mid-rollout and restarted: the rollout finishes, the agent included;
//! 5. an object corrupted in the store is refused: nothing unverified is
//!    unpacked or run, and the service keeps running its old version.
// Tests start the real binary, etcd, nginx and python as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use autopilot_testkit::Etcd;
use common::*;
use serde_json::Value;

const AGENTS: usize = 8;
const ARTIFACT: &str = "web";
/// The service's job name: the nginx blueprint routes to `service "backend"`.
const JOB: &str = "backend";
const UNITS: &str = "1,25%,50%,100%";
const PROBATION: Duration = Duration::from_secs(2);
/// The longest any one rollout of this test may take.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(90);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fleet")
        .join(name)
}

/// A node's agent config: one job that runs `server.py` from the artifact
/// `web` unpacked under `@DIR@/app`, health-checked over HTTP.
fn node_config(port: u16, store: &str) -> String {
    std::fs::read_to_string(fixture("node.json5"))
        .expect("node.json5")
        .replace("@PORT@", &port.to_string())
        .replace("@STORE@", store)
}

/// A process that is SIGKILLed if the test ends before it does.
struct Guard(Option<Child>);

impl Guard {
    fn wait(&mut self, limit: Duration) -> Option<std::process::Output> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return self.0.take()?.wait_with_output().ok();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Node {
    name: String,
    port: u16,
    dir: Dir,
    agent: Option<Agent>,
}

impl Node {
    fn dest(&self) -> PathBuf {
        self.dir.path("app")
    }

    /// What the node's service answers on `/`: its version.
    fn serves(&self) -> Option<String> {
        match http_tcp(&format!("127.0.0.1:{}", self.port), "/") {
            Some((200, body)) => {
                let mut w = body.split_whitespace();
                (w.next() == Some(self.name.as_str())).then(|| w.next().map(str::to_string))?
            }
            _ => None,
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }
}

struct Fleet {
    // Field order is drop order: agents stop before etcd, the directory goes last.
    nodes: Vec<Node>,
    lb: Option<Agent>,
    _etcd: Etcd,
    catalog: String,
    store: PathBuf,
    nginx_port: u16,
    dir: Dir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM everyone at once so the services drain in parallel; each
        // Agent's own drop then waits (and SIGKILLs after 5 s).
        for n in &self.nodes {
            if let Some(a) = &n.agent {
                a.signal(libc::SIGTERM);
            }
        }
        if let Some(lb) = &self.lb {
            lb.signal(libc::SIGTERM);
        }
    }
}

/// One line of the services' shared log.
#[derive(Debug, Clone)]
struct Served {
    start: bool,
    node: String,
    version: String,
    at: f64,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = Dir::new("fleet");
        let etcd = Etcd::single(&dir.0);
        let catalog = format!("etcd://{}/fleet", etcd.endpoint());
        let store = dir.path("store");
        std::fs::create_dir_all(&store).expect("store dir");
        let mut fleet = Fleet {
            nodes: Vec::new(),
            lb: None,
            _etcd: etcd,
            catalog,
            store,
            nginx_port: free_port(),
            dir,
        };
        // What each node's image ships: `app/current` as a real directory.
        let image = fleet.release("0.9.0-image", true);
        for i in 0..AGENTS {
            let name = format!("n{i}");
            let dir = fleet.dir.child(&name);
            let current = dir.path("app/current");
            copy_dir(&image, &current);
            set_mode(&dir.path("app"), 0o755);
            fleet.nodes.push(Node {
                name,
                port: free_port(),
                dir,
                agent: None,
            });
        }
        for i in 0..AGENTS {
            fleet.start_node(i);
        }
        fleet
    }

    fn store_url(&self) -> String {
        format!("file://{}", self.store.display())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path("served.log")
    }

    fn start_node(&mut self, i: usize) {
        let config = node_config(self.nodes[i].port, &self.store_url());
        let log = self.log_path().display().to_string();
        let n = &mut self.nodes[i];
        let a = start_with(
            &n.dir,
            &config,
            &[],
            &[
                ("AUTOPILOT_CATALOG", &self.catalog),
                ("AUTOPILOT_HOSTNAME", &n.name),
                ("AUTOPILOT_INTERFACE", "static:127.0.0.1"),
                ("AUTOPILOT_ETCD_TTL", "3s"),
                ("FLEET_LOG", &log),
                ("DRAIN_SECONDS", "1"),
            ],
        );
        a.ready();
        n.agent = Some(a);
    }

    /// kill -9 of node `i`'s agent and of its service's process group: what
    /// a lost container looks like (a job outlives a SIGKILLed agent, which
    /// cannot run its stop path).
    fn kill_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let job = n.agent().job_pid(JOB);
        let mut a = n.agent.take().expect("agent running");
        a.signal(libc::SIGKILL);
        if let Some(pid) = job {
            killpg(pid, libc::SIGKILL);
        }
        assert!(
            a.wait(Duration::from_secs(5)).is_some(),
            "agent survived kill -9"
        );
        // Keep the dead agent's log beside the new one's.
        let _ = std::fs::rename(n.dir.path("agent.log"), n.dir.path("agent.log.killed"));
        if let Some(pid) = job {
            assert!(
                wait_for(Duration::from_secs(5), || !alive(pid)),
                "service {pid} of {} survived SIGKILL",
                n.name
            );
        }
    }

    fn start_lb(&mut self) {
        let state = self.dir.path("nginx");
        std::fs::create_dir_all(&state).expect("nginx state dir");
        let vars: Vec<(String, String)> = vec![
            ("AUTOPILOT_CATALOG".into(), self.catalog.clone()),
            ("AUTOPILOT_INTERFACE".into(), "static:127.0.0.1".into()),
            ("AUTOPILOT_HOSTNAME".into(), "lb".into()),
            ("AUTOPILOT_ETCD_TTL".into(), "3s".into()),
            ("TMPDIR".into(), self.dir.0.display().to_string()),
            (
                "AUTOPILOT_STATE_DIR".into(),
                self.dir.path("lb-state").display().to_string(),
            ),
            ("NGINX_STATE".into(), state.display().to_string()),
            ("NGINX_PORT".into(), self.nginx_port.to_string()),
            ("NGINX_ADDR".into(), "127.0.0.1".into()),
        ];
        self.lb = Some(start_example_ready(
            "nginx",
            "nginx.json5",
            &self.dir.path("nginx.log"),
            &state.join("autopilot.sock"),
            &vars,
        ));
    }

    fn nginx_conf(&self) -> String {
        std::fs::read_to_string(self.dir.path("nginx/nginx.conf")).unwrap_or_default()
    }

    /// `autopilot ARGS` against the fleet's catalog and store, killed after `limit`.
    fn ap(&self, args: &[&str], limit: Duration) -> (i32, String) {
        let mut g = self.spawn_ap(args);
        let out = g
            .wait(limit)
            .unwrap_or_else(|| panic!("autopilot {args:?} still running after {limit:?}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    fn spawn_ap(&self, args: &[&str]) -> Guard {
        let child = Command::new(bin())
            .args(args)
            .env("AUTOPILOT_CATALOG", &self.catalog)
            .env("AUTOPILOT_ARTIFACT_STORE", self.store_url())
            .env_remove("AUTOPILOT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn autopilot");
        Guard(Some(child))
    }

    /// A release directory: `server.py` and its `release.json`.
    fn release(&self, version: &str, healthy: bool) -> PathBuf {
        let d = self.dir.path(&format!("releases/{version}"));
        std::fs::create_dir_all(&d).expect("release dir");
        std::fs::copy(fixture("server.py"), d.join("server.py")).expect("copy server.py");
        let release = serde_json::json!({ "version": version, "healthy": healthy });
        std::fs::write(d.join("release.json"), release.to_string()).expect("release.json");
        d
    }

    /// Pushes a release; returns its sha256.
    fn push(&self, version: &str, healthy: bool) -> String {
        let d = self.release(version, healthy);
        let path = d.display().to_string();
        let (code, out) = self.ap(
            &["artifact", "push", ARTIFACT, &path, "--version", version],
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "artifact push {version}: {out}");
        let rec = self.kv(&format!("_fleet/artifacts/{ARTIFACT}/{version}"));
        let rec: Value = serde_json::from_str(&rec.expect("artifact record")).expect("json");
        assert_eq!(rec["version"], version, "{rec}");
        rec["sha256"].as_str().expect("sha256").to_string()
    }

    fn kv(&self, key: &str) -> Option<String> {
        let (code, out) = self.ap(&["kv", "get", key], Duration::from_secs(10));
        (code == 0).then(|| out.trim_end().to_string())
    }

    /// The latest rollout record of the artifact.
    fn rollout(&self) -> Option<Value> {
        let prefix = format!("_fleet/rollouts/{ARTIFACT}/");
        let (code, out) = self.ap(
            &["kv", "ls", &prefix, "-o", "json"],
            Duration::from_secs(10),
        );
        if code != 0 {
            return None;
        }
        let all: BTreeMap<String, String> = serde_json::from_str(out.trim()).ok()?;
        let (_, last) = all.into_iter().next_back()?;
        serde_json::from_str(&last).ok()
    }

    /// Waits for the latest rollout to reach a terminal state; returns it.
    fn settled(&self, limit: Duration) -> Value {
        let mut last = None;
        let done = wait_for(limit, || {
            last = self.rollout();
            last.as_ref().is_some_and(|r| {
                ["completed", "failed", "rolled_back", "aborted"]
                    .contains(&r["state"].as_str().unwrap_or(""))
            })
        });
        assert!(
            done,
            "rollout not settled after {limit:?}: {last:?}\n{}",
            self.logs()
        );
        last.expect("a record")
    }

    /// The live member entries `_artifacts.web` by instance: (status, tags).
    fn members(&self) -> BTreeMap<String, (String, Vec<String>)> {
        let service = format!("_artifacts.{ARTIFACT}");
        let (code, out) = self.ap(
            &["catalog", "instances", &service, "--json"],
            Duration::from_secs(10),
        );
        if code != 0 {
            return BTreeMap::new();
        }
        let list: Vec<Value> = serde_json::from_str(out.trim()).unwrap_or_default();
        list.iter()
            .filter_map(|m| {
                let id = m["id"].as_str()?.strip_prefix(&format!("{ARTIFACT}."))?;
                let tags = m["tags"]
                    .as_array()?
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                Some((id.to_string(), (m["status"].as_str()?.to_string(), tags)))
            })
            .collect()
    }

    /// Node index of a member's instance ID (`backend-n3` -> 3).
    fn node_of(&self, instance: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| instance.ends_with(&format!("-{}", n.name)))
    }

    fn served(&self) -> Vec<Served> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some(Served {
                    start: *w.first()? == "start",
                    node: w.get(1)?.to_string(),
                    version: w.get(2)?.to_string(),
                    at: w.get(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// The nodes that ever started `version`.
    fn ran(&self, version: &str) -> BTreeSet<String> {
        self.served()
            .into_iter()
            .filter(|s| s.start && s.version == version)
            .map(|s| s.node)
            .collect()
    }

    fn all_serve(&self, version: &str) -> bool {
        self.nodes
            .iter()
            .all(|n| n.serves().as_deref() == Some(version))
    }

    fn versions(&self) -> Vec<(String, Option<String>)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.serves()))
            .collect()
    }

    /// Every agent's and nginx's log, for a failure message.
    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!(
                "---- {} ----\n{}",
                n.name,
                tail(&n.dir.read("agent.log"), 40)
            ));
        }
        s.push_str(&format!(
            "---- lb ----\n{}",
            tail(
                &std::fs::read_to_string(self.dir.path("nginx.log")).unwrap_or_default(),
                40
            )
        ));
        s
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// The install scratch entries in a `dest` (`.fetch-*`, `.unpack-*`).
fn scratch(dest: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dest)
        .expect("dest")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(".fetch-") || f.starts_with(".unpack-"))
        .collect()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `core::rollout::instance_hash`: the first 8 bytes of sha256(id), big endian.
fn instance_hash(id: &str) -> u64 {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(id.as_bytes())
        .expect("write");
    let out = c.wait_with_output().expect("sha256sum output");
    let hex = String::from_utf8_lossy(&out.stdout);
    u64::from_str_radix(&hex[..16], 16).expect("hex")
}

/// `core::rollout::unit_of` on a record read as JSON.
fn unit_of(r: &Value, instance: &str) -> usize {
    let h = instance_hash(instance);
    let bounds = r["bounds"].as_array().expect("bounds");
    bounds
        .iter()
        .position(|b| b.as_u64().is_some_and(|b| h <= b))
        .unwrap_or(bounds.len().saturating_sub(1))
}

/// What the load thread returns: its failed requests and answers by version.
type LoadResult = (Vec<String>, BTreeMap<String, usize>);

/// A client issuing requests through nginx back to back until stopped,
/// counting answers by version and every non-200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<LoadResult>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, ok) = (stop.clone(), ok.clone());
            let addr = format!("127.0.0.1:{port}");
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut seen = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    match http_tcp(&addr, "/") {
                        Some((200, body)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            let v = body.split_whitespace().nth(1).unwrap_or("?").to_string();
                            *seen.entry(v).or_insert(0usize) += 1;
                        }
                        other => errors.push(format!("{other:?}")),
                    }
                }
                (errors, seen)
            })
        };
        Load {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    /// (ok count, failed requests, answers by version).
    fn finish(mut self) -> (usize, Vec<String>, BTreeMap<String, usize>) {
        self.stop.store(true, Ordering::SeqCst);
        let (errors, seen) = self
            .thread
            .take()
            .expect("thread")
            .join()
            .expect("load thread");
        (self.ok.load(Ordering::SeqCst), errors, seen)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn deploy_args<'a>(version: &'a str, units: &'a str, probation: &'a str) -> Vec<&'a str> {
    vec![
        "deploy",
        ARTIFACT,
        version,
        "--units",
        units,
        "--probation",
        probation,
    ]
}

#[test]
fn rollouts_across_a_fleet_behind_nginx() {
    for tool in ["nginx", "python3", "sha256sum"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .output()
                .or_else(|_| Command::new(tool).arg("-v").output())
                .is_ok(),
            "{tool} is not installed: run ./scripts/test, which installs it"
        );
    }
    let mut fleet = Fleet::new();
    fleet.start_lb();

    // The fleet comes up on what its image ships, every instance a member.
    let mut members = BTreeMap::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            members = fleet.members();
            members.len() == AGENTS
                && passing_ids(&fleet.catalog, JOB).is_some_and(|p| p.len() == AGENTS)
                && fleet.all_serve("0.9.0-image")
        }),
        "fleet not up: members {members:?}, versions {:?}\n{}",
        fleet.versions(),
        fleet.logs()
    );
    for (id, (_, tags)) in &members {
        assert!(fleet.node_of(id).is_some(), "member {id} is no node's");
        assert!(tags.contains(&"sha=original".to_string()), "{id}: {tags:?}");
    }
    // nginx routes to all eight.
    assert!(
        wait_for(Duration::from_secs(20), || {
            let conf = fleet.nginx_conf();
            fleet
                .nodes
                .iter()
                .all(|n| conf.contains(&format!("server 127.0.0.1:{} ", n.port)))
        }),
        "nginx upstream incomplete:\n{}\n{}",
        fleet.nginx_conf(),
        fleet.logs()
    );
    // The file is rendered before nginx's reload takes effect: wait for the answers.
    let nginx = format!("127.0.0.1:{}", fleet.nginx_port);
    assert!(
        wait_for(Duration::from_secs(10), || (0..16)
            .all(|_| matches!(http_tcp(&nginx, "/"), Some((200, _))))),
        "nginx does not answer 200: {:?}",
        http_tcp(&nginx, "/")
    );

    // 1. A good version through four units under load: no failed request.
    let v1 = fleet.push("1.0.0", true);
    let load = Load::start(fleet.nginx_port);
    let began = Instant::now();
    let mut args = deploy_args("1.0.0", UNITS, "2s");
    args.push("--wait");
    let (code, out) = fleet.ap(&args, ROLLOUT_LIMIT);
    let took = began.elapsed();
    // Let requests in flight during the last restarts finish through nginx.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, errors, seen) = load.finish();
    assert_eq!(code, 0, "deploy --wait 1.0.0: {out}\n{}", fleet.logs());
    let r = fleet.rollout().expect("rollout record");
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["target"]["sha256"], v1.as_str(), "{r}");
    assert_eq!(r["unit_sizes"], serde_json::json!([1, 1, 2, 4]), "{r}");
    assert!(fleet.all_serve("1.0.0"), "{:?}", fleet.versions());
    assert!(
        errors.is_empty(),
        "{} of {} requests through nginx failed during the good rollout: {errors:?}",
        errors.len(),
        ok + errors.len()
    );
    assert!(ok > 100, "only {ok} requests in {took:?}: {seen:?}");
    assert!(
        seen.contains_key("1.0.0") && seen.contains_key("0.9.0-image"),
        "{seen:?}"
    );
    eprintln!(
        "good rollout of {AGENTS} in 4 units, probation 2s: {took:?}; {ok} requests through nginx, 0 failed: {seen:?}"
    );
    // Units went in order, each after the previous one's probation.
    let ids: BTreeMap<usize, String> = members
        .keys()
        .filter_map(|id| Some((fleet.node_of(id)?, id.clone())))
        .collect();
    // Each instance's first start of 1.0.0 (a crash and restart is not a unit's start).
    let mut first: BTreeMap<usize, f64> = BTreeMap::new();
    for s in fleet
        .served()
        .iter()
        .filter(|s| s.start && s.version == "1.0.0")
    {
        let i = fleet
            .nodes
            .iter()
            .position(|n| n.name == s.node)
            .expect("node");
        first.entry(i).or_insert(s.at);
    }
    assert_eq!(
        first.len(),
        AGENTS,
        "not every node started 1.0.0: {first:?}"
    );
    let mut starts: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for (i, at) in &first {
        starts.entry(unit_of(&r, &ids[i])).or_default().push(*at);
    }
    assert_eq!(starts.len(), 4, "starts by unit: {starts:?}");
    let units: Vec<&Vec<f64>> = starts.values().collect();
    for k in 1..units.len() {
        let prev = units[k - 1].iter().cloned().fold(f64::MIN, f64::max);
        let first = units[k].iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            first - prev >= PROBATION.as_secs_f64() * 0.95,
            "unit {k} started {:.2}s after unit {}: {starts:?}",
            first - prev,
            k - 1
        );
    }
    // On disk: current -> the verified version, the image's tree kept aside.
    for n in &fleet.nodes {
        let link = std::fs::read_link(n.dest().join("current")).expect("current is a symlink");
        assert_eq!(link, Path::new(&v1), "{}", n.name);
        assert!(n.dest().join("original/server.py").is_file(), "{}", n.name);
    }

    // 2. A bad version: stops in unit 0 and rolls back; nobody else ran it.
    fleet.push("2.0.0", false);
    let mut args = deploy_args("2.0.0", UNITS, "2s");
    args.push("--wait");
    let (code, out) = fleet.ap(&args, ROLLOUT_LIMIT);
    assert_eq!(
        code,
        1,
        "deploy --wait of a bad version: {out}\n{}",
        fleet.logs()
    );
    let r = fleet.rollout().expect("rollout record");
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert_eq!(r["unit"], 0, "{r}");
    assert!(
        !r["failures"].as_array().expect("failures").is_empty(),
        "{r}"
    );
    let ran = fleet.ran("2.0.0");
    assert!(
        !ran.is_empty(),
        "unit 0 never tried 2.0.0: {:?}",
        fleet.served()
    );
    for node in &ran {
        let i = fleet
            .nodes
            .iter()
            .position(|n| &n.name == node)
            .expect("node");
        assert_eq!(
            unit_of(&r, &ids[&i]),
            0,
            "{node} ran 2.0.0 outside unit 0: {r}"
        );
    }
    assert!(
        wait_for(Duration::from_secs(20), || fleet.all_serve("1.0.0")),
        "not all back on 1.0.0: {:?}",
        fleet.versions()
    );

    // 3. The CLI is SIGKILLed mid-rollout: the agents finish the rollout.
    fleet.push("3.0.0", true);
    let mut args = deploy_args("3.0.0", UNITS, "2s");
    args.push("--wait");
    let mut cli = fleet.spawn_ap(&args);
    let mut r = None;
    assert!(
        wait_for(ROLLOUT_LIMIT, || {
            r = fleet.rollout();
            r.as_ref().is_some_and(|r| {
                r["target"]["version"] == "3.0.0"
                    && r["state"] == "rolling"
                    && r["unit"].as_u64() >= Some(1)
            })
        }),
        "3.0.0 never reached unit 1: {r:?}\n{}",
        fleet.logs()
    );
    cli.kill9();
    let r = fleet.settled(ROLLOUT_LIMIT);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["target"]["version"], "3.0.0", "{r}");
    assert!(fleet.all_serve("3.0.0"), "{:?}", fleet.versions());

    // 4. An agent is kill -9'd mid-rollout and restarted: the rollout finishes.
    fleet.push("4.0.0", true);
    let (code, out) = fleet.ap(&deploy_args("4.0.0", UNITS, "2s"), Duration::from_secs(30));
    assert_eq!(code, 0, "deploy 4.0.0: {out}");
    let mut r = None;
    assert!(
        wait_for(ROLLOUT_LIMIT, || {
            r = fleet.rollout();
            r.as_ref()
                .is_some_and(|r| r["state"] == "rolling" && r["unit"].as_u64() >= Some(1))
        }),
        "4.0.0 never reached unit 1: {r:?}\n{}",
        fleet.logs()
    );
    let r = r.expect("record");
    // The victim: an instance of the unit being rolled (or a later one).
    let now = r["unit"].as_u64().unwrap_or(0) as usize;
    let victim = (0..AGENTS)
        .filter(|i| unit_of(&r, &ids[i]) >= now)
        .min_by_key(|i| unit_of(&r, &ids[i]))
        .expect("an instance not yet past its gate");
    fleet.kill_node(victim);
    fleet.start_node(victim);
    let r = fleet.settled(ROLLOUT_LIMIT);
    assert_eq!(r["state"], "completed", "{r}\n{}", fleet.logs());
    assert_eq!(r["target"]["version"], "4.0.0", "{r}");
    assert!(
        wait_for(Duration::from_secs(20), || fleet.all_serve("4.0.0")),
        "{:?}",
        fleet.versions()
    );

    // 5. A corrupted object is refused; the service keeps its version.
    let v5 = fleet.push("5.0.0", true);
    let object = fleet.store.join(format!("artifacts/{v5}.snap"));
    let mut bytes = std::fs::read(&object).expect("stored object");
    for b in bytes.iter_mut().take(64) {
        *b = !*b;
    }
    std::fs::write(&object, &bytes).expect("corrupt the object");
    let pids: Vec<Option<i32>> = fleet.nodes.iter().map(|n| n.agent().job_pid(JOB)).collect();
    let before: BTreeMap<String, BTreeSet<String>> = fleet
        .nodes
        .iter()
        .map(|n| (n.name.clone(), scratch(&n.dest())))
        .collect();
    let mut args = deploy_args("5.0.0", "1,100%", "1s");
    args.push("--wait");
    let (code, out) = fleet.ap(&args, ROLLOUT_LIMIT);
    assert_eq!(
        code,
        1,
        "deploy --wait of a corrupted object: {out}\n{}",
        fleet.logs()
    );
    let r = fleet.rollout().expect("record");
    assert_eq!(r["target"]["version"], "5.0.0", "{r}");
    assert!(
        ["rolled_back", "failed"].contains(&r["state"].as_str().unwrap_or("")),
        "{r}"
    );
    let reasons = r["failures"].to_string();
    assert!(reasons.contains("checksum"), "failure reasons: {reasons}");
    assert!(
        fleet.ran("5.0.0").is_empty(),
        "an unverified version ran: {:?}",
        fleet.served()
    );
    assert!(fleet.all_serve("4.0.0"), "{:?}", fleet.versions());
    for (n, pid) in fleet.nodes.iter().zip(&pids) {
        assert_eq!(
            &n.agent().job_pid(JOB),
            pid,
            "{} restarted its service",
            n.name
        );
        assert!(
            !n.dest().join(&v5).exists(),
            "{} unpacked a corrupted object",
            n.name
        );
        // A refused object leaves no scratch file (the killed agent of
        // phase 4 may have left its own, removed later by age).
        assert_eq!(scratch(&n.dest()), before[&n.name], "{}", n.name);
    }
}
