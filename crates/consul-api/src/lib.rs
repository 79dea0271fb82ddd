//! A Consul-compatible HTTP API over autopilot's catalog: the agent, catalog, health, kv, session and status endpoints Consul's own clients use, with blocking queries.
//!
//! The server is a library over `Arc<dyn Catalog>`; `autopilot consul-api`
//! (crates/autopilot/src/cli/consul.rs) serves it with the cockpit's bounded
//! listener and token files. Modules: `http` (dispatch, auth, query
//! parameters, replies), `view` (indexes and blocking queries), `kv`,
//! `session`, `agent` (services registered here, TTL checks), `health`
//! (catalog and health reads), `duration` (Go durations).

mod agent;
mod duration;
mod health;
mod http;
mod kv;
mod session;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Catalog, CatalogError};
use autopilot_cockpit::Tokens;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use duration::parse_go_duration;

/// The catalog prefix every key of this server lives under.
pub const PREFIX: &str = "_consul/";

/// What the server needs besides the catalog.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node name this "agent" answers as (`/v1/agent/self`, services registered here).
    pub node: String,
    /// The datacenter name (Consul's default is `dc1`).
    pub datacenter: String,
    /// The address answered for the node and by `/v1/status/leader`.
    pub advertise: SocketAddr,
    /// The deadline of every catalog call.
    pub catalog_deadline: Duration,
    /// The longest a request body may take to arrive.
    pub body_timeout: Duration,
    /// How long entries registered here outlive this server's last keep-alive.
    pub entry_ttl: Duration,
}

impl Config {
    pub fn new(node: &str, advertise: SocketAddr) -> Config {
        Config {
            node: node.to_string(),
            datacenter: "dc1".to_string(),
            advertise,
            catalog_deadline: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            entry_ttl: Duration::from_secs(15),
        }
    }
}

/// An error answered to a client: an HTTP status and a plain-text body, as Consul answers.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    #[source]
    pub source: Option<CatalogError>,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            source: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<CatalogError> for HttpError {
    fn from(e: CatalogError) -> HttpError {
        let status = match e {
            CatalogError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError {
            status,
            message: e.to_string(),
            source: Some(e),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.message)).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

/// The running API: build it with [`ConsulApi::start`], serve [`ConsulApi::router`].
#[derive(Clone)]
pub struct ConsulApi {
    st: Arc<State>,
}

pub(crate) struct State {
    pub cat: Arc<dyn Catalog>,
    pub tokens: Tokens,
    pub cfg: Config,
    pub views: view::Views,
    pub agent: agent::Agent,
    pub sessions: session::Sessions,
}

impl State {
    /// Runs a catalog call under the deadline: 503 past it.
    pub async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, CatalogError>>,
    ) -> Result<T, HttpError> {
        match tokio::time::timeout(self.cfg.catalog_deadline, f).await {
            Ok(r) => r.map_err(HttpError::from),
            Err(_) => Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "catalog {}: no answer within {} ms",
                    self.cat.url(),
                    self.cfg.catalog_deadline.as_millis()
                ),
            )),
        }
    }
}

impl ConsulApi {
    /// Restores the services registered here before a restart and starts
    /// the background work (keep-alives, TTL checks, session expiry), which
    /// ends when every clone of the returned value is dropped.
    pub async fn start(
        cat: Arc<dyn Catalog>,
        tokens: Tokens,
        cfg: Config,
    ) -> Result<ConsulApi, HttpError> {
        let st = Arc::new(State {
            views: view::Views::new(cat.changes()),
            agent: agent::Agent::default(),
            sessions: session::Sessions::default(),
            cat,
            tokens,
            cfg,
        });
        agent::restore(&st).await?;
        let weak = Arc::downgrade(&st);
        tokio::spawn(background(weak));
        Ok(ConsulApi { st })
    }

    pub fn router(&self) -> axum::Router {
        http::router(self.st.clone())
    }
}

/// The periodic work: TTL checks every 250 ms, keep-alives, session expiry every second.
async fn background(st: std::sync::Weak<State>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(st) = st.upgrade() else { return };
        n = n.wrapping_add(1);
        agent::check_ttls(&st).await;
        let every = st
            .cat
            .keep_alive_interval()
            .unwrap_or(st.cfg.entry_ttl / 3)
            .as_millis()
            .max(250)
            / 250;
        if n.is_multiple_of(u64::try_from(every).unwrap_or(1).max(1)) {
            agent::keep_alive(&st).await;
        }
        if n.is_multiple_of(4) {
            session::expire(&st).await;
        }
    }
}

/// Refuses a listen address other than loopback without tokens, unless `insecure` says so.
pub fn check_listen(
    addr: SocketAddr,
    tokens: &Tokens,
    insecure: bool,
) -> Result<(), autopilot_cockpit::CockpitError> {
    if insecure {
        return Ok(());
    }
    autopilot_cockpit::check_listen(addr, tokens)
}
