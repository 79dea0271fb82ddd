//! The supervisor state machine: job lifecycles, health, restarts, timers and the stop order.
//!
//! It holds no processes, sockets or clocks. The runtime feeds it [`Input`]s
//! stamped with a monotonic time and executes the [`Action`]s it returns;
//! timers are kept here and fired by [`Machine::advance`], so tests drive it
//! with a fake clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::event::{Event, EventCode};
use crate::spec::{EntryStatus, JobSpec, Restarts, Trigger, main_job};

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
    /// Restore the job's data before its first start; answer with `Input::Prepared`.
    Prepare { job: usize },
    /// Take a snapshot of the job: its interval came round, or (with
    /// `only_if_none`) it was just elected and the set may have none yet.
    Snapshot { job: usize, only_if_none: bool },
    /// Every job is stopped: exit with `code`, or load the new config.
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
}

impl Machine {
    /// `first_run_id` lets a reloaded machine continue the run numbering, so
    /// run IDs stay unique for the whole life of the agent.
    pub fn new(specs: Vec<JobSpec>, global_stop_timeout: Duration, first_run_id: u64) -> Self {
        let main = main_job(&specs);
        let jobs = specs
            .into_iter()
            .map(|spec| {
                let spec_restores = spec.snapshot.as_ref().is_some_and(|s| s.restores());
                let starts_left = match &spec.trigger {
                    Trigger::Event { each: true, .. } => None,
                    _ => Some(1),
                };
                let restarts_left = limit(spec.restarts);
                Job {
                    spec,
                    phase: Phase::Waiting,
                    starts_left,
                    restarts_left,
                    streak: 0,
                    pending: 0,
                    ran: false,
                    stop: None,
                    health: HealthStatus::Unknown,
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
                }
            })
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
            })
            .collect()
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
        if self.stopping.is_some() && !job.spec.trigger.is_stop_hook() {
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
            self.actions.push(Action::Prepare { job: j });
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
        if self.stopping.is_some() {
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
        {
            let job = &mut self.jobs[j];
            job.last_exit = Some(status);
            job.epoch = job.epoch.wrapping_add(1);
            job.check = None;
            job.phase = Phase::Waiting;
        }
        self.set_health(j, HealthStatus::Unknown);
        self.publish(Event::new(code, &name));
        if self.jobs[j].stop.is_some() {
            self.progress_stop(j);
            return;
        }
        if self.stopping.is_some() {
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
        self.settle(j);
    }

    /// After a run ends with no restart due: run again for a queued
    /// trigger, wait for the next one, or complete.
    fn settle(&mut self, j: usize) {
        let job = &mut self.jobs[j];
        if job.pending > 0 && (self.stopping.is_none() || job.spec.trigger.is_stop_hook()) {
            job.pending = job.pending.saturating_sub(1);
            job.restarts_left = limit(job.spec.restarts);
            self.start(j);
            return;
        }
        job.pending = 0;
        if job.starts_left == Some(0) || self.stopping.is_some() && !job.spec.trigger.is_stop_hook()
        {
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
        if self.maintenance || self.stopping.is_some() || job.stop.is_some() {
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
                if self.stopping.is_some() || self.jobs[j].phase == Phase::Done {
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
                if self.stopping.is_some() {
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
            let job = &mut self.jobs[j];
            if job.spec.trigger.is_stop_hook() {
                // A hook already running gets a bounded time to finish.
                if let Phase::Running(Some(run)) = job.phase {
                    let bound = job.spec.timeout.unwrap_or(self.global_stop_timeout);
                    self.set_timer(bound, Timer::RunTimeout(run));
                }
                continue;
            }
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
        if self.stopping.is_some() {
            // Jobs that waited on hooks may proceed now.
            for j in 0..self.jobs.len() {
                if self.jobs[j].stop == Some(StopStage::Hooks) {
                    self.progress_stop(j);
                }
            }
            self.drain();
            // Stop hooks started during the stop run under a deadline.
            let bound = self.global_stop_timeout;
            let mut new_bounds = Vec::new();
            for job in &self.jobs {
                if let (true, Phase::Running(Some(run))) =
                    (job.spec.trigger.is_stop_hook(), job.phase)
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
        for j in 0..self.jobs.len() {
            if self.jobs[j].stop == Some(StopStage::Hooks) {
                self.progress_stop(j);
            }
        }
        self.drain();
        let main_done = match self.main {
            Some(m) => self.jobs[m].phase == Phase::Done,
            None => !self.jobs.is_empty() && self.all_inert(),
        };
        if main_done {
            self.begin_stop(StopReason::Shutdown);
            self.after_step();
        }
    }

    /// No job can run again: each is done, or is a stop hook whose source
    /// job is done (so its trigger can never fire).
    fn all_inert(&self) -> bool {
        self.jobs.iter().all(|j| match j.phase {
            Phase::Done => true,
            Phase::Waiting => match &j.spec.trigger {
                Trigger::Event {
                    source,
                    code: EventCode::Stopping | EventCode::Stopped,
                    ..
                } => self
                    .jobs
                    .iter()
                    .find(|o| &o.spec.name == source)
                    .is_none_or(|o| o.phase == Phase::Done && o.stop.is_none()),
                _ => self.stopping.is_some(),
            },
            _ => false,
        })
    }

    fn exit_code(&self) -> i32 {
        self.main
            .and_then(|m| self.jobs[m].last_exit)
            .map(ExitStatus::code)
            .unwrap_or(0)
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

fn limit(r: Restarts) -> Option<u32> {
    match r {
        Restarts::Never => Some(0),
        Restarts::Unlimited => None,
        Restarts::Count(n) => Some(n),
    }
}
