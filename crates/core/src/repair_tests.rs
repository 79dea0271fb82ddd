//! The repair machine with a fake clock.

use std::time::Duration;

use super::*;
use crate::spec::{RepairBudget, RepairSpec, RepairStep};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn spec() -> RepairSpec {
    let mut sp = RepairSpec::new(vec![
        RepairStep::Restart,
        RepairStep::Reimage,
        RepairStep::Replace,
    ]);
    sp.probation = s(10);
    sp.grace = s(30);
    sp
}

/// A machine, a fake clock and every action it returned.
struct R {
    m: Repair,
    now: Duration,
    log: Vec<RepairAction>,
}

impl R {
    fn new(sp: RepairSpec) -> R {
        R {
            m: Repair::new(sp, Duration::ZERO),
            now: Duration::ZERO,
            log: Vec::new(),
        }
    }
    fn input(&mut self, i: RepairInput) -> Vec<RepairAction> {
        let a = self.m.handle(self.now, i);
        self.log.extend(a.iter().cloned());
        a
    }
    fn cond(&mut self, c: Condition) -> Vec<RepairAction> {
        self.input(RepairInput::Condition(c))
    }
    fn err(&mut self, why: &str) -> Vec<RepairAction> {
        self.cond(Condition::Error(why.to_string()))
    }
    /// Moves the clock to `t` seconds, ticking at every deadline on the way.
    fn at(&mut self, t: u64) -> Vec<RepairAction> {
        let mut out = Vec::new();
        while let Some(d) = self.m.next_deadline().filter(|d| *d <= s(t)) {
            self.now = d;
            out.extend(self.input(RepairInput::Tick));
        }
        self.now = s(t);
        out.extend(self.input(RepairInput::Tick));
        out
    }
    fn done(&mut self) -> Vec<RepairAction> {
        self.input(RepairInput::ActionDone {
            ok: true,
            message: String::new(),
        })
    }
    fn runs(&self) -> Vec<RepairStep> {
        self.log
            .iter()
            .filter_map(|a| match a {
                RepairAction::Run { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }
    fn count(&self, want: &RepairAction) -> usize {
        self.log.iter().filter(|a| *a == want).count()
    }
}

fn run(step: RepairStep, attempt: u32) -> RepairAction {
    RepairAction::Run { step, attempt }
}

#[test]
fn a_failing_job_climbs_the_ladder_one_step_per_failed_probation() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    assert_eq!(r.m.view().state, NodeState::Healthy);
    let a = r.err("its health check is failing");
    assert_eq!(a, vec![RepairAction::Changed, RepairAction::AcquireSlot]);
    assert_eq!(r.m.view().state, NodeState::Failure);
    let a = r.input(RepairInput::SlotGranted);
    assert_eq!(
        a,
        vec![
            RepairAction::HistoryStart {
                step: RepairStep::Restart,
                attempt: 1,
                reason: "its health check is failing".into()
            },
            RepairAction::Event(EventCode::RepairStarted),
            RepairAction::Changed,
            run(RepairStep::Restart, 1),
        ]
    );
    assert!(r.m.view().running && r.m.view().holds_slot);
    // Conditions during the step do not count.
    r.now = s(1);
    r.cond(Condition::Pending);
    assert!(r.done().contains(&RepairAction::Changed));
    assert_eq!(r.m.view().state, NodeState::Probation);
    // Fails again in probation: the next step, without a new slot request.
    r.now = s(3);
    let a = r.err("its health check is failing");
    assert_eq!(
        &a[..2],
        &[
            RepairAction::HistoryEnd {
                outcome: Outcome::Failed,
                message: "its health check is failing".into()
            },
            RepairAction::Event(EventCode::RepairFailed),
        ]
    );
    assert!(a.contains(&run(RepairStep::Reimage, 2)));
    assert!(!a.contains(&RepairAction::AcquireSlot));
    r.now = s(5);
    r.done();
    r.now = s(6);
    let a = r.err("watchdog disk: 1% free");
    // Replace: the record is closed and the slot given back before the agent exits.
    let tail: Vec<_> = a
        .iter()
        .skip_while(|x| !matches!(x, RepairAction::HistoryStart { .. }))
        .cloned()
        .collect();
    assert_eq!(
        tail,
        vec![
            RepairAction::HistoryStart {
                step: RepairStep::Replace,
                attempt: 3,
                reason: "watchdog disk: 1% free".into()
            },
            RepairAction::Event(EventCode::RepairStarted),
            RepairAction::Changed,
            RepairAction::HistoryEnd {
                outcome: Outcome::Replaced,
                message: "the agent exits with code 75 for its replacement".into()
            },
            RepairAction::ReleaseSlot,
            run(RepairStep::Replace, 3),
        ]
    );
    assert_eq!(
        r.runs(),
        vec![
            RepairStep::Restart,
            RepairStep::Reimage,
            RepairStep::Replace
        ]
    );
    assert_eq!(r.count(&RepairAction::AcquireSlot), 1);
    let rec = r.m.record();
    assert_eq!(rec.state, NodeState::Probation);
    assert_eq!(rec.step, Some(RepairStep::Replace));
}

#[test]
fn passing_probation_makes_the_node_healthy_and_frees_the_slot() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    r.now = s(1);
    r.done();
    r.now = s(2);
    r.cond(Condition::Ok);
    // Not yet: ok for 9 s only.
    let a = r.at(11);
    assert!(!a.contains(&RepairAction::ReleaseSlot), "{a:?}");
    assert_eq!(r.m.view().state, NodeState::Probation);
    let a = r.at(12);
    assert_eq!(
        a,
        vec![
            RepairAction::HistoryEnd {
                outcome: Outcome::Succeeded,
                message: "healthy for 10s after the step".into()
            },
            RepairAction::Event(EventCode::RepairFinished),
            RepairAction::ReleaseSlot,
            RepairAction::Changed,
        ]
    );
    let v = r.m.view();
    assert_eq!(v.state, NodeState::Healthy);
    assert!(!v.holds_slot && v.step.is_none() && v.attempt == 0);
    // The next failure starts from the bottom of the ladder again.
    r.now = s(20);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    assert_eq!(r.runs(), vec![RepairStep::Restart, RepairStep::Restart]);
}

#[test]
fn probation_counts_from_the_end_of_the_step() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    // The job came back healthy quickly, but the step ended at 8 s.
    r.now = s(1);
    r.cond(Condition::Ok);
    r.now = s(8);
    r.done();
    let a = r.at(17);
    assert!(!a.contains(&RepairAction::Event(EventCode::RepairFinished)));
    let a = r.at(18);
    assert!(a.contains(&RepairAction::Event(EventCode::RepairFinished)));
}

#[test]
fn a_warning_or_maintenance_never_starts_a_repair() {
    // A watchdog warning is not an error: the agent's condition stays Ok.
    let obs = JobObservation {
        running: true,
        preparing: false,
        health: HealthStatus::Healthy,
        has_check: true,
        parked: false,
        watchdog_error: None,
    };
    assert_eq!(condition(&obs), Condition::Ok);
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.at(3600);
    r.cond(Condition::Starting);
    r.at(7200);
    assert!(r.log.is_empty(), "{:?}", r.log);
    assert_eq!(r.m.view().state, NodeState::Healthy);
}

#[test]
fn pending_longer_than_grace_is_a_failure() {
    let mut r = R::new(spec());
    // Never healthy after the start.
    let a = r.at(29);
    assert!(a.is_empty(), "{a:?}");
    let a = r.at(30);
    assert_eq!(a, vec![RepairAction::Changed, RepairAction::AcquireSlot]);
    assert_eq!(
        r.m.view().reason.as_deref(),
        Some("not healthy 30s after its start")
    );
    // A job that restarts now and then but comes back in time is not failing.
    let mut r = R::new(spec());
    for t in (0..600).step_by(20) {
        r.now = s(t);
        r.cond(Condition::Pending);
        r.now = s(t + 5);
        r.cond(Condition::Ok);
    }
    r.at(600);
    assert_eq!(r.m.view().state, NodeState::Healthy);
}

#[test]
fn a_denied_slot_waits_and_reports_the_exhausted_budget_once() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    let a = r.input(RepairInput::SlotDenied);
    assert_eq!(
        a,
        vec![RepairAction::BudgetExhausted, RepairAction::Changed]
    );
    assert!(r.m.view().waiting_for_budget);
    assert!(r.m.wants_slot());
    // Asked again on ticks, one request at a time.
    r.now = s(5);
    assert_eq!(r.input(RepairInput::Tick), vec![RepairAction::AcquireSlot]);
    assert!(r.input(RepairInput::Tick).is_empty());
    assert!(r.input(RepairInput::SlotDenied).is_empty());
    r.now = s(10);
    r.input(RepairInput::Tick);
    let a = r.input(RepairInput::SlotGranted);
    assert!(a.contains(&run(RepairStep::Restart, 1)));
    assert!(!r.m.view().waiting_for_budget);
    assert_eq!(r.count(&RepairAction::BudgetExhausted), 1);
}

#[test]
fn a_node_that_recovers_while_waiting_needs_no_repair() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotDenied);
    r.now = s(2);
    r.cond(Condition::Ok);
    let a = r.at(12);
    assert!(a.contains(&RepairAction::Changed));
    assert_eq!(r.m.view().state, NodeState::Healthy);
    assert!(!r.m.wants_slot());
    // Ticks ask nothing, and a late grant is given back.
    assert!(r.input(RepairInput::Tick).is_empty());
    assert_eq!(
        r.input(RepairInput::SlotGranted),
        vec![RepairAction::ReleaseSlot]
    );
    assert!(r.runs().is_empty());
}

#[test]
fn a_leader_steps_down_before_its_repair() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.input(RepairInput::Leading(true));
    r.err("down");
    let a = r.input(RepairInput::SlotGranted);
    assert_eq!(a, vec![RepairAction::Demote]);
    assert!(r.runs().is_empty());
    r.now = s(1);
    let a = r.input(RepairInput::Leading(false));
    assert!(a.contains(&run(RepairStep::Restart, 1)));
    // One that does not step down in time is repaired anyway.
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.input(RepairInput::Leading(true));
    r.err("down");
    r.input(RepairInput::SlotGranted);
    assert!(r.at(9).is_empty());
    assert!(r.at(10).contains(&run(RepairStep::Restart, 1)));
    assert!(may_take_slot(false, 3));
    assert!(!may_take_slot(true, 1));
    assert!(may_take_slot(true, 0));
}

#[test]
fn a_step_that_cannot_run_or_never_ends_fails_and_the_ladder_moves_on() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    let a = r.input(RepairInput::ActionDone {
        ok: false,
        message: "no verified snapshot\nin the store".into(),
    });
    // Restart "failed" as reported; reimage runs next (the reason is cleaned).
    assert_eq!(
        a[0],
        RepairAction::HistoryEnd {
            outcome: Outcome::Failed,
            message: "no verified snapshot in the store".into()
        }
    );
    assert!(a.contains(&run(RepairStep::Reimage, 2)));
    // The reimage never reports back.
    let a = r.at(600);
    assert!(
        a.contains(&RepairAction::HistoryEnd {
            outcome: Outcome::Failed,
            message: "the step did not finish within 600s".into()
        }),
        "{a:?}"
    );
    assert!(a.contains(&run(RepairStep::Replace, 3)));
}

#[test]
fn a_ladder_that_runs_out_leaves_the_node_in_failure_until_it_recovers() {
    let mut sp = spec();
    sp.ladder = vec![RepairStep::Restart];
    let mut r = R::new(sp);
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    r.done();
    r.now = s(1);
    let a = r.err("still down");
    assert!(a.contains(&RepairAction::ReleaseSlot));
    let v = r.m.view();
    assert_eq!(v.state, NodeState::Failure);
    assert!(v.exhausted && !v.holds_slot && !r.m.wants_slot());
    // No more requests, whatever happens.
    r.at(3600);
    assert_eq!(r.count(&RepairAction::AcquireSlot), 1);
    assert_eq!(r.runs().len(), 1);
    // It recovers (a person fixed it): healthy, and the ladder is back.
    r.cond(Condition::Ok);
    r.at(3611);
    assert_eq!(r.m.view().state, NodeState::Healthy);
    assert!(!r.m.view().exhausted);
}

#[test]
fn an_agent_restart_continues_the_ladder_from_the_record() {
    // Killed during the restart step's probation.
    let rec = NodeRecord {
        state: NodeState::Probation,
        step: Some(RepairStep::Restart),
        attempt: 1,
        reason: Some("down".into()),
        exhausted: false,
        running: false,
    };
    let json = rec.encode();
    let rec = NodeRecord::decode(&json).expect("decodes");
    let (m, a) = Repair::resume(spec(), &rec, Duration::ZERO);
    assert_eq!(a, vec![RepairAction::AcquireSlot, RepairAction::Changed]);
    let mut r = R {
        m,
        now: Duration::ZERO,
        log: Vec::new(),
    };
    assert_eq!(r.m.view().state, NodeState::Probation);
    // No slot free: probation goes on regardless.
    assert!(r.input(RepairInput::SlotDenied).is_empty());
    r.now = s(2);
    let a = r.err("down");
    assert!(
        !a.iter()
            .any(|x| matches!(x, RepairAction::HistoryEnd { .. }))
    );
    assert!(a.contains(&RepairAction::AcquireSlot), "{a:?}");
    let a = r.input(RepairInput::SlotGranted);
    assert!(a.contains(&run(RepairStep::Reimage, 2)), "{a:?}");

    // Came back after a replace and fails again: out of steps.
    let rec = NodeRecord {
        state: NodeState::Probation,
        step: Some(RepairStep::Replace),
        attempt: 3,
        reason: None,
        exhausted: false,
        running: false,
    };
    let (m, _) = Repair::resume(spec(), &rec, Duration::ZERO);
    let mut r = R {
        m,
        now: Duration::ZERO,
        log: Vec::new(),
    };
    r.input(RepairInput::SlotGranted);
    let a = r.err("down");
    assert!(a.contains(&RepairAction::Event(EventCode::RepairFailed)));
    assert!(a.contains(&RepairAction::ReleaseSlot));
    assert!(r.m.view().exhausted);
    // A healthy record, or garbage, starts healthy.
    let (m, a) = Repair::resume(spec(), &NodeRecord::default(), Duration::ZERO);
    assert!(a.is_empty() && m.view().state == NodeState::Healthy);
    assert!(NodeRecord::decode("{\"state\": 7}").is_none());
    assert!(NodeRecord::decode(&"x".repeat(100_000)).is_none());
    let r = NodeRecord::decode("{\"state\":\"failure\",\"extra\":1}").expect("lenient");
    assert_eq!(r.state, NodeState::Failure);
}

#[test]
fn watchdog_filter_needs_fall_results_to_worsen_and_rise_to_recover() {
    use WatchdogStatus::*;
    let mut f = WatchdogFilter::new(2, 3);
    assert_eq!(f.status(), Ok);
    assert_eq!(f.observe(Error), None);
    assert_eq!(f.observe(Ok), None); // streak broken
    assert_eq!(f.observe(Error), None);
    assert_eq!(f.observe(Warning), None);
    // Three bad in a row, the best of them a warning: warning.
    assert_eq!(f.observe(Error), Some(Warning));
    assert_eq!(f.observe(Error), None);
    assert_eq!(f.observe(Error), None);
    assert_eq!(f.observe(Error), Some(Error));
    assert_eq!(f.observe(Ok), None);
    assert_eq!(f.observe(Ok), Some(Ok));
    let mut f = WatchdogFilter::new(0, 0);
    assert_eq!(f.observe(Warning), Some(Warning));
    assert_eq!(WatchdogStatus::parse("error"), Some(Error));
}

#[test]
fn condition_puts_watchdog_errors_and_parked_jobs_first() {
    let base = JobObservation {
        running: true,
        preparing: false,
        health: HealthStatus::Unknown,
        has_check: true,
        parked: false,
        watchdog_error: None,
    };
    assert_eq!(condition(&base), Condition::Pending);
    let o = JobObservation {
        health: HealthStatus::Unhealthy,
        ..base.clone()
    };
    assert_eq!(
        condition(&o),
        Condition::Error("its health check is failing".into())
    );
    let o = JobObservation {
        has_check: false,
        ..base.clone()
    };
    assert_eq!(condition(&o), Condition::Ok);
    let o = JobObservation {
        running: false,
        preparing: true,
        ..base.clone()
    };
    assert_eq!(condition(&o), Condition::Starting);
    let o = JobObservation {
        running: false,
        parked: true,
        ..base.clone()
    };
    assert!(matches!(condition(&o), Condition::Error(_)));
    let o = JobObservation {
        health: HealthStatus::Healthy,
        watchdog_error: Some("disk: 2% free".into()),
        ..base
    };
    assert_eq!(
        condition(&o),
        Condition::Error("watchdog disk: 2% free".into())
    );
}

#[test]
fn budget_slots_and_catalog_names() {
    assert_eq!(budget_slots(RepairBudget::Count(1), 10), 1);
    assert_eq!(budget_slots(RepairBudget::Count(0), 10), 1);
    assert_eq!(budget_slots(RepairBudget::Percent(20), 10), 2);
    assert_eq!(budget_slots(RepairBudget::Percent(20), 9), 1);
    assert_eq!(budget_slots(RepairBudget::Percent(20), 0), 1);
    assert_eq!(budget_slots(RepairBudget::Percent(100), 7), 7);
    assert_eq!(budget_slots(RepairBudget::Percent(500), 7), 7);
    assert_eq!(
        history_key("db", 1_700_000_000_000, "db-a"),
        "_fleet/repair/db/history/1700000000000-db-a"
    );
    assert!(history_key("db", 5, "n") < history_key("db", 40, "n"));
    assert_eq!(node_service("db"), "_repair.db");
    assert_eq!(service_of_node_service("_repair.db"), Some("db"));
    assert_eq!(service_of_node_service("_repair."), None);
}

#[test]
fn node_tags_read_back_and_hostile_tags_are_tamed() {
    let v = RepairView {
        state: NodeState::Failure,
        step: Some(RepairStep::Reimage),
        attempt: 2,
        reason: Some("disk\u{1b}[31m full".into()),
        since: Duration::ZERO,
        waiting_for_budget: true,
        holds_slot: false,
        exhausted: false,
        running: false,
    };
    let tags = node_tags(&v, true, "2026-11-28T12:00:00Z");
    let n = parse_node("db-a", &tags).expect("parses");
    assert_eq!(n.state, NodeState::Failure);
    assert_eq!(n.step, Some(RepairStep::Reimage));
    assert_eq!(n.attempt, 2);
    assert_eq!(n.reason.as_deref(), Some("disk [31m full"));
    assert!(n.waiting && n.leader && !n.exhausted && !n.in_repair());
    assert!(parse_node("x", &["state=on-fire".into()]).is_none());
    let n = parse_node(
        "x",
        &[
            "state=probation".into(),
            "attempt=99999999999999999999".into(),
            format!("reason={}", "r".repeat(10_000)),
        ],
    )
    .expect("parses");
    assert_eq!(n.attempt, 0);
    assert_eq!(n.reason.as_ref().map(|r| r.len()), Some(TEXT_CAP));
    assert!(n.in_repair());
    assert!(HistoryRecord::decode("not json").is_none());
    let h = HistoryRecord::decode(
        r#"{"node":"a\nb","job":"db","step":"restart","attempt":1,"reason":"r","started":"t"}"#,
    )
    .expect("decodes");
    assert_eq!(h.node, "a b");
    assert!(h.outcome.is_none());
}

#[test]
fn a_slot_lost_before_the_step_ran_retries_the_same_step() {
    let mut r = R::new(spec());
    r.cond(Condition::Ok);
    r.err("down");
    r.input(RepairInput::SlotGranted);
    r.done();
    r.now = s(1);
    r.err("down again");
    assert_eq!(r.runs(), vec![RepairStep::Restart, RepairStep::Reimage]);
    let a = r.input(RepairInput::SlotLost);
    assert_eq!(
        a,
        vec![
            RepairAction::HistoryEnd {
                outcome: Outcome::Interrupted,
                message: "the repair slot was lost before the step ran".into()
            },
            RepairAction::Changed,
            RepairAction::AcquireSlot,
        ]
    );
    let v = r.m.view();
    assert_eq!(v.state, NodeState::Failure);
    assert!(!v.holds_slot && !v.running);
    let a = r.input(RepairInput::SlotGranted);
    assert!(a.contains(&run(RepairStep::Reimage, 2)), "{a:?}");
}

#[test]
fn node_entry_ids_differ_from_the_job_instance_and_map_back() {
    let id = node_entry_id("db", "db-a");
    assert_eq!(id, "_repair.db.db-a");
    assert_ne!(id, "db-a");
    assert_eq!(node_of_entry("db", &id), "db-a");
    // An entry written before the prefix, and a prefix of another service.
    assert_eq!(node_of_entry("db", "db-a"), "db-a");
    assert_eq!(node_of_entry("d", "_repair.db.db-a"), "_repair.db.db-a");
    assert_eq!(node_of_entry("db", "_repair.db."), "_repair.db.");
}
