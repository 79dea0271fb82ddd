//! Jobs that run an artifact, and the config bundle: one task per unit pulls the version its rollout wants, installs it, has the agent switch and restart, runs probation, publishes its member record and advances the rollout's gate.
//!
//! Decisions (which version an instance runs, what probation concludes,
//! whether the gate moves) are `autopilot_core::rollout`'s; this module only
//! reads the catalog, moves files and reports. Every catalog call is bounded
//! by [`CATALOG_DEADLINE`]. While no rollout is active a task reads nothing
//! until the catalog's change revision moves, so an idle fleet costs the
//! catalog nothing beyond the agents' keep-alives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_artifact::Current;
use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_core::rollout::{self, Desired, Member, MemberState, Probation, Rollout, State};
use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::Registrar;

/// Every catalog read or write of this module.
pub const CATALOG_DEADLINE: Duration = Duration::from_secs(2);
/// The safety-net re-check while a rollout moves (Rolling, RollingBack).
pub const ACTIVE_RECHECK: Duration = Duration::from_secs(10);
/// How long after a switch the new version may take to start running
/// (beyond the probation window) before its probation fails.
const START_GRACE: Duration = Duration::from_secs(60);
/// A failed install is tried again no sooner than this, doubling for each
/// failure of the same want up to [`RETRY_MAX`].
const RETRY_AFTER: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// An install is given at least this long, or the time at 1 MiB/s.
const INSTALL_MIN: Duration = Duration::from_secs(300);
const INSTALL_RATE: u64 = 1 << 20;
pub use autopilot_core::rollout::{ORIGINAL, member_id};

/// Why reading a rollout or installing a version failed (its text becomes
/// a failed member's reason).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{what}: no answer from the catalog within 2s")]
    Deadline { what: String },
    #[error("{what}: {source}")]
    Catalog {
        what: String,
        #[source]
        source: autopilot_catalog::CatalogError,
    },
    #[error("reading the rollouts of {name}: {reason}")]
    Record { name: String, reason: String },
    #[error("artifact {name} {version}: {source}")]
    Store {
        name: String,
        version: String,
        #[source]
        source: autopilot_snapshot::StoreError,
    },
    /// Already names the artifact and version.
    #[error(transparent)]
    Artifact(#[from] autopilot_artifact::Error),
    #[error("artifact {name} {version}: no such version in the catalog")]
    NoVersion { name: String, version: String },
    #[error("artifact {name} {version}: the record's checksum {got} is not the rollout's {want}")]
    Mismatch {
        name: String,
        version: String,
        got: String,
        want: String,
    },
    #[error("artifact {name} {version}: not installed within {secs}s")]
    Slow {
        name: String,
        version: String,
        secs: u64,
    },
    /// The agent did not switch (its reason).
    #[error("{0}")]
    Switch(String),
}

/// The sha a version on disk goes by in specs and member records.
pub fn sha_of(c: &Current) -> Option<String> {
    match c {
        Current::Sha(s) => Some(s.clone()),
        Current::Original => Some(ORIGINAL.to_string()),
        Current::Missing => None,
    }
}

/// The sha of what `dest/current` points at.
pub fn current_sha(dest: &Path) -> Option<String> {
    sha_of(&autopilot_artifact::current(dest))
}

/// What a unit (a job with an `artifact`, or the config bundle) is.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The artifact's name.
    pub artifact: String,
    pub dest: PathBuf,
    pub store: String,
    /// The member's instance ID (the job's entry ID, or `autopilot-<host>`).
    pub instance: String,
    /// Where the member record says the instance serves.
    pub address: String,
    pub port: u16,
    pub ttl: Duration,
}

/// What the agent tells a unit's task about what it runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Health {
    /// The sha the running spec was started with.
    pub sha: Option<String>,
    pub running: bool,
    pub passing: bool,
    /// Why the last health check failed, if it did.
    pub why: Option<String>,
    /// The machine is in maintenance: probation is suspended, not failed.
    pub maintenance: bool,
    /// How many times the job went from passing to not passing (outside
    /// maintenance): counted by [`HealthSender`], so a dip between two reads
    /// of the watch is not missed. The agent leaves it 0.
    pub dips: u64,
}

impl Health {
    fn up(&self) -> bool {
        self.running && self.passing
    }
}

/// The agent's end of a unit's health watch.
pub struct HealthSender(watch::Sender<Health>);

impl HealthSender {
    /// Lets `modify` update the health (its return value is ignored: a
    /// change is what differs afterwards); counts a dip when the job stopped
    /// passing outside maintenance. Returns whether anything changed.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut Health) -> bool) -> bool {
        self.0.send_if_modified(|h| {
            let before = h.clone();
            modify(h);
            h.dips = before.dips;
            if before.up() && !h.up() && !h.maintenance {
                h.dips = h.dips.wrapping_add(1);
            }
            *h != before
        })
    }

    /// Replaces the health (the counter is kept and moved as above).
    pub fn send(&self, health: Health) -> bool {
        self.send_if_modified(|h| {
            *h = health;
            true
        })
    }
}

/// A version installed and verified, ready to run: the agent switches
/// `current` to it (a bundle's config is validated first) and restarts the
/// job, or reloads, and replies whether it did.
#[derive(Debug)]
pub struct Ready {
    pub to: Current,
    pub version: String,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What /status shows of a unit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UnitStatus {
    pub artifact: String,
    pub version: String,
    pub sha: String,
    pub state: String,
    pub rollout: Option<u64>,
    pub reason: String,
}

/// A unit's task, as the agent holds it.
pub struct Task {
    pub unit: Unit,
    pub health: HealthSender,
    pub status: Arc<Mutex<UnitStatus>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The latest rollout record of an artifact: its key, its exact text (the
/// compare-and-swap's expected value) and the record.
#[derive(Debug, Clone)]
pub struct Latest {
    pub key: String,
    pub raw: String,
    pub rollout: Rollout,
}

/// Reads the latest rollout of `name` (the highest id), under the deadline.
pub async fn latest(catalog: &dyn Catalog, name: &str) -> Result<Option<Latest>, FleetError> {
    let prefix = rollout::rollouts_prefix(name);
    let what = || format!("reading the rollouts of {name}");
    let list = tokio::time::timeout(CATALOG_DEADLINE, catalog.kv_list(&prefix))
        .await
        .map_err(|_| FleetError::Deadline { what: what() })?
        .map_err(|source| FleetError::Catalog {
            what: what(),
            source,
        })?;
    let Some((id, key, raw)) = list
        .into_iter()
        .filter_map(|(k, v)| Some((rollout::parse_rollout_key(name, &k)?, k, v)))
        .max_by_key(|(id, _, _)| *id)
    else {
        return Ok(None);
    };
    let rollout = rollout::decode(name, id, &raw).map_err(|reason| FleetError::Record {
        name: name.to_string(),
        reason,
    })?;
    Ok(Some(Latest { key, raw, rollout }))
}

/// What the latest record wants this instance to run: `None` when it runs
/// what it has (no record).
fn wanted(l: Option<&Latest>, instance: &str) -> Want {
    match rollout::desired(l.map(|l| &l.rollout), instance) {
        Desired::Run(t) => Want::Run {
            version: t.version,
            sha: t.sha256,
        },
        Desired::Original => Want::Original,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    Run { version: String, sha: String },
    Original,
}

impl Want {
    fn sha(&self) -> &str {
        match self {
            Want::Run { sha, .. } => sha,
            Want::Original => ORIGINAL,
        }
    }
    fn version(&self) -> &str {
        match self {
            Want::Run { version, .. } => version,
            Want::Original => ORIGINAL,
        }
    }
    fn current(&self) -> Current {
        match self {
            Want::Run { sha, .. } => Current::Sha(sha.clone()),
            Want::Original => Current::Original,
        }
    }
}

/// The artifact record of the version `want` names, checked against the
/// rollout's sha (`None` for the original: nothing to fetch).
async fn record(
    catalog: &dyn Catalog,
    unit: &Unit,
    want: &Want,
) -> Result<Option<autopilot_artifact::Record>, FleetError> {
    let Want::Run { version, sha } = want else {
        return Ok(None);
    };
    let name = &unit.artifact;
    let rec = tokio::time::timeout(
        CATALOG_DEADLINE,
        autopilot_artifact::get(catalog, name, version),
    )
    .await
    .map_err(|_| FleetError::Deadline {
        what: format!("artifact {name} {version}"),
    })??
    .ok_or_else(|| FleetError::NoVersion {
        name: name.clone(),
        version: version.clone(),
    })?;
    if rec.sha256 != *sha {
        return Err(FleetError::Mismatch {
            name: name.clone(),
            version: version.clone(),
            got: rec.sha256,
            want: sha.clone(),
        });
    }
    Ok(Some(rec))
}

/// How long an install of `size` bytes may take.
fn install_limit(size: u64) -> Duration {
    INSTALL_MIN.max(Duration::from_secs(size / INSTALL_RATE))
}

/// Fetches, verifies and unpacks `rec` into `dest`, within
/// [`install_limit`].
async fn install_record(unit: &Unit, rec: &autopilot_artifact::Record) -> Result<(), FleetError> {
    let name = &unit.artifact;
    let version = &rec.version;
    let store = autopilot_snapshot::open(&unit.store).map_err(|source| FleetError::Store {
        name: name.clone(),
        version: version.clone(),
        source,
    })?;
    autopilot_artifact::check_dest(&unit.dest)?;
    let limit = install_limit(rec.size);
    match tokio::time::timeout(
        limit,
        autopilot_artifact::install(store.as_ref(), rec, &unit.dest),
    )
    .await
    {
        Ok(r) => r.map(|_| ()).map_err(FleetError::from),
        Err(_) => Err(FleetError::Slow {
            name: name.clone(),
            version: version.clone(),
            secs: limit.as_secs(),
        }),
    }
}

/// Fetches, verifies and unpacks the version `want` names into `dest`
/// (nothing to fetch for the original).
async fn install(catalog: &dyn Catalog, unit: &Unit, want: &Want) -> Result<(), FleetError> {
    match record(catalog, unit, want).await? {
        Some(rec) => install_record(unit, &rec).await,
        None => Ok(()),
    }
}

/// How a fetch in the worker ended.
enum Fetched {
    Done,
    Failed(FleetError),
    /// The record changed and wants something else.
    Cancelled,
}

/// The last install that failed: not tried again before `at + delay`.
struct Retry {
    key: String,
    at: tokio::time::Instant,
    delay: Duration,
}

/// How long after a failure of `key` to try again: doubling while the same
/// want fails, from [`RETRY_AFTER`] up to [`RETRY_MAX`].
fn retry_delay(last: Option<&Retry>, key: &str) -> Duration {
    match last {
        Some(f) if f.key == key => f.delay.saturating_mul(2).min(RETRY_MAX),
        _ => RETRY_AFTER,
    }
}

/// What a failed install is remembered by: a change of the record's
/// rollout, target, state or unit resets the back-off.
fn retry_key(l: &Latest, want: &Want) -> String {
    format!(
        "{}/{}/{}/{}",
        l.rollout.id,
        want.sha(),
        l.rollout.state.as_str(),
        l.rollout.unit
    )
}

/// Before a job first starts: puts the version its rollout wants in place,
/// when the record can be read within the deadline; otherwise (or with no
/// record) the job runs what is on disk. Returns the sha it will run.
pub async fn prepare(catalog: &dyn Catalog, unit: &Unit) -> Option<String> {
    let on_disk = current_sha(&unit.dest);
    let l = match latest(catalog, &unit.artifact).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(artifact = %unit.artifact, "{e}; running what is on disk");
            return on_disk;
        }
    };
    if l.is_none() {
        tracing::info!(artifact = %unit.artifact, sha = on_disk.as_deref().unwrap_or("none"), "no rollout record: running what is on disk");
        return on_disk;
    }
    let want = wanted(l.as_ref(), &unit.instance);
    if on_disk.as_deref() == Some(want.sha()) {
        return on_disk;
    }
    tracing::info!(artifact = %unit.artifact, version = %want.version(), "installing the version the rollout wants before the first start");
    let done = match install(catalog, unit, &want).await {
        Ok(()) => autopilot_artifact::switch(&unit.dest, &want.current()).map_err(FleetError::from),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => Some(want.sha().to_string()),
        Err(e) => {
            tracing::error!(artifact = %unit.artifact, "{e}; running what is on disk");
            on_disk
        }
    }
}

/// Starts a unit's task: `to_agent` wraps each [`Ready`] into the agent's
/// message type.
pub fn spawn<M: Send + 'static>(
    catalog: Arc<dyn Catalog>,
    registrar: Registrar,
    unit: Unit,
    initial: Health,
    tx: mpsc::Sender<M>,
    to_agent: impl Fn(Ready) -> M + Send + Sync + 'static,
) -> Task {
    let (health_tx, health) = watch::channel(initial);
    let health_tx = HealthSender(health_tx);
    let status = Arc::new(Mutex::new(UnitStatus {
        artifact: unit.artifact.clone(),
        ..Default::default()
    }));
    let mut t = Worker {
        catalog,
        registrar,
        unit: unit.clone(),
        status: status.clone(),
        health,
        member: Member {
            instance: unit.instance.clone(),
            sha256: String::new(),
            version: String::new(),
            state: MemberState::Ok,
            rollout: None,
            passing: false,
            reason: String::new(),
        },
        published: None,
        probation: None,
        awaiting_run: false,
        failed: None,
        suspended: false,
        dips_seen: 0,
        latest: None,
        started: tokio::time::Instant::now(),
    };
    let task = tokio::spawn(async move { t.run(tx, to_agent).await });
    Task {
        unit,
        health: health_tx,
        status,
        task,
    }
}

struct Worker {
    catalog: Arc<dyn Catalog>,
    registrar: Registrar,
    unit: Unit,
    status: Arc<Mutex<UnitStatus>>,
    health: watch::Receiver<Health>,
    member: Member,
    published: Option<Registration>,
    /// The probation of the version switched to, until it ends.
    probation: Option<Probation>,
    /// Switched, and the job has not run the new version yet.
    awaiting_run: bool,
    /// The last install that failed, and when: not tried again at once.
    failed: Option<Retry>,
    /// The probation is suspended by maintenance: its clock restarts when
    /// maintenance ends.
    suspended: bool,
    /// The health's dip counter as last seen.
    dips_seen: u64,
    latest: Option<Latest>,
    started: tokio::time::Instant,
}

impl Worker {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn run<M: Send>(&mut self, tx: mpsc::Sender<M>, to_agent: impl Fn(Ready) -> M + Sync) {
        // Its rollout records and the member records its gate reads: no
        // other write wakes it.
        let mut changes = crate::catalog::changes_under_any(
            self.catalog.as_ref(),
            &[
                format!("kv/{}", rollout::rollouts_prefix(&self.unit.artifact)),
                format!(
                    "instances/{}/",
                    rollout::member_service(&self.unit.artifact)
                ),
            ],
        );
        let h = self.health.borrow().clone();
        self.member.sha256 = h.sha.clone().unwrap_or_else(|| ORIGINAL.to_string());
        self.member.version = if self.member.sha256 == ORIGINAL {
            ORIGINAL.to_string()
        } else {
            // Until a record names it.
            self.member.sha256.chars().take(12).collect()
        };
        self.dips_seen = h.dips;
        let mut read = true;
        let mut first = true;
        loop {
            if read {
                changes.borrow_and_update();
                match latest(self.catalog.as_ref(), &self.unit.artifact).await {
                    Ok(l) => self.latest = l,
                    Err(e) => tracing::warn!(artifact = %self.unit.artifact, "{e}"),
                }
                if let Some(v) = self.status_version(&self.member.sha256) {
                    self.member.version = v;
                }
                if std::mem::take(&mut first) {
                    self.resume().await;
                }
                if !self.converge(&mut changes, &tx, &to_agent).await {
                    return;
                }
                self.gate().await;
            }
            self.follow_health();
            self.publish();
            let active = self
                .latest
                .as_ref()
                .is_some_and(|l| l.rollout.state.moving());
            let probation = self
                .probation
                .as_ref()
                .filter(|_| !self.suspended)
                .and_then(Probation::next_deadline)
                .map(|d| self.started + d);
            // Armed only while ahead: a retry that came due re-reads once.
            let retry = self
                .failed
                .as_ref()
                .map(|f| f.at + f.delay)
                .filter(|due| *due > tokio::time::Instant::now());
            read = tokio::select! {
                r = changes.changed() => { if r.is_err() { return; } true }
                r = self.health.changed() => { if r.is_err() { return; } false }
                _ = sleep_opt(active.then(|| tokio::time::Instant::now() + ACTIVE_RECHECK)) => true,
                _ = sleep_opt(probation) => false,
                _ = sleep_opt(retry) => true,
            };
        }
    }

    /// After a (re)start: a failure this member already published for the
    /// same rollout and sha stands (whatever the record's state); otherwise a
    /// job already running the version a moving rollout switches it to has
    /// not proved it here yet, so it goes through probation again.
    async fn resume(&mut self) {
        let Some(l) = self.latest.clone() else {
            return;
        };
        let r = &l.rollout;
        let Some(running) = self.health.borrow().sha.clone() else {
            return;
        };
        let switched = match r.state {
            State::Rolling => {
                rollout::unit_of(r, &self.unit.instance) <= r.unit && running == r.target.sha256
            }
            State::RollingBack => wanted(Some(&l), &self.unit.instance).sha() == running,
            _ => false,
        };
        if !switched && wanted(Some(&l), &self.unit.instance).sha() != running {
            return;
        }
        let version = self
            .status_version(&running)
            .unwrap_or_else(|| self.member.version.clone());
        if let Some(m) = self.own_member().await
            && m.state == MemberState::Failed
            && m.rollout == Some(r.id)
            && m.sha256 == running
        {
            tracing::info!(artifact = %self.unit.artifact, rollout = r.id, "this instance already failed this rollout: {}", m.reason);
            self.set(
                &running,
                &version,
                MemberState::Failed,
                Some(r.id),
                &m.reason,
            );
            return;
        }
        if !switched {
            return;
        }
        tracing::info!(artifact = %self.unit.artifact, version = %version, rollout = r.id, "running the version a moving rollout switched to: probation again");
        self.set(&running, &version, MemberState::Starting, Some(r.id), "");
        self.awaiting_run = true;
        let window = p_duration(Some(&l)).saturating_add(START_GRACE);
        self.probation = Some(Probation::new(window, self.now()));
    }

    /// This instance's own member record, if it is still live.
    async fn own_member(&self) -> Option<Member> {
        let service = rollout::member_service(&self.unit.artifact);
        let id = member_id(&self.unit.artifact, &self.unit.instance);
        let list = match tokio::time::timeout(CATALOG_DEADLINE, self.catalog.instances(&service))
            .await
        {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::warn!(artifact = %self.unit.artifact, "reading this member's record: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!(artifact = %self.unit.artifact, "reading this member's record: no answer within 2s");
                return None;
            }
        };
        let i = list.iter().find(|i| i.id == id)?;
        rollout::parse_member(
            &self.unit.artifact,
            &i.id,
            &i.tags,
            i.status == Status::Passing,
        )
    }

    /// Moves to the version the latest record wants, if this instance does
    /// not run it. Returns false when the agent is gone.
    async fn converge<M: Send>(
        &mut self,
        changes: &mut watch::Receiver<u64>,
        tx: &mpsc::Sender<M>,
        to_agent: &(impl Fn(Ready) -> M + Sync),
    ) -> bool {
        loop {
            // No record: what is on disk is what runs.
            let Some(l) = self.latest.clone() else {
                return true;
            };
            let want = wanted(Some(&l), &self.unit.instance);
            let running = self.health.borrow().sha.clone();
            if running.as_deref() == Some(want.sha()) || self.member.sha256 == want.sha() {
                return true;
            }
            let key = retry_key(&l, &want);
            if let Some(f) = &self.failed
                && f.key == key
                && f.at.elapsed() < f.delay
            {
                return true;
            }
            tracing::info!(artifact = %self.unit.artifact, version = %want.version(), rollout = l.rollout.id, "fetching the version the rollout wants");
            // Kept to put back if the fetch is called off.
            let before = (
                self.member.clone(),
                self.probation.take(),
                std::mem::take(&mut self.awaiting_run),
                std::mem::take(&mut self.suspended),
            );
            // Until it switches, the member says what it runs.
            let running_sha = running.clone().unwrap_or_else(|| ORIGINAL.to_string());
            let running_version = self
                .status_version(&running_sha)
                .unwrap_or_else(|| self.member.version.clone());
            self.set(
                &running_sha,
                &running_version,
                MemberState::Fetching,
                Some(l.rollout.id),
                "",
            );
            self.publish();
            let mut fetched = self.fetch(&want, changes).await;
            if matches!(fetched, Fetched::Done) {
                // The record may have moved on during the install.
                match latest(self.catalog.as_ref(), &self.unit.artifact).await {
                    Ok(now) => {
                        if wanted(now.as_ref(), &self.unit.instance) != want {
                            fetched = Fetched::Cancelled;
                        }
                        self.latest = now;
                    }
                    Err(e) => {
                        tracing::warn!(artifact = %self.unit.artifact, "{e}; switching to what the record wanted")
                    }
                }
            }
            let outcome = match fetched {
                Fetched::Cancelled => {
                    tracing::info!(artifact = %self.unit.artifact, version = %want.version(), "the rollout wants another version now: not switched");
                    (
                        self.member,
                        self.probation,
                        self.awaiting_run,
                        self.suspended,
                    ) = before;
                    continue;
                }
                Fetched::Failed(e) => Err(e),
                Fetched::Done => {
                    let (reply, answer) = oneshot::channel();
                    let ready = Ready {
                        to: want.current(),
                        version: want.version().to_string(),
                        reply,
                    };
                    if tx.send(to_agent(ready)).await.is_err() {
                        return false;
                    }
                    answer
                        .await
                        .unwrap_or_else(|_| Err("the agent is stopping".to_string()))
                        .map_err(FleetError::Switch)
                }
            };
            match outcome {
                Ok(()) => {
                    self.failed = None;
                    self.set(
                        want.sha(),
                        want.version(),
                        MemberState::Starting,
                        Some(l.rollout.id),
                        "",
                    );
                    self.awaiting_run = true;
                    // Until the new version runs (its job stops first, through
                    // its stop timeout) this only catches a job that never does.
                    let window = p_duration(Some(&l)).saturating_add(START_GRACE);
                    self.probation = Some(Probation::new(window, self.now()));
                }
                Err(e) => {
                    let reason = e.to_string();
                    let delay = retry_delay(self.failed.as_ref(), &key);
                    tracing::error!(artifact = %self.unit.artifact, version = %want.version(), "{reason}; the running version stays (next try in {}s)", delay.as_secs());
                    self.failed = Some(Retry {
                        key,
                        at: tokio::time::Instant::now(),
                        delay,
                    });
                    self.set(
                        &running_sha,
                        &running_version,
                        MemberState::Failed,
                        Some(l.rollout.id),
                        &reason,
                    );
                }
            }
            return true;
        }
    }

    /// Installs what `want` names, called off when the record changes to
    /// want something else (the new record is then `self.latest`).
    async fn fetch(&mut self, want: &Want, changes: &mut watch::Receiver<u64>) -> Fetched {
        let rec = match record(self.catalog.as_ref(), &self.unit, want).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Fetched::Done,
            Err(e) => return Fetched::Failed(e),
        };
        let unit = self.unit.clone();
        let install = install_record(&unit, &rec);
        tokio::pin!(install);
        let mut watching = true;
        loop {
            tokio::select! {
                r = &mut install => {
                    return match r {
                        Ok(()) => Fetched::Done,
                        Err(e) => Fetched::Failed(e),
                    };
                }
                r = changes.changed(), if watching => {
                    if r.is_err() {
                        watching = false;
                        continue;
                    }
                    changes.borrow_and_update();
                    match latest(self.catalog.as_ref(), &self.unit.artifact).await {
                        Ok(now) => {
                            let moved = wanted(now.as_ref(), &self.unit.instance) != *want;
                            self.latest = now;
                            if moved {
                                return Fetched::Cancelled;
                            }
                        }
                        Err(e) => tracing::warn!(artifact = %self.unit.artifact, "{e}"),
                    }
                }
            }
        }
    }

    /// The version name of a sha, as the latest record knows it.
    fn status_version(&self, sha: &str) -> Option<String> {
        if sha == ORIGINAL {
            return Some(ORIGINAL.to_string());
        }
        let r = &self.latest.as_ref()?.rollout;
        [Some(&r.target), r.from.as_ref()]
            .into_iter()
            .flatten()
            .find(|t| t.sha256 == sha)
            .map(|t| t.version.clone())
    }

    fn set(&mut self, sha: &str, version: &str, state: MemberState, id: Option<u64>, reason: &str) {
        self.member.sha256 = sha.to_string();
        self.member.version = version.to_string();
        self.member.state = state;
        self.member.rollout = id;
        self.member.reason = reason.chars().take(rollout::REASON_CAP).collect();
    }

    /// Feeds the job's health to the probation of the version it switched
    /// to; the probation's verdict becomes the member's state.
    fn follow_health(&mut self) {
        let h = self.health.borrow_and_update().clone();
        let dipped = h.dips != self.dips_seen;
        self.dips_seen = h.dips;
        let now = self.now();
        if h.maintenance {
            // Not serving (critical), but not a failure of the version.
            self.member.passing = false;
            if self.probation.is_some() && !self.suspended {
                tracing::info!(artifact = %self.unit.artifact, "maintenance: probation suspended");
                self.suspended = true;
            }
            return;
        }
        self.member.passing = h.up();
        let mut dipped = dipped;
        if std::mem::take(&mut self.suspended)
            && let Some(p) = self.probation.as_mut()
        {
            // The whole window again, from the end of maintenance.
            let mut window = p_duration(self.latest.as_ref());
            if self.awaiting_run {
                window = window.saturating_add(START_GRACE);
            }
            *p = Probation::new(window, now);
            dipped = false;
            tracing::info!(artifact = %self.unit.artifact, "maintenance over: probation restarted");
        }
        // The probation window opens with the first run of the new version
        // (the one opened when the agent accepted the switch catches a job
        // that never starts).
        if self.awaiting_run && h.running && h.sha.as_deref() == Some(self.member.sha256.as_str()) {
            self.awaiting_run = false;
            self.probation = Some(Probation::new(p_duration(self.latest.as_ref()), now));
        }
        let Some(p) = self.probation.as_mut() else {
            return;
        };
        if !self.awaiting_run {
            // A dip between two reads of the watch still fails probation.
            if dipped {
                p.health(false, now);
            }
            p.health(self.member.passing, now);
        }
        let state = p.tick(now);
        if state == MemberState::Failed {
            let up = h.up();
            let why = match (h.running, h.why) {
                (false, _) => "the job is not running".to_string(),
                (true, Some(why)) => why,
                (true, None) if up => "its health check failed in between".to_string(),
                (true, None) => "its health check is not passing".to_string(),
            };
            self.member.reason = format!("probation failed: {} ({why})", p.reason())
                .chars()
                .take(rollout::REASON_CAP)
                .collect();
            tracing::error!(artifact = %self.unit.artifact, version = %self.member.version, "{}", self.member.reason);
        }
        if !(self.awaiting_run && state == MemberState::Probation) {
            self.member.state = state;
        }
        if matches!(state, MemberState::Ok | MemberState::Failed) {
            self.probation = None;
            self.awaiting_run = false;
        }
    }

    /// Publishes the member record (when it changed) and the status.
    fn publish(&mut self) {
        {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            *s = UnitStatus {
                artifact: self.unit.artifact.clone(),
                version: self.member.version.clone(),
                sha: self.member.sha256.clone(),
                state: self.member.state.as_str().to_string(),
                rollout: self.member.rollout,
                reason: self.member.reason.clone(),
            };
        }
        let r = Registration {
            id: member_id(&self.unit.artifact, &self.unit.instance),
            name: rollout::member_service(&self.unit.artifact),
            tags: rollout::member_tags(&self.member),
            address: self.unit.address.clone(),
            port: self.unit.port,
            status: if self.member.passing {
                Status::Passing
            } else {
                Status::Critical
            },
            ttl: self.unit.ttl,
            deregister_critical_after: None,
            seat: None,
        };
        if self.published.as_ref() != Some(&r) {
            self.registrar.put(r.clone());
            self.published = Some(r);
        }
    }

    /// Advances the latest rollout when its gate holds: any agent may, and
    /// a lost compare-and-swap means another one did.
    async fn gate(&mut self) {
        let Some(l) = self.latest.clone() else {
            return;
        };
        if !l.rollout.state.moving() {
            return;
        }
        let service = rollout::member_service(&self.unit.artifact);
        let list = match tokio::time::timeout(CATALOG_DEADLINE, self.catalog.instances(&service))
            .await
        {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::warn!(artifact = %self.unit.artifact, "reading the members: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(artifact = %self.unit.artifact, "reading the members: no answer within 2s");
                return;
            }
        };
        let members: Vec<Member> = list
            .iter()
            .filter_map(|i| {
                rollout::parse_member(
                    &self.unit.artifact,
                    &i.id,
                    &i.tags,
                    i.status == Status::Passing,
                )
            })
            .collect();
        let now = autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms());
        let by = format!("agent {}", self.unit.instance);
        let Some(next) = rollout::evaluate(&l.rollout, &members, &now, &by) else {
            return;
        };
        let json = rollout::encode(&next);
        match tokio::time::timeout(
            CATALOG_DEADLINE,
            self.catalog.kv_cas(&l.key, Some(&l.raw), &json),
        )
        .await
        {
            Ok(Ok(true)) => {
                tracing::info!(artifact = %self.unit.artifact, rollout = next.id, state = ?next.state, unit = next.unit, "rollout advanced");
                self.latest = Some(Latest {
                    key: l.key,
                    raw: json,
                    rollout: next,
                });
            }
            // Someone else advanced it; the change brings the new record.
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(artifact = %self.unit.artifact, "advancing the rollout: {e}")
            }
            Err(_) => {
                tracing::warn!(artifact = %self.unit.artifact, "advancing the rollout: no answer within 2s")
            }
        }
    }
}

fn p_duration(l: Option<&Latest>) -> Duration {
    Duration::from_millis(l.map_or(0, |l| l.rollout.probation_ms))
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Health {
        Health {
            sha: Some("a".repeat(64)),
            running: true,
            passing: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_dip_overwritten_before_the_task_reads_is_still_counted() {
        let (tx, mut rx) = watch::channel(up());
        let tx = HealthSender(tx);
        rx.borrow_and_update();
        // Down and up again between two reads: the watch keeps only the latest.
        assert!(tx.send(Health {
            passing: false,
            ..up()
        }));
        assert!(tx.send(up()));
        assert!(rx.has_changed().expect("open"));
        let h = rx.borrow_and_update().clone();
        assert!(h.up());
        assert_eq!(h.dips, 1);
        // The agent's own value (dips 0) does not reset the count or wake the task.
        assert!(!tx.send(up()));
        assert_eq!(rx.borrow().dips, 1);
    }

    #[test]
    fn maintenance_is_not_a_dip() {
        let (tx, rx) = watch::channel(up());
        let tx = HealthSender(tx);
        tx.send(Health {
            passing: false,
            maintenance: true,
            ..up()
        });
        tx.send(up());
        assert_eq!(rx.borrow().dips, 0);
        // A job that stops running is one.
        tx.send(Health {
            running: false,
            ..up()
        });
        assert_eq!(rx.borrow().dips, 1);
    }

    #[test]
    fn failed_installs_back_off_to_an_hour_and_reset_on_a_new_want() {
        let mut last: Option<Retry> = None;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let delay = retry_delay(last.as_ref(), "1/abc/rolling/0");
            delays.push(delay.as_secs());
            last = Some(Retry {
                key: "1/abc/rolling/0".into(),
                at: tokio::time::Instant::now(),
                delay,
            });
        }
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(last.as_ref(), "1/abc/rolling/1"), RETRY_AFTER);
    }

    #[test]
    fn an_install_gets_five_minutes_or_one_second_per_mib() {
        assert_eq!(install_limit(0), INSTALL_MIN);
        assert_eq!(install_limit(100 << 20), INSTALL_MIN);
        assert_eq!(install_limit(1000 << 20), Duration::from_secs(1000));
        assert_eq!(install_limit(u64::MAX), Duration::from_secs(u64::MAX >> 20));
    }
}
