//! `autopilot deploy` against the embedded catalog: creating rollouts (refusals, units from members), status as lines, bars and JSON, person actions, the CLI advancing the gate with `--watch`/`--wait`, exit codes, and a watcher killed mid-rollout.
//!
//! Member entries (`_artifacts.<name>`, the tags agents publish) are written
//! into the real catalog through the `Catalog` trait by the test, standing in
//! for the agents; artifact records are written with `autopilot kv put`.
//! Nothing is mocked, and no agent runs: every advance of a rollout here is
//! the CLI's.
// Tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_core::rollout::{self, Desired, Rollout, State};
use common::{Dir, bin, wait_for};

const A: &str = "api";
const WAIT: Duration = Duration::from_secs(30);

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// A real catalog the test writes member entries into.
struct Store {
    url: String,
    rt: tokio::runtime::Runtime,
    /// The members' session (their entries live on it).
    members: Arc<dyn Catalog>,
    etcd: Option<autopilot_testkit::Etcd>,
    dir: Dir,
}

impl Store {
    fn new(tag: &str) -> Store {
        let dir = Dir::new(tag);
        let path = dir.path("catalog");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // The catalog's change notifier is a task on this runtime.
        let members: Arc<dyn Catalog> = {
            let _in = rt.enter();
            Arc::new(
                autopilot_catalog_local::LocalCatalog::open(&path, "test-members")
                    .expect("open catalog"),
            )
        };
        Store {
            url: format!("local://{}", path.display()),
            rt,
            members,
            etcd: None,
            dir,
        }
    }

    fn etcd(tag: &str) -> Store {
        let dir = Dir::new(tag);
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let opts = autopilot_catalog_etcd::EtcdOptions {
            endpoints: vec![etcd.endpoint()],
            prefix: "/dp".into(),
            // Long enough that nothing expires during a test.
            lease_ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let members: Arc<dyn Catalog> = Arc::new(
            rt.block_on(autopilot_catalog_etcd::EtcdCatalog::connect(
                opts,
                "test-members",
            ))
            .expect("connect"),
        );
        Store {
            url: format!("etcd://{}/dp", etcd.endpoint()),
            rt,
            members,
            etcd: Some(etcd),
            dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("AUTOPILOT_CATALOG", &self.url)
            .env_remove("CONTAINERPILOT")
            .env_remove("AUTOPILOT_CONFIG")
            .stdin(Stdio::null());
        c
    }

    /// Runs the CLI to the end: (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the CLI in the background, its stdout and stderr in files.
    fn spawn(&self, args: &[&str], log: &str) -> Child {
        let out = std::fs::File::create(self.dir.path(&format!("{log}.out"))).expect("log");
        let err = std::fs::File::create(self.dir.path(&format!("{log}.err"))).expect("log");
        self.cmd(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn cli")
    }

    /// Pushes version `v` of the artifact the way an operator's script
    /// could: its record written with `autopilot kv put`.
    fn artifact(&self, v: &str, sha256: &str) {
        let record = serde_json::json!({
            "name": A, "version": v, "sha256": sha256, "size": 3, "kind": "file",
            "file": "server", "store": "file:///nowhere", "created": "2026-11-28T03:00:00.000Z",
            "by": "test@host",
        });
        let key = format!("_fleet/artifacts/{A}/{v}");
        let (code, _, err) = self.cli(&["kv", "put", &key, &record.to_string()]);
        assert_eq!(code, 0, "kv put: {err}");
    }

    /// Publishes instance `inst`'s member entry as its agent would.
    fn member(&self, inst: &str, sha256: &str, state: &str, rollout: Option<u64>, ok: bool) {
        let mut tags = vec![
            format!("sha={sha256}"),
            format!(
                "version={}",
                if sha256 == "original" {
                    "original"
                } else {
                    "v"
                }
            ),
            format!("state={state}"),
        ];
        if let Some(r) = rollout {
            tags.push(format!("rollout={r}"));
        }
        if state == "failed" {
            tags.push("reason=health check failed: exit 1".into());
        }
        let reg = Registration {
            id: format!("{A}.{inst}"),
            name: format!("_artifacts.{A}"),
            address: "127.0.0.1".into(),
            port: 8080,
            tags,
            status: if ok {
                Status::Passing
            } else {
                Status::Critical
            },
            ttl: Duration::from_secs(120),
            deregister_critical_after: None,
            seat: None,
        };
        self.rt
            .block_on(self.members.register(&reg))
            .expect("register member");
    }

    /// The latest rollout record, decoded (the test fails on a malformed one).
    fn latest(&self) -> Option<Rollout> {
        let list = self
            .rt
            .block_on(self.members.kv_list(&rollout::rollouts_prefix(A)))
            .expect("kv list");
        let (k, v) = list.last()?;
        let id = rollout::parse_rollout_key(A, k).expect("a rollout key");
        Some(rollout::decode(A, id, v).expect("a consistent record"))
    }

    /// Every instance does what the record wants of it, as a healthy agent
    /// would: the target (state ok, passing) or where it came from.
    fn converge(&self, insts: &[String], r: &Rollout) {
        for i in insts {
            match rollout::desired(Some(r), i) {
                Desired::Run(t) => self.member(i, &t.sha256, "ok", Some(r.id), true),
                Desired::Original => self.member(i, "original", "ok", None, true),
            }
        }
    }
}

fn instances(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("web-{i}")).collect()
}

/// Waits for a child to exit; kills it and fails when it does not.
fn exit_of(child: &mut Child, within: Duration) -> i32 {
    let mut code = None;
    let ended = wait_for(within, || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the CLI did not exit within {within:?}");
    }
    code.unwrap_or(-1)
}

/// A child that is killed when the test ends, whatever happens.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn create_computes_units_from_members_and_refuses_while_active() {
    let s = Store::new("deploy-create");
    let insts = instances(10);
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    s.artifact("1.0", &sha('a'));

    let (code, _, err) = s.cli(&["deploy", A, "9.9"]);
    assert_eq!(code, 1, "an unknown version is absent: {err}");
    assert!(err.contains("no version \"9.9\" of api"), "{err}");
    assert!(s.latest().is_none(), "nothing written");
    let (code, _, err) = s.cli(&["deploy", "../x", "1.0"]);
    assert_eq!(code, 2, "a bad name is refused: {err}");

    let (code, out, err) = s.cli(&["deploy", A, "1.0", "--units", "1,50%", "--probation", "5s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rollout 1 of api: 1.0 (from original)")
            && out.contains("units 1=1 50%=4 100%=5")
            && out.contains("probation 5s"),
        "one-line summary with unit sizes: {out}"
    );
    let r = s.latest().expect("record written");
    assert_eq!(r.id, 1);
    assert_eq!(r.state, State::Rolling);
    assert_eq!(
        r.unit_sizes,
        vec![1, 4, 5],
        "units computed from the 10 members"
    );
    assert_eq!(r.target.sha256, sha('a'));
    assert_eq!(r.probation_ms, 5000);
    assert!(r.from.is_none() && r.rollback);
    let in_first: Vec<_> = insts
        .iter()
        .filter(|i| rollout::unit_of(&r, i) == 0)
        .collect();
    assert_eq!(in_first.len(), 1, "one instance in the first unit");

    s.artifact("2.0", &sha('b'));
    let (code, _, err) = s.cli(&["deploy", A, "2.0"]);
    assert_eq!(code, 2, "refused while rollout 1 rolls: {err}");
    assert!(
        err.contains("rollout 1 of api") && err.contains("deploy abort api"),
        "names the rollout and the way out: {err}"
    );
    assert_eq!(s.latest().map(|r| r.id), Some(1), "nothing written");

    let (code, _, err) = s.cli(&["deploy", "abort", A]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.cli(&["deploy", A, "2.0", "--no-rollback", "-o", "json"]);
    assert_eq!(code, 0, "a new rollout after an abort: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("the record as JSON");
    assert_eq!(v["id"], 2);
    assert_eq!(v["rollback"], false);
    assert!(
        v["from"].is_null(),
        "an aborted rollout did not change the fleet's version: {out}"
    );
    let (code, out, _) = s.cli(&["deploy", "history", A]);
    assert_eq!(code, 0);
    let rows: Vec<_> = out.lines().skip(1).collect();
    assert!(
        rows.len() == 2 && rows[0].starts_with("2 ") && rows[1].contains("aborted"),
        "history, newest first: {out}"
    );
}

#[test]
fn status_as_lines_bars_and_json() {
    let s = Store::new("deploy-status");
    let insts = instances(4);
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    s.artifact("1.0", &sha('a'));
    let (code, _, err) = s.cli(&["deploy", "status", A]);
    assert_eq!(code, 1, "no rollout yet: {err}");
    let (code, _, err) = s.cli(&["deploy", A, "1.0", "--units", "2,100%"]);
    assert_eq!(code, 0, "{err}");
    let r = s.latest().expect("record");
    // One instance of the first unit runs the target and passed probation,
    // the other failed with a reason.
    let first: Vec<_> = insts
        .iter()
        .filter(|i| rollout::unit_of(&r, i) == 0)
        .collect();
    assert_eq!(first.len(), 2);
    s.member(first[0], &sha('a'), "ok", Some(1), true);
    s.member(first[1], &sha('a'), "probation", Some(1), true);

    let (code, out, err) = s.cli(&["deploy", "status", A]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("rollout 1 of api: rolling, unit 1 of 2"),
        "{out}"
    );
    assert!(
        out.contains("unit 1 (2): rolling, 2 instances, 2 on 1.0, 1 ok, 0 failed"),
        "a pipe gets plain lines: {out}"
    );
    assert!(
        out.contains("unit 2 (100%): waiting, 2 instances, 0 on 1.0"),
        "{out}"
    );
    assert!(!out.contains('#'), "no bars in a pipe: {out}");
    assert!(
        out.contains(&format!(
            "unit 1 (2): rolling, 2 instances, 2 on 1.0, 1 ok, 0 failed\n    waiting for: {} (probation)\n",
            first[1]
        )),
        "what holds the gate, under the unit being rolled: {out}"
    );

    // A terminal gets bars (`script` gives the CLI a pseudo-terminal).
    let line = format!("{} deploy status {A} --catalog {}", bin(), s.url);
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        tty.contains("[##########] 2/2 on 1.0, 1 ok") && tty.contains("[..........] 0/2 on 1.0"),
        "bars on a terminal: {tty}"
    );

    let (code, out, err) = s.cli(&["deploy", "status", A, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["rollout"]["state"], "rolling");
    assert_eq!(v["units"][0]["onTarget"], 2);
    assert_eq!(v["units"][0]["ok"], 1);
    assert_eq!(v["units"][1]["phase"], "waiting");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        v["waiting_for"],
        serde_json::json!([{"instance": first[1], "why": "probation"}])
    );
}

/// A new rollout first marks the one it replaces (so a rollback written
/// meanwhile makes it lose rather than being undone); a record marked
/// replaced refuses every action (exit 2), and `deploy` finishes the job
/// of one that stopped between its two writes.
#[test]
fn a_replaced_rollout_is_marked_and_refuses_actions() {
    let s = Store::new("deploy-supersede");
    for i in &instances(3) {
        s.member(i, "original", "ok", None, true);
    }
    s.artifact("1.0", &sha('a'));
    s.artifact("2.0", &sha('b'));
    assert_eq!(s.cli(&["deploy", A, "1.0"]).0, 0);
    assert_eq!(s.cli(&["deploy", "abort", A]).0, 0);
    let (code, _, err) = s.cli(&["deploy", A, "2.0"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = s.cli(&["deploy", "history", A]);
    assert_eq!(code, 0);
    let rows: Vec<_> = out.lines().skip(1).collect();
    assert!(
        rows.len() == 2
            && rows[1].starts_with("1 ")
            && rows[1].ends_with("(replaced by rollout 2)")
            && !rows[0].contains("replaced"),
        "history names the replacement: {out}"
    );

    // A deploy that stopped after marking rollout 1 but before writing 2.
    let (code, _, err) = s.cli(&["kv", "del", &rollout::rollout_key(A, 2)]);
    assert_eq!(code, 0, "{err}");
    let r = s.latest().expect("record");
    assert_eq!((r.id, r.superseded_by), (1, Some(2)));
    for verb in ["pause", "rollback", "abort", "resume"] {
        let (code, _, err) = s.cli(&["deploy", verb, A]);
        assert_eq!(code, 2, "{verb} of a replaced rollout is refused: {err}");
        assert!(err.contains("a newer rollout replaced it"), "{err}");
    }
    assert_eq!(
        s.latest().map(|r| r.state),
        Some(State::Aborted),
        "unchanged"
    );
    let (code, out, _) = s.cli(&["deploy", "status", A]);
    assert!(code == 0 && out.contains("replaced by rollout 2"), "{out}");
    let (code, out, err) = s.cli(&["deploy", A, "2.0"]);
    assert_eq!(code, 0, "the next deploy writes rollout 2: {err}");
    assert!(
        out.contains("rollout 2 of api: 2.0 (from original)"),
        "an aborted rollout did not change the fleet's version: {out}"
    );
}

/// With no live member, a rollout completes at once: `deploy` says so on stderr.
#[test]
fn a_rollout_without_members_warns() {
    let s = Store::new("deploy-empty");
    s.artifact("1.0", &sha('a'));
    let (code, out, err) = s.cli(&["deploy", A, "1.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("completed"), "{out}");
    assert!(
        err.contains(
            "no live instance of api: the rollout completed at once; every instance that starts gets 1.0"
        ),
        "{err}"
    );
}

/// Catalog text (here the writer's name, from a hostile hostname) reaches a
/// terminal without its control characters.
#[test]
fn catalog_text_is_printed_without_control_characters() {
    let s = Store::new("deploy-clean");
    s.member("web-0", "original", "ok", None, true);
    s.artifact("1.0", &sha('a'));
    let out = s
        .cmd(&["deploy", A, "1.0"])
        .env("AUTOPILOT_HOSTNAME", "h\u{1b}[2J\u{7}ost")
        .output()
        .expect("run cli");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = s.latest().expect("record");
    assert!(r.by.contains('\u{1b}'), "the record keeps what was written");
    for args in [
        vec!["deploy", "status", A],
        vec!["deploy", "history", A],
        vec!["deploy", "pause", A],
    ] {
        let (code, out, err) = s.cli(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: {out:?}"
        );
    }
    let (_, out, _) = s.cli(&["deploy", "status", A]);
    assert!(out.contains("h [2J ost"), "{out:?}");
}

#[test]
fn person_actions_are_transitions_and_refusals_exit_2() {
    let s = Store::new("deploy-actions");
    for i in &instances(3) {
        s.member(i, "original", "ok", None, true);
    }
    s.artifact("1.0", &sha('a'));
    let (code, _, err) = s.cli(&["deploy", "pause", A]);
    assert_eq!(code, 1, "no rollout to pause: {err}");
    assert_eq!(s.cli(&["deploy", A, "1.0"]).0, 0);

    let state = |s: &Store| s.latest().map(|r| r.state);
    let (code, out, err) = s.cli(&["deploy", "pause", A]);
    assert_eq!((code, out.trim()), (0, "rollout 1 of api: paused"), "{err}");
    assert_eq!(state(&s), Some(State::Paused));
    let (code, _, err) = s.cli(&["deploy", "pause", A]);
    assert_eq!(code, 2, "only a rolling rollout pauses: {err}");
    assert!(err.contains("rollout 1 of api is paused"), "{err}");

    let (code, _, err) = s.cli(&["deploy", "resume", A]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state(&s), Some(State::Rolling));
    let (code, _, _) = s.cli(&["deploy", "resume", A]);
    assert_eq!(code, 2, "only a paused rollout resumes");

    let (code, _, err) = s.cli(&["deploy", "rollback", A]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(state(&s), Some(State::RollingBack));
    let (code, _, err) = s.cli(&["deploy", "rollback", A]);
    assert_eq!(code, 2, "already rolling back: {err}");

    let (code, _, err) = s.cli(&["deploy", "abort", A]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        state(&s),
        Some(State::RolledBack),
        "aborting a rollback ends it rolled back, never forward again"
    );
    let (code, _, err) = s.cli(&["deploy", "abort", A]);
    assert_eq!(code, 2, "already ended: {err}");
    let r = s.latest().expect("record");
    let whats: Vec<_> = r.events.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(whats.len(), 5, "every action is an event: {whats:?}");

    // Watching an ended rollout prints it and exits with its outcome.
    let (code, out, _) = s.cli(&["deploy", "status", A, "--watch"]);
    assert_eq!(code, 1, "rolled back: exit 1 ({out})");
}

#[test]
fn unreachable_catalog_exits_3() {
    let d = Dir::new("deploy-unreachable");
    let missing = format!("local://{}", d.path("none").display());
    for args in [vec!["deploy", "status", A], vec!["deploy", "history", A]] {
        let out = Command::new(bin())
            .args(&args)
            .args(["--catalog", &missing])
            .env_remove("AUTOPILOT_CATALOG")
            .env_remove("CONTAINERPILOT")
            .env_remove("AUTOPILOT_CONFIG")
            .output()
            .expect("run cli");
        assert_eq!(out.status.code(), Some(3), "{args:?}: {:?}", out);
    }
    // An etcd nobody listens on, within --timeout.
    let out = Command::new(bin())
        .args([
            "deploy",
            "pause",
            A,
            "--catalog",
            "etcd://127.0.0.1:9/x",
            "--timeout",
            "1s",
        ])
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .output()
        .expect("run cli");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// The CLI's `--watch` advances a rollout unit by unit as the members
/// report ok, and exits 0 once it completed. No agent runs: only the
/// watcher can move the record.
#[test]
fn watch_advances_units_and_exits_0_on_completion() {
    watch_advances(Store::new("deploy-watch"));
}

/// The same on etcd: its compare-and-swap and its watch drive the CLI.
#[test]
fn watch_advances_units_on_etcd() {
    watch_advances(Store::etcd("deploy-watch-etcd"));
}

fn watch_advances(s: Store) {
    let insts = instances(6);
    s.artifact("1.0", &sha('a'));
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    let (code, _, err) = s.cli(&["deploy", A, "1.0", "--units", "1,50%,100%"]);
    assert_eq!(code, 0, "{err}");
    let mut watch = Reaped(s.spawn(&["deploy", "status", A, "--watch"], "watch"));

    let mut seen = vec![0usize];
    loop {
        let r = s.latest().expect("record");
        if r.state == State::Completed {
            break;
        }
        assert_eq!(r.state, State::Rolling, "{r:?}");
        let unit = r.unit;
        s.converge(&insts, &r);
        assert!(
            wait_for(WAIT, || s
                .latest()
                .is_some_and(|n| n.unit > unit || n.state == State::Completed)),
            "the watcher advanced unit {unit}"
        );
        seen.push(s.latest().map_or(0, |n| n.unit));
    }
    assert_eq!(exit_of(&mut watch.0, WAIT), 0, "completed: exit 0");
    let r = s.latest().expect("record");
    assert_eq!(r.unit, 2);
    assert!(
        r.events.iter().any(|e| e.what.starts_with("completed")),
        "{:?}",
        r.events
    );
    let out = s.dir.read("watch.out");
    assert!(out.contains("rollout 1 of api: completed"), "{out}");
}

/// `deploy status --watch` rides out a catalog that stops answering for a
/// while (etcd stalled): it says so on stderr, retries, and still follows
/// the rollout to its end.
#[test]
fn watch_survives_a_stalled_catalog() {
    let s = Store::etcd("deploy-watch-stall");
    let insts = instances(2);
    s.artifact("1.0", &sha('a'));
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    let (code, _, err) = s.cli(&["deploy", A, "1.0", "--units", "100%"]);
    assert_eq!(code, 0, "{err}");
    let mut watch = Reaped(s.spawn(
        &["deploy", "status", A, "--watch", "--timeout", "1s"],
        "watch",
    ));
    assert!(
        wait_for(WAIT, || s.dir.read("watch.out").contains("rolling")),
        "first drawing: {}",
        s.dir.read("watch.err")
    );
    let etcd = s.etcd.as_ref().expect("etcd");
    etcd.pause();
    let stalled = wait_for(WAIT, || s.dir.read("watch.err").contains("retrying"));
    etcd.resume();
    assert!(stalled, "the watcher reported a failed read");
    assert_eq!(
        watch.0.try_wait().ok().flatten().and_then(|st| st.code()),
        None,
        "still watching: {}",
        s.dir.read("watch.err")
    );
    let r = s.latest().expect("record");
    s.converge(&insts, &r);
    assert_eq!(
        exit_of(&mut watch.0, WAIT),
        0,
        "completed: exit 0 ({})",
        s.dir.read("watch.err")
    );
}

/// `deploy --wait` on a bad version: the first unit's instance fails, the
/// CLI rolls the rollout back, the instances return, and it exits 1 with
/// the failure and its reason on record.
#[test]
fn wait_rolls_back_a_failed_unit_and_exits_1() {
    let s = Store::new("deploy-wait");
    let insts = instances(4);
    s.artifact("1.0", &sha('a'));
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    let mut wait = Reaped(s.spawn(&["deploy", A, "1.0", "--wait"], "wait"));
    assert!(wait_for(WAIT, || s.latest().is_some()), "rollout created");
    let r = s.latest().expect("record");
    let first: Vec<_> = insts
        .iter()
        .filter(|i| rollout::unit_of(&r, i) == 0)
        .collect();
    assert_eq!(first.len(), 1);
    s.member(first[0], &sha('a'), "failed", Some(r.id), false);
    assert!(
        wait_for(WAIT, || s
            .latest()
            .is_some_and(|n| n.state == State::RollingBack)),
        "the CLI stopped the rollout"
    );
    let r = s.latest().expect("record");
    assert_eq!(r.unit, 0, "no further unit started");
    assert_eq!(r.failures.len(), 1);
    assert!(
        r.failures[0].reason.contains("health check failed"),
        "{r:?}"
    );
    let (_, out, _) = s.cli(&["deploy", "status", A]);
    assert!(
        out.contains(first[0].as_str()) && out.contains("health check failed"),
        "status lists the failure with its reason: {out}"
    );
    s.converge(&insts, &r);
    assert_eq!(exit_of(&mut wait.0, WAIT), 1, "rolled back: exit 1");
    assert_eq!(s.latest().map(|n| n.state), Some(State::RolledBack));
}

/// A watcher SIGKILLed mid-rollout leaves a record that decodes and holds
/// one state; another `deploy status --watch` takes over and finishes it.
#[test]
fn a_watcher_killed_mid_rollout_leaves_a_record_another_finishes() {
    let s = Store::new("deploy-kill");
    let insts = instances(5);
    s.artifact("1.0", &sha('a'));
    for i in &insts {
        s.member(i, "original", "ok", None, true);
    }
    assert_eq!(s.cli(&["deploy", A, "1.0", "--units", "1,100%"]).0, 0);
    let mut first = Reaped(s.spawn(&["deploy", "status", A, "--watch"], "w1"));
    let r = s.latest().expect("record");
    s.converge(&insts, &r);
    assert!(
        wait_for(WAIT, || s.latest().is_some_and(|n| n.unit == 1)),
        "the first watcher advanced unit 1"
    );
    first.0.kill().expect("kill -9 the watcher");
    let _ = first.0.wait();
    let r = s.latest().expect("the record decodes after the kill");
    assert_eq!((r.state, r.unit), (State::Rolling, 1));

    s.converge(&insts, &r);
    let mut second = Reaped(s.spawn(&["deploy", "status", A, "--watch"], "w2"));
    assert_eq!(
        exit_of(&mut second.0, WAIT),
        0,
        "the second watcher finished it"
    );
    assert_eq!(s.latest().map(|n| n.state), Some(State::Completed));
}

/// Deploys racing for the same artifact: the compare-and-swap from absent
/// lets exactly one write its rollout; the others re-read, find it rolling
/// and refuse (exit 2). No record is overwritten.
#[test]
fn racing_deploys_create_exactly_one_rollout() {
    let s = Store::new("deploy-race");
    for i in &instances(3) {
        s.member(i, "original", "ok", None, true);
    }
    s.artifact("1.0", &sha('a'));
    let mut racers: Vec<Reaped> = (0..4)
        .map(|n| Reaped(s.spawn(&["deploy", A, "1.0"], &format!("race{n}"))))
        .collect();
    let mut codes: Vec<i32> = racers.iter_mut().map(|c| exit_of(&mut c.0, WAIT)).collect();
    codes.sort_unstable();
    assert_eq!(codes, vec![0, 2, 2, 2], "one winner, the others refused");
    let (_, out, _) = s.cli(&["deploy", "history", A, "-o", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v.len(), 1, "one record: {out}");
}

/// Only the newest 50 records of an artifact are kept.
#[test]
fn old_records_are_pruned_to_50() {
    let s = Store::new("deploy-prune");
    s.artifact("1.0", &sha('a'));
    // No member: each rollout completes at once, so the next may start.
    for _ in 0..53 {
        let (code, _, err) = s.cli(&["deploy", A, "1.0"]);
        assert_eq!(code, 0, "{err}");
    }
    let (_, out, _) = s.cli(&["deploy", "history", A, "-o", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let ids: Vec<u64> = v.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids.len(), 50, "{ids:?}");
    assert_eq!(
        (ids[0], ids[49]),
        (53, 4),
        "newest first, the oldest 3 gone"
    );
}
