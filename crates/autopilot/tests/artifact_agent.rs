//! Jobs that run an artifact and the config bundle, with the real binary, a real catalog and a
//! file:// store: the first start on the version the rollout wants, a deploy that restarts the
//! job on the new version, a corrupted object refused, a probation failure rolled back, a bad
//! bundle config refused, on etcd a rollout in two units advanced by the agents alone, an agent
//! restarted mid-probation proving the version again (a published failure standing), maintenance
//! suspending probation, and a failed install not hidden by the probation before it.

mod common;

use std::path::Path;
use std::time::Duration;

use autopilot_core::rollout;
use common::*;

const HOST: &str = "testhost";

/// Where a test's fleet keeps its state: a catalog URL and a store URL.
struct Cat {
    catalog: String,
    store: String,
}

/// A local catalog and a file:// store in `d`.
fn local(d: &Dir) -> Cat {
    Cat {
        catalog: format!("local://{}", d.path("catalog").display()),
        store: format!("file://{}", d.path("store").display()),
    }
}

/// Runs the CLI with the test's catalog and store.
fn ap(c: &Cat, args: &[&str]) -> (i32, String) {
    #[allow(clippy::disallowed_methods)] // the test drives the real binary
    let out = std::process::Command::new(bin())
        .args(args)
        .env("AUTOPILOT_CATALOG", &c.catalog)
        .env("AUTOPILOT_ARTIFACT_STORE", &c.store)
        .output()
        .expect("run cli");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A version of the `api` service: a directory with `server.sh`, which
/// appends `<tag> <time in ns>` to the agent directory's `runs` (it runs as
/// `<agent dir>/opt/current/server.sh`) and waits for SIGTERM, and
/// `check.sh`, its health check (passing or not).
fn version_dir(d: &Dir, tag: &str, healthy: bool) -> std::path::PathBuf {
    let src = d.child(&format!("src-{tag}"));
    let server = format!(
        "#!/bin/sh\necho {tag} $(date +%s%N) >> \"$(dirname \"$0\")/../../runs\"\ntrap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n"
    );
    let check = format!("#!/bin/sh\nexit {}\n", if healthy { 0 } else { 1 });
    for (name, text) in [("server.sh", server), ("check.sh", check)] {
        let p = src.path(name);
        std::fs::write(&p, text).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    src.0.clone()
}

/// Pushes `path` as `name` `version` (as `autopilot artifact push` does);
/// returns its sha256.
fn push(c: &Cat, name: &str, version: &str, path: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let etcd = autopilot_config::EtcdConfig::default();
        let catalog = autopilot_runtime::catalog::open(&c.catalog, "test", &etcd)
            .await
            .expect("catalog");
        let store = autopilot_snapshot::open(&c.store).expect("store");
        let rec = autopilot_artifact::push(
            catalog.as_ref(),
            store.as_ref(),
            name,
            Some(version),
            path,
            "test",
        )
        .await
        .expect("push");
        rec.sha256
    })
}

/// A rollout as `autopilot deploy` would write it: `units` over `members`,
/// max failures 0, rollback on.
struct Deploy<'a> {
    name: &'a str,
    id: u64,
    to: (&'a str, &'a str),
    units: &'a str,
    probation_ms: u64,
    members: Vec<String>,
}

impl Deploy<'_> {
    fn new<'a>(name: &'a str, id: u64, to: (&'a str, &'a str), probation_ms: u64) -> Deploy<'a> {
        Deploy {
            name,
            id,
            to,
            units: "100%",
            probation_ms,
            members: vec![format!("api-{HOST}"), format!("autopilot-{HOST}")],
        }
    }

    fn write(&self, c: &Cat) {
        let plan = rollout::Plan {
            id: self.id,
            artifact: self.name.to_string(),
            target: rollout::Target {
                version: self.to.0.to_string(),
                sha256: self.to.1.to_string(),
            },
            from: None,
            units: rollout::parse_units(self.units).expect("units"),
            probation: Duration::from_millis(self.probation_ms),
            max_failures: 0,
            rollback: true,
        };
        let r = rollout::new_rollout(plan, &self.members, "2026-11-28T03:00:00.000Z", "test");
        let key = rollout::rollout_key(self.name, self.id);
        let (code, out) = ap(c, &["kv", "cas", "--absent", &key, &rollout::encode(&r)]);
        assert_eq!(code, 0, "{out}");
    }
}

/// The latest rollout record of `name`.
fn latest(c: &Cat, name: &str) -> Option<serde_json::Value> {
    let (code, out) = ap(c, &["kv", "ls", &rollout::rollouts_prefix(name)]);
    if code != 0 {
        return None;
    }
    let last = out.lines().rev().find(|l| l.contains('{'))?;
    let json = &last[last.find('{')?..];
    serde_json::from_str(json).ok()
}

/// The member record `<name>.<instance>`: its tags as key=value pairs.
fn member(c: &Cat, name: &str, instance: &str) -> Option<Vec<(String, String)>> {
    let service = rollout::member_service(name);
    let (code, out) = ap(c, &["catalog", "instances", &service, "--json"]);
    if code != 0 {
        return None;
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
    let id = rollout::member_id(name, instance);
    let m = list.into_iter().find(|i| i["id"] == id.as_str())?;
    Some(
        m["tags"]
            .as_array()?
            .iter()
            .filter_map(|t| t.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn tag(tags: &[(String, String)], key: &str) -> Option<String> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn member_state(c: &Cat, name: &str, instance: &str) -> Option<String> {
    tag(&member(c, name, instance)?, "state")
}

/// The agent's config: `api` runs `opt/current/server.sh`, checked by `opt/current/check.sh`.
fn api_config() -> String {
    r#"{ control: { socket: "@SOCKET@" }, stopTimeout: "2s", jobs: [
  { name: "api", exec: "@DIR@/opt/current/server.sh", restarts: "unlimited",
    artifact: { name: "api", dest: "@DIR@/opt" },
    health: { exec: "@DIR@/opt/current/check.sh", interval: "200ms", ttl: 5 } },
] }"#
        .to_string()
}

fn start_api(d: &Dir, c: &Cat, host: &str) -> Agent {
    let a = start_with(
        d,
        &api_config(),
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", host),
            ("AUTOPILOT_CATALOG", &c.catalog),
            ("AUTOPILOT_ARTIFACT_STORE", &c.store),
        ],
    );
    a.ready();
    a
}

/// `opt/current` as a real directory: what ran before any rollout.
fn original(d: &Dir) {
    let src = version_dir(d, "v0", true);
    let opt = d.child("opt");
    std::fs::rename(&src, opt.path("current")).expect("install the original");
}

/// The tags of the versions the job ran, in order.
fn runs(d: &Dir) -> Vec<String> {
    runs_at(d).into_iter().map(|(t, _)| t).collect()
}

/// The versions the job ran, with when each started (ns since the epoch).
fn runs_at(d: &Dir) -> Vec<(String, u128)> {
    d.lines("runs")
        .iter()
        .filter_map(|l| {
            let (t, at) = l.split_once(' ')?;
            Some((t.to_string(), at.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_job_starts_on_the_version_its_rollout_wants() {
    let d = Dir::new("art-first");
    original(&d);
    let c = local(&d);
    let v1 = version_dir(&d, "v1", true);
    let sha1 = push(&c, "api", "1.0.0", &v1);
    // The job joins the rollout on its first start, so it goes through
    // probation: long enough for a first check on a loaded machine.
    Deploy::new("api", 1, ("1.0.0", &sha1), 1_000).write(&c);
    let a = start_api(&d, &c, HOST);
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v1"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    // It never ran what was on disk first.
    assert_eq!(runs(&d), ["v1"]);
    let link = std::fs::read_link(d.path("opt/current")).expect("current is a link");
    assert_eq!(link, Path::new(&sha1));
    assert!(
        wait_for(Duration::from_secs(10), || member_state(
            &c,
            "api",
            &format!("api-{HOST}")
        )
        .as_deref()
            == Some("ok")),
        "{:?}\n{}",
        member(&c, "api", &format!("api-{HOST}")),
        a.log()
    );
    let st = a.status();
    let f = &st["fleet"][0];
    assert_eq!(
        (f["job"].as_str(), f["sha"].as_str()),
        (Some("api"), Some(sha1.as_str())),
        "{st}"
    );
}

#[test]
fn a_new_version_deploys_and_the_job_restarts_on_it() {
    let d = Dir::new("art-deploy");
    original(&d);
    let c = local(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    // With no record the job runs what is on disk, and says so.
    assert!(
        wait_for(Duration::from_secs(10), || member(&c, "api", &me)
            .is_some_and(|t| tag(&t, "sha").as_deref() == Some("original"))),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    let v2 = version_dir(&d, "v2", true);
    let sha2 = push(&c, "api", "2.0.0", &v2);
    let written = std::time::SystemTime::now();
    Deploy::new("api", 1, ("2.0.0", &sha2), 300).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || runs(&d) == ["v0", "v2"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    let since = written
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let started = runs_at(&d)[1].1.saturating_sub(since) / 1_000_000;
    eprintln!(
        "record written to v2 running: {started} ms (fetch, verify, unpack, switch, restart)"
    );
    // Probation passes; the agent advances the gate: the rollout completes.
    assert!(
        wait_for(Duration::from_secs(15), || latest(&c, "api")
            .is_some_and(|r| r["state"] == "completed")),
        "{:?}\n{:?}\n{}",
        latest(&c, "api"),
        member(&c, "api", &me),
        a.log()
    );
    let tags = member(&c, "api", &me).expect("member");
    assert_eq!(
        tag(&tags, "sha").as_deref(),
        Some(sha2.as_str()),
        "{tags:?}"
    );
    assert_eq!(tag(&tags, "version").as_deref(), Some("2.0.0"), "{tags:?}");
    // The original is kept for a rollback.
    assert!(d.path("opt/original/server.sh").exists());
}

#[test]
fn a_corrupted_object_is_refused_and_the_job_keeps_its_version() {
    let d = Dir::new("art-corrupt");
    original(&d);
    let c = local(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let pid = a.job_pid("api").expect("pid");
    let v2 = version_dir(&d, "v2", true);
    let sha2 = push(&c, "api", "2.0.0", &v2);
    // Flip bytes of the stored object.
    let obj = std::fs::read_dir(d.path("store"))
        .expect("store")
        .flatten()
        .flat_map(|set| {
            std::fs::read_dir(set.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&sha2))
        .expect("stored object");
    let mut bytes = std::fs::read(&obj).expect("read object");
    for b in bytes.iter_mut().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&obj, bytes).expect("corrupt");
    Deploy::new("api", 1, ("2.0.0", &sha2), 300).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || member_state(&c, "api", &me)
            .as_deref()
            == Some("failed")),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    let tags = member(&c, "api", &me).expect("member");
    assert!(
        tag(&tags, "reason").is_some_and(|r| r.contains("checksum")),
        "{tags:?}"
    );
    assert_eq!(tag(&tags, "sha").as_deref(), Some("original"), "{tags:?}");
    // Nothing unverified in dest; the job never restarted.
    assert!(!d.path(&format!("opt/{sha2}")).exists());
    assert_eq!(a.job_pid("api"), Some(pid));
    assert_eq!(runs(&d), ["v0"]);
}

#[test]
fn a_probation_failure_marks_the_member_failed_and_rolls_back() {
    let d = Dir::new("art-probation");
    original(&d);
    let c = local(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let bad = version_dir(&d, "bad", false);
    let sha = push(&c, "api", "bad", &bad);
    Deploy::new("api", 1, ("bad", &sha), 500).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || member_state(&c, "api", &me)
            .as_deref()
            == Some("failed")
            || latest(&c, "api").is_some_and(|r| r["state"] != "rolling")),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    // The gate saw the failure and rolled back to what ran before.
    assert!(
        wait_for(Duration::from_secs(20), || latest(&c, "api")
            .is_some_and(|r| r["state"] == "rolled_back")),
        "{:?}\n{:?}\n{}",
        latest(&c, "api"),
        member(&c, "api", &me),
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0", "bad", "v0"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    assert!(a.log().contains("probation failed"), "{}", a.log());
}

#[test]
fn a_bad_bundle_config_is_refused_and_the_running_config_stays() {
    let d = Dir::new("art-bundle");
    let config = r#"{ control: { socket: "@SOCKET@" }, stopTimeout: "2s",
  bundle: { name: "cfg", dest: "@DIR@/bundle", file: "autopilot.json5" },
  jobs: [{ name: "boot", exec: ["sh", "-c", "echo boot 0 >> @DIR@/runs; trap 'exit 0' TERM; while :; do sleep 0.1; done"] }] }"#;
    let c = local(&d);
    let a = start_with(
        &d,
        config,
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", HOST),
            ("AUTOPILOT_ARTIFACT_STORE", &c.store),
        ],
    );
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["boot"]),
        "{}",
        a.log()
    );
    let pid = a.job_pid("boot").expect("pid");
    let me = format!("autopilot-{HOST}");
    let bad = d.child("bundle-bad");
    bad.write(
        "autopilot.json5",
        "{\n  jobs: [\n    { name: \"x\", exec: \"true\", bogus: 1 },\n  ],\n}\n",
    );
    let sha = push(&c, "cfg", "bad", &bad.0);
    Deploy::new("cfg", 1, ("bad", &sha), 300).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || member_state(&c, "cfg", &me)
            .as_deref()
            == Some("failed")),
        "{:?}\n{}",
        member(&c, "cfg", &me),
        a.log()
    );
    let reason = tag(&member(&c, "cfg", &me).expect("member"), "reason").unwrap_or_default();
    assert!(
        reason.contains("autopilot.json5:3:") && reason.contains("jobs[0].bogus"),
        "{reason}"
    );
    // Nothing switched, the running config and its job stay.
    assert!(std::fs::symlink_metadata(d.path("bundle/current")).is_err());
    assert_eq!(a.job_pid("boot"), Some(pid));

    // A good version is switched to and reloaded: its job starts.
    let good = d.child("bundle-good");
    good.write(
        "autopilot.json5",
        &format!(
            "{{ bundle: {{ name: \"cfg\", dest: \"{}\", file: \"autopilot.json5\" }},\n  jobs: [{{ name: \"next\", exec: [\"sh\", \"-c\", \"echo next 0 >> {}; trap 'exit 0' TERM; while :; do sleep 0.1; done\"] }}] }}",
            d.path("bundle").display(),
            d.path("runs").display()
        ),
    );
    let sha_good = push(&c, "cfg", "good", &good.0);
    Deploy::new("cfg", 2, ("good", &sha_good), 300).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || runs(&d) == ["boot", "next"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    let link = std::fs::read_link(d.path("bundle/current")).expect("current");
    assert_eq!(link, Path::new(&sha_good));

    // Started again, the agent runs the bundle's config, not the bootstrap file.
    drop(a);
    let a = start_with(
        &d,
        config,
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", HOST),
            ("AUTOPILOT_ARTIFACT_STORE", &c.store),
        ],
    );
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d)
            == ["boot", "next", "next"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    assert!(
        a.log().contains("running the config bundle's config"),
        "{}",
        a.log()
    );
}

/// Three agents on etcd, a rollout in two units (`1,100%`): nobody but the
/// agents advances the gate; the second unit starts only after the first
/// instance passed its probation, and every instance ends on the version.
#[test]
fn agents_alone_roll_a_version_through_two_units_on_etcd() {
    let d = Dir::new("art-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let c = Cat {
        catalog: format!("etcd://{}/fleet", etcd.endpoint()),
        store: format!("file://{}", d.path("store").display()),
    };
    let hosts = ["h1", "h2", "h3"];
    let dirs: Vec<Dir> = hosts.iter().map(|h| d.child(h)).collect();
    let mut agents = Vec::new();
    for (h, hd) in hosts.iter().zip(&dirs) {
        original(hd);
        agents.push(start_api(hd, &c, h));
    }
    let logs = |agents: &[Agent]| {
        agents
            .iter()
            .map(Agent::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        wait_for(Duration::from_secs(15), || dirs
            .iter()
            .all(|hd| runs(hd) == ["v0"])),
        "{}",
        logs(&agents)
    );
    let v2 = version_dir(&d, "v2", true);
    let sha2 = push(&c, "api", "2.0.0", &v2);
    let probation = 700;
    let mut dep = Deploy::new("api", 1, ("2.0.0", &sha2), probation);
    dep.units = "1,100%";
    dep.members = hosts.iter().map(|h| format!("api-{h}")).collect();
    dep.write(&c);
    assert!(
        wait_for(Duration::from_secs(30), || latest(&c, "api")
            .is_some_and(|r| r["state"] == "completed")),
        "{:?}\n{}",
        latest(&c, "api"),
        logs(&agents)
    );
    assert!(
        wait_for(Duration::from_secs(10), || dirs
            .iter()
            .all(|hd| runs(hd) == ["v0", "v2"])),
        "{:?}",
        dirs.iter().map(runs).collect::<Vec<_>>()
    );
    // The first unit's instance started v2 first; the others only after
    // its probation (start, healthy, then healthy for the window).
    let mut starts: Vec<u128> = dirs.iter().map(|hd| runs_at(hd)[1].1).collect();
    starts.sort_unstable();
    let gap_ms = (starts[1] - starts[0]) / 1_000_000;
    assert!(
        gap_ms >= u128::from(probation),
        "second unit started {gap_ms} ms after the first"
    );
    eprintln!(
        "two units of 1 + 2 instances, probation {probation} ms: the second unit started {gap_ms} ms after the first"
    );
    for h in hosts {
        let tags = member(&c, "api", &format!("api-{h}")).expect("member");
        assert_eq!(
            tag(&tags, "sha").as_deref(),
            Some(sha2.as_str()),
            "{h}: {tags:?}"
        );
        assert_eq!(tag(&tags, "state").as_deref(), Some("ok"), "{h}: {tags:?}");
    }
    drop(agents);
}

/// A rollout record that cannot be read (hostile or corrupt catalog data)
/// never stops the job: it runs what is on disk, and the log says why.
#[test]
fn an_unreadable_record_runs_what_is_on_disk() {
    let d = Dir::new("art-unreadable");
    original(&d);
    let c = local(&d);
    let key = rollout::rollout_key("api", 1);
    let (code, out) = ap(
        &c,
        &["kv", "put", &key, "{\"id\": 1, \"state\": \"rolling\""],
    );
    assert_eq!(code, 0, "{out}");
    let a = start_api(&d, &c, HOST);
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    assert!(
        a.log().contains("rollout 1 of api") && a.log().contains("running what is on disk"),
        "{}",
        a.log()
    );
}

/// etcd's count of requests of one gRPC method (`Range`, `Txn`, `Put`).
fn etcd_requests(endpoint: &str, method: &str) -> u64 {
    let (_, body) = http_tcp(endpoint, "/metrics").expect("etcd metrics");
    let want = format!("grpc_method=\"{method}\"");
    body.lines()
        .filter(|l| l.starts_with("grpc_server_started_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// With no rollout moving, an agent running an artifact job reads and
/// writes nothing in etcd: only its session's keep-alive.
#[test]
fn an_idle_artifact_job_costs_etcd_nothing() {
    let d = Dir::new("art-idle");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let c = Cat {
        catalog: format!("etcd://{}/idle", etcd.endpoint()),
        store: format!("file://{}", d.path("store").display()),
    };
    original(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || member(&c, "api", &me)
            .is_some_and(|t| tag(&t, "state").as_deref() == Some("ok"))),
        "{}",
        a.log()
    );
    // Registration settles (healthy, then registered) before counting.
    assert!(wait_for(Duration::from_secs(10), || a.status()["jobs"][0]
        ["health"]
        == "healthy"));
    let count = || {
        ["Range", "Txn", "Put", "DeleteRange"]
            .iter()
            .map(|m| etcd_requests(&etcd.endpoint(), m))
            .sum::<u64>()
    };
    // Start-up writes (the job's registration, the member entry's first
    // states) settle: two readings 2 s apart agree.
    let mut before = count();
    assert!(
        wait_for(Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_secs(2));
            let now = count();
            let settled = now == before;
            before = now;
            settled
        }),
        "etcd requests never settled\n{}",
        a.log()
    );
    assert!(before > 0, "the agent's start read etcd: the count is read");
    // Longer than the re-check of a moving rollout (10 s), with many health
    // checks and keep-alives in it; there is nothing to wait for.
    std::thread::sleep(Duration::from_secs(11));
    let after = count();
    assert_eq!(after, before, "requests while idle\n{}", a.log());
}

// ---- Review fixes: agent stop, bundle probation, bundle original, bundle configs (fixbundle) ----

/// Whether member `<name>.<instance>` is passing in the catalog.
fn member_passing(c: &Cat, name: &str, instance: &str) -> bool {
    passing_ids(&c.catalog, &rollout::member_service(name))
        .is_some_and(|ids| ids.contains(&rollout::member_id(name, instance)))
}

#[test]
fn a_sigterm_during_probation_does_not_roll_the_fleet_back() {
    let d = Dir::new("art-stop");
    original(&d);
    let c = local(&d);
    // Beside `api`, a job that takes a while to stop: `api` has stopped
    // while the agent still runs (the window in which a stopping agent used
    // to read as a failed probation).
    let config = api_config().replacen(
        "jobs: [",
        "jobs: [\n  { name: \"slow\", exec: [\"sh\", \"-c\", \"trap 'sleep 1.5; exit 0' TERM; while :; do sleep 0.1; done\"] },",
        1,
    );
    let mut a = start_with(
        &d,
        &config,
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", HOST),
            ("AUTOPILOT_CATALOG", &c.catalog),
            ("AUTOPILOT_ARTIFACT_STORE", &c.store),
        ],
    );
    a.ready();
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let v1 = version_dir(&d, "v1", true);
    let sha = push(&c, "api", "v1", &v1);
    // A probation far longer than the test: the agent stops in the middle.
    Deploy::new("api", 1, ("v1", &sha), 120_000).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || runs(&d) == ["v0", "v1"]
            && member_state(&c, "api", &me).as_deref() == Some("probation")
            && member_passing(&c, "api", &me)),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0), "{}", a.log());
    let r = latest(&c, "api").expect("rollout");
    assert_eq!(r["state"], "rolling", "{r}\n{}", a.log());
    assert_eq!(r["failures"], serde_json::json!([]), "{r}");
    // The stopped agent's member left, as a dead agent's does.
    assert!(
        member(&c, "api", &me).is_none(),
        "{:?}",
        member(&c, "api", &me)
    );
    assert!(!a.log().contains("probation failed"), "{}", a.log());
}

/// A config with the `cfg` bundle (unless `with_bundle` is false) and one
/// job `web` that appends `<tag> 0` to `runs`, its health check `check`.
fn web_config(d: &Dir, tag: &str, check: &str, with_bundle: bool) -> String {
    let bundle = if with_bundle {
        format!(
            "bundle: {{ name: \"cfg\", dest: \"{}\", file: \"autopilot.json5\" }},\n  ",
            d.path("bundle").display()
        )
    } else {
        String::new()
    };
    format!(
        "{{ {bundle}stopTimeout: \"2s\",\n  jobs: [{{ name: \"web\", exec: [\"sh\", \"-c\", \"echo {tag} 0 >> {}; trap 'exit 0' TERM; while :; do sleep 0.1; done\"],\n    health: {{ exec: \"{check}\", interval: \"200ms\", ttl: 5 }} }}] }}\n",
        d.path("runs").display()
    )
}

/// Starts an agent on a bootstrap file with the `cfg` bundle and `web` (tag `boot`).
fn start_bundled(d: &Dir, c: &Cat) -> Agent {
    let boot = web_config(d, "boot", "true", true).replacen(
        "{ ",
        "{ control: { socket: \"@SOCKET@\" }, ",
        1,
    );
    let a = start_with(
        d,
        &boot,
        &[],
        &[
            ("AUTOPILOT_HOSTNAME", HOST),
            ("AUTOPILOT_CATALOG", &c.catalog),
            ("AUTOPILOT_ARTIFACT_STORE", &c.store),
        ],
    );
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || runs(d) == ["boot"]),
        "{}",
        a.log()
    );
    a
}

/// Pushes a bundle version holding `config` as `autopilot.json5`.
fn push_bundle(d: &Dir, c: &Cat, version: &str, config: &str) -> String {
    let src = d.child(&format!("bundle-{version}"));
    src.write("autopilot.json5", config);
    push(c, "cfg", version, &src.0)
}

#[test]
fn a_bundle_config_without_its_bundle_is_refused() {
    let d = Dir::new("art-bundle-drop");
    let c = local(&d);
    let a = start_bundled(&d, &c);
    let me = format!("autopilot-{HOST}");
    let boot_pid = a.job_pid("web").expect("pid");

    // A config that drops the bundle block is a bad bundle config.
    let sha = push_bundle(&d, &c, "nobundle", &web_config(&d, "nb", "true", false));
    Deploy::new("cfg", 1, ("nobundle", &sha), 500).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || member_state(&c, "cfg", &me)
            .as_deref()
            == Some("failed")),
        "{:?}\n{}",
        member(&c, "cfg", &me),
        a.log()
    );
    let reason = tag(&member(&c, "cfg", &me).expect("member"), "reason").unwrap_or_default();
    assert!(
        reason.contains("bad bundle config") && reason.contains("no bundle block"),
        "{reason}"
    );
    assert!(std::fs::symlink_metadata(d.path("bundle/current")).is_err());
    assert_eq!(a.job_pid("web"), Some(boot_pid));
    assert!(
        wait_for(Duration::from_secs(15), || latest(&c, "cfg")
            .is_some_and(|r| r["state"] == "rolled_back")),
        "{:?}\n{}",
        latest(&c, "cfg"),
        a.log()
    );

    // So is one that renames the bundle.
    let renamed = web_config(&d, "rn", "true", true).replace("name: \"cfg\"", "name: \"other\"");
    let sha = push_bundle(&d, &c, "renamed", &renamed);
    Deploy::new("cfg", 2, ("renamed", &sha), 500).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || member(&c, "cfg", &me)
            .and_then(|m| tag(&m, "reason"))
            .is_some_and(|r| r.contains("changes bundle.name"))),
        "{:?}\n{}",
        member(&c, "cfg", &me),
        a.log()
    );
    assert!(std::fs::symlink_metadata(d.path("bundle/current")).is_err());
    assert_eq!(a.job_pid("web"), Some(boot_pid));
    assert_eq!(runs(&d), ["boot"]);
}

#[test]
fn a_good_bundle_that_changes_a_checked_job_completes_and_reload_keeps_it() {
    let d = Dir::new("art-bundle-good");
    let c = local(&d);
    let a = start_bundled(&d, &c);
    let me = format!("autopilot-{HOST}");
    // A good version restarts the health-checked job and passes probation;
    // its first check comes a second after it starts (the old jobs were
    // healthy until they stopped: that is not the new version passing).
    let v1 = web_config(&d, "v1", "true", true).replace("\"200ms\"", "\"1s\"");
    let sha = push_bundle(&d, &c, "v1", &v1);
    Deploy::new("cfg", 1, ("v1", &sha), 3000).write(&c);
    assert!(
        wait_for(Duration::from_secs(30), || latest(&c, "cfg")
            .is_some_and(|r| r["state"] != "rolling")),
        "{:?}\n{:?}\n{}",
        latest(&c, "cfg"),
        member(&c, "cfg", &me),
        a.log()
    );
    let r = latest(&c, "cfg").expect("rollout");
    assert_eq!(r["state"], "completed", "{r}\n{}", a.log());
    assert_eq!(runs(&d), ["boot", "v1"]);
    let pid = a.job_pid("web").expect("pid");

    // A reload reads the installed bundle's config, not the bootstrap file:
    // the job is unchanged and keeps running.
    let (code, out) = a.cli(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || a
            .log()
            .matches("config reloaded")
            .count()
            >= 2),
        "{}",
        a.log()
    );
    assert_eq!(a.job_pid("web"), Some(pid), "{}", a.log());
    assert_eq!(runs(&d), ["boot", "v1"]);
}

#[test]
fn rolling_back_a_first_bundle_rollout_runs_the_bootstrap_file() {
    let d = Dir::new("art-bundle-back");
    let c = local(&d);
    let a = start_bundled(&d, &c);
    // A config that loads but whose job never passes its health check.
    let sha = push_bundle(&d, &c, "bad", &web_config(&d, "bad", "false", true));
    Deploy::new("cfg", 1, ("bad", &sha), 500).write(&c);
    assert!(
        wait_for(Duration::from_secs(30), || latest(&c, "cfg")
            .is_some_and(|r| r["state"] == "rolled_back")),
        "{:?}\n{:?}\n{}",
        latest(&c, "cfg"),
        member(&c, "cfg", &format!("autopilot-{HOST}")),
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d)
            == ["boot", "bad", "boot"]),
        "runs {:?}\n{}",
        runs(&d),
        a.log()
    );
    // `current` is gone (the bootstrap file runs); the version stays on disk.
    assert!(std::fs::symlink_metadata(d.path("bundle/current")).is_err());
    assert!(d.path("bundle").join(&sha).is_dir());
}

// ---- Review fixes: restart, maintenance, masked failures (fixfleet) ----

/// The member record's status (`passing` or `critical`).
fn member_status(c: &Cat, name: &str, instance: &str) -> Option<String> {
    let service = rollout::member_service(name);
    let (code, out) = ap(c, &["catalog", "instances", &service, "--json"]);
    if code != 0 {
        return None;
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
    let id = rollout::member_id(name, instance);
    let m = list.into_iter().find(|i| i["id"] == id.as_str())?;
    m["status"].as_str().map(str::to_string)
}

/// What the agent's /status says of its (only) artifact job.
fn fleet_state(a: &Agent) -> Option<String> {
    let (code, body) = http_unix(&a.socket, "GET", "/v3/status", "")?;
    if code != 200 {
        return None;
    }
    let st: serde_json::Value = serde_json::from_str(&body).ok()?;
    st["fleet"][0]["state"].as_str().map(str::to_string)
}

/// An agent killed in the middle of a probation and started again does not
/// take the version as proved: its job goes through probation again and
/// the rollout does not complete on the restart alone.
#[test]
fn an_agent_restarted_mid_probation_goes_through_probation_again() {
    let d = Dir::new("art-restart");
    original(&d);
    let c = local(&d);
    let mut a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let v1 = version_dir(&d, "v1", true);
    let sha1 = push(&c, "api", "1.0.0", &v1);
    Deploy::new("api", 1, ("1.0.0", &sha1), 60_000).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || fleet_state(&a).as_deref()
            == Some("probation")),
        "{:?}\n{}",
        a.status(),
        a.log()
    );
    let job = a.job_pid("api");
    a.signal(libc::SIGKILL);
    assert!(a.wait(Duration::from_secs(5)).is_some(), "agent not killed");
    // The orphaned job: the new agent starts its own.
    if let Some(pid) = job {
        kill(pid, libc::SIGKILL);
    }
    let b = start_api(&d, &c, HOST);
    let mut seen = Vec::new();
    assert!(
        wait_for(Duration::from_secs(15), || {
            let s = fleet_state(&b);
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            s.as_deref() == Some("probation")
        }),
        "states after the restart {seen:?}\n{}",
        b.log()
    );
    assert!(
        !seen.iter().any(|s| s.as_deref() == Some("ok")),
        "states after the restart {seen:?}\n{}",
        b.log()
    );
    let tags = member(&c, "api", &me).expect("member");
    assert_eq!(tag(&tags, "rollout").as_deref(), Some("1"), "{tags:?}");
    assert_ne!(tag(&tags, "state").as_deref(), Some("ok"), "{tags:?}");
    assert_eq!(
        latest(&c, "api").map(|r| r["state"].clone()),
        Some(serde_json::json!("rolling")),
        "{}",
        b.log()
    );
}

/// Maintenance during probation is not a failure: the member turns
/// critical, probation waits, and its clock restarts when maintenance ends;
/// the rollout then completes.
#[test]
fn maintenance_during_probation_suspends_it() {
    let d = Dir::new("art-maint");
    original(&d);
    let c = local(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let v1 = version_dir(&d, "v1", true);
    let sha1 = push(&c, "api", "1.0.0", &v1);
    Deploy::new("api", 1, ("1.0.0", &sha1), 2_000).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || fleet_state(&a).as_deref()
            == Some("probation")),
        "{:?}\n{}",
        a.status(),
        a.log()
    );
    let (code, out) = a.cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || member_status(&c, "api", &me)
            .as_deref()
            == Some("critical")),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    // Held past the probation window: it neither fails nor passes.
    let ended = wait_for(Duration::from_secs(4), || {
        matches!(fleet_state(&a).as_deref(), Some("failed" | "ok"))
            || latest(&c, "api").is_some_and(|r| r["state"] != "rolling")
    });
    assert!(
        !ended,
        "{:?} {:?}\n{}",
        fleet_state(&a),
        latest(&c, "api"),
        a.log()
    );
    let (code, out) = a.cli(&["maintenance", "disable"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(20), || latest(&c, "api")
            .is_some_and(|r| r["state"] == "completed")),
        "{:?}\n{:?}\n{}",
        latest(&c, "api"),
        member(&c, "api", &me),
        a.log()
    );
    assert_eq!(runs(&d), ["v0", "v1"]);
    assert!(a.log().contains("probation restarted"), "{}", a.log());
}

/// A failure this instance published stands across a restart of its agent:
/// the restarted agent does not clear it by running the same version again.
#[test]
fn a_failure_published_before_a_restart_stands() {
    let d = Dir::new("art-failkept");
    original(&d);
    let c = local(&d);
    let mut a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let bad = version_dir(&d, "bad", false);
    let sha = push(&c, "api", "bad", &bad);
    // One failure tolerated and no rollback: the rollout stays rolling.
    let plan = rollout::Plan {
        id: 1,
        artifact: "api".into(),
        target: rollout::Target {
            version: "bad".into(),
            sha256: sha.clone(),
        },
        from: None,
        units: rollout::parse_units("100%").expect("units"),
        probation: Duration::from_millis(300),
        max_failures: 1,
        rollback: false,
    };
    let r = rollout::new_rollout(
        plan,
        std::slice::from_ref(&me),
        "2026-11-28T03:00:00.000Z",
        "test",
    );
    let key = rollout::rollout_key("api", 1);
    let (code, out) = ap(&c, &["kv", "cas", "--absent", &key, &rollout::encode(&r)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(15), || member_state(&c, "api", &me)
            .as_deref()
            == Some("failed")),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    let job = a.job_pid("api");
    a.signal(libc::SIGKILL);
    assert!(a.wait(Duration::from_secs(5)).is_some(), "agent not killed");
    if let Some(pid) = job {
        kill(pid, libc::SIGKILL);
    }
    let b = start_api(&d, &c, HOST);
    let mut seen = Vec::new();
    // Until the restarted job has run its health check a few times.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let s = fleet_state(&b);
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            runs(&d).len() == 3 && b.status()["jobs"][0]["health"] == "unhealthy"
        }),
        "states after the restart {seen:?}\n{}",
        b.log()
    );
    assert_eq!(
        fleet_state(&b).as_deref(),
        Some("failed"),
        "{:?}\n{}",
        latest(&c, "api"),
        b.log()
    );
    assert!(
        // Before its first publish the worker reports no state ("").
        seen.iter().flatten().all(|s| s.is_empty() || s == "failed"),
        "states after the restart {seen:?}\n{}",
        b.log()
    );
    let tags = member(&c, "api", &me).expect("member");
    assert_eq!(tag(&tags, "state").as_deref(), Some("failed"), "{tags:?}");
    assert_eq!(tag(&tags, "rollout").as_deref(), Some("1"), "{tags:?}");
    assert_eq!(runs(&d), ["v0", "bad", "bad"]);
}

/// A failed install is not hidden by the probation of the version before
/// it: the member says failed, for the new rollout, on the version it runs.
#[test]
fn a_failed_install_during_probation_shows_failed() {
    let d = Dir::new("art-masked");
    original(&d);
    let c = local(&d);
    let a = start_api(&d, &c, HOST);
    let me = format!("api-{HOST}");
    assert!(
        wait_for(Duration::from_secs(10), || runs(&d) == ["v0"]),
        "{}",
        a.log()
    );
    let v1 = version_dir(&d, "v1", true);
    let sha1 = push(&c, "api", "1.0.0", &v1);
    Deploy::new("api", 1, ("1.0.0", &sha1), 60_000).write(&c);
    assert!(
        wait_for(Duration::from_secs(15), || fleet_state(&a).as_deref()
            == Some("probation")),
        "{:?}\n{}",
        a.status(),
        a.log()
    );
    // A version with no record: its install fails. No rollback, so the
    // failure stays on show.
    let missing = "f".repeat(64);
    let plan = rollout::Plan {
        id: 2,
        artifact: "api".into(),
        target: rollout::Target {
            version: "9.9.9".into(),
            sha256: missing,
        },
        from: Some(rollout::Target {
            version: "1.0.0".into(),
            sha256: sha1.clone(),
        }),
        units: rollout::parse_units("100%").expect("units"),
        probation: Duration::from_millis(300),
        max_failures: 0,
        rollback: false,
    };
    let r = rollout::new_rollout(
        plan,
        std::slice::from_ref(&me),
        "2026-11-28T03:00:00.000Z",
        "test",
    );
    let key = rollout::rollout_key("api", 2);
    let (code, out) = ap(&c, &["kv", "cas", "--absent", &key, &rollout::encode(&r)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(15), || member(&c, "api", &me)
            .is_some_and(|t| tag(&t, "state").as_deref() == Some("failed")
                && tag(&t, "rollout").as_deref() == Some("2"))),
        "{:?}\n{}",
        member(&c, "api", &me),
        a.log()
    );
    let tags = member(&c, "api", &me).expect("member");
    assert!(
        tag(&tags, "reason").is_some_and(|r| r.contains("no such version")),
        "{tags:?}"
    );
    assert_eq!(
        tag(&tags, "sha").as_deref(),
        Some(sha1.as_str()),
        "{tags:?}"
    );
    assert_eq!(tag(&tags, "version").as_deref(), Some("1.0.0"), "{tags:?}");
    assert_eq!(fleet_state(&a).as_deref(), Some("failed"));
    assert_eq!(runs(&d), ["v0", "v1"]);
}
