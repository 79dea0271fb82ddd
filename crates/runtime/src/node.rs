//! The node's fleet-facing side: the maintenance intent task (reads `_fleet/maintenance/<node>` at start and on every catalog change, every second while the catalog fails; applies it through the control path, records the outcome by compare-and-swap), the `_nodes` entry and the health log writer (`_fleet/health/<node>`).
//!
//! What to do is decided by [`autopilot_core::intent`]; this module only
//! reads, applies and writes, each catalog call under [`CALL_DEADLINE`].

use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Catalog, CatalogError, Outage, Registration, Status};
use autopilot_core::intent::{self, Decision, HealthTransition, Intent, IntentError, NodeView};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::control::Command;
use crate::metrics::Metrics;

/// Every catalog call of this module is given up after this long.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// The read before the jobs start waits no longer than this: a catalog
/// that is slow to answer delays the jobs by at most this much (the task
/// applies the intent when it answers).
pub const START_DEADLINE: Duration = Duration::from_secs(1);
/// The re-read after a failed read or record.
const RECHECK: Duration = Duration::from_secs(1);
/// Lost compare-and-swaps in a row before waiting for the next tick.
const CAS_RETRIES: usize = 5;

async fn bounded<T>(
    url: &str,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, CatalogError> {
    match tokio::time::timeout(CALL_DEADLINE, fut).await {
        Ok(r) => r,
        Err(_) => Err(CatalogError::Unavailable {
            url: url.to_string(),
            message: format!("{what}: no answer within {CALL_DEADLINE:?}"),
        }),
    }
}

/// The `_nodes` entry of an agent: id = node, on the agent's lease.
pub fn node_registration(
    node: &str,
    address: &str,
    view: &NodeView,
    ttl: Duration,
) -> Registration {
    Registration {
        id: node.to_string(),
        name: intent::NODES_SERVICE.to_string(),
        address: address.to_string(),
        port: 0,
        tags: view.tags(),
        status: if view.warning() {
            Status::Warning
        } else {
            Status::Passing
        },
        ttl,
        deregister_critical_after: None,
        seat: None,
    }
}

/// The intent read once: its raw value and what it decoded to.
type Read = Option<(String, Result<Intent, IntentError>)>;

/// Reads the node's maintenance intent and carries it out.
pub struct IntentWatcher {
    catalog: Arc<dyn Catalog>,
    key: String,
    session: String,
    metrics: Arc<Metrics>,
    last_applied: Option<String>,
    starting: bool,
    /// The id of the intent this session last recorded.
    recorded: Option<String>,
    /// The last hostile value logged, and how many reads were ignored.
    last_bad: Option<String>,
    ignored: u64,
    outage: Outage,
}

impl IntentWatcher {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        node: &str,
        session: &str,
        metrics: Arc<Metrics>,
    ) -> IntentWatcher {
        IntentWatcher {
            catalog,
            key: intent::maintenance_key(node),
            session: session.to_string(),
            metrics,
            last_applied: None,
            starting: true,
            recorded: None,
            last_bad: None,
            ignored: 0,
            outage: Outage::default(),
        }
    }

    async fn read(&mut self, limit: Duration) -> Result<Read, CatalogError> {
        let url = self.catalog.url().to_string();
        let raw = match tokio::time::timeout(limit, self.catalog.kv_get(&self.key)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(CatalogError::Unavailable {
                    url,
                    message: format!("reading the maintenance intent: no answer within {limit:?}"),
                });
            }
        };
        Ok(raw.map(|r| {
            let d = intent::decode(&r);
            (r, d)
        }))
    }

    fn decide(&mut self, read: &Read) -> Decision {
        let d = intent::decide(
            match read {
                None => Ok(None),
                Some((_, Ok(i))) => Ok(Some(i)),
                Some((_, Err(e))) => Err(e),
            },
            self.last_applied.as_deref(),
            self.starting,
            self.recorded.as_deref(),
            &self.session,
        );
        if let (Decision::Ignore(why), Some((raw, _))) = (&d, read) {
            self.ignored = self.ignored.saturating_add(1);
            self.metrics
                .record("autopilot_maintenance_intent_invalid_total", &[], 1.0);
            if self.last_bad.as_deref() != Some(raw.as_str()) {
                tracing::warn!(
                    key = %self.key,
                    ignored = self.ignored,
                    "ignoring the maintenance intent: {why} ({} unusable reads so far)",
                    self.ignored
                );
                self.last_bad = Some(raw.clone());
            }
        } else {
            self.last_bad = None;
        }
        d
    }

    /// The first read, before the jobs start: `Some(on)` when the intent
    /// asks for a maintenance state (the caller applies it at once; the
    /// task records it). A catalog that does not answer in time starts the
    /// agent as it would without an intent; the task applies it later.
    pub async fn first(&mut self) -> Option<bool> {
        let read = match self.read(START_DEADLINE).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key = %self.key, "cannot read the maintenance intent at start: {e}");
                return None;
            }
        };
        match self.decide(&read) {
            Decision::Apply { on } => {
                if let Some((_, Ok(i))) = &read {
                    tracing::info!(id = %i.id, by = %i.by, on, "maintenance intent applied at start");
                    self.last_applied = Some(i.id.clone());
                    self.starting = false;
                }
                Some(on)
            }
            _ => None,
        }
    }

    /// Runs until the agent stops answering control commands.
    pub fn spawn(self, control: mpsc::Sender<Command>) -> JoinHandle<()> {
        tokio::spawn(self.run(control))
    }

    async fn run(mut self, control: mpsc::Sender<Command>) {
        // Only a change of this node's intent key wakes the task (not every
        // registration of every agent: that was N reads per start of a fleet).
        let mut changes = self.catalog.changes_under(&format!("kv/{}", self.key));
        let mut open = true;
        loop {
            let mut again = 0;
            // A failed read or record is retried every second; otherwise
            // only a catalog change wakes the task (an idle node costs the
            // catalog nothing: the etcd watch resumes from its last
            // revision, so no intent is missed).
            let mut retry = true;
            while again < CAS_RETRIES {
                match self.step(&control).await {
                    Step::Done => {
                        retry = false;
                        break;
                    }
                    Step::Retry => break,
                    Step::Again => again = again.saturating_add(1),
                    Step::Gone => return,
                }
            }
            tokio::select! {
                r = changes.changed(), if open => {
                    if r.is_err() {
                        // No more change news: re-read every second.
                        open = false;
                    }
                }
                () = tokio::time::sleep(RECHECK), if retry || !open => {}
            }
        }
    }

    async fn step(&mut self, control: &mpsc::Sender<Command>) -> Step {
        let url = self.catalog.url().to_string();
        let read = match self.read(CALL_DEADLINE).await {
            Ok(r) => {
                self.outage
                    .recovered(&url, "reading the maintenance intent");
                r
            }
            Err(e) => {
                self.outage
                    .failed(&url, "reading the maintenance intent", &e.to_string());
                return Step::Retry;
            }
        };
        let decision = self.decide(&read);
        let Some((raw, Ok(i))) = &read else {
            return Step::Done;
        };
        match decision {
            Decision::Apply { on } => {
                let (tx, rx) = oneshot::channel();
                if control.send(Command::Maintenance(on, tx)).await.is_err() {
                    return Step::Gone;
                }
                let Ok(changed) = rx.await else {
                    return Step::Gone;
                };
                tracing::info!(id = %i.id, by = %i.by, on, changed, "maintenance intent applied");
                self.last_applied = Some(i.id.clone());
                self.starting = false;
                self.write_record(raw).await
            }
            Decision::Record => self.write_record(raw).await,
            Decision::Nothing | Decision::Ignore(_) => Step::Done,
        }
    }

    /// Records that this session applied the intent `raw`; a lost
    /// compare-and-swap reads again.
    async fn write_record(&mut self, raw: &str) -> Step {
        let url = self.catalog.url().to_string();
        let next = match intent::record(raw, autopilot_catalog::now_ms(), &self.session, "applied")
        {
            Ok(next) => next,
            Err(e) => {
                // `decode` accepted this value, so this is not expected:
                // logged and counted, never dropped in silence.
                tracing::warn!(key = %self.key, "cannot record the maintenance intent: {e}");
                self.metrics
                    .record("autopilot_maintenance_intent_invalid_total", &[], 1.0);
                return Step::Done;
            }
        };
        let res = bounded(&url, "recording the maintenance intent", async {
            self.catalog.kv_cas(&self.key, Some(raw), &next).await
        })
        .await;
        match res {
            Ok(true) => {
                self.recorded.clone_from(&self.last_applied);
                Step::Done
            }
            Ok(false) => Step::Again,
            Err(e) => {
                tracing::warn!(key = %self.key, "cannot record the maintenance intent: {e}; retrying");
                Step::Retry
            }
        }
    }
}

enum Step {
    /// Nothing left to do until the catalog changes.
    Done,
    /// The catalog failed: try again in a second.
    Retry,
    /// A lost compare-and-swap: read again at once.
    Again,
    Gone,
}

/// Appends job health transitions to `_fleet/health/<node>` by
/// compare-and-swap, in order, off the agent loop. Transitions that arrive
/// while 256 wait are dropped (the log is a convenience, not a record).
#[derive(Clone)]
pub struct HealthLog {
    tx: mpsc::Sender<HealthTransition>,
}

impl HealthLog {
    pub fn start(catalog: Arc<dyn Catalog>, node: &str) -> HealthLog {
        let (tx, mut rx) = mpsc::channel::<HealthTransition>(256);
        let key = intent::health_key(node);
        tokio::spawn(async move {
            let url = catalog.url().to_string();
            let mut outage = Outage::default();
            while let Some(t) = rx.recv().await {
                for _ in 0..CAS_RETRIES {
                    let res = bounded(&url, "writing the health log", async {
                        let cur = catalog.kv_get(&key).await?;
                        let next = intent::push_health(cur.as_deref(), t.clone());
                        catalog.kv_cas(&key, cur.as_deref(), &next).await
                    })
                    .await;
                    match res {
                        Ok(true) => {
                            outage.recovered(&url, "writing the health log");
                            break;
                        }
                        Ok(false) => continue,
                        Err(e) => {
                            outage.failed(&url, "writing the health log", &e.to_string());
                            break;
                        }
                    }
                }
            }
        });
        HealthLog { tx }
    }

    pub fn push(&self, job: &str, status: &str) {
        let _ = self.tx.try_send(HealthTransition {
            job: job.to_string(),
            status: status.to_string(),
            at_ms: autopilot_catalog::now_ms(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    #[tokio::test]
    async fn applies_records_and_ignores_garbage() {
        let dir = autopilot_testkit::TempDir::new("node-intent");
        let cat: Arc<dyn Catalog> = Arc::new(
            autopilot_catalog_local::LocalCatalog::open(&dir.0.join("c"), "n1/1/1").unwrap(),
        );
        let metrics = Arc::new(Metrics::new(&[]));
        let key = intent::maintenance_key("n1");
        cat.kv_put(&key, r#"{"on":true,"id":"a1","by":"t","at_ms":1}"#)
            .await
            .unwrap();
        let mut w = IntentWatcher::new(cat.clone(), "n1", "n1/1/1", metrics.clone());
        assert_eq!(w.first().await, Some(true));
        let (tx, mut rx) = mpsc::channel(8);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if let Command::Maintenance(on, reply) = c {
                    s.lock().unwrap().push(on);
                    let _ = reply.send(true);
                }
            }
        });
        let task = w.spawn(tx);
        let recorded = |id: &'static str| {
            let cat = cat.clone();
            let key = key.clone();
            async move {
                let Some(raw) = cat.kv_get(&key).await.unwrap() else {
                    return false;
                };
                intent::decode(&raw).is_ok_and(|i| {
                    i.id == id
                        && i.applied_by.as_deref() == Some("n1/1/1")
                        && i.outcome.as_deref() == Some("applied")
                })
            }
        };
        assert!(eventually(async || recorded("a1").await).await);
        // Applied at start by the caller: not sent again.
        assert!(seen.lock().unwrap().is_empty());
        for bad in [
            "garbage",
            "[]",
            r#"{"on":1,"id":"x"}"#,
            "{\"on\":true,\"id\":\"\"}",
        ] {
            cat.kv_put(&key, bad).await.unwrap();
            assert!(
                eventually(async || metrics
                    .render()
                    .contains("autopilot_maintenance_intent_invalid_total "))
                .await
            );
        }
        cat.kv_put(&key, r#"{"on":false,"id":"b2","by":"t","at_ms":2}"#)
            .await
            .unwrap();
        assert!(eventually(async || recorded("b2").await).await);
        assert_eq!(*seen.lock().unwrap(), vec![false]);
        task.abort();
    }
}
