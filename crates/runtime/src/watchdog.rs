//! The watchdogs: one task per configured check at its interval, each run under its timeout; results pass rise/fall, are published as `_watchdogs` entries and reported to the agent.
//!
//! A check gives a raw `ok`/`warning`/`error` and a message; the
//! [`WatchdogFilter`] turns raw results into the reported status. The entry
//! (`_watchdogs`, id `<host>.<name>`) is written through the agent's
//! [`Registrar`] on a status change, or when only the message changed and
//! [`REWRITE_AFTER`] has passed since the last write, so a chatty check
//! does not churn the catalog. The agent gets a [`WatchdogReport`] on every
//! status change and every message change.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use autopilot_catalog::{Registration, Status};
use autopilot_core::repair::{WATCHDOG_SERVICE, WatchdogFilter, WatchdogStatus, clean};
use autopilot_core::spec::{FreeSpace, WatchdogCheck, WatchdogSpec};
use autopilot_process::{Exit, SpawnSpec, Spawner};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::catalog::Registrar;
use crate::logging::dur;

/// A message-only change is written to the catalog at most this often.
pub const REWRITE_AFTER: Duration = Duration::from_secs(30);

/// The most exits a crashloop watchdog remembers (its `restarts`, capped).
const CRASH_RING_CAP: u32 = 1024;

/// How long an exec check's first output line may lag its exit (a
/// descendant holding the pipe open must not hold the check).
const LINE_GRACE: Duration = Duration::from_millis(500);

/// What the watchdogs need from the agent.
pub struct WatchdogCtx {
    pub registrar: Registrar,
    /// This agent's host name: entry ids are `<host>.<watchdog>`.
    pub host: String,
    pub address: String,
    /// How long an entry outlives the agent's last keep-alive.
    pub ttl: Duration,
    /// `true` while the agent's registrar is healthy (the `catalog` check).
    pub catalog_ok: watch::Receiver<bool>,
    /// The agent's spawner (the only one): `exec` checks run through it.
    pub spawner: Spawner,
    /// The environment `exec` checks run with.
    pub env: Vec<(String, String)>,
}

/// A watchdog's reported status changed, or its message did.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogReport {
    pub name: String,
    /// The job an `error` counts for (`None`: every job with a repair block).
    pub job: Option<String>,
    pub status: WatchdogStatus,
    pub message: String,
}

/// One watchdog as `/status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogView {
    pub name: String,
    pub job: Option<String>,
    pub status: WatchdogStatus,
    pub message: String,
    /// The last status change (the start, before any).
    pub since: SystemTime,
}

/// The exits a crashloop watchdog has seen, newest last.
#[derive(Debug)]
struct Crashes {
    exits: VecDeque<Instant>,
    cap: usize,
    /// The job ran out of restarts (parked) and has not started since.
    parked: bool,
}

impl Crashes {
    fn new(restarts: u32) -> Crashes {
        let cap = restarts.clamp(1, CRASH_RING_CAP) as usize;
        Crashes {
            exits: VecDeque::with_capacity(cap),
            cap,
            parked: false,
        }
    }

    fn exited(&mut self, at: Instant, parked: bool) {
        if self.exits.len() >= self.cap {
            self.exits.pop_front();
        }
        self.exits.push_back(at);
        self.parked = parked;
    }

    /// Exits within `window` before `now`.
    fn within(&self, now: Instant, window: Duration) -> usize {
        self.exits
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= window)
            .count()
    }
}

struct CrashWatch {
    job: String,
    state: Arc<Mutex<Crashes>>,
    wake: Arc<Notify>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running watchdogs.
pub struct WatchdogSet {
    tasks: Vec<JoinHandle<()>>,
    views: Arc<Mutex<Vec<WatchdogView>>>,
    crashes: Vec<CrashWatch>,
    registrar: Registrar,
    ids: Vec<String>,
}

impl Drop for WatchdogSet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A check, with its target parsed once.
enum Check {
    Exec {
        argv: Vec<String>,
    },
    Http {
        host: String,
        port: u16,
        target: String,
        expect: Option<u16>,
        warn_on: Vec<u16>,
        slow: Option<Duration>,
    },
    Tcp {
        host: String,
        port: u16,
        slow: Option<Duration>,
    },
    Disk {
        path: PathBuf,
        warning: Option<FreeSpace>,
        error: Option<FreeSpace>,
    },
    Catalog,
    Crashloop {
        job: String,
        restarts: u32,
        window: Duration,
        state: Arc<Mutex<Crashes>>,
    },
    /// A target that cannot be checked: always an error, with the reason.
    Unusable(String),
}

impl Check {
    fn of(check: &WatchdogCheck) -> Check {
        match check {
            WatchdogCheck::Exec { argv } => Check::Exec { argv: argv.clone() },
            WatchdogCheck::Http {
                url,
                expect,
                warn_on,
                slow,
            } => match autopilot_config::http_url(url) {
                Ok((host, port, target)) => Check::Http {
                    host,
                    port,
                    target,
                    expect: *expect,
                    // The config fills in the default (429, 503); an
                    // explicit empty list warns on no status.
                    warn_on: warn_on.clone(),
                    slow: *slow,
                },
                Err(e) => Check::Unusable(format!("unusable url {url:?}: {e}")),
            },
            WatchdogCheck::Tcp { address, slow } => match autopilot_config::host_port(address) {
                Ok((host, port)) => Check::Tcp {
                    host,
                    port,
                    slow: *slow,
                },
                Err(e) => Check::Unusable(format!("unusable address {address:?}: {e}")),
            },
            WatchdogCheck::Disk {
                path,
                warning,
                error,
            } => Check::Disk {
                path: path.clone(),
                warning: *warning,
                error: *error,
            },
            WatchdogCheck::Catalog => Check::Catalog,
            WatchdogCheck::Crashloop {
                job,
                restarts,
                window,
            } => Check::Crashloop {
                job: job.clone(),
                restarts: (*restarts).max(1),
                window: *window,
                state: Arc::new(Mutex::new(Crashes::new(*restarts))),
            },
        }
    }
}

/// The job a watchdog's error counts for: its own, or a crashloop's job.
fn job_of(spec: &WatchdogSpec) -> Option<String> {
    spec.job.clone().or_else(|| match &spec.check {
        WatchdogCheck::Crashloop { job, .. } => Some(job.clone()),
        _ => None,
    })
}

/// The `_watchdogs` entry id of a watchdog on `host`.
pub fn entry_id(host: &str, name: &str) -> String {
    format!("{host}.{name}")
}

fn entry_status(s: WatchdogStatus) -> Status {
    match s {
        WatchdogStatus::Ok => Status::Passing,
        WatchdogStatus::Warning => Status::Warning,
        WatchdogStatus::Error => Status::Critical,
    }
}

fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    autopilot_catalog::rfc3339_ms(ms)
}

/// One watchdog's reported state and what was last published of it.
struct Tracker {
    name: String,
    job: Option<String>,
    filter: WatchdogFilter,
    /// The last message reported (`None` before the first result).
    reported: Option<String>,
    since: SystemTime,
    /// Status, message and time of the last entry written.
    written: Option<(WatchdogStatus, String, Instant)>,
}

/// What one result calls for.
#[derive(Debug, PartialEq)]
struct Outcome {
    report: Option<WatchdogReport>,
    write: bool,
}

impl Tracker {
    fn new(spec: &WatchdogSpec, since: SystemTime) -> Tracker {
        Tracker {
            name: spec.name.clone(),
            job: job_of(spec),
            filter: WatchdogFilter::new(spec.rise, spec.fall),
            reported: None,
            since,
            written: None,
        }
    }

    fn observe(
        &mut self,
        raw: WatchdogStatus,
        message: &str,
        wall: SystemTime,
        now: Instant,
    ) -> Outcome {
        let message = clean(message);
        let changed = self.filter.observe(raw).is_some();
        if changed {
            self.since = wall;
        }
        let status = self.filter.status();
        let report = (changed || self.reported.as_deref() != Some(message.as_str())).then(|| {
            WatchdogReport {
                name: self.name.clone(),
                job: self.job.clone(),
                status,
                message: message.clone(),
            }
        });
        self.reported = Some(message.clone());
        let write = match &self.written {
            None => true,
            Some((s, _, _)) if *s != status => true,
            Some((_, m, at)) => {
                *m != message && now.saturating_duration_since(*at) >= REWRITE_AFTER
            }
        };
        if write {
            self.written = Some((status, message, now));
        }
        Outcome { report, write }
    }

    fn view(&self) -> WatchdogView {
        WatchdogView {
            name: self.name.clone(),
            job: self.job.clone(),
            status: self.filter.status(),
            message: self.reported.clone().unwrap_or_default(),
            since: self.since,
        }
    }

    fn registration(&self, host: &str, address: &str, ttl: Duration) -> Registration {
        let status = self.filter.status();
        let mut tags = vec![
            format!("watchdog={}", self.name),
            format!("status={}", status.as_str()),
            format!("message={}", self.reported.as_deref().unwrap_or("")),
            format!("since={}", rfc3339(self.since)),
        ];
        if let Some(job) = &self.job {
            tags.push(format!("job={job}"));
        }
        Registration {
            id: entry_id(host, &self.name),
            name: WATCHDOG_SERVICE.to_string(),
            address: address.to_string(),
            port: 0,
            tags,
            status: entry_status(status),
            ttl,
            deregister_critical_after: None,
            seat: None,
        }
    }
}

/// Everything one watchdog's task owns.
struct Runner {
    check: Check,
    timeout: Duration,
    interval: Duration,
    tracker: Tracker,
    index: usize,
    views: Arc<Mutex<Vec<WatchdogView>>>,
    registrar: Registrar,
    host: String,
    address: String,
    ttl: Duration,
    catalog_ok: watch::Receiver<bool>,
    spawner: Spawner,
    env: Vec<(String, String)>,
    wake: Arc<Notify>,
    tx: mpsc::Sender<WatchdogReport>,
}

impl Runner {
    async fn run(mut self) {
        let mut catalog_open = matches!(self.check, Check::Catalog);
        loop {
            let (raw, message) = self.check_once().await;
            let out = self
                .tracker
                .observe(raw, &message, SystemTime::now(), Instant::now());
            {
                let mut views = locked(&self.views);
                if let Some(v) = views.get_mut(self.index) {
                    *v = self.tracker.view();
                }
            }
            if out.write {
                self.registrar.put(
                    self.tracker
                        .registration(&self.host, &self.address, self.ttl),
                );
            }
            if let Some(r) = out.report
                && self.tx.send(r).await.is_err()
            {
                // The agent is gone: nobody reads the results any more.
                return;
            }
            let next = tokio::time::sleep(self.interval);
            tokio::select! {
                () = next => {}
                () = self.wake.notified() => {}
                r = self.catalog_ok.changed(), if catalog_open => {
                    if r.is_err() {
                        catalog_open = false;
                    }
                }
            }
        }
    }

    async fn check_once(&mut self) -> (WatchdogStatus, String) {
        let timeout = self.timeout;
        match &self.check {
            Check::Exec { argv } => {
                exec(&self.spawner, &self.env, &self.tracker.name, argv, timeout).await
            }
            Check::Http {
                host,
                port,
                target,
                expect,
                warn_on,
                slow,
            } => http(host, *port, target, *expect, warn_on, *slow, timeout).await,
            Check::Tcp { host, port, slow } => tcp(host, *port, *slow, timeout).await,
            Check::Disk {
                path,
                warning,
                error,
            } => disk(path, *warning, *error, timeout).await,
            Check::Catalog => {
                if *self.catalog_ok.borrow_and_update() {
                    (
                        WatchdogStatus::Ok,
                        "the catalog session is alive and entries are registered".into(),
                    )
                } else {
                    (WatchdogStatus::Error, "catalog requests are failing".into())
                }
            }
            Check::Crashloop {
                job,
                restarts,
                window,
                state,
            } => crashloop(&locked(state), job, *restarts, *window, Instant::now()),
            Check::Unusable(why) => (WatchdogStatus::Error, why.clone()),
        }
    }
}

/// An exec check: exit 0 ok, 1 warning, anything else (a signal, a
/// timeout) error; the first line of its output is the message.
async fn exec(
    spawner: &Spawner,
    env: &[(String, String)],
    name: &str,
    argv: &[String],
    timeout: Duration,
) -> (WatchdogStatus, String) {
    let spec = SpawnSpec {
        argv: argv.to_vec(),
        env: env.to_vec(),
        raw_output: false,
        tag: format!("watchdog.{name}"),
    };
    let (child, line) = match spawner.spawn_first_line(&spec) {
        Ok(pair) => pair,
        Err(e) => return (WatchdogStatus::Error, e.to_string()),
    };
    // Killed with its group if the check is dropped (the set stopped) or
    // times out: a check's children never outlive it.
    let mut guard = KillGroup(Some(child.pid));
    let exit = match tokio::time::timeout(timeout, child.exit).await {
        Ok(Ok(exit)) => {
            guard.0 = None;
            exit
        }
        Ok(Err(_)) => return (WatchdogStatus::Error, "exit status lost".into()),
        Err(_) => {
            return (
                WatchdogStatus::Error,
                format!("no result within {}; killed", dur(timeout)),
            );
        }
    };
    let first = match tokio::time::timeout(LINE_GRACE, line).await {
        Ok(Ok(l)) => l.trim().to_string(),
        _ => String::new(),
    };
    let (status, fallback) = match exit {
        Exit::Code(0) => (WatchdogStatus::Ok, "exit code 0".to_string()),
        Exit::Code(1) => (WatchdogStatus::Warning, "exit code 1".to_string()),
        Exit::Code(c) => (WatchdogStatus::Error, format!("exit code {c}")),
        Exit::Signal(s) => (WatchdogStatus::Error, format!("killed by signal {s}")),
    };
    (status, if first.is_empty() { fallback } else { first })
}

/// SIGKILLs a process group when dropped, unless disarmed.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = autopilot_process::signal_group(pid, autopilot_process::Sig::Kill);
        }
    }
}

/// An http check: the expected status (any 2xx without `expect`) is ok,
/// slower than `slow` or a status in `warn_on` is warning, else error.
async fn http(
    host: &str,
    port: u16,
    target: &str,
    expect: Option<u16>,
    warn_on: &[u16],
    slow: Option<Duration>,
    timeout: Duration,
) -> (WatchdogStatus, String) {
    let start = Instant::now();
    let code =
        match tokio::time::timeout(timeout, crate::probe::http_status(host, port, target)).await {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => return (WatchdogStatus::Error, e.to_string()),
            Err(_) => {
                return (
                    WatchdogStatus::Error,
                    format!(
                        "GET {target} from {host}:{port}: no answer within {}",
                        dur(timeout)
                    ),
                );
            }
        };
    let elapsed = start.elapsed();
    let ok = expect.map_or((200..300).contains(&code), |w| code == w);
    if ok {
        match slow {
            Some(s) if elapsed > s => (
                WatchdogStatus::Warning,
                format!("answered {code}, slower than {}", dur(s)),
            ),
            _ => (WatchdogStatus::Ok, format!("answered {code}")),
        }
    } else if warn_on.contains(&code) {
        (WatchdogStatus::Warning, format!("answered {code}"))
    } else {
        let want = expect.map_or_else(|| "2xx".to_string(), |w| w.to_string());
        (
            WatchdogStatus::Error,
            format!("answered {code}, expected {want}"),
        )
    }
}

/// A tcp check: a connection opens (ok; warning when slower than `slow`).
async fn tcp(
    host: &str,
    port: u16,
    slow: Option<Duration>,
    timeout: Duration,
) -> (WatchdogStatus, String) {
    let start = Instant::now();
    match tokio::time::timeout(timeout, crate::probe::connect(host, port)).await {
        Ok(Ok(_stream)) => match slow {
            Some(s) if start.elapsed() > s => (
                WatchdogStatus::Warning,
                format!("connected, slower than {}", dur(s)),
            ),
            _ => (WatchdogStatus::Ok, "connected".into()),
        },
        Ok(Err(e)) => (WatchdogStatus::Error, e.to_string()),
        Err(_) => (
            WatchdogStatus::Error,
            format!("cannot connect to {host}:{port} within {}", dur(timeout)),
        ),
    }
}

/// Free and total bytes of the filesystem holding `path`.
// `c_ulong` and `fsblkcnt_t` are narrower than u64 on some targets.
#[allow(clippy::useless_conversion)]
fn free_space(path: &std::path::Path) -> Result<(u64, u64), String> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let frsize = u64::from(st.fragment_size());
    let free = u64::from(st.blocks_available()).saturating_mul(frsize);
    let total = u64::from(st.blocks()).saturating_mul(frsize);
    Ok((free, total))
}

fn below(limit: Option<FreeSpace>, free: u64, percent: f64) -> bool {
    match limit {
        Some(FreeSpace::Percent(p)) => percent < p,
        Some(FreeSpace::Bytes(b)) => free < b,
        None => false,
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
}

/// A disk check: free space under `path` below `error` is error, below
/// `warning` is warning.
async fn disk(
    path: &std::path::Path,
    warning: Option<FreeSpace>,
    error: Option<FreeSpace>,
    timeout: Duration,
) -> (WatchdogStatus, String) {
    let p = path.to_path_buf();
    // A hung mount must not hang the task: the call runs aside, bounded.
    let got =
        tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || free_space(&p))).await;
    let (free, total) = match got {
        Ok(Ok(Ok(pair))) => pair,
        Ok(Ok(Err(e))) => return (WatchdogStatus::Error, format!("statvfs {e}")),
        Ok(Err(e)) => return (WatchdogStatus::Error, format!("statvfs task failed: {e}")),
        Err(_) => {
            return (
                WatchdogStatus::Error,
                format!(
                    "statvfs {}: no answer within {}",
                    path.display(),
                    dur(timeout)
                ),
            );
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let message = format!(
        "{} free of {} ({percent:.1}%) under {}",
        bytes(free),
        bytes(total),
        path.display()
    );
    let status = if below(error, free, percent) {
        WatchdogStatus::Error
    } else if below(warning, free, percent) {
        WatchdogStatus::Warning
    } else {
        WatchdogStatus::Ok
    };
    (status, message)
}

/// A crashloop check: `restarts` exits within `window`, or a job that
/// failed for good, is error.
fn crashloop(
    c: &Crashes,
    job: &str,
    restarts: u32,
    window: Duration,
    now: Instant,
) -> (WatchdogStatus, String) {
    let n = c.within(now, window);
    if c.parked {
        (
            WatchdogStatus::Error,
            format!("{job} failed for good: no restart left"),
        )
    } else if n >= restarts as usize {
        (
            WatchdogStatus::Error,
            format!("{job} exited {n} times within {}", dur(window)),
        )
    } else {
        (
            WatchdogStatus::Ok,
            format!("{job} exited {n} times within {}", dur(window)),
        )
    }
}

impl WatchdogSet {
    /// Starts a task per watchdog; must be called inside the runtime.
    pub fn start(
        specs: &[WatchdogSpec],
        ctx: WatchdogCtx,
        tx: mpsc::Sender<WatchdogReport>,
    ) -> WatchdogSet {
        let started = SystemTime::now();
        let trackers: Vec<Tracker> = specs.iter().map(|s| Tracker::new(s, started)).collect();
        let views = Arc::new(Mutex::new(
            trackers.iter().map(Tracker::view).collect::<Vec<_>>(),
        ));
        let mut tasks = Vec::with_capacity(specs.len());
        let mut crashes = Vec::new();
        let mut ids = Vec::with_capacity(specs.len());
        for (index, (spec, tracker)) in specs.iter().zip(trackers).enumerate() {
            let check = Check::of(&spec.check);
            let wake = Arc::new(Notify::new());
            if let Check::Crashloop { job, state, .. } = &check {
                crashes.push(CrashWatch {
                    job: job.clone(),
                    state: state.clone(),
                    wake: wake.clone(),
                });
            }
            ids.push(entry_id(&ctx.host, &spec.name));
            let runner = Runner {
                check,
                timeout: spec
                    .timeout
                    .min(spec.interval)
                    .max(Duration::from_millis(1)),
                interval: spec.interval.max(Duration::from_millis(1)),
                tracker,
                index,
                views: views.clone(),
                registrar: ctx.registrar.clone(),
                host: ctx.host.clone(),
                address: ctx.address.clone(),
                ttl: ctx.ttl,
                catalog_ok: ctx.catalog_ok.clone(),
                spawner: ctx.spawner.clone(),
                env: ctx.env.clone(),
                wake,
                tx: tx.clone(),
            };
            tasks.push(tokio::spawn(runner.run()));
        }
        WatchdogSet {
            tasks,
            views,
            crashes,
            registrar: ctx.registrar,
            ids,
        }
    }

    /// A job's process exited; `parked`: it has no restart left. Crashloop
    /// watchdogs of that job count it and check at once.
    pub fn job_exited(&self, job: &str, parked: bool) {
        let now = Instant::now();
        for c in self.crashes.iter().filter(|c| c.job == job) {
            locked(&c.state).exited(now, parked);
            c.wake.notify_one();
        }
    }

    /// A job was started again (after a repair, or by hand): it is no
    /// longer failed for good.
    pub fn job_started(&self, job: &str) {
        for c in self.crashes.iter().filter(|c| c.job == job) {
            let mut st = locked(&c.state);
            if st.parked {
                st.parked = false;
                drop(st);
                c.wake.notify_one();
            }
        }
    }

    /// Every watchdog, in config order.
    pub fn view(&self) -> Vec<WatchdogView> {
        locked(&self.views).clone()
    }

    /// Ends every task and removes this agent's watchdog entries (waiting
    /// for the catalog at most 2 s).
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        for id in &self.ids {
            self.registrar.remove(id);
        }
        self.registrar.flush(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use autopilot_catalog::Catalog;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How the loopback server answers.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Status(u16),
        /// Answers 200 after this long.
        Slow(Duration),
        /// Reads the request and never answers.
        Stall,
    }

    /// A real HTTP/1.1 server on loopback answering every request as `answer` says now.
    async fn server(answer: Arc<Mutex<Answer>>) -> (u16, JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let a = *locked(&answer);
                    let code = match a {
                        Answer::Status(c) => c,
                        Answer::Slow(d) => {
                            tokio::time::sleep(d).await;
                            200
                        }
                        Answer::Stall => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, task)
    }

    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_statuses_speed_and_silence() {
        let answer = Arc::new(Mutex::new(Answer::Status(200)));
        let (port, srv) = server(answer.clone()).await;
        let t = Duration::from_secs(2);
        let warn = vec![429, 503];
        let get = |expect, slow, timeout| {
            let warn = warn.clone();
            async move { http("127.0.0.1", port, "/health", expect, &warn, slow, timeout).await }
        };
        assert_eq!(
            get(None, None, t).await,
            (WatchdogStatus::Ok, "answered 200".into())
        );
        for (code, want) in [
            (429, WatchdogStatus::Warning),
            (503, WatchdogStatus::Warning),
            (500, WatchdogStatus::Error),
            (404, WatchdogStatus::Error),
        ] {
            *locked(&answer) = Answer::Status(code);
            let (status, message) = get(None, None, t).await;
            assert_eq!(status, want, "{code}: {message}");
            assert!(message.contains(&code.to_string()), "{message}");
        }
        *locked(&answer) = Answer::Status(200);
        assert_eq!(
            get(Some(204), None, t).await.0,
            WatchdogStatus::Error,
            "not the expected status"
        );
        *locked(&answer) = Answer::Status(204);
        assert_eq!(get(Some(204), None, t).await.0, WatchdogStatus::Ok);

        *locked(&answer) = Answer::Slow(Duration::from_millis(300));
        let (status, message) = get(None, Some(Duration::from_millis(100)), t).await;
        assert_eq!(status, WatchdogStatus::Warning, "{message}");
        assert!(message.contains("slower than 100ms"), "{message}");

        *locked(&answer) = Answer::Stall;
        let started = Instant::now();
        let (status, message) = get(None, None, Duration::from_millis(200)).await;
        assert_eq!(status, WatchdogStatus::Error);
        assert!(message.contains("no answer within 200ms"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        srv.abort();

        let dead = closed_port().await;
        let (status, message) = http("127.0.0.1", dead, "/", None, &[], None, t).await;
        assert_eq!(status, WatchdogStatus::Error);
        assert!(message.contains("cannot connect"), "{message}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_opens_or_fails() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = Duration::from_secs(2);
        assert_eq!(
            tcp("127.0.0.1", port, None, t).await,
            (WatchdogStatus::Ok, "connected".into())
        );
        drop(l);
        let (status, message) = tcp("127.0.0.1", port, None, t).await;
        assert_eq!(status, WatchdogStatus::Error, "{message}");
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn path_env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into())]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exec_exit_codes_output_and_timeout() {
        let sp = Spawner::start().expect("spawner");
        let env = path_env();
        let t = Duration::from_secs(5);
        let run = |script: &str| {
            let argv = sh(script);
            let (sp, env) = (sp.clone(), env.clone());
            async move { exec(&sp, &env, "t", &argv, t).await }
        };
        assert_eq!(
            run("echo 'all good'; echo second line; exit 0").await,
            (WatchdogStatus::Ok, "all good".into())
        );
        assert_eq!(
            run("echo 'almost full'; exit 1").await,
            (WatchdogStatus::Warning, "almost full".into())
        );
        let (status, message) = run("printf 'broken\\033[31m\\n'; exit 2").await;
        assert_eq!(status, WatchdogStatus::Error);
        assert_eq!(
            clean(&message),
            "broken [31m",
            "control characters are cleaned"
        );
        assert_eq!(
            run("exit 3").await,
            (WatchdogStatus::Error, "exit code 3".into())
        );
        let long = "x".repeat(500);
        let (_, message) = run(&format!("echo {long}")).await;
        let out = Tracker::new(&spec("long", WatchdogCheck::Catalog), SystemTime::now()).observe(
            WatchdogStatus::Ok,
            &message,
            SystemTime::now(),
            Instant::now(),
        );
        assert_eq!(
            out.report.map(|r| r.message.chars().count()),
            Some(200),
            "messages are capped"
        );
        let missing = exec(&sp, &env, "t", &["/no/such/check".into()], t).await;
        assert_eq!(missing.0, WatchdogStatus::Error);
        assert!(missing.1.contains("/no/such/check"), "{}", missing.1);

        // Past its timeout the whole group is killed, descendants included.
        let dir = tempfile::tempdir().expect("dir");
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let (status, message) =
            exec(&sp, &env, "t", &sh(&script), Duration::from_millis(500)).await;
        assert_eq!(status, WatchdogStatus::Error);
        assert!(message.contains("no result within 500ms"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        let mut gone = false;
        for _ in 0..250 {
            // Killed, and reaped by whoever inherited it.
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the check's child {pid} was killed with it");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn disk_thresholds_against_the_real_free_space() {
        let dir = tempfile::tempdir().expect("dir");
        let (free, total) = free_space(dir.path()).expect("statvfs");
        assert!(free > 0 && total >= free, "{free} of {total}");
        #[allow(clippy::cast_precision_loss)]
        let percent = free as f64 * 100.0 / total as f64;
        let t = Duration::from_secs(2);
        let check = |warning, error| {
            let p = dir.path().to_path_buf();
            async move { disk(&p, warning, error, t).await }
        };
        let (status, message) = check(None, None).await;
        assert_eq!(status, WatchdogStatus::Ok);
        assert!(message.contains("free of"), "{message}");
        // Margins of 2x absorb whatever else writes to the disk meanwhile.
        let b = FreeSpace::Bytes;
        assert_eq!(
            check(Some(b(free / 2)), Some(b(free / 4))).await.0,
            WatchdogStatus::Ok
        );
        assert_eq!(
            check(Some(b(free.saturating_mul(2))), Some(b(free / 4)))
                .await
                .0,
            WatchdogStatus::Warning
        );
        assert_eq!(
            check(
                Some(b(free.saturating_mul(8))),
                Some(b(free.saturating_mul(4)))
            )
            .await
            .0,
            WatchdogStatus::Error
        );
        let p = FreeSpace::Percent;
        assert_eq!(
            check(Some(p(percent / 2.0)), Some(p(percent / 4.0)))
                .await
                .0,
            WatchdogStatus::Ok
        );
        assert_eq!(
            check(Some(p(101.0)), Some(p(percent / 4.0))).await.0,
            WatchdogStatus::Warning
        );
        assert_eq!(check(None, Some(p(101.0))).await.0, WatchdogStatus::Error);
        let gone = dir.path().join("no-such-dir");
        let (status, message) = disk(&gone, None, None, t).await;
        assert_eq!(status, WatchdogStatus::Error);
        assert!(message.contains("no-such-dir"), "{message}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn crashloop_counts_exits_in_a_bounded_window() {
        let window = Duration::from_secs(60);
        let mut c = Crashes::new(3);
        let status = |c: &Crashes| crashloop(c, "app", 3, window, Instant::now()).0;
        assert_eq!(status(&c), WatchdogStatus::Ok);
        c.exited(Instant::now(), false);
        tokio::time::advance(Duration::from_secs(20)).await;
        c.exited(Instant::now(), false);
        assert_eq!(status(&c), WatchdogStatus::Ok, "two exits are not three");
        tokio::time::advance(Duration::from_secs(20)).await;
        c.exited(Instant::now(), false);
        let (s, message) = crashloop(&c, "app", 3, window, Instant::now());
        assert_eq!(s, WatchdogStatus::Error);
        assert_eq!(message, "app exited 3 times within 1m0s");
        // The first exit leaves the window: two remain.
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(status(&c), WatchdogStatus::Ok);
        // Bounded: only the last `restarts` exits are kept.
        for _ in 0..100 {
            c.exited(Instant::now(), false);
        }
        assert_eq!(c.exits.len(), 3);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(status(&c), WatchdogStatus::Ok);
        // Failed for good: an error whatever the count.
        c.exited(Instant::now(), true);
        let (s, message) = crashloop(&c, "app", 3, window, Instant::now());
        assert_eq!(s, WatchdogStatus::Error);
        assert!(message.contains("failed for good"), "{message}");
    }

    fn spec(name: &str, check: WatchdogCheck) -> WatchdogSpec {
        WatchdogSpec {
            name: name.into(),
            check,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            job: None,
            rise: 1,
            fall: 1,
        }
    }

    #[test]
    fn rise_fall_reports_and_write_rules() {
        let mut s = spec("w", WatchdogCheck::Catalog);
        (s.rise, s.fall) = (2, 2);
        let wall = SystemTime::now();
        let mut t = Tracker::new(&s, wall);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let report = |status, message: &str| {
            Some(WatchdogReport {
                name: "w".into(),
                job: None,
                status,
                message: message.into(),
            })
        };
        use WatchdogStatus::{Error, Ok as Fine};
        // The first result is reported and written, whatever it is.
        assert_eq!(
            t.observe(Error, "down", wall, at(0)),
            Outcome {
                report: report(Fine, "down"),
                write: true
            },
            "one error is not `fall` errors"
        );
        let later = wall + Duration::from_secs(1);
        assert_eq!(
            t.observe(Error, "down", later, at(1)),
            Outcome {
                report: report(Error, "down"),
                write: true
            }
        );
        assert_eq!(t.view().since, later, "since: the status change");
        // A message change alone is reported, but written only after 30 s.
        assert_eq!(
            t.observe(Fine, "up", wall, at(2)),
            Outcome {
                report: report(Error, "up"),
                write: false
            }
        );
        assert_eq!(
            t.observe(Fine, "up", wall, at(3)),
            Outcome {
                report: report(Fine, "up"),
                write: true
            },
            "`rise` oks"
        );
        assert_eq!(
            t.observe(Fine, "up, fast", wall, at(4)),
            Outcome {
                report: report(Fine, "up, fast"),
                write: false
            }
        );
        assert_eq!(
            t.observe(Fine, "up, fast", wall, at(20)),
            Outcome {
                report: None,
                write: false
            }
        );
        assert_eq!(
            t.observe(Fine, "up, fast", wall, at(34)),
            Outcome {
                report: None,
                write: true
            },
            "the changed message is written once 30 s have passed"
        );
        assert_eq!(
            t.observe(Fine, "up, fast", wall, at(100)),
            Outcome {
                report: None,
                write: false
            },
            "nothing changed: no churn"
        );
        let r = t.registration("h1", "10.0.0.1", Duration::from_secs(30));
        assert_eq!(
            (r.id.as_str(), r.name.as_str(), r.status),
            ("h1.w", "_watchdogs", Status::Passing)
        );
        assert_eq!(
            &r.tags[..3],
            ["watchdog=w", "status=ok", "message=up, fast"]
        );
        assert!(r.tags[3].starts_with("since=") && r.tags[3].ends_with('Z'));
    }

    async fn next_for(
        rx: &mut mpsc::Receiver<WatchdogReport>,
        name: &str,
        status: WatchdogStatus,
    ) -> WatchdogReport {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let r = rx.recv().await.expect("reports");
                if r.name == name && r.status == status {
                    return r;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {} report for {name}", status.as_str()))
    }

    async fn entry(
        cat: &Arc<dyn Catalog>,
        registrar: &Registrar,
        id: &str,
    ) -> Option<autopilot_catalog::Instance> {
        registrar.flush(Duration::from_secs(2)).await;
        cat.instances(WATCHDOG_SERVICE)
            .await
            .expect("read")
            .into_iter()
            .find(|i| i.id == id)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_reports_publishes_and_cleans_up() {
        let dir = tempfile::tempdir().expect("dir");
        let cat: Arc<dyn Catalog> = Arc::new(
            autopilot_catalog_local::LocalCatalog::open(dir.path(), "agent").expect("catalog"),
        );
        let registrar = Registrar::start(cat.clone());
        let answer = Arc::new(Mutex::new(Answer::Status(200)));
        let (port, srv) = server(answer.clone()).await;
        let (ok_tx, ok_rx) = watch::channel(true);
        let mut api = spec(
            "api",
            WatchdogCheck::Http {
                url: format!("http://127.0.0.1:{port}/health"),
                expect: None,
                warn_on: vec![],
                slow: None,
            },
        );
        api.interval = Duration::from_millis(100);
        api.job = Some("app".into());
        let mut lp = spec(
            "loop",
            WatchdogCheck::Crashloop {
                job: "app".into(),
                restarts: 2,
                window: Duration::from_secs(60),
            },
        );
        lp.interval = Duration::from_secs(3600);
        let specs = vec![api, spec("catalog", WatchdogCheck::Catalog), lp];
        let (tx, mut rx) = mpsc::channel(64);
        let set = WatchdogSet::start(
            &specs,
            WatchdogCtx {
                registrar: registrar.clone(),
                host: "h1".into(),
                address: "127.0.0.1".into(),
                ttl: Duration::from_secs(30),
                catalog_ok: ok_rx,
                spawner: Spawner::start().expect("spawner"),
                env: path_env(),
            },
            tx,
        );
        // Every watchdog reports its first result.
        let mut first = std::collections::BTreeMap::new();
        while first.len() < 3 {
            let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("first reports")
                .expect("reports");
            first.entry(r.name.clone()).or_insert(r);
        }
        assert!(
            first.values().all(|r| r.status == WatchdogStatus::Ok),
            "{first:?}"
        );
        assert_eq!(first["api"].job.as_deref(), Some("app"));
        assert_eq!(first["catalog"].job, None);
        assert_eq!(
            first["loop"].job.as_deref(),
            Some("app"),
            "a crashloop's own job"
        );

        let e = entry(&cat, &registrar, "h1.api").await.expect("api entry");
        assert_eq!(e.status, Status::Passing);
        assert!(e.tags.contains(&"status=ok".to_string()), "{:?}", e.tags);
        assert!(e.tags.contains(&"message=answered 200".to_string()));
        assert!(e.tags.contains(&"job=app".to_string()));

        // An error is reported and written at once.
        *locked(&answer) = Answer::Status(500);
        let r = next_for(&mut rx, "api", WatchdogStatus::Error).await;
        assert_eq!(r.message, "answered 500, expected 2xx");
        let e = entry(&cat, &registrar, "h1.api").await.expect("api entry");
        assert_eq!(e.status, Status::Critical);
        assert!(e.tags.contains(&"status=error".to_string()));

        // The registrar's health drives the catalog watchdog without waiting
        // for its interval.
        ok_tx.send_replace(false);
        next_for(&mut rx, "catalog", WatchdogStatus::Error).await;

        // Exits wake the crashloop watchdog at once.
        set.job_exited("app", false);
        set.job_exited("app", false);
        let r = next_for(&mut rx, "loop", WatchdogStatus::Error).await;
        assert_eq!(r.message, "app exited 2 times within 1m0s");

        let views = set.view();
        assert_eq!(
            views
                .iter()
                .map(|v| (v.name.as_str(), v.status))
                .collect::<Vec<_>>(),
            [
                ("api", WatchdogStatus::Error),
                ("catalog", WatchdogStatus::Error),
                ("loop", WatchdogStatus::Error)
            ]
        );

        set.stop().await;
        assert!(
            cat.instances(WATCHDOG_SERVICE)
                .await
                .expect("read")
                .is_empty(),
            "stop removes the entries"
        );
        srv.abort();
    }
}
