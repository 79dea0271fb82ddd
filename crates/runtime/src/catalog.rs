//! The agent's side of the catalog: settings and hook credentials, opening a backend by URL, the registrar that converges entries to the wanted state, and watch tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, CatalogUrl, Instance, Leader, Registration, Status,
};
use autopilot_config::WatchConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The default etcd lease TTL. Shorter detects dead agents sooner; longer
/// rides out longer stalls (GC pauses, etcd leader elections, a slow disk)
/// without dropping a live agent's entries. See docs/etcd-layout.md.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The etcd settings: the config's `etcd` block, each overridden by its
/// `$AUTOPILOT_ETCD_*` variable.
pub fn etcd_settings(
    cfg: &autopilot_config::EtcdConfig,
    env: &BTreeMap<String, String>,
) -> Result<autopilot_config::EtcdConfig, String> {
    let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let lease_ttl = match var("AUTOPILOT_ETCD_TTL") {
        Some(t) => Some(
            autopilot_config::parse_duration(&t).map_err(|e| format!("AUTOPILOT_ETCD_TTL: {e}"))?,
        ),
        None => cfg.lease_ttl,
    };
    Ok(autopilot_config::EtcdConfig {
        ca: var("AUTOPILOT_ETCD_CA").map(Into::into).or(cfg.ca.clone()),
        cert: var("AUTOPILOT_ETCD_CERT")
            .map(Into::into)
            .or(cfg.cert.clone()),
        key: var("AUTOPILOT_ETCD_KEY")
            .map(Into::into)
            .or(cfg.key.clone()),
        username: var("AUTOPILOT_ETCD_USERNAME").or(cfg.username.clone()),
        password: match var("AUTOPILOT_ETCD_PASSWORD") {
            Some(p) => Some(p),
            None => match var(PASSWORD_FILE_VAR) {
                Some(f) => Some(read_password_file(Path::new(&f))?),
                None => cfg.password.clone(),
            },
        },
        lease_ttl,
    })
}

/// The variable naming the file that holds the etcd password, for hooks:
/// the password itself never travels in an environment.
pub const PASSWORD_FILE_VAR: &str = "AUTOPILOT_ETCD_PASSWORD_FILE";
const PASSWORD_VAR: &str = "AUTOPILOT_ETCD_PASSWORD";

/// Reads a password file; one trailing newline (as `echo` writes) is not
/// part of the password.
fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{PASSWORD_FILE_VAR}: cannot read {}: {e}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_string())
}

/// What to say about a ContainerPilot `consul` block (`address` is its
/// address), given the catalog the agent runs on: until the Consul backend
/// lands, the block is not used and the agent runs on `url` (the default
/// catalog, or the one chosen explicitly). `None` without a `consul` block.
pub fn consul_fallback(address: Option<&str>, explicit: bool, url: &str) -> Option<String> {
    let address = address?;
    Some(if explicit {
        format!(
            "ignored: the Consul backend is not available yet, so the consul block ({address}) is not used; running on the catalog chosen with `catalog` or $AUTOPILOT_CATALOG, {url}"
        )
    } else {
        format!(
            "ignored: the Consul backend is not available yet, so the consul block ({address}) is not used; running on the default catalog {url} (set `catalog` or $AUTOPILOT_CATALOG to choose another)"
        )
    })
}

/// Removes the etcd password from an environment children inherit (hooks
/// get [`PASSWORD_FILE_VAR`] instead, from [`hook_env`]).
pub fn scrub_secrets(env: &mut BTreeMap<String, String>) {
    env.remove(PASSWORD_VAR);
}

/// Writes the password to a new 0600 file `etcd-password` in `dir` (a
/// private directory the agent owns): created with O_CREAT|O_EXCL|O_NOFOLLOW
/// so an existing file or a planted symlink is never written through. A
/// stale file of ours from an earlier run is removed first.
fn write_password_file(dir: &Path, password: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("etcd-password");
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Unlinking removes a symlink itself, never its target.
            std::fs::remove_file(&path)?;
            open()?
        }
        other => other?,
    };
    f.write_all(password.as_bytes())?;
    f.sync_all()?;
    Ok(path)
}

/// The catalog connection as variables for hooks: `autopilot kv`, `lock`,
/// `leader` and `template render` run by a job reach the agent's catalog
/// with the agent's credentials, whether the environment or the config
/// chose them. (Not the lease TTL: a hook's own session is short-lived.)
/// The password is never put in the environment: it is written to a 0600
/// file in `dir` (a private directory of the agent) and passed as
/// `AUTOPILOT_ETCD_PASSWORD_FILE`.
pub fn hook_env(
    url: &str,
    etcd: &autopilot_config::EtcdConfig,
    dir: &Path,
) -> Result<Vec<(String, String)>, String> {
    let mut env = vec![("AUTOPILOT_CATALOG".to_string(), url.to_string())];
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    for (k, v) in [
        ("AUTOPILOT_ETCD_CA", path(&etcd.ca)),
        ("AUTOPILOT_ETCD_CERT", path(&etcd.cert)),
        ("AUTOPILOT_ETCD_KEY", path(&etcd.key)),
        ("AUTOPILOT_ETCD_USERNAME", etcd.username.clone()),
    ] {
        if let Some(v) = v {
            env.push((k.to_string(), v));
        }
    }
    if let Some(p) = &etcd.password {
        let file = write_password_file(dir, p).map_err(|e| {
            format!(
                "cannot write the etcd password file in {}: {e}",
                dir.display()
            )
        })?;
        env.push((PASSWORD_FILE_VAR.to_string(), file.display().to_string()));
    }
    Ok(env)
}

/// Opens the backend a catalog URL names, as one agent session `owner`.
pub async fn open(
    url: &str,
    owner: &str,
    etcd: &autopilot_config::EtcdConfig,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    match autopilot_catalog::parse_url(url)? {
        CatalogUrl::Local(dir) => Ok(Arc::new(autopilot_catalog_local::LocalCatalog::open(
            &dir, owner,
        )?)),
        CatalogUrl::Etcd { endpoints, prefix } => {
            let opts = autopilot_catalog_etcd::EtcdOptions {
                endpoints,
                prefix,
                ca: etcd.ca.clone(),
                cert: etcd.cert.clone(),
                key: etcd.key.clone(),
                username: etcd.username.clone(),
                password: etcd.password.clone(),
                lease_ttl: etcd.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            };
            Ok(Arc::new(connect_patiently(opts, owner).await?))
        }
        CatalogUrl::Consul { .. } => Err(CatalogError::Unsupported {
            url: url.to_string(),
            backend: "consul".into(),
        }),
    }
}

/// Connects an agent to etcd, waiting as long as it takes for a cluster
/// that is down, slow or overloaded (a fleet starting at once): retries
/// back off exponentially with full jitter from 100 ms to 5 s, and the
/// failure is logged with its count ([`autopilot_catalog::Outage`]), never
/// fatal. A configuration error (credentials, permissions, TLS, a bad
/// endpoint or prefix) is fatal at once: retrying cannot fix it.
async fn connect_patiently(
    opts: autopilot_catalog_etcd::EtcdOptions,
    owner: &str,
) -> Result<autopilot_catalog_etcd::EtcdCatalog, CatalogError> {
    let mut backoff =
        autopilot_catalog::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut outage = autopilot_catalog::Outage::default();
    // SIGTERM or SIGINT while waiting ends the wait (as PID 1 nothing else
    // would: no handler is installed yet).
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let stopped = |url: String| CatalogError::Unavailable {
        url,
        message: "stopped by a signal while waiting for the cluster".into(),
    };
    loop {
        let attempt = tokio::select! {
            r = autopilot_catalog_etcd::EtcdCatalog::connect(opts.clone(), owner) => r,
            _ = recv_opt(&mut term) => return Err(stopped(opts.endpoints.join(","))),
            _ = recv_opt(&mut int) => return Err(stopped(opts.endpoints.join(","))),
        };
        match attempt {
            Ok(c) => {
                outage.recovered(c.url(), "connecting to the catalog");
                return Ok(c);
            }
            Err(CatalogError::Unavailable { url, message }) => {
                outage.failed(
                    &url,
                    "connecting to the catalog",
                    &format!("{message} (jobs start once it answers)"),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = recv_opt(&mut term) => return Err(stopped(url)),
                    _ = recv_opt(&mut int) => return Err(stopped(url)),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The next signal, or never when the handler could not be installed.
async fn recv_opt(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

enum Cmd {
    Put(Registration),
    Status(String, Status),
    Remove(String),
    Flush(oneshot::Sender<()>),
}

/// What the registrar has achieved, for `/status` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrarState {
    /// The last error, while the catalog is failing.
    pub error: Option<String>,
    /// Entries as they are in the catalog now, by ID. When the catalog has
    /// failed for longer than the entries live without a keep-alive, they
    /// are gone from it, and from here.
    pub applied: BTreeMap<String, Status>,
    /// When the current outage began (wall clock), while there is one.
    pub failing_since: Option<std::time::SystemTime>,
    /// Failed attempts in the current outage.
    pub failures: u64,
}

/// Converges the catalog to the entries the agent wants, in order, retrying
/// with back-off when the catalog fails. The agent loop never waits on it,
/// so a catalog outage never stalls supervision.
#[derive(Clone)]
pub struct Registrar {
    tx: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<RegistrarState>,
}

/// Retries stay frequent so registrations are back within a second of the
/// catalog's return; a failed attempt on an unreachable catalog is cheap.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(500);

impl Registrar {
    pub fn start(catalog: Arc<dyn Catalog>) -> Registrar {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, srx) = watch::channel(RegistrarState::default());
        tokio::spawn(run_registrar(catalog, rx, stx));
        Registrar { tx, state: srx }
    }

    pub fn put(&self, r: Registration) {
        let _ = self.tx.send(Cmd::Put(r));
    }

    pub fn status(&self, id: &str, s: Status) {
        let _ = self.tx.send(Cmd::Status(id.to_string(), s));
    }

    pub fn remove(&self, id: &str) {
        let _ = self.tx.send(Cmd::Remove(id.to_string()));
    }

    pub fn state(&self) -> RegistrarState {
        self.state.borrow().clone()
    }

    /// Notified whenever the state changes (for the degraded metric).
    pub fn subscribe(&self) -> watch::Receiver<RegistrarState> {
        self.state.clone()
    }

    /// Waits until everything sent so far has been applied (or tried once
    /// more after a failure), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

struct Worker {
    catalog: Arc<dyn Catalog>,
    desired: BTreeMap<String, Registration>,
    applied: BTreeMap<String, Registration>,
    /// Seat-bound registrations refused with `SeatLost`: not retried until
    /// the wanted registration changes.
    refused: BTreeMap<String, Registration>,
    error: Option<String>,
    retry: autopilot_catalog::Backoff,
    retry_at: Option<Instant>,
    /// The last time the catalog confirmed our entries (a keep-alive or a
    /// write that succeeded): entries outlive it by their TTL, no more.
    confirmed: Instant,
    outage: autopilot_catalog::Outage,
}

impl Worker {
    /// Applies every difference between wanted and applied entries; stops
    /// at the first failure and schedules a retry.
    async fn reconcile(&mut self) {
        let ids: Vec<String> = self
            .desired
            .keys()
            .chain(self.applied.keys())
            .cloned()
            .collect();
        let mut called = false;
        for id in ids {
            if let (Some(d), Some(r)) = (self.desired.get(&id), self.refused.get(&id))
                && d == r
            {
                continue;
            }
            let unchanged = match (self.desired.get(&id), self.applied.get(&id)) {
                (Some(d), Some(a)) => d == a,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            called = true;
            let res = match (self.desired.get(&id), self.applied.get(&id)) {
                (Some(d), Some(a))
                    if Registration {
                        status: d.status,
                        ..a.clone()
                    } == *d =>
                {
                    match self.catalog.set_status(&id, d.status).await {
                        // Gone underneath us (expired while we stalled): register anew.
                        Ok(false) => self.catalog.register(d).await,
                        other => other.map(|_| ()),
                    }
                }
                (Some(d), _) => self.catalog.register(d).await,
                (None, Some(_)) => self.catalog.deregister(&id).await,
                (None, None) => Ok(()),
            };
            match res {
                Ok(()) => {
                    self.refused.remove(&id);
                    match self.desired.get(&id) {
                        Some(d) => {
                            self.applied.insert(id, d.clone());
                        }
                        None => {
                            self.applied.remove(&id);
                        }
                    }
                }
                // The seat this entry is bound to is not held: nothing was
                // written and retrying cannot help. The catalog is fine.
                Err(e @ CatalogError::SeatLost { .. }) => {
                    tracing::info!("{e}; not registered until the entry changes");
                    if self.applied.get(&id).is_some_and(|a| a.seat.is_some()) {
                        // It went with its seat.
                        self.applied.remove(&id);
                    }
                    if let Some(d) = self.desired.get(&id) {
                        self.refused.insert(id, d.clone());
                    }
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
        // Nothing asked of the catalog proves nothing about it.
        if called || self.error.is_none() {
            self.succeeded(called);
        }
    }

    /// The catalog answered: the outage (if any) is over.
    fn succeeded(&mut self, answered: bool) {
        if answered {
            self.confirmed = Instant::now();
        }
        if self.error.take().is_some() {
            self.outage.recovered(self.catalog.url(), "the catalog");
        }
        self.retry.reset();
        self.retry_at = None;
    }

    fn fail(&mut self, e: CatalogError) {
        let msg = e.to_string();
        self.outage.failed(self.catalog.url(), "the catalog", &msg);
        self.error = Some(msg);
        // Jittered: agents that lost the catalog together do not all come
        // back in the same instant.
        self.retry_at = Some(Instant::now() + self.retry.next_delay());
        // Past their TTL without a keep-alive, our entries are gone from
        // the catalog: stop claiming them (reconcile writes them again when
        // the catalog answers).
        if !self.applied.is_empty() && self.confirmed.elapsed() > self.expiry() {
            tracing::warn!(
                entries = self.applied.len(),
                "no keep-alive for {}: the entries have expired from the catalog",
                crate::logging::dur(self.confirmed.elapsed())
            );
            self.applied.clear();
        }
    }

    /// One keep-alive, given up when our entries would expire meanwhile
    /// (at least a second): `/status` must stop claiming them on time even
    /// when the catalog stalls rather than refuses.
    async fn keep_alive(&mut self) -> Result<usize, CatalogError> {
        let limit = self
            .expiry()
            .saturating_sub(self.confirmed.elapsed())
            .max(Duration::from_secs(1));
        match tokio::time::timeout(limit, self.catalog.keep_alive()).await {
            Ok(r) => r,
            Err(_) => Err(CatalogError::Unavailable {
                url: self.catalog.url().to_string(),
                message: format!("no keep-alive answer within {limit:?}"),
            }),
        }
    }

    /// How long entries live in the catalog after the last keep-alive.
    fn expiry(&self) -> Duration {
        match self.catalog.keep_alive_interval() {
            // The backend keeps alive at a third of its lease TTL.
            Some(every) => every.saturating_mul(3),
            None => self
                .applied
                .values()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(Duration::from_secs(5)),
        }
    }

    /// One keep-alive for all of this agent's entries, at a third of the
    /// shortest TTL.
    fn keep_alive_every(&self) -> Duration {
        if let Some(every) = self.catalog.keep_alive_interval() {
            return every;
        }
        self.applied
            .values()
            .map(|r| r.ttl / 3)
            .min()
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(100))
    }
}

async fn run_registrar(
    catalog: Arc<dyn Catalog>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    state: watch::Sender<RegistrarState>,
) {
    let mut w = Worker {
        catalog,
        desired: BTreeMap::new(),
        applied: BTreeMap::new(),
        refused: BTreeMap::new(),
        error: None,
        retry: autopilot_catalog::Backoff::new(RETRY_MIN, RETRY_MAX),
        retry_at: None,
        confirmed: Instant::now(),
        outage: autopilot_catalog::Outage::default(),
    };
    let mut next_keep_alive = Instant::now() + w.keep_alive_every();
    loop {
        let retry_at = w.retry_at;
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let mut flush = None;
                // Take everything queued so one reconcile covers a burst.
                let mut next = Some(cmd);
                while let Some(c) = next {
                    match c {
                        Cmd::Put(r) => { w.desired.insert(r.id.clone(), r); }
                        Cmd::Status(id, s) => {
                            if let Some(d) = w.desired.get_mut(&id) { d.status = s; }
                        }
                        Cmd::Remove(id) => {
                            w.desired.remove(&id);
                            w.refused.remove(&id);
                        }
                        Cmd::Flush(tx) => flush = Some(tx),
                    }
                    next = rx.try_recv().ok();
                }
                if w.retry_at.is_none() || flush.is_some() {
                    w.reconcile().await;
                }
                if let Some(tx) = flush {
                    // What the flush waited for is visible in the state first.
                    continue_after_state(&w, &state);
                    let _ = tx.send(());
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(next_keep_alive)), if retry_at.is_some() => {
                // A failed keep-alive is retried too: after an outage it
                // renews the session (re-writing every entry) even when
                // nothing else changed.
                if !w.applied.is_empty() {
                    match w.keep_alive().await {
                        Ok(n) => {
                            w.succeeded(true);
                            if n < w.applied.len() {
                                w.applied.retain(|_, r| r.status == Status::Critical);
                            }
                        }
                        Err(e) => {
                            w.fail(e);
                            continue_after_state(&w, &state);
                            continue;
                        }
                    }
                    next_keep_alive = Instant::now() + w.keep_alive_every();
                }
                w.reconcile().await;
            }
            _ = tokio::time::sleep_until(next_keep_alive), if !w.applied.is_empty() && retry_at.is_none() => {
                match w.keep_alive().await {
                    Ok(n) if n < w.applied.len() => {
                        // Some entries vanished (they expired while this agent
                        // was stalled): re-register them. Critical ones stay
                        // gone, which is what deregisterCriticalServiceAfter asked.
                        w.confirmed = Instant::now();
                        w.applied.retain(|_, r| r.status == Status::Critical);
                        w.reconcile().await;
                    }
                    Ok(_) => w.confirmed = Instant::now(),
                    Err(e) => w.fail(e),
                }
                next_keep_alive = Instant::now() + w.keep_alive_every();
            }
        }
        // A new entry may have a shorter TTL than the one the schedule was
        // made for (or the schedule was made with no entries at all).
        let soonest = Instant::now() + w.keep_alive_every();
        if next_keep_alive < Instant::now() || soonest < next_keep_alive {
            next_keep_alive = soonest;
        }
        continue_after_state(&w, &state);
    }
}

/// Publishes the registrar's state if it changed.
fn continue_after_state(w: &Worker, state: &watch::Sender<RegistrarState>) {
    let snapshot = RegistrarState {
        error: w.error.clone(),
        failing_since: w.outage.since(),
        failures: w.outage.failures(),
        applied: w
            .applied
            .iter()
            .map(|(k, v)| (k.clone(), v.status))
            .collect(),
    };
    state.send_if_modified(|cur| {
        let changed = *cur != snapshot;
        *cur = snapshot;
        changed
    });
}

/// One change counter bumped by a change under any of `prefixes` (see
/// [`Catalog::changes_under`] for the key space): a task per prefix
/// forwards its bumps, and ends with the returned receiver or the catalog.
/// The prefixes are subscribed here, so a caller that reads after this call
/// misses no change.
pub fn changes_under_any(catalog: &dyn Catalog, prefixes: &[String]) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    for p in prefixes {
        let mut from = catalog.changes_under(p);
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = from.changed() => {
                        if r.is_err() {
                            return;
                        }
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    () = tx.closed() => return,
                }
            }
        });
    }
    rx
}

/// Reads the passing instances of a watched service whenever the catalog
/// changes (and every `interval` as a safety net), and sends each snapshot.
/// A failed read sends nothing: an unreachable catalog is not "no instances".
pub fn spawn_watch<M: Send + 'static>(
    catalog: Arc<dyn Catalog>,
    cfg: WatchConfig,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(Vec<Instance>) -> M + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Only this service's entries wake the watch.
        let mut changes = catalog.changes_under(&format!("instances/{}/", cfg.name));
        loop {
            changes.borrow_and_update();
            match catalog.instances(&cfg.name).await {
                Ok(list) => {
                    let passing: Vec<Instance> = list
                        .into_iter()
                        .filter(|i| i.status == Status::Passing)
                        .filter(|i| cfg.tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                        .collect();
                    if tx.send(wrap(passing)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(watch = %cfg.source, "{e}"),
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(cfg.interval) => {}
            }
            // Debounce: wait for a quiet period before reading.
            while !cfg.debounce.is_zero() {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(cfg.debounce) => break,
                }
            }
        }
    })
}

/// What an election task tells the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum ElectionNews {
    Elected(u64),
    /// No longer leader: resigned, lost the seat, or could not renew in time.
    Demoted(u64),
    /// The election's leader as last read (`None`: nobody leads).
    Leader(Option<Leader>),
    /// The leader term this candidate has confirmed dead by probing (the
    /// member record's `suspect` tag), or `None`.
    Suspect(Option<u64>),
}

/// A candidate's own cluster settings (`election.priority`, `maxLag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSettings {
    pub priority: u32,
    pub max_lag: Option<u64>,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            priority: 1,
            max_lag: None,
        }
    }
}

/// Campaigns for `election` while `want` is true, and reports leadership
/// and leader changes.
///
/// Safety: a leader counts its lease from the moment it *sent* its last
/// successful renewal. The catalog can only expire the seat `ttl` after it
/// *processed* that renewal, which is later. So the task declares itself
/// demoted at `sent + ttl - margin`, before any other node can win, even
/// when the catalog is unreachable and the renewal never comes back.
pub fn spawn_election<M: Send + 'static>(
    catalog: Arc<dyn Catalog>,
    election: String,
    me: Candidate,
    ttl: Duration,
    want: watch::Receiver<bool>,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(ElectionNews) -> M + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    spawn_election_after(
        Vec::new(),
        catalog,
        election,
        me,
        ttl,
        ClusterSettings::default(),
        want,
        tx,
        wrap,
    )
}

/// Aborts a task when dropped (the prober ends with its election task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`spawn_election`], campaigning only once each of `after` has turned
/// true: a reload's new campaign waits for the retired campaign of the
/// same election, which may still resign under the same candidate ID (a
/// resignation that ran after the new campaign won would delete its seat).
///
/// Who campaigns for a free seat, when a leader hands over, and when a
/// follower ends a dead leader's seat early are decided by
/// `autopilot_core::cluster` from the member records and intents; when
/// the records cannot be read, a free seat is campaigned for at once
/// unless a readable intent constrains campaigning (the catalog's
/// compare-and-swap decides either way). A leader whose leader read shows
/// the seat is not (its ID, its term) demotes at once.
#[allow(clippy::too_many_arguments)]
pub fn spawn_election_after<M: Send + 'static>(
    after: Vec<watch::Receiver<bool>>,
    catalog: Arc<dyn Catalog>,
    election: String,
    me: Candidate,
    ttl: Duration,
    settings: ClusterSettings,
    mut want: watch::Receiver<bool>,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(ElectionNews) -> M + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use autopilot_core::cluster::{self, Step};
    tokio::spawn(async move {
        for mut done in after {
            // A dropped sender means the waiter itself is gone: the
            // retired task has ended either way.
            let _ = done.wait_for(|d| *d).await;
        }
        let margin = (ttl / 5).max(Duration::from_millis(300));
        let every = ttl / 3;
        // The seat, the member records and the intents are read when they
        // changed (or the watch resumed), never on a timer: an idle
        // election costs the catalog only its leader's renewals.
        let mut seat_rx = catalog.changes_under(&format!("elections/{election}"));
        let mut members_rx = catalog.changes_under(&format!(
            "instances/{}/",
            cluster::members_service(&election)
        ));
        let mut intents_rx =
            catalog.changes_under(&format!("kv/{}", cluster::intents_prefix(&election)));
        let (mut stale_seat, mut stale_members, mut stale_intents) = (true, true, true);
        let mut known_members: Option<Vec<cluster::Member>> = None;
        let mut known_intents: Option<cluster::Intents> = None;
        // (term, send time of the last successful renewal)
        let mut leading: Option<(u64, Instant)> = None;
        let mut last_leader: Option<Option<Leader>> = None;
        // The instant a leader must have stepped down by.
        let deadline = |sent: Instant| sent + ttl - margin;
        // Cluster state: the fast path's prober and what it confirmed.
        let (target_tx, target_rx) = watch::channel(None);
        let (suspect_tx, mut suspect_rx) = watch::channel(None);
        let _prober = AbortOnDrop(tokio::spawn(crate::cluster::run_prober(
            target_rx, suspect_tx,
        )));
        let mut reported_suspect: Option<u64> = None;
        let start = Instant::now();
        let mut free_since: Option<Duration> = None;
        let mut last_holder: Option<Leader> = None;
        let mut dead: Option<String> = None;
        // The deadline of the switchover this node resigned for: it does
        // not campaign until then, unless the intents read show it gone.
        let mut handed_over: Option<u64> = None;
        loop {
            for (rx, stale) in [
                (&mut seat_rx, &mut stale_seat),
                (&mut members_rx, &mut stale_members),
                (&mut intents_rx, &mut stale_intents),
            ] {
                if rx.has_changed().unwrap_or(false) {
                    rx.borrow_and_update();
                    *stale = true;
                }
            }
            let wanted = *want.borrow_and_update();
            if let Some((term, sent)) = leading {
                if !wanted {
                    leading = None;
                    let _ = tx.send(wrap(ElectionNews::Demoted(term))).await;
                    if let Err(e) = tokio::time::timeout(every, catalog.resign(&election))
                        .await
                        .unwrap_or(Ok(()))
                    {
                        tracing::warn!(%election, "resign failed ({e}); the seat expires with its TTL");
                    }
                } else if Instant::now() >= deadline(sent) {
                    leading = None;
                    tracing::warn!(%election, "could not renew leadership in time; demoting");
                    let _ = tx.send(wrap(ElectionNews::Demoted(term))).await;
                }
            }
            // Every wait below is bounded by the leader's deadline, so the
            // check above runs in time whatever the catalog does.
            let bound = |d: Duration, leading: Option<(u64, Instant)>| match leading {
                Some((_, sent)) => d.min(deadline(sent).saturating_duration_since(Instant::now())),
                None => d,
            };
            let read = bound(every, leading);
            let seat_read = if stale_seat && !read.is_zero() {
                let r = tokio::time::timeout(read, catalog.leader(&election)).await;
                // A failed read is tried again on the next turn.
                stale_seat = !matches!(r, Ok(Ok(_)));
                Some(r)
            } else {
                None
            };
            if let Some(Ok(Ok(l))) = seat_read {
                // The seat is not (me, my term) any more: it was ended
                // (a fast-path vote, `autopilot failover`) or lost. Step
                // down now, before anything else: another node may win it
                // at once.
                if let Some((term, _)) = leading
                    && l.as_ref().is_none_or(|h| h.id != me.id || h.term != term)
                {
                    leading = None;
                    tracing::warn!(%election, term, holder = ?l.as_ref().map(|h| (&h.id, h.term)), "the seat is no longer this node's: demoting at once");
                    if tx.send(wrap(ElectionNews::Demoted(term))).await.is_err() {
                        return;
                    }
                }
                if last_leader.as_ref() != Some(&l) {
                    last_leader = Some(l.clone());
                    if tx.send(wrap(ElectionNews::Leader(l))).await.is_err() {
                        return;
                    }
                }
            }
            // The suspect tag follows the prober.
            let suspect = *suspect_rx.borrow_and_update();
            if suspect != reported_suspect {
                reported_suspect = suspect;
                if suspect.is_some() {
                    tracing::info!(%election, term = ?suspect, "the leader's agent and service both refuse connections: voting it dead");
                }
                if tx.send(wrap(ElectionNews::Suspect(suspect))).await.is_err() {
                    return;
                }
            }
            // Member records and intents. A leader's reads end by the time
            // its renewal is due (recomputed before each read): they must
            // never delay it (it reads them when a change wakes it).
            let cluster_read = |leading: Option<(u64, Instant)>| match leading {
                Some((_, sent)) => bound(
                    (sent + every).saturating_duration_since(Instant::now()),
                    leading,
                ),
                None => every,
            };
            let read = cluster_read(leading);
            if wanted && !read.is_zero() && (stale_members || known_members.is_none()) {
                known_members = crate::cluster::members(catalog.as_ref(), &election, read).await;
                stale_members = known_members.is_none();
            }
            let members = if wanted { known_members.clone() } else { None };
            let read = cluster_read(leading);
            if !read.is_zero() && (stale_intents || known_intents.is_none()) {
                known_intents = crate::cluster::intents(catalog.as_ref(), &election, read).await;
                stale_intents = known_intents.is_none();
            }
            let intents = known_intents.clone();
            let held = match &last_leader {
                Some(Some(l)) => Some(l.clone()),
                _ => None,
            };
            let now = start.elapsed();
            match &held {
                Some(l) => {
                    free_since = None;
                    last_holder = Some(l.clone());
                    if dead.as_ref().is_some_and(|d| *d != l.id) {
                        dead = None;
                    }
                }
                None => {
                    free_since.get_or_insert(now);
                }
            }
            // This candidate as it knows itself, whatever its record says.
            let members = members.map(|mut list| {
                let mine = cluster::Member {
                    id: me.id.clone(),
                    passing: true,
                    priority: settings.priority,
                    max_lag: settings.max_lag,
                    position: list.iter().find(|m| m.id == me.id).and_then(|m| m.position),
                    suspect,
                    probe: None,
                };
                list.retain(|m| m.id != me.id);
                list.push(mine);
                list
            });
            // The fast path: probe a leader that is not us, unless paused.
            let following = held.as_ref().filter(|l| l.id != me.id && leading.is_none());
            let target = match (following, &members, &intents) {
                (Some(l), Some(ms), Some(i)) if !i.paused => ms
                    .iter()
                    .find(|m| m.id == l.id)
                    .and_then(|m| crate::cluster::ProbeTarget::of(l, m)),
                _ => None,
            };
            target_tx.send_if_modified(|t| {
                let changed = *t != target;
                *t = target;
                changed
            });
            // A majority confirmed the leader (or, the seat now free, the
            // last holder) dead: it is left out of the ranking.
            if let (Some(l), Some(ms)) = (following.or(last_holder.as_ref()), &members)
                && l.id != me.id
                && cluster::confirmed_dead(ms, &l.id, l.term)
            {
                dead = Some(l.id.clone());
            }
            if let (Some(l), Some(ms), Some(i)) = (following, &members, &intents)
                && cluster::end_seat_due(&me.id, ms, &l.id, l.term, i)
            {
                let res = tokio::time::timeout(every, catalog.end_seat(&election, l)).await;
                match res {
                    Ok(Ok(true)) => {
                        tracing::warn!(%election, leader = %l.id, term = l.term, "a majority of members confirmed the leader dead (its agent and service refuse connections): its seat is ended now, not after its TTL");
                        last_leader = Some(None);
                        let _ = tx.send(wrap(ElectionNews::Leader(None))).await;
                        continue;
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%election, "ending the dead leader's seat failed: {e}")
                    }
                    Err(_) => {
                        tracing::warn!(%election, "ending the dead leader's seat: no answer in time")
                    }
                }
            }
            // Followers only campaign when the seat looks free: one read
            // instead of a lease grant and a transaction on every wake-up.
            let seat_taken =
                leading.is_none() && matches!(&last_leader, Some(Some(l)) if l.id != me.id);
            let due = match leading {
                Some((_, sent)) => Instant::now() >= sent + every,
                None => true,
            };
            let dead_ids: Vec<&str> = dead.iter().map(String::as_str).collect();
            let now_ms = autopilot_catalog::now_ms();
            // A switchover away from this node stands: it never takes the
            // seat back, not even as its own stale seat.
            let handing_over = match &intents {
                Some(i) => i.handing_over(&me.id, now_ms),
                None => handed_over.is_some_and(|d| d > now_ms),
            };
            if intents.is_some() && !handing_over {
                handed_over = None;
            }
            let step = match (&members, &intents) {
                _ if leading.is_none() && handing_over => Step::Wait,
                // Our own stale seat (a restart under the same ID): renew it.
                _ if leading.is_none() && held.as_ref().is_some_and(|l| l.id == me.id) => {
                    Step::Campaign
                }
                (Some(ms), Some(i)) => cluster::decide(&cluster::View {
                    me: &me.id,
                    members: ms,
                    leader: held.as_ref().map(|l| l.id.as_str()),
                    leading: leading.is_some(),
                    intents: i,
                    last_holder: last_holder.as_ref().map(|l| l.id.as_str()),
                    dead: &dead_ids,
                    free_since,
                    now,
                    now_ms,
                    ttl,
                }),
                // A leader renews whatever it could read.
                _ if leading.is_some() => Step::Campaign,
                // Intents read but not the members: any intent that
                // changes who campaigns makes this candidate wait (it
                // cannot tell whether it is the one allowed).
                (None, Some(i)) if i.constrains(now_ms) => Step::Wait,
                // Nothing constrains the seat, or nothing could be read:
                // the catalog's compare-and-swap decides.
                _ => Step::Campaign,
            };
            let mut wait_until = None;
            if wanted
                && let Some((term, _)) = leading
                && step == Step::Resign
            {
                tracing::info!(%election, term, "switchover: the target is ready; handing the seat over");
                leading = None;
                let _ = tx.send(wrap(ElectionNews::Demoted(term))).await;
                if let Err(e) = tokio::time::timeout(every, catalog.resign(&election))
                    .await
                    .unwrap_or(Ok(()))
                {
                    tracing::warn!(%election, "resign failed ({e}); the seat expires with its TTL");
                }
                // Handed over: this node is no longer the holder it knows
                // of (a stale read must not make it retake its own seat).
                last_leader = Some(None);
                last_holder = None;
                handed_over = intents
                    .as_ref()
                    .and_then(|i| i.switchover(now_ms))
                    .map(|s| s.deadline_ms);
                continue;
            }
            if leading.is_none() && !seat_taken && wanted {
                tracing::debug!(%election, ?step, members = ?members, intents = ?intents, "free seat");
            }
            if let Step::WaitUntil(t) = step {
                wait_until = Some(t);
            }
            if wanted && !seat_taken && due && step == Step::Campaign {
                let sent = Instant::now();
                let limit = bound(every, leading);
                let outcome = if limit.is_zero() {
                    None
                } else {
                    tokio::time::timeout(limit, catalog.campaign(&election, &me, ttl))
                        .await
                        .ok()
                };
                match outcome {
                    Some(Ok(Some(term))) => {
                        // Leading from now on: the deadline check covers
                        // whatever follows.
                        let before = leading.replace((term, sent));
                        if before.map(|(t, _)| t) != Some(term) {
                            if let Some((old, _)) = before {
                                let _ = tx.send(wrap(ElectionNews::Demoted(old))).await;
                            }
                            let _ = tx.send(wrap(ElectionNews::Elected(term))).await;
                            // A failover or switchover carried out is done:
                            // deleted on the side (never delaying a renewal),
                            // and only if it still holds what was acted on.
                            if let (Some(ms), Some(i)) = (&members, &intents) {
                                let done = cluster::done_on_win(&me.id, i, ms);
                                if !done.is_empty() {
                                    tokio::spawn(delete_done_intents(
                                        catalog.clone(),
                                        election.clone(),
                                        done,
                                        i.clone(),
                                        every,
                                    ));
                                }
                            }
                        }
                    }
                    Some(Ok(None)) => {
                        if let Some((term, _)) = leading.take() {
                            let _ = tx.send(wrap(ElectionNews::Demoted(term))).await;
                        }
                    }
                    Some(Err(e)) => tracing::debug!(%election, "campaign: {e}"),
                    None => tracing::debug!(%election, "campaign: no answer in time"),
                }
            }
            let wake = match leading {
                Some((_, sent)) => {
                    let next_renewal = (sent + every).saturating_duration_since(Instant::now());
                    bound(next_renewal.max(Duration::from_millis(20)), leading)
                }
                None => match wait_until {
                    Some(t) => t
                        .saturating_sub(start.elapsed())
                        .max(Duration::from_millis(5))
                        .min(every),
                    None => every,
                },
            };
            tokio::select! {
                r = seat_rx.changed() => if r.is_err() { return } else { stale_seat = true },
                r = members_rx.changed() => if r.is_err() { return } else { stale_members = true },
                r = intents_rx.changed() => if r.is_err() { return } else { stale_intents = true },
                r = want.changed() => if r.is_err() { return },
                r = suspect_rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wake) => {}
            }
        }
    })
}

/// Whether an intent's stored value is still the one that was acted on
/// (a newer intent written since must not be deleted).
fn intent_matches(
    key: &autopilot_core::cluster::IntentKey,
    raw: &str,
    acted: &autopilot_core::cluster::Intents,
) -> bool {
    use autopilot_core::cluster::IntentKey;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) else {
        return false;
    };
    let to = v.get("to").map(|t| t.as_str());
    let deadline = v.get("deadline_ms").and_then(|d| d.as_u64());
    match key {
        IntentKey::Failover => acted
            .failover
            .as_ref()
            .is_some_and(|f| to == Some(Some(f.to.as_str())) && deadline == Some(f.deadline_ms)),
        IntentKey::Switchover => acted.switchover.as_ref().is_some_and(|s| {
            v.get("from").and_then(|f| f.as_str()) == Some(s.from.as_str())
                && to.flatten() == s.to.as_deref()
                && v.get("at_ms").and_then(|a| a.as_u64()).unwrap_or(0) == s.at_ms
                && deadline == Some(s.deadline_ms)
        }),
        _ => false,
    }
}

/// Deletes the intents a new leader carried out, each only while it holds
/// the value acted on (`kv_delete_if`), each bounded by `limit`.
async fn delete_done_intents(
    catalog: Arc<dyn Catalog>,
    election: String,
    done: Vec<autopilot_core::cluster::IntentKey>,
    acted: autopilot_core::cluster::Intents,
    limit: Duration,
) {
    for k in done {
        let key = k.key(&election);
        let res = tokio::time::timeout(limit, async {
            match catalog.kv_get(&key).await? {
                Some(raw) if intent_matches(&k, &raw, &acted) => {
                    catalog.kv_delete_if(&key, &raw).await
                }
                _ => Ok(false),
            }
        })
        .await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%election, %key, "cannot delete the intent carried out: {e}")
            }
            Err(_) => {
                tracing::warn!(%election, %key, "deleting the intent carried out: no answer in time")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("autopilot-catalog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    fn local(dir: &std::path::Path, owner: &str) -> Arc<dyn Catalog> {
        Arc::new(autopilot_catalog_local::LocalCatalog::open(dir, owner).expect("open catalog"))
    }

    /// The first news `pick` accepts within `limit` (others are skipped).
    async fn news_within(
        rx: &mut mpsc::Receiver<ElectionNews>,
        limit: Duration,
        mut pick: impl FnMut(&ElectionNews) -> bool,
    ) -> Option<ElectionNews> {
        tokio::time::timeout(limit, async {
            while let Some(n) = rx.recv().await {
                if pick(&n) {
                    return Some(n);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    fn candidate(id: &str) -> Candidate {
        Candidate {
            id: id.into(),
            address: "127.0.0.1".into(),
            port: 1,
        }
    }

    /// Review finding 1: a leader whose seat another node ended (a
    /// fast-path vote, `autopilot failover`) steps down at once, not at its
    /// next renewal (ttl/3 later), since another node may win at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_whose_seat_was_ended_demotes_at_once() {
        let dir = scratch("endseat");
        let (a, b) = (local(&dir, "agent-a"), local(&dir, "agent-b"));
        // every = 10 s: the old code demoted only at the next renewal.
        let ttl = Duration::from_secs(30);
        let (_want_tx, want) = watch::channel(true);
        let (tx, mut rx) = mpsc::channel(64);
        let task = spawn_election(a, "e".into(), candidate("a"), ttl, want, tx, |n| n);
        let Some(ElectionNews::Elected(term)) =
            news_within(&mut rx, Duration::from_secs(10), |n| {
                matches!(n, ElectionNews::Elected(_))
            })
            .await
        else {
            panic!("a was never elected");
        };
        let leader = b.leader("e").await.expect("leader read").expect("held");
        assert_eq!((leader.id.as_str(), leader.term), ("a", term));
        assert!(b.end_seat("e", &leader).await.expect("end_seat"));
        let demoted = news_within(&mut rx, Duration::from_secs(3), |n| {
            matches!(n, ElectionNews::Demoted(_))
        })
        .await;
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(demoted, Some(ElectionNews::Demoted(term)));
    }

    /// Review finding 7: a carried-out intent is deleted only while it
    /// still holds the value acted on; a newer one written since stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_intent_is_not_deleted_as_carried_out() {
        use autopilot_core::cluster::{Failover, IntentKey, Intents, Switchover};
        let dir = scratch("intentdel");
        let c = local(&dir, "agent-a");
        let key = IntentKey::Failover.key("e");
        let acted = Intents {
            failover: Some(Failover {
                to: "b".into(),
                deadline_ms: 1000,
            }),
            switchover: Some(Switchover {
                from: "a".into(),
                to: None,
                at_ms: 0,
                deadline_ms: 2000,
            }),
            ..Intents::default()
        };
        // A newer failover (another target) replaced the one acted on.
        c.kv_put(&key, r#"{"to":"c","deadline_ms":1000}"#)
            .await
            .expect("put");
        delete_done_intents(
            c.clone(),
            "e".into(),
            vec![IntentKey::Failover],
            acted.clone(),
            Duration::from_secs(5),
        )
        .await;
        assert!(c.kv_get(&key).await.expect("get").is_some());
        // The one acted on goes.
        c.kv_put(&key, r#"{"to":"b","deadline_ms":1000}"#)
            .await
            .expect("put");
        let sw = IntentKey::Switchover.key("e");
        c.kv_put(&sw, r#"{"from":"a","to":null,"deadline_ms":2000}"#)
            .await
            .expect("put");
        delete_done_intents(
            c.clone(),
            "e".into(),
            vec![IntentKey::Failover, IntentKey::Switchover],
            acted.clone(),
            Duration::from_secs(5),
        )
        .await;
        assert!(c.kv_get(&key).await.expect("get").is_none());
        assert!(c.kv_get(&sw).await.expect("get").is_none());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!intent_matches(
            &IntentKey::Switchover,
            r#"{"from":"a","to":"x","deadline_ms":2000}"#,
            &acted
        ));
        assert!(!intent_matches(&IntentKey::Failover, "not json", &acted));
    }

    /// A real embedded catalog whose cluster reads (member records and
    /// intents) fail or never answer: a catalog under load or a member
    /// service that cannot be listed.
    struct ClusterReads {
        inner: Arc<dyn Catalog>,
        /// Member reads fail at once.
        fail_members: bool,
        /// Member and intent reads never answer (switched on by the test).
        stall: Arc<std::sync::atomic::AtomicBool>,
        /// After a resignation, every read (leader, members, intents)
        /// never answers.
        stall_after_resign: bool,
    }

    impl ClusterReads {
        fn stalled(&self) -> bool {
            self.stall.load(std::sync::atomic::Ordering::SeqCst)
        }

        async fn cut(&self) -> CatalogError {
            if self.stalled() {
                std::future::pending::<()>().await;
            }
            CatalogError::Unavailable {
                url: "test".into(),
                message: "cluster reads cut".into(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Catalog for ClusterReads {
        fn url(&self) -> &str {
            self.inner.url()
        }
        async fn register(&self, r: &Registration) -> Result<(), CatalogError> {
            self.inner.register(r).await
        }
        async fn set_status(&self, id: &str, st: Status) -> Result<bool, CatalogError> {
            self.inner.set_status(id, st).await
        }
        async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
            self.inner.deregister(id).await
        }
        async fn keep_alive(&self) -> Result<usize, CatalogError> {
            self.inner.keep_alive().await
        }
        async fn services(&self) -> Result<Vec<autopilot_catalog::ServiceSummary>, CatalogError> {
            self.inner.services().await
        }
        async fn instances(&self, svc: &str) -> Result<Vec<Instance>, CatalogError> {
            if svc.starts_with("_members.") && (self.fail_members || self.stalled()) {
                return Err(self.cut().await);
            }
            self.inner.instances(svc).await
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.inner.changes()
        }
        async fn kv_get(&self, k: &str) -> Result<Option<String>, CatalogError> {
            self.inner.kv_get(k).await
        }
        async fn kv_put(&self, k: &str, v: &str) -> Result<(), CatalogError> {
            self.inner.kv_put(k, v).await
        }
        async fn kv_cas(&self, k: &str, o: Option<&str>, v: &str) -> Result<bool, CatalogError> {
            self.inner.kv_cas(k, o, v).await
        }
        async fn kv_delete(&self, k: &str) -> Result<bool, CatalogError> {
            self.inner.kv_delete(k).await
        }
        async fn kv_delete_if(&self, k: &str, v: &str) -> Result<bool, CatalogError> {
            self.inner.kv_delete_if(k, v).await
        }
        async fn kv_list(&self, p: &str) -> Result<Vec<(String, String)>, CatalogError> {
            // Intents stall with the members; a failed members read alone
            // leaves the intents readable.
            if self.stalled() && p.starts_with("_cluster/") {
                return Err(self.cut().await);
            }
            self.inner.kv_list(p).await
        }
        async fn lock(&self, n: &str) -> Result<(), CatalogError> {
            self.inner.lock(n).await
        }
        async fn unlock(&self, n: &str) -> Result<(), CatalogError> {
            self.inner.unlock(n).await
        }
        async fn holds_lock(&self, n: &str) -> Result<bool, CatalogError> {
            self.inner.holds_lock(n).await
        }
        fn lock_ttl(&self) -> Duration {
            self.inner.lock_ttl()
        }
        async fn campaign(
            &self,
            e: &str,
            c: &Candidate,
            ttl: Duration,
        ) -> Result<Option<u64>, CatalogError> {
            self.inner.campaign(e, c, ttl).await
        }
        async fn resign(&self, e: &str) -> Result<(), CatalogError> {
            let res = self.inner.resign(e).await;
            if self.stall_after_resign {
                self.stall.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            res
        }
        async fn leader(&self, e: &str) -> Result<Option<Leader>, CatalogError> {
            if self.stall_after_resign && self.stalled() {
                std::future::pending::<()>().await;
            }
            self.inner.leader(e).await
        }
        async fn end_seat(&self, e: &str, l: &Leader) -> Result<bool, CatalogError> {
            self.inner.end_seat(e, l).await
        }
    }

    /// Review finding 5: the member records cannot be read, the intents
    /// can: a paused cluster still keeps this candidate off the free seat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn intents_apply_when_the_members_cannot_be_read() {
        let dir = scratch("nomembers");
        let real = local(&dir, "agent-a");
        let paused = autopilot_core::cluster::IntentKey::Paused.key("e");
        real.kv_put(&paused, r#"{"since_ms":1}"#)
            .await
            .expect("pause");
        let c: Arc<dyn Catalog> = Arc::new(ClusterReads {
            inner: real.clone(),
            fail_members: true,
            stall: Arc::default(),
            stall_after_resign: false,
        });
        let (_want_tx, want) = watch::channel(true);
        let (tx, mut rx) = mpsc::channel(64);
        let task = spawn_election(
            c,
            "e".into(),
            candidate("a"),
            Duration::from_secs(3),
            want,
            tx,
            |n| n,
        );
        let elected = |n: &ElectionNews| matches!(n, ElectionNews::Elected(_));
        let early = news_within(&mut rx, Duration::from_secs(2), elected).await;
        // Resumed: it campaigns (the wait was the intent's doing).
        real.kv_delete(&paused).await.expect("resume");
        let late = news_within(&mut rx, Duration::from_secs(5), elected).await;
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(early, None, "campaigned in a paused cluster");
        assert!(late.is_some(), "never campaigned after resume");
    }

    /// Review finding 3: cluster reads that never answer, started by a
    /// change between two renewals, never delay the leader's renewal (ttl
    /// 3 s: renewal every 1 s, demotion 2.4 s after the last one sent; the
    /// old code let the two reads run 1 s each from the wake-up).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_cluster_reads_never_delay_a_renewal() {
        let dir = scratch("stallreads");
        let real = local(&dir, "agent-a");
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c: Arc<dyn Catalog> = Arc::new(ClusterReads {
            inner: real.clone(),
            fail_members: false,
            stall: stall.clone(),
            stall_after_resign: false,
        });
        let (_want_tx, want) = watch::channel(true);
        let (tx, mut rx) = mpsc::channel(64);
        let task = spawn_election(
            c,
            "e".into(),
            candidate("a"),
            Duration::from_secs(3),
            want,
            tx,
            |n| n,
        );
        let elected = news_within(&mut rx, Duration::from_secs(10), |n| {
            matches!(n, ElectionNews::Elected(_))
        })
        .await;
        assert!(elected.is_some(), "never elected");
        // 0.6 s after the first renewal was sent: reads stall from now on,
        // and a change wakes the leader.
        tokio::time::sleep(Duration::from_millis(600)).await;
        stall.store(true, std::sync::atomic::Ordering::SeqCst);
        real.kv_put("bump", "1").await.expect("bump");
        let demoted = news_within(&mut rx, Duration::from_secs(6), |n| {
            matches!(n, ElectionNews::Demoted(_))
        })
        .await;
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(demoted, None, "a healthy leader demoted");
    }

    /// Review finding 4: a leader that resigned for a switchover never
    /// retakes its seat while the switchover stands, even when every read
    /// after the resignation goes unanswered (the old code took its own
    /// seat back as "stale" and flapped Demoted/Elected).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_switchover_leader_does_not_retake_its_seat() {
        let dir = scratch("noretake");
        let real = local(&dir, "agent-a");
        // b: a passing member record (its agent is not running, so the
        // seat stays free after a resigns).
        let b = local(&dir, "agent-b");
        b.register(&Registration {
            id: "e.b".into(),
            name: "_members.e".into(),
            address: "127.0.0.1".into(),
            port: 2,
            tags: vec!["priority=1".into()],
            status: Status::Passing,
            ttl: Duration::from_secs(60),
            deregister_critical_after: None,
            seat: None,
        })
        .await
        .expect("b's record");
        let c: Arc<dyn Catalog> = Arc::new(ClusterReads {
            inner: real.clone(),
            fail_members: false,
            stall: Arc::default(),
            stall_after_resign: true,
        });
        let (_want_tx, want) = watch::channel(true);
        let (tx, mut rx) = mpsc::channel(64);
        let task = spawn_election(
            c,
            "e".into(),
            candidate("a"),
            Duration::from_secs(3),
            want,
            tx,
            |n| n,
        );
        let elected = |n: &ElectionNews| matches!(n, ElectionNews::Elected(_));
        assert!(
            news_within(&mut rx, Duration::from_secs(10), elected)
                .await
                .is_some()
        );
        let deadline = autopilot_catalog::now_ms() + 60_000;
        real.kv_put(
            &autopilot_core::cluster::IntentKey::Switchover.key("e"),
            &format!(r#"{{"from":"a","to":"b","at_ms":0,"deadline_ms":{deadline}}}"#),
        )
        .await
        .expect("switchover");
        let demoted = news_within(&mut rx, Duration::from_secs(5), |n| {
            matches!(n, ElectionNews::Demoted(_))
        })
        .await;
        let again = news_within(&mut rx, Duration::from_secs(4), elected).await;
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(demoted.is_some(), "never handed over");
        assert_eq!(again, None, "took its own seat back during the switchover");
    }

    fn with_password() -> autopilot_config::EtcdConfig {
        autopilot_config::EtcdConfig {
            username: Some("agent".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn hook_env_passes_a_private_password_file_never_the_password() {
        let dir = scratch("hookenv");
        let env = hook_env("etcd://127.0.0.1:2379/x", &with_password(), &dir).expect("env");
        assert!(
            env.iter()
                .all(|(k, v)| k != PASSWORD_VAR && !v.contains("s3cret"))
        );
        let file = env
            .iter()
            .find(|(k, _)| k == PASSWORD_FILE_VAR)
            .map(|(_, v)| PathBuf::from(v))
            .expect("password file variable");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "s3cret");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second agent start replaces its own stale file.
        hook_env("etcd://127.0.0.1:2379/x", &with_password(), &dir).expect("again");
        // Without a password there is no file.
        let none = hook_env("etcd://127.0.0.1:2379/x", &Default::default(), &dir).expect("env");
        assert!(none.iter().all(|(k, _)| k != PASSWORD_FILE_VAR));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_password_file_is_never_written_through_a_symlink() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("etcd-password")).expect("symlink");
        let env = hook_env("etcd://h/x", &with_password(), &dir).expect("env");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
        let file = dir.join("etcd-password");
        assert!(
            !std::fs::symlink_metadata(&file)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        assert!(env.iter().any(|(k, _)| k == PASSWORD_FILE_VAR));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_read_the_password_file_and_the_variable_wins() {
        let dir = scratch("pwfile");
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").expect("write");
        let mut env = BTreeMap::from([(PASSWORD_FILE_VAR.to_string(), file.display().to_string())]);
        let got = etcd_settings(&Default::default(), &env).expect("settings");
        assert_eq!(got.password.as_deref(), Some("from-file"));
        env.insert(PASSWORD_VAR.into(), "from-env".into());
        let got = etcd_settings(&Default::default(), &env).expect("settings");
        assert_eq!(got.password.as_deref(), Some("from-env"));
        // Only one trailing newline is trimmed.
        std::fs::write(&file, "two\n\n").expect("write");
        env.remove(PASSWORD_VAR);
        let got = etcd_settings(&Default::default(), &env).expect("settings");
        assert_eq!(got.password.as_deref(), Some("two\n"));
        // A missing file is an error naming it.
        env.insert(
            PASSWORD_FILE_VAR.into(),
            dir.join("nope").display().to_string(),
        );
        let err = etcd_settings(&Default::default(), &env).expect_err("missing file");
        assert!(err.contains("nope"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn on_etcd(etcd: &autopilot_testkit::Etcd, prefix: &str) -> Arc<dyn Catalog> {
        let settings = autopilot_config::EtcdConfig {
            lease_ttl: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        open(
            &format!("etcd://{}/{prefix}", etcd.endpoint()),
            "a",
            &settings,
        )
        .await
        .expect("open")
    }

    fn reg(id: &str, seat: Option<autopilot_catalog::Seat>) -> Registration {
        Registration {
            id: id.into(),
            name: "web".into(),
            address: "127.0.0.1".into(),
            port: 80,
            tags: vec![],
            status: Status::Passing,
            ttl: Duration::from_secs(10),
            deregister_critical_after: None,
            seat,
        }
    }

    async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_seat_is_not_an_outage_and_is_not_retried() {
        let dir = autopilot_testkit::TempDir::new("registrar-seat");
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        let catalog = on_etcd(&etcd, "seat").await;
        let r = Registrar::start(catalog.clone());
        let seat = |term| {
            Some(autopilot_catalog::Seat {
                election: "e".into(),
                term,
            })
        };
        // A term this agent does not hold (a lost seat's; won terms count up from 1).
        r.put(reg("web-1", seat(99)));
        r.put(reg("web-2", None));
        r.flush(Duration::from_secs(5)).await;
        let st = r.state();
        assert_eq!(st.error, None, "a lost seat does not degrade the catalog");
        assert_eq!(st.failures, 0);
        assert_eq!(st.applied.keys().collect::<Vec<_>>(), ["web-2"]);
        // Not retried: the same registration again changes nothing.
        r.put(reg("web-1", seat(99)));
        r.flush(Duration::from_secs(5)).await;
        assert!(!r.state().applied.contains_key("web-1"));
        // A changed registration (the seat won) is applied.
        let me = Candidate {
            id: "web-1".into(),
            address: "127.0.0.1".into(),
            port: 80,
        };
        let term = catalog
            .campaign("e", &me, Duration::from_secs(2))
            .await
            .expect("campaign")
            .expect("won");
        r.put(reg("web-1", seat(term)));
        r.flush(Duration::from_secs(5)).await;
        assert_eq!(r.state().applied.get("web-1"), Some(&Status::Passing));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_past_their_ttl_without_keep_alive_are_not_claimed() {
        let dir = autopilot_testkit::TempDir::new("registrar-expiry");
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        let r = Registrar::start(on_etcd(&etcd, "expiry").await);
        r.put(reg("web-1", None));
        r.flush(Duration::from_secs(5)).await;
        assert!(r.state().applied.contains_key("web-1"));
        etcd.pause();
        let paused = std::time::Instant::now();
        let gone = eventually(Duration::from_secs(8), || r.state().applied.is_empty()).await;
        let after = paused.elapsed();
        let st = r.state();
        etcd.resume();
        assert!(gone, "still claimed {after:?} into a stall: {st:?}");
        // The last keep-alive went out at most TTL/3 before the stall.
        assert!(
            after >= Duration::from_millis(1300),
            "not before the TTL: {after:?}"
        );
        assert!(
            st.error.is_some() && st.failures > 0 && st.failing_since.is_some(),
            "{st:?}"
        );
        // Back when etcd answers, and the outage is over.
        assert!(
            eventually(Duration::from_secs(3), || r
                .state()
                .applied
                .contains_key("web-1"))
            .await,
            "{:?}",
            r.state()
        );
        assert!(eventually(Duration::from_secs(3), || r.state().failing_since.is_none()).await);
        assert_eq!(r.state().failures, 0);
    }

    #[test]
    fn scrub_secrets_removes_the_password_only() {
        let mut env = BTreeMap::from([
            (PASSWORD_VAR.to_string(), "s3cret".to_string()),
            ("AUTOPILOT_ETCD_USERNAME".to_string(), "agent".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        scrub_secrets(&mut env);
        assert!(!env.contains_key(PASSWORD_VAR));
        assert_eq!(env.len(), 2);
    }

    /// The embedded catalog, with `resign` held until `release` turns true:
    /// a retired campaign's resignation that is slow to run.
    struct SlowResign {
        inner: autopilot_catalog_local::LocalCatalog,
        release: watch::Receiver<bool>,
    }

    #[async_trait::async_trait]
    impl Catalog for SlowResign {
        fn url(&self) -> &str {
            self.inner.url()
        }
        async fn register(&self, r: &Registration) -> Result<(), CatalogError> {
            self.inner.register(r).await
        }
        async fn set_status(&self, id: &str, s: Status) -> Result<bool, CatalogError> {
            self.inner.set_status(id, s).await
        }
        async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
            self.inner.deregister(id).await
        }
        async fn keep_alive(&self) -> Result<usize, CatalogError> {
            self.inner.keep_alive().await
        }
        async fn services(&self) -> Result<Vec<autopilot_catalog::ServiceSummary>, CatalogError> {
            self.inner.services().await
        }
        async fn instances(&self, s: &str) -> Result<Vec<Instance>, CatalogError> {
            self.inner.instances(s).await
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.inner.changes()
        }
        async fn kv_get(&self, k: &str) -> Result<Option<String>, CatalogError> {
            self.inner.kv_get(k).await
        }
        async fn kv_put(&self, k: &str, v: &str) -> Result<(), CatalogError> {
            self.inner.kv_put(k, v).await
        }
        async fn kv_cas(&self, k: &str, o: Option<&str>, v: &str) -> Result<bool, CatalogError> {
            self.inner.kv_cas(k, o, v).await
        }
        async fn kv_delete(&self, k: &str) -> Result<bool, CatalogError> {
            self.inner.kv_delete(k).await
        }
        async fn kv_list(&self, p: &str) -> Result<Vec<(String, String)>, CatalogError> {
            self.inner.kv_list(p).await
        }
        async fn lock(&self, n: &str) -> Result<(), CatalogError> {
            self.inner.lock(n).await
        }
        async fn unlock(&self, n: &str) -> Result<(), CatalogError> {
            self.inner.unlock(n).await
        }
        async fn holds_lock(&self, n: &str) -> Result<bool, CatalogError> {
            self.inner.holds_lock(n).await
        }
        fn lock_ttl(&self) -> Duration {
            self.inner.lock_ttl()
        }
        async fn campaign(
            &self,
            e: &str,
            me: &Candidate,
            ttl: Duration,
        ) -> Result<Option<u64>, CatalogError> {
            self.inner.campaign(e, me, ttl).await
        }
        async fn resign(&self, e: &str) -> Result<(), CatalogError> {
            let mut release = self.release.clone();
            let _ = release.wait_for(|r| *r).await;
            self.inner.resign(e).await
        }
        async fn leader(&self, e: &str) -> Result<Option<Leader>, CatalogError> {
            self.inner.leader(e).await
        }
    }

    /// A reload replaced an elected job: the new campaign runs under the
    /// same candidate ID, and the old campaign's resignation is slow. The
    /// new campaign must not win (renew) the old seat the resignation then
    /// deletes: it waits for the old task to end and takes a new term.
    #[tokio::test]
    async fn a_new_campaign_waits_for_the_retired_one_to_resign() {
        let dir = scratch("retired-campaign");
        let (release_tx, release) = watch::channel(false);
        let catalog: Arc<dyn Catalog> = Arc::new(SlowResign {
            inner: autopilot_catalog_local::LocalCatalog::open(&dir, "agent").expect("open"),
            release,
        });
        let me = Candidate {
            id: "db-node".into(),
            address: "127.0.0.1".into(),
            port: 5432,
        };
        let ttl = Duration::from_secs(30);
        /// The next `Elected` or `Demoted`, within `within`.
        async fn news(
            rx: &mut mpsc::Receiver<ElectionNews>,
            within: Duration,
        ) -> Option<ElectionNews> {
            tokio::time::timeout(within, async {
                loop {
                    match rx.recv().await {
                        Some(ElectionNews::Leader(_)) => continue,
                        n => return n,
                    }
                }
            })
            .await
            .ok()
            .flatten()
        }
        let wait = Duration::from_secs(10);
        let (want_old, want) = watch::channel(true);
        let (tx, mut old_rx) = mpsc::channel(16);
        let old = spawn_election(
            catalog.clone(),
            "e".into(),
            me.clone(),
            ttl,
            want,
            tx,
            |n| n,
        );
        let Some(ElectionNews::Elected(first)) = news(&mut old_rx, wait).await else {
            panic!("the old campaign leads")
        };
        // Its job is retired: the campaign steps down; the resignation hangs.
        want_old.send(false).expect("old campaign runs");
        drop(want_old);
        assert_eq!(
            news(&mut old_rx, wait).await,
            Some(ElectionNews::Demoted(first))
        );
        let (done_tx, done) = watch::channel(false);
        tokio::spawn(async move {
            let _ = old.await;
            let _ = done_tx.send(true);
        });
        let (_want_new, want) = watch::channel(true);
        let (tx, mut new_rx) = mpsc::channel(16);
        let _new = spawn_election_after(
            vec![done],
            catalog.clone(),
            "e".into(),
            me.clone(),
            ttl,
            ClusterSettings::default(),
            want,
            tx,
            |n| n,
        );
        // While the old campaign has not resigned, the new one waits: it
        // must not renew the old seat (same candidate ID) that the
        // resignation would then delete. A bounded window, as an absence
        // has no event to wait on; without the wait it wins within ms.
        assert_eq!(news(&mut new_rx, Duration::from_millis(500)).await, None);
        release_tx.send(true).expect("release");
        let Some(ElectionNews::Elected(second)) = news(&mut new_rx, wait).await else {
            panic!("the new campaign leads")
        };
        assert!(second > first, "a new seat: {second} after {first}");
        let held = catalog.leader("e").await.expect("read").expect("a seat");
        assert_eq!((held.id.as_str(), held.term), ("db-node", second));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
