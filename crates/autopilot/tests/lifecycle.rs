//! Job lifecycles with the real binary: exit codes, stop order, signals, restarts, triggers and timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn run_main(exec: &str) -> Option<i32> {
    let d = Dir::new("exit");
    let mut a = start(
        &d,
        &format!(
            r#"{{ control: {{ socket: "@SOCKET@" }}, jobs: [{{ name: "app", exec: {exec:?} }}] }}"#
        ),
    );
    a.wait(Duration::from_secs(10))
}

#[test]
fn exit_codes_follow_the_main_job() {
    assert_eq!(run_main("true"), Some(0));
    assert_eq!(run_main("sh -c 'exit 7'"), Some(7));
    assert_eq!(run_main("sh -c 'kill -9 $$'"), Some(128 + 9));
}

#[test]
fn prestart_prestop_poststop_order() {
    let d = Dir::new("order");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "preStart", exec: "sh -c 'echo preStart >> @DIR@/order'" },
    { name: "app", when: { source: "preStart", once: "exitSuccess" },
      exec: ["sh", "-c", "echo app >> @DIR@/order; trap 'echo app-term >> @DIR@/order; exit 0' TERM; for i in $(seq 300); do sleep 0.1; done"] },
    { name: "preStop", when: { source: "app", once: "stopping" }, exec: "sh -c 'sleep 0.2; echo preStop >> @DIR@/order'" },
    { name: "postStop", when: { source: "app", once: "stopped" }, exec: "sh -c 'echo postStop >> @DIR@/order'" },
  ]
}"#,
    );
    assert!(wait_for(Duration::from_secs(10), || d.lines("order").len() == 2));
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    assert_eq!(
        d.lines("order"),
        vec!["preStart", "app", "preStop", "app-term", "postStop"]
    );
}

#[test]
fn signals_are_forwarded_as_events_and_term_reaches_the_job() {
    let d = Dir::new("signals");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: ["sh", "-c", "trap 'echo term >> @DIR@/app; exit 3' TERM; echo up > @DIR@/up; for i in $(seq 300); do sleep 0.1; done"] },
    { name: "onhup", when: { source: "SIGHUP" }, exec: "sh -c 'echo hup >> @DIR@/sig'" },
    { name: "onusr2", when: { source: "SIGUSR2", each: "signal" }, exec: "sh -c 'echo usr2 >> @DIR@/sig'" },
  ]
}"#,
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || d
        .read("up")
        .contains("up")));
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || d.lines("sig") == ["hup"]));
    a.signal(libc::SIGUSR2);
    assert!(wait_for(Duration::from_secs(5), || d.lines("sig") == ["hup", "usr2"]));
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || d.lines("sig").len() == 3));
    // SIGUSR1 only reopens logs: the agent keeps running.
    a.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(a.wait(Duration::ZERO).is_none());
    a.signal(libc::SIGINT);
    assert_eq!(
        a.wait(Duration::from_secs(10)),
        Some(3),
        "main job's own exit code"
    );
    assert_eq!(d.lines("app"), vec!["term"]);
}

#[test]
fn stop_timeout_escalates_to_sigkill_for_the_whole_group() {
    let d = Dir::new("stopkill");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  stopTimeout: "30s",
  jobs: [{ name: "stubborn", stopTimeout: "400ms",
    exec: ["sh", "-c", "trap '' TERM; (trap '' TERM; sleep 30) & echo $! > @DIR@/child; for i in $(seq 300); do sleep 0.1; done"] }]
}"#,
    );
    assert!(wait_for(Duration::from_secs(5), || !d
        .read("child")
        .trim()
        .is_empty()));
    let child: i32 = d.read("child").trim().parse().expect("child pid");
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(137));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "killed before stopTimeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "stopTimeout not honoured: {took:?}"
    );
    // The grandchild in the job's group got the SIGKILL too.
    assert!(wait_for(Duration::from_secs(2), || { !alive(child) }));
}

#[test]
fn shutdown_is_prompt_when_jobs_have_exited() {
    let d = Dir::new("fastexit");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  stopTimeout: "30s",
  jobs: [
    { name: "app", main: true, restarts: 1, exec: "sh -c 'exit 4'", restartBackoff: { initial: "10ms" } },
    { name: "handler", when: { source: "SIGHUP" }, exec: "true" },
  ]
}"#,
    );
    // The main job fails and exhausts its restart: the agent stops on its
    // own (a clean exit would not end it while the handler can still run).
    assert_eq!(a.wait(Duration::from_secs(10)), Some(4), "{}", a.log());
    let d2 = Dir::new("fastterm");
    let mut b = start(
        &d2,
        r#"{ control: { socket: "@SOCKET@" }, stopTimeout: "30s",
  jobs: [{ name: "handler", when: { source: "SIGHUP" }, exec: "true" }] }"#,
    );
    b.ready();
    let t = Instant::now();
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait(Duration::from_secs(10)), Some(0));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn restarts_with_exponential_backoff() {
    let d = Dir::new("restarts");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [{ name: "crashy", restarts: 3, restartBackoff: { initial: "100ms", max: "2s" },
    exec: ["sh", "-c", "date +%s%N >> @DIR@/runs; exit 4"] }]
}"#,
    );
    assert_eq!(a.wait(Duration::from_secs(10)), Some(4));
    let runs: Vec<u128> = d
        .lines("runs")
        .iter()
        .map(|l| l.parse().expect("ns"))
        .collect();
    assert_eq!(runs.len(), 4, "one run plus three restarts");
    let gaps: Vec<u128> = runs.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    for (gap, min) in gaps.iter().zip([100, 200, 400]) {
        assert!(*gap >= min, "gaps {gaps:?} must grow from 100ms");
    }
    assert!(gaps[2] < 2000, "gaps {gaps:?}");
}

#[test]
fn once_each_interval_and_timeouts() {
    let d = Dir::new("triggers");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: "sleep 30", main: true },
    { name: "tick", when: { interval: "150ms" }, exec: "sh -c 'echo t >> @DIR@/ticks'" },
    { name: "first", when: { source: "tick", once: "exitSuccess" }, exec: "sh -c 'echo x >> @DIR@/once'" },
    { name: "every", when: { source: "tick", each: "exitSuccess" }, exec: "sh -c 'echo x >> @DIR@/each'" },
    { name: "slow", timeout: "300ms", exec: ["sh", "-c", "sleep 20 & echo $! > @DIR@/slowchild; wait"] },
    { name: "onslow", when: { source: "slow", once: "exitFailed" }, exec: "sh -c 'echo killed > @DIR@/slow'" },
    { name: "waiter", when: { source: "app", once: "healthy", timeout: "300ms" }, exec: "true" },
    { name: "gaveup", when: { source: "waiter", once: "stopped" }, exec: "sh -c 'echo gaveup > @DIR@/gaveup'" },
  ]
}"#,
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || d.lines("ticks").len() >= 5));
    assert!(wait_for(Duration::from_secs(5), || d.lines("each").len() >= 4));
    assert_eq!(d.lines("once").len(), 1, "once runs once");
    assert!(wait_for(Duration::from_secs(5), || d
        .read("slow")
        .contains("killed")));
    let child: i32 = d.read("slowchild").trim().parse().expect("pid");
    assert!(
        wait_for(Duration::from_secs(2), || !alive(child)),
        "timeout kills the whole process group"
    );
    assert!(wait_for(Duration::from_secs(5), || d
        .read("gaveup")
        .contains("gaveup")));
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some());
}

#[test]
fn health_checks_emit_transitions_with_rise_and_fall() {
    let d = Dir::new("health");
    let a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: "sleep 30", port: 8080, interfaces: ["static:127.0.0.1"],
      health: { exec: "test -e @DIR@/ok", interval: "100ms", ttl: 1, rise: 2, fall: 2 } },
    { name: "up", when: { source: "app", each: "healthy" }, exec: "sh -c 'echo up >> @DIR@/events'" },
    { name: "down", when: { source: "app", each: "unhealthy" }, exec: "sh -c 'echo down >> @DIR@/events'" },
  ]
}"#,
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || d.lines("events") == ["down"]));
    d.write("ok", "");
    assert!(wait_for(Duration::from_secs(5), || d.lines("events")
        == ["down", "up"]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.lines("events"),
        vec!["down", "up"],
        "healthy is published on transitions only"
    );
    let st = a.status();
    assert_eq!(st["jobs"][0]["health"], "healthy");
    assert_eq!(st["jobs"][0]["ip"], "127.0.0.1");
    std::fs::remove_file(d.path("ok")).expect("rm");
    assert!(wait_for(Duration::from_secs(5), || d.lines("events")
        == ["down", "up", "down"]));
}

#[test]
fn jobs_get_containerpilot_and_autopilot_variables() {
    let d = Dir::new("env");
    let a = start_with(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "my-app", exec: "sleep 30", port: 80, interfaces: "static:10.1.2.3", initial_status: "passing" },
    { name: "show", when: { source: "SIGHUP" },
      exec: ["sh", "-c", "echo $CONTAINERPILOT_PID $AUTOPILOT_PID $CONTAINERPILOT_MY_APP_IP $AUTOPILOT_MY_APP_IP $CONTAINERPILOT_MY_APP_PID $FROM_ENV > @DIR@/env"] },
  ]
}"#,
        &[],
        &[("FROM_ENV", "inherited")],
    );
    a.ready();
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || !d
        .read("env")
        .is_empty()));
    let v: Vec<String> = d
        .read("env")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let pid = a.pid().to_string();
    assert_eq!(
        &v[..4],
        &[pid.clone(), pid, "10.1.2.3".into(), "10.1.2.3".into()]
    );
    assert_eq!(v[4], a.status()["jobs"][0]["pid"].to_string());
    assert_eq!(v[5], "inherited");
}

#[test]
fn log_file_is_reopened_on_usr1_and_json_format_works() {
    let d = Dir::new("logs");
    let a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  logging: { level: "DEBUG", format: "json", output: "@DIR@/agent.json" },
  jobs: [
    { name: "app", exec: "sleep 30" },
    { name: "say", when: { source: "SIGHUP" }, exec: "echo hello-from-job" },
  ]
}"#,
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || d
        .read("agent.json")
        .contains("job started")));
    std::fs::rename(d.path("agent.json"), d.path("agent.json.1")).expect("rotate");
    a.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(200));
    a.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(5), || d
        .read("agent.json")
        .contains("hello-from-job")));
    for line in d.read("agent.json").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        if v["message"] == "hello-from-job" {
            assert_eq!(v["job"], "say");
        }
    }
}

#[test]
fn each_job_has_a_state_directory_that_persists_across_runs() {
    let d = Dir::new("jobstate");
    let a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "app", exec: "sleep 30" },
    { name: "counter", when: { interval: "100ms" },
      exec: ["sh", "-c", "n=$(cat \"$AUTOPILOT_JOB_STATE_DIR/n\" 2>/dev/null || echo 0); echo $((n+1)) > \"$AUTOPILOT_JOB_STATE_DIR/n\""] },
  ]
}"#,
    );
    a.ready();
    let n = || d.read("state/counter/n").trim().parse::<u32>().unwrap_or(0);
    assert!(
        wait_for(Duration::from_secs(5), || n() >= 5),
        "the count survives each run: {}",
        n()
    );
}

#[test]
fn a_one_shot_job_next_to_the_app_does_not_end_the_container() {
    let d = Dir::new("oneshot");
    let port = free_port();
    let mut a = start(
        &d,
        &format!(
            r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "app", port: {port}, interfaces: ["static:127.0.0.1"],
      exec: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
      health: {{ exec: "true", interval: "100ms", ttl: 2 }} }},
    {{ name: "setup", exec: "sh -c 'echo done > @DIR@/setup'" }},
  ]
}}"#
        ),
    );
    a.ready();
    let status_of = |a: &Agent, job: &str| {
        a.status()["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == job).cloned())
            .map(|j| j["status"].as_str().unwrap_or_default().to_string())
    };
    assert!(
        wait_for(Duration::from_secs(10), || status_of(&a, "setup")
            .as_deref()
            == Some("stopped")),
        "{}",
        a.log()
    );
    assert_eq!(d.read("setup").trim(), "done");
    // The agent decided at the one-shot's exit; it is still running the app.
    assert!(
        a.wait(Duration::ZERO).is_none(),
        "exited; log:\n{}",
        a.log()
    );
    let app = a.job_pid("app").expect("the app still runs");
    assert!(alive(app));
    assert_eq!(
        a.status()["jobs"][0]["main"],
        true,
        "the serving job is main"
    );
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
}

#[test]
fn only_one_shot_jobs_exit_when_none_can_run_with_the_failure_code() {
    let d = Dir::new("oneshots");
    let mut a = start(
        &d,
        r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "check", exec: "sh -c 'exit 3'" },
    { name: "migrate", exec: "sh -c 'sleep 0.3; echo migrated > @DIR@/migrate'" },
    { name: "seed", when: { source: "migrate", once: "exitSuccess" },
      exec: "sh -c 'sleep 0.2; echo seeded > @DIR@/seed'" },
  ]
}"#,
    );
    assert_eq!(
        a.wait(Duration::from_secs(10)),
        Some(3),
        "the failed one-shot's code, once nothing can run; log:\n{}",
        a.log()
    );
    assert_eq!(d.read("seed").trim(), "seeded", "the chain ran to its end");
}
