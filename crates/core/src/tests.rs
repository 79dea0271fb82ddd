//! Deterministic tests of the supervisor: a fake clock and simulated process exits.

use std::time::Duration;

use crate::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct H {
    m: Machine,
    now: Duration,
    /// Every action seen, in order.
    log: Vec<Action>,
    /// Every spawn: run, job name and kind (names survive a reload's renumbering).
    spawned: Vec<(RunId, String, ProcKind)>,
}

impl H {
    fn new(specs: Vec<JobSpec>) -> H {
        H {
            m: Machine::new(specs, Duration::from_secs(5), 1),
            now: Duration::ZERO,
            log: Vec::new(),
            spawned: Vec::new(),
        }
    }

    fn input(&mut self, i: Input) -> Vec<Action> {
        let a = self.m.handle(self.now, i);
        self.record(a)
    }

    fn record(&mut self, a: Vec<Action>) -> Vec<Action> {
        for act in &a {
            if let Action::Spawn { run, job, kind } = act {
                self.spawned.push((*run, self.name(*job), *kind));
                // The runtime reports the pid right after spawning.
                let more = self.m.handle(
                    self.now,
                    Input::Started {
                        run: *run,
                        pid: 1000 + run.0 as u32,
                    },
                );
                assert!(more.is_empty());
            }
        }
        self.log.extend(a.iter().cloned());
        a
    }

    fn startup(&mut self) -> Vec<Action> {
        self.input(Input::Startup)
    }

    /// Moves the clock forward to `t` ms, firing timers on the way.
    fn at(&mut self, t: u64) -> Vec<Action> {
        self.now = ms(t);
        let a = self.m.advance(self.now);
        self.record(a)
    }

    fn exit(&mut self, run: RunId, code: i32) -> Vec<Action> {
        self.input(Input::Exited {
            run,
            status: ExitStatus::Code(code),
        })
    }

    fn name(&self, job: usize) -> String {
        self.m.spec(job).name.clone()
    }

    /// The run of the most recent spawn of `name`'s exec (or check).
    fn run_of(&self, name: &str, kind: ProcKind) -> RunId {
        self.spawned
            .iter()
            .rev()
            .find_map(|(run, n, k)| (*k == kind && n == name).then_some(*run))
            .unwrap_or_else(|| panic!("{name} never spawned"))
    }

    /// Takes the new job list of a reload whose old jobs have stopped.
    fn adopt(&mut self) -> (Vec<Option<usize>>, Vec<Action>) {
        let (kept, a) = self.m.adopt(self.now).expect("a reload is ready");
        let a = self.record(a);
        (kept, a)
    }

    fn reload(&mut self, jobs: Vec<JobSpec>) -> Vec<Action> {
        self.input(Input::Reload {
            jobs,
            stop_timeout: Duration::from_secs(5),
        })
    }

    fn spawns(&self, a: &[Action]) -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Spawn {
                    job,
                    kind: ProcKind::Job,
                    ..
                } => Some(self.name(*job)),
                Action::Spawn {
                    job,
                    kind: ProcKind::Check,
                    ..
                } => Some(format!("check.{}", self.name(*job))),
                _ => None,
            })
            .collect()
    }

    fn count_spawns(&self, name: &str) -> usize {
        self.spawned
            .iter()
            .filter(|(_, n, k)| *k == ProcKind::Job && n == name)
            .count()
    }

    fn events(a: &[Action]) -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Published(e) => Some(e.to_string()),
                _ => None,
            })
            .collect()
    }

    fn finished(a: &[Action]) -> Option<(StopReason, i32)> {
        a.iter().find_map(|a| match a {
            Action::Finished { reason, code } => Some((*reason, *code)),
            _ => None,
        })
    }

    fn signals(a: &[Action]) -> Vec<(RunId, Sig)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Signal { run, sig } => Some((*run, *sig)),
                _ => None,
            })
            .collect()
    }
}

fn job(name: &str) -> JobSpec {
    JobSpec::new(name, &["/bin/true"])
}

fn on(name: &str, source: &str, code: EventCode, each: bool) -> JobSpec {
    JobSpec {
        trigger: Trigger::Event {
            source: source.into(),
            code,
            each,
            timeout: None,
        },
        ..job(name)
    }
}

fn health(interval: u64, rise: u32, fall: u32) -> Option<HealthSpec> {
    Some(HealthSpec {
        check: HealthCheck::exec(&["/bin/true"]),
        interval: ms(interval),
        ttl: ms(interval * 3),
        timeout: ms(interval),
        rise,
        fall,
    })
}

#[test]
fn prestart_chain_then_app_is_main() {
    let mut h = H::new(vec![
        job("preStart"),
        on("app", "preStart", EventCode::ExitSuccess, false),
    ]);
    assert_eq!(h.m.main_job(), Some(1));
    let a = h.startup();
    assert_eq!(h.spawns(&a), vec!["preStart"]);
    let a = h.exit(h.run_of("preStart", ProcKind::Job), 0);
    assert_eq!(h.spawns(&a), vec!["app"]);
    assert!(H::events(&a).contains(&"preStart.exitSuccess".to_string()));
    assert_eq!(H::finished(&a), None, "pre-start ending is not the end");
    let a = h.exit(h.run_of("app", ProcKind::Job), 7);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 7)));
}

#[test]
fn signal_death_maps_to_128_plus_n() {
    let mut h = H::new(vec![job("app")]);
    h.startup();
    let run = h.run_of("app", ProcKind::Job);
    let a = h.input(Input::Exited {
        run,
        status: ExitStatus::Signal(9),
    });
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 137)));
}

#[test]
fn restarts_count_with_exponential_backoff() {
    let mut h = H::new(vec![JobSpec {
        restarts: Restarts::Count(3),
        ..job("app")
    }]);
    h.startup();
    let mut delays = Vec::new();
    let mut t = 0;
    for _ in 0..3 {
        let a = h.exit(h.run_of("app", ProcKind::Job), 1);
        let d = a
            .iter()
            .find_map(|a| match a {
                Action::Restarting { delay, .. } => Some(*delay),
                _ => None,
            })
            .expect("restart scheduled");
        delays.push(d);
        // Nothing happens before the back-off is over.
        let a = h.at(t + d.as_millis() as u64 - 1);
        assert!(h.spawns(&a).is_empty());
        t += d.as_millis() as u64;
        let a = h.at(t);
        assert_eq!(h.spawns(&a), vec!["app"]);
    }
    assert_eq!(delays, vec![ms(100), ms(200), ms(400)]);
    let a = h.exit(h.run_of("app", ProcKind::Job), 3);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 3)));
    assert_eq!(h.count_spawns("app"), 4, "one run plus three restarts");
}

#[test]
fn backoff_is_capped_and_resets_after_a_long_run() {
    let b = Backoff::default();
    assert_eq!(b.delay(0), ms(100));
    assert_eq!(b.delay(6), ms(6400));
    assert_eq!(b.delay(7), Duration::from_secs(10));
    assert_eq!(b.delay(400), Duration::from_secs(10));

    let mut h = H::new(vec![JobSpec {
        restarts: Restarts::Unlimited,
        ..job("app")
    }]);
    h.startup();
    h.exit(h.run_of("app", ProcKind::Job), 1);
    h.at(100);
    h.exit(h.run_of("app", ProcKind::Job), 1);
    h.at(300);
    // This run lasts 20 s, longer than reset_after: the next delay is short again.
    h.at(20_300);
    let a = h.exit(h.run_of("app", ProcKind::Job), 1);
    assert!(a.contains(&Action::Restarting {
        job: 0,
        delay: ms(100)
    }));
}

#[test]
fn once_runs_once_and_each_runs_per_event_with_queueing() {
    let mut h = H::new(vec![
        JobSpec {
            restarts: Restarts::Unlimited,
            ..job("app")
        },
        on("first", "app", EventCode::ExitFailed, false),
        on("every", "app", EventCode::ExitFailed, true),
    ]);
    h.startup();
    let a = h.exit(h.run_of("app", ProcKind::Job), 1);
    assert_eq!(h.spawns(&a), vec!["first", "every"]);
    h.at(100);
    // A second event while `every` is still running is queued, not doubled.
    let a = h.exit(h.run_of("app", ProcKind::Job), 1);
    assert!(h.spawns(&a).is_empty());
    let a = h.exit(h.run_of("every", ProcKind::Job), 0);
    assert_eq!(h.spawns(&a), vec!["every"]);
    h.exit(h.run_of("every", ProcKind::Job), 0);
    h.exit(h.run_of("first", ProcKind::Job), 0);
    h.at(400);
    h.exit(h.run_of("app", ProcKind::Job), 1);
    assert_eq!(h.count_spawns("first"), 1);
    assert_eq!(h.count_spawns("every"), 3);
}

#[test]
fn an_each_handler_is_retried_with_backoff_until_it_succeeds() {
    // A hook such as a promotion: a failed run is retried with back-off;
    // a successful run has handled its event and waits for the next one.
    let mut h = H::new(vec![
        JobSpec {
            restarts: Restarts::Unlimited,
            ..job("app")
        },
        JobSpec {
            restarts: Restarts::Unlimited,
            ..on("hook", "app", EventCode::ExitFailed, true)
        },
    ]);
    h.startup();
    let a = h.exit(h.run_of("app", ProcKind::Job), 1);
    assert_eq!(h.spawns(&a), vec!["hook"]);
    let a = h.exit(h.run_of("hook", ProcKind::Job), 1);
    let delay = a
        .iter()
        .find_map(|a| match a {
            Action::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .expect("a failed handler run is retried");
    assert_eq!(delay, ms(100));
    assert!(
        {
            let a = h.at(99);
            h.spawns(&a)
        }
        .iter()
        .all(|n| n != "hook")
    );
    assert!(
        {
            let a = h.at(100);
            h.spawns(&a)
        }
        .iter()
        .any(|n| n == "hook")
    );
    let a = h.exit(h.run_of("hook", ProcKind::Job), 1);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Restarting { delay, .. } if *delay == ms(200)))
    );
    assert!(
        {
            let a = h.at(300);
            h.spawns(&a)
        }
        .iter()
        .any(|n| n == "hook")
    );
    // Success: no restart, the handler waits for the next event.
    let a = h.exit(h.run_of("hook", ProcKind::Job), 0);
    assert!(!a.iter().any(|a| matches!(a, Action::Restarting { .. })));
    assert!(
        {
            let a = h.at(10_000);
            h.spawns(&a)
        }
        .iter()
        .all(|n| n != "hook")
    );
    assert_eq!(h.count_spawns("hook"), 3);
    // The next event runs it again, from the first back-off step.
    let a = h.exit(h.run_of("app", ProcKind::Job), 1);
    assert!(h.spawns(&a).iter().any(|n| n == "hook"));
    assert_eq!(h.count_spawns("hook"), 4);
}

#[test]
fn interval_runs_at_startup_then_every_tick_skipping_overlaps() {
    let mut h = H::new(vec![
        job("app"),
        JobSpec {
            trigger: Trigger::Interval(ms(1000)),
            restarts: Restarts::Unlimited,
            timeout: Some(ms(1000)),
            ..job("tick")
        },
    ]);
    assert_eq!(h.m.main_job(), Some(0), "interval jobs are never main");
    let a = h.startup();
    assert_eq!(h.spawns(&a), vec!["app", "tick"]);
    h.exit(h.run_of("tick", ProcKind::Job), 0);
    let a = h.at(1000);
    assert_eq!(h.spawns(&a), vec!["tick"]);
    // Still running at the next tick: killed by its timeout, the tick skipped.
    let run = h.run_of("tick", ProcKind::Job);
    let a = h.at(2000);
    assert!(h.spawns(&a).is_empty());
    assert_eq!(H::signals(&a), vec![(run, Sig::Kill)]);
    h.input(Input::Exited {
        run,
        status: ExitStatus::Signal(9),
    });
    let a = h.at(3000);
    assert_eq!(h.spawns(&a), vec!["tick"]);
}

#[test]
fn interval_restart_limit_ends_the_job() {
    let mut h = H::new(vec![JobSpec {
        trigger: Trigger::Interval(ms(100)),
        restarts: Restarts::Count(1),
        ..job("tick")
    }]);
    h.startup();
    h.exit(h.run_of("tick", ProcKind::Job), 0);
    h.at(100);
    let a = h.exit(h.run_of("tick", ProcKind::Job), 0);
    assert!(H::events(&a).contains(&"tick.stopped".to_string()));
    assert_eq!(h.count_spawns("tick"), 2);
}

#[test]
fn when_timeout_gives_up_and_emits_stopped() {
    let mut h = H::new(vec![
        JobSpec {
            trigger: Trigger::Event {
                source: "never".into(),
                code: EventCode::Healthy,
                each: false,
                timeout: Some(ms(500)),
            },
            ..job("waiter")
        },
        job("never"),
        on("after", "waiter", EventCode::Stopped, false),
    ]);
    h.startup();
    let a = h.at(500);
    let ev = H::events(&a);
    assert!(ev.contains(&"waiter.timerExpired".to_string()), "{ev:?}");
    assert!(ev.contains(&"waiter.stopped".to_string()), "{ev:?}");
    assert_eq!(h.spawns(&a), vec!["after"]);
}

#[test]
fn health_rise_fall_publishes_transitions_only() {
    let mut h = H::new(vec![JobSpec {
        health: health(1000, 2, 2),
        ..job("app")
    }]);
    h.startup();
    let mut events = Vec::new();
    let results = [0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0];
    for (i, code) in results.iter().enumerate() {
        let a = h.at(1000 * (i as u64 + 1));
        assert_eq!(h.spawns(&a), vec!["check.app"]);
        let a = h.exit(h.run_of("app", ProcKind::Check), *code);
        events.extend(H::events(&a));
    }
    assert_eq!(
        events,
        vec!["app.healthy", "app.unhealthy", "app.healthy"],
        "rise 2 / fall 2, and no repeat on every passing check"
    );
}

#[test]
fn health_check_timeout_kills_and_counts_as_failure() {
    let mut h = H::new(vec![JobSpec {
        health: health(1000, 1, 1),
        ..job("app")
    }]);
    h.startup();
    h.at(1000);
    let run = h.run_of("app", ProcKind::Check);
    // No overlapping check while one is still running.
    let a = h.at(2000);
    assert!(h.spawns(&a).is_empty());
    assert_eq!(H::signals(&a), vec![(run, Sig::Kill)]);
    let a = h.input(Input::Exited {
        run,
        status: ExitStatus::Signal(9),
    });
    assert_eq!(H::events(&a), vec!["app.unhealthy"]);
}

#[test]
fn graceful_stop_order_prestop_term_kill_poststop() {
    let mut h = H::new(vec![
        JobSpec {
            stop_timeout: ms(2000),
            ..job("app")
        },
        on("preStop", "app", EventCode::Stopping, false),
        on("postStop", "app", EventCode::Stopped, false),
    ]);
    h.startup();
    let app = h.run_of("app", ProcKind::Job);
    h.at(1000);
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(h.spawns(&a), vec!["preStop"]);
    assert!(
        H::signals(&a).is_empty(),
        "app is not signalled before pre-stop ends"
    );
    let a = h.exit(h.run_of("preStop", ProcKind::Job), 0);
    assert_eq!(H::signals(&a), vec![(app, Sig::Term)]);
    // app ignores SIGTERM: SIGKILL at its stopTimeout, not before.
    assert!(H::signals(&h.at(2999)).is_empty());
    assert_eq!(H::signals(&h.at(3000)), vec![(app, Sig::Kill)]);
    let a = h.input(Input::Exited {
        run: app,
        status: ExitStatus::Signal(9),
    });
    assert_eq!(h.spawns(&a), vec!["postStop"]);
    assert_eq!(H::finished(&a), None, "post-stop still running");
    let a = h.exit(h.run_of("postStop", ProcKind::Job), 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 137)));
}

#[test]
fn stop_with_everything_already_exited_finishes_at_once() {
    let mut h = H::new(vec![
        JobSpec {
            restarts: Restarts::Count(1),
            ..job("app")
        },
        on("handler", "SIGHUP", EventCode::Signal, true),
    ]);
    h.startup();
    h.exit(h.run_of("app", ProcKind::Job), 0);
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

#[test]
fn stop_hook_that_hangs_is_bounded_by_the_global_stop_timeout() {
    let mut h = H::new(vec![
        job("app"),
        on("preStop", "app", EventCode::Stopping, false),
    ]);
    h.startup();
    h.input(Input::Stop(StopReason::Shutdown));
    let hook = h.run_of("preStop", ProcKind::Job);
    assert_eq!(H::signals(&h.at(5000)), vec![(hook, Sig::Kill)]);
}

#[test]
fn signal_events_trigger_jobs() {
    let mut h = H::new(vec![
        job("app"),
        on("onhup", "SIGHUP", EventCode::Signal, true),
    ]);
    h.startup();
    let a = h.input(Input::SignalEvent("SIGHUP".into()));
    assert_eq!(h.spawns(&a), vec!["onhup"]);
    let a = h.input(Input::SignalEvent("SIGUSR2".into()));
    assert!(h.spawns(&a).is_empty());
}

#[test]
fn maintenance_pauses_checks_and_publishes_events() {
    let mut h = H::new(vec![JobSpec {
        health: health(1000, 1, 1),
        port: Some(80),
        ..job("app")
    }]);
    h.startup();
    h.at(1000);
    h.exit(h.run_of("app", ProcKind::Check), 0);
    let a = h.input(Input::Maintenance(true));
    assert_eq!(H::events(&a), vec!["global.enterMaintenance"]);
    let a = h.at(2000);
    assert!(h.spawns(&a).is_empty(), "no checks in maintenance");
    let a = h.input(Input::Maintenance(false));
    assert_eq!(H::events(&a), vec!["global.exitMaintenance"]);
    h.at(3000);
    let a = h.exit(h.run_of("app", ProcKind::Check), 0);
    assert_eq!(H::events(&a), vec!["app.healthy"]);
}

#[test]
fn reload_stops_everything_and_reports_reload() {
    let mut h = H::new(vec![job("app")]);
    h.startup();
    let a = h.input(Input::Stop(StopReason::Reload));
    let (run, sig) = H::signals(&a)[0];
    assert_eq!(sig, Sig::Term);
    let a = h.exit(run, 0);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
}

#[test]
fn completed_jobs_with_no_main_end_the_agent() {
    let mut h = H::new(vec![on("a", "SIGHUP", EventCode::Signal, false)]);
    assert_eq!(h.m.main_job(), None);
    h.startup();
    let a = h.input(Input::SignalEvent("SIGHUP".into()));
    let a2 = h.exit(h.run_of("a", ProcKind::Job), 0);
    assert_eq!(H::finished(&a), None);
    assert_eq!(H::finished(&a2), Some((StopReason::Shutdown, 0)));
}

#[test]
fn no_lost_early_events() {
    // `early` reacts to an event published during startup dispatch itself.
    let mut h = H::new(vec![
        JobSpec {
            exec: vec![],
            health: None,
            port: Some(1),
            ..job("advertised")
        },
        on("early", "global", EventCode::Startup, false),
    ]);
    let a = h.startup();
    assert_eq!(h.spawns(&a), vec!["early"]);
}

#[test]
fn main_job_selection() {
    let specs = vec![
        job("consul-agent"),
        on("preStart", "consul-agent", EventCode::Healthy, false),
        on("app", "preStart", EventCode::ExitSuccess, false),
        JobSpec {
            trigger: Trigger::Interval(ms(5)),
            ..job("sensor")
        },
        on("preStop", "app", EventCode::Stopping, false),
    ];
    assert_eq!(main_job(&specs), Some(2));
    let mut explicit = specs.clone();
    explicit[0].main = true;
    assert_eq!(main_job(&explicit), Some(0));
    assert_eq!(main_job(&specs[3..]), None);
    // A one-shot handler of an interval job is not on the start chain.
    let handler = vec![
        job("app"),
        JobSpec {
            trigger: Trigger::Interval(ms(5)),
            ..job("tick")
        },
        on("first", "tick", EventCode::ExitSuccess, false),
    ];
    assert_eq!(main_job(&handler), Some(0));
}

fn catalog_ops(h: &H, a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Register { job, status } => {
                Some(format!("register {} {status:?}", h.name(*job)))
            }
            Action::SetStatus { job, status } => {
                Some(format!("status {} {status:?}", h.name(*job)))
            }
            Action::Deregister { job } => Some(format!("deregister {}", h.name(*job))),
            Action::Signal { sig, .. } => Some(format!("signal {sig:?}")),
            _ => None,
        })
        .collect()
}

#[test]
fn registration_follows_health_maintenance_and_stop() {
    let mut h = H::new(vec![JobSpec {
        health: health(1000, 1, 1),
        port: Some(80),
        ..job("web")
    }]);
    let a = h.startup();
    assert!(
        catalog_ops(&h, &a).is_empty(),
        "not registered before the first passing check"
    );
    h.at(1000);
    let a = h.exit(h.run_of("web", ProcKind::Check), 1);
    assert!(
        catalog_ops(&h, &a).is_empty(),
        "a failing check before registration registers nothing"
    );
    h.at(2000);
    let a = h.exit(h.run_of("web", ProcKind::Check), 0);
    assert_eq!(catalog_ops(&h, &a), vec!["register web Passing"]);
    h.at(3000);
    let a = h.exit(h.run_of("web", ProcKind::Check), 1);
    assert_eq!(
        catalog_ops(&h, &a),
        vec!["status web Critical"],
        "critical at once"
    );
    h.at(4000);
    let a = h.exit(h.run_of("web", ProcKind::Check), 0);
    assert_eq!(catalog_ops(&h, &a), vec!["status web Passing"]);
    let a = h.input(Input::Maintenance(true));
    assert_eq!(catalog_ops(&h, &a), vec!["deregister web"]);
    let a = h.input(Input::Maintenance(false));
    assert!(catalog_ops(&h, &a).is_empty());
    h.at(5000);
    let a = h.exit(h.run_of("web", ProcKind::Check), 0);
    assert_eq!(
        catalog_ops(&h, &a),
        vec!["register web Passing"],
        "re-registered after maintenance"
    );
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(
        catalog_ops(&h, &a),
        vec!["deregister web", "signal Term"],
        "deregistered before SIGTERM"
    );
}

#[test]
fn initial_status_registers_at_once_and_exits_turn_critical() {
    let mut h = H::new(vec![JobSpec {
        port: Some(80),
        initial_status: Some(EntryStatus::Warning),
        restarts: Restarts::Unlimited,
        ..job("web")
    }]);
    let a = h.startup();
    assert_eq!(catalog_ops(&h, &a), vec!["register web Warning"]);
    let a = h.exit(h.run_of("web", ProcKind::Job), 1);
    assert_eq!(
        catalog_ops(&h, &a),
        vec!["status web Critical"],
        "a dead process is not serving"
    );
    // Advertise-only: a port and no exec.
    let mut h = H::new(vec![JobSpec {
        exec: vec![],
        port: Some(9000),
        initial_status: Some(EntryStatus::Passing),
        ..job("adv")
    }]);
    let a = h.startup();
    assert_eq!(catalog_ops(&h, &a), vec!["register adv Passing"]);
}

#[test]
fn restore_before_start_gates_the_first_run_only() {
    let snap = SnapshotSpec {
        set: "db".into(),
        store: "file:///s".into(),
        create: None,
        restore: Some(vec!["restore".into()]),
        interval: None,
        retain: 3,
        leader_only: false,
        data_dir: Some("/data".into()),
        data_dir_owner: None,
    };
    let mut h = H::new(vec![JobSpec {
        snapshot: Some(snap),
        restarts: Restarts::Unlimited,
        ..job("db")
    }]);
    let a = h.startup();
    assert!(h.spawns(&a).is_empty(), "nothing runs before the restore");
    assert!(a.contains(&Action::Prepare {
        job: 0,
        reimage: false
    }));
    // A failed restore is retried after the back-off, not given up.
    let a = h.input(Input::Prepared { job: 0, ok: false });
    assert!(a.contains(&Action::Restarting {
        job: 0,
        delay: ms(100)
    }));
    let a = h.at(100);
    assert!(a.contains(&Action::Prepare {
        job: 0,
        reimage: false
    }));
    let a = h.input(Input::Prepared { job: 0, ok: true });
    assert_eq!(h.spawns(&a), vec!["db"]);
    // Restarts do not restore again.
    h.exit(h.run_of("db", ProcKind::Job), 1);
    let a = h.at(300);
    assert_eq!(h.spawns(&a), vec!["db"]);
    assert!(!a.contains(&Action::Prepare {
        job: 0,
        reimage: false
    }));
}

#[test]
fn shutdown_during_a_reload_wins() {
    let mut h = H::new(vec![job("app")]);
    h.startup();
    let a = h.input(Input::Stop(StopReason::Reload));
    let (run, _) = H::signals(&a)[0];
    // SIGTERM arrives while the old jobs are still stopping.
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert!(H::finished(&a).is_none());
    assert_eq!(h.m.stopping(), Some(StopReason::Shutdown));
    let a = h.exit(run, 0);
    assert_eq!(
        H::finished(&a),
        Some((StopReason::Shutdown, 0)),
        "the new config is never started"
    );
    // The reverse order does not turn a shutdown into a reload.
    let mut h = H::new(vec![job("app")]);
    h.startup();
    let a = h.input(Input::Stop(StopReason::Shutdown));
    let (run, _) = H::signals(&a)[0];
    h.input(Input::Stop(StopReason::Reload));
    let a = h.exit(run, 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

fn elected_job(roles: bool, snapshot: Option<SnapshotSpec>) -> JobSpec {
    JobSpec {
        health: health(1000, 1, 1),
        port: Some(6379),
        restarts: Restarts::Unlimited,
        election: Some(ElectionSpec {
            ttl: ms(5000),
            ..ElectionSpec::new("primary")
        }),
        roles: roles.then(|| Roles {
            leader: RoleSpec {
                name: Some("db-primary".into()),
                tags: None,
            },
            follower: RoleSpec {
                name: Some("db-replica".into()),
                tags: None,
            },
        }),
        snapshot,
        ..job("db")
    }
}

#[test]
fn leadership_publishes_events_and_moves_the_role_entry() {
    let mut h = H::new(vec![elected_job(true, None)]);
    h.startup();
    h.at(1000);
    let a = h.exit(h.run_of("db", ProcKind::Check), 0);
    assert_eq!(catalog_ops(&h, &a), vec!["register db Passing"]);
    assert!(a.contains(&Action::Campaign {
        job: 0,
        campaign: true
    }));
    assert_eq!(h.m.role(0), Role::Follower);

    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(7),
    });
    assert_eq!(H::events(&a), vec!["db.elected"]);
    assert_eq!(
        catalog_ops(&h, &a),
        vec!["register db Passing"],
        "the entry is rewritten under the leader's role"
    );
    assert_eq!(h.m.role(0), Role::Leader { term: 7 });
    // The same news again changes nothing.
    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(7),
    });
    assert!(a.is_empty(), "{a:?}");
    // A seat won again is a new seat: demoted, then elected, and the entry
    // is bound to the new term.
    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(9),
    });
    assert_eq!(H::events(&a), vec!["db.demoted", "db.elected"]);
    assert_eq!(h.m.role(0), Role::Leader { term: 9 });
    let a = h.input(Input::Leadership { job: 0, term: None });
    assert_eq!(H::events(&a), vec!["db.demoted"]);
    assert_eq!(catalog_ops(&h, &a), vec!["register db Passing"]);
    assert_eq!(h.m.role(0), Role::Follower);

    // Without roles the entry stays as it is.
    let mut h = H::new(vec![elected_job(false, None)]);
    h.startup();
    h.at(1000);
    h.exit(h.run_of("db", ProcKind::Check), 0);
    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(1),
    });
    assert!(catalog_ops(&h, &a).is_empty());
    assert_eq!(h.m.role(0), Role::Plain);
    // A job with no election ignores the news.
    let mut h = H::new(vec![job("x")]);
    h.startup();
    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(1),
    });
    assert!(a.is_empty());
    // An out-of-range job index is ignored, not a panic.
    let a = h.input(Input::Leadership {
        job: 5,
        term: Some(1),
    });
    assert!(a.is_empty());
}

#[test]
fn a_new_leader_takes_the_first_snapshot_and_followers_skip_leader_only_ticks() {
    let snap = SnapshotSpec {
        set: "db".into(),
        store: "file:///s".into(),
        create: Some(vec!["dump".into()]),
        restore: None,
        interval: Some(ms(10_000)),
        retain: 3,
        leader_only: true,
        data_dir: None,
        data_dir_owner: None,
    };
    let snaps = |a: &[Action]| {
        a.iter()
            .filter_map(|a| match a {
                Action::Snapshot { only_if_none, .. } => Some(*only_if_none),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut h = H::new(vec![elected_job(false, Some(snap))]);
    h.startup();
    h.at(1000);
    h.exit(h.run_of("db", ProcKind::Check), 0);
    let a = h.at(10_000);
    assert!(snaps(&a).is_empty(), "a follower skips a leaderOnly tick");
    let a = h.input(Input::Leadership {
        job: 0,
        term: Some(1),
    });
    assert_eq!(snaps(&a), vec![true], "first snapshot if none exists");
    let a = h.at(20_000);
    assert_eq!(snaps(&a), vec![false], "the leader takes its turn");
}

fn serving(name: &str) -> JobSpec {
    JobSpec {
        port: Some(8080),
        health: health(1000, 1, 1),
        ..job(name)
    }
}

fn exit_with(h: &mut H, name: &str, code: i32) -> Vec<Action> {
    h.exit(h.run_of(name, ProcKind::Job), code)
}

#[test]
fn main_job_prefers_a_serving_job_over_one_shots() {
    // ContainerPilot's configuration reference: a service, then a job with
    // only `exec` that does some work and exits.
    let specs = vec![serving("app"), job("setup")];
    assert_eq!(main_job(&specs), Some(0));
    // A preStart chain to an app with a port: the app.
    let specs = vec![
        job("preStart"),
        JobSpec {
            port: Some(80),
            ..on("app", "preStart", EventCode::ExitSuccess, false)
        },
        job("setup"),
    ];
    assert_eq!(main_job(&specs), Some(1));
    // A serving job another serving job waits on is a step, not the main job.
    let specs = vec![
        JobSpec {
            port: Some(80),
            ..on("web", "db", EventCode::Healthy, false)
        },
        serving("db"),
    ];
    assert_eq!(main_job(&specs), Some(0));
    // Advertise-only jobs, interval jobs and handlers never serve as main.
    let specs = vec![
        JobSpec {
            exec: vec![],
            port: Some(80),
            ..job("adv")
        },
        JobSpec {
            trigger: Trigger::Interval(ms(5)),
            port: Some(81),
            ..job("tick")
        },
        job("setup"),
    ];
    assert_eq!(main_job(&specs), Some(2));
    assert!(
        !spec::ends_on_failure(&specs[2]),
        "a one-shot's failure ends nothing"
    );
    // ContainerPilot's schema example: the app waits for setup, which waits
    // for a sidecar agent with a health check listed after it.
    let specs = vec![
        JobSpec {
            port: Some(80),
            health: health(1000, 1, 1),
            ..on("app", "setup", EventCode::ExitSuccess, false)
        },
        on("setup", "agent", EventCode::Healthy, false),
        JobSpec {
            health: health(1000, 1, 1),
            ..job("agent")
        },
        job("cleanup"),
    ];
    assert_eq!(main_job(&specs), Some(0));
    // A port beats a health check alone.
    let specs = vec![
        serving("web"),
        JobSpec {
            health: health(1000, 1, 1),
            ..job("cron-ish")
        },
    ];
    assert_eq!(main_job(&specs), Some(0));
    assert!(spec::ends_on_failure(&serving("x")));
    assert!(spec::ends_on_failure(&JobSpec {
        restarts: Restarts::Count(2),
        ..job("worker")
    }));
}

#[test]
fn a_one_shot_next_to_the_app_does_not_end_the_container() {
    let mut h = H::new(vec![serving("app"), job("setup")]);
    let a = h.startup();
    assert_eq!(h.spawns(&a), vec!["app", "setup"]);
    let a = exit_with(&mut h, "setup", 0);
    assert_eq!(H::finished(&a), None, "the app still runs");
    assert!(h.m.pid_of(0).is_some());
    // The app's failure (no restarts left) ends it, with its code.
    let a = exit_with(&mut h, "app", 3);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 3)));
}

#[test]
fn a_main_job_that_exits_0_waits_for_the_jobs_that_can_still_run() {
    let mut h = H::new(vec![
        serving("app"),
        JobSpec {
            trigger: Trigger::Interval(ms(1000)),
            restarts: Restarts::Count(1),
            ..job("tick")
        },
    ]);
    h.startup();
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), None, "the interval job can still run");
    exit_with(&mut h, "tick", 0);
    h.at(1000);
    let a = exit_with(&mut h, "tick", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

#[test]
fn a_crashing_main_job_ends_with_its_code_once_restarts_are_exhausted() {
    let mut h = H::new(vec![
        JobSpec {
            restarts: Restarts::Count(1),
            ..serving("app")
        },
        JobSpec {
            exec: vec!["sleep".into()],
            ..job("worker")
        },
    ]);
    h.startup();
    let a = exit_with(&mut h, "app", 5);
    assert_eq!(H::finished(&a), None, "one restart left");
    h.at(100);
    let a = exit_with(&mut h, "app", 5);
    assert_eq!(H::finished(&a), None, "the worker is asked to stop first");
    let (run, sig) = H::signals(&a)[0];
    assert_eq!(sig, Sig::Term);
    let a = h.exit(run, 143);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 5)));
}

#[test]
fn only_one_shots_exit_when_none_can_run_with_the_last_failure() {
    let mut h = H::new(vec![job("a"), job("b")]);
    assert_eq!(h.m.main_job(), Some(1));
    h.startup();
    let a = exit_with(&mut h, "a", 2);
    assert_eq!(H::finished(&a), None, "b still runs");
    let a = exit_with(&mut h, "b", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 2)));
    // All succeed: 0.
    let mut h = H::new(vec![job("a"), job("b")]);
    h.startup();
    exit_with(&mut h, "b", 0);
    let a = exit_with(&mut h, "a", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

#[test]
fn a_failed_pre_start_ends_the_chain_that_can_never_run() {
    let mut h = H::new(vec![
        job("preStart"),
        JobSpec {
            port: Some(80),
            ..on("app", "preStart", EventCode::ExitSuccess, false)
        },
        on("after", "app", EventCode::Healthy, false),
    ]);
    h.startup();
    let a = exit_with(&mut h, "preStart", 4);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 4)));
}

#[test]
fn a_one_shot_picked_by_the_chain_rule_does_not_stop_a_worker_when_it_fails() {
    let mut h = H::new(vec![
        JobSpec {
            restarts: Restarts::Never,
            ..job("worker")
        },
        job("setup"),
    ]);
    assert_eq!(h.m.main_job(), Some(1));
    h.startup();
    let a = exit_with(&mut h, "setup", 1);
    assert_eq!(
        H::finished(&a),
        None,
        "the worker runs on, as under ContainerPilot"
    );
    let a = exit_with(&mut h, "worker", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 1)));
}

#[test]
fn a_restarting_chain_main_ends_the_container_when_its_restarts_run_out() {
    let mut h = H::new(vec![
        job("preStart"),
        JobSpec {
            restarts: Restarts::Count(1),
            ..on("app", "preStart", EventCode::ExitSuccess, false)
        },
        JobSpec {
            trigger: Trigger::Interval(ms(60_000)),
            restarts: Restarts::Unlimited,
            ..job("cron")
        },
    ]);
    assert_eq!(h.m.main_job(), Some(1));
    h.startup();
    exit_with(&mut h, "cron", 0);
    exit_with(&mut h, "preStart", 0);
    exit_with(&mut h, "app", 6);
    h.at(100);
    let a = exit_with(&mut h, "app", 6);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 6)));
}

#[test]
fn an_advertise_only_job_keeps_the_container_running() {
    let mut h = H::new(vec![
        JobSpec {
            exec: vec![],
            port: Some(80),
            ..job("adv")
        },
        job("setup"),
    ]);
    h.startup();
    let a = exit_with(&mut h, "setup", 0);
    assert_eq!(H::finished(&a), None);
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

#[test]
fn plan_reload_keeps_unchanged_jobs_and_their_hooks() {
    let old = vec![
        job("app"),
        on("preStop", "app", EventCode::Stopping, false),
        job("db"),
        on("dbStop", "db", EventCode::Stopped, false),
        job("gone"),
    ];
    let mut new = vec![
        job("db"),
        on("dbStop", "db", EventCode::Stopped, false),
        JobSpec {
            exec: vec!["/bin/false".into()],
            ..job("app")
        },
        on("preStop", "app", EventCode::Stopping, false),
        job("fresh"),
    ];
    assert_eq!(
        machine::plan_reload(&old, &new),
        vec![Some(2), Some(3), None, None, None],
        "a hook of a changed job starts afresh"
    );
    new[2] = job("app");
    assert_eq!(
        machine::plan_reload(&old, &new),
        vec![Some(2), Some(3), Some(0), Some(1), None]
    );
    assert_eq!(
        machine::keep_unchanged(&[1, 2, 3], &[3, 9, 1], |x| *x),
        vec![Some(2), None, Some(0)]
    );
}

#[test]
fn reload_keeps_an_unchanged_job_and_restarts_a_changed_one() {
    let v1 = vec![
        serving("app"),
        JobSpec {
            restarts: Restarts::Unlimited,
            ..job("side")
        },
    ];
    let mut h = H::new(v1.clone());
    h.startup();
    h.at(1000);
    let a = h.exit(h.run_of("app", ProcKind::Check), 0);
    assert_eq!(catalog_ops(&h, &a), vec!["register app Passing"]);
    let app_run = h.run_of("app", ProcKind::Job);
    let app_pid = h.m.pid_of(0);
    let side_run = h.run_of("side", ProcKind::Job);
    // `side` changes and moves first; `new` is added.
    let v2 = vec![
        JobSpec {
            exec: vec!["/bin/sleep".into()],
            restarts: Restarts::Unlimited,
            ..job("side")
        },
        serving("app"),
        job("new"),
    ];
    let a = h.reload(v2);
    assert_eq!(
        H::signals(&a),
        vec![(side_run, Sig::Term)],
        "only the changed job stops"
    );
    assert!(
        catalog_ops(&h, &a).iter().all(|o| !o.contains("app")),
        "{a:?}"
    );
    assert_eq!(H::events(&a), vec!["side.stopping"]);
    assert_eq!(H::finished(&a), None);
    // The kept job works on meanwhile: its checks run and count.
    let a = h.at(2000);
    assert_eq!(h.spawns(&a), vec!["check.app"]);
    let a = h.exit(side_run, 143);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    assert!(!h.m.is_finished());
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![None, Some(0), None]);
    assert_eq!(h.spawns(&a), vec!["side", "new"]);
    assert!(catalog_ops(&h, &a).is_empty(), "{a:?}");
    assert_eq!(h.m.pid_of(1), app_pid, "the same process");
    assert_eq!(h.run_of("app", ProcKind::Job), app_run);
    assert_eq!(h.m.registered(1), Some(EntryStatus::Passing));
    assert_eq!(h.m.main_job(), Some(1));
    // The check in flight before the reload still counts, under the new index.
    let a = h.exit(h.run_of("app", ProcKind::Check), 1);
    assert_eq!(catalog_ops(&h, &a), vec!["status app Critical"]);
    // The kept job's exit is still seen.
    let a = h.exit(app_run, 9);
    assert_eq!(H::events(&a)[0], "app.exitFailed");
}

#[test]
fn reload_stops_and_deregisters_a_removed_job() {
    let mut h = H::new(vec![serving("app"), serving("old")]);
    h.startup();
    h.at(1000);
    h.exit(h.run_of("app", ProcKind::Check), 0);
    h.exit(h.run_of("old", ProcKind::Check), 0);
    let a = h.reload(vec![serving("app")]);
    assert_eq!(catalog_ops(&h, &a), vec!["deregister old", "signal Term"]);
    let a = exit_with(&mut h, "old", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![Some(0)]);
    assert!(
        a.iter().all(|x| !matches!(x, Action::Spawn { .. })),
        "{a:?}"
    );
    assert_eq!(h.m.job_count(), 1);
}

#[test]
fn reload_keeps_leadership_of_an_unchanged_elected_job() {
    let mut h = H::new(vec![elected_job(true, None), job("other")]);
    h.startup();
    h.at(1000);
    h.exit(h.run_of("db", ProcKind::Check), 0);
    h.input(Input::Leadership {
        job: 0,
        term: Some(4),
    });
    let a = h.reload(vec![
        JobSpec {
            exec: vec!["/bin/sleep".into()],
            ..job("other")
        },
        elected_job(true, None),
    ]);
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::Campaign { .. } | Action::Deregister { .. })),
        "{a:?}"
    );
    exit_with(&mut h, "other", 143);
    let (_, a) = h.adopt();
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::Campaign { .. } | Action::Register { .. })),
        "{a:?}"
    );
    assert!(!H::events(&a).iter().any(|e| e.contains("demoted")));
    assert_eq!(h.m.leading(1), Some(4));
    assert_eq!(h.m.role(1), Role::Leader { term: 4 });
}

#[test]
fn reload_starts_a_new_once_job_whose_event_already_happened() {
    let mut h = H::new(vec![
        job("preStart"),
        JobSpec {
            restarts: Restarts::Unlimited,
            ..on("app", "preStart", EventCode::ExitSuccess, false)
        },
    ]);
    h.startup();
    let a = exit_with(&mut h, "preStart", 0);
    assert_eq!(h.spawns(&a), vec!["app"]);
    // `app` changes; `watcher` is new and handles every future exitSuccess.
    let a = h.reload(vec![
        job("preStart"),
        JobSpec {
            exec: vec!["/bin/sleep".into()],
            restarts: Restarts::Unlimited,
            ..on("app", "preStart", EventCode::ExitSuccess, false)
        },
        on("watcher", "preStart", EventCode::ExitSuccess, true),
        on("late", "SIGHUP", EventCode::Signal, false),
    ]);
    assert!(h.spawns(&a).is_empty());
    exit_with(&mut h, "app", 143);
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![Some(0), None, None, None]);
    assert_eq!(
        h.spawns(&a),
        vec!["app"],
        "the once-job's event happened: it starts at once; an `each` job waits"
    );
    assert!(!h.m.is_finished());
}

#[test]
fn a_shutdown_during_a_partial_reload_wins() {
    let mut h = H::new(vec![serving("app"), job("side")]);
    h.startup();
    let a = h.reload(vec![
        serving("app"),
        JobSpec {
            exec: vec!["/bin/sleep".into()],
            ..job("side")
        },
    ]);
    let (side, _) = H::signals(&a)[0];
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(H::signals(&a).len(), 1, "the kept job stops too: {a:?}");
    h.exit(side, 143);
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
    assert!(h.m.adopt(h.now).is_none(), "the new config never starts");
    // A reload asked for during a shutdown is ignored.
    let mut h = H::new(vec![job("app")]);
    h.startup();
    h.input(Input::Stop(StopReason::Shutdown));
    let a = h.reload(vec![job("next")]);
    assert!(H::finished(&a).is_none());
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));
}

#[test]
fn reload_runs_the_stop_hooks_of_a_changed_job() {
    let v1 = vec![
        JobSpec {
            restarts: Restarts::Unlimited,
            ..job("app")
        },
        on("preStop", "app", EventCode::Stopping, false),
        on("postStop", "app", EventCode::Stopped, false),
    ];
    let mut h = H::new(v1.clone());
    h.startup();
    let mut v2 = v1.clone();
    v2[0].exec = vec!["/bin/sleep".into()];
    let a = h.reload(v2);
    assert_eq!(h.spawns(&a), vec!["preStop"]);
    let a = exit_with(&mut h, "preStop", 0);
    let (run, _) = H::signals(&a)[0];
    let a = h.exit(run, 143);
    assert_eq!(h.spawns(&a), vec!["postStop"]);
    assert_eq!(H::finished(&a), None, "the post-stop hook runs first");
    let a = exit_with(&mut h, "postStop", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![None, None, None]);
    assert_eq!(h.spawns(&a), vec!["app"]);
    // The new hooks serve the new job.
    let a = h.input(Input::Stop(StopReason::Shutdown));
    assert_eq!(h.spawns(&a), vec!["preStop"]);
}

#[test]
fn reload_with_nothing_changed_is_ready_at_once() {
    let mut h = H::new(vec![serving("app")]);
    h.startup();
    let a = h.reload(vec![serving("app")]);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    assert!(H::signals(&a).is_empty());
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![Some(0)]);
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn a_run_stopped_for_a_reload_publishes_no_exit_event() {
    let app = JobSpec {
        restarts: Restarts::Unlimited,
        ..job("app")
    };
    let on_fail = on("onFail", "app", EventCode::ExitFailed, true);
    let mut h = H::new(vec![app.clone(), on_fail.clone()]);
    h.startup();
    let old_run = h.run_of("app", ProcKind::Job);
    let changed = JobSpec {
        exec: vec!["/bin/sleep".into()],
        ..app.clone()
    };
    let late = on("late", "app", EventCode::ExitFailed, false);
    let a = h.reload(vec![changed, on_fail, late]);
    assert_eq!(H::signals(&a), vec![(old_run, Sig::Term)]);
    // SIGTERM ends the run with a failure status, but the machine stopped it.
    let a = h.exit(old_run, 143);
    assert!(
        !H::events(&a).iter().any(|e| e.starts_with("app.exit")),
        "{a:?}"
    );
    assert!(
        h.spawns(&a).is_empty(),
        "the kept handler does not run: {a:?}"
    );
    assert!(!h.m.has_published(&Event::new(EventCode::ExitFailed, "app")));
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    let (kept, a) = h.adopt();
    assert_eq!(kept, vec![None, Some(1), None]);
    assert_eq!(h.spawns(&a), vec!["app"], "the new once-job waits: {a:?}");
    // A failure of the new run is a real one: the kept handler and the
    // new once-job both hear it.
    let a = exit_with(&mut h, "app", 1);
    assert!(H::events(&a).contains(&"app.exitFailed".to_string()));
    let mut spawned = h.spawns(&a);
    spawned.sort();
    assert_eq!(spawned, vec!["late", "onFail"]);
}

#[test]
fn a_shutdown_still_starts_no_handler_for_the_exits_it_causes() {
    let mut h = H::new(vec![
        serving("app"),
        on("onFail", "app", EventCode::ExitFailed, true),
    ]);
    h.startup();
    let a = h.input(Input::Stop(StopReason::Shutdown));
    let (run, _) = H::signals(&a)[0];
    let a = h.exit(run, 143);
    assert!(h.spawns(&a).is_empty(), "{a:?}");
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 143)));
}

#[test]
fn the_failure_of_a_job_a_reload_removed_does_not_decide_the_exit_code() {
    let mut h = H::new(vec![serving("app"), job("setup")]);
    h.startup();
    let a = exit_with(&mut h, "setup", 3);
    assert_eq!(H::finished(&a), None, "a one-shot's failure stops nothing");
    let a = h.reload(vec![serving("app")]);
    assert_eq!(H::finished(&a), Some((StopReason::Reload, 0)));
    h.adopt();
    // The app ends cleanly: nothing can run; the removed job's failure is
    // not the new config's.
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 0)));

    // A kept job's failure still counts.
    let mut h = H::new(vec![serving("app"), job("setup")]);
    h.startup();
    exit_with(&mut h, "setup", 3);
    h.reload(vec![job("setup"), serving("app")]);
    h.adopt();
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 3)));

    // A kept job failed, then a job the reload removes failed later: the
    // kept job's failure is still the exit code, not 0.
    let mut h = H::new(vec![serving("app"), job("setup"), job("extra")]);
    h.startup();
    exit_with(&mut h, "setup", 3);
    exit_with(&mut h, "extra", 5);
    h.reload(vec![serving("app"), job("setup")]);
    h.adopt();
    let a = exit_with(&mut h, "app", 0);
    assert_eq!(H::finished(&a), Some((StopReason::Shutdown, 3)));
}

#[test]
fn plan_reload_sees_the_stderr_level() {
    let old = vec![job("app")];
    let new = vec![JobSpec {
        stderr_at_info: true,
        ..job("app")
    }];
    assert_eq!(crate::machine::plan_reload(&old, &new), vec![None]);
    assert_eq!(
        crate::machine::plan_reload(&old, &old.clone()),
        vec![Some(0)]
    );
}

#[test]
fn a_retiring_job_is_winding_a_kept_one_is_not() {
    let mut h = H::new(vec![serving("app"), serving("web")]);
    h.startup();
    assert!(!h.m.is_winding(0) && !h.m.is_winding(1));
    h.reload(vec![
        serving("app"),
        JobSpec {
            exec: vec!["/bin/sleep".into()],
            ..serving("web")
        },
    ]);
    assert!(!h.m.is_winding(0), "kept");
    assert!(h.m.is_winding(1), "retiring");
    assert!(!h.m.is_winding(7), "no such job");
    h.input(Input::Stop(StopReason::Shutdown));
    assert!(h.m.is_winding(0));
}

mod props {
    //! Property tests: whatever happens, a stop finishes and nothing is
    //! registered once stopping.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        ExitJob(usize, i32),
        ExitCheck(usize, bool),
        Maintenance(bool),
        Leadership(usize, Option<u64>),
        Signal,
        Reload,
        /// A reload that changes `web` (or changes it back) and keeps the rest.
        PartialReload,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..3000).prop_map(Step::Advance),
            (0usize..4, -1i32..3).prop_map(|(j, c)| Step::ExitJob(j, c)),
            (0usize..4, any::<bool>()).prop_map(|(j, ok)| Step::ExitCheck(j, ok)),
            any::<bool>().prop_map(Step::Maintenance),
            (0usize..4, proptest::option::of(1u64..5)).prop_map(|(j, t)| Step::Leadership(j, t)),
            Just(Step::Signal),
            Just(Step::Reload),
            Just(Step::PartialReload),
        ]
    }

    fn jobs() -> Vec<JobSpec> {
        vec![
            JobSpec {
                restarts: Restarts::Unlimited,
                ..elected_job(true, None)
            },
            JobSpec {
                port: Some(80),
                health: health(500, 2, 2),
                restarts: Restarts::Count(3),
                ..job("web")
            },
            on("pre-stop", "web", EventCode::Stopping, false),
            on("on-hup", "SIGHUP", EventCode::Signal, true),
        ]
    }

    /// The runs currently alive, by kind and job, from the actions seen.
    fn live(h: &H) -> Vec<(RunId, usize, ProcKind)> {
        let mut alive: Vec<(RunId, usize, ProcKind)> = Vec::new();
        for a in &h.log {
            if let Action::Spawn { run, job, kind } = a {
                alive.push((*run, *job, *kind));
            }
        }
        alive
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_stop_always_finishes_and_nothing_registers_after_it(
            steps in proptest::collection::vec(step(), 0..60),
            stop_at in 0usize..60,
        ) {
            let mut h = H::new(jobs());
            h.startup();
            let mut exited: std::collections::HashSet<RunId> = Default::default();
            let mut stopped = false;
            let mut flip = false;
            for (i, s) in steps.iter().enumerate() {
                if i == stop_at {
                    h.input(Input::Stop(StopReason::Shutdown));
                    stopped = true;
                }
                let runs = live(&h);
                let pick = |job: usize, kind: ProcKind| {
                    runs.iter().rev().find(|(r, j, k)| *j == job && *k == kind && !exited.contains(r)).map(|(r, _, _)| *r)
                };
                let a = match s {
                    Step::Advance(d) => { let t = h.now.as_millis() as u64 + d; h.at(t) }
                    Step::ExitJob(j, c) => match pick(*j, ProcKind::Job) {
                        Some(r) => { exited.insert(r); h.exit(r, *c) }
                        None => Vec::new(),
                    },
                    Step::ExitCheck(j, ok) => match pick(*j, ProcKind::Check) {
                        Some(r) => { exited.insert(r); h.exit(r, if *ok { 0 } else { 1 }) }
                        None => Vec::new(),
                    },
                    Step::Maintenance(on) => h.input(Input::Maintenance(*on)),
                    Step::Leadership(j, t) => h.input(Input::Leadership { job: *j, term: *t }),
                    Step::Signal => h.input(Input::SignalEvent("SIGHUP".into())),
                    Step::Reload => h.input(Input::Stop(StopReason::Reload)),
                    Step::PartialReload => {
                        let mut next = jobs();
                        flip = !flip;
                        if flip {
                            next[1].exec = vec!["/bin/sleep".into()];
                        }
                        h.reload(next)
                    }
                };
                if h.m.reload_ready() {
                    h.adopt();
                }
                if stopped || h.m.stopping().is_some() {
                    prop_assert!(
                        !a.iter().any(|x| matches!(x, Action::Register { .. } | Action::Campaign { campaign: true, .. })),
                        "registered or campaigned while stopping: {a:?}"
                    );
                }
                if h.m.is_finished() {
                    break;
                }
            }
            if !h.m.is_finished() {
                h.input(Input::Stop(StopReason::Shutdown));
            }
            // Every process ends (SIGKILL cannot be ignored) and the clock
            // runs on: the stop must finish within a bounded time.
            let mut rounds = 0;
            while !h.m.is_finished() {
                rounds += 1;
                prop_assert!(rounds < 200, "the stop never finished");
                for (r, _, _) in live(&h) {
                    if exited.insert(r) {
                        h.input(Input::Exited { run: r, status: ExitStatus::Signal(9) });
                    }
                }
                let t = h.now.as_millis() as u64 + 1000;
                h.at(t);
            }
            let finished = h.log.iter().rev().find_map(|a| match a {
                Action::Finished { reason, code } => Some((*reason, *code)),
                _ => None,
            });
            if stopped {
                prop_assert_eq!(finished.map(|f| f.0), Some(StopReason::Shutdown));
            }
        }
    }
}

// ---- repair steps (Input::Repair) and parked jobs --------------------------

fn repair_job(name: &str) -> JobSpec {
    let mut j = JobSpec::new(name, &["app"]);
    j.restarts = Restarts::Count(1);
    j.repair = Some(spec::RepairSpec::new(vec![
        spec::RepairStep::Restart,
        spec::RepairStep::Replace,
    ]));
    j
}

#[test]
fn a_repair_job_out_of_restarts_is_parked_and_does_not_end_the_agent() {
    let mut h = H::new(vec![repair_job("db")]);
    h.startup();
    let run = h.run_of("db", ProcKind::Job);
    h.exit(run, 1);
    h.at(200); // the one restart
    let run2 = h.run_of("db", ProcKind::Job);
    assert_ne!(run, run2);
    let a = h.exit(run2, 1);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Finished { .. })),
        "{a:?}"
    );
    assert!(h.m.parked(0));
    assert_eq!(h.m.phase(0), Phase::Waiting);
    assert!(h.m.view()[0].parked);
    // Nothing more happens on its own.
    let a = h.at(60_000);
    assert!(h.spawns(&a).is_empty(), "{a:?}");
    // A repair starts it again with a fresh restart count.
    let a = h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    assert_eq!(h.spawns(&a), vec!["db"]);
    assert!(!h.m.parked(0));
    let run3 = h.run_of("db", ProcKind::Job);
    h.exit(run3, 1);
    h.at(60_300);
    assert_ne!(
        h.run_of("db", ProcKind::Job),
        run3,
        "restart count was reset"
    );
}

#[test]
fn the_same_job_without_repair_ends_the_agent() {
    let mut j = repair_job("db");
    j.repair = None;
    j.port = Some(80);
    let mut h = H::new(vec![j]);
    h.startup();
    let run = h.run_of("db", ProcKind::Job);
    h.exit(run, 1);
    h.at(200);
    let run2 = h.run_of("db", ProcKind::Job);
    h.exit(run2, 1);
    assert!(
        h.log
            .iter()
            .any(|a| matches!(a, Action::Finished { code: 1, .. })),
        "{:?}",
        h.log
    );
}

#[test]
fn a_repair_restart_stops_the_run_quietly_and_starts_it_at_once() {
    let mut h = H::new(vec![repair_job("db")]);
    h.startup();
    let run = h.run_of("db", ProcKind::Job);
    h.at(1000);
    let a = h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    assert!(a.contains(&Action::Signal {
        run,
        sig: Sig::Term
    }));
    assert!(h.spawns(&a).is_empty());
    let a = h.exit(run, 143);
    assert_eq!(h.spawns(&a), vec!["db"], "{a:?}");
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Published(e) if e.code == EventCode::ExitFailed)),
        "a repair's stop is not the job failing: {a:?}"
    );
    // A second repair while the first one's stop is under way is ignored.
    let run2 = h.run_of("db", ProcKind::Job);
    h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    let a = h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    assert!(a.is_empty(), "{a:?}");
    // SIGKILL follows at the stop timeout.
    let a = h.at(1000 + 5000);
    assert!(a.contains(&Action::Signal {
        run: run2,
        sig: Sig::Kill
    }));
}

#[test]
fn a_reimage_goes_through_a_restore_with_the_reimage_flag() {
    let mut j = repair_job("db");
    j.snapshot = Some(SnapshotSpec {
        set: "db".into(),
        store: "file:///s".into(),
        create: Some(vec!["c".into()]),
        restore: Some(vec!["r".into()]),
        interval: None,
        retain: 3,
        leader_only: false,
        data_dir: Some("/data".into()),
        data_dir_owner: None,
    });
    let mut h = H::new(vec![j]);
    let a = h.startup();
    assert!(a.contains(&Action::Prepare {
        job: 0,
        reimage: false
    }));
    let a = h.input(Input::Prepared { job: 0, ok: true });
    assert_eq!(h.spawns(&a), vec!["db"]);
    let run = h.run_of("db", ProcKind::Job);
    h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Reimage,
    });
    let a = h.exit(run, 143);
    assert!(
        a.contains(&Action::Prepare {
            job: 0,
            reimage: true
        }),
        "{a:?}"
    );
    assert_eq!(h.m.phase(0), Phase::Preparing);
    // A repair while restoring is ignored.
    let a = h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    assert!(a.is_empty());
    let a = h.input(Input::Prepared { job: 0, ok: true });
    assert_eq!(h.spawns(&a), vec!["db"]);
}

#[test]
fn a_shutdown_during_a_repair_stop_wins() {
    let mut h = H::new(vec![repair_job("db")]);
    h.startup();
    let run = h.run_of("db", ProcKind::Job);
    h.input(Input::Repair {
        job: 0,
        step: spec::RepairStep::Restart,
    });
    h.input(Input::Stop(StopReason::Shutdown));
    let a = h.exit(run, 143);
    assert!(h.spawns(&a).is_empty(), "{a:?}");
    assert!(
        a.iter().any(|a| matches!(a, Action::Finished { .. })),
        "{a:?}"
    );
}
