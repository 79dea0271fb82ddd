//! Self-repair end to end: six agents on a real etcd, each running a stateful job with snapshots, climb the repair ladder, share a budget of one slot, keep warnings apart from failures, and hand a dead holder's slot on.
//!
//! One scenario, in phases, because each needs the whole fleet (etcd, six
//! agents) and starting it once keeps the wall time small. Health and the
//! watchdog are driven by flag files (see fixtures/repair_fleet/node.json5):
//!
//! a. node n0's health keeps failing: its history shows `restart`, then
//!    `reimage` (its dataDir replaced by its newest verified snapshot, the
//!    old one kept as `<dataDir>.reimage-*`), then `replace`: its agent exits
//!    with code 75; restarted healed (the replacement), it ends healthy;
//! b. node n5's watchdog warns for the whole test: it is never repaired;
//! c. four nodes fail at once with a budget of 1: the recorded repair
//!    intervals never overlap, each is repaired by a restart, and
//!    `repairBudgetExhausted` fired exactly once fleet-wide (a hook appends
//!    to one file);
//! d. kill -9 of the agent holding the slot: the other waiting node takes
//!    it within the lease TTL (plus the waiter's reaction time).
//!
//! Everything waits on catalog state or files, never on a fixed sleep, and
//! every process is stopped when the test ends, whatever happens.
// Tests start the real binary and etcd as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_testkit::Etcd;
use common::*;
use serde_json::Value;

const AGENTS: usize = 6;
const JOB: &str = "db";
/// The etcd lease TTL of every agent.
const TTL: Duration = Duration::from_secs(3);
/// The longest one phase may take.
const PHASE: Duration = Duration::from_secs(45);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/repair_fleet")
        .join(name)
}

struct Node {
    name: String,
    dir: Dir,
    agent: Option<Agent>,
}

impl Node {
    fn id(&self) -> String {
        format!("{JOB}-{}", self.name)
    }

    fn flag(&self, f: &str) {
        self.dir.write(f, "");
    }

    fn unflag(&self, f: &str) {
        let _ = std::fs::remove_file(self.dir.path(f));
    }

    fn data(&self) -> PathBuf {
        self.dir.path("data")
    }

    /// kill -9 of the agent and of its job's process group (a lost machine:
    /// a job outlives a SIGKILLed agent, which cannot run its stop path).
    fn kill9(&mut self) {
        let Some(mut a) = self.agent.take() else {
            return;
        };
        let job = a.job_pid(JOB);
        a.signal(libc::SIGKILL);
        if let Some(pid) = job {
            killpg(pid, libc::SIGKILL);
        }
        assert!(
            a.wait(Duration::from_secs(5)).is_some(),
            "agent survived kill -9"
        );
    }
}

struct Fleet {
    // Field order is drop order: agents stop before etcd, the directory goes last.
    nodes: Vec<Node>,
    _etcd: Etcd,
    catalog: String,
    store: PathBuf,
    dir: Dir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM everyone at once; each Agent's drop then waits (SIGKILL
        // after 5 s). A kill -9'd agent's job was killed with it (`kill9`).
        for n in &self.nodes {
            if let Some(a) = &n.agent {
                a.signal(libc::SIGTERM);
            }
        }
    }
}

impl Fleet {
    fn new() -> Fleet {
        let dir = Dir::new("repair-fleet");
        let etcd = Etcd::single(&dir.0);
        let catalog = format!("etcd://{}/repair", etcd.endpoint());
        let store = dir.path("store");
        std::fs::create_dir_all(&store).expect("store dir");
        for f in ["db.sh", "probe.sh"] {
            std::fs::copy(fixture(f), dir.path(f)).expect("copy fixture");
        }
        let mut fleet = Fleet {
            nodes: Vec::new(),
            _etcd: etcd,
            catalog,
            store,
            dir,
        };
        for i in 0..AGENTS {
            let name = format!("n{i}");
            let dir = fleet.dir.child(&name);
            // Data from the start: nothing to restore at the first start.
            std::fs::create_dir_all(dir.path("data")).expect("data dir");
            dir.write("data/marker", &format!("{name}-gen1"));
            fleet.nodes.push(Node {
                name,
                dir,
                agent: None,
            });
        }
        for i in 0..AGENTS {
            fleet.start_node(i);
        }
        fleet
    }

    fn start_node(&mut self, i: usize) {
        let config = std::fs::read_to_string(fixture("node.json5"))
            .expect("node.json5")
            .replace("@NODE@", &self.nodes[i].name)
            .replace("@STORE@", &format!("file://{}", self.store.display()))
            .replace("@SHARED@", &self.dir.0.display().to_string());
        let ttl = format!("{}s", TTL.as_secs());
        let n = &mut self.nodes[i];
        let a = start_with(
            &n.dir,
            &config,
            &[],
            &[
                ("AUTOPILOT_CATALOG", &self.catalog),
                ("AUTOPILOT_HOSTNAME", &n.name),
                ("AUTOPILOT_INTERFACE", "static:127.0.0.1"),
                ("AUTOPILOT_ETCD_TTL", &ttl),
            ],
        );
        a.ready();
        n.agent = Some(a);
    }

    /// `autopilot ARGS` against the fleet's catalog: (code, stdout).
    fn ap(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin())
            .args(args)
            .env("AUTOPILOT_CATALOG", &self.catalog)
            .env_remove("CONTAINERPILOT")
            .env_remove("AUTOPILOT_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The service's view as `autopilot repairs list db -o json` prints it
    /// (`Null` while it cannot be read).
    fn repairs(&self) -> Value {
        let (code, out) = self.ap(&["repairs", "list", JOB, "-o", "json", "--limit", "200"]);
        if code != 0 {
            return Value::Null;
        }
        serde_json::from_str::<Value>(&out)
            .map(|v| v["services"][0].clone())
            .unwrap_or(Value::Null)
    }

    fn entry(&self, v: &Value, node: &Node) -> Value {
        v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == node.id().as_str()))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Every history record of `node`, oldest first.
    fn history_of(v: &Value, node: &Node) -> Vec<Value> {
        let mut h: Vec<Value> = v["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter(|r| r["node"] == node.id().as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        h.reverse();
        h
    }

    /// Waits until `f` holds for the repair view; fails with `what` and the view.
    fn wait_view(&self, what: &str, mut f: impl FnMut(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_for(PHASE, || {
            last = self.repairs();
            f(&last)
        });
        assert!(
            ok,
            "{what}: not within {PHASE:?}; repairs:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        );
        last
    }

    fn healthy(&self, v: &Value, node: &Node) -> bool {
        self.entry(v, node)["state"] == "healthy"
    }

    fn log(&self, name: &str) -> Vec<String> {
        self.dir.lines(name)
    }
}

/// Milliseconds of an RFC 3339 UTC time with millisecond precision
/// (`2026-11-28T12:00:01.234Z`), enough to order the records of one run.
fn ms(t: &str) -> Option<u64> {
    let (date, time) = t.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<u64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<u64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let frac: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let [_, _, day] = d.as_slice() else {
        return None;
    };
    let [hh, mm, ss] = h.as_slice() else {
        return None;
    };
    // Within one test run a day boundary is the only carry that matters.
    Some((((day * 24 + hh) * 60 + mm) * 60 + ss) * 1000 + frac)
}

#[test]
fn repair_fleet() {
    let mut f = Fleet::new();
    let now = Instant::now();

    // Every node publishes its node entry, healthy.
    f.wait_view("six healthy node entries", |v| {
        f.nodes.iter().all(|n| f.healthy(v, n))
    });
    // (b) n5 only warns, from now to the end of the test (checked after (a)).
    f.nodes[5].flag("wd-warn");

    // ---- (a) restart, reimage, replace --------------------------------
    let n0 = &f.nodes[0];
    // A verified snapshot of gen1 exists; later data is not snapshotted.
    let snap_key = format!("snapshots/db-{}/index", n0.name);
    assert!(
        wait_for(PHASE, || {
            let (code, out) = f.ap(&["kv", "get", &snap_key]);
            code == 0 && out.contains("sha256")
        }),
        "a snapshot of n0 was recorded"
    );
    n0.flag("nosnap");
    n0.dir.write("data/junk", "written after the last snapshot");
    n0.flag("fail");
    let mut code75 = None;
    let ok = wait_for(Duration::from_secs(60), || {
        code75 = f.nodes[0]
            .agent
            .as_mut()
            .and_then(|a| a.wait(Duration::from_millis(50)));
        code75.is_some()
    });
    assert!(ok, "n0's agent exited after the ladder");
    assert_eq!(code75, Some(75), "replace exits with code 75");
    f.nodes[0].agent = None;
    let v = f.repairs();
    let h = Fleet::history_of(&v, &f.nodes[0]);
    let steps: Vec<_> = h
        .iter()
        .map(|r| {
            (
                r["step"].as_str().unwrap_or("?").to_string(),
                r["outcome"].as_str().unwrap_or("open").to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("restart".to_string(), "failed".to_string()),
            ("reimage".into(), "failed".into()),
            ("replace".into(), "replaced".into())
        ],
        "history of n0: {v:#}"
    );
    assert_eq!(f.log("replaced.log"), ["n0"], "the replace hook ran once");
    // The reimage: dataDir restored from the gen1 snapshot, the old one aside.
    let data = f.nodes[0].data();
    assert_eq!(
        std::fs::read_to_string(data.join("marker")).unwrap_or_default(),
        "n0-gen1"
    );
    assert!(
        !data.join("junk").exists(),
        "the restored dataDir is the snapshot's"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(&f.nodes[0].dir.0)
        .expect("node dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("data.reimage-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "one dataDir kept aside: {aside:?}");
    assert!(
        aside[0].join("junk").exists(),
        "the old data is kept as it was"
    );
    // The replacement (same ID), healed: it continues in probation and ends healthy.
    f.nodes[0].unflag("fail");
    f.start_node(0);
    let v = f.wait_view("n0's replacement healthy", |v| f.healthy(v, &f.nodes[0]));
    let h = Fleet::history_of(&v, &f.nodes[0]);
    assert_eq!(h.len(), 3, "no step repeated after the replacement: {v:#}");
    eprintln!("phase a done after {:?}", now.elapsed());

    let warned = wait_for(PHASE, || {
        let (_, out) = f.ap(&["catalog", "instances", "_watchdogs", "-o", "json"]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|i| i["id"] == "n5.probe" && i["status"] == "warning")
    });
    assert!(warned, "n5's watchdog entry shows the warning");

    // ---- (c) four failures at once, one slot --------------------------
    let before_c = f.log("exhausted.log").len();
    let wave = [1, 2, 3, 4];
    for &i in &wave {
        f.nodes[i].flag("heal");
    }
    for &i in &wave {
        f.nodes[i].flag("wd-error");
    }
    let v = f.wait_view("the four nodes repaired", |v| {
        wave.iter().all(|&i| {
            let n = &f.nodes[i];
            f.healthy(v, n)
                && Fleet::history_of(v, n)
                    .iter()
                    .any(|r| r["outcome"] == "succeeded")
        })
    });
    for &i in &wave {
        f.nodes[i].unflag("heal");
    }
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for &i in &wave {
        let n = &f.nodes[i];
        let h = Fleet::history_of(&v, n);
        assert_eq!(h.len(), 1, "{} was repaired by one restart: {v:#}", n.name);
        assert_eq!(h[0]["step"], "restart");
        let start = h[0]["started"].as_str().and_then(ms).expect("started");
        let end = h[0]["ended"].as_str().and_then(ms).expect("ended");
        spans.push((start, end, n.name.clone()));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "repairs overlap with a budget of 1: {w:?} (all: {spans:?})"
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || f.log("exhausted.log").len()
            > before_c),
        "repairBudgetExhausted fired"
    );
    let fired = f.log("exhausted.log");
    assert_eq!(
        fired.len() - before_c,
        1,
        "repairBudgetExhausted fired exactly once fleet-wide: {fired:?}"
    );
    f.wait_view("the exhausted marker removed", |v| {
        v["budgetExhausted"].is_null()
    });
    eprintln!("phase c done after {:?}", now.elapsed());

    // ---- (d) the slot holder dies --------------------------------------
    let pair = [1, 2];
    for &i in &pair {
        f.nodes[i].flag("fail");
    }
    let mut holder = None;
    f.wait_view("one holds the slot, the other waits", |v| {
        let held: Vec<usize> = pair
            .iter()
            .copied()
            .filter(|&i| f.entry(v, &f.nodes[i])["holdsSlot"] == true)
            .collect();
        let waiting = pair
            .iter()
            .any(|&i| f.entry(v, &f.nodes[i])["waitingForBudget"] == true);
        holder = held.first().copied();
        held.len() == 1 && waiting
    });
    let holder = holder.expect("a holder");
    let waiter = if holder == 1 { 2 } else { 1 };
    // The waiter heals at its repair's restart.
    f.nodes[waiter].flag("heal");
    let before = Fleet::history_of(&f.repairs(), &f.nodes[waiter]).len();
    let killed = Instant::now();
    f.nodes[holder].kill9();
    f.wait_view("the waiter takes the slot", |v| {
        f.entry(v, &f.nodes[waiter])["holdsSlot"] == true
            || Fleet::history_of(v, &f.nodes[waiter]).len() > before
    });
    let took = killed.elapsed();
    // The holder's session expires within the TTL of its last keep-alive;
    // the waiter reacts to its entries' removal (a catalog change). The
    // margin is for this test's polling through the CLI.
    assert!(
        took <= TTL + Duration::from_secs(2),
        "the slot passed on after {took:?} (lease TTL {TTL:?})"
    );
    f.wait_view("the waiter repaired", |v| f.healthy(v, &f.nodes[waiter]));
    eprintln!(
        "phase d done after {:?} (slot passed on in {took:?})",
        now.elapsed()
    );

    // ---- (b) checked at the end: n5 warned all along, never repaired ----
    let v = f.repairs();
    assert!(f.healthy(&v, &f.nodes[5]), "n5 healthy: {v:#}");
    assert!(
        Fleet::history_of(&v, &f.nodes[5]).is_empty(),
        "a warning never repairs: {v:#}"
    );
    let (code, out) = f.ap(&["repairs", "list", JOB]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("service db:"), "{out}");
    let st = f.nodes[5].agent.as_ref().expect("n5 runs").status();
    let w = st["watchdogs"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == "probe"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(w["status"], "warning", "{st:#}");
    let (code, out) = f.nodes[5].agent.as_ref().expect("n5").cli(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WATCHDOG") && out.contains("overloaded") && out.contains("REPAIR"),
        "status shows the repair state and the watchdog: {out}"
    );
}
