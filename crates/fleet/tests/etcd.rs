//! The fleet's reads and operations against a real etcd on loopback: an agent session publishes, another session (as the CLI or the cockpit) reads and acts through `&dyn Catalog`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use autopilot_catalog::{Candidate, Catalog, Registration, Status};
use autopilot_catalog_etcd::{EtcdCatalog, EtcdOptions};
use autopilot_fleet::{FleetError, audit, nodes, overview};
use autopilot_testkit::{Etcd, TempDir};

fn opts(endpoint: &str, ttl_s: u64) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        prefix: "/fleet".into(),
        lease_ttl: Duration::from_secs(ttl_s),
        ..Default::default()
    }
}

fn reg(id: &str, name: &str, status: Status, tags: &[&str]) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port: 6379,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        status,
        ttl: Duration::from_secs(3),
        deregister_critical_after: None,
        seat: None,
    }
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_nodes_and_maintenance_on_etcd() {
    let dir = TempDir::new("fleet-etcd");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let agent: Arc<dyn Catalog> = Arc::new(
        EtcdCatalog::connect(opts(&ep, 3), "host1/1/1")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let reader: Arc<dyn Catalog> = Arc::new(
        EtcdCatalog::connect(opts(&ep, 3), "cockpit-1")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let a = agent.as_ref();
    for r in [
        reg(
            "host1",
            "_nodes",
            Status::Passing,
            &["maintenance=false", "version=0.1.0", "job=redis"],
        ),
        reg("redis-host1", "redis", Status::Passing, &[]),
        reg("web-host1", "web", Status::Critical, &[]),
        reg(
            "redis.redis-host1",
            "_members.redis",
            Status::Passing,
            &["position=5"],
        ),
    ] {
        a.register(&r).await.unwrap();
    }
    let me = Candidate {
        id: "redis-host1".into(),
        address: "127.0.0.1".into(),
        port: 6379,
    };
    assert!(
        a.campaign("redis", &me, Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );

    let c = reader.as_ref();
    let o = overview::read(c).await.unwrap();
    let names: Vec<&str> = o.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "redis"], "failing first, reserved hidden");
    assert_eq!(o.services[1].leader.as_deref(), Some("redis-host1"));
    assert_eq!(o.failing.len(), 1);
    assert_eq!(o.elections.len(), 1);
    assert_eq!(
        o.elections[0].leader.as_ref().map(|l| l.id.as_str()),
        Some("redis-host1")
    );
    assert_eq!(o.nodes.len(), 1);
    assert_eq!(o.nodes[0].jobs, ["redis"]);

    // The heartbeat another session reads comes from the agent's lease: it
    // moves with keep-alives (etcd keeps no per-entry heartbeat).
    let first = at(&nodes::list(c).await.unwrap()[0].last_heartbeat);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut moved = false;
    while Instant::now() < deadline && !moved {
        a.keep_alive().await.unwrap();
        let now = at(&nodes::list(c).await.unwrap()[0].last_heartbeat);
        moved = now
            .duration_since(first)
            .is_ok_and(|d| d >= Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the node's heartbeat never moved past {first:?}");

    // Maintenance: only for a node with an entry; the intent as the agent reads it.
    assert!(matches!(
        nodes::request_maintenance(c, "host9", true, "alice").await,
        Err(FleetError::NotFound(_))
    ));
    let m = nodes::request_maintenance(c, "host1", true, "alice")
        .await
        .unwrap();
    let raw = a.kv_get("_fleet/maintenance/host1").await.unwrap().unwrap();
    let back: nodes::MaintenanceIntent = serde_json::from_str(&raw).unwrap();
    assert_eq!(back, m);

    let key = audit::record(
        c,
        &audit::AuditEntry::new(
            "alice",
            "maintenance",
            "host1",
            serde_json::json!({"on": true}),
            "accepted",
        ),
    )
    .await
    .unwrap();
    let l = audit::list(c, 10).await.unwrap();
    assert_eq!(l.entries.len(), 1);
    assert_eq!(l.entries[0].key, key);
}
