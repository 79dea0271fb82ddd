//! The cluster commands against a real etcd and the embedded catalog: `cluster list`, refusals, pause/resume, switchover and failover intents (written, completed, withdrawn on timeout).
//!
//! Member records and seats are written into the real catalog through the
//! `Catalog` trait by the test, standing in for the agents; nothing is mocked.
// Tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Candidate, Catalog, Registration, Status, now_ms};
use common::{Dir, bin, wait_for};

const E: &str = "pg";

/// A real catalog the test writes member records and seats into.
struct Store {
    url: String,
    rt: tokio::runtime::Runtime,
    /// The members' session (their records live on it).
    members: Arc<dyn Catalog>,
    /// The leader's session (it holds the seat).
    seat: Arc<dyn Catalog>,
    _etcd: Option<autopilot_testkit::Etcd>,
}

impl Store {
    fn local(d: &Dir) -> Store {
        let dir = d.path("catalog");
        let rt = runtime();
        // The catalog's change notifier is a task on this runtime.
        let _in = rt.enter();
        let open = |owner: &str| -> Arc<dyn Catalog> {
            Arc::new(
                autopilot_catalog_local::LocalCatalog::open(&dir, owner).expect("open catalog"),
            )
        };
        Store {
            url: format!("local://{}", dir.display()),
            members: open("test-members"),
            seat: open("test-seat"),
            rt,
            _etcd: None,
        }
    }

    fn etcd(d: &Dir) -> Store {
        let etcd = autopilot_testkit::Etcd::single(&d.0);
        let rt = runtime();
        let open = |owner: &str| -> Arc<dyn Catalog> {
            let opts = autopilot_catalog_etcd::EtcdOptions {
                endpoints: vec![etcd.endpoint()],
                prefix: "/cl".into(),
                // Long enough that nothing expires during a test.
                lease_ttl: Duration::from_secs(60),
                ..Default::default()
            };
            Arc::new(
                rt.block_on(autopilot_catalog_etcd::EtcdCatalog::connect(opts, owner))
                    .expect("connect"),
            )
        };
        Store {
            url: format!("etcd://{}/cl", etcd.endpoint()),
            members: open("test-members"),
            seat: open("test-seat"),
            rt,
            _etcd: Some(etcd),
        }
    }

    fn member(&self, id: &str, status: Status, tags: &[&str]) {
        self.member_in(E, id, status, tags);
    }

    fn member_in(&self, election: &str, id: &str, status: Status, tags: &[&str]) {
        let reg = Registration {
            id: format!("{election}.{id}"),
            name: format!("_members.{election}"),
            address: "127.0.0.1".into(),
            port: 5432,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status,
            ttl: Duration::from_secs(60),
            deregister_critical_after: None,
            seat: None,
        };
        self.rt
            .block_on(self.members.register(&reg))
            .expect("register member");
    }

    /// `id` wins the seat on `cat`'s session; returns the term.
    fn lead(&self, cat: &Arc<dyn Catalog>, id: &str) -> u64 {
        let me = Candidate {
            id: id.into(),
            address: "127.0.0.1".into(),
            port: 5432,
        };
        self.rt
            .block_on(cat.campaign(E, &me, Duration::from_secs(60)))
            .expect("campaign")
            .expect("wins the seat")
    }

    fn leader_id(&self) -> Option<String> {
        self.rt
            .block_on(self.members.leader(E))
            .expect("leader")
            .map(|l| l.id)
    }

    fn kv(&self, key: &str) -> Option<String> {
        self.rt.block_on(self.members.kv_get(key)).expect("kv get")
    }

    fn intent(&self, what: &str) -> Option<serde_json::Value> {
        self.kv(&format!("_cluster/{E}/{what}"))
            .map(|v| serde_json::from_str(&v).expect("an intent is JSON"))
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
        split(out)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cli")
    }

    fn list_json(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["cluster", "list", E, "-o", "json"]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).expect("cluster list json")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn split(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for a spawned CLI (killing it past `within`).
fn finish(mut child: Child, within: Duration) -> (i32, String, String) {
    let done = wait_for(within, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("cli output");
    assert!(done, "the command did not end within {within:?}");
    split(out)
}

/// A leader `a` (position 100, priority 2), a replica `b` 10 behind with
/// maxlag 5, a broken `c` with hostile tags, `d` with priority 0, `e` 5
/// behind with no limit.
fn cluster(s: &Store) -> u64 {
    s.member(
        "a",
        Status::Passing,
        &["probe=127.0.0.1:1", "priority=2", "position=100"],
    );
    s.member("b", Status::Passing, &["position=90", "maxlag=5"]);
    s.member(
        "c",
        Status::Critical,
        &[
            "priority=abc",
            "=",
            "position=-1",
            "maxlag=",
            "novalue",
            "suspect=x=y",
            "\u{0}",
        ],
    );
    s.member("d", Status::Passing, &["priority=0", "position=100"]);
    s.member("e", Status::Passing, &["position=95", "suspect=3"]);
    s.lead(&s.seat, "a")
}

fn member<'a>(list: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    list["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no member {id} in {list}"))
}

fn list_body(s: &Store) {
    let term = cluster(s);
    let (code, out, err) = s.cli(&["pause", E]);
    assert_eq!(code, 0, "{out}{err}");

    let v = s.list_json();
    assert_eq!(v["election"], E);
    assert_eq!(v["leader"]["id"], "a");
    assert_eq!(v["leader"]["term"], term);
    assert_eq!(v["paused"], true);
    assert!(v["switchover"].is_null() && v["failover"].is_null(), "{v}");
    let ids: Vec<_> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let a = member(&v, "a");
    assert_eq!(
        (
            &a["role"],
            &a["health"],
            &a["position"],
            &a["lag"],
            &a["priority"]
        ),
        (
            &"leader".into(),
            &"passing".into(),
            &100.into(),
            &0.into(),
            &2.into()
        )
    );
    assert!(a["maxLag"].is_null() && a["suspect"].is_null(), "{a}");
    assert_eq!(a["address"], "127.0.0.1");
    assert_eq!(a["port"], 5432);
    assert!(
        a["lastHeartbeat"]
            .as_str()
            .is_some_and(|h| h.ends_with('Z')),
        "{a}"
    );
    let b = member(&v, "b");
    assert_eq!(
        (&b["role"], &b["lag"], &b["maxLag"], &b["priority"]),
        (&"replica".into(), &10.into(), &5.into(), &1.into())
    );
    // Hostile tags are absent values, never a failure.
    let c = member(&v, "c");
    assert_eq!(
        (&c["role"], &c["health"], &c["lag"], &c["priority"]),
        (&"-".into(), &"critical".into(), &100.into(), &1.into())
    );
    assert!(c["position"].is_null() && c["maxLag"].is_null() && c["suspect"].is_null());
    assert_eq!(member(&v, "e")["suspect"], 3);

    let (code, out, err) = s.cli(&["cluster", "list", E]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(&format!("a leads at term {term}")) && lines[0].contains("PAUSED"),
        "{out}"
    );
    for col in [
        "MEMBER",
        "ROLE",
        "TERM",
        "HEALTH",
        "POSITION",
        "LAG",
        "PRIORITY",
        "HEARTBEAT",
    ] {
        assert!(lines[1].contains(col), "{out}");
    }
    let row = |id: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row {id}: {out}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        row("a")[..7],
        ["a", "leader", &term.to_string(), "passing", "100", "0", "2"]
    );
    assert_eq!(
        row("b")[..7],
        ["b", "replica", "-", "passing", "90", "10", "1"]
    );
    assert_eq!(row("c")[..7], ["c", "-", "-", "critical", "-", "100", "1"]);

    // Resumed: the first line says so.
    assert_eq!(s.cli(&["resume", E]).0, 0);
    let (_, out, _) = s.cli(&["cluster", "list", E]);
    assert!(
        out.lines().next().is_some_and(|l| l.contains("not paused")),
        "{out}"
    );

    // Hostile text reaches neither the terminal raw nor the JSON mangled.
    s.member_in(
        "odd",
        "x\u{1b}[2J\ny",
        Status::Passing,
        &["position=\u{1b}]0;t\u{7}"],
    );
    s.rt.block_on(s.members.kv_put(
        "_cluster/odd/switchover",
        r#"{"from": "\u001b[31m", "to": 7}"#,
    ))
    .expect("put");
    s.rt.block_on(s.members.kv_put("_cluster/odd/failover", "not json"))
        .expect("put");
    let (code, out, err) = s.cli(&["cluster", "list", "odd"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains('\u{1b}') && out.lines().count() == 3,
        "{out:?}"
    );
    assert!(
        out.contains("switchover pending") && out.contains("failover pending"),
        "{out}"
    );
    let (code, out, _) = s.cli(&["cluster", "list", "odd", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["members"][0]["id"], "x\u{1b}[2J\ny");
    assert!(v["members"][0]["position"].is_null(), "{v}");
    assert_eq!(v["failover"], serde_json::json!({"invalid": "not json"}));
    assert_eq!(v["switchover"]["from"], "\u{1b}[31m");

    // An election nobody runs is an empty table, not an error.
    let (code, out, _) = s.cli(&["cluster", "list", "nobody", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["leader"].is_null() && v["members"].as_array().is_some_and(Vec::is_empty));
}

fn refusals_body(s: &Store) {
    cluster(s);
    let refused = |args: &[&str], code: i32, says: &str| {
        let (c, out, err) = s.cli(args);
        assert_eq!(c, code, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?} must say {says:?}: {err}");
    };
    refused(
        &["switchover", E, "--to", "zz"],
        2,
        "\"zz\" is not a member of pg",
    );
    refused(&["switchover", E, "--to", "a"], 2, "a already leads");
    refused(
        &["switchover", E, "--to", "c"],
        2,
        "c is critical, not passing",
    );
    refused(
        &["switchover", E, "--to", "b"],
        2,
        "b lags by 10, beyond its maxLag of 5",
    );
    // Priority 0 keeps d out of automatic choices only: named with --to it is
    // an explicit choice (as with failover --to), not refused; nobody acts on
    // the intent here, so the wait runs out (3) and the intent is withdrawn.
    let (c, out, err) = s.cli(&["switchover", E, "--to", "d", "--timeout", "1s"]);
    assert_eq!(c, 3, "priority 0 named with --to is allowed: {out}{err}");
    assert!(err.contains("did not complete within 1s"), "{err}");
    refused(
        &["switchover", E, "--to", "e", "--max-lag", "3"],
        2,
        "e lags by 5, beyond --max-lag of 3",
    );
    refused(
        &["switchover", E, "--max-lag", "1"],
        2,
        "no member of pg other than the leader",
    );
    refused(&["switchover", E, "--at", "yesterday"], 2, "--at");
    refused(
        &["switchover", E, "--at", "2000-01-01T00:00:00Z"],
        2,
        "is in the past",
    );
    refused(
        &["failover", E, "--to", "e"],
        2,
        "a leads pg and is passing: use `autopilot switchover",
    );
    // A leader whose record is not critical keeps its seat: failover ends
    // only a seat whose holder's own record says critical.
    s.member("a", Status::Warning, &["position=100"]);
    refused(
        &["failover", E, "--to", "e"],
        2,
        "a leads pg and is warning, not critical: its seat is not ended",
    );
    s.member("a", Status::Passing, &["position=100"]);
    // A leader without a member record (an older agent, a job without an
    // address) may be healthy: refused, and its seat is never ended.
    s.member_in("norec", "x", Status::Passing, &[]);
    let holder = Candidate {
        id: "z".into(),
        address: "127.0.0.1".into(),
        port: 5432,
    };
    s.rt.block_on(s.seat.campaign("norec", &holder, Duration::from_secs(60)))
        .expect("campaign")
        .expect("z wins norec");
    refused(
        &["failover", "norec", "--to", "x"],
        2,
        "z leads norec (term",
    );
    let (_, _, err) = s.cli(&["failover", "norec", "--to", "x"]);
    assert!(err.contains("has no member record"), "{err}");
    assert_eq!(
        s.rt.block_on(s.members.leader("norec"))
            .expect("leader")
            .map(|l| l.id)
            .as_deref(),
        Some("z"),
        "the seat of a leader without a record is never ended"
    );
    refused(&["reinit", E, "a"], 2, "a leads pg");
    refused(&["reinit", E, "zz"], 1, "\"zz\" is not a member of pg");
    refused(&["switchover", "a/b"], 2, "invalid election name");
    refused(&["pause", ""], 2, "invalid election name");
    // Nobody leads: switchover points at failover.
    s.member_in("empty", "x", Status::Passing, &[]);
    refused(
        &["switchover", "empty", "--to", "x"],
        2,
        "nobody leads empty: use `autopilot failover",
    );
    // No refusal wrote anything.
    let keys =
        s.rt.block_on(s.members.kv_list("_cluster/"))
            .expect("kv ls");
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(s.leader_id().as_deref(), Some("a"));
}

fn pause_body(s: &Store) {
    let (code, out, err) = s.cli(&["pause", E]);
    assert_eq!(code, 0, "{out}{err}");
    let first = s.intent("paused").expect("paused");
    let since = first["since_ms"].as_u64().expect("since_ms");
    assert!(since.abs_diff(now_ms()) < 60_000, "{first}");
    let (code, out, _) = s.cli(&["pause", E]);
    assert_eq!(code, 0);
    assert!(out.contains("already paused"), "{out}");
    assert_eq!(
        s.intent("paused"),
        Some(first),
        "a second pause keeps the first"
    );
    assert_eq!(s.list_json()["paused"], true);
    let (code, out, _) = s.cli(&["resume", E, "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["changed"],
        true
    );
    assert_eq!(s.intent("paused"), None);
    let (code, out, _) = s.cli(&["resume", E]);
    assert_eq!(code, 0);
    assert!(out.contains("was not paused"), "{out}");
    assert_eq!(s.list_json()["paused"], false);
}

fn switchover_body(s: &Store) {
    cluster(s);
    // Nobody acts on it: the intent is written, then withdrawn at the timeout.
    let t = now_ms();
    let child = s.spawn(&["switchover", E, "--to", "e", "--timeout", "2s"]);
    let mut seen = None;
    assert!(wait_for(Duration::from_secs(5), || {
        seen = s.intent("switchover");
        seen.is_some()
    }));
    let v = seen.expect("intent");
    assert_eq!((&v["from"], &v["to"]), (&"a".into(), &"e".into()), "{v}");
    let at = v["at_ms"].as_u64().expect("at_ms");
    let deadline = v["deadline_ms"].as_u64().expect("deadline_ms");
    assert!(at >= t && at <= now_ms(), "{v}");
    assert!(
        deadline.abs_diff(at + 2_000) < 1_000,
        "deadline = now + --timeout: {v}"
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(4), "{v}");
    let (code, out, err) = finish(child, Duration::from_secs(10));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("did not complete within 2s") && err.contains("withdrawn"),
        "{err}"
    );
    assert_eq!(s.intent("switchover"), None, "withdrawn on timeout");
    assert_eq!(s.leader_id().as_deref(), Some("a"));

    // The test acts as the agents: the leader resigns, the target wins and
    // deletes the intent; the command reports the new leader and its term.
    let child = s.spawn(&["switchover", E, "-o", "json"]);
    let mut seen = None;
    assert!(wait_for(Duration::from_secs(5), || {
        seen = s.intent("switchover");
        seen.is_some()
    }));
    assert!(seen.expect("intent")["to"].is_null(), "no --to: to is null");
    s.rt.block_on(s.seat.resign(E)).expect("resign");
    let term = s.lead(&s.members, "e");
    let (code, out, err) = finish(child, Duration::from_secs(10));
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (&v["leader"]["id"], &v["leader"]["term"]),
        (&"e".into(), &term.into()),
        "{v}"
    );
    assert!(
        v["handoverMs"].as_u64().is_some_and(|ms| ms < 10_000),
        "{v}"
    );
    assert_eq!(s.intent("switchover"), None, "removed once done");

    // Scheduled: written with at + 60 s and left standing; a second
    // request is refused while it stands.
    s.member("a", Status::Passing, &["position=100"]);
    let (code, out, err) = s.cli(&["switchover", E, "--to", "a", "--at", "2999-01-02T03:04:05Z"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = s.intent("switchover").expect("scheduled");
    let at = 32_472_241_445_000_u64;
    assert_eq!(
        v,
        serde_json::json!({"from": "e", "to": "a", "at_ms": at, "deadline_ms": at + 60_000})
    );
    let l = s.list_json();
    assert_eq!(
        (&l["switchover"]["atMs"], &l["switchover"]["to"]),
        (&at.into(), &"a".into()),
        "{l}"
    );
    let (code, _, err) = s.cli(&["switchover", E, "--to", "a"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another request is pending"), "{err}");
}

fn failover_body(s: &Store) {
    let term = cluster(s);
    // The leader holds the seat but its record is not passing.
    s.member("a", Status::Critical, &["position=100"]);
    let child = s.spawn(&["failover", E, "--to", "e", "--timeout", "2s"]);
    let mut seen = None;
    assert!(wait_for(Duration::from_secs(5), || {
        seen = s.intent("failover");
        seen.is_some()
    }));
    let v = seen.expect("intent");
    assert_eq!(v["to"], "e", "{v}");
    let deadline = v["deadline_ms"].as_u64().expect("deadline_ms");
    assert!(deadline.abs_diff(now_ms() + 2_000) < 1_500, "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
    // The unhealthy leader's seat is ended at once, not after its TTL (60 s).
    assert!(wait_for(Duration::from_secs(3), || s.leader_id().is_none()));
    let (code, out, err) = finish(child, Duration::from_secs(10));
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("ended the seat of a (term"), "{err}");
    assert!(
        err.contains("failover of pg did not complete within 2s"),
        "{err}"
    );
    assert_eq!(s.intent("failover"), None, "withdrawn on timeout");

    // No leader at all; the target wins when the intent appears.
    let child = s.spawn(&["failover", E, "--to", "e"]);
    assert!(wait_for(Duration::from_secs(5), || s
        .intent("failover")
        .is_some()));
    let won = s.lead(&s.members, "e");
    assert!(won > term);
    let (code, out, err) = finish(child, Duration::from_secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("e leads pg at term {won}")), "{out}");
    assert_eq!(s.intent("failover"), None);
}

fn reinit_body(s: &Store) {
    cluster(s);
    // --no-wait: the request is written and stands.
    let (code, out, err) = s.cli(&["reinit", E, "b", "--no-wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = s.intent("reinit/b").expect("requested");
    assert!(
        v["requested_ms"]
            .as_u64()
            .is_some_and(|t| t.abs_diff(now_ms()) < 60_000),
        "{v}"
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");

    // Nobody acts on it: exit 3 at the timeout, and the request stands.
    let (code, out, err) = s.cli(&["reinit", E, "e", "--timeout", "1s"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("stands"), "{err}");
    assert!(s.intent("reinit/e").is_some());

    // The test acts as e's agent: the record goes, the request is
    // consumed, the record comes back passing.
    s.rt.block_on(s.members.kv_delete(&format!("_cluster/{E}/reinit/e")))
        .expect("del");
    let mut child = s.spawn(&["reinit", E, "e"]);
    assert!(wait_for(Duration::from_secs(5), || s
        .intent("reinit/e")
        .is_some()));
    // A few of its re-reads later, it still waits: e is passing but has
    // not gone, and the request is not consumed.
    for _ in 0..3 {
        assert_eq!(s.cli(&["cluster", "list", E]).0, 0);
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "it waits while e has not gone"
    );
    s.rt.block_on(s.members.deregister(&format!("{E}.e")))
        .expect("gone");
    s.rt.block_on(s.members.kv_delete(&format!("_cluster/{E}/reinit/e")))
        .expect("consumed");
    s.member("e", Status::Passing, &["position=95"]);
    let (code, out, err) = finish(child, Duration::from_secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("e in pg rebuilt and passing again"), "{out}");
}

macro_rules! on_both {
    ($body:ident, $local:ident, $etcd:ident) => {
        #[test]
        fn $local() {
            let d = Dir::new(stringify!($local));
            $body(&Store::local(&d));
        }

        #[test]
        fn $etcd() {
            let d = Dir::new(stringify!($etcd));
            $body(&Store::etcd(&d));
        }
    };
}

on_both!(list_body, list_on_the_embedded_catalog, list_on_etcd);
on_both!(
    refusals_body,
    refusals_on_the_embedded_catalog,
    refusals_on_etcd
);
on_both!(
    pause_body,
    pause_and_resume_on_the_embedded_catalog,
    pause_and_resume_on_etcd
);
on_both!(
    switchover_body,
    switchover_on_the_embedded_catalog,
    switchover_on_etcd
);
on_both!(
    failover_body,
    failover_on_the_embedded_catalog,
    failover_on_etcd
);
on_both!(reinit_body, reinit_on_the_embedded_catalog, reinit_on_etcd);

/// `cluster position` goes to the agent's control socket as `reload` does:
/// no agent is exit 3; a value the agent refuses is exit 2.
#[test]
fn position_goes_to_the_control_socket() {
    let d = Dir::new("position");
    let missing = d.path("none.sock");
    let (code, _, err) = split(
        Command::new(bin())
            .args(["cluster", "position", "42"])
            .env("AUTOPILOT_SOCKET", &missing)
            .env_remove("CONTAINERPILOT")
            .output()
            .expect("cli"),
    );
    assert_eq!(code, 3, "{err}");
    let agent = common::start(
        &d,
        r#"{ control: { socket: "@SOCKET@" }, jobs: [ { name: "app", exec: "sleep 60" } ] }"#,
    );
    agent.ready();
    let (code, out) = agent.cli(&[
        "cluster",
        "position",
        "--election",
        "nope",
        "not-a-position",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refused"), "{out}");
}

/// Three real agents on one catalog: `switchover --to` a replica hands the
/// seat over and returns once the replica leads at a higher term; the
/// intent is gone, and a position published by a hook shows in the list.
/// Needs the agent side of issue 12 (member records, acting on intents).
#[test]
fn switchover_end_to_end_with_three_agents() {
    let d = Dir::new("e2e-switchover");
    let url = format!("local://{}", d.path("catalog").display());
    let config = |port: u16| {
        format!(
            r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 120", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }},
       election: {{ name: "db-primary", ttl: "2s" }} }},
  ]
}}"#
        )
    };
    let agents: Vec<(Dir, common::Agent)> = ["n1", "n2", "n3"]
        .iter()
        .map(|host| {
            let dir = d.child(host);
            let port = autopilot_testkit::free_port();
            let agent = common::start_with(
                &dir,
                &config(port),
                &[],
                &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", host)],
            );
            agent.ready();
            (dir, agent)
        })
        .collect();
    let run = |args: &[&str]| {
        split(
            Command::new(bin())
                .args(args)
                .env("AUTOPILOT_CATALOG", &url)
                .env_remove("CONTAINERPILOT")
                .output()
                .expect("cli"),
        )
    };
    let list = || -> serde_json::Value {
        let (code, out, _) = run(&["cluster", "list", "db-primary", "-o", "json"]);
        if code != 0 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_default()
    };
    let ready = |v: &serde_json::Value| {
        !v["leader"].is_null()
            && v["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["health"] == "passing"))
    };
    let mut v = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(20), || {
            v = list();
            ready(&v)
        }),
        "three passing members and a leader: {v}\n{}",
        agents[0].1.log()
    );
    let old = v["leader"]["id"].as_str().expect("leader").to_string();
    let old_term = v["leader"]["term"].as_u64().expect("term");
    let target = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .find(|id| *id != old)
        .expect("a replica")
        .to_string();

    // A hook publishes a position through its agent's control socket.
    let (_, first) = &agents[0];
    let (code, out) = first.cli(&["cluster", "position", "--election", "db-primary", "7"]);
    assert_eq!(code, 0, "{out}");
    assert!(wait_for(Duration::from_secs(5), || {
        list()["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == "db-n1" && m["position"] == 7))
    }));

    let (code, out, err) = run(&[
        "switchover",
        "db-primary",
        "--to",
        &target,
        "--timeout",
        "20s",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let done: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(done["leader"]["id"], target.as_str(), "{done}");
    assert!(
        done["leader"]["term"]
            .as_u64()
            .is_some_and(|t| t > old_term),
        "{done}"
    );
    assert!(done["handoverMs"].as_u64().is_some(), "{done}");
    let after = list();
    assert_eq!(after["leader"]["id"], target.as_str(), "{after}");
    assert!(after["switchover"].is_null(), "the intent is gone: {after}");
    let roles: Vec<_> = after["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "leader")
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(roles, [serde_json::Value::from(target.as_str())], "{after}");
}
