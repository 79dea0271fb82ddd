//! The Redis blueprint (examples/redis) end to end on a real etcd: election of one master, replicas following it, snapshots, restore of a new node, kill -9 failover with no lost `WAIT 1` write, and the old master rejoining.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One RESP command; returns the reply as text (`-ERR ...` for errors).
fn resp(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().ok()?;
        if n < 0 {
            return Some(String::new());
        }
        let mut body = vec![0u8; n as usize + 2];
        std::io::Read::read_exact(&mut r, &mut body).ok()?;
        return Some(String::from_utf8_lossy(&body[..n as usize]).into_owned());
    }
    Some(line)
}

/// One field of `INFO replication`.
fn info(port: u16, field: &str) -> Option<String> {
    let text = resp(port, &["INFO", "replication"])?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

struct Cluster {
    dir: Dir,
    etcd: autopilot_testkit::Etcd,
}

impl Cluster {
    fn url(&self) -> String {
        format!("etcd://{}/redis-bp", self.etcd.endpoint())
    }

    fn node(&self, name: &str, port: u16) -> Agent {
        let mut env = blueprint_env(&self.dir, &self.url(), name);
        env.extend([
            ("REDIS_RUN".into(), self.dir.0.display().to_string()),
            ("REDIS_PORT".into(), port.to_string()),
            (
                "REDIS_DATA".into(),
                self.dir.path(&format!("data-{name}")).display().to_string(),
            ),
            ("REDIS_BIND".into(), "127.0.0.1".into()),
            ("SNAPSHOT_INTERVAL".into(), "2s".into()),
        ]);
        start_example_ready(
            "redis",
            "redis.json5",
            &self.dir.path(&format!("{name}.log")),
            &self.dir.path(&format!("autopilot-redis-{port}.sock")),
            &env,
        )
    }

    fn catalog(&self, service: &str) -> Vec<u16> {
        passing_ports(&self.url(), service)
    }
}

fn replicates(port: u16, master: u16) -> bool {
    info(port, "role").as_deref() == Some("slave")
        && info(port, "master_port") == Some(master.to_string())
        && info(port, "master_link_status").as_deref() == Some("up")
}

/// Writes `<prefix><n>` to whichever node accepts, and records the keys
/// that `WAIT 1` confirmed on a replica.
struct Writer {
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(ports: Vec<u16>, prefix: &'static str) -> Writer {
        let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{prefix}{i}");
                    for &p in &ports {
                        if resp(p, &["SET", &key, "v"]).as_deref() == Some("+OK") {
                            if resp(p, &["WAIT", "1", "500"])
                                .and_then(|r| r.trim_start_matches(':').parse::<i64>().ok())
                                .is_some_and(|n| n >= 1)
                            {
                                acked.lock().expect("lock").insert(key.clone());
                            }
                            break;
                        }
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Writer {
            acked,
            stop,
            handle,
        }
    }

    /// Waits for a few more acknowledged writes (on the new master), stops,
    /// and returns every acknowledged key and those missing on `master`.
    fn finish(self, master: u16) -> (BTreeSet<String>, Vec<String>) {
        let before = self.acked.lock().expect("lock").len();
        assert!(
            wait_for(Duration::from_secs(5), || self
                .acked
                .lock()
                .expect("lock")
                .len()
                > before + 5),
            "writes do not resume"
        );
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer");
        let acked = self.acked.lock().expect("lock").clone();
        let lost = acked
            .iter()
            .filter(|k| resp(master, &["EXISTS", k]).as_deref() != Some(":1"))
            .cloned()
            .collect();
        (acked, lost)
    }
}

#[test]
fn redis_master_failover_snapshots_and_rejoin() {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is not installed: run ./scripts/test, which installs it"
    );
    let dir = Dir::new("bp-redis");
    let etcd = autopilot_testkit::Etcd::single(&dir.0);
    let c = Cluster { dir, etcd };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let names = ["n1", "n2", "n3", "n4"];
    let mut nodes: Vec<Option<Agent>> = (0..3).map(|i| Some(c.node(names[i], ports[i]))).collect();

    // One master, registered as "redis"; the other two replicate it, as "redis-replica".
    let mut master = 0;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let m = c.catalog("redis");
            let Some(&mp) = m.first() else { return false };
            master = ports.iter().position(|p| *p == mp).unwrap_or(0);
            m.len() == 1
                && c.catalog("redis-replica").len() == 2
                && (0..3)
                    .filter(|i| *i != master)
                    .all(|i| replicates(ports[i], mp))
        }),
        "no master with two replicas; logs:\n{}",
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );

    // The master snapshots its RDB on an interval.
    let snapshots = || {
        std::process::Command::new(bin())
            .args(["kv", "--catalog", &c.url(), "get", "snapshots/redis/index"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).matches("sha256").count())
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(10), || snapshots() >= 1));

    // Writes acknowledged by WAIT 1 run across the failover.
    let writer = Writer::start(ports[..3].to_vec(), "k");
    std::thread::sleep(Duration::from_millis(800));

    // kill -9 of the master's agent and of redis-server.
    let m = nodes[master].take().expect("master node");
    let redis_pid = m.job_pid("redis").expect("redis pid");
    let killed = Instant::now();
    kill(m.pid(), libc::SIGKILL);
    kill(redis_pid, libc::SIGKILL);
    let mut m = m;
    let _ = m.wait(Duration::from_secs(5));
    drop(m);

    let survivors: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    let mut new_master = survivors[0];
    assert!(
        wait_for(Duration::from_secs(20), || {
            survivors.iter().any(|&i| {
                // The dead master's entry may linger until its session lease
                // expires; the new one must be there.
                let ok = info(ports[i], "role").as_deref() == Some("master")
                    && c.catalog("redis").contains(&ports[i]);
                if ok {
                    new_master = i;
                }
                ok
            })
        }),
        "no new master; logs:\n{}",
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    eprintln!(
        "failover (kill -9 → new master registered): {:?}",
        killed.elapsed()
    );
    let other = survivors
        .iter()
        .copied()
        .find(|i| *i != new_master)
        .expect("other");
    assert!(
        wait_for(Duration::from_secs(10), || replicates(
            ports[other],
            ports[new_master]
        )),
        "the other replica does not follow the new master"
    );
    // Writes succeed on the new master, then stop.
    let (acked, lost) = writer.finish(ports[new_master]);
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );

    // The old master, restarted on its old data dir, rejoins as a replica.
    nodes[master] = Some(c.node(names[master], ports[master]));
    assert!(
        wait_for(Duration::from_secs(20), || replicates(
            ports[master],
            ports[new_master]
        )),
        "old master did not rejoin as a replica:\n{}",
        nodes[master].as_ref().map(|a| a.log()).unwrap_or_default()
    );
    assert!(wait_for(Duration::from_secs(15), || c.catalog("redis")
        == [ports[new_master]]));

    // A fourth node with an empty data dir restores the newest snapshot, then
    // joins as a replica, announced only once it is in sync.
    let n4 = c.node(names[3], ports[3]);
    let mut announced_in_sync = None;
    assert!(wait_for(Duration::from_secs(20), || {
        if c.catalog("redis-replica").contains(&ports[3]) {
            announced_in_sync = Some(replicates(ports[3], ports[new_master]));
            true
        } else {
            false
        }
    }));
    assert_eq!(announced_in_sync, Some(true), "announced before its sync");
    assert!(
        n4.log().contains("restored before start"),
        "n4 did not restore a snapshot:\n{}",
        n4.log()
    );
    let sample = acked.iter().next().expect("a key");
    assert_eq!(resp(ports[3], &["EXISTS", sample]).as_deref(), Some(":1"));

    // Graceful handover: maintenance on the master. It resigns, pauses its
    // writes; another node catches up from it and takes over at once.
    let all = ports.clone();
    let writer = Writer::start(all.clone(), "g");
    std::thread::sleep(Duration::from_millis(500));
    let old = ports[new_master];
    let (code, out) = nodes[new_master]
        .as_ref()
        .expect("master agent")
        .cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    let handed = Instant::now();
    let mut next = 0;
    assert!(
        wait_for(Duration::from_secs(5), || {
            all.iter().any(|&p| {
                let ok = p != old && info(p, "role").as_deref() == Some("master");
                if ok {
                    next = p;
                }
                ok
            })
        }),
        "no new master after maintenance"
    );
    eprintln!(
        "graceful handover (maintenance → new master): {:?}",
        handed.elapsed()
    );
    let (_, lost) = writer.finish(next);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost in the handover: {lost:?}",
        lost.len()
    );
    assert!(
        wait_for(Duration::from_secs(10), || replicates(old, next)),
        "the old master does not follow the new one"
    );
}
