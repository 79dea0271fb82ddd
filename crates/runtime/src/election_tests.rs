//! The election task's timing argument under a catalog that freezes, with tokio's paused clock.
//!
//! A stalled catalog (a frozen etcd, a partition that holds traffic) never
//! answers. The task must still declare itself demoted by
//! `last renewal sent + ttl - margin`, before any other node could win.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, ServiceSummary, Status,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::catalog::{ElectionNews, spawn_election};

/// A catalog that grants the seat while `frozen` is false and never answers
/// once it is true; it records when each successful renewal was sent.
struct Freezable {
    frozen: Arc<Mutex<bool>>,
    renewals_sent: Arc<Mutex<Vec<Instant>>>,
    changes: watch::Receiver<u64>,
}

impl Freezable {
    async fn gate(&self) {
        if *self.frozen.lock().expect("lock") {
            std::future::pending::<()>().await;
        }
    }
}

fn unused() -> CatalogError {
    CatalogError::Unavailable {
        url: "test".into(),
        message: "not used here".into(),
    }
}

#[async_trait::async_trait]
impl Catalog for Freezable {
    fn url(&self) -> &str {
        "test://freezable"
    }
    async fn register(&self, _: &Registration) -> Result<(), CatalogError> {
        Err(unused())
    }
    async fn set_status(&self, _: &str, _: Status) -> Result<bool, CatalogError> {
        Err(unused())
    }
    async fn deregister(&self, _: &str) -> Result<(), CatalogError> {
        Err(unused())
    }
    async fn keep_alive(&self) -> Result<usize, CatalogError> {
        Err(unused())
    }
    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError> {
        Err(unused())
    }
    async fn instances(&self, _: &str) -> Result<Vec<Instance>, CatalogError> {
        Err(unused())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
    async fn kv_get(&self, _: &str) -> Result<Option<String>, CatalogError> {
        Err(unused())
    }
    async fn kv_put(&self, _: &str, _: &str) -> Result<(), CatalogError> {
        Err(unused())
    }
    async fn kv_cas(&self, _: &str, _: Option<&str>, _: &str) -> Result<bool, CatalogError> {
        Err(unused())
    }
    async fn kv_delete(&self, _: &str) -> Result<bool, CatalogError> {
        Err(unused())
    }
    async fn kv_list(&self, _: &str) -> Result<Vec<(String, String)>, CatalogError> {
        Err(unused())
    }
    async fn lock(&self, _: &str) -> Result<(), CatalogError> {
        Err(unused())
    }
    async fn unlock(&self, _: &str) -> Result<(), CatalogError> {
        Err(unused())
    }
    async fn holds_lock(&self, _: &str) -> Result<bool, CatalogError> {
        Err(unused())
    }
    fn lock_ttl(&self) -> Duration {
        Duration::from_secs(3)
    }
    async fn campaign(
        &self,
        _: &str,
        _: &Candidate,
        _: Duration,
    ) -> Result<Option<u64>, CatalogError> {
        let sent = Instant::now();
        self.gate().await;
        self.renewals_sent.lock().expect("lock").push(sent);
        Ok(Some(1))
    }
    async fn resign(&self, _: &str) -> Result<(), CatalogError> {
        self.gate().await;
        Ok(())
    }
    async fn leader(&self, _: &str) -> Result<Option<Leader>, CatalogError> {
        self.gate().await;
        Ok(Some(Leader {
            id: "me".into(),
            address: "127.0.0.1".into(),
            port: 1,
            term: 1,
        }))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_frozen_catalog_demotes_the_leader_before_its_seat_can_expire() {
    let ttl = Duration::from_secs(3);
    let margin = (ttl / 5).max(Duration::from_millis(300));
    let frozen = Arc::new(Mutex::new(false));
    let renewals_sent = Arc::new(Mutex::new(Vec::new()));
    let (_changes_tx, changes) = watch::channel(0u64);
    let catalog = Arc::new(Freezable {
        frozen: frozen.clone(),
        renewals_sent: renewals_sent.clone(),
        changes,
    });
    let (_want_tx, want) = watch::channel(true);
    let (tx, mut rx) = mpsc::channel(16);
    let me = Candidate {
        id: "me".into(),
        address: "127.0.0.1".into(),
        port: 1,
    };
    let task = spawn_election(catalog, "e".into(), me, ttl, want, tx, |n| n);
    loop {
        match rx.recv().await.expect("news") {
            ElectionNews::Elected(1) => break,
            ElectionNews::Leader(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // A few renewals go through, then the catalog freezes mid-term.
    tokio::time::sleep(ttl + ttl / 2).await;
    *frozen.lock().expect("lock") = true;
    let demoted = tokio::time::timeout(ttl * 2, async {
        loop {
            match rx.recv().await.expect("news") {
                ElectionNews::Demoted(1) => break Instant::now(),
                ElectionNews::Leader(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a leader whose catalog froze must demote itself");
    let last = *renewals_sent.lock().expect("lock").last().expect("renewed");
    let held = demoted.duration_since(last);
    assert!(
        held <= ttl - margin,
        "demoted {held:?} after the last renewal was sent; must be within ttl - margin = {:?}",
        ttl - margin
    );
    assert!(
        held >= ttl - margin - Duration::from_millis(50),
        "demoted too early ({held:?}): a leader keeps its seat until its deadline"
    );
    task.abort();
}
