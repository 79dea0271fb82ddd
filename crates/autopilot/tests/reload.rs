//! `reload` with the real binary: unchanged jobs keep their process, registration and leadership;
//! changed jobs restart, removed ones stop and leave the catalog, new ones start.

mod common;

use std::time::Duration;

use common::*;

/// A job that records each start and runs until SIGTERM.
fn runner(name: &str, tag: &str) -> String {
    format!(
        r#"{{ name: "{name}", exec: ["sh", "-c", "echo {tag} >> @DIR@/{name}.runs; trap 'exit 0' TERM; while :; do sleep 0.1; done"] }}"#
    )
}

/// A job with a port and a passing health check, registered in the catalog.
fn service(name: &str, port: u16) -> String {
    format!(
        r#"{{ name: "{name}", port: {port}, interfaces: ["static:127.0.0.1"],
       exec: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }} }}"#
    )
}

fn config(jobs: &[String]) -> String {
    format!(
        "{{ control: {{ socket: \"@SOCKET@\" }}, stopTimeout: \"5s\", jobs: [\n{}\n] }}",
        jobs.join(",\n")
    )
}

fn catalog(d: &Dir) -> String {
    format!("local://{}", d.path("catalog").display())
}

/// Rewrites the agent's config (filling in the socket and directory) and reloads it.
fn reload(a: &Agent, d: &Dir, text: &str, args: &[&str]) {
    let text = text
        .replace("@SOCKET@", &a.socket.display().to_string())
        .replace("@DIR@", &d.0.display().to_string());
    std::fs::write(&a.config, text).expect("write config");
    let (code, out) = a.cli(args);
    assert_eq!(code, 0, "{out}\n{}", a.log());
}

#[test]
fn reload_keeps_unchanged_jobs_restarts_changed_ones_and_stops_removed_ones() {
    let d = Dir::new("reload-keep");
    let (p_keep, p_gone) = (free_port(), free_port());
    let v1 = config(&[
        service("keep", p_keep),
        runner("change", "v1"),
        service("gone", p_gone),
    ]);
    let mut a = start(&d, &v1);
    a.ready();
    let url = catalog(&d);
    assert!(
        wait_for(Duration::from_secs(10), || {
            passing_ports(&url, "keep") == [p_keep] && passing_ports(&url, "gone") == [p_gone]
        }),
        "both services registered; log:\n{}",
        a.log()
    );
    let keep_pid = a.job_pid("keep").expect("keep runs");
    let change_pid = a.job_pid("change").expect("change runs");
    let gone_pid = a.job_pid("gone").expect("gone runs");

    // `change` changes, `gone` goes, `fresh` is new, `keep` is untouched.
    let v2 = config(&[
        runner("fresh", "v2"),
        service("keep", p_keep),
        runner("change", "v2"),
    ]);
    reload(&a, &d, &v2, &["reload"]);
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("change.runs")
            == ["v1", "v2"]
            && d.lines("fresh.runs") == ["v2"]),
        "the changed job restarted and the new one started; log:\n{}",
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || !alive(gone_pid)
            && passing_ports(&url, "gone").is_empty()),
        "the removed job is stopped and deregistered; log:\n{}",
        a.log()
    );
    assert_eq!(
        a.job_pid("keep"),
        Some(keep_pid),
        "the unchanged job keeps its process"
    );
    assert!(alive(keep_pid));
    let new_change = a.job_pid("change").expect("change runs again");
    assert_ne!(new_change, change_pid, "the changed job has a new process");
    assert!(!alive(change_pid));
    assert_eq!(passing_ports(&url, "keep"), [p_keep]);
    let log = a.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("deregistering") && l.contains("keep-")),
        "the unchanged job never left the catalog; log:\n{log}"
    );

    // A reload through the control socket with nothing changed restarts nothing.
    reload(&a, &d, &v2, &["-reload"]);
    assert!(wait_for(Duration::from_secs(5), || a
        .log()
        .matches("config reloaded")
        .count()
        == 2));
    assert_eq!(a.job_pid("keep"), Some(keep_pid));
    assert_eq!(a.job_pid("change"), Some(new_change));
    assert_eq!(d.lines("fresh.runs"), ["v2"]);

    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    assert!(!alive(keep_pid) && !alive(new_change));
}

#[test]
fn an_elected_job_keeps_its_leadership_across_a_reload() {
    let d = Dir::new("reload-leader");
    let port = free_port();
    let db = format!(
        r#"{{ name: "db", port: {port}, interfaces: ["static:127.0.0.1"],
       exec: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }},
       election: {{ name: "primary", ttl: "2s" }} }}"#
    );
    let demoted = r#"{ name: "on-demoted", when: { source: "db", each: "demoted" }, exec: "sh -c 'echo demoted >> @DIR@/demoted'" }"#;
    let v1 = config(&[db.clone(), demoted.to_string(), runner("side", "v1")]);
    let mut a = start(&d, &v1);
    a.ready();
    let leader = |a: &Agent| {
        let st = a.status();
        let job = st["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == "db").cloned())?;
        (job["election"]["leader"] == true).then(|| job["election"]["term"].as_u64())?
    };
    assert!(
        wait_for(Duration::from_secs(10), || leader(&a).is_some()),
        "db leads; log:\n{}",
        a.log()
    );
    let term = leader(&a).expect("term");
    let db_pid = a.job_pid("db").expect("db runs");

    // A blueprint reload that touches another job must not fail over.
    let v2 = config(&[runner("side", "v2"), db, demoted.to_string()]);
    reload(&a, &d, &v2, &["reload"]);
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("side.runs")
            == ["v1", "v2"]),
        "{}",
        a.log()
    );
    assert_eq!(
        leader(&a),
        Some(term),
        "same seat, same term; log:\n{}",
        a.log()
    );
    assert_eq!(a.job_pid("db"), Some(db_pid));
    assert!(
        d.read("demoted").is_empty(),
        "never demoted; log:\n{}",
        a.log()
    );
    assert!(!a.log().contains("no longer leader"), "{}", a.log());

    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
}

#[test]
fn a_changed_job_whose_start_event_already_happened_starts_again() {
    let d = Dir::new("reload-once");
    let v1 = r#"{ control: { socket: "@SOCKET@" }, jobs: [
      { name: "preStart", exec: "sh -c 'echo pre >> @DIR@/pre.runs'" },
      { name: "app", when: { source: "preStart", once: "exitSuccess" },
        exec: ["sh", "-c", "echo v1 >> @DIR@/app.runs; trap 'exit 0' TERM; while :; do sleep 0.1; done"] } ] }"#;
    let mut a = start(&d, v1);
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || d.lines("app.runs") == ["v1"]));
    reload(&a, &d, &v1.replace("echo v1", "echo v2"), &["reload"]);
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("app.runs")
            == ["v1", "v2"]),
        "the changed app starts: preStart already succeeded; log:\n{}",
        a.log()
    );
    assert_eq!(
        d.lines("pre.runs"),
        ["pre"],
        "the unchanged preStart does not run again"
    );
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
}

/// The leader term of `job`'s election as the agent sees it, while it leads.
fn term(a: &Agent, job: &str) -> Option<u64> {
    let st = a.status();
    let j = st["jobs"].as_array()?.iter().find(|j| j["name"] == job)?;
    (j["election"]["leader"] == true).then(|| j["election"]["term"].as_u64())?
}

#[test]
fn reloading_the_redis_blueprint_does_not_fail_over() {
    let c = common::redis::Cluster::new("reload-redis");
    let ports = [free_port(), free_port()];
    let nodes = [c.node("n1", ports[0]), c.node("n2", ports[1])];
    let mut master = 0;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let Some(m) = (0..2).find(|&i| term(&nodes[i], "redis").is_some()) else {
                return false;
            };
            master = m;
            common::redis::replicates(ports[1 - m], ports[m])
        }),
        "no master with a replica; logs:\n{}\n---\n{}",
        nodes[0].log(),
        nodes[1].log()
    );
    let before = term(&nodes[master], "redis").expect("term");
    let redis_pid = nodes[master].job_pid("redis").expect("redis runs");
    for n in &nodes {
        let (code, out) = n.cli(&["reload"]);
        assert_eq!(code, 0, "{out}");
    }
    assert!(
        wait_for(Duration::from_secs(10), || nodes
            .iter()
            .all(|n| n.log().contains("config reloaded"))),
        "{}",
        nodes[master].log()
    );
    assert_eq!(
        term(&nodes[master], "redis"),
        Some(before),
        "same seat, same term"
    );
    assert_eq!(
        nodes[master].job_pid("redis"),
        Some(redis_pid),
        "redis kept running"
    );
    assert_eq!(
        common::redis::info(ports[master], "role").as_deref(),
        Some("master")
    );
    assert!(common::redis::replicates(ports[1 - master], ports[master]));
    assert!(
        !nodes[master].log().contains("no longer leader"),
        "{}",
        nodes[master].log()
    );
}

#[test]
fn an_unchanged_watch_keeps_its_state_across_a_reload() {
    let d = Dir::new("reload-watch");
    let port = free_port();
    let jobs = |side: &str| {
        config(&[
            format!(
                r#"{{ name: "web", port: {port}, interfaces: ["static:127.0.0.1"],
       exec: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
       health: {{ exec: "test ! -e @DIR@/sick", interval: "100ms", ttl: 2 }} }}"#
            ),
            r#"{ name: "seen", when: { source: "watch.web", each: "changed" },
       exec: ["sh", "-c", "grep -c '\"port\"' \"$AUTOPILOT_WATCH_FILE\" >> @DIR@/seen"] }"#
                .to_string(),
            runner("side", side),
        ])
        .replace(
            "jobs: [",
            "watches: [{ name: \"web\", interval: 60 }], jobs: [",
        )
    };
    let mut a = start(&d, &jobs("v1"));
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("seen") == ["1"]),
        "{}",
        a.log()
    );
    reload(&a, &d, &jobs("v2"), &["reload"]);
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("side.runs")
            == ["v1", "v2"]),
        "{}",
        a.log()
    );
    // The next real change is the next event: the reload published none.
    d.write("sick", "");
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("seen").len() >= 2),
        "{}",
        a.log()
    );
    assert_eq!(d.lines("seen"), ["1", "0"], "{}", a.log());
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
}

#[test]
fn reloading_the_postgres_blueprint_keeps_the_primary() {
    assert!(
        std::path::Path::new("/usr/lib/postgresql").exists(),
        "PostgreSQL is not installed: run ./scripts/test, which installs it"
    );
    let dir = Dir::new("reload-pg");
    let etcd = autopilot_testkit::Etcd::single(&dir.0);
    let url = format!("etcd://{}/pg-reload", etcd.endpoint());
    let port = free_port();
    let mut env = blueprint_env(&dir, &url, "pg1");
    env.extend([
        ("PG_RUN".into(), dir.0.display().to_string()),
        ("PG_PORT".into(), port.to_string()),
        ("PGDATA".into(), dir.path("data-pg1").display().to_string()),
        ("PG_BIND".into(), "127.0.0.1".into()),
        (
            "PG_PASSWORD_FILE".into(),
            dir.path("pg-password").display().to_string(),
        ),
        (
            "PG_ARCHIVE_REPO".into(),
            dir.path("archive").display().to_string(),
        ),
    ]);
    // Authentication is on by default (an owner-only password file), and
    // the shared archive exists before the first node starts.
    std::fs::write(dir.path("pg-password"), "s3cret\n").expect("password");
    std::fs::set_permissions(
        dir.path("pg-password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    std::fs::create_dir(dir.path("archive")).expect("archive dir");
    let a = start_example_ready(
        "postgres",
        "postgres.json5",
        &dir.path("pg1.log"),
        &dir.path(&format!("autopilot-postgres-{port}.sock")),
        &env,
    );
    assert!(
        wait_for(Duration::from_secs(60), || term(&a, "postgres").is_some()
            && passing_ports(&url, "postgres") == [port]),
        "no primary; log:\n{}",
        a.log()
    );
    let before = term(&a, "postgres").expect("term");
    let pid = a.job_pid("postgres").expect("postgres runs");
    let (code, out) = a.cli(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || a
            .log()
            .contains("config reloaded")),
        "{}",
        a.log()
    );
    assert_eq!(term(&a, "postgres"), Some(before), "same seat, same term");
    assert_eq!(a.job_pid("postgres"), Some(pid), "postgres kept running");
    assert_eq!(passing_ports(&url, "postgres"), [port]);
    assert!(!a.log().contains("no longer leader"), "{}", a.log());
}

/// `autopilot leader NAME --json --catalog URL`: the seat as the catalog holds it.
// A test runs the real binary.
#[allow(clippy::disallowed_methods)]
fn seat(url: &str, election: &str) -> Option<(String, u64)> {
    let out = std::process::Command::new(bin())
        .args(["leader", election, "--json", "--catalog", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["id"].as_str()?.to_string(), v["term"].as_u64()?))
}

#[test]
fn a_changed_elected_job_takes_a_new_seat_its_old_campaign_cannot_delete() {
    let d = Dir::new("reload-elected");
    let port = free_port();
    // An advertise-only job stops at once, so a reload can adopt before the
    // old campaign has stepped down; a long TTL keeps a deleted seat from
    // being renewed into existence before the checks below give up.
    let db = |tag: &str| {
        format!(
            r#"{{ name: "db", port: {port}, interfaces: ["static:127.0.0.1"], tags: ["{tag}"], initial_status: "passing",
       election: {{ name: "primary", ttl: "30s" }} }}"#
        )
    };
    let peek = r#"{ name: "peek", when: { interval: "50ms" },
       exec: ["sh", "-c", "cat \"$AUTOPILOT_LEADER_PRIMARY_FILE\" > @DIR@/leader.tmp && mv @DIR@/leader.tmp @DIR@/leader.json"] }"#;
    let url = catalog(&d);
    let mut a = start(&d, &config(&[db("v0"), peek.to_string()]));
    a.ready();
    // What the agent and its children see, all of which must match the seat.
    let view = |a: &Agent, d: &Dir| {
        let st = a.status();
        let job = st["jobs"]
            .as_array()?
            .iter()
            .find(|j| j["name"] == "db")?
            .clone();
        let file: serde_json::Value = serde_json::from_str(&d.read("leader.json")).ok()?;
        Some((
            job["registration"]["id"].as_str()?.to_string(),
            job["election"]["term"].as_u64()?,
            job["election"]["current"]["term"].as_u64()?,
            file["id"].as_str()?.to_string(),
            file["term"].as_u64()?,
        ))
    };
    let consistent = |a: &Agent, d: &Dir, above: u64| {
        let (Some((id, term)), Some((me, t_job, t_current, f_id, f_term))) =
            (seat(&url, "primary"), view(a, d))
        else {
            return None;
        };
        (id == me
            && f_id == me
            && term > above
            && t_job == term
            && t_current == term
            && f_term == term)
            .then_some(term)
    };
    let mut term = 0;
    assert!(
        wait_for(Duration::from_secs(10), || consistent(&a, &d, 0)
            .inspect(|t| term = *t)
            .is_some()),
        "db leads; log:\n{}",
        a.log()
    );
    // The new version cannot campaign (its check never passes): the seat
    // the old one resigned stays free, and nothing on the node may still
    // name this node as the leader.
    let sick = format!(
        r#"{{ name: "db", port: {port}, interfaces: ["static:127.0.0.1"], tags: ["sick"],
       health: {{ exec: "false", interval: "100ms", ttl: 2 }},
       election: {{ name: "primary", ttl: "30s" }} }}"#
    );
    reload(&a, &d, &config(&[sick, peek.to_string()]), &["reload"]);
    let current = |a: &Agent| {
        let st = a.status();
        st["jobs"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == "db").cloned())
            .map(|j| j["election"]["current"].clone())
    };
    assert!(
        wait_for(Duration::from_secs(5), || seat(&url, "primary").is_none()
            && current(&a) == Some(serde_json::Value::Null)
            && d.read("leader.json").trim() == "null"),
        "the old campaign's step-down reached the agent after the reload: seat {:?}, \
         current {:?}, leader file {:?}; log:\n{}",
        seat(&url, "primary"),
        current(&a),
        d.read("leader.json"),
        a.log()
    );
    for round in 1..=4 {
        let before = term;
        // The tags change: the job restarts, and with it its campaign.
        reload(
            &a,
            &d,
            &config(&[db(&format!("v{round}")), peek.to_string()]),
            &["reload"],
        );
        assert!(
            wait_for(Duration::from_secs(5), || consistent(&a, &d, before)
                .inspect(|t| term = *t)
                .is_some()),
            "round {round}: after the reload the node holds a new seat (term above {before}), and the \
             agent, its status and the leader file say so; seat {:?}, view {:?}; log:\n{}",
            seat(&url, "primary"),
            view(&a, &d),
            a.log()
        );
    }
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    assert_eq!(
        seat(&url, "primary"),
        None,
        "the seat is handed over at exit"
    );
}

#[test]
fn stopping_a_changed_job_for_a_reload_fires_no_exit_handler() {
    let d = Dir::new("reload-exit-events");
    // No TERM trap: SIGTERM ends the job with a failure status.
    let app = |tag: &str| {
        format!(
            r#"{{ name: "app", exec: ["sh", "-c", "echo {tag} >> @DIR@/app.runs; exec sleep 600"] }}"#
        )
    };
    let on_fail = r#"{ name: "onFail", when: { source: "app", each: "exitFailed" },
       exec: "sh -c 'echo failed >> @DIR@/failed'" }"#;
    let late = r#"{ name: "late", when: { source: "app", once: "exitFailed" },
       exec: "sh -c 'echo late >> @DIR@/failed'" }"#;
    let mut a = start(&d, &config(&[app("v1"), on_fail.to_string()]));
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || d.lines("app.runs") == ["v1"]));
    reload(
        &a,
        &d,
        &config(&[app("v2"), on_fail.to_string(), late.to_string()]),
        &["reload"],
    );
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("app.runs")
            == ["v1", "v2"]),
        "{}",
        a.log()
    );
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some(), "{}", a.log());
    // The shutdown could kill a handler before it wrote its file: the log
    // says whether one was ever started.
    let log = a.log();
    let spawned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("job started") && (l.contains("onFail") || l.contains("late")))
        .collect();
    assert!(spawned.is_empty(), "handlers started: {spawned:?}");
    assert!(
        log.contains("job started"),
        "the log names started jobs: {log}"
    );
    assert!(
        d.lines("failed").is_empty(),
        "the run the reload stopped neither fired the kept handler nor started the new once-job; log:\n{}",
        a.log()
    );
}

#[test]
fn a_reload_that_changes_the_stderr_level_restarts_the_job() {
    let d = Dir::new("reload-stderr");
    let app = |logging: &str| {
        format!(
            r#"{{ name: "app", exec: ["sh", "-c", "echo run >> @DIR@/app.runs; echo on-stderr >&2; exec sleep 600"]{logging} }}"#
        )
    };
    let mut a = start(&d, &config(&[app("")]));
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || d.lines("app.runs") == ["run"]));
    reload(
        &a,
        &d,
        &config(&[app(r#", logging: { stderr: "info" }"#)]),
        &["reload"],
    );
    assert!(
        wait_for(Duration::from_secs(10), || d.lines("app.runs")
            == ["run", "run"]),
        "a changed logging.stderr is a changed job; log:\n{}",
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || a
            .log()
            .lines()
            .any(|l| l.contains("INFO") && l.contains("on-stderr"))),
        "the new run's stderr is at INFO; log:\n{}",
        a.log()
    );
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some(), "{}", a.log());
}
