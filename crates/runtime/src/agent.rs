//! The agent's event loop: feeds signals, exits, timers, control commands and watchdog reports to the core machine, carries out its actions, and runs the per-job repair and fleet tasks beside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, Seat, Status,
};
use autopilot_config::Config;
use autopilot_core::{
    Action, Endpoint, EntryStatus, Event, EventCode, ExitStatus, Input, Machine, Phase, ProcKind,
    Role, RunId, Sig, StopReason, WatchState,
};
use autopilot_process::{Exit, SpawnSpec, Spawner};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::catalog::{ElectionNews, Registrar, spawn_election_after, spawn_watch};
use crate::control::{self, Command};
use crate::interfaces;
use crate::logging::LogHandle;
use crate::metrics::Metrics;

use crate::fleet;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Spawner(#[from] autopilot_process::SpawnError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// `jobs[index].interfaces` matches no address of this host.
    #[error("job {job}: interfaces: {message}")]
    Interfaces {
        job: String,
        index: usize,
        message: String,
    },
    /// `telemetry.interfaces` matches no address of this host.
    #[error("telemetry: interfaces: {0}")]
    TelemetryInterfaces(String),
    /// The telemetry listener cannot be bound (`telemetry.port`).
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// The `dns` block's server cannot start (`dns.listen`, `dns.domain`).
    #[error("dns: {0}")]
    Dns(#[source] autopilot_dns::DnsError),
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Settings(String),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
}

/// The TTL of entries whose job has no health check (as ContainerPilot's
/// telemetry service had).
const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(15);
/// When the start-up code's pages are unmapped (crate::trim): after the
/// first spawns, health checks and registrations have run.
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

pub struct Options {
    pub config: Config,
    /// The environment jobs inherit and the config is rendered with.
    pub env: BTreeMap<String, String>,
    pub socket: PathBuf,
    /// Reap orphans even when not PID 1 (`-pid1`/`--init`).
    pub init: bool,
    pub log: LogHandle,
    /// The catalog URL, already chosen from flag, environment, config and default.
    pub catalog_url: String,
    /// Whether the URL was chosen explicitly (config `catalog` or $AUTOPILOT_CATALOG).
    pub catalog_explicit: bool,
    /// The host name used in entry IDs (`$AUTOPILOT_HOSTNAME` or the system's).
    pub hostname: String,
    /// Where per-job state directories live (they persist across runs).
    pub job_state_root: PathBuf,
    /// The git commit the binary was built from (`autopilot_build_info`).
    pub commit: String,
}

enum Msg {
    /// The announce gate withdrew every prefix before a stop (or gave up
    /// after its deadline) and the drain time passed: stop the jobs now.
    AnnounceDrained {
        why: &'static str,
    },
    Exited {
        run: RunId,
        exit: Exit,
    },
    /// A native (`http`/`tcp`) check finished: `Err` says why it failed.
    Probed {
        run: RunId,
        result: Result<(), crate::probe::ProbeError>,
    },
    Control(Command),
    /// Tasks name their watch or job by a key that survives a reload's
    /// renumbering (a task of a dropped watch or job finds no key).
    Watch {
        key: u64,
        passing: Vec<Instance>,
    },
    Election {
        key: u64,
        news: ElectionNews,
    },
    Prepared {
        key: u64,
        ok: bool,
    },
    /// Try again to publish a watch's held-back snapshot.
    WatchRetry {
        key: u64,
    },
    /// The task of a campaign a reload retired has ended; every message it
    /// sent came before this one.
    CampaignEnded {
        key: u64,
    },
    /// A job's reinit watch (see [`crate::cluster::watch_reinit`]).
    Reinit {
        key: u64,
        news: crate::cluster::ReinitNews,
    },
    /// A unit's task installed a version: switch to it and restart the job
    /// (`job` names it) or reload the config bundle (`None`).
    Fleet {
        job: Option<String>,
        ready: fleet::Ready,
    },
    /// A repair job's task asks for a step, a demotion or an event.
    Repair {
        job: String,
        request: crate::repair::Request,
    },
    /// A reimage's restore ended: `note` is why the step did not reimage
    /// (the job then starts on its old data, or after a plain restore).
    Reimaged {
        key: u64,
        ok: bool,
        note: Option<String>,
    },
    /// A `replace` step's hook ended: stop everything and exit with `code`.
    Replaced {
        job: String,
        code: i32,
    },
    /// A watchdog's reported status (or message) changed.
    Watchdog(crate::watchdog::WatchdogReport),
    /// A switch run off the event loop returned: for the bundle, with the
    /// config it loaded.
    Switched {
        job: Option<String>,
        ready: fleet::Ready,
        outcome: Result<Option<Box<Loaded>>, String>,
    },
}

/// A job's campaign: the channel that turns it on and off, and its task.
struct Campaign {
    want: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    election: String,
    /// The candidate ID it campaigns under (the job's entry ID).
    id: String,
}

/// The campaign of a job a reload dropped or replaced, while its task may
/// still be stepping down and resigning.
struct Retired {
    /// The key its messages carry.
    key: u64,
    election: String,
    id: String,
    /// Turns true when its task has ended.
    done: watch::Receiver<bool>,
}

struct RunMeta {
    /// `None` for a native check, which runs as a task, not a process.
    pid: Option<u32>,
    /// A native check's task, aborted when the machine kills the run.
    probe: Option<tokio::task::AbortHandle>,
    job: usize,
    kind: ProcKind,
    started: Instant,
}

struct Agent {
    machine: Machine,
    config: Config,
    /// A validated config waiting for the running jobs to stop.
    next_config: Option<(Config, Vec<Option<IpAddr>>)>,
    base_env: BTreeMap<String, String>,
    put_env: BTreeMap<String, String>,
    job_ips: Vec<Option<IpAddr>>,
    runs: HashMap<RunId, RunMeta>,
    spawner: Spawner,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Msg>,
    start: Instant,
    queue: VecDeque<Action>,
    log: LogHandle,
    catalog: Arc<dyn Catalog>,
    registrar: Registrar,
    hostname: String,
    watch_states: Vec<WatchState>,
    watch_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Per watch: the key its task's messages carry.
    watch_keys: Vec<u64>,
    /// Per job: the key its election and restore tasks' messages carry;
    /// kept by a reload that keeps the job.
    job_keys: Vec<u64>,
    next_key: u64,
    /// A reload's old jobs have stopped: take the new config once the
    /// actions queued before it are carried out.
    adopt_due: bool,
    /// Where watch snapshots are written for handlers: the private scratch
    /// directory, removed when `_scratch` is dropped.
    state_dir: PathBuf,
    _scratch: tempfile::TempDir,
    /// Per watch: the latest snapshot not yet published because its
    /// instances file could not be written (retried; never published stale).
    watch_pending: Vec<Option<Vec<Instance>>>,
    /// Consecutive failures to write a watch's instances file.
    watch_failures: Vec<u32>,
    /// Per job: what its restore before start is waiting for, if anything.
    restore_progress: Vec<Arc<std::sync::Mutex<Option<String>>>>,
    telemetry_id: Option<String>,
    /// Per job: its campaign, once started.
    campaigns: Vec<Option<Campaign>>,
    /// Campaigns a reload retired whose tasks may still run: their news is
    /// routed by election, and a new campaign for the same election starts
    /// only after they end (a late resignation under the same candidate ID
    /// would delete the new seat).
    retired: Vec<Retired>,
    /// The last known leader of each election.
    leaders: BTreeMap<String, Option<Leader>>,
    /// Where each job's persistent state directory lives.
    job_state_root: PathBuf,
    /// `AUTOPILOT_CATALOG`, `AUTOPILOT_ETCD_*` (see `catalog::hook_env`) and
    /// `AUTOPILOT_SOCKET` for children.
    hook_env: Vec<(String, String)>,
    /// Per template: its render task, and the counter its `when` event bumps.
    templates: Vec<(tokio::task::JoinHandle<()>, watch::Sender<u64>)>,
    /// Per job: why its last health check failed, for the `unhealthy` log line.
    check_failures: HashMap<String, String>,
    /// Per job: how its last run ended and how long it lasted, to tell a
    /// crash loop from a restart after a long run.
    last_runs: HashMap<String, (ExitStatus, std::time::Duration)>,
    /// Member records published, by member record ID, with their presence
    /// listeners.
    members: BTreeMap<String, MemberRecord>,
    /// Per election: the replication position a hook published.
    positions: BTreeMap<String, u64>,
    /// Per election: the leader term this agent's campaign confirmed dead.
    suspects: BTreeMap<String, u64>,
    /// A reinit accepted, then claimed, waiting for its job to stop (see
    /// [`Agent::reinit_news`]).
    reinit_pending: Option<Reinit>,
    /// Per job key: the task watching that job's reinit intent (jobs with
    /// an election), whether or not the job campaigns.
    reinit_watches: BTreeMap<u64, tokio::task::JoinHandle<()>>,
    /// The last reinit refusal logged (job key, requested_ms, why): a watch
    /// asks again every few seconds, and the same refusal is logged once.
    reinit_refused: Option<(u64, u64, String)>,
    /// Per job with an `artifact` (by name: a restart on a new version
    /// keeps the task): the task that pulls its versions.
    fleet: BTreeMap<String, fleet::Task>,
    /// The config bundle's task, when the config has a `bundle`.
    bundle_task: Option<fleet::Task>,
    bundle: Option<autopilot_config::BundleConfig>,
    /// The bundle version the running config came from.
    bundle_sha: Option<String>,
    /// Versions ready while a reload was under way: one reload at a time.
    fleet_pending: VecDeque<(Option<String>, fleet::Ready)>,
    /// The bundle version a reload in flight switches to: it becomes
    /// `bundle_sha` only when that reload is adopted, so the bundle's
    /// probation does not open on the old jobs.
    next_bundle_sha: Option<Option<String>>,
    /// The config file given on the command line: what a bundle's
    /// `original` runs, and what a reload reads with no bundle installed.
    bootstrap: PathBuf,
    /// An `autopilot reload` that arrived during another reload: carried
    /// out once that one is adopted.
    reload_queued: bool,
    /// A version's switch runs off the event loop: no reload starts until
    /// it returns.
    switching: bool,
    /// Per job with a `repair` block (by name: a reload that keeps the job
    /// and its repair settings keeps the task): its repair task.
    repairs: BTreeMap<String, crate::repair::Task>,
    /// Per job: a restart or reimage step waiting for the job to start
    /// again, with why it did not do what it should (answered `ok: false`).
    repair_steps: BTreeMap<String, Option<String>>,
    /// Per repair job: the leadership last told to its task.
    repair_leading: BTreeMap<String, bool>,
    /// Per repair job: the step outcomes already counted in metrics.
    repair_counted: BTreeMap<String, usize>,
    /// The watchdogs' reported status, in config order (from the set's view).
    watchdogs: Vec<crate::repair::WatchdogShown>,
    /// The running watchdogs and the specs they were started with.
    watchdog_set: Option<(
        crate::watchdog::WatchdogSet,
        Vec<autopilot_core::spec::WatchdogSpec>,
    )>,
    /// `true` while the registrar is healthy (the `catalog` watchdog).
    catalog_ok: watch::Sender<bool>,
    /// A `replace` step: the agent exits with this code once its jobs stopped.
    exit_override: Option<i32>,
    /// Jobs whose process exit is being handled (for the crashloop watchdogs).
    exited_jobs: Vec<usize>,
    /// This agent's catalog session (`<host>/<pid>/<start ms>`).
    session: String,
    /// When the agent started (RFC 3339), for the `_nodes` entry.
    started_at: String,
    /// The `_nodes` entry last handed to the registrar.
    node_entry: Option<Registration>,
    /// Job health transitions for `_fleet/health/<node>`.
    health_log: crate::node::HealthLog,
    /// The maintenance intent task.
    intent_task: Option<tokio::task::JoinHandle<()>>,
    /// The announce gate's task per job with `announce`, by job name.
    announcers: BTreeMap<String, crate::announce::Announcer>,
    /// Set while the prefixes are withdrawn ahead of a stop.
    announce_draining: bool,
}

/// A reinit in progress. While it stands its job does not campaign; a job
/// that led at any time since it was accepted is never emptied.
struct Reinit {
    /// The job's key, name and candidate ID.
    key: u64,
    job: String,
    id: String,
    requested_ms: u64,
    /// The data directory to empty once the job has stopped.
    dir: PathBuf,
    /// Whether the intent was deleted.
    claimed: bool,
    /// Whether the job's campaign task has ended (retired when the reinit
    /// was accepted): only then can no win be reported any more, so the
    /// job's stop waits for it.
    quiet: bool,
    /// Whether this node was recorded as the election's leader since.
    led: bool,
    /// What the machine last asked of the job's campaign, applied if the
    /// reinit is given up.
    want_campaign: bool,
}

/// A member record this agent publishes for a running elected job.
struct MemberRecord {
    /// The election the record is for (its stored position goes with it).
    election: String,
    /// The candidate's IP the presence listener was opened on (a reload
    /// that changes it reopens the listener).
    ip: IpAddr,
    /// `None` when it cannot be opened on the candidate's address (one
    /// that is advertised but not local): no fast path for this member.
    presence: Option<crate::cluster::Presence>,
    published: Registration,
}

/// Resolves the advertised IP of every job with a port.
fn job_ips(config: &Config) -> Result<Vec<Option<IpAddr>>, AgentError> {
    let addrs = interfaces::host_addresses();
    config
        .jobs
        .iter()
        .enumerate()
        .map(|(index, j)| match j.port {
            None => Ok(None),
            Some(_) => interfaces::resolve(&j.interfaces, &addrs)
                .map(Some)
                .map_err(|message| AgentError::Interfaces {
                    job: j.name.clone(),
                    index,
                    message,
                }),
        })
        .collect()
}

/// Sets each artifact job's `artifact_sha` to what `dest/current` holds:
/// a reloaded config restarts only the jobs whose version changed.
fn stamp_artifacts(cfg: &mut Config) {
    for j in &mut cfg.jobs {
        if let Some(a) = &j.artifact {
            j.artifact_sha = fleet::current_sha(&a.dest);
        }
    }
}

/// With a config bundle installed (`bundle.dest/current/<file>`), its config
/// runs instead of the bootstrap file; a bundle config that no longer loads
/// leaves the bootstrap file in charge. Returns the bundle settings and the
/// sha of the bundle version in use.
fn bundle_config(
    cfg: &mut Config,
    env: &BTreeMap<String, String>,
) -> (Option<autopilot_config::BundleConfig>, Option<String>) {
    let Some(b) = cfg.bundle.clone() else {
        return (None, None);
    };
    let file = b.dest.join("current").join(&b.file);
    if !file.exists() {
        tracing::info!(bootstrap = %cfg.path.display(), bundle = %b.name, "no config bundle installed yet ({}): running the bootstrap file", file.display());
        return (Some(b), None);
    }
    match autopilot_config::load(&file, env) {
        Ok(next) => {
            tracing::info!(bootstrap = %cfg.path.display(), config = %file.display(), "running the config bundle's config, not the bootstrap file");
            let sha = fleet::current_sha(&b.dest);
            let b = next.bundle.clone().unwrap_or(b);
            *cfg = next;
            (Some(b), sha)
        }
        Err(e) => {
            tracing::error!(bootstrap = %cfg.path.display(), "the config bundle's config cannot be used ({e}); running the bootstrap file");
            (Some(b), None)
        }
    }
}

/// A config loaded for a reload, with its jobs' addresses.
type Loaded = (Config, Vec<Option<IpAddr>>);

/// Loads and validates a bundle version's config before anything is
/// switched; then switches `current` (runs off the event loop). The
/// bundle's `original` is the bootstrap file: `current` is removed (the
/// versions stay) and the bootstrap file is what reloads.
fn switch_bundle(
    b: &autopilot_config::BundleConfig,
    to: &autopilot_artifact::Current,
    version: &str,
    bootstrap: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, String> {
    let file = match to {
        autopilot_artifact::Current::Sha(s) => b.dest.join(s).join(&b.file),
        autopilot_artifact::Current::Original => bootstrap.to_path_buf(),
        autopilot_artifact::Current::Missing => {
            return Err("no bundle version to switch to".into());
        }
    };
    let original = *to == autopilot_artifact::Current::Original;
    // The reason goes into a member tag of at most 200 characters: the
    // file is named from inside `dest`, where the line and field follow.
    let inside = format!("{}/", b.dest.display());
    let mut cfg = autopilot_config::load(&file, env)
        .map_err(|e| format!("bad config: {}", e.to_string().replace(&inside, "")))?;
    if !original {
        same_bundle(b, &cfg, &b.file)?;
    }
    let ips = job_ips(&cfg).map_err(|e| format!("config bundle {} {version}: {e}", b.name))?;
    if original {
        remove_current(&b.dest)?;
    } else {
        autopilot_artifact::switch(&b.dest, to).map_err(|e| e.to_string())?;
        cfg.path = b.dest.join("current").join(&b.file);
    }
    stamp_artifacts(&mut cfg);
    Ok((cfg, ips))
}

/// A bundle version's config must keep the bundle it came from: without
/// its `bundle` block, or with another name or dest, the agent would stop
/// following the bundle (or follow another one).
fn same_bundle(
    b: &autopilot_config::BundleConfig,
    cfg: &Config,
    file: &std::path::Path,
) -> Result<(), String> {
    match &cfg.bundle {
        None => Err(format!(
            "bad bundle config: {} has no bundle block (bundle {} would no longer be followed)",
            file.display(),
            b.name
        )),
        Some(nb) if nb.name != b.name => Err(format!(
            "bad bundle config: {} changes bundle.name from {} to {}",
            file.display(),
            b.name,
            nb.name
        )),
        Some(nb) if nb.dest != b.dest => Err(format!(
            "bad bundle config: {} changes bundle.dest from {} to {}",
            file.display(),
            b.dest.display(),
            nb.dest.display()
        )),
        Some(_) => Ok(()),
    }
}

/// Puts a bundle back on its bootstrap file: `dest/current` (a symlink) is
/// removed; the installed versions stay for a later rollout.
fn remove_current(dest: &std::path::Path) -> Result<(), String> {
    autopilot_artifact::check_dest(dest).map_err(|e| e.to_string())?;
    let cur = dest.join("current");
    match std::fs::symlink_metadata(&cur) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(&cur).map_err(|e| format!("cannot remove {}: {e}", cur.display()))
        }
        Ok(_) => Err(format!(
            "{} is not a symlink: move it away to run the bootstrap file",
            cur.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", cur.display())),
    }
}

/// Runs the agent until every job has stopped; returns the exit code.
pub async fn run(mut opts: Options) -> Result<i32, AgentError> {
    let bootstrap = opts.config.path.clone();
    let (bundle, bundle_sha) = bundle_config(&mut opts.config, &opts.env);
    // Fields a ContainerPilot config may carry that autopilot cannot honour:
    // each is named once, and the agent runs without it.
    for w in &opts.config.warnings {
        tracing::warn!(field = %w.field, "{}", w.message);
    }
    if let Some(message) = crate::catalog::consul_fallback(
        opts.config.consul.as_ref().map(|c| c.address.as_str()),
        opts.catalog_explicit,
        &opts.catalog_url,
    ) {
        tracing::warn!(field = %"consul", "{message}");
    }
    // Descriptors in reserve: a flood of connections must never leave
    // none for spawning a health check.
    match crate::raise_nofile_limit() {
        Ok((soft, hard)) => tracing::debug!(soft, hard, "descriptor limit"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let owner = format!(
        "{}/{}/{}",
        opts.hostname,
        std::process::id(),
        autopilot_catalog::now_ms()
    );
    let etcd = crate::catalog::etcd_settings(&opts.config.etcd, &opts.env)
        .map_err(AgentError::Settings)?;
    let user_metrics = opts
        .config
        .telemetry
        .as_ref()
        .map(|t| t.metrics.clone())
        .unwrap_or_default();
    let metrics = Arc::new(Metrics::new(&user_metrics));
    metrics.record(
        "autopilot_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", &opts.commit),
        ],
        1.0,
    );
    let catalog: Arc<dyn Catalog> = Arc::new(crate::metered::Metered::new(
        crate::catalog::open_with(
            &opts.catalog_url,
            &owner,
            &etcd,
            opts.config.consul.as_ref().and_then(|c| c.token.as_deref()),
        )
        .await?,
        metrics.clone(),
    ));
    // The agent's private scratch directory (watch and leader files,
    // snapshot files in transit): a fresh name no other user can predict or
    // pre-create, mode 0700, removed at exit. As PID 1 a fixed name such as
    // /tmp/autopilot-1 would be an invitation to plant symlinks.
    let scratch_base = opts
        .env
        .get("XDG_RUNTIME_DIR")
        .filter(|d| d.starts_with('/') && std::path::Path::new(d.as_str()).is_dir())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("autopilot-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&scratch_base)
        .map_err(|source| AgentError::StateDir {
            path: scratch_base.display().to_string(),
            source,
        })?;
    let state_dir = scratch.path().to_path_buf();
    // Children reach the catalog with the agent's settings; the password
    // only as a 0600 file in the private directory, never in an environment.
    let mut hook_env = crate::catalog::hook_env(&opts.catalog_url, &etcd, &state_dir)
        .map_err(AgentError::Settings)?;
    // A hook's `autopilot reload`, `maintenance` or `cluster position`
    // reaches this agent, whatever config it was started with.
    hook_env.push((
        "AUTOPILOT_SOCKET".to_string(),
        opts.socket.display().to_string(),
    ));
    for j in &opts.config.jobs {
        if let Some(s) = &j.snapshot {
            autopilot_snapshot::open(&s.store)
                .map_err(|e| AgentError::Settings(format!("job {}: {e}", j.name)))?;
        }
        if let Some(a) = &j.artifact {
            autopilot_snapshot::open(&a.store)
                .map_err(|e| AgentError::Settings(format!("job {}: artifact: {e}", j.name)))?;
        }
    }
    // Before a job with an artifact first starts, the version its rollout
    // wants is put in place (bounded: with no answer, what is on disk runs).
    for j in &mut opts.config.jobs {
        let Some(a) = j.artifact.clone() else {
            continue;
        };
        let unit = fleet::Unit {
            artifact: a.name,
            dest: a.dest,
            store: a.store,
            instance: format!("{}-{}", j.name, opts.hostname),
            address: String::new(),
            port: 0,
            ttl: DEFAULT_TTL,
        };
        j.artifact_sha = fleet::prepare(catalog.as_ref(), &unit).await;
    }
    let spawner = Spawner::start()?;
    if opts.init
        && std::process::id() != 1
        && let Err(e) = autopilot_process::become_subreaper()
    {
        tracing::warn!("cannot become the reaper of orphans: {e}");
    }
    let ips = job_ips(&opts.config)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Command>(64);
    control::serve(&opts.socket, ctl_tx.clone(), metrics.clone()).await?;
    let registrar = Registrar::start(catalog.clone());
    let mut telemetry_id = None;
    if let Some(t) = &opts.config.telemetry {
        let ip = interfaces::resolve(&t.interfaces, &interfaces::host_addresses())
            .map_err(AgentError::TelemetryInterfaces)?;
        crate::telemetry::serve(SocketAddr::new(ip, t.port), ctl_tx.clone(), metrics.clone())
            .await
            .map_err(AgentError::Telemetry)?;
        // The telemetry endpoint advertises itself, as ContainerPilot's did.
        let id = format!("containerpilot-{}", opts.hostname);
        registrar.put(Registration {
            id: id.clone(),
            name: "containerpilot".into(),
            address: ip.to_string(),
            port: t.port,
            tags: t.tags.clone(),
            status: Status::Passing,
            ttl: DEFAULT_TTL,
            deregister_critical_after: None,
            seat: None,
        });
        telemetry_id = Some(id);
    }
    // The `dns` block: a DNS server answering from its own cache of the catalog.
    if let Some(d) = &opts.config.dns {
        crate::dns::start(d, catalog.clone()).await?;
    }
    let sig = |k| signal(k).map_err(AgentError::Signal);
    let (mut term, mut int, mut hup, mut usr1, mut usr2) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
        sig(SignalKind::user_defined1())?,
        sig(SignalKind::user_defined2())?,
    );
    // The maintenance intent is the node's desired state: read before the
    // jobs start (bounded), so a node in maintenance starts in it. After the
    // signal handlers: the control socket already answers, and a signal
    // sent now must not find the default action.
    let mut intent =
        crate::node::IntentWatcher::new(catalog.clone(), &opts.hostname, &owner, metrics.clone());
    let first_intent = intent.first().await;
    let health_log = crate::node::HealthLog::start(catalog.clone(), &opts.hostname);

    let machine = Machine::new(opts.config.jobs.clone(), opts.config.stop_timeout, 1);
    let mut agent = Agent {
        machine,
        config: opts.config,
        next_config: None,
        base_env: opts.env,
        put_env: BTreeMap::new(),
        job_ips: ips,
        runs: HashMap::new(),
        spawner,
        metrics,
        tx: tx.clone(),
        start: Instant::now(),
        queue: VecDeque::new(),
        log: opts.log,
        catalog,
        registrar,
        hostname: opts.hostname,
        watch_states: Vec::new(),
        watch_tasks: Vec::new(),
        watch_keys: Vec::new(),
        job_keys: Vec::new(),
        next_key: 0,
        adopt_due: false,
        watch_pending: Vec::new(),
        watch_failures: Vec::new(),
        restore_progress: Vec::new(),
        state_dir,
        _scratch: scratch,
        telemetry_id,
        campaigns: Vec::new(),
        retired: Vec::new(),
        leaders: BTreeMap::new(),
        job_state_root: opts.job_state_root,
        templates: Vec::new(),
        hook_env,
        check_failures: HashMap::new(),
        last_runs: HashMap::new(),
        members: BTreeMap::new(),
        positions: BTreeMap::new(),
        suspects: BTreeMap::new(),
        reinit_pending: None,
        reinit_watches: BTreeMap::new(),
        reinit_refused: None,
        fleet: BTreeMap::new(),
        bundle_task: None,
        bundle,
        bundle_sha,
        fleet_pending: VecDeque::new(),
        next_bundle_sha: None,
        bootstrap,
        reload_queued: false,
        switching: false,
        repairs: BTreeMap::new(),
        repair_steps: BTreeMap::new(),
        repair_leading: BTreeMap::new(),
        repair_counted: BTreeMap::new(),
        watchdogs: Vec::new(),
        watchdog_set: None,
        catalog_ok: watch::channel(true).0,
        exit_override: None,
        exited_jobs: Vec::new(),
        session: owner.clone(),
        started_at: autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms()),
        node_entry: None,
        health_log,
        intent_task: None,
        announcers: BTreeMap::new(),
        announce_draining: false,
    };
    agent.start_watches(&[]);
    agent.start_templates(&[]);
    agent.reset_elections(&[]);
    agent.start_reinit_watches();
    agent.start_fleet();
    agent.start_watchdogs();
    agent.start_repairs();
    agent.start_announce();
    tracing::info!(
        jobs = agent.config.jobs.len(),
        config = %agent.config.path.display(),
        catalog = %agent.catalog.url(),
        "autopilot {} starting",
        env!("CARGO_PKG_VERSION")
    );
    agent.input(Input::Startup);
    if let Some(on) = first_intent {
        agent.input(Input::Maintenance(on));
    }
    agent.intent_task = Some(intent.spawn(ctl_tx.clone()));
    // Start-up code (config parsing, catalog open, the first spawns) is not
    // run again: once started, its pages leave the agent's RSS (crate::trim).
    tokio::spawn(async {
        tokio::time::sleep(TRIM_AFTER).await;
        match crate::trim::trim_code_pages() {
            Ok(kb) => tracing::debug!(kb, "start-up code pages unmapped"),
            Err(e) => tracing::debug!("cannot unmap start-up code pages: {e}"),
        }
    });
    let mut registrar_state = agent.registrar.subscribe();
    agent.metrics.record("autopilot_catalog_degraded", &[], 0.0);
    agent
        .metrics
        .record("autopilot_catalog_registered", &[], 0.0);
    loop {
        let finished = agent.execute();
        agent.sync_members();
        agent.sync_fleet();
        agent.sync_repairs();
        agent.sync_node();
        agent.sync_announce();
        if let Some(code) = finished {
            // A `replace` step's exit code wins over the machine's.
            let code = agent.exit_override.unwrap_or(code);
            // Hand leadership over before exiting, so a follower wins at
            // once rather than after the seat's TTL.
            // Every election, not only those led now: a resignation started
            // by the election task may have been cut short; repeating it is
            // harmless.
            // That includes the elections of campaigns a reload retired,
            // whose own resignation the exit would cut short.
            let mut elections: Vec<String> = (0..agent.machine.job_count())
                .filter_map(|j| {
                    agent
                        .machine
                        .spec(j)
                        .election
                        .as_ref()
                        .map(|e| e.name.clone())
                })
                .chain(agent.retired.iter().map(|r| r.election.clone()))
                .collect();
            elections.sort();
            elections.dedup();
            for c in agent.campaigns.drain(..).flatten() {
                let _ = c.want.send(false);
                c.task.abort();
            }
            for (_, w) in std::mem::take(&mut agent.reinit_watches) {
                w.abort();
            }
            for e in elections {
                let resign = agent.catalog.resign(&e);
                if let Ok(Err(err)) =
                    tokio::time::timeout(std::time::Duration::from_secs(2), resign).await
                {
                    tracing::warn!(election = %e, "resign failed ({err}); the seat expires with its TTL");
                }
            }
            if let Some(id) = &agent.telemetry_id {
                agent.registrar.remove(id);
            }
            if let Some(t) = agent.intent_task.take() {
                t.abort();
            }
            if let Some(e) = agent.node_entry.take() {
                agent.registrar.remove(&e.id);
            }
            agent.end_fleet();
            agent.end_repairs();
            agent.end_announce().await;
            if let Some((set, _)) = agent.watchdog_set.take() {
                set.stop().await;
            }
            agent
                .registrar
                .flush(std::time::Duration::from_secs(5))
                .await;
            let _ = std::fs::remove_file(&opts.socket);
            let _ = std::fs::remove_dir_all(&agent.state_dir);
            tracing::info!(code, "all jobs stopped; exiting");
            return Ok(code);
        }
        let deadline = agent
            .machine
            .next_deadline()
            .map(|d| tokio::time::Instant::from_std(agent.start + d));
        tokio::select! {
            Some(msg) = rx.recv() => agent.message(msg),
            Some(cmd) = ctl_rx.recv() => agent.message(Msg::Control(cmd)),
            _ = sleep_until(deadline) => {
                let now = agent.start.elapsed();
                agent.queue.extend(agent.machine.advance(now));
            }
            Ok(()) = registrar_state.changed() => {
                let (degraded, registered) = {
                    let st = registrar_state.borrow_and_update();
                    (st.error.is_some(), st.applied.len())
                };
                agent.metrics.record("autopilot_catalog_degraded", &[], if degraded { 1.0 } else { 0.0 });
                agent.catalog_ok.send_if_modified(|ok| std::mem::replace(ok, !degraded) == degraded);
                // What the catalog holds now, not what was asked for.
                agent.metrics.record("autopilot_catalog_registered", &[], registered as f64);
            }
            _ = term.recv() => agent.drain_then_stop("SIGTERM"),
            _ = int.recv() => agent.drain_then_stop("SIGINT"),
            _ = hup.recv() => agent.input(Input::SignalEvent("SIGHUP".into())),
            _ = usr2.recv() => agent.input(Input::SignalEvent("SIGUSR2".into())),
            _ = usr1.recv() => {
                if let Err(e) = agent.log.reopen() {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

/// Runs a `replace` step's hook with the job's environment, bounded by
/// `limit` (killed after it), its output logged.
async fn run_replace_hook(
    spawner: &Spawner,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    limit: std::time::Duration,
    job: &str,
) {
    let child = match spawner.spawn(&SpawnSpec {
        argv,
        env,
        raw_output: false,
        tag: format!("{job}.replace"),
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(job = %job, "repair: the replace hook could not start: {e}");
            return;
        }
    };
    let pid = child.pid;
    match tokio::time::timeout(limit, child.exit).await {
        Ok(Ok(Exit::Code(0))) => tracing::info!(job = %job, "repair: the replace hook ran"),
        Ok(Ok(Exit::Code(c))) => {
            tracing::error!(job = %job, code = c, "repair: the replace hook failed")
        }
        Ok(Ok(Exit::Signal(sig))) => {
            tracing::error!(job = %job, signal = sig, "repair: the replace hook was killed")
        }
        Ok(Err(_)) => {
            tracing::error!(job = %job, "repair: the replace hook's exit status was lost")
        }
        Err(_) => {
            tracing::error!(job = %job, secs = limit.as_secs(), "repair: the replace hook did not finish in time; killing it");
            let _ = autopilot_process::signal_group(pid, autopilot_process::Sig::Kill);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn new_key(&mut self) -> u64 {
        self.next_key = self.next_key.wrapping_add(1);
        self.next_key
    }

    /// Sets up per-job bookkeeping (campaigns, restore progress, task keys)
    /// for the machine's jobs; `kept` maps each job to the one it continues
    /// across a reload, whose campaign and keys it takes over.
    fn reset_elections(&mut self, kept: &[Option<usize>]) {
        let n = self.machine.job_count();
        let mut campaigns: Vec<Option<_>> = std::mem::take(&mut self.campaigns);
        let mut progress: Vec<Option<_>> = std::mem::take(&mut self.restore_progress)
            .into_iter()
            .map(Some)
            .collect();
        let keys = std::mem::take(&mut self.job_keys);
        for j in 0..n {
            let old = kept.get(j).copied().flatten();
            let key = match old.and_then(|o| keys.get(o)) {
                Some(k) => *k,
                None => self.new_key(),
            };
            self.job_keys.push(key);
            self.campaigns.push(
                old.and_then(|o| campaigns.get_mut(o))
                    .and_then(Option::take),
            );
            self.restore_progress.push(
                old.and_then(|o| progress.get_mut(o))
                    .and_then(Option::take)
                    .unwrap_or_default(),
            );
        }
        // Campaigns of dropped or changed jobs: they were told to stop when
        // their job did; closing the channel lets the task finish its
        // resignation and end (an abort could cut the resignation short).
        // Their news may still be on its way (the job can stop before its
        // task has run): it is routed by election until the task ends.
        for (o, c) in campaigns.into_iter().enumerate() {
            let Some(c) = c else { continue };
            let _ = c.want.send(false);
            self.retire(keys.get(o).copied().unwrap_or_default(), c);
        }
        let leaders = std::mem::take(&mut self.leaders);
        self.leaders = (0..n)
            .filter_map(|j| {
                self.machine.spec(j).election.as_ref().map(|e| {
                    let l = leaders.get(&e.name).cloned().flatten();
                    (e.name.clone(), l)
                })
            })
            .collect();
    }

    fn campaign(&mut self, job: usize, on: bool) {
        // A job being reinitialised stays out of its election: the wish is
        // kept for when the reinit is given up.
        let key = self.job_keys.get(job).copied();
        let on = match &mut self.reinit_pending {
            Some(r) if Some(r.key) == key => {
                r.want_campaign = on;
                false
            }
            _ => on,
        };
        // A vote belongs to a running campaign: never republish a stale one.
        if let Some(e) = &self.machine.spec(job).election
            && (!on || self.campaigns[job].is_none())
        {
            self.suspects.remove(&e.name);
        }
        if let Some(c) = &self.campaigns[job] {
            let _ = c.want.send(on);
            return;
        }
        if !on {
            return;
        }
        let Some(e) = self.machine.spec(job).election.clone() else {
            return;
        };
        self.election_metrics(&e.name);
        let me = self.candidate(job);
        let id = me.id.clone();
        let (tx, rx) = watch::channel(true);
        let key = self.job_keys.get(job).copied().unwrap_or_default();
        let after: Vec<watch::Receiver<bool>> = self
            .retired
            .iter()
            .filter(|r| r.election == e.name && !*r.done.borrow())
            .map(|r| r.done.clone())
            .collect();
        if !after.is_empty() {
            tracing::debug!(election = %e.name, "campaign waits for the retired campaign to resign");
        }
        let settings = crate::catalog::ClusterSettings {
            priority: e.priority,
            max_lag: e.max_lag,
        };
        let task = spawn_election_after(
            after,
            self.catalog.clone(),
            e.name.clone(),
            me,
            e.ttl,
            settings,
            rx,
            self.tx.clone(),
            move |news| Msg::Election { key, news },
        );
        self.campaigns[job] = Some(Campaign {
            want: tx,
            task,
            election: e.name,
            id,
        });
    }

    fn election_news(&mut self, job: usize, news: ElectionNews) {
        let name = self.machine.spec(job).name.clone();
        let Some(election) = self
            .machine
            .spec(job)
            .election
            .as_ref()
            .map(|e| e.name.clone())
        else {
            return;
        };
        match news {
            ElectionNews::Elected(term) => {
                let before = match self.leaders.get(&election).and_then(Option::as_ref) {
                    Some(l) => format!(
                        "the seat of the previous leader {} (term {}) was free: it resigned or its TTL expired",
                        l.id, l.term
                    ),
                    None => "the seat was free: no node held it".to_string(),
                };
                tracing::info!(job = %name, %election, term, "elected leader: campaigning while healthy, this node won; {before}");
                // The `elected` handler must see the term it won (its
                // fencing token): this node is recorded as the leader, in
                // the environment and the leader file, before `elected` is
                // published.
                let me = self.candidate(job);
                let changed = self.record_leader(
                    &election,
                    Some(Leader {
                        id: me.id,
                        address: me.address,
                        port: me.port,
                        term,
                    }),
                );
                self.input(Input::Leadership {
                    job,
                    term: Some(term),
                });
                if changed {
                    self.publish_leader_changed(&election);
                }
            }
            ElectionNews::Demoted(term) => {
                let reason = self.demotion_reason(job);
                tracing::warn!(job = %name, %election, term, "no longer leader: {reason}");
                // This node no longer knows who leads: its children (the
                // `demoted` handler first) must not see itself as leader.
                if self
                    .leaders
                    .get(&election)
                    .and_then(Option::as_ref)
                    .is_some_and(|l| l.id == self.entry_id(job))
                {
                    self.record_leader(&election, None);
                }
                self.input(Input::Leadership { job, term: None });
            }
            ElectionNews::Leader(l) => {
                let l = l.and_then(|l| sanitize_leader(&election, l));
                if self.record_leader(&election, l) {
                    self.publish_leader_changed(&election);
                }
            }
            ElectionNews::Suspect(term) => {
                match term {
                    Some(t) => self.suspects.insert(election, t),
                    None => self.suspects.remove(&election),
                };
            }
        }
    }

    /// The users a reinit may empty a data directory of: this agent's, and
    /// `snapshot.dataDirOwner`'s (a server that runs as another user).
    fn reinit_uids(&self, job: &str) -> Vec<u32> {
        let mut uids = vec![nix::unistd::geteuid().as_raw()];
        let owner = (0..self.machine.job_count())
            .map(|j| self.machine.spec(j))
            .find(|s| s.name == job)
            .and_then(|s| s.snapshot.as_ref())
            .and_then(|s| s.data_dir_owner.clone());
        if let Some(name) = owner {
            match nix::unistd::User::from_name(&name) {
                Ok(Some(u)) => uids.push(u.uid.as_raw()),
                Ok(None) => {
                    tracing::warn!(user = %name, "reinit: dataDirOwner names no user on this machine")
                }
                Err(e) => tracing::warn!(user = %name, "reinit: cannot look up dataDirOwner: {e}"),
            }
        }
        uids
    }

    /// Starts a reinit watch for every job with an election that has none
    /// (by job key, so a reload keeps the watch of an unchanged job) and
    /// ends the watches of jobs that are gone.
    fn start_reinit_watches(&mut self) {
        let mut old = std::mem::take(&mut self.reinit_watches);
        for job in 0..self.machine.job_count() {
            let Some(key) = self.job_keys.get(job).copied() else {
                continue;
            };
            let Some(e) = &self.machine.spec(job).election else {
                continue;
            };
            if let Some(w) = old.remove(&key) {
                self.reinit_watches.insert(key, w);
                continue;
            }
            let intent =
                autopilot_core::cluster::IntentKey::Reinit(self.entry_id(job)).key(&e.name);
            let handled = self
                .job_state_root
                .join(&self.machine.spec(job).name)
                .join(crate::cluster::REINIT_HANDLED_FILE);
            let task = tokio::spawn(crate::cluster::watch_reinit(
                self.catalog.clone(),
                intent,
                handled,
                self.tx.clone(),
                move |news| Msg::Reinit { key, news },
            ));
            self.reinit_watches.insert(key, task);
        }
        for (_, w) in old {
            w.abort();
        }
        // A reinit whose job was dropped or replaced is over.
        if let Some(r) = &self.reinit_pending
            && !self.job_keys.contains(&r.key)
        {
            self.reinit_pending = None;
        }
    }

    /// A job's reinit watch: an intent to accept or refuse (a refusal is
    /// asked again later), then whether it was claimed. Once accepted, the
    /// job stops campaigning; once claimed (the intent deleted), the job is
    /// stopped through the reload path (as a changed job), and
    /// [`Agent::adopt`] empties its `snapshot.dataDir` before it starts again
    /// through restore-before-start. Never on a node that leads or led since.
    fn reinit_news(&mut self, job: usize, news: crate::cluster::ReinitNews) {
        use crate::cluster::ReinitNews;
        let name = self.machine.spec(job).name.clone();
        let key = self.job_keys.get(job).copied().unwrap_or_default();
        let Some(election) = self
            .machine
            .spec(job)
            .election
            .as_ref()
            .map(|e| e.name.clone())
        else {
            return;
        };
        match news {
            ReinitNews::Ask {
                requested_ms,
                reply,
            } => {
                let refusal = if self.reinit_pending.is_some() {
                    Some("another reinit is in progress".to_string())
                } else if self.machine.stopping().is_some()
                    || self.next_config.is_some()
                    || self.switching
                {
                    Some("the agent is stopping or reloading (asked again shortly)".into())
                } else if self.leads(job, &election) {
                    Some("this node leads (switch over first)".into())
                } else {
                    let dir = self
                        .machine
                        .spec(job)
                        .snapshot
                        .as_ref()
                        .and_then(|s| s.data_dir.clone());
                    match crate::cluster::check_data_dir(dir.as_deref(), &self.reinit_uids(&name)) {
                        Ok(dir) => {
                            let want_campaign = self
                                .campaigns
                                .get(job)
                                .and_then(Option::as_ref)
                                .is_some_and(|c| *c.want.borrow());
                            self.reinit_pending = Some(Reinit {
                                key,
                                job: name.clone(),
                                id: self.entry_id(job),
                                requested_ms,
                                dir,
                                claimed: false,
                                quiet: false,
                                led: false,
                                want_campaign,
                            });
                            None
                        }
                        Err(why) => Some(why),
                    }
                };
                if let Some(why) = refusal {
                    let told = Some((key, requested_ms, why));
                    if self.reinit_refused != told {
                        let why = told.as_ref().map(|t| t.2.as_str()).unwrap_or_default();
                        tracing::warn!(job = %name, %election, requested_ms, "reinit refused: {why}");
                        self.reinit_refused = told;
                    }
                    let _ = reply.send(false);
                    return;
                }
                self.reinit_refused = None;
                tracing::warn!(job = %name, %election, requested_ms, "reinit accepted: the job stops campaigning while its intent is claimed");
                self.retire_for_reinit(job, key);
                if reply.send(true).is_err() {
                    self.give_up_reinit(job);
                }
            }
            ReinitNews::Claimed { requested_ms, ok } => {
                let Some(r) = self
                    .reinit_pending
                    .as_mut()
                    .filter(|r| r.key == key && r.requested_ms == requested_ms && !r.claimed)
                else {
                    return;
                };
                if !ok {
                    self.give_up_reinit(job);
                    return;
                }
                r.claimed = true;
                self.reinit_proceed(job);
            }
        }
    }

    /// Whether `job` leads its election, as the machine or the last leader
    /// read knows it.
    fn leads(&self, job: usize, election: &str) -> bool {
        self.machine.leading(job).is_some()
            || matches!(self.machine.role(job), Role::Leader { .. })
            || self
                .leaders
                .get(election)
                .and_then(Option::as_ref)
                .is_some_and(|l| l.id == self.entry_id(job))
    }

    /// Ends the campaign of a job whose reinit was accepted: its task steps
    /// down (resigning if it won meanwhile) and ends; its end is reported
    /// as [`Msg::CampaignEnded`] under the job's key.
    fn retire_for_reinit(&mut self, job: usize, key: u64) {
        let Some(c) = self.campaigns.get_mut(job).and_then(Option::take) else {
            if let Some(r) = &mut self.reinit_pending {
                r.quiet = true;
            }
            return;
        };
        self.suspects.remove(&c.election);
        self.retire(key, c);
    }

    /// Retires a campaign: dropping its sender ends the task once it has
    /// stepped down; until then its news is routed by election, and its end
    /// is reported as [`Msg::CampaignEnded`] under `key`.
    fn retire(&mut self, key: u64, c: Campaign) {
        drop(c.want);
        let (done_tx, done) = watch::channel(false);
        let tx = self.tx.clone();
        let task = c.task;
        tokio::spawn(async move {
            let _ = task.await;
            let _ = done_tx.send(true);
            let _ = tx.send(Msg::CampaignEnded { key }).await;
        });
        self.retired.push(Retired {
            key,
            election: c.election,
            id: c.id,
            done,
        });
    }

    /// A campaign task ended: a reinit waiting for it may go on.
    fn reinit_campaign_ended(&mut self, key: u64) {
        let Some(r) = self.reinit_pending.as_mut().filter(|r| r.key == key) else {
            return;
        };
        r.quiet = true;
        if let Some(job) = self.job_keys.iter().position(|k| *k == key) {
            self.reinit_proceed(job);
        }
    }

    /// Stops a reinit's job through the reload path (as a changed job) once
    /// its intent is claimed and its campaign has ended, unless this node
    /// led since the reinit was accepted.
    fn reinit_proceed(&mut self, job: usize) {
        let Some(r) = &self.reinit_pending else {
            return;
        };
        if !(r.claimed && r.quiet) {
            return;
        }
        let (name, requested_ms, dir, led) = (r.job.clone(), r.requested_ms, r.dir.clone(), r.led);
        let election = self
            .machine
            .spec(job)
            .election
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        let why = if led || self.leads(job, &election) {
            Some("this node led since the request; its data is kept")
        } else if self.machine.stopping().is_some() || self.next_config.is_some() || self.switching
        {
            Some("the agent is stopping or reloading; write the intent again later")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::error!(job = %name, %election, requested_ms, "reinit refused: {why}");
            self.give_up_reinit(job);
            return;
        }
        tracing::warn!(job = %name, %election, dir = %dir.display(), "reinit: stopping the job, emptying its data directory and starting it again through restore-before-start");
        let mut cfg = self.config.clone();
        let Some(spec) = cfg.jobs.get_mut(job) else {
            self.give_up_reinit(job);
            return;
        };
        spec.reinit = spec.reinit.saturating_add(1);
        let (jobs, stop_timeout) = (cfg.jobs.clone(), cfg.stop_timeout);
        self.next_config = Some((cfg, self.job_ips.clone()));
        self.input(Input::Reload { jobs, stop_timeout });
    }

    /// Ends a reinit not carried out: the job's campaign gets back what the
    /// machine last asked of it.
    fn give_up_reinit(&mut self, job: usize) {
        if let Some(r) = self.reinit_pending.take() {
            self.campaign(job, r.want_campaign);
        }
    }

    /// News from a campaign a reload retired (its job is gone): the seat it
    /// gave up and the leader it read still tell who leads the election.
    fn retired_news(&mut self, election: &str, id: &str, news: ElectionNews) {
        match news {
            // It was told to stop: a demotion follows at once.
            ElectionNews::Elected(_) => {}
            ElectionNews::Demoted(term) => {
                tracing::info!(%election, term, "the campaign of a job the reload replaced stepped down; the seat is handed over");
                if self
                    .leaders
                    .get(election)
                    .and_then(Option::as_ref)
                    .is_some_and(|l| l.id == id)
                {
                    self.record_leader(election, None);
                }
            }
            ElectionNews::Leader(l) => {
                let l = l.and_then(|l| sanitize_leader(election, l));
                if self.leaders.contains_key(election) && self.record_leader(election, l) {
                    self.publish_leader_changed(election);
                }
            }
            // Only a live campaign's vote is published.
            ElectionNews::Suspect(_) => {}
        }
    }

    /// Why a leader stepped down: the agent withdrew its campaign (the job
    /// stopped, turned unhealthy, maintenance, shutdown), or the seat was
    /// lost while still campaigning.
    fn demotion_reason(&self, job: usize) -> String {
        let campaigning = self
            .campaigns
            .get(job)
            .and_then(Option::as_ref)
            .is_some_and(|c| *c.want.borrow());
        if campaigning {
            return "the seat was lost or could not be renewed before its TTL ran out (the catalog was slow or unreachable, or the seat expired)".into();
        }
        if self.machine.stopping().is_some() {
            return "the agent is stopping; the seat is handed over".into();
        }
        if self.machine.in_maintenance() {
            return "maintenance mode was enabled; the seat is handed over".into();
        }
        let view = self.machine.view();
        match view.get(job) {
            Some(j) if !matches!(j.phase, Phase::Running(_)) => {
                "the job is not running; the seat is handed over".into()
            }
            Some(j) if j.health != autopilot_core::HealthStatus::Healthy => {
                let why = self
                    .check_failures
                    .get(&self.machine.spec(job).name)
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("the job turned unhealthy{why}; the seat is handed over")
            }
            _ => "the campaign was withdrawn; the seat is handed over".into(),
        }
    }

    /// Records an election's leader for children's environment and writes
    /// the leader file; returns whether it changed.
    fn record_leader(&mut self, election: &str, l: Option<Leader>) -> bool {
        if let (Some(r), Some(l)) = (&mut self.reinit_pending, &l)
            && l.id == r.id
        {
            r.led = true;
        }
        if self.leaders.get(election) == Some(&l) {
            return false;
        }
        match &l {
            Some(l) => {
                tracing::info!(%election, leader = %l.id, term = l.term, "leader changed: the catalog's seat is held by {}", l.id)
            }
            None => {
                tracing::info!(%election, leader = "none", "leader changed: no node holds the seat now")
            }
        }
        let prev_term = self
            .leaders
            .get(election)
            .and_then(Option::as_ref)
            .map(|p| p.term);
        if let Some(l) = &l
            && prev_term != Some(l.term)
        {
            self.metrics.record(
                "autopilot_election_transitions_total",
                &[("election", election)],
                1.0,
            );
        }
        let file = self.leader_file(election);
        let json = serde_json::to_vec_pretty(&l).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&file, &json) {
            tracing::warn!(file = %file.display(), "cannot write leader file: {e}");
        }
        self.leaders.insert(election.to_string(), l);
        self.election_metrics(election);
        true
    }

    /// `autopilot_election_*` for `election` as this agent knows it now.
    fn election_metrics(&self, election: &str) {
        let l = self.leaders.get(election).and_then(Option::as_ref);
        let mine = l.is_some_and(|l| {
            (0..self.machine.job_count()).any(|j| {
                self.machine
                    .spec(j)
                    .election
                    .as_ref()
                    .is_some_and(|e| e.name == election)
                    && self.entry_id(j) == l.id
            })
        });
        let labels = [("election", election)];
        self.metrics.record(
            "autopilot_election_leader",
            &labels,
            if mine { 1.0 } else { 0.0 },
        );
        self.metrics.record(
            "autopilot_election_term",
            &labels,
            l.map_or(0.0, |l| l.term as f64),
        );
        // The counter's series exists from the first campaign on.
        self.metrics
            .record("autopilot_election_transitions_total", &labels, 0.0);
    }

    /// Every job in the election hears of a new leader.
    fn publish_leader_changed(&mut self, election: &str) {
        for j in 0..self.machine.job_count() {
            if self
                .machine
                .spec(j)
                .election
                .as_ref()
                .is_some_and(|e| e.name == election)
            {
                let n = self.machine.spec(j).name.clone();
                self.input(Input::External(Event::new(EventCode::LeaderChanged, &n)));
            }
        }
    }

    /// The address the job's entries advertise (empty until it is known).
    fn job_address(&self, job: usize) -> String {
        self.job_ips
            .get(job)
            .copied()
            .flatten()
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    }

    /// Publishes this agent's `_nodes` entry when what it shows changed.
    fn sync_node(&mut self) {
        let jobs: Vec<String> = (0..self.machine.job_count())
            .map(|j| self.machine.spec(j).name.clone())
            .collect();
        let address = (0..self.machine.job_count())
            .map(|j| self.job_address(j))
            .find(|a| !a.is_empty())
            .unwrap_or_default();
        let view = autopilot_core::intent::NodeView {
            maintenance: self.machine.in_maintenance(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: self.started_at.clone(),
            session: self.session.clone(),
            jobs,
        };
        let reg = crate::node::node_registration(&self.hostname, &address, &view, DEFAULT_TTL);
        self.metrics.record(
            "autopilot_maintenance",
            &[],
            if view.maintenance { 1.0 } else { 0.0 },
        );
        if self.node_entry.as_ref() != Some(&reg) {
            self.registrar.put(reg.clone());
            self.node_entry = Some(reg);
        }
    }

    /// This job as a candidate: its entry ID and where it serves.
    fn candidate(&self, job: usize) -> Candidate {
        Candidate {
            id: self.entry_id(job),
            address: self.job_address(job),
            port: self.machine.spec(job).port.unwrap_or(0),
        }
    }

    fn snapshot_ctx(&self, job: usize) -> crate::snapshots::Ctx {
        crate::snapshots::Ctx {
            catalog: self.catalog.clone(),
            spawner: self.spawner.clone(),
            env: self.child_env(job),
            me: self.entry_id(job),
            scratch: self.state_dir.clone(),
            progress: self.restore_progress.get(job).cloned().unwrap_or_default(),
        }
    }

    /// Restores the job's data before its first start, off the event loop.
    fn prepare(&mut self, job: usize) {
        let Some(spec) = self.machine.spec(job).snapshot.clone() else {
            self.input(Input::Prepared { job, ok: true });
            return;
        };
        let election = self
            .machine
            .spec(job)
            .election
            .as_ref()
            .map(|e| e.name.clone());
        let ctx = self.snapshot_ctx(job);
        let tx = self.tx.clone();
        let key = self.job_keys.get(job).copied().unwrap_or_default();
        tokio::spawn(async move {
            let ok = match crate::snapshots::restore(&ctx, &spec, election.as_deref()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(set = %spec.set, "restore before start failed: {e}");
                    false
                }
            };
            let _ = tx.send(Msg::Prepared { key, ok }).await;
        });
    }

    /// Takes a snapshot in the background (the core decided it is due).
    fn snapshot(&mut self, job: usize, only_if_none: bool) {
        let Some(spec) = self.machine.spec(job).snapshot.clone() else {
            return;
        };
        let ctx = self.snapshot_ctx(job);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            match crate::snapshots::take(&ctx, &spec, only_if_none).await {
                Ok(Some(meta)) => {
                    let labels = [("set", spec.set.as_str())];
                    metrics.record(
                        "autopilot_snapshot_last_success_timestamp_seconds",
                        &labels,
                        meta.created_ms as f64 / 1000.0,
                    );
                    metrics.record(
                        "autopilot_snapshot_duration_seconds",
                        &labels,
                        t0.elapsed().as_secs_f64(),
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::error!(set = %spec.set, "snapshot failed: {e}"),
            }
        });
    }

    fn leader_file(&self, election: &str) -> PathBuf {
        self.state_dir.join(format!(
            "leader-{}.json",
            env_key(election).to_ascii_lowercase()
        ))
    }

    /// Starts one task per configured template; after a reload, a template
    /// whose config is unchanged keeps its task (and its state).
    fn start_templates(&mut self, old: &[autopilot_config::TemplateConfig]) {
        let kept = autopilot_core::machine::keep_unchanged(old, &self.config.templates, |t| {
            t.name.clone()
        });
        let mut tasks: Vec<Option<_>> = std::mem::take(&mut self.templates)
            .into_iter()
            .map(Some)
            .collect();
        let mut env = self.render_env();
        crate::catalog::scrub_secrets(&mut env);
        // A template's command may call `autopilot kv` and friends too.
        env.extend(self.hook_env.clone());
        let ctx = crate::templates::Ctx {
            catalog: self.catalog.clone(),
            spawner: self.spawner.clone(),
            metrics: self.metrics.clone(),
            env,
        };
        for (t, k) in self.config.templates.iter().zip(&kept) {
            if let Some(task) = k.and_then(|o| tasks.get_mut(o)).and_then(Option::take) {
                self.templates.push(task);
                continue;
            }
            let (tx, rx) = watch::channel(0u64);
            // A new template whose `when` event already happened starts now:
            // that event may never come again.
            if t.when
                .as_ref()
                .is_some_and(|w| self.machine.has_published(&Event::new(w.code, &w.source)))
            {
                tx.send_modify(|n| *n += 1);
            }
            let task = crate::templates::spawn(t.clone(), ctx.clone(), rx);
            self.templates.push((task, tx));
        }
        for (task, _) in tasks.into_iter().flatten() {
            task.abort();
        }
    }

    /// Starts one task per configured watch; after a reload, a watch whose
    /// config is unchanged keeps its task, its last snapshot and any
    /// held-back change, so no event is lost or repeated.
    fn start_watches(&mut self, old: &[autopilot_config::WatchConfig]) {
        let kept = autopilot_core::machine::keep_unchanged(old, &self.config.watches, |w| {
            w.source.clone()
        });
        let mut tasks: Vec<Option<_>> = std::mem::take(&mut self.watch_tasks)
            .into_iter()
            .map(Some)
            .collect();
        let states = std::mem::take(&mut self.watch_states);
        let pending = std::mem::take(&mut self.watch_pending);
        let failures = std::mem::take(&mut self.watch_failures);
        let keys = std::mem::take(&mut self.watch_keys);
        for (w, k) in self.config.watches.clone().iter().zip(&kept) {
            if let Some(o) = *k
                && let Some(task) = tasks.get_mut(o).and_then(Option::take)
            {
                self.watch_tasks.push(task);
                self.watch_states
                    .push(states.get(o).cloned().unwrap_or_default());
                self.watch_pending.push(pending.get(o).cloned().flatten());
                self.watch_failures
                    .push(failures.get(o).copied().unwrap_or(0));
                self.watch_keys
                    .push(keys.get(o).copied().unwrap_or_default());
                continue;
            }
            let key = self.new_key();
            self.watch_tasks.push(spawn_watch(
                self.catalog.clone(),
                w.clone(),
                self.tx.clone(),
                move |passing| Msg::Watch { key, passing },
            ));
            self.watch_states.push(WatchState::default());
            self.watch_pending.push(None);
            self.watch_failures.push(0);
            self.watch_keys.push(key);
        }
        for t in tasks.into_iter().flatten() {
            t.abort();
        }
    }

    fn watch_file(&self, index: usize) -> PathBuf {
        let key = env_key(
            self.config.watches[index]
                .source
                .trim_start_matches("watch."),
        );
        self.state_dir
            .join(format!("watch-{}.json", key.to_ascii_lowercase()))
    }

    /// Applies a watch snapshot: on a change, writes the instances file
    /// handlers read, then publishes the watch's events.
    fn watch_snapshot(&mut self, index: usize, passing: Vec<Instance>) {
        let Some(state) = self.watch_states.get(index) else {
            return;
        };
        let endpoints = passing
            .iter()
            .map(|i| Endpoint {
                id: i.id.clone(),
                address: i.address.clone(),
                port: i.port,
                tags: i.tags.clone(),
            })
            .collect();
        let (set, codes) = state.compare(endpoints);
        if codes.is_empty() {
            self.watch_pending[index] = None;
            return;
        }
        // The handlers read the instances file: the change is published
        // only once the file holds it. If it cannot be written (disk full),
        // nothing is published and the newest snapshot is retried, so a
        // handler never acts on the previous list.
        let file = self.watch_file(index);
        let json = serde_json::to_vec_pretty(&passing).unwrap_or_default();
        let source = self.config.watches[index].source.clone();
        if let Err(e) = crate::fsutil::write_atomic(&file, &json) {
            let failures = self.watch_failures[index].saturating_add(1);
            self.watch_failures[index] = failures;
            // Once, then every 32nd attempt, with the count.
            if failures == 1 || failures.is_multiple_of(32) {
                tracing::warn!(watch = %source, file = %file.display(), failures, "cannot write the instances file; the change is held back and retried: {e}");
            }
            let first_retry = self.watch_pending[index].is_none();
            self.watch_pending[index] = Some(passing);
            if first_retry {
                let delay =
                    std::time::Duration::from_millis(100u64.saturating_mul(1 << failures.min(5)));
                let tx = self.tx.clone();
                let key = self.watch_keys.get(index).copied().unwrap_or_default();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Msg::WatchRetry { key }).await;
                });
            }
            return;
        }
        if self.watch_failures[index] > 0 {
            tracing::info!(watch = %source, failures = self.watch_failures[index], "instances file written again");
            self.watch_failures[index] = 0;
        }
        self.watch_pending[index] = None;
        self.watch_states[index].record(set);
        tracing::info!(watch = %source, passing = passing.len(), "watch changed");
        for code in codes {
            self.input(Input::External(Event::new(code, &source)));
        }
    }

    /// The catalog entry of a job, with the status the machine chose.
    fn registration(&self, job: usize, status: EntryStatus) -> Option<Registration> {
        let spec = self.machine.spec(job);
        let port = spec.port?;
        let address = self.job_ips.get(job).copied().flatten()?;
        // The core decides the role; the leader's entry is bound to its seat
        // so it disappears in the same step as the seat.
        let (role, seat) = match (spec.roles.as_ref(), self.machine.role(job)) {
            (Some(r), Role::Leader { term }) => (
                Some(&r.leader),
                spec.election.as_ref().map(|e| Seat {
                    election: e.name.clone(),
                    term,
                }),
            ),
            (Some(r), _) => (Some(&r.follower), None),
            (None, _) => (None, None),
        };
        Some(Registration {
            id: format!("{}-{}", spec.name, self.hostname),
            name: role
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| spec.name.clone()),
            address: address.to_string(),
            port,
            tags: role
                .and_then(|r| r.tags.clone())
                .unwrap_or_else(|| spec.tags.clone()),
            status: catalog_status(status),
            ttl: spec.health.as_ref().map_or(DEFAULT_TTL, |h| h.ttl),
            deregister_critical_after: spec.deregister_critical_after,
            seat,
        })
    }

    fn entry_id(&self, job: usize) -> String {
        format!("{}-{}", self.machine.spec(job).name, self.hostname)
    }

    fn input(&mut self, i: Input) {
        let now = self.start.elapsed();
        let actions = self.machine.handle(now, i);
        self.queue.extend(actions);
    }

    fn stop(&mut self, why: &str) {
        if self.machine.stopping() == Some(StopReason::Shutdown) {
            tracing::info!("{why} received; already stopping");
            return;
        }
        tracing::info!("{why} received; stopping jobs");
        // No template command starts while the jobs it would reload are stopping.
        for (task, _) in self.templates.drain(..) {
            task.abort();
        }
        // A graceful stop is not a failed version: the unit tasks end
        // before the jobs stop (a stopping job would read as a failed
        // probation) and their members leave, as an agent that is gone.
        self.end_fleet();
        // No repair runs while the jobs stop (their records stay: the next
        // start continues from them).
        self.end_repairs();
        self.input(Input::Stop(StopReason::Shutdown));
    }

    fn message(&mut self, msg: Msg) {
        match msg {
            Msg::AnnounceDrained { why } => self.stop(why),
            Msg::Exited { run, exit } => {
                let status = match exit {
                    Exit::Code(c) => ExitStatus::Code(c),
                    Exit::Signal(s) => ExitStatus::Signal(s),
                };
                if let Some(meta) = self.runs.remove(&run) {
                    let name = self.machine.spec(meta.job).name.clone();
                    match meta.kind {
                        ProcKind::Check => {
                            let failure = match status {
                                ExitStatus::Code(0) => None,
                                ExitStatus::Code(c) => {
                                    Some(format!("the check exited with code {c}"))
                                }
                                // A stop or a reload that retires the job
                                // kills its check: not a timeout.
                                ExitStatus::Signal(_) if self.machine.is_winding(meta.job) => {
                                    Some("the check was stopped".to_string())
                                }
                                ExitStatus::Signal(s) => Some(format!(
                                    "the check was killed by signal {s} (its timeout, or from outside)"
                                )),
                            };
                            self.check_done(&name, meta.started, failure);
                        }
                        ProcKind::Job => {
                            self.metrics
                                .record("autopilot_job_running", &[("job", &name)], 0.0);
                            self.last_runs
                                .insert(name.clone(), (status, meta.started.elapsed()));
                            self.exited_jobs.push(meta.job);
                            match status {
                                ExitStatus::Code(code) => {
                                    tracing::info!(job = %name, pid = meta.pid.unwrap_or(0), code, "job exited")
                                }
                                ExitStatus::Signal(signal) => {
                                    tracing::info!(job = %name, pid = meta.pid.unwrap_or(0), signal, "job killed by a signal")
                                }
                            }
                        }
                    }
                }
                self.input(Input::Exited { run, status });
                // Crashloop watchdogs count the exit, knowing whether the
                // machine parked the job for good.
                for job in std::mem::take(&mut self.exited_jobs) {
                    if let Some((set, _)) = &self.watchdog_set {
                        set.job_exited(&self.machine.spec(job).name, self.machine.parked(job));
                    }
                }
            }
            Msg::Probed { run, result } => {
                // A probe killed by the machine (timeout, stop) was already
                // reported as exited when it was aborted.
                let Some(meta) = self.runs.remove(&run) else {
                    return;
                };
                let name = self.machine.spec(meta.job).name.clone();
                let status = ExitStatus::Code(if result.is_ok() { 0 } else { 1 });
                self.check_done(&name, meta.started, result.err().map(|e| e.to_string()));
                self.input(Input::Exited { run, status });
            }
            Msg::Control(cmd) => self.command(cmd),
            Msg::Watch { key, passing } => {
                if let Some(index) = self.watch_keys.iter().position(|k| *k == key) {
                    self.watch_snapshot(index, passing);
                }
            }
            Msg::Election { key, news } => {
                if let Some(job) = self.job_keys.iter().position(|k| *k == key) {
                    self.election_news(job, news);
                } else if let Some(r) = self.retired.iter().find(|r| r.key == key) {
                    let (election, id) = (r.election.clone(), r.id.clone());
                    self.retired_news(&election, &id, news);
                }
            }
            Msg::CampaignEnded { key } => {
                self.retired.retain(|r| r.key != key);
                self.reinit_campaign_ended(key);
            }
            Msg::Reinit { key, news } => {
                if let Some(job) = self.job_keys.iter().position(|k| *k == key) {
                    self.reinit_news(job, news);
                }
            }
            Msg::WatchRetry { key } => {
                if let Some(index) = self.watch_keys.iter().position(|k| *k == key)
                    && let Some(passing) = self.watch_pending.get_mut(index).and_then(Option::take)
                {
                    self.watch_snapshot(index, passing);
                }
            }
            Msg::Prepared { key, ok } => {
                if let Some(job) = self.job_keys.iter().position(|k| *k == key) {
                    self.input(Input::Prepared { job, ok });
                }
            }
            Msg::Fleet { job, ready } => self.fleet_ready(job, ready),
            Msg::Repair { job, request } => self.repair_request(&job, request),
            Msg::Reimaged { key, ok, note } => {
                if let Some(job) = self.job_keys.iter().position(|k| *k == key) {
                    let name = self.machine.spec(job).name.clone();
                    if let (Some(n), Some(slot)) = (note, self.repair_steps.get_mut(&name)) {
                        *slot = Some(n);
                    }
                    self.input(Input::Prepared { job, ok });
                }
            }
            Msg::Replaced { job, code } => {
                tracing::error!(job = %job, code, "repair: replacing this node; stopping every job and exiting");
                self.exit_override = Some(code);
                self.stop("repair replace");
            }
            Msg::Watchdog(w) => self.watchdog(&w),
            Msg::Switched {
                job,
                ready,
                outcome,
            } => self.switched(job, ready, outcome),
        }
    }

    /// What a repair job's task is given: a change restarts its task.
    fn repair_unit(&self, job: usize) -> Option<crate::repair::Unit> {
        let spec = self.machine.spec(job);
        let r = spec.repair.clone()?;
        Some(crate::repair::Unit {
            job: spec.name.clone(),
            node: self.entry_id(job),
            address: self.job_address(job),
            spec: r,
        })
    }

    /// What the agent observes of repair job `job` now.
    fn repair_condition(&self, job: usize) -> autopilot_core::repair::Condition {
        let spec = self.machine.spec(job);
        let phase = self.machine.phase(job);
        autopilot_core::repair::condition(&autopilot_core::repair::JobObservation {
            running: matches!(phase, Phase::Running(Some(_))),
            preparing: matches!(phase, Phase::Preparing),
            health: self.machine.health(job),
            has_check: spec.health.is_some(),
            parked: self.machine.parked(job),
            watchdog_error: crate::repair::watchdog_error(&spec.name, &self.watchdogs),
        })
    }

    /// Starts a repair task for each job with a `repair` block that has
    /// none (a job whose repair settings are unchanged keeps its task) and
    /// ends the others, removing their node entries.
    fn start_repairs(&mut self) {
        if self.machine.stopping() == Some(StopReason::Shutdown) {
            self.end_repairs();
            return;
        }
        let mut old = std::mem::take(&mut self.repairs);
        let mut gone = Vec::new();
        for j in 0..self.machine.job_count() {
            let Some(unit) = self.repair_unit(j) else {
                continue;
            };
            let name = unit.job.clone();
            match old.remove(&name) {
                Some(t) if t.unit == unit => {
                    self.repairs.insert(name, t);
                    continue;
                }
                Some(t) => gone.push(t),
                None => {}
            }
            let leading = self.machine.leading(j).is_some();
            self.repair_leading.insert(name.clone(), leading);
            self.repair_counted.insert(name.clone(), 0);
            let job = name.clone();
            let task = crate::repair::spawn(
                self.catalog.clone(),
                self.registrar.clone(),
                unit,
                self.repair_condition(j),
                leading,
                self.tx.clone(),
                move |request| Msg::Repair {
                    job: job.clone(),
                    request,
                },
            );
            self.repairs.insert(name, task);
        }
        gone.extend(old.into_values());
        for t in gone {
            if !self.repairs.values().any(|k| k.unit.node == t.unit.node) {
                self.registrar.remove(&t.unit.node);
            }
            self.repair_steps.remove(&t.unit.job);
            t.end();
        }
    }

    /// Ends every repair task and removes its node entry (the node record
    /// stays: the next start continues from it).
    fn end_repairs(&mut self) {
        self.sync_repairs();
        for t in std::mem::take(&mut self.repairs).into_values() {
            t.task.abort();
            self.registrar.remove(&t.unit.node);
        }
        self.repair_steps.clear();
    }

    /// After every machine step: each repair task's condition and
    /// leadership, and the repair metrics.
    fn sync_repairs(&mut self) {
        if self.repairs.is_empty() {
            return;
        }
        for j in 0..self.machine.job_count() {
            let name = self.machine.spec(j).name.clone();
            if !self.repairs.contains_key(&name) {
                continue;
            }
            let cond = self.repair_condition(j);
            let leading = self.machine.leading(j).is_some();
            let Some(t) = self.repairs.get(&name) else {
                continue;
            };
            t.condition(cond);
            if self.repair_leading.get(&name) != Some(&leading) {
                self.repair_leading.insert(name.clone(), leading);
                t.leading(leading);
            }
            let Some(snap) = t.snapshot() else {
                continue;
            };
            for state in [
                autopilot_core::repair::NodeState::Healthy,
                autopilot_core::repair::NodeState::Failure,
                autopilot_core::repair::NodeState::Probation,
            ] {
                let v = if snap.view.state == state { 1.0 } else { 0.0 };
                self.metrics.record(
                    "autopilot_repair_state",
                    &[("job", &name), ("state", state.as_str())],
                    v,
                );
            }
            self.metrics.record(
                "autopilot_repair_budget_exhausted",
                &[("job", &name)],
                if snap.view.exhausted { 1.0 } else { 0.0 },
            );
            let counted = self.repair_counted.entry(name.clone()).or_insert(0);
            for (step, outcome) in snap.outcomes.iter().skip(*counted) {
                self.metrics.record(
                    "autopilot_repair_actions_total",
                    &[
                        ("job", &name),
                        ("step", step.as_str()),
                        ("outcome", outcome.as_str()),
                    ],
                    1.0,
                );
            }
            *counted = snap.outcomes.len();
        }
    }

    /// A repair task's request.
    fn repair_request(&mut self, name: &str, request: crate::repair::Request) {
        use autopilot_core::spec::RepairStep;
        let Some(job) = (0..self.machine.job_count()).find(|j| self.machine.spec(*j).name == name)
        else {
            return;
        };
        let Some(task) = self.repairs.get(name) else {
            return;
        };
        match request {
            crate::repair::Request::Event(code) => {
                self.input(Input::External(Event::new(code, name)));
            }
            crate::repair::Request::Demote => {
                if self.machine.leading(job).is_none() {
                    task.leading(false);
                } else {
                    // The campaign resigns; the machine campaigns again
                    // once the job runs healthy after the step.
                    tracing::warn!(job = %name, "repair: stepping down from the election before the step");
                    self.campaign(job, false);
                }
            }
            crate::repair::Request::Run {
                step: step @ (RepairStep::Restart | RepairStep::Reimage),
                ..
            } => {
                if self.machine.stopping().is_some() {
                    task.done(false, "the agent is stopping");
                    return;
                }
                let note = (step == RepairStep::Reimage
                    && !self
                        .machine
                        .spec(job)
                        .snapshot
                        .as_ref()
                        .is_some_and(|s| s.restores()))
                .then(|| "no verified snapshot: the job has no snapshot with a restore command and dataDir".to_string());
                self.repair_steps.insert(name.to_string(), note);
                self.input(Input::Repair { job, step });
            }
            crate::repair::Request::Run {
                step: RepairStep::Replace,
                reason,
                exit_code,
                ..
            } => {
                let hook = task.unit.spec.replace_exec.clone();
                let limit = task.unit.spec.replace_timeout;
                tracing::error!(job = %name, %reason, code = exit_code, "repair: replacing this node (the last step of the ladder)");
                let env = self.child_env(job);
                let spawner = self.spawner.clone();
                let tx = self.tx.clone();
                let job_name = name.to_string();
                tokio::spawn(async move {
                    if let Some(argv) = hook {
                        run_replace_hook(&spawner, argv, env, limit, &job_name).await;
                    }
                    let _ = tx
                        .send(Msg::Replaced {
                            job: job_name,
                            code: exit_code,
                        })
                        .await;
                });
            }
        }
    }

    /// The machine starts job `job` again: a repair step waiting for it ends.
    fn repair_started(&mut self, job: usize) {
        let name = &self.machine.spec(job).name;
        let Some(note) = self.repair_steps.remove(name) else {
            return;
        };
        if let Some(t) = self.repairs.get(name) {
            match note {
                Some(why) => t.done(false, &why),
                None => t.done(true, "the job was started again"),
            }
        }
    }

    /// A repair's reimage before the job starts again, off the event loop.
    fn reimage(&mut self, job: usize) {
        let Some(spec) = self.machine.spec(job).snapshot.clone() else {
            self.input(Input::Prepared { job, ok: true });
            return;
        };
        let ctx = self.snapshot_ctx(job);
        let tx = self.tx.clone();
        let key = self.job_keys.get(job).copied().unwrap_or_default();
        tokio::spawn(async move {
            let (ok, note) = match crate::snapshots::reimage(&ctx, &spec).await {
                Ok(crate::snapshots::Reimaged::Restored { .. }) => (true, None),
                Ok(crate::snapshots::Reimaged::NoSnapshot(why)) => {
                    tracing::error!(set = %spec.set, "reimage not done: no verified snapshot ({why}); the job starts again on its data");
                    (true, Some(format!("no verified snapshot: {why}")))
                }
                Err(e) => {
                    tracing::error!(set = %spec.set, "reimage failed after the data was moved aside: {e}");
                    (
                        false,
                        Some(format!(
                            "the restore after moving the data aside failed: {e}"
                        )),
                    )
                }
            };
            let _ = tx.send(Msg::Reimaged { key, ok, note }).await;
        });
    }

    /// Starts the config's watchdogs (a reload that keeps them keeps the set).
    fn start_watchdogs(&mut self) {
        let specs = self.config.watchdogs.clone();
        if self
            .watchdog_set
            .as_ref()
            .is_some_and(|(_, old)| *old == specs)
        {
            return;
        }
        if let Some((set, _)) = self.watchdog_set.take() {
            tokio::spawn(set.stop());
        }
        self.watchdogs.clear();
        if specs.is_empty() {
            return;
        }
        let (tx, mut rx) = mpsc::channel(64);
        let agent = self.tx.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if agent.send(Msg::Watchdog(r)).await.is_err() {
                    return;
                }
            }
        });
        let env: Vec<(String, String)> = self
            .base_env
            .iter()
            .chain(&self.put_env)
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(self.hook_env.iter().cloned())
            .collect();
        let ctx = crate::watchdog::WatchdogCtx {
            registrar: self.registrar.clone(),
            host: self.hostname.clone(),
            address: String::new(),
            ttl: DEFAULT_TTL,
            catalog_ok: self.catalog_ok.subscribe(),
            spawner: self.spawner.clone(),
            env,
        };
        let set = crate::watchdog::WatchdogSet::start(&specs, ctx, tx);
        self.watchdog_set = Some((set, specs));
        self.refresh_watchdogs();
    }

    /// The watchdogs as the set shows them now.
    fn refresh_watchdogs(&mut self) {
        let Some((set, _)) = &self.watchdog_set else {
            return;
        };
        self.watchdogs = set
            .view()
            .into_iter()
            .map(|v| {
                let since = v
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                crate::repair::WatchdogShown {
                    name: v.name,
                    job: v.job,
                    status: v.status,
                    message: v.message,
                    since: autopilot_catalog::rfc3339_ms(since),
                }
            })
            .collect();
        for w in &self.watchdogs {
            for st in [
                autopilot_core::repair::WatchdogStatus::Ok,
                autopilot_core::repair::WatchdogStatus::Warning,
                autopilot_core::repair::WatchdogStatus::Error,
            ] {
                let v = if w.status == st { 1.0 } else { 0.0 };
                self.metrics.record(
                    "autopilot_watchdog_status",
                    &[("watchdog", &w.name), ("status", st.as_str())],
                    v,
                );
            }
        }
    }

    /// A watchdog's report: shown, counted, and folded into repair conditions.
    fn watchdog(&mut self, r: &crate::watchdog::WatchdogReport) {
        match r.status {
            autopilot_core::repair::WatchdogStatus::Ok => {
                tracing::info!(watchdog = %r.name, message = %r.message, "watchdog ok")
            }
            autopilot_core::repair::WatchdogStatus::Warning => {
                tracing::warn!(watchdog = %r.name, message = %r.message, "watchdog warning")
            }
            autopilot_core::repair::WatchdogStatus::Error => {
                tracing::error!(watchdog = %r.name, message = %r.message, "watchdog error")
            }
        }
        self.refresh_watchdogs();
        self.sync_repairs();
    }

    /// A unit's member record: where its job serves, its entry's TTL.
    fn unit_of(&self, job: usize, a: &autopilot_core::spec::ArtifactSpec) -> fleet::Unit {
        let spec = self.machine.spec(job);
        fleet::Unit {
            artifact: a.name.clone(),
            dest: a.dest.clone(),
            store: a.store.clone(),
            instance: self.entry_id(job),
            address: self.job_address(job),
            port: spec.port.unwrap_or(0),
            ttl: spec.health.as_ref().map_or(DEFAULT_TTL, |h| h.ttl),
        }
    }

    fn bundle_unit(&self) -> Option<fleet::Unit> {
        let b = self.bundle.as_ref()?;
        Some(fleet::Unit {
            artifact: b.name.clone(),
            dest: b.dest.clone(),
            store: b.store.clone(),
            instance: format!("autopilot-{}", self.hostname),
            address: String::new(),
            port: 0,
            ttl: DEFAULT_TTL,
        })
    }

    /// What each unit's task hears of its job (the bundle's: every job with
    /// a health check passing).
    fn fleet_health(&self) -> (BTreeMap<String, fleet::Health>, fleet::Health) {
        let view = self.machine.view();
        let maintenance = self.machine.in_maintenance();
        let mut jobs = BTreeMap::new();
        let mut all = true;
        for (j, v) in view.iter().enumerate() {
            let spec = self.machine.spec(j);
            let running = matches!(v.phase, Phase::Running(_));
            let healthy = v.health == autopilot_core::HealthStatus::Healthy;
            if spec.health.is_some() && !healthy {
                all = false;
            }
            if spec.artifact.is_none() {
                continue;
            }
            jobs.insert(
                spec.name.clone(),
                fleet::Health {
                    sha: spec.artifact_sha.clone(),
                    running,
                    passing: running && (healthy || spec.health.is_none()),
                    why: self.check_failures.get(&spec.name).cloned(),
                    maintenance,
                    // Counted by the task's health sender.
                    dips: 0,
                },
            );
        }
        let bundle = fleet::Health {
            sha: self.bundle_sha.clone(),
            running: true,
            passing: all,
            why: (!all).then(|| "a job's health check is not passing".to_string()),
            maintenance,
            dips: 0,
        };
        (jobs, bundle)
    }

    /// Starts a task for each job with an artifact that has none (a job
    /// whose artifact settings are unchanged keeps its task) and for the
    /// config bundle; ends the others and removes their member records.
    fn start_fleet(&mut self) {
        if self.machine.stopping() == Some(StopReason::Shutdown) {
            self.end_fleet();
            return;
        }
        let (health, bundle_health) = self.fleet_health_now();
        let mut old = std::mem::take(&mut self.fleet);
        let mut gone = Vec::new();
        for j in 0..self.machine.job_count() {
            let Some(a) = self.machine.spec(j).artifact.clone() else {
                continue;
            };
            let name = self.machine.spec(j).name.clone();
            let unit = self.unit_of(j, &a);
            match old.remove(&name) {
                Some(t) if t.unit == unit => {
                    self.fleet.insert(name, t);
                    continue;
                }
                Some(t) => gone.push(t),
                None => {}
            }
            let job = name.clone();
            let task = fleet::spawn(
                self.catalog.clone(),
                self.registrar.clone(),
                unit,
                health.get(&name).cloned().unwrap_or_default(),
                self.tx.clone(),
                move |ready| Msg::Fleet {
                    job: Some(job.clone()),
                    ready,
                },
            );
            self.fleet.insert(name, task);
        }
        let bundle = self.bundle_unit();
        match self.bundle_task.take() {
            Some(t) if Some(&t.unit) == bundle.as_ref() => self.bundle_task = Some(t),
            Some(t) => gone.push(t),
            None => {}
        }
        if let (None, Some(unit)) = (&self.bundle_task, bundle) {
            self.bundle_task = Some(fleet::spawn(
                self.catalog.clone(),
                self.registrar.clone(),
                unit,
                bundle_health,
                self.tx.clone(),
                |ready| Msg::Fleet { job: None, ready },
            ));
        }
        gone.extend(old.into_values());
        let kept: Vec<String> = self
            .fleet
            .values()
            .chain(self.bundle_task.as_ref())
            .map(|t| fleet::member_id(&t.unit.artifact, &t.unit.instance))
            .collect();
        for t in gone {
            t.task.abort();
            let id = fleet::member_id(&t.unit.artifact, &t.unit.instance);
            if !kept.contains(&id) {
                self.registrar.remove(&id);
            }
        }
    }

    /// Ends every unit's task and removes its member record; versions that
    /// became ready meanwhile are dropped unanswered.
    fn end_fleet(&mut self) {
        self.fleet_pending.clear();
        for t in std::mem::take(&mut self.fleet)
            .into_values()
            .chain(self.bundle_task.take())
        {
            t.task.abort();
            self.registrar
                .remove(&fleet::member_id(&t.unit.artifact, &t.unit.instance));
        }
    }

    /// What the bundle's task hears: while a reload is in flight the old
    /// jobs still run, so the bundle is not running its new version yet.
    fn fleet_health_now(&self) -> (BTreeMap<String, fleet::Health>, fleet::Health) {
        let (jobs, mut bundle) = self.fleet_health();
        if self.next_config.is_some() {
            bundle.running = false;
        }
        (jobs, bundle)
    }

    /// Tells each unit's task what its job runs and how it is.
    fn sync_fleet(&mut self) {
        if self.fleet.is_empty() && self.bundle_task.is_none() {
            return;
        }
        let (health, bundle) = self.fleet_health_now();
        for (name, t) in &self.fleet {
            if let Some(h) = health.get(name) {
                t.health.send_if_modified(|old| {
                    let changed = old != h;
                    if changed {
                        *old = h.clone();
                    }
                    changed
                });
            }
        }
        for (job, t) in self
            .fleet
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .chain(self.bundle_task.as_ref().map(|t| ("", t)))
        {
            let (version, state) = {
                let st = t.status.lock().unwrap_or_else(|e| e.into_inner());
                (st.version.clone(), st.state.clone())
            };
            if !state.is_empty() {
                self.metrics.info(
                    "autopilot_rollout_state",
                    ("artifact", &t.unit.artifact),
                    &[("state", &state)],
                );
            }
            if !version.is_empty() {
                self.metrics.info(
                    "autopilot_artifact_info",
                    ("job", job),
                    &[("artifact", &t.unit.artifact), ("version", &version)],
                );
            }
        }
        if let Some(t) = &self.bundle_task {
            t.health.send_if_modified(|old| {
                let changed = *old != bundle;
                if changed {
                    *old = bundle.clone();
                }
                changed
            });
        }
    }

    /// Versions that became ready during a reload, now that it is over.
    fn fleet_pending_run(&mut self) {
        while self.next_config.is_none()
            && !self.switching
            && let Some((job, ready)) = self.fleet_pending.pop_front()
        {
            self.fleet_ready(job, ready);
        }
    }

    /// A unit's task has a verified version ready: switch `current` to it
    /// and restart its job (or reload the bundle's config) through a reload,
    /// one reload at a time. The switch (and its removal of old versions,
    /// and a bundle config's load) runs off the event loop; the reload
    /// begins when it returns ([`Agent::switched`]).
    fn fleet_ready(&mut self, job: Option<String>, ready: fleet::Ready) {
        if self.machine.stopping().is_some() {
            // Its task has ended (see `stop`): nobody to tell, and the
            // version did not fail.
            drop(ready);
            return;
        }
        if self.next_config.is_some() || self.switching {
            self.fleet_pending.push_back((job, ready));
            return;
        }
        type Work = Box<dyn FnOnce() -> Result<Option<Box<Loaded>>, String> + Send>;
        let work: Work = match &job {
            Some(name) => {
                let Some(a) = self
                    .config
                    .jobs
                    .iter()
                    .find(|s| s.name == *name)
                    .and_then(|s| s.artifact.clone())
                else {
                    let e = format!("job {name} no longer runs an artifact");
                    tracing::error!(job = %name, version = %ready.version, "not switched: {e}");
                    let _ = ready.reply.send(Err(e));
                    return;
                };
                let to = ready.to.clone();
                Box::new(move || {
                    autopilot_artifact::switch(&a.dest, &to)
                        .map(|()| None)
                        .map_err(|e| e.to_string())
                })
            }
            None => {
                let Some(b) = self.bundle.clone() else {
                    let _ = ready
                        .reply
                        .send(Err("the config has no bundle any more".into()));
                    return;
                };
                let (to, version) = (ready.to.clone(), ready.version.clone());
                let (bootstrap, env) = (self.bootstrap.clone(), self.render_env());
                Box::new(move || {
                    switch_bundle(&b, &to, &version, &bootstrap, &env).map(|l| Some(Box::new(l)))
                })
            }
        };
        self.switching = true;
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = work();
            // The agent is gone when this fails: nothing to tell.
            let _ = tx.blocking_send(Msg::Switched {
                job,
                ready,
                outcome,
            });
        });
    }

    /// A switch ran: on success the job restarts (or the bundle's config is
    /// reloaded) through a reload; the unit's task hears the outcome.
    fn switched(
        &mut self,
        job: Option<String>,
        ready: fleet::Ready,
        outcome: Result<Option<Box<Loaded>>, String>,
    ) {
        self.switching = false;
        if self.machine.stopping().is_some() {
            // `current` moved; the next start runs it.
            drop(ready);
            return;
        }
        let res = outcome.and_then(|loaded| match (&job, loaded) {
            (Some(name), _) => self.restart_switched(name, &ready),
            (None, Some(l)) => {
                self.reload_bundle(l, &ready);
                Ok(())
            }
            (None, None) => Err("no bundle config loaded".into()),
        });
        if let Err(e) = &res {
            tracing::error!(job = job.as_deref().unwrap_or("(config bundle)"), version = %ready.version, "not switched: {e}");
        }
        let _ = ready.reply.send(res);
        if self.next_config.is_none() && std::mem::take(&mut self.reload_queued) {
            tracing::info!("carrying out the reload asked for during the switch");
            if let Err(e) = self.reload() {
                tracing::error!("reload not carried out: {e}");
            }
        }
        self.fleet_pending_run();
    }

    fn restart_switched(&mut self, name: &str, ready: &fleet::Ready) -> Result<(), String> {
        let mut cfg = self.config.clone();
        let spec = cfg
            .jobs
            .iter_mut()
            .find(|s| s.name == name && s.artifact.is_some())
            .ok_or_else(|| format!("job {name} no longer runs an artifact"))?;
        spec.artifact_sha = fleet::sha_of(&ready.to);
        let artifact = spec.artifact.as_ref().map(|a| a.name.clone());
        tracing::info!(job = %name, artifact = artifact.as_deref().unwrap_or(""), version = %ready.version, "switched to the new version; restarting the job through its lifecycle");
        let ips = self.job_ips.clone();
        self.begin_reload(cfg, ips);
        Ok(())
    }

    fn reload_bundle(&mut self, l: Box<Loaded>, ready: &fleet::Ready) {
        let (cfg, ips) = *l;
        for w in &cfg.warnings {
            tracing::warn!(field = %w.field, "{}", w.message);
        }
        if let Some(nb) = &cfg.bundle {
            self.bundle = Some(nb.clone());
        }
        tracing::info!(version = %ready.version, config = %cfg.path.display(), "config bundle switched; reloading (unchanged jobs keep running)");
        self.begin_reload(cfg, ips);
        // Taken as the bundle's version once the reload is adopted.
        self.next_bundle_sha = Some(fleet::sha_of(&ready.to));
    }

    fn begin_reload(&mut self, cfg: Config, ips: Vec<Option<IpAddr>>) {
        let (jobs, stop_timeout) = (cfg.jobs.clone(), cfg.stop_timeout);
        self.next_config = Some((cfg, ips));
        self.input(Input::Reload { jobs, stop_timeout });
    }

    /// Records a finished health check of job `name`: metrics, and why it
    /// failed for the `unhealthy` line.
    fn check_done(&mut self, name: &str, started: Instant, failure: Option<String>) {
        let result = if failure.is_none() {
            "passed"
        } else {
            "failed"
        };
        self.metrics.record(
            "autopilot_health_checks",
            &[("job", name), ("result", result)],
            1.0,
        );
        self.metrics.record(
            "autopilot_health_check_duration_seconds",
            &[("job", name)],
            started.elapsed().as_secs_f64(),
        );
        match failure {
            Some(why) => {
                tracing::debug!(job = %name, "health check failed: {why}");
                self.check_failures.insert(name.to_string(), why);
            }
            None => {
                tracing::debug!(job = %name, "health check passed");
                self.check_failures.remove(name);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Reload(reply) => {
                if (self.next_config.is_some() || self.switching)
                    && self.machine.stopping().is_none()
                {
                    // One reload at a time: this one is checked now and
                    // carried out (reading the file again) once the one in
                    // flight is adopted, so it cannot drop that one's config.
                    let res = self.load_reload().map(|_| ());
                    if res.is_ok() {
                        tracing::info!(
                            "reload asked for during a reload: it follows once this one is done"
                        );
                        self.reload_queued = true;
                    }
                    let _ = reply.send(res);
                    return;
                }
                let _ = reply.send(self.reload());
            }
            Command::Maintenance(on, reply) => {
                let updated = self.machine.in_maintenance() != on;
                if updated {
                    tracing::info!(enabled = on, "maintenance mode changed");
                }
                let _ = reply.send(updated);
                self.input(Input::Maintenance(on));
            }
            Command::PutEnv(env, reply) => {
                // Checked on the result, so many small requests cannot add up
                // to an environment execve refuses (E2BIG).
                let mut next = self.put_env.clone();
                for (k, v) in env {
                    match v {
                        Some(v) => next.insert(k, v),
                        None => next.remove(&k),
                    };
                }
                let total: usize = next
                    .iter()
                    .map(|(k, v)| k.len().saturating_add(v.len()).saturating_add(2))
                    .fold(0, usize::saturating_add);
                let res = if next.len() > control::ENV_MAX_VARS {
                    Err(format!(
                        "putenv would hold {} variables; at most {}",
                        next.len(),
                        control::ENV_MAX_VARS
                    ))
                } else if total > control::ENV_MAX_TOTAL {
                    Err(format!(
                        "putenv would hold {total} bytes; at most {}",
                        control::ENV_MAX_TOTAL
                    ))
                } else {
                    self.put_env = next;
                    Ok(())
                };
                let _ = reply.send(res);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Position {
                election,
                position,
                reply,
            } => {
                let res = self.set_position(election, position);
                let _ = reply.send(res);
                self.sync_members();
            }
        }
    }

    /// Stores the replication position a hook published for an election of
    /// this agent (`None`: its only one).
    fn set_position(&mut self, election: Option<String>, position: u64) -> Result<(), String> {
        let mut mine: Vec<String> = (0..self.machine.job_count())
            .filter_map(|j| {
                self.machine
                    .spec(j)
                    .election
                    .as_ref()
                    .map(|e| e.name.clone())
            })
            .collect();
        mine.sort();
        mine.dedup();
        let name = match election {
            Some(e) if mine.contains(&e) => e,
            Some(e) => {
                return Err(format!("election: no job of this agent campaigns in {e:?}"));
            }
            None => match mine.as_slice() {
                [only] => only.clone(),
                [] => return Err("election: no job of this agent has an election".into()),
                _ => {
                    return Err(format!(
                        "election: this agent's jobs campaign in several elections ({}); name one",
                        mine.join(", ")
                    ));
                }
            },
        };
        self.positions.insert(name, position);
        Ok(())
    }

    /// Publishes one member record per running elected job (status from its
    /// health, tags from its settings, the hook's position and the
    /// campaign's vote), with its presence listener; removes the records of
    /// jobs that stopped.
    fn sync_members(&mut self) {
        let view = self.machine.view();
        let mut wanted: BTreeMap<String, Registration> = BTreeMap::new();
        for (j, v) in view.iter().enumerate() {
            let Some(e) = self.machine.spec(j).election.clone() else {
                continue;
            };
            if !matches!(v.phase, Phase::Running(Some(_))) {
                continue;
            }
            let Some(ip) = self.job_ips.get(j).copied().flatten() else {
                continue;
            };
            let me = self.candidate(j);
            let id = autopilot_core::cluster::member_id(&e.name, &me.id);
            // A new record, or the job's IP changed on reload: (re)open
            // the presence listener on the candidate's current address.
            if self.members.get(&id).is_none_or(|m| m.ip != ip) {
                let presence = match crate::cluster::Presence::open(ip) {
                    Ok(p) => Some(p),
                    Err(err) => {
                        tracing::warn!(election = %e.name, "cannot open the presence listener on {ip}: {err}; the member record has no probe address, so followers cannot fail over fast from this node");
                        None
                    }
                };
                match self.members.get_mut(&id) {
                    Some(m) => {
                        m.ip = ip;
                        m.presence = presence;
                    }
                    None => {
                        self.members.insert(
                            id.clone(),
                            MemberRecord {
                                election: e.name.clone(),
                                ip,
                                presence,
                                // Never equal to a wanted record: published below.
                                published: Registration {
                                    id: String::new(),
                                    name: String::new(),
                                    address: String::new(),
                                    port: 0,
                                    tags: Vec::new(),
                                    status: Status::Critical,
                                    ttl: e.ttl,
                                    deregister_critical_after: None,
                                    seat: None,
                                },
                            },
                        );
                    }
                }
            }
            let probe = self
                .members
                .get(&id)
                .and_then(|m| m.presence.as_ref())
                .map(|p| p.addr);
            let member = autopilot_core::cluster::Member {
                id: me.id.clone(),
                passing: true,
                priority: e.priority,
                max_lag: e.max_lag,
                position: self.positions.get(&e.name).copied(),
                suspect: self.suspects.get(&e.name).copied(),
                probe: probe.map(|p| p.to_string()),
            };
            let status = if v.health == autopilot_core::HealthStatus::Healthy {
                Status::Passing
            } else {
                Status::Critical
            };
            wanted.insert(
                id.clone(),
                Registration {
                    id,
                    name: autopilot_core::cluster::members_service(&e.name),
                    address: me.address,
                    port: me.port,
                    tags: member.tags(),
                    status,
                    ttl: e.ttl,
                    deregister_critical_after: None,
                    seat: None,
                },
            );
        }
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for id in gone {
            self.registrar.remove(&id);
            // The position describes the data of the run that published
            // it: a stopped (or rebuilt) job must not republish it.
            if let Some(m) = self.members.remove(&id)
                && !self.members.values().any(|o| o.election == m.election)
            {
                self.positions.remove(&m.election);
            }
        }
        for (id, r) in wanted {
            if let Some(m) = self.members.get_mut(&id)
                && m.published != r
            {
                m.published = r.clone();
                self.registrar.put(r);
            }
        }
    }

    /// `autopilot reload`: reads the config again and stops the jobs it
    /// changes; the new config is taken once they have stopped.
    fn reload(&mut self) -> Result<(), String> {
        self.prepare_reload()?;
        let Some((cfg, _)) = &self.next_config else {
            return Ok(());
        };
        let (jobs, stop_timeout) = (cfg.jobs.clone(), cfg.stop_timeout);
        let old: Vec<_> = (0..self.machine.job_count())
            .map(|j| self.machine.spec(j).clone())
            .collect();
        let kept = autopilot_core::machine::plan_reload(&old, &jobs);
        let unchanged = kept.iter().flatten().count();
        tracing::info!(
            unchanged,
            stopping = old.len().saturating_sub(unchanged),
            "reloading: unchanged jobs keep running; changed and removed ones stop first"
        );
        self.input(Input::Reload { jobs, stop_timeout });
        Ok(())
    }

    /// Reads and checks the config a reload would take: the config
    /// bundle's when one is installed (as at start), else the bootstrap file.
    fn load_reload(&self) -> Result<(Config, Vec<Option<IpAddr>>), String> {
        if self.machine.stopping().is_some() {
            return Err("the agent is already stopping".into());
        }
        let installed = self
            .bundle
            .as_ref()
            .map(|b| (b, b.dest.join("current").join(&b.file)))
            .filter(|(_, f)| f.exists());
        let path = installed
            .as_ref()
            .map_or_else(|| self.bootstrap.clone(), |(_, f)| f.clone());
        let env = self.render_env();
        let mut cfg = autopilot_config::load(&path, &env).map_err(|e| e.to_string())?;
        if let Some((b, _)) = installed {
            same_bundle(b, &cfg, &path)?;
        }
        stamp_artifacts(&mut cfg);
        let ips = job_ips(&cfg).map_err(|e| e.to_string())?;
        if cfg.control != self.config.control
            || cfg.telemetry.as_ref().map(|t| t.port)
                != self.config.telemetry.as_ref().map(|t| t.port)
        {
            tracing::warn!("control and telemetry listeners keep their old settings until restart");
        }
        if cfg.dns != self.config.dns {
            tracing::warn!("the dns server keeps its old settings until restart");
        }
        // The reloaded file's unhonoured fields, named as at start.
        for w in &cfg.warnings {
            tracing::warn!(field = %w.field, "{}", w.message);
        }
        Ok((cfg, ips))
    }

    fn prepare_reload(&mut self) -> Result<(), String> {
        let next = self.load_reload()?;
        self.next_config = Some(next);
        Ok(())
    }

    fn render_env(&self) -> BTreeMap<String, String> {
        let mut env = self.base_env.clone();
        env.extend(self.put_env.clone());
        env
    }

    /// Carries out queued actions until none remain, taking a reload's new config
    /// when its turn comes; returns the exit code once a shutdown has finished.
    fn execute(&mut self) -> Option<i32> {
        loop {
            if let Some(code) = self.execute_queued() {
                return Some(code);
            }
            // Every action of the old job list is carried out: take the new one.
            if !std::mem::take(&mut self.adopt_due) {
                return None;
            }
            self.adopt();
        }
    }

    /// Takes the new config of a reload whose old jobs have stopped: the
    /// machine keeps unchanged jobs, and the per-job, watch and template
    /// tasks follow its mapping.
    fn adopt(&mut self) {
        let Some((kept, actions)) = self.machine.adopt(self.start.elapsed()) else {
            return;
        };
        let Some((cfg, ips)) = self.next_config.take() else {
            self.queue.extend(actions);
            return;
        };
        if let Some(sha) = self.next_bundle_sha.take() {
            self.bundle_sha = sha;
        }
        let new_of_old = autopilot_core::machine::new_of_old(&kept, self.config.jobs.len());
        self.runs
            .retain(|_, r| match new_of_old.get(r.job).copied().flatten() {
                Some(n) => {
                    r.job = n;
                    true
                }
                None => false,
            });
        self.metrics.set_user(
            &cfg.telemetry
                .as_ref()
                .map(|t| t.metrics.clone())
                .unwrap_or_default(),
        );
        let old = std::mem::replace(&mut self.config, cfg);
        self.job_ips = ips;
        // A claimed reinit's job has stopped: empty its data before it
        // starts again, unless this node led meanwhile.
        if let Some(r) = self.reinit_pending.take_if(|r| r.claimed && r.quiet) {
            if r.led {
                tracing::error!(job = %r.job, dir = %r.dir.display(), "reinit refused: this node led since the request; its data is kept");
            } else {
                match crate::cluster::empty_dir(&r.dir, &self.reinit_uids(&r.job)) {
                    Ok(n) => {
                        tracing::warn!(job = %r.job, dir = %r.dir.display(), entries = n, "reinit: data directory emptied; restoring before start")
                    }
                    Err(e) => {
                        tracing::error!(job = %r.job, "reinit: cannot empty the data directory: {e}")
                    }
                }
            }
        }
        self.reset_elections(&kept);
        self.start_reinit_watches();
        self.start_watches(&old.watches);
        self.start_templates(&old.templates);
        self.start_fleet();
        self.start_watchdogs();
        self.start_repairs();
        self.start_announce();
        let unchanged = kept.iter().flatten().count();
        tracing::info!(
            jobs = self.config.jobs.len(),
            unchanged,
            "config reloaded; starting new and changed jobs"
        );
        self.queue.extend(actions);
        if std::mem::take(&mut self.reload_queued) {
            tracing::info!("carrying out the reload asked for during the last one");
            if let Err(e) = self.reload() {
                tracing::error!("reload not carried out: {e}");
            }
        }
        self.fleet_pending_run();
    }

    /// Carries out queued actions until none remain; returns the exit code
    /// once the machine has finished a shutdown.
    fn execute_queued(&mut self) -> Option<i32> {
        while let Some(action) = self.queue.pop_front() {
            match action {
                Action::Spawn { run, job, kind } => {
                    if kind == ProcKind::Job {
                        self.repair_started(job);
                        if let Some((set, _)) = &self.watchdog_set {
                            set.job_started(&self.machine.spec(job).name);
                        }
                    }
                    self.spawn(run, job, kind)
                }
                Action::Signal { run, sig } => {
                    let Some(meta) = self.runs.get(&run) else {
                        continue;
                    };
                    let name = self.machine.spec(meta.job).name.clone();
                    if let Some(probe) = &meta.probe {
                        // A native check has no process: stopping it is
                        // aborting its task, and it ends as a killed check would.
                        probe.abort();
                        let started = meta.started;
                        // Outside a stop, the machine kills a check only
                        // when its timeout ran out (racing the probe's own
                        // deadline, which is the same).
                        // A stop or a reload that retires the job kills its
                        // check too: that is not a timeout.
                        let why = match &self.machine.spec(meta.job).health {
                            Some(h) if !self.machine.is_winding(meta.job) => {
                                format!("no answer within {}", crate::logging::dur(h.timeout))
                            }
                            _ => "the check was stopped".to_string(),
                        };
                        self.runs.remove(&run);
                        self.check_done(&name, started, Some(why));
                        self.input(Input::Exited {
                            run,
                            status: ExitStatus::Signal(9),
                        });
                        continue;
                    }
                    let Some(pid) = meta.pid else { continue };
                    let (s, signal) = match sig {
                        Sig::Term => (autopilot_process::Sig::Term, "SIGTERM"),
                        Sig::Kill => (autopilot_process::Sig::Kill, "SIGKILL"),
                    };
                    tracing::debug!(job = %name, pid, signal, "signalling process group");
                    if let Err(e) = autopilot_process::signal_group(pid, s) {
                        tracing::warn!(job = %name, pid, "cannot signal the process group: {e}");
                    }
                }
                Action::Published(ev) => {
                    tracing::debug!(event = %ev, "event");
                    for (t, (_, pokes)) in self.config.templates.iter().zip(&self.templates) {
                        if t.when
                            .as_ref()
                            .is_some_and(|w| w.code == ev.code && w.source == ev.source)
                        {
                            pokes.send_modify(|n| *n += 1);
                        }
                    }
                    self.metrics.record(
                        "autopilot_events",
                        &[("code", ev.code.as_str()), ("source", &ev.source)],
                        1.0,
                    );
                }
                Action::Health { job, healthy } => {
                    let name = self.machine.spec(job).name.clone();
                    let v = match healthy {
                        Some(true) => 1.0,
                        Some(false) => 0.0,
                        None => -1.0,
                    };
                    self.metrics
                        .record("autopilot_job_healthy", &[("job", &name)], v);
                    match healthy {
                        Some(true) => self.health_log.push(&name, "healthy"),
                        Some(false) => self.health_log.push(&name, "unhealthy"),
                        None => {}
                    }
                    match healthy {
                        Some(true) => tracing::info!(job = %name, "healthy"),
                        Some(false) => match self.check_failures.get(&name) {
                            Some(why) => tracing::warn!(job = %name, "unhealthy: {why}"),
                            None => tracing::warn!(job = %name, "unhealthy"),
                        },
                        None => {}
                    }
                }
                Action::Restarting { job, delay } => {
                    let name = self.machine.spec(job).name.clone();
                    self.metrics
                        .record("autopilot_job_restarts", &[("job", &name)], 1.0);
                    let delay_s = crate::logging::dur(delay);
                    let reset_after = self.machine.spec(job).backoff.reset_after;
                    let handler = matches!(
                        self.machine.spec(job).trigger,
                        autopilot_core::Trigger::Event { each: true, .. }
                    );
                    match self.last_runs.get(&name) {
                        // A failed run shorter than `resetAfter` keeps the
                        // back-off growing: the job is crash-looping.
                        Some((status, lasted)) if !status.success() && handler => {
                            // An `each` handler that has not reached its goal.
                            tracing::warn!(job = %name, "the handler {} after {}: retrying in {delay_s} (back-off)", exit_words(status), crate::logging::dur(*lasted));
                        }
                        Some((status, lasted)) if *lasted < reset_after && !status.success() => {
                            let how = exit_words(status);
                            tracing::warn!(job = %name, "crash loop: the job {how} after {}; restarting in {delay_s} (back-off)", crate::logging::dur(*lasted));
                        }
                        Some(_) => tracing::info!(job = %name, "restarting in {delay_s}"),
                        None => {
                            tracing::warn!(job = %name, "could not start (restore failed); retrying in {delay_s} (back-off)")
                        }
                    }
                }
                Action::Register { job, status } => {
                    if let Some(r) = self.registration(job, status) {
                        tracing::info!(id = %r.id, status = %r.status.as_str(), "registering");
                        self.registrar.put(r);
                    }
                }
                Action::SetStatus { job, status } => {
                    let id = self.entry_id(job);
                    tracing::info!(%id, status = %catalog_status(status).as_str(), "catalog status");
                    self.registrar.status(&id, catalog_status(status));
                }
                Action::Campaign { job, campaign } => self.campaign(job, campaign),
                Action::Prepare { job, reimage: true } => self.reimage(job),
                Action::Prepare { job, .. } => self.prepare(job),
                Action::Snapshot { job, only_if_none } => self.snapshot(job, only_if_none),
                Action::Deregister { job } => {
                    let id = self.entry_id(job);
                    tracing::info!(%id, "deregistering");
                    self.registrar.remove(&id);
                }
                Action::Finished {
                    reason: StopReason::Shutdown,
                    code,
                } => return Some(code),
                Action::Finished {
                    reason: StopReason::Reload,
                    ..
                } => self.adopt_due = true,
            }
        }
        None
    }

    fn spawn(&mut self, run: RunId, job: usize, kind: ProcKind) {
        let spec = self.machine.spec(job);
        let (argv, tag, raw) = match (kind, &spec.health) {
            (ProcKind::Job, _) => (spec.exec.clone(), spec.name.clone(), spec.raw_logs),
            (ProcKind::Check, Some(h)) => match &h.check {
                autopilot_core::HealthCheck::Exec { argv, raw } => {
                    (argv.clone(), format!("check.{}", spec.name), *raw)
                }
                check => {
                    let (check, timeout) = (check.clone(), h.timeout);
                    self.spawn_probe(run, job, &check, timeout);
                    return;
                }
            },
            (ProcKind::Check, None) => {
                // The machine only checks jobs with a health check; should
                // it not, the run must still end, or health would freeze.
                self.input(Input::SpawnFailed {
                    run,
                    error: format!("job '{}' has no health check", spec.name),
                });
                return;
            }
        };
        let name = spec.name.clone();
        let env = self.child_env(job);
        let stderr_at_info = spec.stderr_at_info;
        // `dieWithAgent`: a BGP speaker must not outlive the gate that
        // drives it (kill -9 of the agent would leave its routes up).
        let attach = autopilot_process::Attach {
            die_with_parent: kind == ProcKind::Job && spec.die_with_agent,
            ..Default::default()
        };
        match self.spawner.spawn_logged_attached(
            &SpawnSpec {
                argv,
                env,
                raw_output: raw,
                tag,
            },
            attach,
            stderr_at_info,
        ) {
            Ok(child) => {
                if kind == ProcKind::Job {
                    tracing::info!(job = %name, pid = child.pid, "job started");
                    self.metrics
                        .record("autopilot_job_running", &[("job", &name)], 1.0);
                }
                self.runs.insert(
                    run,
                    RunMeta {
                        pid: Some(child.pid),
                        probe: None,
                        job,
                        kind,
                        started: Instant::now(),
                    },
                );
                self.input(Input::Started {
                    run,
                    pid: child.pid,
                });
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Ok(exit) = child.exit.await {
                        let _ = tx.send(Msg::Exited { run, exit }).await;
                    }
                });
            }
            Err(e) => {
                tracing::error!(job = %name, "{e}");
                self.input(Input::SpawnFailed {
                    run,
                    error: e.to_string(),
                });
            }
        }
    }

    /// Runs a native (`http`/`tcp`) check as a task: no process, bounded by
    /// the check's timeout; its result comes back as [`Msg::Probed`].
    fn spawn_probe(
        &mut self,
        run: RunId,
        job: usize,
        check: &autopilot_core::HealthCheck,
        timeout: std::time::Duration,
    ) {
        let started = Instant::now();
        let probe = match crate::probe::Probe::of(check) {
            Ok(p) => p,
            Err(e) => {
                // The config layer checked the URL or address already, and
                // only native checks come here; if the probe still cannot
                // be made, the check ends as failed, so the machine's check
                // run ends and health moves on.
                let (tx, result) = (self.tx.clone(), Err(e));
                self.runs.insert(
                    run,
                    RunMeta {
                        pid: None,
                        probe: None,
                        job,
                        kind: ProcKind::Check,
                        started,
                    },
                );
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Probed { run, result }).await;
                });
                return;
            }
        };
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            let result = probe.run(timeout).await;
            let _ = tx.send(Msg::Probed { run, result }).await;
        });
        self.runs.insert(
            run,
            RunMeta {
                pid: None,
                probe: Some(task.abort_handle()),
                job,
                kind: ProcKind::Check,
                started,
            },
        );
    }

    /// The environment of every child: the agent's own, `-putenv` values,
    /// and the `CONTAINERPILOT_*` variables with `AUTOPILOT_*` twins.
    fn child_env(&self, job: usize) -> Vec<(String, String)> {
        let mut env = self.render_env();
        crate::catalog::scrub_secrets(&mut env);
        env.extend(self.hook_env.clone());
        for (i, w) in self.config.watches.iter().enumerate() {
            let file = self.watch_file(i).display().to_string();
            let key = env_key(w.source.trim_start_matches("watch."));
            env.insert(format!("AUTOPILOT_WATCH_{key}_FILE"), file.clone());
            if matches!(&self.machine.spec(job).trigger, autopilot_core::Trigger::Event { source, .. } if *source == w.source)
            {
                // The instances of the watch that triggered this handler.
                env.insert("AUTOPILOT_WATCH_FILE".into(), file);
            }
        }
        for (election, l) in &self.leaders {
            let key = env_key(election);
            env.insert(
                format!("AUTOPILOT_LEADER_{key}_FILE"),
                self.leader_file(election).display().to_string(),
            );
            if let Some(l) = l {
                env.insert(format!("AUTOPILOT_LEADER_{key}_ID"), l.id.clone());
                env.insert(format!("AUTOPILOT_LEADER_{key}_ADDRESS"), l.address.clone());
                env.insert(format!("AUTOPILOT_LEADER_{key}_PORT"), l.port.to_string());
                env.insert(format!("AUTOPILOT_LEADER_{key}_TERM"), l.term.to_string());
            }
        }
        let state = self.job_state_root.join(&self.machine.spec(job).name);
        match std::fs::create_dir_all(&state) {
            Ok(()) => {
                env.insert(
                    "AUTOPILOT_JOB_STATE_DIR".into(),
                    state.display().to_string(),
                );
            }
            Err(e) => {
                tracing::warn!(dir = %state.display(), "cannot create the job state directory: {e}")
            }
        }
        let mut set = |k: String, v: String| {
            env.insert(format!("CONTAINERPILOT_{k}"), v.clone());
            env.insert(format!("AUTOPILOT_{k}"), v);
        };
        set("PID".into(), std::process::id().to_string());

        for j in 0..self.machine.job_count() {
            let key = env_key(&self.machine.spec(j).name);
            if let Some(Some(ip)) = self.job_ips.get(j) {
                set(format!("{key}_IP"), ip.to_string());
            }
            if let Some(pid) = self.machine.pid_of(j) {
                set(format!("{key}_PID"), pid.to_string());
            }
        }
        // Whatever reached this map (a `putenv`, catalog data, the agent's
        // own environment), a value execve would refuse is left out rather
        // than failing the spawn.
        env.into_iter()
            .filter(|(k, v)| {
                let ok = env_ok(k, v);
                if !ok {
                    tracing::warn!(variable = %k.chars().take(64).collect::<String>(), bytes = v.len(), "leaving an unusable variable out of a child's environment");
                }
                ok
            })
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        let reg = self.registrar.state();
        let jobs: Vec<serde_json::Value> = self
            .machine
            .view()
            .into_iter()
            .enumerate()
            .map(|(i, j)| {
                let phase = match j.phase {
                    Phase::Waiting => "waiting",
                    Phase::Running(_) => "running",
                    Phase::Backoff => "restarting",
                    Phase::Preparing => "restoring",
                    Phase::Done => "stopped",
                };
                serde_json::json!({
                    "name": j.name,
                    "status": phase,
                    "pid": j.pid,
                    "health": j.health.as_str(),
                    "restarts": j.restarts,
                    "lastExitCode": j.last_exit,
                    "main": self.machine.main_job() == Some(i),
                    "ip": self.job_ips.get(i).copied().flatten().map(|ip| ip.to_string()),
                    "port": self.machine.spec(i).port,
                    "election": self.machine.spec(i).election.as_ref().map(|e| serde_json::json!({
                        "name": e.name,
                        "leader": self.machine.leading(i).is_some(),
                        "role": if self.machine.leading(i).is_some() { "leader" } else { "follower" },
                        "term": self.machine.leading(i),
                        "current": self.leaders.get(&e.name).cloned().flatten(),
                        "priority": e.priority,
                        "maxLag": e.max_lag,
                        "position": self.positions.get(&e.name),
                        "suspect": self.suspects.get(&e.name),
                        "probe": self.members.get(&autopilot_core::cluster::member_id(&e.name, &self.entry_id(i))).and_then(|m| m.presence.as_ref()).map(|p| p.addr.to_string()),
                    })),
                    "repair": self.repairs.get(&j.name).and_then(crate::repair::Task::snapshot).map(|s| crate::repair::status_json(&s)),
                    "restore": self.restore_progress.get(i).and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                    "announce": self.announce_status(&j.name),
                    "registration": self.machine.spec(i).port.map(|_| {
                        let id = self.entry_id(i);
                        let applied = reg.applied.get(&id).map(|s| s.as_str());
                        serde_json::json!({
                            "id": id,
                            "wanted": j.registered.map(|s| catalog_status(s).as_str()),
                            "catalog": applied,
                        })
                    }),
                })
            })
            .collect();
        let watches: Vec<serde_json::Value> = self
            .config
            .watches
            .iter()
            .zip(&self.watch_states)
            .map(|(w, s)| {
                serde_json::json!({
                    "name": w.name,
                    "tag": w.tag,
                    "source": w.source,
                    "passing": s.current().map(|c| c.len()),
                })
            })
            .collect();
        let lock = |t: &fleet::Task| t.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let fleet: Vec<serde_json::Value> = self
            .fleet
            .iter()
            .map(|(name, t)| (Some(name.as_str()), lock(t)))
            .chain(self.bundle_task.as_ref().map(|t| (None, lock(t))))
            .map(|(job, s)| {
                serde_json::json!({
                    "job": job,
                    "artifact": s.artifact,
                    "version": s.version,
                    "sha": s.sha,
                    "state": s.state,
                    "rollout": s.rollout,
                    "reason": s.reason,
                })
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "config": self.config.path,
            "maintenance": self.machine.in_maintenance(),
            "stopping": self.machine.stopping().is_some(),
            "catalog": {
                "url": self.catalog.url(),
                "degraded": reg.error.is_some(),
                "error": reg.error,
                "failingSince": reg.failing_since.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| autopilot_catalog::rfc3339_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
                "failures": reg.failures,
                "registered": reg.applied.len(),
            },
            "jobs": jobs,
            "watches": watches,
            "fleet": fleet,
            "watchdogs": self.watchdogs,
        })
    }
}

// --- announce gate (issue 16) ---
impl Agent {
    /// Starts a task for each job with `announce`, keeps those whose spec
    /// did not change and ends the others (they withdraw as they end).
    fn start_announce(&mut self) {
        let wanted: BTreeMap<String, autopilot_core::announce::AnnounceSpec> =
            (0..self.machine.job_count())
                .filter_map(|j| {
                    let s = self.machine.spec(j);
                    s.announce.clone().map(|a| (s.name.clone(), a))
                })
                .collect();
        // Ended tasks by the files they wrote: a new task for the same
        // files starts after the old one's last withdrawal.
        let mut ended: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
        let names: Vec<String> = self.announcers.keys().cloned().collect();
        for name in names {
            if wanted.get(&name) != self.announcers.get(&name).map(|a| &a.spec)
                && let Some(a) = self.announcers.remove(&name)
            {
                let key = a.spec.include_file(false);
                ended.insert(key, a.finish());
            }
        }
        for (name, spec) in wanted {
            if self.announcers.contains_key(&name) {
                continue;
            }
            let Some(j) =
                (0..self.machine.job_count()).find(|j| self.machine.spec(*j).name == name)
            else {
                continue;
            };
            let feed = crate::announce::Feed {
                gate: self.announce_input(j),
                seq: 0,
            };
            let after = ended.remove(&spec.include_file(false));
            let a = crate::announce::Announcer::start(
                &name,
                spec,
                feed,
                self.metrics.clone(),
                after,
                Some(self.spawner.clone()),
            );
            self.announcers.insert(name, a);
        }
    }

    fn announce_input(&self, j: usize) -> autopilot_core::announce::GateInput {
        autopilot_core::announce::GateInput {
            registered: self.machine.registered(j),
            maintenance: self.machine.in_maintenance(),
            stopping: self.announce_draining
                || self.machine.stopping().is_some()
                || self.machine.is_winding(j),
            disabled: false,
        }
    }

    /// Feeds every announce task the gate's inputs (a no-op when unchanged).
    fn sync_announce(&mut self) {
        if self.announcers.is_empty() {
            return;
        }
        for j in 0..self.machine.job_count() {
            if let Some(a) = self.announcers.get(&self.machine.spec(j).name) {
                a.feed(self.announce_input(j));
            }
        }
    }

    /// A stop with announced prefixes withdraws them first: each task is
    /// told the agent is stopping, and the jobs get their signal once the
    /// speaker confirmed (bounded by the speaker deadline) and the longest
    /// `drain` passed. A second signal during the drain stops at once.
    fn drain_then_stop(&mut self, why: &'static str) {
        if self.announcers.is_empty()
            || self.announce_draining
            || self.machine.stopping() == Some(StopReason::Shutdown)
        {
            self.stop(why);
            return;
        }
        tracing::info!("{why} received; withdrawing announced prefixes before stopping jobs");
        self.announce_draining = true;
        self.sync_announce();
        let waits: Vec<(
            String,
            u64,
            tokio::sync::watch::Receiver<crate::announce::Report>,
        )> = self
            .announcers
            .iter()
            .map(|(name, a)| {
                (
                    name.clone(),
                    a.feed(self.announce_input_for(name)),
                    a.report.clone(),
                )
            })
            .collect();
        let drain = self
            .announcers
            .values()
            .map(|a| a.spec.drain)
            .max()
            .unwrap_or_default();
        let tx = self.tx.clone();
        // One deadline for all: the tasks withdraw concurrently.
        let deadline = tokio::time::Instant::now() + crate::announce::SPEAKER_DEADLINE;
        tokio::spawn(async move {
            for (job, seq, mut rx) in waits {
                let done = rx.wait_for(|r| {
                    r.seq >= seq && r.state != autopilot_core::announce::PrefixState::Announced
                });
                if tokio::time::timeout_at(deadline, done).await.is_err() {
                    tracing::warn!(job = %job, "announce: the speaker did not confirm the withdrawal within {}s; stopping anyway", crate::announce::SPEAKER_DEADLINE.as_secs());
                }
            }
            if !drain.is_zero() {
                tracing::info!(
                    "announce: prefixes withdrawn; draining for {}",
                    crate::logging::dur(drain)
                );
                tokio::time::sleep(drain).await;
            }
            let _ = tx.send(Msg::AnnounceDrained { why }).await;
        });
    }

    fn announce_input_for(&self, name: &str) -> autopilot_core::announce::GateInput {
        match (0..self.machine.job_count()).find(|j| self.machine.spec(*j).name == name) {
            Some(j) => self.announce_input(j),
            None => autopilot_core::announce::GateInput {
                registered: None,
                maintenance: false,
                stopping: true,
                disabled: false,
            },
        }
    }

    /// Ends the announce tasks at exit; each withdraws what it still
    /// announces, bounded by the speaker deadline.
    async fn end_announce(&mut self) {
        for (job, a) in std::mem::take(&mut self.announcers) {
            let task = a.finish();
            let limit = crate::announce::SPEAKER_DEADLINE
                .saturating_add(std::time::Duration::from_millis(500));
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(job = %job, "announce: the last withdrawal did not finish in time");
            }
        }
    }

    /// The job's prefixes for `/status`.
    fn announce_status(&self, job: &str) -> Option<serde_json::Value> {
        let a = self.announcers.get(job)?;
        let r = a.report.borrow().clone();
        let prefixes: Vec<serde_json::Value> = a
            .spec
            .prefixes
            .iter()
            .map(|p| {
                serde_json::json!({
                    "prefix": p.to_string(),
                    "state": r.state.as_str(),
                    "reason": r.state.reason(),
                })
            })
            .collect();
        Some(serde_json::json!({
            "socket": a.spec.socket,
            "prefixes": prefixes,
            "speakerError": r.error,
            "changes": r.changes,
        }))
    }
}

fn catalog_status(s: EntryStatus) -> Status {
    match s {
        EntryStatus::Passing => Status::Passing,
        EntryStatus::Warning => Status::Warning,
        EntryStatus::Critical => Status::Critical,
    }
}

/// `my-job` → `MY_JOB`, as in `CONTAINERPILOT_MY_JOB_IP`.
pub fn env_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Longest environment value passed to a child. Linux refuses an exec with
/// any single string over 128 KiB; a catalog value that big is hostile.
const MAX_ENV_VALUE: usize = 32 * 1024;

/// Whether a variable can be passed to `execve` at all: one bad value must
/// never make every later spawn fail.
fn env_ok(k: &str, v: &str) -> bool {
    !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0') && v.len() <= MAX_ENV_VALUE
}

/// A leader as read from the catalog is untrusted: it reaches children's
/// environment. Its ID must be printable and short, its address an IP or a
/// host name; otherwise the leader is treated as unknown.
fn sanitize_leader(election: &str, l: Leader) -> Option<Leader> {
    let id_ok = !l.id.is_empty() && l.id.len() <= 256 && !l.id.chars().any(char::is_control);
    let addr_ok =
        l.address.is_empty() || l.address.parse::<IpAddr>().is_ok() || is_hostname(&l.address);
    if id_ok && addr_ok {
        return Some(l);
    }
    // The ID is escaped: it may hold control characters meant for a terminal.
    let id: String = l.id.chars().take(64).collect();
    tracing::warn!(%election, "ignoring a malformed leader entry in the catalog (id \"{}\", address of {} bytes)", id.escape_default(), l.address.len());
    None
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// "exited with code N" / "was killed by signal N", for logs.
fn exit_words(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exited with code {c}"),
        ExitStatus::Signal(s) => format!("was killed by signal {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(id: &str, address: &str) -> Leader {
        Leader {
            id: id.into(),
            address: address.into(),
            port: 6379,
            term: 3,
        }
    }

    #[test]
    fn hostile_leader_entries_are_ignored() {
        for ok in ["10.0.0.1", "::1", "db-1.example.com", ""] {
            assert!(sanitize_leader("e", leader("db-a", ok)).is_some(), "{ok}");
        }
        let big = "a".repeat(200 * 1024);
        for bad in ["10.0.0.1\0x", "a b", "-x", big.as_str(), "x;rm -rf /"] {
            assert!(
                sanitize_leader("e", leader("db-a", bad)).is_none(),
                "{bad:.40}"
            );
        }
        assert!(sanitize_leader("e", leader("a\nb", "10.0.0.1")).is_none());
        assert!(sanitize_leader("e", leader("", "10.0.0.1")).is_none());
    }

    #[test]
    fn unusable_environment_values_are_recognised() {
        assert!(env_ok("A", "b"));
        assert!(!env_ok("A", "b\0c"));
        assert!(!env_ok("A=B", "c"));
        assert!(!env_ok("", "c"));
        assert!(!env_ok("A", &"x".repeat(MAX_ENV_VALUE + 1)));
    }
}
