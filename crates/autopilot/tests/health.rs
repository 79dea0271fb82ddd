//! Native `http` and `tcp` health checks against real servers, with no process per check, and the levels of the agent's log lines.
// The tests run the real binary and `ps`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::*;

const OK: u8 = 0;
const FAIL: u8 = 1;
const STALL: u8 = 2;

/// An HTTP server on a thread: answers 200, 500, or reads the request and
/// never answers, as `mode` says at the time of each request. Each
/// connection has its own thread, so a stalled one holds nothing else up;
/// the threads end with the test process.
fn http_server(mode: Arc<AtomicU8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mode = mode.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let status = match mode.load(Ordering::SeqCst) {
                    OK => "200 OK",
                    FAIL => "500 Internal Server Error",
                    _ => {
                        // Stalled: keep the connection until the client gives up.
                        let _ = s.read(&mut buf);
                        return;
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            });
        }
    });
    port
}

fn job<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["jobs"].as_array()?.iter().find(|j| j["name"] == name)
}

/// The job's health and its entry's status in the catalog.
fn health(a: &Agent, name: &str) -> (String, String) {
    let st = a.status();
    let j = job(&st, name).cloned().unwrap_or_default();
    (
        j["health"].as_str().unwrap_or("").to_string(),
        j["registration"]["catalog"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

fn wait_health(a: &Agent, name: &str, want: &str, catalog: &str, within: Duration) {
    let ok = wait_for(within, || {
        let (h, c) = health(a, name);
        h == want && c == catalog
    });
    assert!(
        ok,
        "{name} never became {want}/{catalog} (now {:?}); log:\n{}",
        health(a, name),
        a.log()
    );
}

/// The agent's child processes (pids), from `ps`.
fn children(pid: i32) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["--ppid", &pid.to_string(), "-o", "pid=,comm="])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn an_http_check_follows_the_server_and_a_stall_fails_after_the_timeout() {
    let d = Dir::new("health-http");
    let mode = Arc::new(AtomicU8::new(OK));
    let port = http_server(mode.clone());
    let cfg = format!(
        r#"{{ control: {{ socket: "@SOCKET@" }}, jobs: [{{
             name: "web", exec: "sleep 600", port: 8080, interfaces: ["static:127.0.0.1"],
             health: {{ http: "http://127.0.0.1:{port}/health", interval: "100ms", ttl: 5, timeout: "400ms" }} }}] }}"#
    );
    let mut a = start(&d, &cfg);
    a.ready();
    let within = Duration::from_secs(10);
    wait_health(&a, "web", "healthy", "passing", within);

    // No process per check: many checks run, and the agent's only child
    // stays the job.
    let job_pid = a.job_pid("web").expect("web runs").to_string();
    for _ in 0..20 {
        let kids = children(a.pid());
        assert_eq!(kids.len(), 1, "only the job is a child: {kids:?}");
        assert!(kids[0].starts_with(&job_pid), "{kids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    mode.store(FAIL, Ordering::SeqCst);
    wait_health(&a, "web", "unhealthy", "critical", within);
    mode.store(OK, Ordering::SeqCst);
    wait_health(&a, "web", "healthy", "passing", within);

    // A server that accepts and never answers fails the check after its
    // timeout; the check does not hang.
    mode.store(STALL, Ordering::SeqCst);
    wait_health(&a, "web", "unhealthy", "critical", within);
    assert!(
        a.log().contains("unhealthy: no answer within 400ms"),
        "{}",
        a.log()
    );
    mode.store(OK, Ordering::SeqCst);
    wait_health(&a, "web", "healthy", "passing", within);
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some());
}

#[test]
fn a_tcp_check_follows_the_port() {
    let d = Dir::new("health-tcp");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cfg = format!(
        r#"{{ control: {{ socket: "@SOCKET@" }}, jobs: [{{
             name: "db", exec: "sleep 600", port: 5432, interfaces: ["static:127.0.0.1"],
             health: {{ tcp: "127.0.0.1:{port}", interval: "100ms", ttl: 5, timeout: "1s", rise: 2 }} }}] }}"#
    );
    let mut a = start(&d, &cfg);
    a.ready();
    let within = Duration::from_secs(10);
    wait_health(&a, "db", "healthy", "passing", within);
    drop(listener);
    wait_health(&a, "db", "unhealthy", "critical", within);
    assert!(a.log().contains("unhealthy: cannot connect to 127.0.0.1"));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("rebind");
    wait_health(&a, "db", "healthy", "passing", within);
    let kids = children(a.pid());
    assert_eq!(kids.len(), 1, "only the job is a child: {kids:?}");
    drop(listener);
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some());
}

/// Log lines as JSON objects (the config asks for `format: "json"`).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn log_levels_child_output_crash_loops_and_leader_changes() {
    let d = Dir::new("health-logs");
    let cfg = r#"{ control: { socket: "@SOCKET@" }, logging: { level: "INFO", format: "json" },
        jobs: [
          { name: "talker", exec: ["sh", "-c", "echo said-on-stdout; echo said-on-stderr >&2; exec sleep 600"] },
          { name: "quiet", exec: ["sh", "-c", "echo routine-on-stderr >&2; exec sleep 600"], logging: { stderr: "info" } },
          { name: "crasher", exec: ["sh", "-c", "exit 3"], restarts: 3,
            restartBackoff: { initial: "20ms", max: "100ms" } },
          { name: "leader", exec: "sleep 600", main: true, election: { name: "main", ttl: "2s" } },
        ] }"#;
    let mut a = start(&d, cfg);
    a.ready();
    let has = |a: &Agent, level: &str, text: &str| {
        json_lines(&a.log())
            .iter()
            .any(|l| l["level"] == level && l["message"].as_str().is_some_and(|m| m.contains(text)))
    };
    let within = Duration::from_secs(10);
    assert!(
        wait_for(within, || has(&a, "INFO", "said-on-stdout")
            && has(&a, "WARN", "said-on-stderr")
            && has(&a, "INFO", "routine-on-stderr")
            && has(&a, "WARN", "crash loop: the job exited with code 3")
            && has(&a, "INFO", "elected leader: ")),
        "{}",
        a.log()
    );
    // stdout is never WARN, stderr never INFO.
    let lines = json_lines(&a.log());
    assert!(
        !lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"] == "said-on-stdout")
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["message"] == "said-on-stderr")
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"] == "routine-on-stderr"),
        "logging.stderr: \"info\" keeps the job's stderr at INFO"
    );
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some());
    let log = a.log();
    assert!(
        has(&a, "WARN", "no longer leader: the agent is stopping"),
        "{log}"
    );
    // A leader change carries the leader's ID, never Rust's `Some("...")`.
    for l in json_lines(&log) {
        let text = l.to_string();
        assert!(
            !text.contains("Some(") && !text.contains("None"),
            "debug formatting in {text}"
        );
    }
    assert!(
        json_lines(&log).iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("leader changed"))
            && l["leader"]
                .as_str()
                .is_some_and(|id| id.starts_with("leader-"))),
        "{log}"
    );
}

#[test]
fn a_native_check_a_reload_stops_is_stopped_not_timed_out() {
    let d = Dir::new("health-reload");
    // A server that accepts and never answers: a check stays in flight.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicU8::new(0));
    let seen = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.extend(s.ok());
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let cfg = |exec: &str| {
        format!(
            r#"{{ control: {{ socket: "@SOCKET@" }}, logging: {{ level: "DEBUG", format: "json" }}, jobs: [{{
             name: "web", exec: "{exec}", port: 8080, interfaces: ["static:127.0.0.1"],
             health: {{ http: "http://127.0.0.1:{port}/health", interval: "100ms", ttl: 30, timeout: "20s" }} }}] }}"#
        )
    };
    let mut a = start(&d, &cfg("sleep 600"));
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || accepted.load(Ordering::SeqCst)
            > 0),
        "a check is in flight; log:\n{}",
        a.log()
    );
    // The job changes: the reload stops it, and its check with it.
    std::fs::write(
        &a.config,
        cfg("sleep 601").replace("@SOCKET@", &a.socket.display().to_string()),
    )
    .expect("write config");
    let (code, out) = a.cli(&["reload"]);
    assert_eq!(code, 0, "{out}");
    let failed = |a: &Agent| -> Vec<String> {
        json_lines(&a.log())
            .iter()
            .filter_map(|l| l["message"].as_str().map(str::to_string))
            .filter(|m| m.starts_with("health check failed: "))
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(10), || a
            .log()
            .contains("config reloaded")
            && !failed(&a).is_empty()),
        "{}",
        a.log()
    );
    assert_eq!(
        failed(&a),
        ["health check failed: the check was stopped"],
        "the aborted check is not reported as a timeout; log:\n{}",
        a.log()
    );
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some());
}
