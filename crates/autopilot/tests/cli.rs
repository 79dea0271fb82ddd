//! The CLI under faults: `autopilot lock` tied to its command, quiet exits on a closed pipe, and startup errors that name the config field.

// These tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Kills the recorded process groups and processes on drop, so a test that
/// fails (on the old code, say) leaves nothing running.
struct Reap(Vec<i32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &p in &self.0 {
            killpg(p, libc::SIGKILL);
            kill(p, libc::SIGKILL);
        }
    }
}

fn local(d: &Dir) -> String {
    format!("local://{}", d.path("catalog").display())
}

fn lock(url: &str, name: &str, script: &str) -> std::process::Child {
    Command::new(bin())
        .args(["lock", "--catalog", url, name, "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn autopilot lock")
}

/// Waits for a child with a deadline; its exit code, or 128+signal.
fn wait_child(c: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let mut code = None;
    wait_for(timeout, || match c.try_wait() {
        Ok(Some(st)) => {
            code = st.code().or(st.signal().map(|s| 128 + s));
            true
        }
        _ => false,
    });
    code
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped by its new parent).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .filter(|s| s.ends_with('\n'))
        .and_then(|s| s.trim().parse().ok())
}

#[test]
fn sigterm_reaches_the_command_and_the_lock_waits_for_its_exit() {
    let d = Dir::new("lock-term");
    let url = local(&d);
    let log = d.path("log");
    let pidfile = d.path("pid");
    // The trap takes a while, so a lock released at SIGTERM (not at exit)
    // would let the second holder write before "done".
    let first = format!(
        "echo $$ > {p}; trap 'sleep 0.5; echo done >> {l}; exit 0' TERM; echo started >> {l}; while :; do sleep 0.05; done",
        p = pidfile.display(),
        l = log.display()
    );
    let mut h1 = lock(&url, "job", &first);
    let mut reap = Reap(vec![]);
    assert!(
        wait_for(Duration::from_secs(10), || read_pid(&pidfile).is_some()),
        "the first command never started"
    );
    reap.0.extend(read_pid(&pidfile));
    let mut h2 = lock(&url, "job", &format!("echo second >> {}", log.display()));
    kill(h1.id() as i32, libc::SIGTERM);
    assert_eq!(
        wait_child(&mut h1, Duration::from_secs(10)),
        Some(0),
        "the holder exits with its command's code"
    );
    assert_eq!(wait_child(&mut h2, Duration::from_secs(15)), Some(0));
    assert_eq!(
        d.lines("log"),
        ["started", "done", "second"],
        "the command got SIGTERM, and the second holder entered only after it exited"
    );
    drop(reap);
}

/// Holder 1 runs `command` (given the pidfile it must write the pid to
/// watch); it is kill -9'd while holder 2 waits. The watched process must
/// die, and be gone when holder 2 enters.
fn kill_9_of_the_holder(tag: &str, command: impl Fn(&std::path::Path) -> String, what: &str) {
    let d = Dir::new(tag);
    let url = local(&d);
    let pidfile = d.path("pid");
    let mut h1 = lock(&url, "job", &command(&pidfile));
    let mut reap = Reap(vec![]);
    assert!(
        wait_for(Duration::from_secs(10), || read_pid(&pidfile).is_some()),
        "the first command never started"
    );
    let pid = read_pid(&pidfile).expect("pid");
    reap.0.push(pid);
    // The second command records whether the first one still lived when it entered.
    let check = format!(
        "st=$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null); if [ -z \"$st\" ] || [ \"$st\" = Z ]; then echo gone; else echo alive; fi > {}",
        d.path("seen").display()
    );
    let mut h2 = lock(&url, "job", &check);
    kill(h1.id() as i32, libc::SIGKILL);
    assert_eq!(wait_child(&mut h1, Duration::from_secs(5)), Some(137));
    assert!(
        wait_for(Duration::from_secs(5), || dead(pid)),
        "{what} {pid} outlived its holder"
    );
    assert_eq!(wait_child(&mut h2, Duration::from_secs(20)), Some(0));
    assert_eq!(d.read("seen").trim(), "gone");
    drop(reap);
}

#[test]
fn kill_9_of_the_holder_kills_its_command_before_the_next_holder_enters() {
    kill_9_of_the_holder(
        "lock-kill",
        |pidfile| format!("echo $$ > {}; exec sleep 1000", pidfile.display()),
        "the command",
    );
}

/// A pipe whose reading end is already closed, as after `| head -0`.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
    drop(r);
    w
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let d = Dir::new("pipe");
    let url = local(&d);
    let mut agent = start(
        &d,
        "{ control: { socket: '@SOCKET@' }, jobs: [{ name: 'app', exec: 'sleep 30' }] }",
    );
    agent.ready();
    let (code, out) = agent.cli(&["kv", "put", "k", "v"]);
    assert_eq!(code, 0, "{out}");
    let cases: &[&[&str]] = &[
        &["catalog", "services"],
        &["kv", "ls"],
        &["status"],
        &["version"],
        &["-version"],
        &["-template"],
    ];
    for args in cases {
        let out = Command::new(bin())
            .arg("-config")
            .arg(&agent.config)
            .args(*args)
            .env("AUTOPILOT_SOCKET", &agent.socket)
            .env("AUTOPILOT_CATALOG", &url)
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .expect("run cli");
        use std::os::unix::process::ExitStatusExt;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(
            !err.contains("panicked"),
            "{args:?} panicked on a closed pipe: {err}"
        );
    }
    agent.signal(libc::SIGTERM);
    assert!(agent.wait(Duration::from_secs(10)).is_some());
}

/// Runs the agent on `config` with no socket flag or variable, so the
/// config's `control.socket` is the one used; waits for its exit.
fn run_config(d: &Dir, name: &str, config: &str) -> (Option<i32>, String, std::path::PathBuf) {
    let cfg = d.write(name, &config.replace("@DIR@", &d.0.display().to_string()));
    let mut c = Command::new(bin())
        .arg("-config")
        .arg(&cfg)
        .env_remove("AUTOPILOT_SOCKET")
        .env_remove("CONTAINERPILOT")
        .env("AUTOPILOT_CATALOG", local(d))
        .env("AUTOPILOT_STATE_DIR", d.path("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autopilot");
    let code = wait_child(&mut c, Duration::from_secs(10));
    if code.is_none() {
        let _ = c.kill();
    }
    let out = c.wait_with_output().expect("output");
    (code, String::from_utf8_lossy(&out.stderr).into_owned(), cfg)
}

#[test]
fn startup_errors_exit_2_and_name_the_field() {
    let d = Dir::new("startup");
    d.write("file", "not a directory");
    let port = free_port();
    let cases: &[(&str, &str)] = &[
        (
            "{ logging: { output: '@DIR@/no/such/dir/log' }, control: { socket: '@DIR@/a.sock' }, jobs: [{ name: 'a', exec: 'touch @DIR@/started' }] }",
            "logging.output: cannot open log file",
        ),
        (
            "{ control: { socket: '@DIR@/file/ctl.sock' }, jobs: [{ name: 'a', exec: 'touch @DIR@/started' }] }",
            "control.socket: control socket @DIR@/file/ctl.sock",
        ),
        (
            "{ control: { socket: '@DIR@/b.sock' }, jobs: [{ name: 'a', exec: 'touch @DIR@/started' },\n  { name: 'web', exec: 'touch @DIR@/started', port: 80, interfaces: ['nosuch0'], initial_status: 'passing' }] }",
            "jobs[1].interfaces: none of the interface specifications",
        ),
        (
            &format!(
                "{{ control: {{ socket: '@DIR@/c.sock' }}, telemetry: {{ port: {port}, interfaces: ['nosuch0'] }}, jobs: [{{ name: 'a', exec: 'touch @DIR@/started' }}] }}"
            ),
            "telemetry.interfaces: none of the interface specifications",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let (code, err, cfg) = run_config(&d, &format!("c{i}.json5"), text);
        let want = format!(
            "{}: {}",
            cfg.display(),
            want.replace("@DIR@", &d.0.display().to_string())
        );
        assert_eq!(code, Some(2), "{text}: {err}");
        assert!(err.contains(&want), "{text}\n got: {err}\nwant: {want}");
        assert!(!d.path("started").exists(), "a job started: {text}");
    }
}

#[test]
fn a_control_socket_in_use_exits_2_and_names_the_field() {
    let d = Dir::new("sock-in-use");
    let config = "{ control: { socket: '@SOCKET@' }, jobs: [{ name: 'app', exec: 'sleep 30' }] }";
    let mut first = start(&d, config);
    first.ready();
    let text = config.replace("@SOCKET@", &first.socket.display().to_string());
    let (code, err, cfg) = run_config(&d, "second.json5", &text);
    assert_eq!(code, Some(2), "{err}");
    let want = format!(
        "{}: control.socket: control socket {}: another agent is already listening there",
        cfg.display(),
        first.socket.display()
    );
    assert!(err.contains(&want), "got: {err}\nwant: {want}");
    first.signal(libc::SIGTERM);
    assert!(first.wait(Duration::from_secs(10)).is_some());
}

/// `autopilot lock job` running a command that writes its pid to `pid`
/// and, on SIGTERM, `stopped` to `log`; the holder's stderr is piped.
fn holder_until_term(d: &Dir, url: &str) -> std::process::Child {
    let script = format!(
        "echo $$ > {p}; trap 'echo stopped >> {l}; exit 0' TERM; while :; do sleep 0.05; done",
        p = d.path("pid").display(),
        l = d.path("log").display()
    );
    Command::new(bin())
        .args(["lock", "--catalog", url, "job", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autopilot lock")
}

#[test]
fn a_holder_that_cannot_confirm_its_session_stops_the_command() {
    use std::io::{BufRead, Write};
    let d = Dir::new("lock-lost");
    let url = local(&d);
    let pidfile = d.path("pid");
    let mut h = holder_until_term(&d, &url);
    let mut reap = Reap(vec![]);
    assert!(
        wait_for(Duration::from_secs(10), || read_pid(&pidfile).is_some()),
        "the command never started"
    );
    reap.0.extend(read_pid(&pidfile));
    // Another process takes SQLite's write lock and keeps it: the holder's
    // keep-alives cannot commit, so its lock may expire.
    let mut sql = Command::new("sqlite3")
        .arg(d.path("catalog").join("catalog.db"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3 (Debian package sqlite3)");
    reap.0.push(sql.id() as i32);
    let mut stdin = sql.stdin.take().expect("stdin");
    writeln!(stdin, "BEGIN EXCLUSIVE; SELECT 'locked';").expect("write");
    let mut line = String::new();
    std::io::BufReader::new(sql.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    // TTL 3 s minus a 600 ms margin, plus the bounded unlock (3 s).
    assert_eq!(
        wait_child(&mut h, Duration::from_secs(15)),
        Some(1),
        "the holder must give up and exit non-zero"
    );
    drop(stdin);
    let _ = sql.wait();
    let mut err = String::new();
    use std::io::Read;
    let _ = h.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(err.contains("the lock may be lost"), "{err}");
    assert_eq!(d.lines("log"), ["stopped"], "the command got SIGTERM");
    drop(reap);
}

#[test]
fn kill_9_of_the_holder_kills_the_commands_children_before_the_next_holder_enters() {
    // The shell is the direct child; `sleep` is its child, out of reach of
    // the shell's parent-death signal.
    kill_9_of_the_holder(
        "lock-kill-tree",
        |pidfile| format!("sleep 100 & echo $! > {}; wait", pidfile.display()),
        "the command's child",
    );
}

#[test]
fn a_holder_whose_etcd_lock_vanished_stops_the_command() {
    use std::io::Read;
    let d = Dir::new("lock-etcd-lost");
    let mut etcd = autopilot_testkit::Etcd::single(&d.0);
    let url = format!("etcd://{}/lock", etcd.endpoint());
    let pidfile = d.path("pid");
    let mut h = holder_until_term(&d, &url);
    let mut reap = Reap(vec![h.id() as i32]);
    assert!(
        wait_for(Duration::from_secs(10), || read_pid(&pidfile).is_some()),
        "the command never started"
    );
    reap.0.extend(read_pid(&pidfile));
    // A new, empty cluster: the lease and the lock key are gone, and the
    // holder's next keep-alive succeeds on a replacement lease.
    etcd.restart_empty();
    // Keep-alives every TTL/3 (10 s default lease); the restart itself is short.
    assert_eq!(
        wait_child(&mut h, Duration::from_secs(20)),
        Some(1),
        "the holder must stop the command and exit non-zero"
    );
    let mut err = String::new();
    let _ = h.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(err.contains("no longer holds the lock"), "{err}");
    assert_eq!(d.lines("log"), ["stopped"], "the command got SIGTERM");
    drop(reap);
}

#[test]
fn arguments_after_the_subcommand_or_a_double_dash_are_passed_as_written() {
    let d = Dir::new("cli-args");
    let url = local(&d);
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    // Before: rewritten to `--help` (help printed, nothing stored).
    assert_eq!(
        run(&["kv", "put", "k", "-help", "--catalog", &url]).0,
        Some(0)
    );
    assert_eq!(
        run(&["kv", "get", "k", "--catalog", &url]),
        (Some(0), "-help".to_string())
    );
    // Before: echo got `--version` and printed its own version.
    assert_eq!(
        run(&["lock", "l", "--catalog", &url, "--", "echo", "-version"]),
        (Some(0), "-version".to_string())
    );
}

/// Keys under an etcd prefix (`etcdctl get --prefix --keys-only`).
fn etcd_keys(endpoint: &str, prefix: &str) -> usize {
    autopilot_testkit::etcdctl(endpoint, &["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A lock waiter waits for a held lock as long as it takes, but once etcd
/// stops answering for --timeout it gives up with exit 3 instead of
/// retrying for ever.
#[test]
fn a_lock_waiter_gives_up_with_3_when_etcd_freezes() {
    let d = Dir::new("lock-frozen");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let url = format!("etcd://{ep}/lock");
    let mut h = holder_until_term(&d, &url);
    let mut reap = Reap(vec![h.id() as i32]);
    assert!(
        wait_for(Duration::from_secs(10), || read_pid(&d.path("pid"))
            .is_some()),
        "the holder's command never started"
    );
    reap.0.extend(read_pid(&d.path("pid")));
    let mut w = Command::new(bin())
        .args([
            "lock",
            "--timeout",
            "1s",
            "--catalog",
            &url,
            "job",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the waiter");
    reap.0.push(w.id() as i32);
    assert!(
        wait_for(Duration::from_secs(10), || etcd_keys(
            &ep,
            "/lock/locks/job"
        ) == 2),
        "the waiter never queued"
    );
    // A held lock is waited for past --timeout while etcd answers.
    assert_eq!(
        wait_child(&mut w, Duration::from_secs(3)),
        None,
        "the waiter gave up on a held lock"
    );
    etcd.pause();
    let frozen = std::time::Instant::now();
    let code = wait_child(&mut w, Duration::from_secs(10));
    let took = frozen.elapsed();
    etcd.resume();
    let mut err = String::new();
    use std::io::Read;
    let _ = w.stderr.take().expect("stderr").read_to_string(&mut err);
    assert_eq!(code, Some(3), "{err}");
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
    assert!(
        err.contains("(--timeout)") && !err.contains("Some("),
        "{err}"
    );
    kill(h.id() as i32, libc::SIGTERM);
    let _ = wait_child(&mut h, Duration::from_secs(10));
}

/// `template render --once` against an etcd that freezes after it
/// connected: one deadline for the whole command, the render's catalog
/// reads included (they were unbounded by --timeout before).
#[test]
fn template_render_on_an_etcd_that_freezes_keeps_its_timeout() {
    let d = Dir::new("tpl-frozen");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let url = format!("etcd://{ep}/tpl");
    let tpl = d.write("t.tmpl", "{{ key \"absent\" }}");
    let started = std::time::Instant::now();
    let mut r = Command::new(bin())
        .args(["template", "render", "--timeout", "4s", "--catalog", &url])
        .arg(&tpl)
        .arg("--once")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn render");
    let _reap = Reap(vec![r.id() as i32]);
    // Its stderr, line by line: the first render says it waits for the key.
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = r.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The deadline leaves the first render (which may be slow on a loaded
    // machine) time to finish well before it, so etcd freezes under the next.
    let first = lines
        .recv_timeout(Duration::from_secs(3))
        .expect("the render never reported");
    assert!(first.contains("waiting for key"), "{first}");
    // Connected, and will render again: now etcd freezes.
    etcd.pause();
    let code = wait_child(&mut r, Duration::from_secs(15));
    let took = started.elapsed();
    etcd.resume();
    // Until the reader thread has seen the end of the pipe.
    let err: Vec<String> =
        std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(5)).ok()).collect();
    let err = err.join("\n");
    assert_eq!(code, Some(3), "{err}");
    assert!(took < Duration::from_millis(5500), "took {took:?}: {err}");
    assert!(err.contains("4s (--timeout)"), "{err}");
}
