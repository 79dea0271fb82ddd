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

/// The default `warnOn`: overloaded.
const DEFAULT_WARN_ON: [u16; 2] = [429, 503];

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
                    warn_on: if warn_on.is_empty() {
                        DEFAULT_WARN_ON.to_vec()
                    } else {
                        warn_on.clone()
                    },
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
    let pid = child.pid;
    let exit = match tokio::time::timeout(timeout, child.exit).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => return (WatchdogStatus::Error, "exit status lost".into()),
        Err(_) => {
            // The whole group: a check's children must not outlive it.
            let _ = autopilot_process::signal_group(pid, autopilot_process::Sig::Kill);
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
