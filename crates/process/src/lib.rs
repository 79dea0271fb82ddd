//! The one place autopilot forks and waits: spawning jobs in their own process groups, signalling groups, and reaping.
//!
//! A `waitpid(-1)` reaper running beside `tokio::process` would steal exit
//! statuses from it. So there is no `tokio::process` here: [`Spawner`] owns
//! every spawn and the only reaper. The reaper reaps *every* exited child
//! (jobs, checks, and orphans re-parented to us as PID 1 or as a
//! sub-reaper) and hands each job's status to its waiter. Spawning and
//! reaping take the same lock, so a child that exits instantly cannot be
//! reaped before its waiter is registered.

// The one crate that spawns (clippy.toml bans spawning everywhere else).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot run '{program}': {source}")]
    Exec { program: String, source: io::Error },
    #[error("empty command")]
    Empty,
    #[error("cannot install the SIGCHLD handler: {0}")]
    Signal(io::Error),
}

/// What to run, and where its output goes.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Pass stdout/stderr straight through instead of line-tagging them.
    pub raw_output: bool,
    /// The name output lines are tagged with (a job, or `check.<job>`).
    pub tag: String,
}

/// How a process is attached to the one that spawns it. Kept apart from
/// [`SpawnSpec`] so the runtime's specs need not change; the default is what
/// jobs get (stdin null, output per `raw_output`, no parent-death signal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// Inherit stdin, stdout and stderr from this process (overrides `raw_output`).
    pub inherit_stdio: bool,
    /// SIGKILL the child when this process dies (`PR_SET_PDEATHSIG`), so a
    /// command cannot outlive a holder killed with SIGKILL. The signal fires
    /// when the spawning *thread* exits: spawn from a thread that lives as
    /// long as the process (the current-thread runtime's).
    pub die_with_parent: bool,
    /// Join this existing process group (a guard's, see
    /// [`Spawner::spawn_group_guard`]) instead of leading a new one; the
    /// child's pid is then not its group id.
    pub group: Option<u32>,
}

/// A spawned process: its pid (also its process group id, unless it joined
/// another group through [`Attach::group`]) and its exit.
pub struct Child {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
}

/// Longest output line passed on whole; longer lines are cut, so a job
/// writing without newlines cannot grow the agent's memory.
const MAX_LINE: usize = 64 * 1024;

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>;

/// One table per process: `waitpid(-1)` sees every child of the process,
/// so two tables would steal each other's statuses.
fn waiters() -> Waiters {
    static W: std::sync::OnceLock<Waiters> = std::sync::OnceLock::new();
    W.get_or_init(Waiters::default).clone()
}

#[derive(Clone)]
pub struct Spawner {
    waiters: Waiters,
}

impl Spawner {
    /// Installs the SIGCHLD handler and starts the reaper. Must be called
    /// inside a tokio runtime, before anything is spawned.
    pub fn start() -> Result<Spawner, SpawnError> {
        let mut sigchld = signal(SignalKind::child()).map_err(SpawnError::Signal)?;
        let waiters = waiters();
        let w = waiters.clone();
        tokio::spawn(async move {
            loop {
                reap(&w);
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(Spawner { waiters })
    }

    pub fn spawn(&self, spec: &SpawnSpec) -> Result<Child, SpawnError> {
        self.spawn_attached(spec, Attach::default())
    }

    /// [`Spawner::spawn`], with the child's stderr lines logged at INFO
    /// instead of WARN when `stderr_at_info` (for programs that write their
    /// ordinary log to stderr).
    pub fn spawn_logged(
        &self,
        spec: &SpawnSpec,
        stderr_at_info: bool,
    ) -> Result<Child, SpawnError> {
        self.spawn_inner(spec, Attach::default(), stderr_at_info, None)
    }

    /// [`Spawner::spawn_logged`] with the child tied to this process as
    /// `attach` says (a job with `dieWithAgent`).
    pub fn spawn_logged_attached(
        &self,
        spec: &SpawnSpec,
        attach: Attach,
        stderr_at_info: bool,
    ) -> Result<Child, SpawnError> {
        self.spawn_inner(spec, attach, stderr_at_info, None)
    }

    /// [`Spawner::spawn`] with the child tied to this process as `attach` says.
    pub fn spawn_attached(&self, spec: &SpawnSpec, attach: Attach) -> Result<Child, SpawnError> {
        self.spawn_inner(spec, attach, false, None)
    }

    /// [`Spawner::spawn`] (output always piped and logged), and the first
    /// line of the child's stdout (empty when it wrote none), for checks
    /// whose output is their message.
    pub fn spawn_first_line(
        &self,
        spec: &SpawnSpec,
    ) -> Result<(Child, oneshot::Receiver<String>), SpawnError> {
        let (tx, rx) = oneshot::channel();
        let spec = SpawnSpec {
            raw_output: false,
            ..spec.clone()
        };
        let child = self.spawn_inner(&spec, Attach::default(), false, Some(tx))?;
        Ok((child, rx))
    }

    #[allow(unsafe_code)]
    fn spawn_inner(
        &self,
        spec: &SpawnSpec,
        attach: Attach,
        stderr_at_info: bool,
        first_line: Option<oneshot::Sender<String>>,
    ) -> Result<Child, SpawnError> {
        let (program, args) = spec.argv.split_first().ok_or(SpawnError::Empty)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Its own group, so a timeout or stop signals the whole tree.
            .process_group(attach.group.map_or(0, |g| g as i32));
        if attach.inherit_stdio {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else if !spec.raw_output {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if attach.die_with_parent {
            let parent = nix::unistd::getpid().as_raw();
            // SAFETY: the closure runs in the child between fork and exec, so
            // it may only make async-signal-safe calls: prctl, getppid and
            // building an io::Error from an errno (no allocation) are.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before prctl ran: then the
                    // signal will never come, so refuse to exec.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut child = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            let child = cmd.spawn().map_err(|source| SpawnError::Exec {
                program: program.clone(),
                source,
            })?;
            waiters.insert(child.id() as i32, tx);
            child
        };
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            forward(
                out.into(),
                spec.tag.clone(),
                pid,
                Stream::Stdout,
                first_line,
            );
        }
        if let Some(err) = child.stderr.take() {
            let stream = if stderr_at_info {
                Stream::StderrAtInfo
            } else {
                Stream::Stderr
            };
            forward(err.into(), spec.tag.clone(), pid, stream, None);
        }
        // `child` is dropped without waiting: the reaper owns the wait.
        Ok(Child { pid, exit: rx })
    }
}

impl Spawner {
    /// Forks a guard that leads a new, empty process group: spawn commands
    /// into it with [`Attach::group`]. When this process dies (even by
    /// SIGKILL), the guard gets `on_parent_death` and SIGKILLs the whole
    /// group, itself included. `PR_SET_PDEATHSIG` alone reaches only a
    /// direct child; the guard extends it to the command's descendants, and
    /// since the group exists before the command, no descendant escapes.
    /// The same signal sent to the group while this process lives (a
    /// forwarded SIGTERM) is ignored by the guard; every other catchable
    /// signal stays blocked. Stop the guard with
    /// [`signal_process`]`(pid, Sig::Kill)`, which leaves the rest of the
    /// group alone. Like [`Attach::die_with_parent`], the signal fires when
    /// the forking *thread* exits.
    #[allow(unsafe_code)]
    pub fn spawn_group_guard(&self, on_parent_death: Sig) -> Result<Child, SpawnError> {
        let signo = on_parent_death.nix() as libc::c_int;
        let parent = nix::unistd::getpid().as_raw();
        // Everything the child needs is built before the fork: after it,
        // only async-signal-safe calls are allowed.
        // SAFETY: sigset_t is plain data; sigfillset/sigemptyset/sigaddset
        // initialise it before any use.
        let (mut all, mut wanted) = unsafe {
            (
                std::mem::zeroed::<libc::sigset_t>(),
                std::mem::zeroed::<libc::sigset_t>(),
            )
        };
        // SAFETY: both sets are valid, owned, and initialised here.
        unsafe {
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut wanted);
            libc::sigaddset(&mut wanted, signo);
        }
        let guard_error = |source| SpawnError::Exec {
            program: "process group guard".into(),
            source,
        };
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child runs only async-signal-safe calls (sigprocmask,
        // setpgid, prctl, getppid, sigwaitinfo, kill, _exit) on data built
        // before the fork, and never returns into Rust code: it ends with
        // _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; this is the forked child.
            unsafe {
                // Every signal blocked: the inherited handlers (tokio's
                // write to the parent's pipes) must never run here, and the
                // death signal is taken synchronously below.
                libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
                // Without its own group, kill(0) below would hit ours.
                if libc::setpgid(0, 0) != 0 {
                    libc::_exit(1);
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, signo as libc::c_ulong, 0, 0, 0) == 0 {
                    // The kernel re-parents before it sends the death
                    // signal, so a changed parent tells it from a
                    // forwarded one; it also covers a parent that died
                    // before prctl ran.
                    while libc::getppid() == parent {
                        libc::sigwaitinfo(&wanted, std::ptr::null_mut());
                    }
                }
                // The parent died (or prctl failed: then the group must
                // not outlive us either).
                libc::kill(0, libc::SIGKILL);
                libc::_exit(0);
            }
        }
        if pid < 0 {
            return Err(guard_error(io::Error::last_os_error()));
        }
        waiters.insert(pid, tx);
        drop(waiters);
        // Also set here, so the group exists before the caller spawns into it.
        let guard = Pid::from_raw(pid);
        if let Err(e) = nix::unistd::setpgid(guard, guard)
            && nix::unistd::getpgid(Some(guard)) != Ok(guard)
        {
            let _ = nix::sys::signal::kill(guard, Signal::SIGKILL);
            return Err(guard_error(io::Error::from(e)));
        }
        Ok(Child {
            pid: pid as u32,
            exit: rx,
        })
    }
}

/// Signals one process (not its group). A process that is already gone is not an error.
pub fn signal_process(pid: u32, sig: Sig) -> io::Result<()> {
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), sig.nix()) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Reaps every exited child. Waiters get their status; orphans are just
/// collected so none stays a zombie.
fn reap(waiters: &Mutex<HashMap<i32, oneshot::Sender<Exit>>>) {
    let mut waiters = waiters.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid failed: {e}");
                return;
            }
        };
        match waiters.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => tracing::debug!(pid = pid.as_raw(), "reaped orphan"),
        }
    }
}

/// Which stream a line came from, and so its level.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
    StderrAtInfo,
}

fn forward(
    fd: OwnedFd,
    tag: String,
    pid: u32,
    stream: Stream,
    first_line: Option<oneshot::Sender<String>>,
) {
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(job = %tag, "cannot read job output: {e}");
            return;
        }
    };
    tokio::spawn(pump(rx, tag, pid, stream, first_line));
}

/// Logs every line; the first one also goes to `first_line` (an empty one
/// when the stream ends without a line).
async fn pump(
    rx: impl AsyncRead + Unpin,
    tag: String,
    pid: u32,
    stream: Stream,
    mut first_line: Option<oneshot::Sender<String>>,
) {
    let mut reader = BufReader::with_capacity(8192, rx);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut truncated = false;
        loop {
            let chunk = match reader.fill_buf().await {
                Ok(c) => c,
                Err(_) => return,
            };
            if chunk.is_empty() {
                break;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..take.min(room)]);
            truncated |= take > room;
            reader.consume(take);
            if done {
                break;
            }
        }
        if buf.is_empty() {
            if let Some(tx) = first_line.take() {
                let _ = tx.send(String::new());
            }
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(tx) = first_line.take() {
            let _ = tx.send(line.to_string());
        }
        let cut = if truncated { " [line truncated]" } else { "" };
        // What a child writes to stderr is what it means as a warning or
        // an error (unless its job says otherwise); stdout is its ordinary output.
        match stream {
            Stream::Stderr => {
                tracing::warn!(target: "job", job = %tag, pid, stream = "stderr", "{line}{cut}")
            }
            Stream::StderrAtInfo => {
                tracing::info!(target: "job", job = %tag, pid, stream = "stderr", "{line}{cut}")
            }
            Stream::Stdout => {
                tracing::info!(target: "job", job = %tag, pid, stream = "stdout", "{line}{cut}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
    Int,
    Hup,
    Usr1,
    Usr2,
}

impl Sig {
    fn nix(self) -> Signal {
        match self {
            Sig::Term => Signal::SIGTERM,
            Sig::Kill => Signal::SIGKILL,
            Sig::Int => Signal::SIGINT,
            Sig::Hup => Signal::SIGHUP,
            Sig::Usr1 => Signal::SIGUSR1,
            Sig::Usr2 => Signal::SIGUSR2,
        }
    }
}

/// Signals a job's whole process group. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Sig) -> io::Result<()> {
    match killpg(Pid::from_raw(pgid as i32), sig.nix()) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Makes this process the reaper of orphaned descendants when it is not
/// PID 1 (`--init` on a host), as PID 1 is by nature.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> SpawnSpec {
        SpawnSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            raw_output: false,
            tag: "t".into(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exit_codes_and_signals_are_never_lost() {
        let sp = Spawner::start().expect("spawner");
        // Many instant exits race the reaper; each status must reach its waiter.
        let mut kids = Vec::new();
        for i in 0..50 {
            kids.push((i, sp.spawn(&sh(&format!("exit {i}"))).expect("spawn")));
        }
        for (i, k) in kids {
            assert_eq!(k.exit.await.expect("status"), Exit::Code(i));
        }
        let k = sp.spawn(&sh("sleep 30")).expect("spawn");
        signal_group(k.pid, Sig::Kill).expect("kill");
        assert_eq!(k.exit.await.expect("status"), Exit::Signal(9));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn group_signal_reaches_grandchildren() {
        let sp = Spawner::start().expect("spawner");
        let dir = std::env::temp_dir().join(format!("ap-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let marker = dir.join("gc");
        let script = format!(
            "sh -c 'trap \"echo got > {m}; exit 0\" TERM; while :; do sleep 0.05; done' & wait",
            m = marker.display()
        );
        let k = sp.spawn(&sh(&script)).expect("spawn");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        signal_group(k.pid, Sig::Term).expect("term");
        let _ = k.exit.await;
        for _ in 0..50 {
            if marker.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(marker.exists(), "grandchild got SIGTERM through the group");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn attached_child_inherits_stdio_and_reports_its_exit() {
        let sp = Spawner::start().expect("spawner");
        let attach = Attach {
            inherit_stdio: true,
            die_with_parent: true,
            group: None,
        };
        let k = sp.spawn_attached(&sh("exit 7"), attach).expect("spawn");
        assert_eq!(k.exit.await.expect("status"), Exit::Code(7));
        // Killing the parent is tested through the binary (tests/cli.rs).
        let k = sp.spawn_attached(&sh("sleep 30"), attach).expect("spawn");
        signal_group(k.pid, Sig::Term).expect("term");
        assert_eq!(k.exit.await.expect("status"), Exit::Signal(15));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_guard_leads_the_group_ignores_forwarded_signals_and_stops_alone() {
        let sp = Spawner::start().expect("spawner");
        let g = sp.spawn_group_guard(Sig::Term).expect("guard");
        let attach = Attach {
            group: Some(g.pid),
            ..Attach::default()
        };
        let k = sp.spawn_attached(&sh("sleep 30"), attach).expect("spawn");
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(k.pid as i32))).expect("pgid");
        assert_eq!(
            pgid.as_raw() as u32,
            g.pid,
            "the command joined the guard's group"
        );
        // A forwarded SIGTERM stops the command, not the guard.
        signal_group(g.pid, Sig::Term).expect("term");
        assert_eq!(k.exit.await.expect("status"), Exit::Signal(15));
        let k = sp.spawn_attached(&sh("sleep 30"), attach).expect("spawn");
        signal_process(g.pid, Sig::Kill).expect("kill guard");
        assert_eq!(g.exit.await.expect("status"), Exit::Signal(9));
        // Signal 0: the command lives on without its guard.
        assert!(nix::sys::signal::kill(Pid::from_raw(k.pid as i32), None::<Signal>).is_ok());
        signal_group(g.pid, Sig::Kill).expect("kill");
        assert_eq!(k.exit.await.expect("status"), Exit::Signal(9));
        // The parent's death is tested through the binary (tests/cli.rs).
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_program_is_a_clear_error() {
        let sp = Spawner::start().expect("spawner");
        let spec = SpawnSpec {
            argv: vec!["/no/such/prog".into()],
            ..sh("")
        };
        let e = sp.spawn(&spec).err().expect("error");
        assert!(e.to_string().contains("/no/such/prog"), "{e}");
    }
}
