//! Test harness: runs the real `autopilot` binary in a temporary directory and always stops it.
#![allow(dead_code)]
// The harness starts the real binary as a child process.
#![allow(clippy::disallowed_methods)]

pub mod redis;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_autopilot")
}

/// A scratch directory, removed on drop unless it is a child of another.
pub struct Dir(pub PathBuf, bool);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "autopilot-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Dir(p, true)
    }

    /// A sub-directory, cleaned up with its parent.
    pub fn child(&self, name: &str) -> Dir {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("create sub dir");
        Dir(p, false)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn lines(&self, name: &str) -> Vec<String> {
        self.read(name).lines().map(str::to_string).collect()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // AUTOPILOT_KEEP_TEST_DIRS=1 keeps agents' logs for a post-mortem.
        if self.1 && std::env::var_os("AUTOPILOT_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running agent. Dropping it stops it: SIGTERM, then SIGKILL.
pub struct Agent {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub out: PathBuf,
    pub started: Instant,
}

/// Writes `config.json5` (with the control socket filled in) and starts the agent.
pub fn start(dir: &Dir, config: &str) -> Agent {
    start_with(dir, config, &[], &[])
}

pub fn start_with(dir: &Dir, config: &str, args: &[&str], env: &[(&str, &str)]) -> Agent {
    launch(dir, config, &[], args, env)
}

/// Writes the config and starts the agent, through `prefix` if not empty
/// (a wrapper that must exec the agent, so the child's pid is the agent's).
fn launch(dir: &Dir, config: &str, prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Agent {
    let socket = dir.path("ctl.sock");
    let text = config
        .replace("@SOCKET@", &socket.display().to_string())
        .replace("@DIR@", &dir.0.display().to_string());
    let cfg = dir.write("config.json5", &text);
    let out = dir.path("agent.log");
    let log = std::fs::File::create(&out).expect("log file");
    let mut cmd = match prefix.split_first() {
        Some((program, pre)) => {
            let mut c = Command::new(program);
            c.args(pre).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("-config")
        .arg(&cfg)
        .args(args)
        .env("AUTOPILOT_SOCKET", &socket)
        // Never the machine's default catalog: each test has its own.
        .env(
            "AUTOPILOT_CATALOG",
            format!("local://{}", dir.path("catalog").display()),
        )
        .env("AUTOPILOT_STATE_DIR", dir.path("state"))
        .env_remove("CONTAINERPILOT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let child = cmd.spawn().expect("spawn autopilot");
    Agent {
        child: Some(child),
        socket,
        config: cfg,
        out,
        started: Instant::now(),
    }
}

/// A service's passing instances as `autopilot catalog instances --json`
/// prints them (`None` when the catalog cannot be read).
fn passing(catalog: &str, service: &str) -> Option<Vec<serde_json::Value>> {
    let out = Command::new(bin())
        .args([
            "catalog",
            "--catalog",
            catalog,
            "instances",
            service,
            "--json",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(v.into_iter().filter(|i| i["status"] == "passing").collect())
}

/// The ports of a service's passing instances.
pub fn passing_ports(catalog: &str, service: &str) -> Vec<u16> {
    passing(catalog, service)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect()
}

/// The IDs of a service's passing instances (`None` when the catalog cannot be read).
pub fn passing_ids(catalog: &str, service: &str) -> Option<Vec<String>> {
    Some(
        passing(catalog, service)?
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// The settings every blueprint node on etcd gets: its catalog, loopback
/// advertising, host name, state directory and a `file://` snapshot store,
/// all under `dir`.
pub fn blueprint_env(dir: &Dir, catalog: &str, name: &str) -> Vec<(String, String)> {
    vec![
        ("AUTOPILOT_CATALOG".into(), catalog.into()),
        ("AUTOPILOT_INTERFACE".into(), "static:127.0.0.1".into()),
        ("AUTOPILOT_HOSTNAME".into(), name.into()),
        (
            "AUTOPILOT_STATE_DIR".into(),
            dir.path(&format!("state-{name}")).display().to_string(),
        ),
        (
            "SNAPSHOT_STORE".into(),
            format!("file://{}", dir.path("store").display()),
        ),
    ]
}

/// [`start_example`] with owned variables, waiting until the agent answers.
pub fn start_example_ready(
    example: &str,
    config: &str,
    log: &Path,
    socket: &Path,
    env: &[(String, String)],
) -> Agent {
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = start_example(example, config, log, socket, &vars);
    a.ready();
    a
}

/// The repository's `examples/<name>` directory.
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Starts a blueprint's agent as its README does: from the example's
/// directory, with the example's own config, `autopilot` on the PATH, and
/// `socket` where that config puts the control socket.
pub fn start_example(
    example: &str,
    config: &str,
    log: &Path,
    socket: &Path,
    env: &[(&str, &str)],
) -> Agent {
    let dir = example_dir(example);
    let bin_dir = Path::new(bin()).parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::fs::File::create(log).expect("log file");
    let child = Command::new(bin())
        .arg("-config")
        .arg(dir.join(config))
        .current_dir(&dir)
        .env("PATH", path)
        .env_remove("CONTAINERPILOT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("spawn autopilot");
    Agent {
        child: Some(child),
        socket: socket.to_path_buf(),
        config: dir.join(config),
        out: log.to_path_buf(),
        started: Instant::now(),
    }
}

impl Agent {
    /// The pid of a job's current process, from the agent's status.
    pub fn job_pid(&self, job: &str) -> Option<i32> {
        let st = self.status();
        st["jobs"].as_array()?.iter().find(|j| j["name"] == job)?["pid"]
            .as_i64()
            .map(|p| p as i32)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// Waits for the agent to exit; returns its exit code, or None on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                use std::os::unix::process::ExitStatusExt;
                return st.code().or(st.signal().map(|s| 128 + s));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the control socket answers.
    pub fn ready(&self) {
        wait_for(Duration::from_secs(10), || {
            http_unix(&self.socket, "GET", "/v3/ping", "").is_some_and(|(c, _)| c == 200)
        });
        assert!(
            http_unix(&self.socket, "GET", "/v3/ping", "").is_some(),
            "agent never answered; log:\n{}",
            self.log()
        );
    }

    /// Runs the CLI against this agent; returns (exit code, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        cli(&self.config, &self.socket, args)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_unix(&self.socket, "GET", "/v3/status", "").expect("status");
        assert_eq!(code, 200);
        serde_json::from_str(&body).expect("status json")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait(Duration::from_secs(5)).is_none()
                && let Some(c) = self.child.as_mut()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn cli(config: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let catalog = config.parent().unwrap_or(Path::new("/tmp")).join("catalog");
    let out = Command::new(bin())
        .arg("-config")
        .arg(config)
        .args(args)
        .env("AUTOPILOT_SOCKET", socket)
        .env(
            "AUTOPILOT_CATALOG",
            format!("local://{}", catalog.display()),
        )
        .output()
        .expect("run cli");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Polls `f` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A raw HTTP/1.1 request over a unix socket: (status, body).
pub fn http_unix(path: &Path, method: &str, uri: &str, body: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

pub fn http_tcp(addr: &str, uri: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

#[allow(unused_imports)]
pub use autopilot_testkit::free_port;

fn nix_signal(sig: i32) -> Option<nix::sys::signal::Signal> {
    nix::sys::signal::Signal::try_from(sig).ok()
}

/// Sends `sig` to a process; a process that is gone is not an error.
pub fn kill(pid: i32, sig: i32) {
    // -1 (an agent already reaped) or 0 would signal every process of the
    // machine or our own group: never from a test.
    if pid <= 0 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix_signal(sig));
}

/// Sends `sig` to a process group.
pub fn killpg(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return;
    }
    if let Some(s) = nix_signal(sig) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), s);
    }
}

/// Whether a process exists (signal 0).
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

// ---- attacks.rs helpers ----

/// [`start`] with the agent's descriptor limit set to `nofile` (soft and
/// hard), through util-linux `prlimit`, which execs the agent: same pid.
pub fn start_limited(dir: &Dir, config: &str, nofile: u64) -> Agent {
    let limit = format!("--nofile={nofile}:{nofile}");
    start_wrapped(dir, config, &["prlimit", &limit, "--"], &[])
}

/// Raises this test process's soft descriptor limit to at least `n` (within the hard limit).
pub fn raise_own_nofile(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < n {
        setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).expect("setrlimit");
    }
}

// Helpers for tests/chaos_local.rs.

/// Like [`start_with`], but the agent is started through `prefix` (for
/// example `sh -c 'umask 000 && exec "$@"' sh`), which must exec it so
/// the child's pid is the agent's.
pub fn start_wrapped(dir: &Dir, config: &str, prefix: &[&str], env: &[(&str, &str)]) -> Agent {
    assert!(!prefix.is_empty(), "a wrapper command");
    launch(dir, config, prefix, &[], env)
}

/// Leadership intervals `(start ns, end ns, node)` from each node's
/// `events` file of `elected <ns>` / `demoted <ns>` lines, sorted; an
/// interval still open ends at `u128::MAX`.
pub fn leadership_spans(dirs: &[&Dir]) -> Vec<(u128, u128, usize)> {
    let mut spans = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut start = None;
        for line in dir.read("events").lines() {
            let Some((kind, t)) = line.split_once(' ') else {
                continue;
            };
            let Ok(t) = t.trim().parse::<u128>() else {
                continue;
            };
            match (kind, start) {
                ("elected", None) => start = Some(t),
                ("demoted", Some(s)) => {
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
    spans
}
