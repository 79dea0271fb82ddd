//! The announce gate end to end over real BIRD 2: two network namespaces on a veth pair, a BIRD "router" in one and the agent's BIRD (a `dieWithAgent` job of the agent) in the other, an eBGP session between them. The router's table gains the job's prefix within one health interval of the job turning healthy and loses it on failure, maintenance, the disable file, SIGTERM (before the job's process gets its signal) and kill -9 of the agent (its BIRD dies with it and the session drops).
// Tests start the real binary, etcd and BIRD as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autopilot_testkit::Etcd;
use common::*;

const PREFIX: &str = "192.0.2.10/32";
/// The job's health-check interval: the bound the issue sets for a change.
const INTERVAL: Duration = Duration::from_secs(1);
/// Slack on a shared 2-core machine: the configure, the BGP update and this
/// test's polling.
const SLACK: Duration = Duration::from_millis(1500);
/// BGP hold time on both ends (BIRD's minimum is 3 s).
const HOLD: Duration = Duration::from_secs(3);
/// The job's `drain`: the withdrawal must reach the router this long before
/// the job gets SIGTERM.
const DRAIN_MS: u64 = 1000;

fn run(cmd: &[&str]) -> std::process::Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces joined by a veth pair: `router` 10.200.0.1, `agent`
/// 10.200.0.2. Deleted on drop (the veth goes with its namespace).
struct Net {
    router: String,
    agent: String,
}

impl Net {
    /// `tag` keeps the names of this binary's tests (one pid) apart.
    fn new(tag: &str) -> Net {
        let id = std::process::id();
        let net = Net {
            router: format!("apr{tag}{id}"),
            agent: format!("apa{tag}{id}"),
        };
        let (vr, va) = (format!("vr{tag}{id}"), format!("va{tag}{id}"));
        run(&["ip", "netns", "add", &net.router]);
        run(&["ip", "netns", "add", &net.agent]);
        run(&[
            "ip",
            "link",
            "add",
            &vr,
            "netns",
            &net.router,
            "type",
            "veth",
            "peer",
            "name",
            &va,
            "netns",
            &net.agent,
        ]);
        for (ns, dev, addr) in [
            (&net.router, &vr, "10.200.0.1/30"),
            (&net.agent, &va, "10.200.0.2/30"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.router, &self.agent] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The router's BIRD, killed on drop.
struct Bird(Child);

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process (group) to kill on drop: the job left behind by a kill -9 of
/// the agent, or the agent's BIRD should it survive.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            killpg(*pid, libc::SIGKILL);
            kill(*pid, libc::SIGKILL);
        }
    }
}

fn router_conf() -> String {
    r#"
router id 10.200.0.1;
log stderr all;
protocol device { scan time 1; }
protocol bgp agent {
  local 10.200.0.1 as 65001;
  neighbor 10.200.0.2 as 65002;
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 { import all; export none; };
}
"#
    .to_string()
}

fn agent_bird_conf(dir: &Path) -> String {
    format!(
        r#"
router id 10.200.0.2;
log stderr all;
protocol device {{ scan time 1; }}
protocol static autopilot4 {{
  ipv4;
  include "{inc}/autopilot4.conf";
}}
protocol static autopilot6 {{
  ipv6;
  include "{inc}/autopilot6.conf";
}}
protocol bgp uplink {{
  local 10.200.0.2 as 65002;
  neighbor 10.200.0.1 as 65001;
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import none; export where proto = "autopilot4"; }};
}}
"#,
        inc = dir.join("include").display()
    )
}

/// The agent's config: BIRD as a `dieWithAgent` job (started in the agent's
/// namespace through `ip netns exec` when the agent itself runs outside
/// it), and `web` with its `announce` block.
fn config(dir: &Dir, ns: Option<&str>, port: u16, telemetry: u16, loopback: bool) -> String {
    let d = dir.0.display();
    let wrap = ns
        .map(|ns| format!(r#""ip", "netns", "exec", "{ns}", "#))
        .unwrap_or_default();
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  stopTimeout: 5,
  telemetry: {{ port: {telemetry}, interfaces: ["static:127.0.0.1"] }},
  jobs: [
    {{ name: "bird", dieWithAgent: true, restarts: "unlimited",
       exec: [{wrap}"bird", "-f", "-c", "{d}/agent-bird.conf", "-s", "{d}/agent-bird.ctl", "-P", "{d}/agent-bird.pid"] }},
    {{ name: "web", port: {port}, interfaces: ["static:127.0.0.1"],
       exec: ["sh", "-c", "trap 'date +%s.%N > {d}/sigterm; exit 0' TERM; while :; do sleep 0.05; done"],
       health: {{ exec: ["test", "-f", "{d}/healthy"], interval: 1, ttl: 5 }},
       announce: {{ prefixes: ["{PREFIX}"], speaker: "bird", socket: "{d}/agent-bird.ctl",
                   protocol: "autopilot", includeDir: "{d}/include", disableFile: "{d}/disable",
                   loopback: {loopback}, drain: "{DRAIN_MS}ms" }} }},
  ],
}}"#
    )
}

fn birdc(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .expect("run birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn router_has_route(socket: &Path) -> bool {
    birdc(socket, &["show", "route", "for", PREFIX]).contains(PREFIX)
}

fn established(socket: &Path) -> bool {
    birdc(socket, &["show", "protocols", "agent"]).contains("Established")
}

/// Polls the router every 50 ms until its table has (or lacks) the prefix;
/// returns when that was first seen, as wall-clock time and as the time
/// since `since`.
fn until_route(socket: &Path, present: bool, limit: Duration, since: Instant) -> (f64, Duration) {
    let deadline = since + limit;
    loop {
        if router_has_route(socket) == present {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            return (wall, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the router {} {PREFIX} within {limit:?}",
            if present {
                "did not gain"
            } else {
                "did not lose"
            }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn announce_state(a: &Agent) -> Option<(String, Option<String>)> {
    let st = a.status();
    let job = st["jobs"].as_array()?.iter().find(|j| j["name"] == "web")?;
    let p = &job["announce"]["prefixes"][0];
    Some((
        p["state"].as_str()?.to_string(),
        p["reason"].as_str().map(str::to_string),
    ))
}

fn metrics(addr: &str) -> String {
    http_tcp(addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The router's BIRD in its namespace, and its control socket.
fn start_router(dir: &Dir, net: &Net) -> (Bird, std::path::PathBuf) {
    let sock = dir.path("router.ctl");
    std::fs::write(dir.path("router.conf"), router_conf()).unwrap();
    let bird = Bird(
        Command::new("ip")
            .args(["netns", "exec", &net.router, "bird", "-f", "-c"])
            .arg(dir.path("router.conf"))
            .arg("-s")
            .arg(&sock)
            .arg("-P")
            .arg(dir.path("router.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("router.log")).unwrap())
            .spawn()
            .expect("start the router's bird"),
    );
    (bird, sock)
}

/// Whether `lo` in namespace `ns` holds the anycast address.
fn on_lo(ns: &str) -> bool {
    let out = run(&["ip", "-n", ns, "-o", "addr", "show", "dev", "lo"]);
    String::from_utf8_lossy(&out.stdout).contains(" 192.0.2.10/32 ")
}

/// `loopback: true` with the agent itself in the node's namespace (its
/// catalog the embedded one): the address is on `lo` whenever the route is
/// announced, and leaves it after the withdrawal and on stop.
#[test]
fn loopback_follows_the_gate() {
    let dir = Dir::new("announce-lo");
    let net = Net::new("l");
    let (_router, router_sock) = start_router(&dir, &net);
    std::fs::write(dir.path("agent-bird.conf"), agent_bird_conf(&dir.0)).unwrap();
    let cfg = config(&dir, None, 8080, 9090, true);
    let mut agent = start_wrapped(&dir, &cfg, &["ip", "netns", "exec", &net.agent], &[]);
    agent.ready();
    assert!(
        wait_for(Duration::from_secs(20), || established(&router_sock)),
        "no BGP session: {}",
        agent.log()
    );
    assert!(!on_lo(&net.agent));
    let t = Instant::now();
    std::fs::write(dir.path("healthy"), "").unwrap();
    let (_, took) = until_route(&router_sock, true, INTERVAL + SLACK, t);
    // Added before the announcement.
    assert!(
        on_lo(&net.agent),
        "the route is up without the address on lo"
    );
    println!(
        "loopback: healthy -> announced with the address on lo: {} ms",
        took.as_millis()
    );
    std::fs::remove_file(dir.path("healthy")).unwrap();
    until_route(&router_sock, false, INTERVAL + SLACK, Instant::now());
    assert!(
        wait_for(Duration::from_secs(3), || !on_lo(&net.agent)),
        "the address stayed on lo after the withdrawal: {}",
        agent.log()
    );
    std::fs::write(dir.path("healthy"), "").unwrap();
    until_route(&router_sock, true, INTERVAL + SLACK, Instant::now());
    assert!(on_lo(&net.agent));
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(15)).is_some(),
        "{}",
        agent.log()
    );
    assert!(!router_has_route(&router_sock));
    assert!(!on_lo(&net.agent), "the address outlived the agent's stop");
}

#[test]
fn the_router_follows_the_gate() {
    assert!(
        Command::new("bird").arg("--version").output().is_ok(),
        "BIRD 2 is needed (scripts/test installs bird2)"
    );
    let dir = Dir::new("announce");
    let etcd = Etcd::single(&dir.0);
    etcd.wait_healthy(Duration::from_secs(20));
    let url = format!("etcd://{}/announce", etcd.endpoint());
    let net = Net::new("");
    let (_router, router_sock) = start_router(&dir, &net);
    std::fs::write(dir.path("agent-bird.conf"), agent_bird_conf(&dir.0)).unwrap();
    let port = autopilot_testkit::free_port();
    let telemetry = autopilot_testkit::free_port();
    let metrics_addr = format!("127.0.0.1:{telemetry}");
    let cfg = config(&dir, Some(&net.agent), port, telemetry, false);
    let env = [
        ("AUTOPILOT_CATALOG", url.as_str()),
        ("AUTOPILOT_HOSTNAME", "n1"),
    ];
    let mut agent = start_with(&dir, &cfg, &[], &env);
    agent.ready();
    assert!(
        wait_for(Duration::from_secs(20), || established(&router_sock)),
        "no BGP session: {}\n{}",
        birdc(&router_sock, &["show", "protocols", "all", "agent"]),
        agent.log()
    );
    // Not healthy yet: never announced.
    assert!(
        wait_for(Duration::from_secs(5), || announce_state(&agent)
            == Some(("withdrawn".into(), Some("not registered".into())))),
        "{:?}",
        announce_state(&agent)
    );
    assert!(!router_has_route(&router_sock));

    let bound = INTERVAL + SLACK;
    let mut timings = Vec::new();
    let up = |label: &str, timings: &mut Vec<(String, Duration)>, since: Instant| {
        let (_, took) = until_route(&router_sock, true, bound, since);
        timings.push((label.to_string(), took));
    };
    // Healthy: announced.
    let t = Instant::now();
    std::fs::write(dir.path("healthy"), "").unwrap();
    up("healthy -> announced", &mut timings, t);
    assert_eq!(announce_state(&agent), Some(("announced".into(), None)));
    let m = metrics(&metrics_addr);
    assert!(
        m.lines().any(|l| l.starts_with("autopilot_announce_state{")
            && l.contains(r#"state="announced""#)
            && l.contains(PREFIX)
            && l.ends_with(" 1")),
        "{m}"
    );

    // A failed check: withdrawn.
    let t = Instant::now();
    std::fs::remove_file(dir.path("healthy")).unwrap();
    let (_, took) = until_route(&router_sock, false, bound, t);
    timings.push(("check fails -> withdrawn".into(), took));
    assert_eq!(
        announce_state(&agent),
        Some(("withdrawn".into(), Some("not passing".into())))
    );
    let t = Instant::now();
    std::fs::write(dir.path("healthy"), "").unwrap();
    up("healthy again -> announced", &mut timings, t);

    // Maintenance: withdrawn at once (no check involved), back when it ends.
    let t = Instant::now();
    let (code, out) = agent.cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    let (_, took) = until_route(&router_sock, false, bound, t);
    timings.push(("maintenance on -> withdrawn".into(), took));
    assert_eq!(
        announce_state(&agent),
        Some(("withdrawn".into(), Some("maintenance".into())))
    );
    let t = Instant::now();
    let (code, out) = agent.cli(&["maintenance", "disable"]);
    assert_eq!(code, 0, "{out}");
    up("maintenance off -> announced", &mut timings, t);

    // The disable file: withdrawn while it exists (polled every second).
    let t = Instant::now();
    std::fs::write(dir.path("disable"), "").unwrap();
    let (_, took) = until_route(&router_sock, false, bound, t);
    timings.push(("disable file -> withdrawn".into(), took));
    assert_eq!(
        announce_state(&agent),
        Some(("disabled".into(), Some("disable file present".into())))
    );
    let t = Instant::now();
    std::fs::remove_file(dir.path("disable")).unwrap();
    up("disable file removed -> announced", &mut timings, t);
    let m = metrics(&metrics_addr);
    let changes = m
        .lines()
        .find(|l| l.starts_with("autopilot_announce_changes_total{") && l.contains("web"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    // Announced, withdrawn (check), announced, withdrawn (maintenance),
    // announced, withdrawn (disable), announced.
    assert_eq!(changes, Some(7.0), "{m}");

    // SIGTERM: the router loses the route before the job gets its signal.
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let (gone_at, took) = until_route(&router_sock, false, bound, t);
    timings.push(("SIGTERM -> withdrawn".into(), took));
    assert!(
        agent.wait(Duration::from_secs(15)).is_some(),
        "{}",
        agent.log()
    );
    let sigterm: f64 = std::fs::read_to_string(dir.path("sigterm"))
        .expect("the job recorded its SIGTERM")
        .trim()
        .parse()
        .expect("a time");
    assert!(
        gone_at < sigterm,
        "the route went at {gone_at}, after the job's SIGTERM at {sigterm}"
    );
    let lead = Duration::from_millis(((sigterm - gone_at) * 1000.0) as u64);
    timings.push(("route gone before the job's SIGTERM by".into(), lead));

    // kill -9 of the agent: its BIRD dies with it (parent-death signal),
    // the session drops and the router forgets the route.
    let _ = std::fs::remove_file(dir.path("sigterm"));
    let mut agent = start_with(&dir, &cfg, &[], &env);
    agent.ready();
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || established(&router_sock)),
        "no BGP session after the restart: {}",
        agent.log()
    );
    until_route(&router_sock, true, Duration::from_secs(10), t);
    let web = agent.job_pid("web").expect("the web job's pid");
    let bird_pid: i32 = std::fs::read_to_string(dir.path("agent-bird.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _left = KillOnDrop(vec![web, bird_pid]);
    // A frozen speaker (a hung host): only the router's hold timer ends
    // the session, and the route with it.
    let t = Instant::now();
    kill(bird_pid, libc::SIGSTOP);
    let (_, took) = until_route(&router_sock, false, HOLD + SLACK, t);
    assert!(
        took >= HOLD - Duration::from_millis(1100),
        "gone after {took:?}: before the hold timer?"
    );
    timings.push(("agent's BIRD frozen -> withdrawn (hold)".into(), took));
    kill(bird_pid, libc::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(20), || established(&router_sock)),
        "no BGP session after SIGCONT"
    );
    until_route(&router_sock, true, Duration::from_secs(10), Instant::now());
    let t = Instant::now();
    agent.signal(libc::SIGKILL);
    let (_, took) = until_route(&router_sock, false, HOLD + SLACK, t);
    timings.push(("kill -9 of the agent -> withdrawn".into(), took));
    assert!(
        wait_for(Duration::from_secs(5), || !pid_alive(bird_pid)),
        "the agent's BIRD outlived the agent"
    );
    assert!(agent.wait(Duration::from_secs(5)).is_some());

    println!(
        "announce gate timings (health interval {INTERVAL:?}, hold time {HOLD:?}, drain {DRAIN_MS} ms):"
    );
    for (label, d) in &timings {
        println!("  {label:<40} {:>6} ms", d.as_millis());
    }
    drop(net);
}
