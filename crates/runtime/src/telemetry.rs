//! The telemetry HTTP endpoint: `/metrics` in Prometheus text format and `/status` as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::mpsc;

use crate::control::{Command, status_of};
use crate::listen::Limits;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Ctx {
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

/// Listens on `addr` only: the address of the configured `interfaces`, never
/// a wildcard unless the config names one (`static:0.0.0.0`). Connections are
/// capped and timed out (see [`Limits`]) so idle clients cannot use up the
/// descriptors health checks need.
pub async fn serve(
    addr: SocketAddr,
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/status", get(status))
        .with_state(Ctx { tx, metrics });
    tracing::info!(%addr, "telemetry listening");
    crate::listen::spawn(listener, app, Limits::default(), "telemetry");
    Ok(())
}

async fn metrics_page(State(c): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics.render(),
    )
        .into_response()
}

async fn status(State(c): State<Ctx>) -> Response {
    match status_of(&c.tx).await {
        Some(v) => axum::Json(v).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down\n").into_response(),
    }
}
