//! Validated job specifications: what the config layer produces and the machine consumes.

use std::time::Duration;

use crate::event::EventCode;

/// What starts a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// No `when`: the global `startup` event.
    Startup,
    /// `when: {source, once|each, timeout}`.
    Event {
        source: String,
        code: EventCode,
        each: bool,
        timeout: Option<Duration>,
    },
    /// `when: {interval}`: at startup, then on every tick.
    Interval(Duration),
}

impl Trigger {
    /// Pre-stop and post-stop hooks: jobs started by another job's
    /// `stopping`/`stopped`. They are not stopped by a shutdown; they are
    /// what a shutdown runs.
    pub fn is_stop_hook(&self) -> bool {
        matches!(
            self,
            Trigger::Event {
                code: EventCode::Stopping | EventCode::Stopped,
                ..
            }
        )
    }
}

/// `restarts`: "never", "unlimited" or a count of re-runs after the first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarts {
    Never,
    Unlimited,
    Count(u32),
}

/// Exponential back-off between restarts of a crashing job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run that lasted at least this long resets the back-off: the job
    /// was working, so its next crash is not part of a crash loop.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before the restart that follows `streak` consecutive
    /// short-lived runs (the first restart has streak 0).
    pub fn delay(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What a health check runs: a command (a child process per check), or a
/// probe the agent makes itself, with no process.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    /// `exec`: passes when the command exits 0. `raw` passes its output
    /// through untagged (`health.logging.raw`).
    Exec { argv: Vec<String>, raw: bool },
    /// `http`: a GET of `url` (`http://host[:port]/path`); passes when the
    /// status is `expect`, or any 2xx when `expect` is unset.
    Http { url: String, expect: Option<u16> },
    /// `tcp`: passes when a connection to `address` (`host:port`) opens.
    Tcp { address: String },
}

impl HealthCheck {
    /// A command check with tagged output, the usual case.
    pub fn exec(argv: &[&str]) -> Self {
        HealthCheck::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            raw: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub check: HealthCheck,
    pub interval: Duration,
    pub ttl: Duration,
    pub timeout: Duration,
    /// Consecutive passes needed to turn healthy.
    pub rise: u32,
    /// Consecutive failures needed to turn unhealthy.
    pub fall: u32,
}

/// The status of a job's catalog entry (also `initial_status`, the one it
/// is registered with before its first check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    Passing,
    Warning,
    Critical,
}

/// `election: {name, ttl, priority, maxLag}`: the job campaigns for
/// leadership of `name` while it is healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionSpec {
    pub name: String,
    pub ttl: Duration,
    /// Ranks candidates after their replication position; 0 never leads
    /// automatically (only through a failover or switchover intent).
    pub priority: u32,
    /// A candidate further behind the most advanced member than this (in
    /// position units) never wins automatically.
    pub max_lag: Option<u64>,
}

impl ElectionSpec {
    /// The defaults: TTL 5 s, priority 1, no lag limit.
    pub fn new(name: impl Into<String>) -> ElectionSpec {
        ElectionSpec {
            name: name.into(),
            ttl: Duration::from_secs(5),
            priority: 1,
            max_lag: None,
        }
    }
}

/// How the job's catalog entry looks in one role; unset fields keep the job's own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleSpec {
    pub name: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Roles {
    pub leader: RoleSpec,
    pub follower: RoleSpec,
}

/// `snapshot`: where a job's snapshots go, how to make and restore them.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSpec {
    /// The snapshot set's name in the store and the catalog (default: the job's name).
    pub set: String,
    pub store: String,
    pub create: Option<Vec<String>>,
    pub restore: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub retain: u32,
    pub leader_only: bool,
    /// Restored into before the job first starts, when it is empty.
    pub data_dir: Option<std::path::PathBuf>,
    /// `dataDirOwner`: the user (name) besides the agent's own whose
    /// `dataDir` a reinit may empty (a server that runs as another user).
    pub data_dir_owner: Option<String>,
}

impl SnapshotSpec {
    /// Whether the job must pass through a restore check before it starts.
    pub fn restores(&self) -> bool {
        self.restore.is_some() && self.data_dir.is_some()
    }
}

/// `artifact: {name, dest, store}`: the job runs a version of an artifact
/// that the agent fetches, verifies and unpacks into `dest/<sha256>`, with
/// `dest/current` pointing at the one to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactSpec {
    pub name: String,
    /// Absolute.
    pub dest: std::path::PathBuf,
    /// The store URL (`file:///...`, `s3://...`).
    pub store: String,
}

/// One step of a repair ladder, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepairStep {
    /// Stop the job and start it again (its restart count starts afresh).
    Restart,
    /// Stop the job, move its `dataDir` aside, restore the newest verified
    /// snapshot into it and start the job again.
    Reimage,
    /// Run the `replace` hook and exit the agent with the replace exit code,
    /// so the scheduler replaces the container or machine. Always last.
    Replace,
}

impl RepairStep {
    pub const ALL: [RepairStep; 3] = [
        RepairStep::Restart,
        RepairStep::Reimage,
        RepairStep::Replace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepairStep::Restart => "restart",
            RepairStep::Reimage => "reimage",
            RepairStep::Replace => "replace",
        }
    }

    pub fn parse(s: &str) -> Option<RepairStep> {
        RepairStep::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `repair.budget`: how many of a service's instances may be in repair at
/// once, fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairBudget {
    /// At least 1.
    Count(u32),
    /// 1..=100 percent of the service's instances (rounded down, at least 1).
    Percent(u32),
}

/// `repair: {ladder, probation, grace, budget, replace, replaceTimeout, exitCode}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairSpec {
    /// Non-empty, no step twice, `replace` only last; `reimage` needs the
    /// job's `snapshot` with `dataDir` and `restore`.
    pub ladder: Vec<RepairStep>,
    /// After a step, the job must pass its checks this long (default 60 s).
    pub probation: Duration,
    /// A job that runs but is not healthy this long after its start is
    /// failing (default 60 s). A restore before the start does not count.
    pub grace: Duration,
    /// Default `Count(1)`.
    pub budget: RepairBudget,
    /// `replace`: the hook run before the agent exits for replacement.
    pub replace_exec: Option<Vec<String>>,
    /// Bound on the replace hook (default 60 s).
    pub replace_timeout: Duration,
    /// The agent's exit code after `replace` (default 75, 1..=255).
    pub exit_code: i32,
}

impl RepairSpec {
    /// The defaults for a ladder.
    pub fn new(ladder: Vec<RepairStep>) -> RepairSpec {
        RepairSpec {
            ladder,
            probation: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            budget: RepairBudget::Count(1),
            replace_exec: None,
            replace_timeout: Duration::from_secs(60),
            exit_code: DEFAULT_REPLACE_EXIT_CODE,
        }
    }
}

/// The agent's exit code after a `replace` repair, unless `repair.exitCode` says otherwise.
pub const DEFAULT_REPLACE_EXIT_CODE: i32 = 75;

/// Free space under a path, for a `disk` watchdog's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    /// Percent of the filesystem's size (0..=100).
    Percent(f64),
    Bytes(u64),
}

/// What a watchdog checks. Each reports `ok`, `warning` or `error`.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchdogCheck {
    /// A command: exit 0 is ok, 1 is warning, anything else (or a timeout)
    /// is error (the Nagios convention). Its first output line is the message.
    Exec { argv: Vec<String> },
    /// A GET: `expect` (or any 2xx) is ok, a status in `warnOn` (default
    /// 429 and 503: overloaded) or an answer slower than `slow` is warning,
    /// anything else (no answer, timeout, other status) is error.
    Http {
        url: String,
        expect: Option<u16>,
        warn_on: Vec<u16>,
        slow: Option<Duration>,
    },
    /// A connection: opens is ok, opens slower than `slow` is warning,
    /// refused or timed out is error.
    Tcp {
        address: String,
        slow: Option<Duration>,
    },
    /// Free space under `path`: below `warning` is warning, below `error` is
    /// error (either may be unset).
    Disk {
        path: std::path::PathBuf,
        warning: Option<FreeSpace>,
        error: Option<FreeSpace>,
    },
    /// The catalog: ok while the agent's session is alive and its entries
    /// registered, error while requests fail (the registrar's outage).
    Catalog,
    /// A job crash-looping: `restarts` or more exits in `window` is error,
    /// and a job that failed for good (no restart left) is error.
    Crashloop {
        job: String,
        restarts: u32,
        window: Duration,
    },
}

/// One entry of the top-level `watchdogs` block.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogSpec {
    /// Unique among watchdogs; a catalog-safe name.
    pub name: String,
    pub check: WatchdogCheck,
    /// Default 10 s.
    pub interval: Duration,
    /// Default 5 s, at most `interval`.
    pub timeout: Duration,
    /// The job whose repair an `error` counts for; `None`: every job with a
    /// `repair` block (a crashloop watchdog defaults to its own job).
    pub job: Option<String>,
    /// Consecutive results needed to move to a better status (default 1).
    pub rise: u32,
    /// Consecutive results needed to move to a worse status (default 1).
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// Empty for an advertise-only job.
    pub exec: Vec<String>,
    pub trigger: Trigger,
    pub timeout: Option<Duration>,
    pub restarts: Restarts,
    pub backoff: Backoff,
    /// SIGTERM → SIGKILL grace during a stop.
    pub stop_timeout: Duration,
    pub health: Option<HealthSpec>,
    pub port: Option<u16>,
    pub interfaces: Vec<String>,
    pub tags: Vec<String>,
    pub initial_status: Option<EntryStatus>,
    pub raw_logs: bool,
    /// Stderr lines logged at INFO rather than WARN (`logging.stderr:
    /// "info"`); part of the spec so a reload that changes it restarts the job.
    pub stderr_at_info: bool,
    pub enable_tag_override: bool,
    pub deregister_critical_after: Option<Duration>,
    /// Explicitly marked as the job whose exit code autopilot exits with.
    pub main: bool,
    pub election: Option<ElectionSpec>,
    /// The catalog entry's name and tags per role.
    pub roles: Option<Roles>,
    pub snapshot: Option<SnapshotSpec>,
    /// How many times a reinit intent emptied this job's data: bumped by
    /// the agent, never by a config, so the reload plan treats the job as
    /// changed and starts it again through restore-before-start.
    pub reinit: u32,
    pub artifact: Option<ArtifactSpec>,
    /// The sha256 of the artifact version the job runs (`"original"` for
    /// what was on disk before any rollout): set by the agent, never by a
    /// config. A new one makes the reload plan restart the job through its
    /// stop path, as any changed spec does.
    pub artifact_sha: Option<String>,
    /// `repair`: how the agent repairs this job when it fails (the ladder,
    /// probation, the fleet-wide budget).
    pub repair: Option<RepairSpec>,
    /// `announce`: anycast prefixes announced through a BGP speaker only
    /// while the job is registered as passing.
    pub announce: Option<crate::announce::AnnounceSpec>,
    /// `dieWithAgent`: the job gets SIGKILL when the agent dies (a BGP
    /// speaker whose routes must not outlive the agent's gate).
    pub die_with_agent: bool,
}

impl JobSpec {
    /// A minimal job, the base for tests and for programmatic construction.
    pub fn new(name: &str, exec: &[&str]) -> Self {
        JobSpec {
            name: name.to_string(),
            exec: exec.iter().map(|s| s.to_string()).collect(),
            trigger: Trigger::Startup,
            timeout: None,
            restarts: Restarts::Never,
            backoff: Backoff::default(),
            stop_timeout: Duration::from_secs(5),
            health: None,
            port: None,
            interfaces: Vec::new(),
            tags: Vec::new(),
            initial_status: None,
            raw_logs: false,
            stderr_at_info: false,
            enable_tag_override: false,
            deregister_critical_after: None,
            main: false,
            election: None,
            roles: None,
            snapshot: None,
            reinit: 0,
            artifact: None,
            artifact_sha: None,
            repair: None,
            announce: None,
            die_with_agent: false,
        }
    }
}

/// Whether a job serves: it has an exec that keeps running (not an
/// interval job, not an `each` handler, not a stop hook) and a `port` or a
/// `health` check.
fn serves(j: &JobSpec) -> bool {
    !j.exec.is_empty()
        && (j.port.is_some() || j.health.is_some())
        && !j.trigger.is_stop_hook()
        && !matches!(
            j.trigger,
            Trigger::Interval(_) | Trigger::Event { each: true, .. }
        )
}

/// Whether the main job's failure (no restart left) ends the container:
/// for a job marked `main: true`, one that serves, or one with `restarts`
/// (meant to keep running). A one-shot (`restarts: never`) picked by the
/// start-chain rule gives its code at the end, but its failure does not
/// stop jobs that ContainerPilot would have kept running.
pub fn ends_on_failure(j: &JobSpec) -> bool {
    j.main || serves(j) || j.restarts != Restarts::Never
}

/// Picks the job whose exit code autopilot exits with: the one marked
/// `main: true`; else the last job that serves (an exec with a `port` or a
/// `health` check, not periodic) and that no other serving job starts after
/// (directly or down a chain of `when`s), one with a port first; else the
/// last job at the end of the start chain.
///
/// The main job only decides the exit code and, when it serves, ends the
/// container when it fails for good. A job that exits 0 never ends it: the
/// machine runs while any job can still run. So a one-shot setup job next
/// to the app (ContainerPilot's own examples) is never picked over the app.
///
/// Start chain: ContainerPilot configs usually start the app after a
/// one-shot pre-start job (`when: {source: "preStart", once: "exitSuccess"}`),
/// so "the last job with no `when`" alone would pick the pre-start step. A
/// candidate is a non-interval job with an exec that starts at startup, or
/// once after the `exitSuccess` of a run-once job; candidates that another
/// candidate waits on are steps before the main job, not the main job.
pub fn main_job(jobs: &[JobSpec]) -> Option<usize> {
    if let Some(i) = jobs.iter().position(|j| j.main) {
        return Some(i);
    }
    let waits_on = |o: &JobSpec, name: &str| matches!(&o.trigger, Trigger::Event { source, .. } if source == name);
    // Whether `o` starts (directly or down a chain of `when`s) after `name`.
    let after = |o: &JobSpec, name: &str| {
        let mut at = o;
        for _ in 0..jobs.len() {
            let Trigger::Event { source, .. } = &at.trigger else {
                return false;
            };
            if source == name {
                return true;
            }
            match jobs.iter().find(|j| &j.name == source) {
                Some(next) => at = next,
                None => return false,
            }
        }
        false
    };
    // A serving job that another one starts after is a dependency (a
    // sidecar agent, a database the app waits for), not the main job; one
    // with a port (the service the container exists for) beats one with
    // only a health check.
    let service = |with_port: bool| {
        jobs.iter()
            .enumerate()
            .rev()
            .find(|(_, j)| {
                serves(j)
                    && (!with_port || j.port.is_some())
                    && !jobs.iter().any(|o| serves(o) && after(o, &j.name))
            })
            .map(|(i, _)| i)
    };
    if let Some(i) = service(true).or_else(|| service(false)) {
        return Some(i);
    }
    // A run-once step: not periodic, not re-run on every event.
    let once = |j: &JobSpec| {
        !j.exec.is_empty()
            && !matches!(
                j.trigger,
                Trigger::Interval(_) | Trigger::Event { each: true, .. }
            )
    };
    let candidate = |j: &JobSpec| {
        once(j)
            && match &j.trigger {
                Trigger::Startup => true,
                Trigger::Event {
                    code: EventCode::ExitSuccess,
                    source,
                    ..
                } => jobs.iter().any(|o| &o.name == source && once(o)),
                _ => false,
            }
    };
    let awaited = |name: &str| jobs.iter().any(|o| candidate(o) && waits_on(o, name));
    jobs.iter()
        .enumerate()
        .rev()
        .find(|(_, j)| candidate(j) && !awaited(&j.name))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::plan_reload;

    #[test]
    fn a_new_artifact_sha_restarts_the_job_and_nothing_else() {
        let mut api = JobSpec::new("api", &["/opt/api/current/server"]);
        api.artifact = Some(ArtifactSpec {
            name: "api".into(),
            dest: "/opt/api".into(),
            store: "file:///srv/artifacts".into(),
        });
        api.artifact_sha = Some("a".repeat(64));
        let other = JobSpec::new("other", &["sleep", "100"]);
        let old = vec![api.clone(), other.clone()];
        assert_eq!(plan_reload(&old, &old), vec![Some(0), Some(1)]);
        let mut next = api.clone();
        next.artifact_sha = Some("b".repeat(64));
        assert_eq!(plan_reload(&old, &[next, other]), vec![None, Some(1)]);
    }
}
