//! The announce gate's speaker side: a task per job with `announce` that writes BIRD 2's include files and runs `configure` over its control socket.
//!
//! The agent feeds each task the job's gate inputs (registered status,
//! maintenance, stopping); the task adds the disable file (polled every
//! second), asks `autopilot_core::announce` what the speaker should hold,
//! and converges BIRD to it: the routes of the job's prefixes go into
//! `<includeDir>/<protocol>4.conf` and `...6.conf` (written atomically), then
//! `configure` makes BIRD re-read its config; BIRD 2 reconfigures a static
//! protocol in place, so only the changed routes are announced or withdrawn
//! and no BGP session flaps. Every socket exchange is bounded by
//! [`SPEAKER_DEADLINE`]; a failure is retried with back-off and logged
//! first, every 10 s while it lasts, and on recovery with its count.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_core::announce::{self as gate, AnnounceSpec, GateInput, PrefixState, Reason};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use autopilot_process::{Exit, SpawnSpec, Spawner};

use crate::metrics::Metrics;

/// The bound on one exchange with the speaker (connect, greeting, reply).
pub const SPEAKER_DEADLINE: Duration = Duration::from_secs(2);
/// How often the disable file is looked at.
const DISABLE_POLL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The most a reply may hold: `configure` answers in two short lines.
const MAX_REPLY: u64 = 64 * 1024;
const REPEAT_WARN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot connect to the speaker's socket {socket}")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the speaker at {socket}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the speaker at {socket} did not answer within {}s", SPEAKER_DEADLINE.as_secs())]
    Timeout { socket: String },
    #[error("the speaker at {socket} refused {command:?}: {code} {text}")]
    Refused {
        socket: String,
        command: String,
        code: String,
        text: String,
    },
    #[error("the speaker at {socket} answered something that is not BIRD's protocol: {line:?}")]
    Protocol { socket: String, line: String },
    #[error("cannot {what} the address {prefix} on lo: {why}")]
    Loopback {
        what: &'static str,
        prefix: String,
        why: String,
    },
    #[error("cannot write the include file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs one command on BIRD's control socket and returns its reply lines
/// (codes kept), bounded by [`SPEAKER_DEADLINE`]. A final reply code
/// `0xxx` is success; `8xxx`/`9xxx` are errors.
pub async fn bird_command(socket: &str, command: &str) -> Result<Vec<String>, SpeakerError> {
    match tokio::time::timeout(SPEAKER_DEADLINE, bird_exchange(socket, command)).await {
        Ok(r) => r,
        Err(_) => Err(SpeakerError::Timeout {
            socket: socket.to_string(),
        }),
    }
}

async fn bird_exchange(socket: &str, command: &str) -> Result<Vec<String>, SpeakerError> {
    let io = |source| SpeakerError::Io {
        socket: socket.to_string(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| SpeakerError::Connect {
            socket: socket.to_string(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r.take(MAX_REPLY));
    // The greeting: `0001 BIRD 2.x ready.`
    let greeting = read_reply(&mut r, socket).await?;
    if greeting.0 != "0001" {
        return Err(SpeakerError::Protocol {
            socket: socket.to_string(),
            line: greeting.1.join("\n"),
        });
    }
    w.write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(io)?;
    let (code, lines) = read_reply(&mut r, socket).await?;
    if code.starts_with('0') {
        Ok(lines)
    } else {
        Err(SpeakerError::Refused {
            socket: socket.to_string(),
            command: command.to_string(),
            text: lines
                .last()
                .map(|l| l.get(5..).unwrap_or(""))
                .unwrap_or("")
                .to_string(),
            code,
        })
    }
}

/// Reads one reply: lines `dddd-text` (more follows), ` text` (continues
/// the previous code) and a last `dddd text`. Returns the last code.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    socket: &str,
) -> Result<(String, Vec<String>), SpeakerError> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|source| SpeakerError::Io {
                socket: socket.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(SpeakerError::Protocol {
                socket: socket.to_string(),
                line: "the connection closed mid-reply".into(),
            });
        }
        let line = line.trim_end_matches('\n').to_string();
        let b = line.as_bytes();
        let coded = b.len() >= 5 && b.iter().take(4).all(u8::is_ascii_digit);
        if coded && b.get(4) == Some(&b' ') {
            let code = line.get(..4).unwrap_or("").to_string();
            lines.push(line);
            return Ok((code, lines));
        }
        let more = coded && b.get(4) == Some(&b'-');
        if !more && !line.starts_with(' ') {
            return Err(SpeakerError::Protocol {
                socket: socket.to_string(),
                line,
            });
        }
        lines.push(line);
    }
}

/// Runs `ip addr <verb> <prefix> dev lo` through the agent's spawner,
/// bounded by [`SPEAKER_DEADLINE`] (the process group is killed after it).
async fn ip_addr(
    spawner: &Spawner,
    verb: &'static str,
    prefix: &gate::Prefix,
) -> Result<(), SpeakerError> {
    let err = |why: String| SpeakerError::Loopback {
        what: if verb == "del" { "remove" } else { "add" },
        prefix: prefix.to_string(),
        why,
    };
    let child = spawner
        .spawn(&SpawnSpec {
            argv: ["ip", "addr", verb, &prefix.to_string(), "dev", "lo"]
                .iter()
                .map(ToString::to_string)
                .collect(),
            env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
            raw_output: false,
            tag: "announce.ip".into(),
        })
        .map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(SPEAKER_DEADLINE, child.exit).await {
        Ok(Ok(Exit::Code(0))) => Ok(()),
        Ok(Ok(Exit::Code(c))) => Err(err(format!("ip exited with code {c}"))),
        Ok(Ok(Exit::Signal(sig))) => Err(err(format!("ip was killed by signal {sig}"))),
        Ok(Err(_)) => Err(err("ip's exit status was lost".into())),
        Err(_) => {
            let _ = autopilot_process::signal_group(child.pid, autopilot_process::Sig::Kill);
            Err(err(format!(
                "ip did not finish within {}s",
                SPEAKER_DEADLINE.as_secs()
            )))
        }
    }
}

/// Whether `lo` holds the prefix's address now (`getifaddrs`: no fork).
fn on_loopback(prefix: &gate::Prefix) -> bool {
    crate::interfaces::host_addresses()
        .iter()
        .any(|(name, ip)| name == "lo" && *ip == prefix.addr)
}

/// Writes the job's include files for `announced` and has BIRD apply them;
/// with `loopback`, the addresses go on `lo` before the announcement and
/// leave it after the withdrawal.
async fn apply(
    spec: &AnnounceSpec,
    announced: bool,
    spawner: Option<&Spawner>,
) -> Result<(), SpeakerError> {
    let lo = spawner.filter(|_| spec.loopback);
    if announced && let Some(sp) = lo {
        for p in &spec.prefixes {
            if !on_loopback(p) {
                ip_addr(sp, "add", p).await?;
            }
        }
    }
    configure(spec, announced).await?;
    if !announced && let Some(sp) = lo {
        for p in &spec.prefixes {
            if on_loopback(p) {
                ip_addr(sp, "del", p).await?;
            }
        }
    }
    Ok(())
}

async fn configure(spec: &AnnounceSpec, announced: bool) -> Result<(), SpeakerError> {
    let dir = Path::new(&spec.include_dir);
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|source| SpeakerError::Write {
            path: spec.include_dir.clone(),
            source,
        })?;
    }
    for v6 in [false, true] {
        let path = spec.include_file(v6);
        let text = gate::include_text(&spec.prefixes, v6, announced);
        crate::fsutil::write_atomic_mode(Path::new(&path), text.as_bytes(), Some(0o644))
            .map_err(|source| SpeakerError::Write { path, source })?;
    }
    bird_command(&spec.socket, "configure").await.map(|_| ())
}

/// What the agent tells a job's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// The gate's inputs (`disabled` is the task's own).
    pub gate: GateInput,
    /// Bumped by the agent on every change; echoed once the speaker holds it.
    pub seq: u64,
}

/// What a job's task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The state of every prefix of the job (they share the gate).
    pub state: PrefixState,
    /// The last feed whose wish the speaker confirmed.
    pub seq: u64,
    /// The speaker's last error, while it lasts.
    pub error: Option<String>,
    /// Announcements and withdrawals the speaker confirmed.
    pub changes: u64,
}

/// A running task and its channels.
pub struct Announcer {
    pub spec: AnnounceSpec,
    feed: watch::Sender<Feed>,
    pub report: watch::Receiver<Report>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Starts the task; with `after` (the ended task of a job that wrote
    /// the same files, on a reload) it first waits for that task's last
    /// withdrawal, so an old withdrawal never lands after a new announcement.
    pub fn start(
        job: &str,
        spec: AnnounceSpec,
        first: Feed,
        metrics: Arc<Metrics>,
        after: Option<JoinHandle<()>>,
        spawner: Option<Spawner>,
    ) -> Announcer {
        let (feed, feed_rx) = watch::channel(first);
        let (report_tx, report) = watch::channel(Report {
            state: PrefixState::Withdrawn(Reason::NotRegistered),
            seq: 0,
            error: None,
            changes: 0,
        });
        let (name, task_spec) = (job.to_string(), spec.clone());
        let task = tokio::spawn(async move {
            if let Some(old) = after {
                // Bounded: the old task's last exchange has its deadline.
                let _ = old.await;
            }
            run(name, task_spec, feed_rx, report_tx, metrics, spawner).await;
        });
        Announcer {
            spec,
            feed,
            report,
            task,
        }
    }

    /// Sends new inputs (nothing when unchanged); returns the feed's seq.
    pub fn feed(&self, gate: GateInput) -> u64 {
        self.feed.send_if_modified(|f| {
            if f.gate == gate {
                return false;
            }
            f.gate = gate;
            f.seq = f.seq.wrapping_add(1);
            true
        });
        self.feed.borrow().seq
    }

    /// Ends the task: it withdraws the job's prefixes (bounded) first.
    pub fn finish(self) -> JoinHandle<()> {
        drop(self.feed);
        self.task
    }
}

/// Logs a speaker failure that repeats: first, every 10 s, on recovery.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    count: u64,
    last_warn: Option<Instant>,
}

impl Failing {
    fn failed(&mut self, job: &str, e: &SpeakerError) {
        let now = Instant::now();
        self.count = self.count.saturating_add(1);
        let since = *self.since.get_or_insert(now);
        let why = error_chain(e);
        match self.last_warn {
            None => {
                tracing::warn!(job = %job, "announce: {why}; prefixes withdrawn, retrying");
                self.last_warn = Some(now);
            }
            Some(t) if now.duration_since(t) >= REPEAT_WARN => {
                tracing::warn!(
                    job = %job,
                    failures = self.count,
                    "announce: the speaker still fails after {} attempts over {}s: {why}",
                    self.count,
                    now.duration_since(since).as_secs()
                );
                self.last_warn = Some(now);
            }
            Some(_) => {}
        }
    }

    fn recovered(&mut self, job: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                job = %job,
                failures = self.count,
                "announce: the speaker answers again after {} failed attempts over {}ms",
                self.count,
                since.elapsed().as_millis()
            );
        }
        self.count = 0;
        self.last_warn = None;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn record_state(metrics: &Metrics, job: &str, spec: &AnnounceSpec, state: PrefixState) {
    for p in &spec.prefixes {
        let prefix = p.to_string();
        for s in ["announced", "withdrawn", "disabled"] {
            let v = if s == state.as_str() { 1.0 } else { 0.0 };
            metrics.record(
                "autopilot_announce_state",
                &[("job", job), ("prefix", &prefix), ("state", s)],
                v,
            );
        }
    }
}

async fn run(
    job: String,
    spec: AnnounceSpec,
    mut feed: watch::Receiver<Feed>,
    report: watch::Sender<Report>,
    metrics: Arc<Metrics>,
    spawner: Option<Spawner>,
) {
    // Unknown at start: the first pass writes the files either way, so a
    // route an earlier run left behind is withdrawn.
    let mut applied: Option<bool> = None;
    let mut failing = Failing::default();
    let mut backoff = BACKOFF_FIRST;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut speaker_ok = true;
    let mut changes: u64 = 0;
    let mut shown: Option<PrefixState> = None;
    loop {
        let f = *feed.borrow_and_update();
        let mut input = f.gate;
        input.disabled = std::fs::symlink_metadata(&spec.disable_file).is_ok();
        let want = gate::want(&input);
        let on = want == PrefixState::Announced;
        let due = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        if !gate::changes(&spec.prefixes, applied, want).is_empty() && due {
            match apply(&spec, on, spawner.as_ref()).await {
                Ok(()) => {
                    if applied.is_some() {
                        changes = changes.saturating_add(1);
                        metrics.record("autopilot_announce_changes_total", &[("job", &job)], 1.0);
                    }
                    applied = Some(on);
                    speaker_ok = true;
                    retry_at = None;
                    backoff = BACKOFF_FIRST;
                    failing.recovered(&job);
                    let what = if on { "announced" } else { "withdrawn" };
                    let prefixes: Vec<String> =
                        spec.prefixes.iter().map(ToString::to_string).collect();
                    tracing::info!(job = %job, prefixes = %prefixes.join(","), reason = want.reason().unwrap_or(""), "announce: {what}");
                }
                Err(e) => {
                    applied = None;
                    speaker_ok = false;
                    failing.failed(&job, &e);
                    report.send_modify(|r| r.error = Some(error_chain(&e)));
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = backoff.saturating_mul(2).min(BACKOFF_MAX);
                }
            }
        }
        let held = applied == Some(on);
        let state = gate::state(want, (speaker_ok && held) || !on);
        if shown != Some(state) {
            record_state(&metrics, &job, &spec, state);
            shown = Some(state);
        }
        report.send_if_modified(|r| {
            let mut next = r.clone();
            next.state = state;
            next.changes = changes;
            if held {
                next.seq = f.seq;
                next.error = None;
            }
            let moved = next != *r;
            *r = next;
            moved
        });
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(DISABLE_POLL) => {}
            _ = retry => {}
        }
    }
    // The job left the config (or the agent is exiting): its routes go.
    if applied != Some(false)
        && let Err(e) = apply(&spec, false, spawner.as_ref()).await
    {
        tracing::warn!(job = %job, "announce: the last withdrawal failed: {}", error_chain(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_read_to_their_last_code() {
        let data: &[u8] =
            b"0002-Reading configuration from bird.conf\n more\n0003 Reconfigured\nrest";
        let mut r = BufReader::new(data);
        let (code, lines) = read_reply(&mut r, "s").await.unwrap();
        assert_eq!(code, "0003");
        assert_eq!(lines.len(), 3);
        let bad: &[u8] = b"hello\n";
        assert!(matches!(
            read_reply(&mut BufReader::new(bad), "s").await,
            Err(SpeakerError::Protocol { .. })
        ));
        let cut: &[u8] = b"0002-Reading\n";
        assert!(read_reply(&mut BufReader::new(cut), "s").await.is_err());
    }

    /// A BIRD with only the two static protocols (no BGP, no kernel
    /// protocol: nothing leaves the process), killed on drop.
    struct Bird(std::process::Child);

    impl Drop for Bird {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_bird(dir: &Path, socket: &str) -> Bird {
        let conf = dir.join("bird.conf");
        let inc = dir.join("inc");
        std::fs::write(
            &conf,
            format!(
                "router id 10.0.0.1;\nprotocol device {{}}\nprotocol static t4 {{\n  ipv4;\n  include \"{i}/t4.conf\";\n}}\nprotocol static t6 {{\n  ipv6;\n  include \"{i}/t6.conf\";\n}}\n",
                i = inc.display()
            ),
        )
        .unwrap();
        // Test only: the speaker under test is a separate program.
        #[allow(clippy::disallowed_methods)]
        let child = std::process::Command::new("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("bird (Debian bird2) must be installed");
        Bird(child)
    }

    /// The task reports `withdrawn (speaker unreachable)` while BIRD is
    /// down, retries with back-off, and announces once BIRD answers; a
    /// withdrawal empties BIRD's table of the route.
    #[tokio::test]
    async fn the_task_retries_until_the_speaker_answers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("inc")).unwrap();
        for f in ["t4.conf", "t6.conf"] {
            std::fs::write(dir.path().join("inc").join(f), "").unwrap();
        }
        let socket = dir.path().join("bird.ctl").display().to_string();
        let spec = AnnounceSpec {
            prefixes: vec![gate::Prefix::parse("192.0.2.10/32").unwrap()],
            socket: socket.clone(),
            protocol: "t".into(),
            include_dir: dir.path().join("inc").display().to_string(),
            disable_file: dir.path().join("disable").display().to_string(),
            loopback: false,
            drain: Duration::ZERO,
        };
        let passing = GateInput {
            registered: Some(autopilot_core::EntryStatus::Passing),
            maintenance: false,
            stopping: false,
            disabled: false,
        };
        let metrics = Arc::new(Metrics::new(&[]));
        let a = Announcer::start(
            "web",
            spec,
            Feed {
                gate: passing,
                seq: 1,
            },
            metrics.clone(),
            None,
            None,
        );
        let mut rx = a.report.clone();
        let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| r.error.is_some()))
            .await
            .expect("a speaker error")
            .unwrap()
            .clone();
        assert_eq!(r.state, PrefixState::Withdrawn(Reason::SpeakerUnreachable));
        assert!(r.error.unwrap().contains("cannot connect"));
        let _bird = start_bird(dir.path(), &socket);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|r| r.state == PrefixState::Announced),
        )
        .await
        .expect("announced once BIRD answers")
        .unwrap()
        .clone();
        assert_eq!((r.seq, r.error), (1, None));
        let table = bird_command(&socket, "show route")
            .await
            .unwrap()
            .join("\n");
        assert!(table.contains("192.0.2.10/32"), "{table}");
        assert!(metrics.render().contains(
            r#"autopilot_announce_state{job="web",prefix="192.0.2.10/32",state="announced"} 1"#
        ));
        // Withdraw: maintenance.
        let seq = a.feed(GateInput {
            maintenance: true,
            ..passing
        });
        assert_eq!(seq, 2);
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|r| r.seq == 2 && r.state == PrefixState::Withdrawn(Reason::Maintenance)),
        )
        .await
        .expect("withdrawn")
        .unwrap();
        let table = bird_command(&socket, "show route")
            .await
            .unwrap()
            .join("\n");
        assert!(!table.contains("192.0.2.10/32"), "{table}");
        assert_eq!(rx.borrow().changes, 1);
    }

    #[tokio::test]
    async fn an_absent_socket_is_a_connect_error() {
        let e = bird_command("/nonexistent/autopilot-test.ctl", "configure")
            .await
            .unwrap_err();
        assert!(matches!(e, SpeakerError::Connect { .. }), "{e}");
    }
}
