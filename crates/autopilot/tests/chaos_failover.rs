//! Failover chaos under the Redis blueprint: 100 trials mixing kill -9, SIGSTOP of the leader's
//! agent, SIGSTOP of its redis-server and a cut from etcd, with no acknowledged write lost and no
//! two leaderships overlapping.
//!
//! Three blueprint nodes on one real etcd, each reaching etcd through its own loopback
//! [`Proxy`] (so one node can be cut off alone). A client writes continuously to whichever node
//! accepts and records every write `WAIT 1` acknowledged. Round-robin over the faults, always
//! aimed at the current leader:
//! - `kill`: kill -9 of its agent and of its redis-server, then the node is started again;
//! - `stop-agent`: SIGSTOP of its agent, SIGCONT once another node leads (so after the TTL);
//! - `stop-server`: SIGSTOP of its redis-server, SIGCONT once another node leads;
//! - `cut`: its etcd traffic held (dropped, not reset: connections hang as behind a
//!   partition), healed once another node leads.
//!
//! After each trial, once converged (one master registered, two replicas following it), every
//! acknowledged write must be on the master. Over the whole run, leadership intervals (from each
//! node's `elected`/`demoted` handler timestamps, as in safety.rs) must never overlap. A killed
//! agent's leadership ends when it dies, a stopped agent's when it is stopped (a stopped process
//! takes no action; its redis-server is covered by the write check), and a stopped agent must
//! demote once it runs again.
//!
//! `CHAOS_TRIALS=N` runs N trials instead of 100 (a quick local check).
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autopilot_testkit::{Etcd, Proxy};
use common::*;

/// The election (and etcd lease) TTL. The blueprint's default is 5 s; at 2 s (the smallest TTL
/// the agent's margin leaves room for: margin 400 ms + etcd's 500 ms expiry tick) a TTL-bound
/// failover takes about 2.5 s, so 100 trials (with restarts and convergence) fit in a few
/// minutes on 2 cores. The timing argument does not depend on the TTL's size.
const TTL: &str = "2s";

const FAULTS: [&str; 4] = ["kill", "stop-agent", "stop-server", "cut"];

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---- a RESP client that authenticates when the blueprint has a password ----

/// Reads one RESP reply as text (`-ERR ...` for errors, `""` for a nil bulk, arrays joined by
/// newlines).
fn read_reply(r: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().ok()?;
        if n < 0 {
            return Some(String::new());
        }
        let mut body = vec![0u8; usize::try_from(n).ok()? + 2];
        r.read_exact(&mut body).ok()?;
        body.truncate(body.len() - 2);
        return Some(String::from_utf8_lossy(&body).into_owned());
    }
    if let Some(n) = line.strip_prefix('*') {
        let n: i64 = n.parse().ok()?;
        let mut items = Vec::new();
        for _ in 0..n.max(0) {
            items.push(read_reply(r)?);
        }
        return Some(items.join("\n"));
    }
    Some(line)
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req.into_bytes()
}

/// One connection to a Redis node, authenticated if `password` is set.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(port: u16, password: Option<&str>, timeout: Duration) -> Option<Conn> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        let mut c = Conn(BufReader::new(s));
        if let Some(p) = password
            && c.cmd(&["AUTH", p])?.as_str() != "+OK"
        {
            return None;
        }
        Some(c)
    }

    fn cmd(&mut self, args: &[&str]) -> Option<String> {
        self.0.get_mut().write_all(&encode(args)).ok()?;
        read_reply(&mut self.0)
    }
}

fn redis(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    Conn::open(port, password, Duration::from_secs(2))?.cmd(args)
}

fn info(port: u16, password: Option<&str>, field: &str) -> Option<String> {
    let text = redis(port, password, &["INFO", "replication"])?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Writes `w<n>` continuously to whichever node accepts (starting from the last one that did)
/// and records each write `WAIT 1` acknowledged: (key, ns when acknowledged, port).
struct Writer {
    acked: Arc<Mutex<Vec<(String, u128, u16)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(ports: Vec<u16>, password: Option<String>) -> Writer {
        let acked: Arc<Mutex<Vec<(String, u128, u16)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut conns: Vec<Option<Conn>> = ports.iter().map(|_| None).collect();
            let (mut i, mut cur) = (0u64, 0usize);
            while !s.load(Ordering::SeqCst) {
                let key = format!("w{i}");
                i += 1;
                for k in 0..ports.len() {
                    let n = (cur + k) % ports.len();
                    if conns[n].is_none() {
                        conns[n] =
                            Conn::open(ports[n], password.as_deref(), Duration::from_secs(1));
                    }
                    let Some(c) = conns[n].as_mut() else { continue };
                    match c.cmd(&["SET", &key, "v"]).as_deref() {
                        Some("+OK") => {}
                        Some(_) => continue, // a replica (READONLY) or a refusal
                        None => {
                            conns[n] = None;
                            continue;
                        }
                    }
                    cur = n;
                    match c.cmd(&["WAIT", "1", "500"]) {
                        Some(r)
                            if r.trim_start_matches(':')
                                .parse::<i64>()
                                .is_ok_and(|v| v >= 1) =>
                        {
                            a.lock()
                                .expect("lock")
                                .push((key.clone(), now_ns(), ports[n]));
                        }
                        Some(_) => {}
                        None => conns[n] = None,
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Writer {
            acked,
            stop,
            handle: Some(handle),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    fn acked(&self) -> Vec<String> {
        let acked = self.acked.lock().expect("lock");
        acked.iter().map(|(k, _, _)| k.clone()).collect()
    }

    /// When the first write acknowledged by `port` after `after` (ns) was.
    fn first_on(&self, port: u16, after: u128) -> Option<u128> {
        let acked = self.acked.lock().expect("lock");
        acked
            .iter()
            .find(|(_, t, p)| *p == port && *t > after)
            .map(|(_, t, _)| *t)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The acknowledged keys missing on `port` (checked 1000 at a time with one `EXISTS`; `None`
/// if the node cannot be read).
fn missing(port: u16, password: Option<&str>, keys: &[String]) -> Option<Vec<String>> {
    let mut c = Conn::open(port, password, Duration::from_secs(5))?;
    let mut lost = Vec::new();
    for chunk in keys.chunks(1000) {
        let mut args = vec!["EXISTS"];
        args.extend(chunk.iter().map(String::as_str));
        let n: usize = c.cmd(&args)?.trim_start_matches(':').parse().ok()?;
        if n != chunk.len() {
            for k in chunk {
                if c.cmd(&["EXISTS", k])?.as_str() != ":1" {
                    lost.push(k.clone());
                }
            }
        }
    }
    Some(lost)
}

// ---- the cluster ----

struct Node {
    name: String,
    port: u16,
    events: PathBuf,
    proxy: Proxy,
    agent: Option<Agent>,
    /// Processes this test stopped (SIGCONT on drop, so nothing stays frozen).
    stopped: Vec<i32>,
}

impl Node {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn mark(&self, kind: &str, t: u128) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.events)
            .expect("events file");
        writeln!(f, "{kind} {t}").expect("write event");
    }

    /// (kind, ns) lines of this node's events file.
    fn events(&self) -> Vec<(String, u128)> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, t) = l.split_once(' ')?;
                Some((k.to_string(), t.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pid in &self.stopped {
            kill(*pid, libc::SIGCONT);
        }
    }
}

struct Cluster {
    dir: Dir,
    etcd: Etcd,
    config: PathBuf,
    password: Option<String>,
}

impl Cluster {
    fn url(&self, endpoint: &str) -> String {
        format!("etcd://{endpoint}/chaos-failover")
    }

    fn direct(&self) -> String {
        self.url(&self.etcd.endpoint())
    }

    fn start(&self, node: &mut Node) {
        let mut env = blueprint_env(&self.dir, &self.url(&node.proxy.endpoint()), &node.name);
        env.extend([
            ("REDIS_RUN".into(), self.dir.0.display().to_string()),
            ("REDIS_PORT".into(), node.port.to_string()),
            (
                "REDIS_DATA".into(),
                self.dir
                    .path(&format!("data-{}", node.name))
                    .display()
                    .to_string(),
            ),
            ("REDIS_BIND".into(), "127.0.0.1".into()),
            ("REDIS_LEASE_TTL".into(), TTL.into()),
            ("SNAPSHOT_INTERVAL".into(), "10s".into()),
            ("CHAOS_EVENTS".into(), node.events.display().to_string()),
        ]);
        if self.password.is_some() {
            env.push((
                "REDIS_PASSWORD_FILE".into(),
                self.dir.path("redis.password").display().to_string(),
            ));
        }
        let a = start_example_ready(
            "redis",
            &self.config.display().to_string(),
            &self.dir.path(&format!("{}.log", node.name)),
            &self
                .dir
                .path(&format!("autopilot-redis-{}.sock", node.port)),
            &env,
        );
        node.agent = Some(a);
    }

    /// The election's leader ID (`redis-<node>`), read from etcd directly.
    fn leader(&self) -> Option<String> {
        let out = std::process::Command::new(bin())
            .args(["leader", "redis", "--json", "--catalog", &self.direct()])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["id"].as_str().map(str::to_string)
    }

    /// One master registered as "redis", the two others registered as replicas and
    /// replicating it; returns its index.
    fn converged(&self, nodes: &[Node]) -> Option<usize> {
        let m = passing_ports(&self.direct(), "redis");
        let (&mp, 1) = (m.first()?, m.len()) else {
            return None;
        };
        let master = nodes.iter().position(|n| n.port == mp)?;
        let pw = self.password.as_deref();
        let ok = info(mp, pw, "role").as_deref() == Some("master")
            && passing_ports(&self.direct(), "redis-replica").len() == 2
            && nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != master)
                .all(|(_, n)| {
                    info(n.port, pw, "role").as_deref() == Some("slave")
                        && info(n.port, pw, "master_port") == Some(mp.to_string())
                        && info(n.port, pw, "master_link_status").as_deref() == Some("up")
                })
            && self
                .leader()
                .is_some_and(|l| l == format!("redis-{}", nodes[master].name));
        ok.then_some(master)
    }
}

/// The blueprint's config with two handlers that append `elected <ns>` / `demoted <ns>` to
/// `$CHAOS_EVENTS`, written into `dir` (the agent still runs from examples/redis).
fn config_with_event_handlers(dir: &Dir) -> PathBuf {
    let text = std::fs::read_to_string(example_dir("redis").join("redis.json5"))
        .expect("examples/redis/redis.json5");
    let handlers = r#"jobs: [
    { name: "chaos-elected", when: { source: "redis", each: "elected" },
      exec: ["sh", "-c", "echo elected $(date +%s%N) >> \"$CHAOS_EVENTS\""] },
    { name: "chaos-demoted", when: { source: "redis", each: "demoted" },
      exec: ["sh", "-c", "echo demoted $(date +%s%N) >> \"$CHAOS_EVENTS\""] },"#;
    assert!(text.contains("jobs: ["), "the blueprint has no `jobs: [`");
    dir.write("redis-chaos.json5", &text.replacen("jobs: [", handlers, 1))
}

/// Whether the Redis blueprint wants a password file (REDIS_PASSWORD_FILE); if so, one is
/// written into `dir` and returned.
fn password(dir: &Dir) -> Option<String> {
    let wants = std::fs::read_dir(example_dir("redis"))
        .expect("examples/redis")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .any(|t| t.contains("REDIS_PASSWORD_FILE"));
    wants.then(|| {
        let p = format!("chaos-{}", std::process::id());
        let path = dir.write("redis.password", &format!("{p}\n"));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        p
    })
}

/// Leadership intervals `(start, end, node)`: `elected` opens one; `demoted`, `killed` (the test
/// killed the agent) and `frozen` (the test stopped it) close it. Sorted by start; an interval
/// still open ends at `u128::MAX`. Also returns the anomalies (an `elected` while leading).
fn spans(nodes: &[Node]) -> (Vec<(u128, u128, usize)>, Vec<String>) {
    let mut spans = Vec::new();
    let mut odd = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut start = None;
        for (kind, t) in n.events() {
            match (kind.as_str(), start) {
                ("elected", None) => start = Some(t),
                ("elected", Some(s)) => odd.push(format!(
                    "{}: elected at {t} while leading since {s}",
                    n.name
                )),
                ("demoted" | "killed" | "frozen", Some(s)) => {
                    spans.push((s, t, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            spans.push((s, u128::MAX, i));
        }
    }
    spans.sort();
    (spans, odd)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The nearest-rank percentile `p` of `xs`.
fn pct(xs: &[f64], p: usize) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (v.len() * p).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

#[test]
fn a_hundred_mixed_faults_lose_no_acknowledged_write_and_never_overlap_leaderships() {
    let trials: usize = std::env::var("CHAOS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is not installed: run ./scripts/test, which installs it"
    );
    let begin = Instant::now();
    let dir = Dir::new("chaos-failover");
    let etcd = Etcd::single(&dir.0);
    let c = Cluster {
        config: config_with_event_handlers(&dir),
        password: password(&dir),
        dir,
        etcd,
    };
    let pw = c.password.clone();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| Node {
            name: name.to_string(),
            port: free_port(),
            events: c.dir.path(&format!("events-{name}")),
            proxy: Proxy::start(c.etcd.client_port),
            agent: None,
            stopped: Vec::new(),
        })
        .collect();
    for n in nodes.iter_mut() {
        c.start(n);
    }
    let dump = |nodes: &[Node]| {
        nodes
            .iter()
            .map(|n| {
                format!(
                    "==== {} (port {}) events {:?}\n{}",
                    n.name,
                    n.port,
                    n.events(),
                    tail(&c.dir.path(&format!("{}.log", n.name)), 60)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        wait_for(Duration::from_secs(60), || c.converged(&nodes).is_some()),
        "no master with two replicas; logs:\n{}",
        dump(&nodes)
    );
    let writer = Writer::start(nodes.iter().map(|n| n.port).collect(), pw.clone());
    // (fault, seconds from the fault to the new leader's `elected` handler, and to the first
    // write the new master acknowledged)
    let mut figures: Vec<(&str, f64)> = Vec::new();
    let mut writes: Vec<(&str, f64)> = Vec::new();

    for trial in 0..trials {
        let fault = FAULTS[trial % FAULTS.len()];
        let mut master = None;
        assert!(
            wait_for(Duration::from_secs(60), || {
                master = c.converged(&nodes);
                master.is_some()
            }),
            "trial {trial}: no convergence before the fault; logs:\n{}",
            dump(&nodes)
        );
        let li = master.expect("master");
        // Writes flow on the converged cluster before the fault.
        let before = writer.count();
        assert!(
            wait_for(Duration::from_secs(10), || writer.count() >= before + 3),
            "trial {trial}: writes are not acknowledged; logs:\n{}",
            dump(&nodes)
        );
        let old = format!("redis-{}", nodes[li].name);
        let t0 = now_ns();
        let started = Instant::now();
        match fault {
            "kill" => {
                let a = nodes[li].agent.take().expect("agent");
                let server = a.job_pid("redis").expect("redis-server pid");
                kill(a.pid(), libc::SIGKILL);
                kill(server, libc::SIGKILL);
                let mut a = a;
                assert!(a.wait(Duration::from_secs(5)).is_some(), "agent not dead");
                nodes[li].mark("killed", now_ns());
            }
            "stop-agent" => {
                let pid = nodes[li].agent().pid();
                nodes[li].mark("frozen", now_ns());
                kill(pid, libc::SIGSTOP);
                nodes[li].stopped.push(pid);
            }
            "stop-server" => {
                let pid = nodes[li]
                    .agent()
                    .job_pid("redis")
                    .expect("redis-server pid");
                kill(pid, libc::SIGSTOP);
                nodes[li].stopped.push(pid);
            }
            _ => nodes[li].proxy.cut(),
        }
        let took_over = wait_for(Duration::from_secs(30), || {
            c.leader().is_some_and(|l| l != old)
        });
        // Undo the fault whatever happened, so a failure leaves nothing frozen.
        let thawed = now_ns();
        match fault {
            "kill" => c.start(&mut nodes[li]),
            "stop-agent" | "stop-server" => {
                for pid in std::mem::take(&mut nodes[li].stopped) {
                    kill(pid, libc::SIGCONT);
                }
                if fault == "stop-agent" {
                    nodes[li].mark("thawed", thawed);
                }
            }
            _ => nodes[li].proxy.heal(),
        }
        assert!(
            took_over,
            "trial {trial} ({fault}): nobody took over from {old}; logs:\n{}",
            dump(&nodes)
        );
        let new = c.leader().expect("new leader");
        let ni = nodes
            .iter()
            .position(|n| format!("redis-{}", n.name) == new)
            .expect("a known node");
        let mut elected = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                elected = nodes[ni]
                    .events()
                    .into_iter()
                    .find(|(k, t)| k == "elected" && *t > t0)
                    .map(|e| e.1);
                elected.is_some()
            }),
            "trial {trial} ({fault}): {new} leads but its elected handler did not run"
        );
        let secs = (elected.expect("elected") - t0) as f64 / 1e9;
        figures.push((fault, secs));
        if fault == "stop-agent" {
            // Running again, the stopped agent must notice it lost the seat.
            assert!(
                wait_for(Duration::from_secs(10), || nodes[li]
                    .events()
                    .iter()
                    .any(|(k, t)| k == "demoted" && *t >= thawed)),
                "trial {trial}: the resumed agent of {old} never demoted; logs:\n{}",
                dump(&nodes)
            );
        }
        let mut master = None;
        assert!(
            wait_for(Duration::from_secs(60), || {
                master = c.converged(&nodes);
                master.is_some()
            }),
            "trial {trial} ({fault}): no convergence after the fault; logs:\n{}",
            dump(&nodes)
        );
        let mp = nodes[master.expect("master")].port;
        let mut first = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                first = writer.first_on(mp, t0);
                first.is_some()
            }),
            "trial {trial} ({fault}): the new master acknowledges no write"
        );
        let wsecs = (first.expect("first write") - t0) as f64 / 1e9;
        writes.push((fault, wsecs));
        let acked = writer.acked();
        let lost = missing(mp, pw.as_deref(), &acked).expect("read the master");
        assert!(
            lost.is_empty(),
            "trial {trial} ({fault}, {old} -> {new}): {} of {} acknowledged writes lost: {:?}; logs:\n{}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(20)],
            dump(&nodes)
        );
        let (sp, odd) = spans(&nodes);
        let overlap = sp.windows(2).find(|w| w[0].1 >= w[1].0);
        assert!(
            odd.is_empty() && overlap.is_none(),
            "trial {trial} ({fault}): leadership overlap {overlap:?} {odd:?}; logs:\n{}",
            dump(&nodes)
        );
        eprintln!(
            "trial {trial} ({fault}): {old} -> {new}, elected {secs:.2} s and writing {wsecs:.2} s \
             after the fault, converged {:.1} s after it; {} writes acknowledged so far",
            started.elapsed().as_secs_f64(),
            acked.len()
        );
    }

    let acked = writer.count();
    drop(writer);
    let (sp, _) = spans(&nodes);
    assert!(
        sp.len() > trials,
        "fewer leaderships ({}) than trials",
        sp.len()
    );
    assert!(acked > trials * 10, "too few writes: {acked}");
    eprintln!(
        "{trials} trials in {:.0} s (TTL {TTL}); {acked} acknowledged writes, none lost; {} leaderships, none overlapping",
        begin.elapsed().as_secs_f64(),
        sp.len()
    );
    for f in FAULTS {
        for (what, all) in [
            ("new leader's elected handler", &figures),
            ("first write acknowledged by the new master", &writes),
        ] {
            let xs: Vec<f64> = all
                .iter()
                .filter(|(k, _)| *k == f)
                .map(|(_, s)| *s)
                .collect();
            if !xs.is_empty() {
                eprintln!(
                    "{f:>11}: fault -> {what}: p50 {:.2} s, p99 {:.2} s, max {:.2} s (n={})",
                    pct(&xs, 50),
                    pct(&xs, 99),
                    xs.iter().copied().fold(0.0, f64::max),
                    xs.len()
                );
            }
        }
    }
}
