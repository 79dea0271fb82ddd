//! Self-repair's runtime side: one task per job with a `repair` block feeds its `core::repair::Repair` what the agent observes and carries out its actions (budget slots, the exhausted marker, history and node records, the node entry) against the catalog, asking the agent to run steps, demote and publish events.
//!
//! Decisions are `autopilot_core::repair`'s; this module only reads and
//! writes the catalog and relays. Every catalog call is bounded by
//! [`CATALOG_DEADLINE`]; a failed call is logged through an
//! [`autopilot_catalog::Outage`] and retried (a slot request and a record
//! write are retried every [`RETRY`]), and nothing here ever blocks the
//! agent's event loop: the agent talks to the task through channels only.
//!
//! Actions run strictly in the order the machine returns them, each catalog
//! write awaited before the next action, so the records of a `replace` are
//! in the catalog before the agent is asked to exit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_core::EventCode;
use autopilot_core::repair::{
    self, Condition, HistoryRecord, NodeRecord, NodeState, Outcome, Repair, RepairAction,
    RepairInput, RepairView,
};
use autopilot_core::spec::{RepairSpec, RepairStep};
use tokio::sync::{mpsc, watch};

use crate::catalog::Registrar;

/// Every catalog read or write of this module.
pub const CATALOG_DEADLINE: Duration = Duration::from_secs(2);
/// While waiting for a slot, the machine is ticked at least this often; a
/// failed slot request or record write is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(5);
/// The TTL of node entries (refreshed by the registrar's keep-alive).
const ENTRY_TTL: Duration = Duration::from_secs(15);
/// Longest catalog value this module reads (hostile data is skipped).
const VALUE_CAP: usize = 64 * 1024;

/// What a repair job is, as far as its task is concerned: a change restarts the task.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The job's name (its service).
    pub job: String,
    /// The job's instance ID (`<job>-<host>`): the node ID.
    pub node: String,
    /// The address the node entry advertises (may be empty).
    pub address: String,
    pub spec: RepairSpec,
}

/// What the task asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Carry out a step; answer [`Task::done`] (never for `replace`: the
    /// agent runs the replace hook and exits with `exit_code`).
    Run {
        step: RepairStep,
        attempt: u32,
        /// Why the node is repaired (for the replace log line).
        reason: String,
        exit_code: i32,
    },
    /// Make the job step down from its election; answer [`Task::leading`].
    Demote,
    /// Publish this event with the job's name as the source.
    Event(EventCode),
}

/// What `/status` and metrics show of a repair job.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub view: RepairView,
    /// RFC 3339 of when the state was entered.
    pub since: String,
    /// Actions finished per (step, outcome), since the agent started.
    pub outcomes: Vec<(RepairStep, Outcome)>,
}

/// A repair job's task, as the agent holds it.
pub struct Task {
    pub unit: Unit,
    condition: watch::Sender<Condition>,
    inputs: mpsc::UnboundedSender<RepairInput>,
    pub status: Arc<Mutex<Option<Snapshot>>>,
    pub task: tokio::task::JoinHandle<()>,
    /// The budget slot the task holds, shared with it: given back when the
    /// task is ended while the agent (and its session) goes on.
    slot: Arc<Mutex<Option<String>>>,
    catalog: Arc<dyn Catalog>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Task {
    /// The job's condition now; the task feeds it to the machine only when it changed.
    pub fn condition(&self, c: Condition) {
        self.condition.send_if_modified(|old| {
            let changed = *old != c;
            if changed {
                *old = c;
            }
            changed
        });
    }

    /// The step asked for ended (restart, reimage: the job runs again).
    pub fn done(&self, ok: bool, message: &str) {
        let _ = self.inputs.send(RepairInput::ActionDone {
            ok,
            message: repair::clean(message),
        });
    }

    /// Whether the job leads its election.
    pub fn leading(&self, leading: bool) {
        let _ = self.inputs.send(RepairInput::Leading(leading));
    }

    /// Ends the task (a reload dropped or changed its job) and gives back
    /// the budget slot it held, in the background under the deadline.
    pub fn end(self) {
        self.task.abort();
        let held = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(name) = held {
            let catalog = self.catalog.clone();
            let job = self.unit.job.clone();
            tokio::spawn(async move {
                if let Err(e) = bounded(catalog.unlock(&name)).await {
                    tracing::warn!(%job, slot = %name, "repair: cannot give the slot back: {e}");
                }
            });
        }
    }

    /// A copy of what the task shows.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Starts a repair job's task.
pub fn spawn<M: Send + 'static>(
    catalog: Arc<dyn Catalog>,
    registrar: Registrar,
    unit: Unit,
    initial: Condition,
    leading: bool,
    tx: mpsc::Sender<M>,
    to_agent: impl Fn(Request) -> M + Send + Sync + 'static,
) -> Task {
    let (condition, cond_rx) = watch::channel(initial);
    let (inputs, in_rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(None));
    let slot = Arc::new(Mutex::new(None));
    let mut w = Worker {
        catalog: catalog.clone(),
        registrar,
        unit: unit.clone(),
        status: status.clone(),
        started: tokio::time::Instant::now(),
        machine: None,
        leading,
        open: None,
        outage: autopilot_catalog::Outage::default(),
        since_wall: String::new(),
        outcomes: Vec::new(),
        retry_slot: None,
        record_dirty: false,
        slot: slot.clone(),
    };
    let task = tokio::spawn(async move { w.run(cond_rx, in_rx, tx, to_agent).await });
    Task {
        unit,
        condition,
        inputs,
        status,
        task,
        slot,
        catalog,
    }
}

/// The open history record: its key and the exact text written (the CAS's expected value).
struct Open {
    key: String,
    text: String,
    record: HistoryRecord,
}

struct Worker {
    catalog: Arc<dyn Catalog>,
    registrar: Registrar,
    unit: Unit,
    status: Arc<Mutex<Option<Snapshot>>>,
    started: tokio::time::Instant,
    machine: Option<Repair>,
    leading: bool,
    open: Option<Open>,
    outage: autopilot_catalog::Outage,
    /// When the current state was entered, wall clock (RFC 3339).
    since_wall: String,
    outcomes: Vec<(RepairStep, Outcome)>,
    /// A slot request the catalog did not answer: asked again at this time.
    retry_slot: Option<tokio::time::Instant>,
    /// The node record could not be written: written again on the next retry.
    record_dirty: bool,
    /// The budget slot (lock name) this node took.
    slot: Arc<Mutex<Option<String>>>,
}

/// Runs a catalog call under [`CATALOG_DEADLINE`]; `Err` says why it failed.
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, autopilot_catalog::CatalogError>>,
) -> Result<T, String> {
    match tokio::time::timeout(CATALOG_DEADLINE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CATALOG_DEADLINE.as_secs())),
    }
}

fn now_rfc3339() -> String {
    autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms())
}

/// The catalog status of a node entry.
pub fn entry_status(state: NodeState) -> Status {
    match state {
        NodeState::Healthy => Status::Passing,
        NodeState::Probation => Status::Warning,
        NodeState::Failure => Status::Critical,
    }
}

impl Worker {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn service(&self) -> &str {
        &self.unit.job
    }

    async fn run<M: Send>(
        &mut self,
        mut cond: watch::Receiver<Condition>,
        mut inputs: mpsc::UnboundedReceiver<RepairInput>,
        tx: mpsc::Sender<M>,
        to_agent: impl Fn(Request) -> M + Sync,
    ) {
        // Waiting for a budget slot: only its slots' lock keys wake it.
        let mut changes = self
            .catalog
            .changes_under(&format!("locks/repair.{}.slot", self.service()));
        let first = self.start().await;
        let mut queue: VecDeque<RepairAction> = first.into();
        let mut last_cond: Option<Condition> = None;
        loop {
            // The condition first (only when it changed), then the actions.
            let c = cond.borrow_and_update().clone();
            if last_cond.as_ref() != Some(&c) {
                last_cond = Some(c.clone());
                queue.extend(self.handle(RepairInput::Condition(c)));
            }
            while let Some(a) = queue.pop_front() {
                let more = self.act(a, &tx, &to_agent).await;
                queue.extend(more);
            }
            self.publish_status();
            let Some(m) = &self.machine else {
                return;
            };
            let waiting = m.wants_slot();
            let deadline = m
                .next_deadline()
                .map(|d| self.started + d)
                .into_iter()
                .chain(self.retry_slot)
                .chain(
                    self.record_dirty
                        .then(|| tokio::time::Instant::now() + RETRY),
                )
                .min();
            let poll = waiting.then(|| tokio::time::Instant::now() + RETRY);
            tokio::select! {
                r = cond.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                i = inputs.recv() => match i {
                    Some(RepairInput::Leading(l)) => {
                        self.leading = l;
                        queue.extend(self.handle(RepairInput::Leading(l)));
                        // The node entry's `leader` tag follows.
                        queue.push_back(RepairAction::Changed);
                    }
                    Some(i) => queue.extend(self.handle(i)),
                    None => return,
                },
                _ = sleep_opt(deadline) => {
                    if self.retry_slot.is_some_and(|t| t <= tokio::time::Instant::now()) {
                        self.retry_slot = None;
                        queue.push_back(RepairAction::AcquireSlot);
                    }
                    if self.record_dirty {
                        self.write_record().await;
                    }
                    queue.extend(self.handle(RepairInput::Tick));
                }
                r = changes.changed(), if waiting => {
                    if r.is_err() {
                        return;
                    }
                    queue.extend(self.handle(RepairInput::Tick));
                }
                _ = sleep_opt(poll) => queue.extend(self.handle(RepairInput::Tick)),
            }
        }
    }

    fn handle(&mut self, input: RepairInput) -> Vec<RepairAction> {
        let now = self.now();
        match &mut self.machine {
            Some(m) => {
                let before = m.view().state;
                let out = m.handle(now, input);
                if m.view().state != before {
                    self.since_wall = now_rfc3339();
                }
                out
            }
            None => Vec::new(),
        }
    }

    /// Reads the node record (absent or unreadable: a healthy start),
    /// closes a history record a previous run left open as interrupted,
    /// and resumes the machine. Returns the actions to run at once.
    async fn start(&mut self) -> Vec<RepairAction> {
        let key = repair::node_record_key(self.service(), &self.unit.node);
        let rec = loop {
            match bounded(self.catalog.kv_get(&key)).await {
                Ok(v) => {
                    self.outage
                        .recovered(self.catalog.url(), "reading the repair record");
                    break v
                        .filter(|v| v.len() <= VALUE_CAP)
                        .and_then(|v| NodeRecord::decode(&v));
                }
                Err(e) => {
                    self.outage
                        .failed(self.catalog.url(), "reading the repair record", &e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        self.close_left_open().await;
        self.since_wall = now_rfc3339();
        let now = self.now();
        let (m, actions) = match rec {
            Some(r) if r != NodeRecord::default() => {
                tracing::info!(job = %self.unit.job, state = %r.state.as_str(), step = ?r.step.map(RepairStep::as_str), attempt = r.attempt, "repair: continuing from the persisted record");
                Repair::resume(self.unit.spec.clone(), &r, now)
            }
            _ => (
                Repair::new(self.unit.spec.clone(), now),
                vec![RepairAction::Changed],
            ),
        };
        let mut m = m;
        let mut actions = actions;
        if self.leading {
            actions.extend(m.handle(now, RepairInput::Leading(true)));
        }
        self.machine = Some(m);
        actions
    }

    /// A history record of this node without an outcome was left by a
    /// previous run of the agent: it ends as interrupted.
    async fn close_left_open(&mut self) {
        let prefix = repair::history_prefix(self.service());
        let list = match bounded(self.catalog.kv_list(&prefix)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(job = %self.unit.job, "repair: cannot list the history to close an interrupted step: {e}");
                return;
            }
        };
        let suffix = format!("-{}", self.unit.node);
        for (key, text) in list {
            if !key.ends_with(&suffix) || text.len() > VALUE_CAP {
                continue;
            }
            let Some(mut r) = HistoryRecord::decode(&text) else {
                continue;
            };
            if r.outcome.is_some() || r.node != self.unit.node {
                continue;
            }
            r.ended = Some(now_rfc3339());
            r.outcome = Some(Outcome::Interrupted);
            r.message = Some("the agent restarted during the step or its probation".into());
            let Ok(new) = serde_json::to_string(&r) else {
                continue;
            };
            match bounded(self.catalog.kv_cas(&key, Some(&text), &new)).await {
                Ok(_) => {
                    self.outcomes.push((r.step, Outcome::Interrupted));
                }
                Err(e) => {
                    tracing::warn!(job = %self.unit.job, %key, "repair: cannot close an interrupted history record: {e}")
                }
            }
        }
    }

    fn publish_status(&self) {
        let Some(m) = &self.machine else {
            return;
        };
        let snap = Snapshot {
            view: m.view(),
            since: self.since_wall.clone(),
            outcomes: self.outcomes.clone(),
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
    }

    /// Carries out one action; returns what the machine answers to it.
    async fn act<M: Send>(
        &mut self,
        a: RepairAction,
        tx: &mpsc::Sender<M>,
        to_agent: &(impl Fn(Request) -> M + Sync),
    ) -> Vec<RepairAction> {
        match a {
            RepairAction::AcquireSlot => match self.acquire().await {
                Ok(true) => self.handle(RepairInput::SlotGranted),
                Ok(false) => self.handle(RepairInput::SlotDenied),
                Err(e) => {
                    self.outage
                        .failed(self.catalog.url(), "taking a repair slot", &e);
                    self.retry_slot = Some(tokio::time::Instant::now() + RETRY);
                    Vec::new()
                }
            },
            RepairAction::ReleaseSlot => {
                self.release().await;
                Vec::new()
            }
            RepairAction::BudgetExhausted => {
                if self.claim_exhausted().await {
                    tracing::warn!(job = %self.unit.job, "repair budget exhausted: this node waits for a slot");
                    let _ = tx
                        .send(to_agent(Request::Event(EventCode::RepairBudgetExhausted)))
                        .await;
                }
                Vec::new()
            }
            RepairAction::Demote => {
                tracing::warn!(job = %self.unit.job, "repair: the job leads its election; stepping down first");
                let _ = tx.send(to_agent(Request::Demote)).await;
                Vec::new()
            }
            RepairAction::Run { step, attempt } => {
                // A step starts only while its slot is confirmed held.
                if step != RepairStep::Replace && !self.slot_confirmed().await {
                    tracing::warn!(job = %self.unit.job, step = %step.as_str(), "repair: the budget slot is no longer held; the step waits for a slot again");
                    return self.handle(RepairInput::SlotLost);
                }
                let reason = self
                    .machine
                    .as_ref()
                    .and_then(|m| m.view().reason)
                    .unwrap_or_default();
                tracing::warn!(job = %self.unit.job, step = %step.as_str(), attempt, %reason, "repair: running a step");
                let _ = tx
                    .send(to_agent(Request::Run {
                        step,
                        attempt,
                        reason,
                        exit_code: self.unit.spec.exit_code,
                    }))
                    .await;
                Vec::new()
            }
            RepairAction::HistoryStart {
                step,
                attempt,
                reason,
            } => {
                self.history_start(step, attempt, reason).await;
                Vec::new()
            }
            RepairAction::HistoryEnd { outcome, message } => {
                self.history_end(outcome, message).await;
                Vec::new()
            }
            RepairAction::Event(code) => {
                let _ = tx.send(to_agent(Request::Event(code))).await;
                Vec::new()
            }
            RepairAction::Changed => {
                self.publish_status();
                self.put_entry();
                self.write_record().await;
                Vec::new()
            }
        }
    }

    /// The live node entries of this service (hostile ones skipped).
    async fn nodes(&self) -> Result<Vec<repair::NodeEntry>, String> {
        let list = bounded(
            self.catalog
                .instances(&repair::node_service(self.service())),
        )
        .await?;
        Ok(list
            .iter()
            .filter_map(|i| {
                repair::parse_node(repair::node_of_entry(self.service(), &i.id), &i.tags)
            })
            .collect())
    }

    /// Takes a slot if the budget and the leader-last rule allow it.
    async fn acquire(&mut self) -> Result<bool, String> {
        let nodes = self.nodes().await?;
        let instances = nodes.len().max(1);
        let slots = repair::budget_slots(self.unit.spec.budget, instances);
        let waiting_others = nodes
            .iter()
            .filter(|n| n.id != self.unit.node && n.waiting && !n.leader)
            .count();
        if !repair::may_take_slot(self.leading, waiting_others) {
            tracing::info!(job = %self.unit.job, waiting = waiting_others, "repair: the leader waits until no other instance waits for a slot");
            return Ok(false);
        }
        for i in 0..slots {
            let name = repair::slot_lock_name(self.service(), i);
            if bounded(self.catalog.try_lock(&name)).await? {
                *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(name);
                self.outage
                    .recovered(self.catalog.url(), "taking a repair slot");
                tracing::info!(job = %self.unit.job, slot = i, slots, "repair: budget slot taken");
                return Ok(true);
            }
        }
        self.outage
            .recovered(self.catalog.url(), "taking a repair slot");
        Ok(false)
    }

    /// Whether the catalog confirms, within the deadline, that this node
    /// still holds the slot it took (no answer: not confirmed).
    async fn slot_confirmed(&self) -> bool {
        let held = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(name) = held else {
            return false;
        };
        match bounded(self.catalog.holds_lock(&name)).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(job = %self.unit.job, slot = %name, "repair: cannot confirm the budget slot: {e}");
                false
            }
        }
    }

    /// Gives the slot back, then removes the exhausted marker if no instance waits.
    async fn release(&mut self) {
        let held = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(name) = held
            && let Err(e) = bounded(self.catalog.unlock(&name)).await
        {
            // The session's end frees it in any case.
            tracing::warn!(job = %self.unit.job, slot = %name, "repair: cannot give the slot back: {e}");
        }
        let waiting = match self.nodes().await {
            Ok(n) => n.iter().any(|n| n.waiting && n.id != self.unit.node),
            Err(_) => true,
        };
        if waiting {
            return;
        }
        let key = repair::exhausted_key(self.service());
        if let Ok(Some(v)) = bounded(self.catalog.kv_get(&key)).await {
            match bounded(self.catalog.kv_delete_if(&key, &v)).await {
                Ok(true) => {
                    tracing::info!(job = %self.unit.job, "repair budget available again");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %self.unit.job, "repair: cannot clear the exhausted marker: {e}")
                }
            }
        }
    }

    /// Creates the exhausted marker; whether this node created it.
    async fn claim_exhausted(&mut self) -> bool {
        let key = repair::exhausted_key(self.service());
        let value = serde_json::json!({"since": now_rfc3339(), "by": self.unit.node}).to_string();
        match bounded(self.catalog.kv_cas(&key, None, &value)).await {
            Ok(created) => created,
            Err(e) => {
                tracing::warn!(job = %self.unit.job, "repair: cannot record the exhausted budget: {e}");
                false
            }
        }
    }

    fn put_entry(&self) {
        let Some(m) = &self.machine else {
            return;
        };
        let view = m.view();
        self.registrar.put(Registration {
            id: repair::node_entry_id(self.service(), &self.unit.node),
            name: repair::node_service(self.service()),
            address: self.unit.address.clone(),
            port: 0,
            tags: repair::node_tags(&view, self.leading, &self.since_wall),
            status: entry_status(view.state),
            ttl: ENTRY_TTL,
            deregister_critical_after: None,
            seat: None,
        });
    }

    async fn write_record(&mut self) {
        let Some(m) = &self.machine else {
            return;
        };
        let key = repair::node_record_key(self.service(), &self.unit.node);
        let text = m.record().encode();
        match bounded(self.catalog.kv_put(&key, &text)).await {
            Ok(()) => {
                self.record_dirty = false;
                self.outage
                    .recovered(self.catalog.url(), "writing the repair record");
            }
            Err(e) => {
                self.record_dirty = true;
                self.outage
                    .failed(self.catalog.url(), "writing the repair record", &e);
            }
        }
    }

    async fn history_start(&mut self, step: RepairStep, attempt: u32, reason: String) {
        let started_ms = autopilot_catalog::now_ms();
        let record = HistoryRecord {
            node: self.unit.node.clone(),
            job: self.unit.job.clone(),
            step,
            attempt,
            reason: repair::clean(&reason),
            started: autopilot_catalog::rfc3339_ms(started_ms),
            ended: None,
            outcome: None,
            message: None,
        };
        let Ok(text) = serde_json::to_string(&record) else {
            return;
        };
        // A key taken in the same millisecond moves on by one.
        let mut ms = started_ms;
        for _ in 0..5 {
            let key = repair::history_key(self.service(), ms, &self.unit.node);
            match bounded(self.catalog.kv_cas(&key, None, &text)).await {
                Ok(true) => {
                    self.open = Some(Open { key, text, record });
                    self.prune().await;
                    return;
                }
                Ok(false) => ms = ms.saturating_add(1),
                Err(e) => {
                    tracing::warn!(job = %self.unit.job, "repair: cannot write the history record: {e}");
                    // Kept in memory: its end is still reported.
                    self.open = Some(Open {
                        key,
                        text: String::new(),
                        record,
                    });
                    return;
                }
            }
        }
    }

    async fn history_end(&mut self, outcome: Outcome, message: String) {
        let Some(open) = self.open.take() else {
            return;
        };
        self.outcomes.push((open.record.step, outcome));
        let mut r = open.record;
        r.ended = Some(now_rfc3339());
        r.outcome = Some(outcome);
        r.message = Some(repair::clean(&message));
        tracing::info!(job = %self.unit.job, step = %r.step.as_str(), outcome = %outcome.as_str(), message = %message, "repair step ended");
        let Ok(text) = serde_json::to_string(&r) else {
            return;
        };
        let expected = (!open.text.is_empty()).then_some(open.text.as_str());
        match bounded(self.catalog.kv_cas(&open.key, expected, &text)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job = %self.unit.job, key = %open.key, "repair: the history record changed meanwhile; its end is not written")
            }
            Err(e) => {
                tracing::warn!(job = %self.unit.job, "repair: cannot close the history record: {e}")
            }
        }
    }

    /// Keeps at most `HISTORY_CAP` records of the service.
    async fn prune(&self) {
        let prefix = repair::history_prefix(self.service());
        let Ok(list) = bounded(self.catalog.kv_list(&prefix)).await else {
            return;
        };
        let excess = list.len().saturating_sub(repair::HISTORY_CAP);
        // Keys sort by start time: the oldest come first.
        for (key, _) in list.iter().take(excess) {
            if let Err(e) = bounded(self.catalog.kv_delete(key)).await {
                tracing::debug!(%key, "repair: cannot prune a history record: {e}");
                return;
            }
        }
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A watchdog's reported status as the agent shows it (`/status`, metrics)
/// and folds into its job's condition (only `error` counts).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WatchdogShown {
    pub name: String,
    /// The job it is about (`None`: every repair job of the agent).
    pub job: Option<String>,
    pub status: repair::WatchdogStatus,
    pub message: String,
    /// RFC 3339 of the last status change.
    pub since: String,
}

/// The first watchdog `error` that counts for `job`: `"name: message"`.
pub fn watchdog_error<'a>(
    job: &str,
    watchdogs: impl IntoIterator<Item = &'a WatchdogShown>,
) -> Option<String> {
    watchdogs
        .into_iter()
        .find(|w| {
            w.status == repair::WatchdogStatus::Error && w.job.as_deref().is_none_or(|j| j == job)
        })
        .map(|w| format!("{}: {}", w.name, w.message))
}

/// The `repair` section of a job in `/status`.
pub fn status_json(s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "state": s.view.state.as_str(),
        "step": s.view.step.map(RepairStep::as_str),
        "attempt": s.view.attempt,
        "reason": s.view.reason,
        "since": s.since,
        "waitingForBudget": s.view.waiting_for_budget,
        "holdsSlot": s.view.holds_slot,
        "exhausted": s.view.exhausted,
        "running": s.view.running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dog(name: &str, job: Option<&str>, status: repair::WatchdogStatus) -> WatchdogShown {
        WatchdogShown {
            name: name.into(),
            job: job.map(String::from),
            status,
            message: "m".into(),
            since: String::new(),
        }
    }

    #[test]
    fn only_an_error_of_the_job_or_of_every_job_counts() {
        use repair::WatchdogStatus::*;
        let w = [
            dog("warn", None, Warning),
            dog("other", Some("b"), Error),
            dog("mine", Some("a"), Error),
            dog("all", None, Error),
        ];
        assert_eq!(watchdog_error("a", &w), Some("mine: m".into()));
        assert_eq!(watchdog_error("c", &w), Some("all: m".into()));
        assert_eq!(watchdog_error("a", &w[..2]), None);
    }
}
