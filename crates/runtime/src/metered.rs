//! A metering wrapper around the agent's catalog: every request's duration and failure, by operation, into `autopilot_catalog_request_duration_seconds` and `autopilot_catalog_request_errors_total`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, ServiceSummary, Status,
};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Forwards every call to the wrapped catalog and meters it.
pub struct Metered {
    inner: Arc<dyn Catalog>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Catalog>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }

    async fn timed<T>(
        &self,
        operation: &str,
        fut: impl std::future::Future<Output = Result<T, CatalogError>>,
    ) -> Result<T, CatalogError> {
        let t0 = Instant::now();
        let r = fut.await;
        self.metrics.record(
            "autopilot_catalog_request_duration_seconds",
            &[("operation", operation)],
            t0.elapsed().as_secs_f64(),
        );
        // A refused seat is an answer, not a failing catalog.
        let failed = matches!(
            r,
            Err(CatalogError::Unavailable { .. } | CatalogError::Invalid { .. })
        );
        self.metrics.record(
            "autopilot_catalog_request_errors_total",
            &[("operation", operation)],
            if failed { 1.0 } else { 0.0 },
        );
        r
    }
}

#[async_trait::async_trait]
impl Catalog for Metered {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.timed("register", self.inner.register(reg)).await
    }

    async fn set_status(&self, id: &str, status: Status) -> Result<bool, CatalogError> {
        self.timed("set_status", self.inner.set_status(id, status))
            .await
    }

    async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
        self.timed("deregister", self.inner.deregister(id)).await
    }

    async fn keep_alive(&self) -> Result<usize, CatalogError> {
        self.timed("keep_alive", self.inner.keep_alive()).await
    }

    fn keep_alive_interval(&self) -> Option<Duration> {
        self.inner.keep_alive_interval()
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError> {
        self.timed("services", self.inner.services()).await
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError> {
        self.timed("instances", self.inner.instances(service)).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }

    fn changes_under(&self, prefix: &str) -> watch::Receiver<u64> {
        self.inner.changes_under(prefix)
    }

    async fn kv_get(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.timed("kv_get", self.inner.kv_get(key)).await
    }

    async fn kv_put(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.timed("kv_put", self.inner.kv_put(key, value)).await
    }

    async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, CatalogError> {
        self.timed("kv_cas", self.inner.kv_cas(key, expected, value))
            .await
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, CatalogError> {
        self.timed("kv_delete", self.inner.kv_delete(key)).await
    }

    async fn kv_delete_if(&self, key: &str, expected: &str) -> Result<bool, CatalogError> {
        self.timed("kv_delete_if", self.inner.kv_delete_if(key, expected))
            .await
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String)>, CatalogError> {
        self.timed("kv_list", self.inner.kv_list(prefix)).await
    }

    /// Waiting for a held lock is not a slow catalog: `lock` is counted
    /// for errors only.
    async fn lock(&self, name: &str) -> Result<(), CatalogError> {
        let r = self.inner.lock(name).await;
        let failed = matches!(
            r,
            Err(CatalogError::Unavailable { .. } | CatalogError::Invalid { .. })
        );
        self.metrics.record(
            "autopilot_catalog_request_errors_total",
            &[("operation", "lock")],
            if failed { 1.0 } else { 0.0 },
        );
        r
    }

    async fn try_lock(&self, name: &str) -> Result<bool, CatalogError> {
        self.timed("try_lock", self.inner.try_lock(name)).await
    }

    async fn unlock(&self, name: &str) -> Result<(), CatalogError> {
        self.timed("unlock", self.inner.unlock(name)).await
    }

    async fn holds_lock(&self, name: &str) -> Result<bool, CatalogError> {
        self.timed("holds_lock", self.inner.holds_lock(name)).await
    }

    fn lock_ttl(&self) -> Duration {
        self.inner.lock_ttl()
    }

    async fn campaign(
        &self,
        election: &str,
        me: &Candidate,
        ttl: Duration,
    ) -> Result<Option<u64>, CatalogError> {
        self.timed("campaign", self.inner.campaign(election, me, ttl))
            .await
    }

    async fn resign(&self, election: &str) -> Result<(), CatalogError> {
        self.timed("resign", self.inner.resign(election)).await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>, CatalogError> {
        self.timed("leader", self.inner.leader(election)).await
    }

    async fn end_seat(&self, election: &str, leader: &Leader) -> Result<bool, CatalogError> {
        self.timed("end_seat", self.inner.end_seat(election, leader))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_timed_and_failures_counted() {
        let dir = autopilot_testkit::TempDir::new("metered");
        let local = autopilot_catalog_local::LocalCatalog::open(&dir.0.join("c"), "h/1/1").unwrap();
        let metrics = Arc::new(Metrics::new(&[]));
        let cat = Metered::new(Arc::new(local), metrics.clone());
        cat.kv_put("a", "1").await.unwrap();
        assert_eq!(cat.kv_get("a").await.unwrap().as_deref(), Some("1"));
        assert!(cat.kv_get("").await.is_err());
        let out = metrics.render();
        assert!(
            out.contains(
                "autopilot_catalog_request_duration_seconds_count{operation=\"kv_get\"} 2\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("autopilot_catalog_request_errors_total{operation=\"kv_get\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("autopilot_catalog_request_errors_total{operation=\"kv_put\"} 0\n"),
            "{out}"
        );
    }
}
