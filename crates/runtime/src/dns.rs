//! The agent's `dns` block: starts the `autopilot-dns` server on the agent's catalog as a task that lives as long as the agent.

use std::sync::Arc;

use autopilot_catalog::Catalog;
use autopilot_config::DnsConfig;
use autopilot_dns::DnsServer;

use crate::agent::AgentError;

/// Binds UDP and TCP on `dns.listen` (a failure is a startup error) and
/// serves in the background.
pub async fn start(cfg: &DnsConfig, catalog: Arc<dyn Catalog>) -> Result<(), AgentError> {
    let server = DnsServer::bind(
        &autopilot_dns::DnsConfig {
            listen: cfg.listen,
            domain: cfg.domain.clone(),
            ttl: cfg.ttl,
        },
        catalog,
    )
    .await
    .map_err(AgentError::Dns)?;
    tokio::spawn(async move {
        if let Err(e) = server.run(std::future::pending()).await {
            tracing::error!("dns: {e}");
        }
    });
    Ok(())
}
