//! `autopilot-dns`: a DNS server over the catalog (`autopilot dns`, the agent's `dns` block): services, tags and election leaders, answered from a cache the catalog's change stream keeps current.
//!
//! Names under the domain (default `autopilot.`):
//! - `NAME.service.DOMAIN`: A/AAAA of the passing instances, SRV with their ports;
//! - `_NAME._tcp.service.DOMAIN`: the same SRV (and A/AAAA);
//! - `TAG.NAME.service.DOMAIN`: the passing instances with that tag;
//! - `ELECTION.leader.DOMAIN`: the election's current leader;
//! - `HEX.addr.DOMAIN`: an SRV target (the address in hex, as Consul writes it).
//!
//! Queries never wait on the catalog: [`refresh`] rebuilds the zone from the
//! catalog at start and after each change (coalesced), every catalog call
//! under a deadline, and keeps the last good zone while the catalog fails.
//! The wire format, UDP serving, TCP framing and truncation (TC over UDP)
//! are hickory-server's; only the TCP accept loop is ours ([`tcp`]), to cap
//! connections.

pub mod handler;
pub mod refresh;
pub mod tcp;
pub mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::Catalog;
use hickory_server::Server;
use hickory_server::proto::rr::Name;

pub use handler::{Handler, Shared};
pub use zone::{View, Zone};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid dns domain {domain:?}: {message}")]
    Domain { domain: String, message: String },
    #[error("cannot listen for dns on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the dns server failed: {source}")]
    Serve {
        #[source]
        source: hickory_server::net::NetError,
    },
}

/// What the server answers and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// The domain, e.g. `autopilot.` (a trailing dot is added if missing).
    pub domain: String,
    /// The TTL of every answer.
    pub ttl: Duration,
}

impl DnsConfig {
    pub const DEFAULT_DOMAIN: &'static str = "autopilot.";
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8600";
}

/// Parses a domain as the server uses it: a lower-case absolute name.
pub fn parse_domain(domain: &str) -> Result<Name, DnsError> {
    let bad = |message: String| DnsError::Domain {
        domain: domain.to_string(),
        message,
    };
    let d = domain.trim();
    if d.is_empty() || d == "." {
        return Err(bad("it must name a domain, e.g. autopilot.".into()));
    }
    let labels: Vec<&str> = d.trim_end_matches('.').split('.').collect();
    if let Some(l) = labels.iter().find(|l| zone::label(l).is_none()) {
        return Err(bad(format!(
            "label {l:?} is not 1-63 letters, digits, '-' or '_'"
        )));
    }
    Name::from_labels(labels)
        .map(|n| n.to_lowercase())
        .map_err(|e| bad(e.to_string()))
}

/// A bound server: UDP and TCP on the same address.
pub struct DnsServer {
    server: Server<Handler>,
    addr: SocketAddr,
    refresher: tokio::task::JoinHandle<()>,
    tcp: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Binds UDP and TCP (port 0: TCP takes the port UDP got) and starts the
    /// refresher. Answers SERVFAIL until the first zone is read.
    pub async fn bind(cfg: &DnsConfig, cat: Arc<dyn Catalog>) -> Result<DnsServer, DnsError> {
        let domain = parse_domain(&cfg.domain)?;
        let udp = tokio::net::UdpSocket::bind(cfg.listen)
            .await
            .map_err(|source| DnsError::Bind {
                addr: cfg.listen,
                proto: "udp",
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: cfg.listen,
            proto: "udp",
            source,
        })?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "tcp",
                source,
            })?;
        let shared = Arc::new(Shared::new(Zone::empty(&domain, cfg.ttl)));
        let handler = Handler {
            shared: shared.clone(),
        };
        let tcp = tokio::spawn(tcp::serve(tcp, Arc::new(handler.clone())));
        let mut server = Server::new(handler);
        server.register_socket(udp);
        let refresher = tokio::spawn(refresh::run(cat, shared, domain, cfg.ttl));
        tracing::info!("dns: serving {} on {addr} (udp, tcp)", cfg.domain);
        Ok(DnsServer {
            server,
            addr,
            refresher,
            tcp,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` completes or a listener fails.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), DnsError> {
        let out = tokio::select! {
            r = self.server.block_until_done() => r.map_err(|source| DnsError::Serve { source }),
            () = stop => {
                let _ = self.server.shutdown_gracefully().await;
                Ok(())
            }
        };
        self.refresher.abort();
        self.tcp.abort();
        out
    }
}

#[cfg(test)]
mod tests;
