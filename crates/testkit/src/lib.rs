//! Test harness: starts real etcd members on free 127.0.0.1 ports in temporary directories (stalls, kills and restarts them, empty if asked), and kills them on drop.
// The harness starts real servers (etcd, openssl) as child processes.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A port no one listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A loopback port that refuses connections and stays taken until dropped:
/// a bound TCP socket that never listens. Unlike a port from [`free_port`],
/// no server another test starts meanwhile can take it.
pub struct RefusedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn refused_port() -> RefusedPort {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .expect("bind");
    let addr: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("getsockname");
    RefusedPort {
        _socket: fd,
        port: addr.port(),
    }
}

/// A unique scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "autopilot-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TLS material for a member: server certificate and key, and the CA that
/// clients must present certificates from.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One etcd member. Dropping it kills it.
pub struct Etcd {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    cluster: String,
    tls: Option<Tls>,
    child: Option<Child>,
}

fn etcd_bin() -> &'static str {
    if Path::new("/usr/bin/etcd").exists() {
        "/usr/bin/etcd"
    } else {
        "etcd"
    }
}

impl Etcd {
    /// A single-member cluster.
    pub fn single(dir: &Path) -> Etcd {
        Self::cluster(dir, 1).pop().expect("one member")
    }

    /// A single member serving clients over TLS with client certificates.
    pub fn single_tls(dir: &Path, tls: Tls) -> Etcd {
        let mut m = Self::members(dir, 1, Some(tls));
        let mut e = m.pop().expect("one member");
        e.start("new");
        e
    }

    /// `n` members forming one cluster, all started and healthy.
    pub fn cluster(dir: &Path, n: usize) -> Vec<Etcd> {
        let mut members = Self::members(dir, n, None);
        for m in &mut members {
            m.spawn("new");
        }
        for m in &members {
            m.wait_healthy(Duration::from_secs(30));
        }
        members
    }

    fn members(dir: &Path, n: usize, tls: Option<Tls>) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (c, p))| Etcd {
                name: format!("m{i}"),
                client_port: c,
                peer_port: p,
                data: dir.join(format!("etcd-m{i}")),
                log: dir.join(format!("etcd-m{i}.log")),
                cluster: cluster.clone(),
                tls: tls.clone(),
                child: None,
            })
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `127.0.0.1:PORT`, as catalog URLs take it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                state,
            ])
            .args(["--initial-cluster-token", "autopilot-test"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        self.child = Some(cmd.spawn().expect("start etcd (is etcd-server installed?)"));
    }

    fn start(&mut self, state: &str) {
        self.spawn(state);
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Waits until the member answers on its client port.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.tls.is_some() {
                if TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                    return;
                }
            } else if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    s,
                    "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.contains("\"health\":\"true\"") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd {} not healthy after {limit:?}; log:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Kills the member (SIGKILL, even when paused) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.start("existing");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("etcd is running");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }

    /// Stalls the member (SIGSTOP): its sockets stay open but nothing
    /// answers, as with a long GC pause or a frozen VM.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the member (SIGKILL) and starts it again on the same ports with
    /// an EMPTY data dir: a new cluster whose revisions start again from 1
    /// and which knows none of the old leases. Single-member clusters only.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
        self.start("new");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Comma-separated endpoints of members, for `etcd://A,B,C/prefix`.
pub fn endpoints(members: &[Etcd]) -> String {
    members
        .iter()
        .map(Etcd::endpoint)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `etcdctl` (v3 API) against an endpoint, for tests that set up auth.
/// Turns on etcd's auth: a root user, and `user` with `password` allowed
/// to read and write under `prefix` only.
pub fn enable_auth(endpoint: &str, user: &str, password: &str, prefix: &str) {
    etcdctl(endpoint, &["user", "add", "root:rootpw"]);
    etcdctl(endpoint, &["user", "add", &format!("{user}:{password}")]);
    etcdctl(endpoint, &["role", "add", "agents"]);
    etcdctl(
        endpoint,
        &[
            "role",
            "grant-permission",
            "agents",
            "--prefix=true",
            "readwrite",
            &format!("{prefix}/"),
        ],
    );
    etcdctl(endpoint, &["user", "grant-role", user, "agents"]);
    etcdctl(endpoint, &["auth", "enable"]);
}

pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://{endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl (is etcd-client installed?)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a CA and a certificate/key pair signed by it with `openssl`,
/// valid for 127.0.0.1 and localhost; returns (ca, cert, key) paths.
pub fn make_certs(dir: &Path, name: &str) -> Tls {
    make_certs_with(dir, name, "IP:127.0.0.1,DNS:localhost", 2)
}

/// [`make_certs`] with the certificate's subjectAltName (e.g.
/// `DNS:example.com`) and validity in days (negative: already expired).
pub fn make_certs_with(dir: &Path, name: &str, san: &str, days: i32) -> Tls {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.pem").exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=autopilot-test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ]);
    }
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .expect("ext");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &format!("{name}-key.pem"),
        "-out",
        &format!("{name}.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        &days.to_string(),
        "-extfile",
        &format!("{name}.ext"),
        "-out",
        &format!("{name}.pem"),
    ]);
    Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

/// A TCP proxy on loopback that can partition its traffic, to make a
/// server unreachable from one client only. While cut, bytes are held, not
/// refused: connections hang as behind a partition, and resume intact after
/// it heals, as TCP would.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pairs = match (client.try_clone(), server.try_clone()) {
                    (Ok(c2), Ok(s2)) => [(c2, s2), (server, client)],
                    _ => continue,
                };
                for (mut from, mut to) in pairs {
                    let (c, s) = (c.clone(), s.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = [0u8; 16384];
                        let mut held: Vec<u8> = Vec::new();
                        while !s.load(Ordering::SeqCst) {
                            if !c.load(Ordering::SeqCst) {
                                match from.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => held.extend_from_slice(&buf[..n]),
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            } else {
                                // Partitioned: read nothing, so the sender's
                                // data waits (as in TCP buffers) until healing.
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            if !held.is_empty() {
                                if to.write_all(&held).is_err() {
                                    break;
                                }
                                held.clear();
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts holding all traffic, both ways.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What an etcd member says about itself on its client port (plain HTTP
/// only): the Prometheus text of `/metrics`, and the CPU time it used.
impl Etcd {
    /// The member's `/metrics` text (`None` if it does not answer in 5 s).
    pub fn metrics(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            // Chunked: drop the size lines.
            let mut out = String::new();
            let mut rest = body;
            while let Some((len, tail)) = rest.split_once("\r\n") {
                let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
                if n == 0 || tail.len() < n {
                    break;
                }
                out.push_str(&tail[..n]);
                rest = tail[n..].trim_start_matches("\r\n");
            }
            return Some(out);
        }
        Some(body.to_string())
    }

    /// The member's CPU time so far (user + system, from `/proc/<pid>/stat`).
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // In USER_HZ ticks: 100 per second on Linux (part of the /proc ABI).
        Some(Duration::from_millis(ticks * 10))
    }
}

/// The sum of every sample of the metric `name` in Prometheus text whose
/// labels contain each of `labels` (`key="value"` strings).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, lbls) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|w| lbls.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
