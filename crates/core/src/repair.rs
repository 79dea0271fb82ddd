//! Self-repair: watchdog rise/fall, a job's node state (healthy, failure, probation) and its repair ladder, the fleet-wide budget's pure rules, and the catalog layout of repair records.
//!
//! [`Repair`] is a pure state machine per job with a `repair` block. The runtime feeds it
//! what it observes ([`Condition`], the answer to a slot request, the end of an action) with
//! a monotonic time and executes the [`RepairAction`]s it returns, in order. It never touches
//! a process, the catalog or a clock.
//!
//! ```text
//!            error (or pending > grace)                 slot granted
//!  healthy ─────────────────────────────▶ failure ──────────────────────▶ action (step k)
//!     ▲        ok for probation               │  ▲ slot denied: wait,           │ done
//!     │◀──────────────────────────────────────┘  │ budget-exhausted once        ▼
//!     │                                          │                         probation
//!     │◀─────────── ok for probation ────────────┼───────────────────────────────┤
//!     │                                          │  error (or pending > grace):  │
//!     │                                          │  step k+1 if any ◀────────────┘
//!     │                                          └─ else: failure, exhausted (no more actions)
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::EventCode;
use crate::machine::HealthStatus;
use crate::spec::{RepairBudget, RepairSpec, RepairStep};

/// An action that has not reported its end after this long (or `grace`, if
/// longer) counts as failed and the ladder moves on.
pub const ACTION_DEADLINE: Duration = Duration::from_secs(600);
/// How long a leader is given to step down before its repair goes ahead anyway.
pub const DEMOTE_WAIT: Duration = Duration::from_secs(10);
/// History records kept per service; the writer deletes older ones.
pub const HISTORY_CAP: usize = 200;
/// Longest reason or message kept (characters).
pub const TEXT_CAP: usize = 200;

// ---- watchdogs --------------------------------------------------------------

/// What a watchdog reports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogStatus {
    #[default]
    Ok,
    /// Overloaded, degraded, close to a limit: shown, never repaired.
    Warning,
    /// Failed: counts toward a repair.
    Error,
}

impl WatchdogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchdogStatus::Ok => "ok",
            WatchdogStatus::Warning => "warning",
            WatchdogStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<WatchdogStatus> {
        [
            WatchdogStatus::Ok,
            WatchdogStatus::Warning,
            WatchdogStatus::Error,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
    }
}

/// Rise/fall over a watchdog's raw results: the reported status moves to a
/// worse one after `fall` consecutive raw results that are that bad or worse
/// (it moves to the best status all of them share), and to a better one after
/// `rise` consecutive results that are that good or better. A single slow or
/// failed probe does not flip a node.
#[derive(Debug, Clone)]
pub struct WatchdogFilter {
    rise: u32,
    fall: u32,
    status: WatchdogStatus,
    /// Consecutive raw results worse than `status`, and the best of them.
    worse: u32,
    worse_best: WatchdogStatus,
    /// Consecutive raw results better than `status`, and the worst of them.
    better: u32,
    better_worst: WatchdogStatus,
}

impl WatchdogFilter {
    /// Starts at `ok`. `rise`/`fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> WatchdogFilter {
        WatchdogFilter {
            rise: rise.max(1),
            fall: fall.max(1),
            status: WatchdogStatus::Ok,
            worse: 0,
            worse_best: WatchdogStatus::Error,
            better: 0,
            better_worst: WatchdogStatus::Ok,
        }
    }

    pub fn status(&self) -> WatchdogStatus {
        self.status
    }

    /// Feeds one raw result; returns the reported status if it changed.
    pub fn observe(&mut self, raw: WatchdogStatus) -> Option<WatchdogStatus> {
        use std::cmp::Ordering;
        match raw.cmp(&self.status) {
            Ordering::Equal => {
                self.worse = 0;
                self.better = 0;
                None
            }
            Ordering::Greater => {
                self.better = 0;
                self.worse_best = if self.worse == 0 {
                    raw
                } else {
                    self.worse_best.min(raw)
                };
                self.worse = self.worse.saturating_add(1);
                if self.worse >= self.fall {
                    self.worse = 0;
                    self.status = self.worse_best;
                    Some(self.status)
                } else {
                    None
                }
            }
            Ordering::Less => {
                self.worse = 0;
                self.better_worst = if self.better == 0 {
                    raw
                } else {
                    self.better_worst.max(raw)
                };
                self.better = self.better.saturating_add(1);
                if self.better >= self.rise {
                    self.better = 0;
                    self.status = self.better_worst;
                    Some(self.status)
                } else {
                    None
                }
            }
        }
    }
}

// ---- what the runtime observes --------------------------------------------------

/// A job's repair-relevant condition, derived by [`condition`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Condition {
    /// Running and healthy (or running with no health check), no watchdog error.
    Ok,
    /// Restoring before a start, or in maintenance: never counted against it.
    Starting,
    /// Running but not yet healthy, or waiting to restart: an error after `grace`.
    #[default]
    Pending,
    /// Failing, with the reason.
    Error(String),
}

/// What the agent knows of a repair job at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobObservation {
    /// A run of the job is alive.
    pub running: bool,
    /// Its restore before a start is in progress.
    pub preparing: bool,
    /// The machine's health status of the job.
    pub health: HealthStatus,
    /// The job has a health check (without one, running is healthy).
    pub has_check: bool,
    /// It ran out of restarts and waits for a repair.
    pub parked: bool,
    /// The first `error` among the watchdogs that count for this job: `"name: message"`.
    pub watchdog_error: Option<String>,
}

/// The condition of a job: an error from a watchdog or a failed-for-good job
/// first, then the job's own health. Maintenance is neutral.
pub fn condition(o: &JobObservation) -> Condition {
    if let Some(w) = &o.watchdog_error {
        return Condition::Error(clean(&format!("watchdog {w}")));
    }
    if o.parked {
        return Condition::Error("the job failed with no restart left".to_string());
    }
    if o.preparing || o.health == HealthStatus::Maintenance {
        return Condition::Starting;
    }
    if !o.running {
        return Condition::Pending;
    }
    if !o.has_check {
        return Condition::Ok;
    }
    match o.health {
        HealthStatus::Healthy => Condition::Ok,
        HealthStatus::Unhealthy => Condition::Error("its health check is failing".to_string()),
        HealthStatus::Unknown | HealthStatus::Maintenance => Condition::Pending,
    }
}

// ---- the node state machine -----------------------------------------------------

/// A node's state for one job, as in Autopilot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Healthy,
    /// Failing: waiting for a repair slot, being repaired, or out of steps.
    Failure,
    /// A repair step ran; passing its checks for the probation period makes it healthy.
    Probation,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Healthy => "healthy",
            NodeState::Failure => "failure",
            NodeState::Probation => "probation",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        [NodeState::Healthy, NodeState::Failure, NodeState::Probation]
            .into_iter()
            .find(|n| n.as_str() == s)
    }
}

/// How a repair action ended, in its history record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The node passed its probation.
    Succeeded,
    /// The step could not run, did not finish, or the node failed again in probation.
    Failed,
    /// The agent restarted while the step or its probation was under way.
    Interrupted,
    /// The agent exited for the scheduler to replace it.
    Replaced,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Replaced => "replaced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairInput {
    Condition(Condition),
    /// A deadline came round, or (while waiting for a slot) the catalog changed.
    Tick,
    SlotGranted,
    SlotDenied,
    /// Just before carrying out a `Run`, the runtime found the slot no longer
    /// held (its session expired during a stall): the step did not run. It is
    /// recorded as interrupted and tried again once a slot is held.
    SlotLost,
    /// Whether the job leads its election.
    Leading(bool),
    /// The running step ended: for restart and reimage, the job was started
    /// again (`ok: false`: the step could not be carried out, and why).
    ActionDone {
        ok: bool,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairAction {
    /// Try to take a budget slot; answer `SlotGranted` or `SlotDenied`.
    AcquireSlot,
    /// Give the slot back.
    ReleaseSlot,
    /// The first denial of this failure: claim the service's exhausted
    /// marker and publish `repairBudgetExhausted` only if this node created it.
    BudgetExhausted,
    /// The job leads its election: have it step down; answer `Leading(false)`.
    Demote,
    /// Carry out the step; answer `ActionDone` (never for `replace`: the agent exits).
    Run { step: RepairStep, attempt: u32 },
    /// Open the history record of the step about to run.
    HistoryStart {
        step: RepairStep,
        attempt: u32,
        reason: String,
    },
    /// Close the open history record.
    HistoryEnd { outcome: Outcome, message: String },
    /// Publish this event with the job's name as the source.
    Event(EventCode),
    /// The view changed: re-publish the node entry and persist [`Repair::record`].
    Changed,
}

/// What `/status`, the node entry and metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairView {
    pub state: NodeState,
    /// The step running or last run in this failure.
    pub step: Option<RepairStep>,
    /// Steps run in this failure.
    pub attempt: u32,
    pub reason: Option<String>,
    /// When the state was entered (machine time).
    pub since: Duration,
    pub waiting_for_budget: bool,
    pub holds_slot: bool,
    /// Every step was tried; a person must look (or the node recovers on its own).
    pub exhausted: bool,
    /// A step is being carried out.
    pub running: bool,
}

/// The part of a node's repair state that survives an agent restart (JSON
/// in the catalog). Decoded leniently: unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    pub state: NodeState,
    pub step: Option<RepairStep>,
    pub attempt: u32,
    pub reason: Option<String>,
    pub exhausted: bool,
    pub running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    /// Wanted; `asking` while a request is out, `denied` after a denial.
    Wanted {
        asking: bool,
        denied: bool,
    },
    Held,
}

/// One job's repair state machine. See the module diagram.
#[derive(Debug, Clone)]
pub struct Repair {
    spec: RepairSpec,
    state: NodeState,
    since: Duration,
    reason: Option<String>,
    /// Ladder index of the step running or last run in this failure.
    step: Option<usize>,
    attempt: u32,
    slot: Slot,
    /// `BudgetExhausted` was emitted in this failure.
    exhaustion_reported: bool,
    exhausted: bool,
    /// The running step's ladder index and start.
    running: Option<(usize, Duration)>,
    /// A `HistoryStart` has no `HistoryEnd` yet.
    history_open: bool,
    /// `Demote` was sent at this time; the step waits for `Leading(false)`.
    demoting: Option<Duration>,
    leading: bool,
    cond: Condition,
    /// Since when the condition has been `Ok` / `Pending` without a break.
    ok_since: Option<Duration>,
    pending_since: Option<Duration>,
    now: Duration,
}

impl Repair {
    /// A node that starts healthy.
    pub fn new(spec: RepairSpec, now: Duration) -> Repair {
        Repair {
            spec,
            state: NodeState::Healthy,
            since: now,
            reason: None,
            step: None,
            attempt: 0,
            slot: Slot::None,
            exhaustion_reported: false,
            exhausted: false,
            running: None,
            history_open: false,
            demoting: None,
            leading: false,
            cond: Condition::Pending,
            ok_since: None,
            pending_since: Some(now),
            now,
        }
    }

    /// Continues from a record persisted before an agent restart. A step
    /// that was running, or whose probation was under way, counts as done:
    /// the node is in probation of that step (the runtime closes its open
    /// history record as interrupted). A slot is asked for again but not
    /// waited on: the step already happened.
    pub fn resume(
        spec: RepairSpec,
        rec: &NodeRecord,
        now: Duration,
    ) -> (Repair, Vec<RepairAction>) {
        let mut r = Repair::new(spec, now);
        let step = rec
            .step
            .and_then(|s| r.spec.ladder.iter().position(|l| *l == s));
        let mut out = Vec::new();
        match (rec.state, rec.running) {
            (NodeState::Healthy, false) => return (r, out),
            (NodeState::Failure, false) => {
                r.state = NodeState::Failure;
                r.step = step;
                r.attempt = rec.attempt;
                r.reason = rec.reason.as_deref().map(clean);
                r.exhausted = rec.exhausted;
                if !r.exhausted {
                    r.slot = Slot::Wanted {
                        asking: false,
                        denied: false,
                    };
                }
            }
            _ => {
                r.state = NodeState::Probation;
                r.step = step.or(Some(0));
                r.attempt = rec.attempt.max(1);
                r.reason = rec.reason.as_deref().map(clean);
                r.slot = Slot::Wanted {
                    asking: true,
                    denied: false,
                };
                out.push(RepairAction::AcquireSlot);
            }
        }
        out.push(RepairAction::Changed);
        (r, out)
    }

    pub fn spec(&self) -> &RepairSpec {
        &self.spec
    }

    pub fn view(&self) -> RepairView {
        RepairView {
            state: self.state,
            step: self.step_kind(),
            attempt: self.attempt,
            reason: self.reason.clone(),
            since: self.since,
            waiting_for_budget: matches!(self.slot, Slot::Wanted { denied: true, .. })
                && self.state == NodeState::Failure,
            holds_slot: self.slot == Slot::Held,
            exhausted: self.exhausted,
            running: self.running.is_some(),
        }
    }

    pub fn record(&self) -> NodeRecord {
        NodeRecord {
            state: self.state,
            step: self.step_kind(),
            attempt: self.attempt,
            reason: self.reason.clone(),
            exhausted: self.exhausted,
            running: self.running.is_some(),
        }
    }

    /// Whether the machine waits for a slot (the runtime then ticks it on
    /// catalog changes and every few seconds).
    pub fn wants_slot(&self) -> bool {
        matches!(self.slot, Slot::Wanted { .. })
    }

    fn step_kind(&self) -> Option<RepairStep> {
        self.step.and_then(|i| self.spec.ladder.get(i).copied())
    }

    fn action_deadline(&self) -> Duration {
        self.spec.grace.max(ACTION_DEADLINE)
    }

    /// When to send the next `Tick` (machine time), if anything is timed.
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut at: Vec<Duration> = Vec::new();
        if let Some((_, started)) = self.running {
            at.push(started.saturating_add(self.action_deadline()));
        }
        if let Some(t) = self.demoting {
            at.push(t.saturating_add(DEMOTE_WAIT));
        }
        if self.running.is_none() {
            if let Some(t) = self.pending_since {
                at.push(t.saturating_add(self.spec.grace));
            }
            if self.state != NodeState::Healthy
                && let Some(t) = self.ok_since
            {
                at.push(t.saturating_add(self.spec.probation));
            }
        }
        at.into_iter().filter(|t| *t > self.now).min()
    }

    pub fn handle(&mut self, now: Duration, input: RepairInput) -> Vec<RepairAction> {
        self.now = self.now.max(now);
        let now = self.now;
        let mut out = Vec::new();
        match input {
            RepairInput::Condition(c) => self.observe(now, c),
            RepairInput::Tick => {
                if let Slot::Wanted { asking: false, .. } = self.slot
                    && self.state == NodeState::Failure
                    && self.failing(now).is_some()
                {
                    self.ask(&mut out);
                }
            }
            RepairInput::Leading(l) => self.leading = l,
            RepairInput::SlotGranted => {
                if self.wants_slot() {
                    let was_waiting = self.view().waiting_for_budget;
                    self.slot = Slot::Held;
                    if self.state == NodeState::Failure && self.running.is_none() {
                        self.begin(now, &mut out);
                    } else if was_waiting {
                        out.push(RepairAction::Changed);
                    }
                } else if self.slot != Slot::Held {
                    // No longer wanted (the node recovered meanwhile).
                    out.push(RepairAction::ReleaseSlot);
                }
            }
            RepairInput::SlotDenied => {
                if let Slot::Wanted { denied, .. } = self.slot {
                    self.slot = Slot::Wanted {
                        asking: false,
                        denied: true,
                    };
                    if self.state == NodeState::Failure {
                        if !self.exhaustion_reported {
                            self.exhaustion_reported = true;
                            out.push(RepairAction::BudgetExhausted);
                        }
                        if !denied {
                            out.push(RepairAction::Changed);
                        }
                    }
                }
            }
            RepairInput::SlotLost => {
                if self.slot == Slot::Held {
                    self.slot = Slot::None;
                }
                if let Some((idx, _)) = self.running.take() {
                    if self.history_open {
                        self.history_open = false;
                        out.push(RepairAction::HistoryEnd {
                            outcome: Outcome::Interrupted,
                            message: "the repair slot was lost before the step ran".to_string(),
                        });
                    }
                    // Back to before the step: it is tried again.
                    self.step = idx.checked_sub(1);
                    self.attempt = self.attempt.saturating_sub(1);
                    self.state = NodeState::Failure;
                    self.since = now;
                    out.push(RepairAction::Changed);
                    self.ask(&mut out);
                }
            }
            RepairInput::ActionDone { ok, message } => {
                if self.running.is_some() {
                    self.running = None;
                    if ok {
                        self.state = NodeState::Probation;
                        self.since = now;
                        // Probation counts from the end of the step, and an
                        // error seen before it must be seen again: a watchdog
                        // may still report the state before the step. One
                        // that never clears fails the step after `grace`.
                        if matches!(self.cond, Condition::Error(_)) {
                            self.cond = Condition::Pending;
                        }
                        self.restart_clocks(now);
                        out.push(RepairAction::Changed);
                    } else {
                        self.step_failed(now, clean(&message), &mut out);
                    }
                }
            }
        }
        self.evaluate(now, &mut out);
        out
    }

    fn observe(&mut self, now: Duration, c: Condition) {
        let same_kind = std::mem::discriminant(&c) == std::mem::discriminant(&self.cond);
        if !same_kind {
            self.ok_since = (c == Condition::Ok).then_some(now);
            self.pending_since = (c == Condition::Pending).then_some(now);
        }
        self.cond = c;
    }

    fn restart_clocks(&mut self, now: Duration) {
        self.ok_since = (self.cond == Condition::Ok).then_some(now);
        self.pending_since = (self.cond == Condition::Pending).then_some(now);
    }

    /// Why the job counts as failing now, if it does.
    fn failing(&self, now: Duration) -> Option<String> {
        match &self.cond {
            Condition::Error(r) => Some(r.clone()),
            Condition::Pending => self
                .pending_since
                .filter(|t| now.saturating_sub(*t) >= self.spec.grace)
                .map(|_| format!("not healthy {}s after its start", self.spec.grace.as_secs())),
            Condition::Ok | Condition::Starting => None,
        }
    }

    fn ok_for(&self, now: Duration) -> bool {
        self.ok_since
            .is_some_and(|t| now.saturating_sub(t) >= self.spec.probation)
    }

    fn ask(&mut self, out: &mut Vec<RepairAction>) {
        if let Slot::Wanted { denied, .. } = self.slot {
            self.slot = Slot::Wanted {
                asking: true,
                denied,
            };
        } else {
            self.slot = Slot::Wanted {
                asking: true,
                denied: false,
            };
        }
        out.push(RepairAction::AcquireSlot);
    }

    fn evaluate(&mut self, now: Duration, out: &mut Vec<RepairAction>) {
        if let Some((_, started)) = self.running {
            if now.saturating_sub(started) >= self.action_deadline() {
                self.running = None;
                let msg = format!(
                    "the step did not finish within {}s",
                    self.action_deadline().as_secs()
                );
                self.step_failed(now, msg, out);
            }
            return;
        }
        if let Some(t) = self.demoting {
            if !self.leading || now.saturating_sub(t) >= DEMOTE_WAIT {
                self.demoting = None;
                self.start_step(now, out);
            }
            return;
        }
        match self.state {
            NodeState::Healthy => {
                if let Some(reason) = self.failing(now) {
                    self.state = NodeState::Failure;
                    self.since = now;
                    self.reason = Some(clean(&reason));
                    self.step = None;
                    self.attempt = 0;
                    self.exhausted = false;
                    self.exhaustion_reported = false;
                    out.push(RepairAction::Changed);
                    if self.spec.ladder.is_empty() {
                        self.exhausted = true;
                    } else {
                        self.ask(out);
                    }
                }
            }
            NodeState::Failure => {
                if self.ok_for(now) {
                    // Recovered on its own (or after a person's help).
                    self.become_healthy(now, out);
                } else if let Some(reason) = self.failing(now) {
                    if !self.exhausted && self.slot == Slot::None {
                        self.ask(out);
                    }
                    if self.reason.as_deref() != Some(reason.as_str()) && !self.exhausted {
                        self.reason = Some(clean(&reason));
                        out.push(RepairAction::Changed);
                    }
                }
            }
            NodeState::Probation => {
                if let Some(reason) = self.failing(now) {
                    if self.history_open {
                        self.history_open = false;
                        out.push(RepairAction::HistoryEnd {
                            outcome: Outcome::Failed,
                            message: clean(&reason),
                        });
                    }
                    out.push(RepairAction::Event(EventCode::RepairFailed));
                    self.escalate(now, reason, out);
                } else if self.ok_for(now) {
                    if self.history_open {
                        self.history_open = false;
                        out.push(RepairAction::HistoryEnd {
                            outcome: Outcome::Succeeded,
                            message: format!(
                                "healthy for {}s after the step",
                                self.spec.probation.as_secs()
                            ),
                        });
                    }
                    out.push(RepairAction::Event(EventCode::RepairFinished));
                    self.become_healthy(now, out);
                }
            }
        }
    }

    fn become_healthy(&mut self, now: Duration, out: &mut Vec<RepairAction>) {
        if self.slot == Slot::Held {
            out.push(RepairAction::ReleaseSlot);
        }
        self.slot = Slot::None;
        self.state = NodeState::Healthy;
        self.since = now;
        self.reason = None;
        self.step = None;
        self.attempt = 0;
        self.exhausted = false;
        self.exhaustion_reported = false;
        out.push(RepairAction::Changed);
    }

    /// The step could not run or did not finish: record it and move on.
    fn step_failed(&mut self, now: Duration, message: String, out: &mut Vec<RepairAction>) {
        if self.history_open {
            self.history_open = false;
            out.push(RepairAction::HistoryEnd {
                outcome: Outcome::Failed,
                message: message.clone(),
            });
        }
        out.push(RepairAction::Event(EventCode::RepairFailed));
        self.escalate(now, message, out);
    }

    /// The last step did not help: the next one, or give up.
    fn escalate(&mut self, now: Duration, reason: String, out: &mut Vec<RepairAction>) {
        self.reason = Some(clean(&reason));
        self.state = NodeState::Failure;
        self.since = now;
        let next = self.step.map_or(0, |s| s.saturating_add(1));
        if next >= self.spec.ladder.len() {
            self.exhausted = true;
            if self.slot == Slot::Held {
                out.push(RepairAction::ReleaseSlot);
            }
            self.slot = Slot::None;
            out.push(RepairAction::Changed);
            return;
        }
        match self.slot {
            Slot::Held => self.begin(now, out),
            _ => {
                out.push(RepairAction::Changed);
                self.ask(out);
            }
        }
    }

    /// Holding a slot: step down first if leading, then run the next step.
    fn begin(&mut self, now: Duration, out: &mut Vec<RepairAction>) {
        if self.leading {
            self.demoting = Some(now);
            out.push(RepairAction::Demote);
            return;
        }
        self.start_step(now, out);
    }

    fn start_step(&mut self, now: Duration, out: &mut Vec<RepairAction>) {
        let next = self.step.map_or(0, |s| s.saturating_add(1));
        let Some(step) = self.spec.ladder.get(next).copied() else {
            self.escalate(now, self.reason.clone().unwrap_or_default(), out);
            return;
        };
        self.step = Some(next);
        self.attempt = self.attempt.saturating_add(1);
        let attempt = self.attempt;
        out.push(RepairAction::HistoryStart {
            step,
            attempt,
            reason: self.reason.clone().unwrap_or_default(),
        });
        out.push(RepairAction::Event(EventCode::RepairStarted));
        if step == RepairStep::Replace {
            // The agent exits: the step ends now, and the node that comes
            // back (the same one restarted, or its replacement with the same
            // ID) continues in probation from the persisted record.
            self.state = NodeState::Probation;
            self.since = now;
            out.push(RepairAction::Changed);
            out.push(RepairAction::HistoryEnd {
                outcome: Outcome::Replaced,
                message: format!(
                    "the agent exits with code {} for its replacement",
                    self.spec.exit_code
                ),
            });
            if self.slot == Slot::Held {
                out.push(RepairAction::ReleaseSlot);
            }
            self.slot = Slot::None;
            out.push(RepairAction::Run { step, attempt });
            return;
        }
        self.history_open = true;
        self.running = Some((next, now));
        out.push(RepairAction::Changed);
        out.push(RepairAction::Run { step, attempt });
    }
}

// ---- the budget -------------------------------------------------------------

/// How many of `instances` may be in repair at once.
pub fn budget_slots(budget: RepairBudget, instances: usize) -> u32 {
    match budget {
        RepairBudget::Count(n) => n.max(1),
        RepairBudget::Percent(p) => {
            let n = u64::try_from(instances).unwrap_or(u64::MAX);
            let slots = n.saturating_mul(u64::from(p.min(100))) / 100;
            u32::try_from(slots).unwrap_or(u32::MAX).max(1)
        }
    }
}

/// A leader is repaired last: it takes a slot only when no other instance waits.
pub fn may_take_slot(i_lead: bool, non_leaders_waiting: usize) -> bool {
    !i_lead || non_leaders_waiting == 0
}

// ---- catalog layout ---------------------------------------------------------

/// The service of a job's node entries.
pub fn node_service(service: &str) -> String {
    format!("_repair.{service}")
}

/// The instance ID of `node`'s entry in [`node_service`]: `_repair.<service>.<node>`.
/// It must differ from the job's own instance ID (`node` is that ID): one
/// agent's registrar, and the embedded catalog, key entries by ID alone, so
/// the same ID in two services would replace the job's registration.
pub fn node_entry_id(service: &str, node: &str) -> String {
    format!("_repair.{service}.{node}")
}

/// The node a `_repair.<service>` entry ID names (see [`node_entry_id`]); an ID
/// without the prefix is taken as the node itself.
pub fn node_of_entry<'a>(service: &str, id: &'a str) -> &'a str {
    id.strip_prefix("_repair.")
        .and_then(|r| r.strip_prefix(service))
        .and_then(|r| r.strip_prefix('.'))
        .filter(|n| !n.is_empty())
        .unwrap_or(id)
}

/// The service whose node entries `name` holds, if it is a node-entry service.
pub fn service_of_node_service(name: &str) -> Option<&str> {
    name.strip_prefix("_repair.").filter(|s| !s.is_empty())
}

/// The service of watchdog entries.
pub const WATCHDOG_SERVICE: &str = "_watchdogs";

pub fn history_prefix(service: &str) -> String {
    format!("_fleet/repair/{service}/history/")
}

/// History keys sort by start time, then node.
pub fn history_key(service: &str, started_ms: u64, node: &str) -> String {
    format!("{}{started_ms:013}-{node}", history_prefix(service))
}

pub fn node_record_key(service: &str, node: &str) -> String {
    format!("_fleet/repair/{service}/nodes/{node}")
}

pub fn exhausted_key(service: &str) -> String {
    format!("_fleet/repair/{service}/exhausted")
}

/// The lock name of budget slot `i`.
pub fn slot_lock_name(service: &str, i: u32) -> String {
    format!("repair.{service}.slot{i}")
}

/// One step's history record (JSON in the catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub node: String,
    pub job: String,
    pub step: RepairStep,
    pub attempt: u32,
    pub reason: String,
    /// RFC 3339, UTC.
    pub started: String,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub message: Option<String>,
}

impl HistoryRecord {
    /// Decodes a record, cleaning its text (`None` for anything else).
    pub fn decode(s: &str) -> Option<HistoryRecord> {
        if s.len() > 64 * 1024 {
            return None;
        }
        let mut r: HistoryRecord = serde_json::from_str(s).ok()?;
        r.node = clean(&r.node);
        r.job = clean(&r.job);
        r.reason = clean(&r.reason);
        r.started = clean(&r.started);
        r.ended = r.ended.as_deref().map(clean);
        r.message = r.message.as_deref().map(clean);
        Some(r)
    }
}

impl NodeRecord {
    /// Decodes a record leniently (`None` for anything unreadable).
    pub fn decode(s: &str) -> Option<NodeRecord> {
        if s.len() > 64 * 1024 {
            return None;
        }
        let mut r: NodeRecord = serde_json::from_str(s).ok()?;
        r.reason = r.reason.as_deref().map(clean);
        Some(r)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The tags of a node entry (the inverse of [`parse_node`]).
pub fn node_tags(v: &RepairView, leader: bool, since_rfc3339: &str) -> Vec<String> {
    let mut tags = vec![format!("state={}", v.state.as_str())];
    if let Some(s) = v.step {
        tags.push(format!("step={}", s.as_str()));
    }
    tags.push(format!("attempt={}", v.attempt));
    if let Some(r) = &v.reason {
        tags.push(format!("reason={}", clean(r)));
    }
    tags.push(format!("since={}", clean(since_rfc3339)));
    if v.waiting_for_budget {
        tags.push("waiting=budget".to_string());
    }
    if v.holds_slot {
        tags.push("slot=held".to_string());
    }
    if leader {
        tags.push("leader=true".to_string());
    }
    if v.exhausted {
        tags.push("exhausted=true".to_string());
    }
    tags
}

/// A node entry as read back (by the CLI and other agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEntry {
    pub id: String,
    pub state: NodeState,
    pub step: Option<RepairStep>,
    pub attempt: u32,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub waiting: bool,
    pub holds_slot: bool,
    pub leader: bool,
    pub exhausted: bool,
}

impl NodeEntry {
    /// In repair: holding a slot, or in probation.
    pub fn in_repair(&self) -> bool {
        self.holds_slot || self.state == NodeState::Probation
    }
}

/// Reads a node entry's tags; `None` when it has no readable state.
pub fn parse_node(id: &str, tags: &[String]) -> Option<NodeEntry> {
    let get = |k: &str| {
        tags.iter()
            .find_map(|t| t.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let state = get("state").and_then(NodeState::parse)?;
    Some(NodeEntry {
        id: clean(id),
        state,
        step: get("step").and_then(RepairStep::parse),
        attempt: get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
        reason: get("reason").map(clean),
        since: get("since").map(clean),
        waiting: get("waiting") == Some("budget"),
        holds_slot: get("slot") == Some("held"),
        leader: get("leader") == Some("true"),
        exhausted: get("exhausted") == Some("true"),
    })
}

/// Text from a config, a process or the catalog as it may be shown: no
/// control characters, at most [`TEXT_CAP`] characters.
pub fn clean(s: &str) -> String {
    s.chars()
        .take(TEXT_CAP)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
#[path = "repair_tests.rs"]
mod tests;
