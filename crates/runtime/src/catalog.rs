//! The agent's side of the catalog: opening a backend by URL, the registrar that converges entries to the wanted state, and watch tasks.

use std::collections::BTreeMap;
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
        password: var("AUTOPILOT_ETCD_PASSWORD").or(cfg.password.clone()),
        lease_ttl,
    })
}

/// The catalog connection as variables for hooks: `autopilot kv`, `lock`,
/// `leader` and `template render` run by a job reach the agent's catalog
/// with the agent's credentials, whether the environment or the config
/// chose them. (Not the lease TTL: a hook's own session is short-lived.)
pub fn hook_env(url: &str, etcd: &autopilot_config::EtcdConfig) -> Vec<(String, String)> {
    let mut env = vec![("AUTOPILOT_CATALOG".to_string(), url.to_string())];
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    for (k, v) in [
        ("AUTOPILOT_ETCD_CA", path(&etcd.ca)),
        ("AUTOPILOT_ETCD_CERT", path(&etcd.cert)),
        ("AUTOPILOT_ETCD_KEY", path(&etcd.key)),
        ("AUTOPILOT_ETCD_USERNAME", etcd.username.clone()),
        ("AUTOPILOT_ETCD_PASSWORD", etcd.password.clone()),
    ] {
        if let Some(v) = v {
            env.push((k.to_string(), v));
        }
    }
    env
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
            Ok(Arc::new(
                autopilot_catalog_etcd::EtcdCatalog::connect(opts, owner).await?,
            ))
        }
        CatalogUrl::Consul { .. } => Err(CatalogError::Unsupported {
            url: url.to_string(),
            backend: "consul".into(),
        }),
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
    /// Entries as they are in the catalog now, by ID.
    pub applied: BTreeMap<String, Status>,
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
    error: Option<String>,
    retry: Duration,
    retry_at: Option<Instant>,
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
        for id in ids {
            let res = match (self.desired.get(&id), self.applied.get(&id)) {
                (Some(d), Some(a)) if d == a => Ok(()),
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
                Ok(()) => match self.desired.get(&id) {
                    Some(d) => {
                        self.applied.insert(id, d.clone());
                    }
                    None => {
                        self.applied.remove(&id);
                    }
                },
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
        if self.error.take().is_some() {
            tracing::info!(
                catalog = self.catalog.url(),
                "catalog reachable again; registrations restored"
            );
        }
        self.retry = RETRY_MIN;
        self.retry_at = None;
    }

    fn fail(&mut self, e: CatalogError) {
        let msg = e.to_string();
        if self.error.as_deref() != Some(&msg) {
            tracing::warn!("{msg}; retrying in {:?}", self.retry);
        }
        self.error = Some(msg);
        self.retry_at = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(RETRY_MAX);
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
        error: None,
        retry: RETRY_MIN,
        retry_at: None,
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
                        Cmd::Remove(id) => { w.desired.remove(&id); }
                        Cmd::Flush(tx) => flush = Some(tx),
                    }
                    next = rx.try_recv().ok();
                }
                if w.retry_at.is_none() || flush.is_some() {
                    w.reconcile().await;
                }
                if let Some(tx) = flush { let _ = tx.send(()); }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(next_keep_alive)), if retry_at.is_some() => {
                // A failed keep-alive is retried too: after an outage it
                // renews the session (re-writing every entry) even when
                // nothing else changed.
                if !w.applied.is_empty() {
                    match w.catalog.keep_alive().await {
                        Ok(n) if n < w.applied.len() => {
                            w.applied.retain(|_, r| r.status == Status::Critical);
                        }
                        Ok(_) => {}
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
                match w.catalog.keep_alive().await {
                    Ok(n) if n < w.applied.len() => {
                        // Some entries vanished (they expired while this agent
                        // was stalled): re-register them. Critical ones stay
                        // gone, which is what deregisterCriticalServiceAfter asked.
                        w.applied.retain(|_, r| r.status == Status::Critical);
                        w.reconcile().await;
                    }
                    Ok(_) => {}
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
        let mut changes = catalog.changes();
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
    mut want: watch::Receiver<bool>,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(ElectionNews) -> M + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let margin = (ttl / 5).max(Duration::from_millis(300));
        let every = ttl / 3;
        let mut changes = catalog.changes();
        // (term, send time of the last successful renewal)
        let mut leading: Option<(u64, Instant)> = None;
        let mut last_leader: Option<Option<Leader>> = None;
        // The instant a leader must have stepped down by.
        let deadline = |sent: Instant| sent + ttl - margin;
        loop {
            changes.borrow_and_update();
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
            if !read.is_zero()
                && let Ok(Ok(l)) = tokio::time::timeout(read, catalog.leader(&election)).await
                && last_leader.as_ref() != Some(&l)
            {
                last_leader = Some(l.clone());
                if tx.send(wrap(ElectionNews::Leader(l))).await.is_err() {
                    return;
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
            if wanted && !seat_taken && due {
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
                        if leading.map(|(t, _)| t) != Some(term) {
                            if let Some((old, _)) = leading {
                                let _ = tx.send(wrap(ElectionNews::Demoted(old))).await;
                            }
                            let _ = tx.send(wrap(ElectionNews::Elected(term))).await;
                        }
                        leading = Some((term, sent));
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
                None => every,
            };
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = want.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wake) => {}
            }
        }
    })
}
