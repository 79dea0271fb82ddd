//! The supervisor state machine: job lifecycles, health, restarts, timers, the stop order and reload.
//!
//! It holds no processes, sockets or clocks. The runtime feeds it [`Input`]s
//! stamped with a monotonic time and executes the [`Action`]s it returns;
//! timers are kept here and fired by [`Machine::advance`], so tests drive it
//! with a fake clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::event::{Event, EventCode};
use crate::spec::{EntryStatus, JobSpec, Restarts, Trigger, ends_on_failure, main_job};

/// One spawned process (a job's exec or a health check). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcKind {
    Job,
    Check,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: a death by signal N is 128+N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => s.saturating_add(128),
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Shutdown,
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

/// Inputs, each handled at the time passed alongside it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Startup,
    Started {
        run: RunId,
        pid: u32,
    },
    SpawnFailed {
        run: RunId,
        error: String,
    },
    Exited {
        run: RunId,
        status: ExitStatus,
    },
    /// A signal that is published as an event (`SIGHUP`, `SIGUSR2`).
    SignalEvent(String),
    /// An event from outside the job set, such as a watch's `changed`.
    External(Event),
    /// Stop every job. With `Reload`, a full restart: the runtime uses
    /// [`Input::Reload`], which keeps unchanged jobs.
    Stop(StopReason),
    Maintenance(bool),
    /// The restore before a job's first start finished (`ok`) or failed.
    Prepared {
        job: usize,
        ok: bool,
    },
    /// The job's election task won the seat with this term (`Some`), or no
    /// longer leads (`None`: resigned, lost the seat, or could not renew).
    Leadership {
        job: usize,
        term: Option<u64>,
    },
    /// A new, validated job list (`reload`): jobs whose spec is unchanged
    /// keep running; the others stop via their normal stop path. When they
    /// have stopped, the machine reports `Finished { reason: Reload }` and
    /// the runtime calls [`Machine::adopt`].
    Reload {
        jobs: Vec<JobSpec>,
        stop_timeout: Duration,
    },
    /// A repair step for a job with a `repair` block (`Restart` or
    /// `Reimage`; `Replace` is the runtime's): stop the run (SIGTERM, then
    /// SIGKILL after its stop timeout; its exit publishes nothing), forget
    /// its restart count and back-off, and start it again, through
    /// [`Action::Prepare`] with `reimage` for a reimage. Works on a running,
    /// restarting, waiting or parked job; ignored while stopping or restoring.
    Repair {
        job: usize,
        step: crate::spec::RepairStep,
    },
}

/// Which of its `roles` a job's catalog entry takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The job has no `roles`: one entry under its own name and tags.
    Plain,
    /// The leader's entry, bound to the seat won with `term`: it lives and
    /// dies with that seat.
    Leader {
        term: u64,
    },
    Follower,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn {
        run: RunId,
        job: usize,
        kind: ProcKind,
    },
    /// Signal the whole process group of a run.
    Signal { run: RunId, sig: Sig },
    /// An event was published on the bus (for logs and metrics).
    Published(Event),
    /// A job's health changed; `None` means unknown (not running, or in maintenance).
    Health { job: usize, healthy: Option<bool> },
    /// A job is restarting after an exit.
    Restarting { job: usize, delay: Duration },
    /// Create or replace the job's catalog entry with this status.
    Register { job: usize, status: EntryStatus },
    /// Change the status of the job's existing catalog entry.
    SetStatus { job: usize, status: EntryStatus },
    /// Remove the job's catalog entry.
    Deregister { job: usize },
    /// Start (`true`) or stop campaigning in the job's election.
    Campaign { job: usize, campaign: bool },
    /// Restore the job's data before its start; answer with `Input::Prepared`.
    /// With `reimage` (a repair step): move the current data aside first,
    /// and only when a verified snapshot exists.
    Prepare { job: usize, reimage: bool },
    /// Take a snapshot of the job: its interval came round, or (with
    /// `only_if_none`) it was just elected and the set may have none yet.
    Snapshot { job: usize, only_if_none: bool },
    /// Every job is stopped: exit with `code`. With `Reload`: every job the
    /// new config does not keep has stopped; call [`Machine::adopt`].
    Finished { reason: StopReason, code: i32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its trigger.
    Waiting,
    /// Running; `None` for an advertise-only job, which has no process.
    Running(Option<RunId>),
    /// Waiting out the back-off before a restart.
    Backoff,
    /// Restoring its data before its first start.
    Preparing,
    /// Will never run again.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
    Maintenance,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Maintenance => "maintenance",
        }
    }
}

/// Where a job is in being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopStage {
    /// `stopping` was published; waiting for the pre-stop hooks it started.
    Hooks,
    /// SIGTERM sent; SIGKILL follows at the job's stop timeout.
    Term,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Interval(usize),
    HealthTick { job: usize, epoch: u64 },
    Restart(usize),
    Snapshot { job: usize, epoch: u64 },
    WhenTimeout(usize),
    RunTimeout(RunId),
    KillAfterTerm(RunId),
}

#[derive(Debug)]
struct Run {
    job: usize,
    kind: ProcKind,
    pid: Option<u32>,
    started: Duration,
}

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    phase: Phase,
    /// Trigger firings still allowed; `None` is unlimited.
    starts_left: Option<u32>,
    restarts_left: Option<u32>,
    /// Consecutive short runs, for the back-off.
    streak: u32,
    /// Trigger firings that arrived while the job was busy.
    pending: u32,
    ran: bool,
    stop: Option<StopStage>,
    health: HealthStatus,
    passes: u32,
    fails: u32,
    check: Option<RunId>,
    /// Bumped whenever the job (re)starts, so stale health timers are dropped.
    epoch: u64,
    last_exit: Option<ExitStatus>,
    restarts_total: u64,
    /// The status of the job's catalog entry, if it has one.
    registered: Option<EntryStatus>,
    campaigning: bool,
    /// The term of the seat the job holds, while it leads its election.
    leading: Option<u64>,
    /// The restore before the first start is done (or not needed).
    prepared: bool,
    /// A pending reload drops or replaces this job: it is stopping for good.
    retiring: bool,
    /// A job with `repair` that ran out of restarts: it waits for a repair
    /// instead of completing.
    parked: bool,
    /// A repair stopped the run (`Some(reimage)`): its exit starts it again.
    repairing: Option<bool>,
    /// The next restore is a reimage.
    reimage: bool,
}

impl Job {
    fn new(spec: JobSpec, maintenance: bool) -> Job {
        let spec_restores = spec.snapshot.as_ref().is_some_and(|s| s.restores());
        let starts_left = match &spec.trigger {
            Trigger::Event { each: true, .. } => None,
            _ => Some(1),
        };
        let restarts_left = limit(spec.restarts);
        let health = if maintenance && (spec.health.is_some() || spec.port.is_some()) {
            HealthStatus::Maintenance
        } else {
            HealthStatus::Unknown
        };
        Job {
            spec,
            phase: Phase::Waiting,
            starts_left,
            restarts_left,
            streak: 0,
            pending: 0,
            ran: false,
            stop: None,
            health,
            passes: 0,
            fails: 0,
            check: None,
            epoch: 0,
            last_exit: None,
            restarts_total: 0,
            registered: None,
            campaigning: false,
            leading: None,
            prepared: !spec_restores,
            retiring: false,
            parked: false,
            repairing: None,
            reimage: false,
        }
    }
}

/// A reload waiting for the jobs it drops or replaces to stop.
#[derive(Debug)]
struct PendingReload {
    specs: Vec<JobSpec>,
    stop_timeout: Duration,
    /// Per new job: the running job it continues, if unchanged.
    kept: Vec<Option<usize>>,
    /// `Finished { Reload }` was reported; waiting for [`Machine::adopt`].
    ready: bool,
}

/// Why the machine began its final stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// SIGTERM/SIGINT (or the main job's failure).
    Requested,
    /// No job could run again.
    Idle,
}

/// A read-only view of a job, for `/status` and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub name: String,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub health: HealthStatus,
    pub restarts: u64,
    pub last_exit: Option<i32>,
    pub registered: Option<EntryStatus>,
    /// Out of restarts, waiting for a repair.
    pub parked: bool,
}

pub struct Machine {
    jobs: Vec<Job>,
    main: Option<usize>,
    runs: HashMap<RunId, Run>,
    timers: BTreeMap<(Duration, u64), Timer>,
    timer_seq: u64,
    next_run: u64,
    now: Duration,
    queue: VecDeque<Event>,
    actions: Vec<Action>,
    maintenance: bool,
    stopping: Option<StopReason>,
    finished: bool,
    /// Bound on a stop hook's run during a stop, when it sets no timeout.
    global_stop_timeout: Duration,
    reload: Option<PendingReload>,
    /// Every event published so far: a job a reload adds with `once` on an
    /// event that already happened starts at once. Pruned on reload to the
    /// events some job waits on, so it stays bounded by the config.
    published: HashSet<Event>,
    /// Failed final runs (no restart left, not stopped by us) of jobs that
    /// are not stop hooks, oldest first, at most one per job: the last one is
    /// the exit code when nothing can run. A reload drops those of the jobs
    /// it removes or replaces, so an earlier failure of a kept job counts again.
    failures: Vec<(usize, ExitStatus)>,
    end: End,
}

impl Machine {
    /// `first_run_id` lets a reloaded machine continue the run numbering, so
    /// run IDs stay unique for the whole life of the agent.
    pub fn new(specs: Vec<JobSpec>, global_stop_timeout: Duration, first_run_id: u64) -> Self {
        let main = main_job(&specs);
        let jobs = specs
            .into_iter()
            .map(|spec| Job::new(spec, false))
            .collect();
        Machine {
            jobs,
            main,
            runs: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_run: first_run_id,
            now: Duration::ZERO,
            queue: VecDeque::new(),
            actions: Vec::new(),
            maintenance: false,
            stopping: None,
            finished: false,
            global_stop_timeout,
            reload: None,
            published: HashSet::new(),
            failures: Vec::new(),
            end: End::Requested,
        }
    }

    pub fn spec(&self, job: usize) -> &JobSpec {
        &self.jobs[job].spec
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    pub fn main_job(&self) -> Option<usize> {
        self.main
    }

    pub fn next_run_id(&self) -> u64 {
        self.next_run
    }

    /// The status of the job's catalog entry, if it has one.
    pub fn registered(&self, job: usize) -> Option<EntryStatus> {
        self.jobs[job].registered
    }

    /// The term of the seat the job holds, while it leads.
    pub fn leading(&self, job: usize) -> Option<u64> {
        self.jobs[job].leading
    }

    /// The role the job's catalog entry takes now.
    pub fn role(&self, job: usize) -> Role {
        let j = &self.jobs[job];
        match (&j.spec.roles, j.leading) {
            (None, _) => Role::Plain,
            (Some(_), Some(term)) => Role::Leader { term },
            (Some(_), None) => Role::Follower,
        }
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance
    }

    pub fn stopping(&self) -> Option<StopReason> {
        self.stopping
    }

    /// Whether the job is on its way out: a stop, or a pending reload that
    /// drops or replaces it. A check the machine kills then was stopped,
    /// not timed out.
    pub fn is_winding(&self, job: usize) -> bool {
        self.jobs.get(job).is_some_and(|_| self.winding(job))
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The pid of a running job's process, for `CONTAINERPILOT_<JOB>_PID`.
    pub fn pid_of(&self, job: usize) -> Option<u32> {
        match self.jobs[job].phase {
            Phase::Running(Some(run)) => self.runs.get(&run).and_then(|r| r.pid),
            _ => None,
        }
    }

    pub fn view(&self) -> Vec<JobView> {
        self.jobs
            .iter()
            .enumerate()
            .map(|(i, j)| JobView {
                name: j.spec.name.clone(),
                phase: j.phase,
                pid: self.pid_of(i),
                health: j.health,
                restarts: j.restarts_total,
                last_exit: j.last_exit.map(ExitStatus::code),
                registered: j.registered,
                parked: j.parked,
            })
            .collect()
    }

    /// The job's phase.
    pub fn phase(&self, job: usize) -> Phase {
        self.jobs[job].phase
    }

    /// The job's health status.
    pub fn health(&self, job: usize) -> HealthStatus {
        self.jobs[job].health
    }

    /// Whether the job ran out of restarts and waits for a repair.
    pub fn parked(&self, job: usize) -> bool {
        self.jobs[job].parked
    }

    /// The earliest pending timer, for the runtime's sleep.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Fires every timer due at or before `now`.
    pub fn advance(&mut self, now: Duration) -> Vec<Action> {
        self.now = self.now.max(now);
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > self.now {
                break;
            }
            if let Some(t) = self.timers.remove(&(at, seq)) {
                self.fire(t);
            }
            self.drain();
        }
        self.after_step();
        std::mem::take(&mut self.actions)
    }

    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        self.now = self.now.max(now);
        match input {
            Input::Startup => {
                self.arm_when_timeouts();
                self.publish(Event::global(EventCode::Startup));
            }
            Input::Started { run, pid } => {
                if let Some(r) = self.runs.get_mut(&run) {
                    r.pid = Some(pid);
                }
            }
            Input::SpawnFailed { run, .. } => self.exited(run, ExitStatus::Code(127)),
            Input::Exited { run, status } => self.exited(run, status),
            Input::SignalEvent(sig) => self.publish(Event::new(EventCode::Signal, &sig)),
            Input::External(ev) => self.publish(ev),
            Input::Stop(reason) => self.begin_stop(reason),
            Input::Maintenance(on) => self.set_maintenance(on),
            Input::Prepared { job, ok } => self.prepared(job, ok),
            Input::Leadership { job, term } => self.leadership(job, term),
            Input::Reload { jobs, stop_timeout } => self.begin_reload(jobs, stop_timeout),
            Input::Repair { job, step } => self.repair(job, step),
        }
        self.drain();
        self.after_step();
        std::mem::take(&mut self.actions)
    }

    // ---- events -------------------------------------------------------

    fn publish(&mut self, ev: Event) {
        self.queue.push_back(ev);
    }

    /// Delivers queued events to every job in config order. Every job is
    /// subscribed from construction, so no early event can be missed.
    fn drain(&mut self) {
        while let Some(ev) = self.queue.pop_front() {
            self.actions.push(Action::Published(ev.clone()));
            self.published.insert(ev.clone());
            for j in 0..self.jobs.len() {
                if self.matches(j, &ev) {
                    self.triggered(j);
                }
            }
        }
    }

    fn matches(&self, j: usize, ev: &Event) -> bool {
        let startup = ev.code == EventCode::Startup && ev.source == crate::event::GLOBAL;
        match &self.jobs[j].spec.trigger {
            Trigger::Startup | Trigger::Interval(_) => startup,
            Trigger::Event { source, code, .. } => *code == ev.code && *source == ev.source,
        }
    }

    fn triggered(&mut self, j: usize) {
        let job = &mut self.jobs[j];
        if job.phase == Phase::Done {
            return;
        }
        if (self.stopping.is_some() || job.retiring) && !job.spec.trigger.is_stop_hook() {
            return;
        }
        match &mut job.starts_left {
            Some(0) => return,
            Some(n) => *n = n.saturating_sub(1),
            None => {}
        }
        let interval = match job.spec.trigger {
            Trigger::Interval(every) => Some(every),
            _ => None,
        };
        match job.phase {
            Phase::Waiting => self.start(j),
            Phase::Running(_) | Phase::Backoff | Phase::Preparing => {
                job.pending = job.pending.saturating_add(1)
            }
            Phase::Done => {}
        }
        if let Some(every) = interval {
            self.set_timer(every, Timer::Interval(j));
        }
    }

    // ---- starting and exits ------------------------------------------

    fn start(&mut self, j: usize) {
        let now = self.now;
        let job = &mut self.jobs[j];
        if !job.prepared {
            job.phase = Phase::Preparing;
            let reimage = std::mem::take(&mut job.reimage);
            self.actions.push(Action::Prepare { job: j, reimage });
            return;
        }
        job.ran = true;
        job.epoch = job.epoch.wrapping_add(1);
        job.passes = 0;
        job.fails = 0;
        let epoch = job.epoch;
        let health_every = job.spec.health.as_ref().map(|h| h.interval);
        if job.spec.exec.is_empty() {
            job.phase = Phase::Running(None);
        } else {
            let run = RunId(self.next_run);
            self.next_run = self.next_run.saturating_add(1);
            self.runs.insert(
                run,
                Run {
                    job: j,
                    kind: ProcKind::Job,
                    pid: None,
                    started: now,
                },
            );
            let timeout = job.spec.timeout;
            job.phase = Phase::Running(Some(run));
            self.actions.push(Action::Spawn {
                run,
                job: j,
                kind: ProcKind::Job,
            });
            if let Some(t) = timeout {
                self.set_timer(t, Timer::RunTimeout(run));
            }
        }
        if let Some(every) = health_every {
            self.set_timer(every, Timer::HealthTick { job: j, epoch });
        }
        if let Some(every) = self.jobs[j].spec.snapshot.as_ref().and_then(|s| s.interval) {
            self.set_timer(every, Timer::Snapshot { job: j, epoch });
        }
    }

    fn prepared(&mut self, j: usize, ok: bool) {
        if self.jobs[j].phase != Phase::Preparing {
            return;
        }
        if self.winding(j) {
            self.jobs[j].phase = Phase::Waiting;
            self.settle(j);
            return;
        }
        if ok {
            self.jobs[j].prepared = true;
            self.jobs[j].phase = Phase::Waiting;
            self.start(j);
        } else {
            // Try again after the back-off, as a failed run would.
            let job = &mut self.jobs[j];
            let delay = job.spec.backoff.delay(job.streak);
            job.streak = job.streak.saturating_add(1);
            job.phase = Phase::Backoff;
            self.actions.push(Action::Restarting { job: j, delay });
            self.set_timer(delay, Timer::Restart(j));
        }
    }

    /// Leadership changed: publish `elected`/`demoted`, re-register a job
    /// with `roles` under its new role, and have a new leader make the
    /// set's first snapshot if none exists (nodes waiting to restore need it).
    fn leadership(&mut self, j: usize, term: Option<u64>) {
        let Some(job) = self.jobs.get_mut(j) else {
            return;
        };
        if job.spec.election.is_none() || job.leading == term {
            return;
        }
        let was = std::mem::replace(&mut job.leading, term);
        let name = job.spec.name.clone();
        if was.is_some() {
            // A seat lost (or replaced by a new term) is a demotion first.
            self.publish(Event::new(EventCode::Demoted, &name));
        }
        let job = &self.jobs[j];
        if let (Some(status), Some(_)) = (job.registered, &job.spec.roles) {
            self.actions.push(Action::Register { job: j, status });
        }
        if term.is_some() {
            if job
                .spec
                .snapshot
                .as_ref()
                .is_some_and(|s| s.create.is_some())
            {
                self.actions.push(Action::Snapshot {
                    job: j,
                    only_if_none: true,
                });
            }
            self.publish(Event::new(EventCode::Elected, &name));
        }
    }

    fn exited(&mut self, run: RunId, status: ExitStatus) {
        let Some(r) = self.runs.remove(&run) else {
            return;
        };
        match r.kind {
            ProcKind::Check => self.check_done(r.job, run, status),
            ProcKind::Job => {
                self.job_exited(r.job, run, status, self.now.saturating_sub(r.started))
            }
        }
    }

    fn job_exited(&mut self, j: usize, run: RunId, status: ExitStatus, lasted: Duration) {
        if self.jobs[j].phase != Phase::Running(Some(run)) {
            return;
        }
        let name = self.jobs[j].spec.name.clone();
        let code = if status.success() {
            EventCode::ExitSuccess
        } else {
            EventCode::ExitFailed
        };
        // A run the machine itself stopped for a reload (SIGTERM sent) did
        // not succeed or fail on its own: its exit must not fire the kept
        // jobs' handlers nor be remembered for the new jobs' `once`
        // triggers. A shutdown gets the same effect from `triggered`, which
        // starts nothing but stop hooks while stopping.
        let stopped_for_reload =
            self.jobs[j].retiring && self.jobs[j].stop == Some(StopStage::Term);
        // A run a repair stopped starts again at once (a stop or reload
        // that began meanwhile wins).
        let repaired = self.jobs[j].repairing.take();
        if let Some(reimage) = repaired
            && self.jobs[j].stop.is_none()
            && !self.winding(j)
        {
            let job = &mut self.jobs[j];
            job.last_exit = Some(status);
            job.epoch = job.epoch.wrapping_add(1);
            job.check = None;
            job.phase = Phase::Waiting;
            self.set_health(j, HealthStatus::Unknown);
            self.restart_now(j, reimage);
            return;
        }
        {
            let job = &mut self.jobs[j];
            job.last_exit = Some(status);
            job.epoch = job.epoch.wrapping_add(1);
            job.check = None;
            job.phase = Phase::Waiting;
        }
        self.set_health(j, HealthStatus::Unknown);
        if !stopped_for_reload {
            self.publish(Event::new(code, &name));
        }
        if self.jobs[j].stop.is_some() {
            self.progress_stop(j);
            return;
        }
        if self.winding(j) {
            // A stop hook finished, or a job that was not asked to stop
            // (already being waited on elsewhere) exited: no restarts now.
            self.settle(j);
            return;
        }
        let job = &mut self.jobs[j];
        if matches!(job.spec.trigger, Trigger::Interval(_)) {
            // Interval jobs run again on their next tick, not on exit.
            if job.restarts_left == Some(0) {
                self.complete(j);
            }
            return;
        }
        if lasted >= job.spec.backoff.reset_after {
            job.streak = 0;
        }
        // An `each` handler's run that succeeded has handled its event: its
        // `restarts` retry only a failed run (with back-off), so a hook
        // such as a promotion is retried until it reaches its goal.
        if status.success() && matches!(job.spec.trigger, Trigger::Event { each: true, .. }) {
            job.streak = 0;
            self.settle(j);
            return;
        }
        if job.restarts_left != Some(0) {
            if let Some(n) = &mut job.restarts_left {
                *n = n.saturating_sub(1);
            }
            let delay = job.spec.backoff.delay(job.streak);
            job.streak = job.streak.saturating_add(1);
            job.restarts_total = job.restarts_total.saturating_add(1);
            job.phase = Phase::Backoff;
            self.actions.push(Action::Restarting { job: j, delay });
            self.set_timer(delay, Timer::Restart(j));
            return;
        }
        if job.spec.repair.is_some() && !status.success() {
            // Out of restarts: the repair ladder takes over. Parked, the
            // job neither completes nor ends the agent.
            job.parked = true;
            job.pending = 0;
            return;
        }
        self.settle(j);
    }

    /// A repair step for job `j` (see [`Input::Repair`]).
    fn repair(&mut self, j: usize, step: crate::spec::RepairStep) {
        let Some(job) = self.jobs.get(j) else {
            return;
        };
        if step == crate::spec::RepairStep::Replace
            || self.stopping.is_some()
            || job.retiring
            || job.stop.is_some()
            || job.repairing.is_some()
        {
            return;
        }
        let reimage = step == crate::spec::RepairStep::Reimage;
        match job.phase {
            Phase::Running(Some(run)) => {
                let grace = job.spec.stop_timeout;
                self.jobs[j].repairing = Some(reimage);
                self.actions.push(Action::Signal {
                    run,
                    sig: Sig::Term,
                });
                self.set_timer(grace, Timer::KillAfterTerm(run));
                // Out of the catalog and any election before it goes down.
                self.set_health(j, HealthStatus::Unknown);
            }
            Phase::Preparing => {}
            Phase::Running(None) | Phase::Backoff | Phase::Waiting => {
                if let Phase::Running(None) = job.phase {
                    self.jobs[j].phase = Phase::Waiting;
                    self.set_health(j, HealthStatus::Unknown);
                }
                self.restart_now(j, reimage);
            }
            Phase::Done => {
                if job.ran {
                    self.restart_now(j, reimage);
                }
            }
        }
    }

    /// Starts job `j` again as if fresh: restarts and back-off forgotten.
    fn restart_now(&mut self, j: usize, reimage: bool) {
        let job = &mut self.jobs[j];
        job.parked = false;
        job.repairing = None;
        job.restarts_left = limit(job.spec.restarts);
        job.streak = 0;
        job.pending = 0;
        job.phase = Phase::Waiting;
        if reimage && job.spec.snapshot.as_ref().is_some_and(|s| s.restores()) {
            job.prepared = false;
            job.reimage = true;
        }
        self.failures.retain(|(f, _)| *f != j);
        self.start(j);
    }

    /// After a run ends with no restart due: run again for a queued
    /// trigger, wait for the next one, or complete.
    fn settle(&mut self, j: usize) {
        let winding = self.winding(j);
        let job = &mut self.jobs[j];
        if job.pending > 0 && (!winding || job.spec.trigger.is_stop_hook()) {
            job.pending = job.pending.saturating_sub(1);
            job.restarts_left = limit(job.spec.restarts);
            self.start(j);
            return;
        }
        job.pending = 0;
        if job.starts_left == Some(0) || winding && !job.spec.trigger.is_stop_hook() {
            self.complete(j);
        } else {
            job.restarts_left = limit(job.spec.restarts);
            job.phase = Phase::Waiting;
        }
    }

    /// The job will not run again: publish `stopping`, let pre-stop hooks
    /// run, then publish `stopped`.
    fn complete(&mut self, j: usize) {
        let job = &mut self.jobs[j];
        if job.phase == Phase::Done || job.stop.is_some() {
            return;
        }
        if !job.ran {
            job.phase = Phase::Done;
            return;
        }
        // A final run that failed on its own (not stopped by us) decides
        // the exit code when nothing can run any more.
        if self.stopping.is_none()
            && !job.retiring
            && !job.spec.trigger.is_stop_hook()
            && let Some(st) = job.last_exit.filter(|st| !st.success())
        {
            self.failures.retain(|(f, _)| *f != j);
            self.failures.push((j, st));
        }
        let job = &mut self.jobs[j];
        job.stop = Some(StopStage::Hooks);
        let name = job.spec.name.clone();
        // Leave the catalog (and any leadership) before anything else, so
        // traffic drains and another node can lead while the pre-stop hooks run.
        self.sync_catalog(j);
        self.sync_campaign(j);
        self.publish(Event::new(EventCode::Stopping, &name));
        self.drain();
        self.progress_stop(j);
    }

    fn progress_stop(&mut self, j: usize) {
        let Some(stage) = self.jobs[j].stop else {
            return;
        };
        if stage == StopStage::Hooks && self.hooks_busy(j) {
            return;
        }
        match self.jobs[j].phase {
            Phase::Running(Some(run)) if stage == StopStage::Hooks => {
                self.jobs[j].stop = Some(StopStage::Term);
                self.actions.push(Action::Signal {
                    run,
                    sig: Sig::Term,
                });
                let grace = self.jobs[j].spec.stop_timeout;
                self.set_timer(grace, Timer::KillAfterTerm(run));
            }
            Phase::Running(Some(_)) => {}
            _ => {
                let job = &mut self.jobs[j];
                job.phase = Phase::Done;
                job.stop = None;
                job.epoch = job.epoch.wrapping_add(1);
                let name = job.spec.name.clone();
                self.set_health(j, HealthStatus::Unknown);
                self.publish(Event::new(EventCode::Stopped, &name));
            }
        }
    }

    /// Whether a pre-stop hook of job `j` is still running.
    fn hooks_busy(&self, j: usize) -> bool {
        let name = &self.jobs[j].spec.name;
        self.jobs.iter().any(|h| {
            matches!(&h.spec.trigger, Trigger::Event { source, code: EventCode::Stopping, .. } if source == name)
                && matches!(h.phase, Phase::Running(Some(_)) | Phase::Backoff)
        })
    }

    // ---- health --------------------------------------------------------

    fn check_done(&mut self, j: usize, run: RunId, status: ExitStatus) {
        let job = &mut self.jobs[j];
        if job.check != Some(run) {
            return;
        }
        job.check = None;
        if self.maintenance || !matches!(job.phase, Phase::Running(_)) {
            return;
        }
        let (rise, fall) = job
            .spec
            .health
            .as_ref()
            .map(|h| (h.rise.max(1), h.fall.max(1)))
            .unwrap_or((1, 1));
        if status.success() {
            job.passes = job.passes.saturating_add(1);
            job.fails = 0;
            if job.health != HealthStatus::Healthy && job.passes >= rise {
                self.set_health(j, HealthStatus::Healthy);
            }
        } else {
            job.fails = job.fails.saturating_add(1);
            job.passes = 0;
            if job.health != HealthStatus::Unhealthy && job.fails >= fall {
                self.set_health(j, HealthStatus::Unhealthy);
            }
        }
    }

    /// Records a health status, publishing `healthy`/`unhealthy` only on a
    /// transition: ContainerPilot published `healthy` on every passing check,
    /// which re-ran `each: healthy` handlers every interval.
    fn set_health(&mut self, j: usize, to: HealthStatus) {
        let from = self.jobs[j].health;
        if from == to {
            return;
        }
        self.jobs[j].health = to;
        let name = self.jobs[j].spec.name.clone();
        match to {
            HealthStatus::Healthy => self.publish(Event::new(EventCode::Healthy, &name)),
            HealthStatus::Unhealthy => self.publish(Event::new(EventCode::Unhealthy, &name)),
            HealthStatus::Unknown if from == HealthStatus::Healthy => {
                self.publish(Event::new(EventCode::Unhealthy, &name))
            }
            _ => {}
        }
        let healthy = match to {
            HealthStatus::Healthy => Some(true),
            HealthStatus::Unhealthy => Some(false),
            _ => None,
        };
        self.actions.push(Action::Health { job: j, healthy });
    }

    /// The catalog entry a job should have now: registered only once healthy
    /// (or at once with `initial_status`), critical when failing or not
    /// running, and absent in maintenance or once it is stopping.
    fn desired_entry(&self, j: usize) -> Option<EntryStatus> {
        let job = &self.jobs[j];
        job.spec.port?;
        if self.maintenance || self.stopping.is_some() || job.stop.is_some() || job.retiring {
            return None;
        }
        let running = matches!(job.phase, Phase::Running(_));
        match job.health {
            HealthStatus::Healthy => Some(EntryStatus::Passing),
            HealthStatus::Unhealthy => (job.registered.is_some()
                || job.spec.initial_status.is_some())
            .then_some(EntryStatus::Critical),
            HealthStatus::Maintenance => None,
            HealthStatus::Unknown => match job.registered {
                Some(_) if !running => Some(EntryStatus::Critical),
                Some(s) => Some(s),
                None if running => job.spec.initial_status,
                None => None,
            },
        }
    }

    /// A job campaigns while it runs and is healthy (or has no health
    /// check), and not in maintenance or stopping.
    fn sync_campaign(&mut self, j: usize) {
        let job = &self.jobs[j];
        if job.spec.election.is_none() {
            return;
        }
        let want = !self.maintenance
            && self.stopping.is_none()
            && job.stop.is_none()
            && !job.retiring
            && matches!(job.phase, Phase::Running(_))
            && match job.spec.health {
                Some(_) => job.health == HealthStatus::Healthy,
                None => true,
            };
        if want != job.campaigning {
            self.jobs[j].campaigning = want;
            self.actions.push(Action::Campaign {
                job: j,
                campaign: want,
            });
        }
    }

    fn sync_catalog(&mut self, j: usize) {
        let want = self.desired_entry(j);
        let have = self.jobs[j].registered;
        if want == have {
            return;
        }
        self.jobs[j].registered = want;
        self.actions.push(match (have, want) {
            (_, None) => Action::Deregister { job: j },
            (None, Some(status)) => Action::Register { job: j, status },
            (Some(_), Some(status)) => Action::SetStatus { job: j, status },
        });
    }

    fn set_maintenance(&mut self, on: bool) {
        if self.maintenance == on {
            return;
        }
        self.maintenance = on;
        for j in 0..self.jobs.len() {
            if self.jobs[j].spec.health.is_some() || self.jobs[j].spec.port.is_some() {
                let to = if on {
                    HealthStatus::Maintenance
                } else {
                    HealthStatus::Unknown
                };
                let job = &mut self.jobs[j];
                job.passes = 0;
                job.fails = 0;
                self.set_health(j, to);
            }
        }
        let code = if on {
            EventCode::EnterMaintenance
        } else {
            EventCode::ExitMaintenance
        };
        self.publish(Event::global(code));
    }

    // ---- timers ---------------------------------------------------------

    fn set_timer(&mut self, after: Duration, t: Timer) {
        self.timer_seq = self.timer_seq.wrapping_add(1);
        self.timers
            .insert((self.now.saturating_add(after), self.timer_seq), t);
    }

    fn fire(&mut self, t: Timer) {
        match t {
            Timer::Interval(j) => {
                let Trigger::Interval(every) = self.jobs[j].spec.trigger else {
                    return;
                };
                if self.winding(j) || self.jobs[j].phase == Phase::Done {
                    return;
                }
                self.set_timer(every, Timer::Interval(j));
                let job = &mut self.jobs[j];
                // A run still going at the next tick is skipped, not doubled.
                if job.phase == Phase::Waiting {
                    match &mut job.restarts_left {
                        Some(0) => self.complete(j),
                        left => {
                            if let Some(n) = left {
                                *n = n.saturating_sub(1);
                            }
                            // A periodic run, not a restart: not counted.
                            self.start(j);
                        }
                    }
                }
            }
            Timer::HealthTick { job: j, epoch } => {
                let job = &self.jobs[j];
                let Some(h) = &job.spec.health else { return };
                if job.epoch != epoch || !matches!(job.phase, Phase::Running(_)) {
                    return;
                }
                let every = h.interval;
                let timeout = h.timeout;
                let busy = self.maintenance || job.check.is_some() || job.stop.is_some();
                self.set_timer(every, Timer::HealthTick { job: j, epoch });
                if busy {
                    return;
                }
                let run = RunId(self.next_run);
                self.next_run = self.next_run.saturating_add(1);
                self.runs.insert(
                    run,
                    Run {
                        job: j,
                        kind: ProcKind::Check,
                        pid: None,
                        started: self.now,
                    },
                );
                self.jobs[j].check = Some(run);
                self.actions.push(Action::Spawn {
                    run,
                    job: j,
                    kind: ProcKind::Check,
                });
                self.set_timer(timeout, Timer::RunTimeout(run));
            }
            Timer::Restart(j) => {
                if self.jobs[j].phase != Phase::Backoff {
                    return;
                }
                if self.winding(j) {
                    self.jobs[j].phase = Phase::Waiting;
                    self.settle(j);
                } else {
                    self.jobs[j].phase = Phase::Waiting;
                    self.start(j);
                }
            }
            Timer::Snapshot { job: j, epoch } => {
                let job = &self.jobs[j];
                if job.epoch != epoch
                    || !matches!(job.phase, Phase::Running(_))
                    || self.stopping.is_some()
                    || job.retiring
                {
                    return;
                }
                if let Some(s) = job.spec.snapshot.as_ref()
                    && let Some(every) = s.interval
                {
                    // With `leaderOnly`, followers skip their turn.
                    let due = s.create.is_some() && (!s.leader_only || job.leading.is_some());
                    self.set_timer(every, Timer::Snapshot { job: j, epoch });
                    if due {
                        self.actions.push(Action::Snapshot {
                            job: j,
                            only_if_none: false,
                        });
                    }
                }
            }
            Timer::WhenTimeout(j) => {
                let job = &mut self.jobs[j];
                if job.ran || job.phase != Phase::Waiting {
                    return;
                }
                job.phase = Phase::Done;
                let name = job.spec.name.clone();
                self.publish(Event::new(EventCode::TimerExpired, &name));
                self.publish(Event::new(EventCode::Stopped, &name));
            }
            Timer::RunTimeout(run) | Timer::KillAfterTerm(run) => {
                if self.runs.contains_key(&run) {
                    self.actions.push(Action::Signal {
                        run,
                        sig: Sig::Kill,
                    });
                }
            }
        }
    }

    // ---- stopping -------------------------------------------------------

    fn begin_stop(&mut self, reason: StopReason) {
        if let Some(current) = self.stopping {
            // A shutdown asked for during a reload wins: the jobs are
            // already stopping, and the new config is never started.
            if current == StopReason::Reload && reason == StopReason::Shutdown {
                self.stopping = Some(StopReason::Shutdown);
            }
            return;
        }
        // A stop asked for while a reload waits for its old jobs wins too:
        // the new config is dropped.
        self.reload = None;
        self.stopping = Some(reason);
        self.publish(Event::global(EventCode::Shutdown));
        self.drain();
        // Health checks are not waited on: kill them so their exits arrive.
        let checks: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, r)| r.kind == ProcKind::Check)
            .map(|(id, _)| *id)
            .collect();
        for run in checks {
            self.actions.push(Action::Signal {
                run,
                sig: Sig::Kill,
            });
        }
        for j in 0..self.jobs.len() {
            if self.jobs[j].spec.trigger.is_stop_hook() {
                // A hook already running gets a bounded time to finish.
                self.bound_hook(j);
                continue;
            }
            self.wind_down(j);
        }
    }

    /// Bounds a running stop hook by its `timeout` or the global stop timeout.
    fn bound_hook(&mut self, j: usize) {
        let job = &self.jobs[j];
        if let Phase::Running(Some(run)) = job.phase {
            let bound = job.spec.timeout.unwrap_or(self.global_stop_timeout);
            self.set_timer(bound, Timer::RunTimeout(run));
        }
    }

    /// Sends a job that is not a stop hook down its stop path for good.
    fn wind_down(&mut self, j: usize) {
        let job = &mut self.jobs[j];
        job.pending = 0;
        match job.phase {
            Phase::Done => {}
            Phase::Waiting if !job.ran => job.phase = Phase::Done,
            Phase::Backoff => {
                job.phase = Phase::Waiting;
                self.complete(j);
            }
            _ => self.complete(j),
        }
    }

    /// Whether the job is on its way out: a stop, or a reload that drops it.
    fn winding(&self, j: usize) -> bool {
        self.stopping.is_some() || self.jobs[j].retiring
    }

    // ---- reload -----------------------------------------------------------

    /// Starts a reload: jobs the new list keeps unchanged run on; the others
    /// (and, during a reload already pending, the ones it retired) stop via
    /// their normal stop path. A reload during a shutdown is ignored.
    fn begin_reload(&mut self, specs: Vec<JobSpec>, stop_timeout: Duration) {
        if self.stopping.is_some() || self.finished {
            return;
        }
        let old: Vec<JobSpec> = self.jobs.iter().map(|j| j.spec.clone()).collect();
        let mut kept = plan_reload(&old, &specs);
        for k in &mut kept {
            if k.is_some_and(|o| self.jobs[o].retiring) {
                *k = None;
            }
        }
        let mut retire: Vec<bool> = vec![true; self.jobs.len()];
        for o in kept.iter().flatten() {
            retire[*o] = false;
        }
        self.reload = Some(PendingReload {
            specs,
            stop_timeout,
            kept,
            ready: false,
        });
        let newly: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| retire[j] && !self.jobs[j].retiring)
            .collect();
        // Mark first, so a retiring job's `stopping` reaches its retiring
        // hooks and starts nothing else that is retiring.
        for &j in &newly {
            self.jobs[j].retiring = true;
        }
        for &j in &newly {
            if !self.jobs[j].spec.trigger.is_stop_hook() {
                continue;
            }
            // A hook of a job that stays is not needed: its new version
            // takes over. A hook of a retiring job waits for it to stop.
            let source_stays = match &self.jobs[j].spec.trigger {
                Trigger::Event { source, .. } => self
                    .jobs
                    .iter()
                    .any(|o| &o.spec.name == source && !o.retiring),
                _ => false,
            };
            if source_stays && self.jobs[j].phase == Phase::Waiting {
                self.jobs[j].phase = Phase::Done;
            }
            self.bound_hook(j);
        }
        for &j in &newly {
            if self.jobs[j].spec.trigger.is_stop_hook() {
                continue;
            }
            if let Some(run) = self.jobs[j].check {
                self.actions.push(Action::Signal {
                    run,
                    sig: Sig::Kill,
                });
            }
            self.wind_down(j);
        }
    }

    /// Whether every job a pending reload retires has stopped: done (or a
    /// hook that can no longer fire) with no process left.
    fn retired(&self) -> bool {
        let busy = |j: usize| {
            let job = &self.jobs[j];
            match job.phase {
                Phase::Done => false,
                // A hook waits only for a retiring job that has not stopped
                // yet; the hook of a job that stays is not waited for.
                Phase::Waiting if job.spec.trigger.is_stop_hook() => match &job.spec.trigger {
                    Trigger::Event { source, .. } => self
                        .jobs
                        .iter()
                        .find(|o| &o.spec.name == source)
                        .is_some_and(|o| {
                            o.retiring && (o.phase != Phase::Done || o.stop.is_some())
                        }),
                    _ => false,
                },
                _ => true,
            }
        };
        (0..self.jobs.len())
            .filter(|&j| self.jobs[j].retiring)
            .all(|j| !busy(j))
            && self
                .runs
                .values()
                .all(|r| !self.jobs.get(r.job).is_some_and(|j| j.retiring))
    }

    /// Whether `ev` was ever published (of the events a reload remembers:
    /// those of current jobs or that a job waits on).
    pub fn has_published(&self, ev: &Event) -> bool {
        self.published.contains(ev)
    }

    /// Whether a reload reported `Finished { Reload }` and waits for [`Machine::adopt`].
    pub fn reload_ready(&self) -> bool {
        self.reload.as_ref().is_some_and(|r| r.ready)
    }

    /// Takes the new job list of a finished reload: unchanged jobs keep
    /// their state (process, health, registration, leadership, timers);
    /// new and changed jobs start as at startup, except that a `once` job
    /// whose event was already published starts at once (its event will
    /// not come again). Returns, per new job, the index of the old job it
    /// continues (the runtime moves its per-job state the same way), and
    /// the actions of starting the new jobs; `None` if no reload is ready.
    pub fn adopt(&mut self, now: Duration) -> Option<(Vec<Option<usize>>, Vec<Action>)> {
        if !self.reload_ready() {
            return None;
        }
        let reload = self.reload.take()?;
        self.now = self.now.max(now);
        let new_of_old = new_of_old(&reload.kept, self.jobs.len());
        let mut old: Vec<Option<Job>> = std::mem::take(&mut self.jobs)
            .into_iter()
            .map(Some)
            .collect();
        let maintenance = self.maintenance;
        self.jobs = reload
            .specs
            .into_iter()
            .zip(&reload.kept)
            .map(
                |(spec, k)| match k.and_then(|o| old.get_mut(o)).and_then(Option::take) {
                    Some(mut job) => {
                        job.spec = spec;
                        job
                    }
                    None => Job::new(spec, maintenance),
                },
            )
            .collect();
        self.runs
            .retain(|_, r| match new_of_old.get(r.job).copied().flatten() {
                Some(n) => {
                    r.job = n;
                    true
                }
                None => false,
            });
        let remap = |j: usize| new_of_old.get(j).copied().flatten();
        self.timers = std::mem::take(&mut self.timers)
            .into_iter()
            .filter_map(|(k, t)| {
                let t = match t {
                    Timer::Interval(j) => Timer::Interval(remap(j)?),
                    Timer::HealthTick { job, epoch } => Timer::HealthTick {
                        job: remap(job)?,
                        epoch,
                    },
                    Timer::Restart(j) => Timer::Restart(remap(j)?),
                    Timer::Snapshot { job, epoch } => Timer::Snapshot {
                        job: remap(job)?,
                        epoch,
                    },
                    Timer::WhenTimeout(j) => Timer::WhenTimeout(remap(j)?),
                    t @ (Timer::RunTimeout(_) | Timer::KillAfterTerm(_)) => t,
                };
                Some((k, t))
            })
            .collect();
        // The failure of a job the reload removed or replaced is not the
        // new config's: it must not decide the exit code later.
        self.failures = std::mem::take(&mut self.failures)
            .into_iter()
            .filter_map(|(j, st)| remap(j).map(|n| (n, st)))
            .collect();
        self.global_stop_timeout = reload.stop_timeout;
        let specs: Vec<JobSpec> = self.jobs.iter().map(|j| j.spec.clone()).collect();
        self.main = main_job(&specs);
        // Only events of current jobs, or that some job waits on, are worth
        // remembering: the set stays bounded by the config.
        self.published.retain(|ev| {
            specs.iter().any(|s| {
                s.name == ev.source
                    || matches!(&s.trigger, Trigger::Event { source, code, .. } if *source == ev.source && *code == ev.code)
            })
        });
        let fresh: Vec<usize> = (0..self.jobs.len())
            .filter(|n| reload.kept[*n].is_none())
            .collect();
        for &n in &fresh {
            if let Trigger::Event {
                timeout: Some(t), ..
            } = self.jobs[n].spec.trigger
            {
                self.set_timer(t, Timer::WhenTimeout(n));
            }
        }
        for &n in &fresh {
            let due = match &self.jobs[n].spec.trigger {
                Trigger::Startup | Trigger::Interval(_) => true,
                t @ Trigger::Event {
                    source,
                    code,
                    each: false,
                    ..
                } => !t.is_stop_hook() && self.published.contains(&Event::new(*code, source)),
                Trigger::Event { each: true, .. } => false,
            };
            if due {
                self.triggered(n);
                self.drain();
            }
        }
        self.drain();
        self.after_step();
        Some((reload.kept, std::mem::take(&mut self.actions)))
    }

    /// Runs after every step: bounds stop hooks, notices the main job's end,
    /// and reports when a stop has finished.
    fn after_step(&mut self) {
        if self.finished {
            return;
        }
        for j in 0..self.jobs.len() {
            self.sync_catalog(j);
            self.sync_campaign(j);
        }
        // Jobs that waited on hooks may proceed now.
        for j in 0..self.jobs.len() {
            if self.jobs[j].stop == Some(StopStage::Hooks) {
                self.progress_stop(j);
            }
        }
        self.drain();
        // Stop hooks started during a stop (or for a retiring job) run
        // under a deadline.
        let bound = self.global_stop_timeout;
        let mut new_bounds = Vec::new();
        for job in &self.jobs {
            let in_stop = self.stopping.is_some()
                || job.retiring
                || matches!(&job.spec.trigger, Trigger::Event { source, .. }
                    if self.jobs.iter().any(|o| &o.spec.name == source && o.retiring));
            if let (true, true, Phase::Running(Some(run))) =
                (in_stop, job.spec.trigger.is_stop_hook(), job.phase)
            {
                let has = self
                    .timers
                    .values()
                    .any(|t| matches!(t, Timer::RunTimeout(r) if *r == run));
                if !has {
                    new_bounds.push((job.spec.timeout.unwrap_or(bound), run));
                }
            }
        }
        for (after, run) in new_bounds {
            self.set_timer(after, Timer::RunTimeout(run));
        }
        if self.stopping.is_some() {
            if self.runs.is_empty() && self.all_inert() {
                self.finished = true;
                let reason = self.stopping.unwrap_or(StopReason::Shutdown);
                self.timers.clear();
                self.actions.push(Action::Finished {
                    reason,
                    code: self.exit_code(),
                });
            }
            return;
        }
        if let Some(r) = &self.reload {
            // No end-of-life decisions while old jobs make way for new ones.
            if !r.ready && self.retired() {
                if let Some(r) = self.reload.as_mut() {
                    r.ready = true;
                }
                self.actions.push(Action::Finished {
                    reason: StopReason::Reload,
                    code: 0,
                });
            }
            return;
        }
        // A main job that ends for good with a failure ends the container
        // (our extension). A clean exit never does: autopilot runs while
        // any job can still run, as ContainerPilot did.
        let main_failed = self.main.is_some_and(|m| {
            let job = &self.jobs[m];
            ends_on_failure(&job.spec)
                && job.phase == Phase::Done
                && job.stop.is_none()
                && job.last_exit.is_some_and(|st| !st.success())
        });
        if main_failed {
            self.begin_stop(StopReason::Shutdown);
            self.after_step();
        } else if !self.jobs.is_empty() && self.all_inert() {
            self.end = End::Idle;
            self.begin_stop(StopReason::Shutdown);
            self.after_step();
        }
    }

    /// No job can run again: each is done, or waits for an event only a
    /// job that can run no more would publish (a stop hook of a stopped
    /// job, the next step of a chain whose earlier step failed). During a
    /// stop, only stop hooks can still run.
    fn all_inert(&self) -> bool {
        let mut dead: Vec<bool> = self
            .jobs
            .iter()
            .map(|j| j.phase == Phase::Done && j.stop.is_none())
            .collect();
        let source_of = |name: &str| self.jobs.iter().position(|o| o.spec.name == name);
        loop {
            let mut changed = false;
            for (i, j) in self.jobs.iter().enumerate() {
                if dead[i] || j.phase != Phase::Waiting {
                    continue;
                }
                let now_dead = match &j.spec.trigger {
                    Trigger::Event {
                        source,
                        code: EventCode::Stopping | EventCode::Stopped,
                        ..
                    } => source_of(source).is_none_or(|s| dead[s]),
                    _ if self.stopping.is_some() => true,
                    // Published to every job of an election, running or not.
                    Trigger::Event {
                        code: EventCode::LeaderChanged,
                        ..
                    } => false,
                    Trigger::Event {
                        source, timeout, ..
                    } => source_of(source).is_some_and(|s| dead[s]) && (timeout.is_none() || j.ran),
                    _ => false,
                };
                if now_dead {
                    dead[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        dead.iter().all(|d| *d)
    }

    /// The main job's code; when nothing could run any more, the first
    /// failure of: the main job's last run, the last failed final run of any
    /// other job; else 0.
    fn exit_code(&self) -> i32 {
        let main = self
            .main
            .and_then(|m| self.jobs[m].last_exit)
            .map(ExitStatus::code);
        match self.end {
            End::Requested => main.unwrap_or(0),
            End::Idle => main
                .filter(|c| *c != 0)
                .or(self.failures.last().map(|(_, st)| st.code()))
                .unwrap_or(0),
        }
    }

    fn arm_when_timeouts(&mut self) {
        for j in 0..self.jobs.len() {
            if let Trigger::Event {
                timeout: Some(t), ..
            } = self.jobs[j].spec.trigger
            {
                self.set_timer(t, Timer::WhenTimeout(j));
            }
        }
    }
}

/// The inverse of [`plan_reload`]'s answer: per old job (of `old_len`),
/// the index of the new job that continues it, if any.
pub fn new_of_old(kept: &[Option<usize>], old_len: usize) -> Vec<Option<usize>> {
    let mut map = vec![None; old_len];
    for (n, o) in kept.iter().enumerate() {
        if let Some(slot) = o.and_then(|o| map.get_mut(o)) {
            *slot = Some(n);
        }
    }
    map
}

/// Which jobs of a running list a reloaded list keeps: per new job, the
/// old job it continues. A job is kept when a job of the same name has an
/// identical spec and, for a stop hook, the job it hooks is kept too (a
/// hook already used up by its old job's stop must start afresh).
pub fn plan_reload(old: &[JobSpec], new: &[JobSpec]) -> Vec<Option<usize>> {
    let mut kept: Vec<Option<usize>> = new
        .iter()
        .map(|n| old.iter().position(|o| o.name == n.name && o == n))
        .collect();
    loop {
        let mut changed = false;
        for i in 0..new.len() {
            if kept[i].is_none() || !new[i].trigger.is_stop_hook() {
                continue;
            }
            let Trigger::Event { source, .. } = &new[i].trigger else {
                continue;
            };
            let source_kept = new
                .iter()
                .position(|s| &s.name == source)
                .is_some_and(|s| kept[s].is_some());
            if !source_kept {
                kept[i] = None;
                changed = true;
            }
        }
        if !changed {
            return kept;
        }
    }
}

/// Per new item, the old item it continues: the first old item with the
/// same key and an equal value not already taken. For watches and
/// templates, whose tasks a reload keeps when their config is unchanged.
pub fn keep_unchanged<T: PartialEq, K: PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<Option<usize>> {
    let mut taken = vec![false; old.len()];
    new.iter()
        .map(|n| {
            let i =
                (0..old.len()).find(|&i| !taken[i] && key(&old[i]) == key(n) && old[i] == *n)?;
            taken[i] = true;
            Some(i)
        })
        .collect()
}

fn limit(r: Restarts) -> Option<u32> {
    match r {
        Restarts::Never => Some(0),
        Restarts::Unlimited => None,
        Restarts::Count(n) => Some(n),
    }
}
