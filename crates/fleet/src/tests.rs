//! Unit tests of the fleet's reads and operations against the embedded local catalog in a temp dir.

use std::time::Duration;

use autopilot_catalog::{Candidate, Catalog, Registration, Status};
use autopilot_catalog_local::LocalCatalog;
use serde_json::{Value, json};

use crate::{FleetError, audit, kv, nodes, overview, rollouts, services, snapshots, watchdogs};

fn open() -> (tempfile::TempDir, LocalCatalog) {
    let dir = tempfile::tempdir().unwrap();
    let cat = LocalCatalog::open(dir.path(), "host1/1/1").unwrap();
    (dir, cat)
}

fn reg(id: &str, name: &str, status: Status, tags: &[&str]) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "10.0.0.5".into(),
        port: 6379,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        status,
        ttl: Duration::from_secs(60),
        deregister_critical_after: None,
        seat: None,
    }
}

async fn register(cat: &dyn Catalog, id: &str, name: &str, status: Status, tags: &[&str]) {
    cat.register(&reg(id, name, status, tags)).await.unwrap();
}

#[tokio::test]
async fn overview_puts_failing_services_first() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    register(c, "web-h1", "web", Status::Passing, &[]).await;
    register(c, "web-h2", "web", Status::Passing, &[]).await;
    register(c, "web-h3", "web", Status::Critical, &[]).await;
    register(c, "api-h1", "api", Status::Passing, &[]).await;
    register(c, "db-h1", "db", Status::Warning, &[]).await;
    register(c, "cache-h1", "cache", Status::Critical, &[]).await;
    register(c, "cache-h2", "cache", Status::Critical, &[]).await;
    register(c, "redis-h1", "redis", Status::Passing, &[]).await;
    register(c, "redis.redis-h1", "_members.redis", Status::Passing, &[]).await;
    register(c, "redis.redis-h2", "_members.redis", Status::Critical, &[]).await;
    let me = Candidate {
        id: "redis-h1".into(),
        address: "10.0.0.5".into(),
        port: 6379,
    };
    let term = c
        .campaign("redis", &me, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(term.is_some());

    let o = overview::read(c).await.unwrap();
    let names: Vec<&str> = o.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["cache", "web", "db", "api", "redis"],
        "reserved hidden"
    );
    let web = &o.services[1];
    assert_eq!(
        (web.passing, web.warning, web.critical, web.total),
        (2, 0, 1, 3)
    );
    let redis = o.services.iter().find(|s| s.name == "redis").unwrap();
    assert_eq!(redis.leader.as_deref(), Some("redis-h1"));
    assert_eq!(web.leader, None);

    let failing: Vec<&str> = o
        .failing
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["cache-h1", "cache-h2", "web-h3", "db-h1"]);
    assert_eq!(o.failing[0]["status"], "critical");
    assert_eq!(o.failing[3]["status"], "warning");

    assert_eq!(o.elections.len(), 1);
    let e = &o.elections[0];
    assert_eq!(
        (e.name.as_str(), e.members, e.healthy, e.paused),
        ("redis", 2, 1, false)
    );
    assert_eq!(e.leader.as_ref().map(|l| l.id.as_str()), Some("redis-h1"));

    // The JSON carries exactly the contract's fields.
    let j = serde_json::to_value(&o).unwrap();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "elections",
            "failing",
            "generated_ms",
            "nodes",
            "repairs",
            "revision",
            "rollouts",
            "services"
        ]
    );
    assert_eq!(
        j["services"][0],
        json!({"name":"cache","passing":0,"warning":0,"critical":2,"total":2,"leader":null})
    );

    // A pause shows in the election list; resume clears it.
    let p = crate::clusters::pause(c, "redis", "alice@h").await.unwrap();
    assert!(p.changed);
    assert!(
        !crate::clusters::pause(c, "redis", "bob@h")
            .await
            .unwrap()
            .changed
    );
    assert!(crate::clusters::list(c).await.unwrap()[0].paused);
    assert!(
        crate::clusters::resume(c, "redis", "alice@h")
            .await
            .unwrap()
            .changed
    );
    assert!(!crate::clusters::list(c).await.unwrap()[0].paused);

    // An election's view is `cluster list -o json`; an unknown one is absent.
    let v = serde_json::to_value(crate::clusters::view(c, "redis").await.unwrap()).unwrap();
    assert_eq!(v["election"], "redis");
    assert_eq!(v["leader"]["id"], "redis-h1");
    assert_eq!(v["members"][0]["role"], "leader");
    assert_eq!(v["members"][1]["role"], "-");
    assert!(matches!(
        crate::clusters::view(c, "nope").await,
        Err(FleetError::NotFound(_))
    ));

    // The service detail names its election.
    let d = services::detail(c, "redis").await.unwrap();
    assert_eq!(d.elections, ["redis"]);
    assert_eq!(d.instances.len(), 1);
    assert!(matches!(
        services::detail(c, "nope").await,
        Err(FleetError::NotFound(_))
    ));
}

#[tokio::test]
async fn switchover_requests_are_checked() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    register(c, "pg.pg-h1", "_members.pg", Status::Passing, &[]).await;
    register(c, "pg.pg-h2", "_members.pg", Status::Critical, &[]).await;
    let req = crate::clusters::SwitchoverRequest::default();
    // Nobody leads yet.
    let e = crate::clusters::request_switchover(c, "pg", &req)
        .await
        .unwrap_err();
    assert!(
        matches!(e, FleetError::Refused(ref m) if m.contains("nobody leads pg")),
        "{e}"
    );
    let me = Candidate {
        id: "pg-h1".into(),
        address: "10.0.0.5".into(),
        port: 5432,
    };
    c.campaign("pg", &me, Duration::from_secs(60))
        .await
        .unwrap();
    // The only other member is critical.
    let e = crate::clusters::request_switchover(c, "pg", &req)
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Refused(_)), "{e}");
    let to = crate::clusters::SwitchoverRequest {
        to: Some("pg-h9".into()),
        ..Default::default()
    };
    let e = crate::clusters::request_switchover(c, "pg", &to)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a member of pg"), "{e}");
    register(c, "pg.pg-h2", "_members.pg", Status::Passing, &[]).await;
    let sw = crate::clusters::request_switchover(c, "pg", &req)
        .await
        .unwrap();
    assert_eq!((sw.from.as_str(), sw.to.as_deref()), ("pg-h1", None));
    let stored: Value =
        serde_json::from_str(&c.kv_get("_cluster/pg/switchover").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["from"], "pg-h1");
    // A live request stands: a second one is refused.
    let e = crate::clusters::request_switchover(c, "pg", &req)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another request is pending"), "{e}");
    assert!(matches!(
        crate::clusters::check_election("a/b"),
        Err(FleetError::Invalid(_))
    ));
}

#[tokio::test]
async fn nodes_come_from_node_entries() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    register(
        c,
        "host1",
        "_nodes",
        Status::Passing,
        &[
            "maintenance=false",
            "version=0.1.0",
            "started=2026-11-29T01:00:00Z",
            "session=host1/42/1",
            "job=web",
            "job=redis",
        ],
    )
    .await;
    register(
        c,
        "host0",
        "_nodes",
        Status::Warning,
        &["maintenance=true", "job=web", "version=\u{1b}[31mx"],
    )
    .await;
    register(c, "web-host1", "web", Status::Passing, &[]).await;
    register(c, "web-host0", "web", Status::Critical, &[]).await;
    register(c, "web-xhost1", "web", Status::Critical, &[]).await;
    // Persisted repair records (a node left in repair shows without a live
    // entry; the embedded catalog keys entries by id alone).
    let rec = r#"{"state":"failure","step":"restart","attempt":1}"#;
    c.kv_put("_fleet/repair/web/nodes/web-host1", rec)
        .await
        .unwrap();
    c.kv_put("_fleet/repair/web/nodes/web-b-host1", rec)
        .await
        .unwrap();
    register(
        c,
        "host1.disk",
        "_watchdogs",
        Status::Warning,
        &["watchdog=disk", "status=warning", "message=90% full"],
    )
    .await;
    register(
        c,
        "host0.disk",
        "_watchdogs",
        Status::Passing,
        &["watchdog=disk"],
    )
    .await;

    let list = nodes::list(c).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].node, "host0");
    assert!(list[0].maintenance);
    assert_eq!(list[0].status, "warning");
    assert!(!list[0].version.as_deref().unwrap().contains('\u{1b}'));
    let h1 = &list[1];
    assert_eq!(h1.jobs, ["redis", "web"]);
    assert_eq!(h1.version.as_deref(), Some("0.1.0"));
    assert_eq!(h1.started.as_deref(), Some("2026-11-29T01:00:00Z"));
    assert!(!h1.maintenance);
    assert!(!h1.last_heartbeat.is_empty());

    c.kv_put(
        "_fleet/health/host1",
        r#"[{"job":"web","status":"critical","at_ms":1},{"junk":true},{"job":"web","status":"passing","at_ms":2}]"#,
    )
    .await
    .unwrap();
    let d = nodes::detail(c, "host1").await.unwrap();
    let ids: Vec<&str> = d
        .instances
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-host1"]);
    assert_eq!(d.watchdogs.len(), 1);
    assert_eq!(d.repairs.len(), 1, "{:?}", d.repairs);
    assert_eq!(d.repairs[0]["id"], "web-host1");
    assert_eq!(d.repairs[0]["service"], "web");
    assert_eq!(d.repairs[0]["state"], "failure");
    assert_eq!(d.watchdogs[0].message.as_deref(), Some("90% full"));
    assert_eq!(d.health.len(), 2, "the unreadable transition is skipped");
    assert!(d.intent.is_none());
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(j["node"], "host1");
    assert_eq!(j["maintenance"], false);
    assert_eq!(j["intent"], Value::Null);

    let w = watchdogs::list(c).await.unwrap();
    assert_eq!(
        w.iter().map(|w| w.node.as_str()).collect::<Vec<_>>(),
        ["host0", "host1"]
    );

    assert!(matches!(
        nodes::detail(c, "nope").await,
        Err(FleetError::NotFound(_))
    ));
}

#[tokio::test]
async fn maintenance_intent_is_written_for_known_nodes_only() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    let e = nodes::request_maintenance(c, "ghost", true, "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::NotFound(_)), "{e}");
    assert_eq!(e.http_status(), 404);
    assert_eq!(e.exit_code(), 1);
    assert!(
        c.kv_get("_fleet/maintenance/ghost")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        nodes::request_maintenance(c, "../x", true, "alice").await,
        Err(FleetError::Invalid(_))
    ));

    register(
        c,
        "host1",
        "_nodes",
        Status::Passing,
        &["maintenance=false"],
    )
    .await;
    let m = nodes::request_maintenance(c, "host1", true, "alice")
        .await
        .unwrap();
    assert!(m.on);
    let raw = c.kv_get("_fleet/maintenance/host1").await.unwrap().unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "applied_by",
            "applied_ms",
            "at_ms",
            "by",
            "id",
            "on",
            "outcome"
        ]
    );
    assert_eq!(v["on"], true);
    assert_eq!(v["by"], "alice");
    assert_eq!(v["applied_ms"], Value::Null);
    assert_eq!(v["outcome"], Value::Null);
    let id = v["id"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(v["at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // A new request gets a new id; the detail shows the intent.
    let m2 = nodes::request_maintenance(c, "host1", false, "bob")
        .await
        .unwrap();
    assert_ne!(m2.id, m.id);
    let d = nodes::detail(c, "host1").await.unwrap();
    assert_eq!(d.intent.as_ref().map(|m| m.on), Some(false));
    // The applied flag and the intent are two keys, never one written twice.
    let text = serde_json::to_string(&d).unwrap();
    assert_eq!(text.matches("\"maintenance\":").count(), 1, "{text}");
    assert_eq!(text.matches("\"intent\":").count(), 1, "{text}");

    // An agent's garbage in the intent is reported, not fatal.
    c.kv_put("_fleet/maintenance/host1", "{\"on\": \"yes\"")
        .await
        .unwrap();
    let d = nodes::detail(c, "host1").await.unwrap();
    assert!(d.intent.is_none());
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
}

#[tokio::test]
async fn audit_is_pruned_to_the_newest_thousand() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    for i in 0..1010u64 {
        let e = audit::AuditEntry {
            at_ms: 1_000 + i,
            who: "old".into(),
            action: "pause".into(),
            target: "redis".into(),
            params: json!({}),
            outcome: "accepted".into(),
        };
        c.kv_put(
            &audit::key(e.at_ms, "00000000"),
            &serde_json::to_string(&e).unwrap(),
        )
        .await
        .unwrap();
    }
    let e = audit::AuditEntry::new(
        "alice",
        "maintenance",
        "host1",
        json!({"on": true}),
        "accepted",
    );
    let key = audit::record(c, &e).await.unwrap();
    assert!(key.starts_with("_fleet/audit/"));
    let suffix = key.rsplit('-').next().unwrap();
    assert_eq!(suffix.len(), 8);
    let all = c.kv_list(audit::PREFIX).await.unwrap();
    assert_eq!(all.len(), audit::KEEP);
    // The oldest went: the first kept is record 11 (at 1011).
    assert!(
        all.iter()
            .all(|(k, _)| k.as_str() >= audit::key(1_011, "").as_str())
    );
    let l = audit::list(c, 3).await.unwrap();
    assert_eq!(l.entries.len(), 3);
    assert_eq!(l.entries[0].key, key, "newest first");
    assert_eq!(l.entries[0].entry.who, "alice");
    assert_eq!(l.entries[1].entry.at_ms, 1_000 + 1009);
    // A garbage record is counted and skipped.
    c.kv_put(&audit::key(u64::MAX / 2, "ffffffff"), "not json")
        .await
        .unwrap();
    let l = audit::list(c, 2).await.unwrap();
    assert_eq!((l.entries.len(), l.unreadable), (2, 1));
    assert_eq!(l.entries[0].key, key);
}

#[tokio::test]
async fn oversized_audit_fields_are_cut_not_refused() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    let huge = "é".repeat(40_000);
    let e = audit::AuditEntry::new(
        &huge,
        "maintenance",
        &huge,
        serde_json::json!({ "reason": huge.clone() }),
        &format!("refused: {huge}"),
    );
    assert!(e.target.len() <= audit::FIELD_CAP && e.target.starts_with('é'));
    assert!(e.outcome.starts_with("refused: "));
    assert_eq!(e.params["cut"], true);
    // The record is written, not refused for its size.
    let key = audit::record(c, &e).await.unwrap();
    let l = audit::list(c, 1).await.unwrap();
    assert_eq!(l.entries[0].key, key);
    assert_eq!(l.entries[0].entry.action, "maintenance");
}

#[tokio::test]
async fn kv_listing_is_capped() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    let big = "é".repeat(3000); // 6000 bytes, two per character
    c.kv_put("app/big", &big).await.unwrap();
    for i in 0..4 {
        c.kv_put(&format!("app/k{i}"), "v").await.unwrap();
    }
    c.kv_put("other/x", "y").await.unwrap();
    let l = kv::list(c, "app/", 3).await.unwrap();
    assert_eq!((l.entries.len(), l.total, l.truncated), (3, 5, true));
    let b = &l.entries[0];
    assert_eq!(b.key, "app/big");
    assert!(b.truncated);
    assert_eq!(b.size, 6000);
    assert_eq!(b.value.len(), kv::VALUE_CAP, "cut on a character boundary");
    assert!(!l.entries[1].truncated);
    let all = kv::list(c, "app/", 1_000_000).await.unwrap();
    assert_eq!((all.entries.len(), all.truncated), (5, false));
    assert_eq!(kv::cut("aé", 2), ("a", true));
    assert_eq!(kv::effective_limit(0), kv::LIMIT_MAX);
    assert_eq!(kv::effective_limit(5000), kv::LIMIT_MAX);
    assert_eq!(kv::effective_limit(7), 7);
    assert!(matches!(
        kv::list(c, "a\nb", 1).await,
        Err(FleetError::Invalid(_))
    ));
}

#[tokio::test]
async fn hostile_values_are_reported_not_fatal() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    let garbage = [
        "not json",
        "{",
        "[1,2",
        "null",
        "\"\u{1b}[2J\"",
        "{\"a\":[[[[[[]]]]]]}",
    ];
    for (i, g) in garbage.iter().enumerate() {
        c.kv_put(&format!("snapshots/s{i}/index"), g).await.unwrap();
        c.kv_put(&format!("_fleet/rollouts/app{i}/1"), g)
            .await
            .unwrap();
        c.kv_put(&format!("_fleet/artifacts/app{i}/1.0"), g)
            .await
            .unwrap();
        c.kv_put(&format!("_fleet/repair/svc{i}/history/0000000000001-x"), g)
            .await
            .unwrap();
        c.kv_put(&format!("_fleet/audit/000000000000{i}-00000000"), g)
            .await
            .unwrap();
    }
    c.kv_put(
        "snapshots/good/index",
        r#"[{"sha256":"ab","size":1,"created_ms":2,"by":"x"}]"#,
    )
    .await
    .unwrap();
    register(
        c,
        "weird",
        "_nodes",
        Status::Critical,
        &["job=", "=", "maintenance"],
    )
    .await;
    register(c, "x", "_watchdogs", Status::Critical, &["\u{0}"]).await;

    let s = snapshots::list(c).await.unwrap();
    assert_eq!(s.len(), garbage.len() + 1);
    let good = s.iter().find(|s| s.set == "good").unwrap();
    assert_eq!((good.count, good.unreadable), (1, false));
    assert!(s.iter().filter(|s| s.set != "good").all(|s| s.unreadable));

    let r = rollouts::list(c).await.unwrap();
    assert_eq!(r.len(), garbage.len());
    assert!(
        r.iter()
            .all(|r| r.state == "invalid" && r.invalid.is_some())
    );
    assert!(matches!(
        rollouts::status(c, "app0").await,
        Err(FleetError::Refused(_))
    ));
    let h = rollouts::history(c, "app0").await.unwrap();
    assert!(h[0]["invalid"].is_string());

    let a = crate::artifacts::list(c).await.unwrap();
    assert_eq!(a.len(), garbage.len());
    assert!(a.iter().all(|a| a.versions == 0 && a.unreadable == 1));

    let rep = crate::repairs::list(c, 20).await.unwrap();
    assert_eq!(rep["services"].as_array().unwrap().len(), garbage.len());

    let au = audit::list(c, 100).await.unwrap();
    assert_eq!((au.entries.len(), au.unreadable), (0, garbage.len()));

    let n = nodes::list(c).await.unwrap();
    assert_eq!(n[0].jobs, Vec::<String>::new());
    assert!(!n[0].maintenance);
    assert_eq!(watchdogs::list(c).await.unwrap()[0].node, "x");

    // The whole overview reads through all of it.
    let o = overview::read(c).await.unwrap();
    assert_eq!(o.rollouts.len(), garbage.len());
    assert_eq!(o.nodes.len(), 1);
}

#[test]
fn errors_map_to_statuses_and_exit_codes() {
    let cases = [
        (FleetError::Invalid("x".into()), 400, 2),
        (FleetError::NotFound("x".into()), 404, 1),
        (FleetError::Refused("x".into()), 409, 2),
        (
            FleetError::Contended {
                key: "k".into(),
                attempts: 5,
            },
            409,
            1,
        ),
        (
            FleetError::Catalog {
                context: "reading".into(),
                source: autopilot_catalog::CatalogError::Unavailable {
                    url: "etcd://x".into(),
                    message: "down".into(),
                },
            },
            503,
            3,
        ),
    ];
    for (e, status, code) in cases {
        assert_eq!((e.http_status(), e.exit_code()), (status, code), "{e}");
    }
}

#[tokio::test]
async fn rollouts_start_and_steer() {
    let (_d, cat) = open();
    let c: &dyn Catalog = &cat;
    let opts = rollouts::StartOptions::parse(Some("1,100%"), Some("1s"), None).unwrap();
    let e = rollouts::start(c, "web", "v2", &opts, "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::NotFound(_)), "{e}");
    assert!(matches!(
        rollouts::StartOptions::parse(Some("nonsense"), None, None),
        Err(FleetError::Invalid(_))
    ));
    assert!(matches!(
        rollouts::StartOptions::parse(None, Some("0s"), None),
        Err(FleetError::Invalid(_))
    ));
    let sha = "a".repeat(64);
    let rec = json!({"name": "web", "version": "v2", "sha256": sha, "size": 1, "kind": "file",
        "store": "file:///s", "created": "2026-11-29T00:00:00.000Z", "by": "x"});
    c.kv_put("_fleet/artifacts/web/v2", &rec.to_string())
        .await
        .unwrap();
    register(c, "web.web-h1", "_artifacts.web", Status::Passing, &[]).await;

    let s = rollouts::start(c, "web", "v2", &opts, "alice")
        .await
        .unwrap();
    assert_eq!((s.id, s.state), (1, "rolling"));
    assert_eq!(s.rollout["by"], "alice");
    // One active rollout at a time.
    let e = rollouts::start(c, "web", "v2", &opts, "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Refused(_)), "{e}");

    let r = rollouts::transition(c, "web", rollouts::Transition::Pause, "bob")
        .await
        .unwrap();
    assert_eq!(r.state.as_str(), "paused");
    let e = rollouts::transition(c, "web", rollouts::Transition::Pause, "bob")
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Refused(_)), "{e}");
    let status = rollouts::status(c, "web").await.unwrap();
    assert_eq!(status["rollout"]["state"], "paused");
    let list = rollouts::list(c).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].artifact.as_str(),
            list[0].state.as_str(),
            list[0].to.as_str()
        ),
        ("web", "paused", "v2")
    );
    assert_eq!(list[0].from, "original");
    rollouts::transition(c, "web", rollouts::Transition::Abort, "bob")
        .await
        .unwrap();
    assert!(matches!(
        rollouts::transition(c, "nope", rollouts::Transition::Abort, "bob").await,
        Err(FleetError::NotFound(_))
    ));
    assert_eq!(
        rollouts::Transition::parse("rollback"),
        Some(rollouts::Transition::Rollback)
    );
    // After it ended, a new rollout replaces it.
    let s2 = rollouts::start(c, "web", "v2", &opts, "alice")
        .await
        .unwrap();
    assert_eq!(s2.id, 2);
    let h = rollouts::history(c, "web").await.unwrap();
    assert_eq!(h[0]["id"], 2);
    assert_eq!(h[1]["superseded_by"], 2);
}
