//! Serving the router on a TCP listener, plain or TLS, within bounds: a connection cap, a TLS handshake and header timeout, and a stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::error::CockpitError;

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (event streams included); more are closed
    /// as soon as accepted.
    pub max_connections: usize,
    /// Event streams (`/api/v1/events`) open at once; more get 503.
    pub max_event_streams: usize,
    /// The deadline of every catalog call a request makes (503 past it).
    pub catalog_deadline: Duration,
    /// The longest a request other than an event stream may take, body
    /// included, so a slow client cannot hold a connection slot.
    pub request_timeout: Duration,
    /// Time a client has to send a request's headers (and the keep-alive
    /// idle timeout).
    pub header_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_event_streams: 64,
            catalog_deadline: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        limits: Limits,
    ) -> Result<Server, CockpitError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| CockpitError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| CockpitError::Bind { addr, source })?;
        Ok(Server {
            listener,
            addr,
            tls,
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves `app` until `stop` completes.
    pub async fn run(self, app: Router, stop: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let mut refused = Throttle::default();
        let mut failed = Throttle::default();
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => return,
                a = self.listener.accept() => a,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; pause
                    // so the loop does not spin.
                    failed.hit(&format_args!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(tcp);
                refused.hit(&format_args!(
                    "{} connections open: closing new ones",
                    self.limits.max_connections
                ));
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let tls = self.tls.clone();
            let limits = self.limits;
            tokio::spawn(async move {
                let _slot = slot;
                match tls {
                    None => serve(tcp, app, limits).await,
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                                .await
                        else {
                            // A client that fails or stalls its handshake: nothing to report.
                            return;
                        };
                        serve(stream, app, limits).await;
                    }
                }
            });
        }
    }
}

async fn serve<I>(io: I, app: Router, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    // Errors here are a client's (timeouts, resets): nothing to report.
    let _ = conn.await;
}

/// How often a repeated warning is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts a repeated problem and logs it at most every [`WARN_EVERY`], with the count.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn hit(&mut self, detail: &dyn std::fmt::Display) {
        self.count = self.count.saturating_add(1);
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(count = self.count, "cockpit: {detail}");
            self.last = Some(Instant::now());
            self.count = 0;
        }
    }
}
