//! The Redis blueprint's test helpers: a RESP client (authenticated with the cluster's password), a cluster of blueprint nodes on one etcd,
//! and a writer that records the writes `WAIT 1` acknowledged.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// The password every blueprint node of these tests requires (`REDIS_PASSWORD_FILE`).
pub const PASSWORD: &str = "bp-test-Secret-1";

/// One RESP command, authenticated with [`PASSWORD`]; returns the reply as text (`-ERR ...` for
/// errors).
pub fn resp(port: u16, args: &[&str]) -> Option<String> {
    resp_as(port, Some(PASSWORD), Duration::from_secs(3), args)
}

/// One RESP command sent after `AUTH password` (none: unauthenticated), waiting `timeout` for
/// the reply (`None`: no connection or no reply in time, e.g. a write held by `CLIENT PAUSE`).
pub fn resp_as(
    port: u16,
    password: Option<&str>,
    timeout: Duration,
    args: &[&str],
) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut req = String::new();
    let mut command = |args: &[&str]| {
        req.push_str(&format!("*{}\r\n", args.len()));
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    };
    if let Some(pw) = password {
        command(&["AUTH", pw]);
    }
    command(args);
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if password.is_some() {
        // AUTH's reply is one line; an error (no password set) is ignored.
        r.read_line(&mut line).ok()?;
        line.clear();
    }
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
pub fn info(port: u16, field: &str) -> Option<String> {
    let text = resp(port, &["INFO", "replication"])?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

pub struct Cluster {
    pub dir: Dir,
    pub etcd: autopilot_testkit::Etcd,
}

impl Cluster {
    /// A fresh directory and etcd for a cluster of blueprint nodes.
    pub fn new(tag: &str) -> Cluster {
        assert!(
            std::process::Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok(),
            "redis-server is not installed: run ./scripts/test, which installs it"
        );
        let dir = Dir::new(tag);
        let pw = dir.write("redis.password", &format!("{PASSWORD}\n"));
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod password file");
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        Cluster { dir, etcd }
    }

    pub fn url(&self) -> String {
        format!("etcd://{}/redis-bp", self.etcd.endpoint())
    }

    pub fn node(&self, name: &str, port: u16) -> Agent {
        self.node_with(name, port, &[])
    }

    /// A node with more (or overriding) environment variables.
    pub fn node_with(&self, name: &str, port: u16, extra: &[(&str, &str)]) -> Agent {
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
            (
                "REDIS_PASSWORD_FILE".into(),
                self.dir.path("redis.password").display().to_string(),
            ),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        start_example_ready(
            "redis",
            "redis.json5",
            &self.dir.path(&format!("{name}.log")),
            &self.dir.path(&format!("autopilot-redis-{port}.sock")),
            &env,
        )
    }

    pub fn catalog(&self, service: &str) -> Vec<u16> {
        passing_ports(&self.url(), service)
    }
}

/// Whether `port` answers but holds writes (`CLIENT PAUSE ... WRITE`): `PING` answers and a `SET`
/// of `key` gets no reply within 300 ms. (A held write runs once the pause lifts.)
pub fn holds_writes(port: u16, key: &str) -> bool {
    resp(port, &["PING"]).as_deref() == Some("+PONG")
        && resp_as(
            port,
            Some(PASSWORD),
            Duration::from_millis(300),
            &["SET", key, "held"],
        )
        .is_none()
}

pub fn replicates(port: u16, master: u16) -> bool {
    info(port, "role").as_deref() == Some("slave")
        && info(port, "master_port") == Some(master.to_string())
        && info(port, "master_link_status").as_deref() == Some("up")
}

/// Writes `<prefix><n>` to whichever node accepts, and records the keys
/// that `WAIT 1` confirmed on a replica.
pub struct Writer {
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Writer {
    pub fn start(ports: Vec<u16>, prefix: &'static str) -> Writer {
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

    /// The writes `WAIT 1` acknowledged so far.
    pub fn acked_keys(&self) -> BTreeSet<String> {
        self.acked.lock().expect("lock").clone()
    }

    /// Stops writing; returns every acknowledged key.
    pub fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer");
        self.acked.lock().expect("lock").clone()
    }

    /// How many writes `WAIT 1` acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits for a few more acknowledged writes (on the new master), stops,
    /// and returns every acknowledged key and those missing on `master`.
    pub fn finish(self, master: u16) -> (BTreeSet<String>, Vec<String>) {
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
