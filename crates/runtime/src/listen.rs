//! Serving HTTP on the agent's listeners within bounds: a connection cap, a header/idle timeout, a connection lifetime, and the descriptor limit.
//!
//! Idle or slow clients must never use up the agent's file descriptors: the
//! same descriptors spawn health checks and jobs.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Bounds for one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from the
    /// connection (or the previous response): also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// Longest a connection may live, so a slow body cannot hold a slot forever.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            header_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(120),
        }
    }
}

/// A listener the server accepts connections from (TCP or unix).
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&mut self) -> io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&mut self) -> io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// How often a repeated warning (refused connections, accept errors) is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts a repeated problem and logs it at most every [`WARN_EVERY`], with the count.
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn hit(&mut self, what: &str, detail: &dyn std::fmt::Display) {
        self.count = self.count.saturating_add(1);
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(listener = what, count = self.count, "{detail}");
            self.last = Some(Instant::now());
            self.count = 0;
        }
    }
}

/// Serves `app` on `listener` in a background task until the process exits.
pub fn spawn<L: Listener>(mut listener: L, app: Router, limits: Limits, what: &'static str) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut refused = Throttle {
            last: None,
            count: 0,
        };
        let mut failed = Throttle {
            last: None,
            count: 0,
        };
        loop {
            let io = match listener.accept_io().await {
                Ok(io) => io,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; pause
                    // so the loop does not spin, then try again.
                    failed.hit(what, &format_args!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(io);
                refused.hit(
                    what,
                    &format_args!(
                        "{} connections open: closing new ones",
                        limits.max_connections
                    ),
                );
                continue;
            };
            let svc = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(io), svc);
                // Errors here are a client's (timeouts, resets): nothing to report.
                let _ = tokio::time::timeout(limits.lifetime, conn).await;
            });
        }
    });
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the agent keeps
/// descriptors in reserve for spawning beyond what its listeners can hold.
/// Returns the new (soft, hard) limits.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= hard {
        return Ok((soft, hard));
    }
    // An unlimited hard limit is refused for descriptors (above fs.nr_open):
    // settle for the kernel's default ceiling then.
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok((hard, hard)),
        Err(_) => {
            let target = hard.min(1 << 20).max(soft);
            setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
            Ok((target, hard))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_reaches_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, hard) = raise_nofile_limit().expect("raise");
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("get"),
            (soft, hard)
        );
        assert!(soft == hard || soft == 1 << 20, "{soft} of {hard}");
    }
}
