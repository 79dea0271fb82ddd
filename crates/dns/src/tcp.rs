//! DNS over TCP with a cap on connections: hickory-server's own TCP loop has none, so the accept loop is ours and each connection is hickory's framed stream, idle timeout, request decoding and response handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::tcp::TcpStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandle, TimeoutStream};
use tokio::sync::Semaphore;

use crate::handler::Handler;

/// At most this many TCP connections at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection is closed after this long without a query.
pub const IDLE: Duration = Duration::from_secs(5);
/// Responses queued per connection.
const QUEUE: usize = 32;

/// Accepts until aborted.
pub async fn serve(listener: tokio::net::TcpListener, handler: Arc<Handler>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // wait a little rather than spin.
                tracing::debug!("dns: tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("dns: {MAX_CONNECTIONS} tcp connections open; closing one from {src}");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            connection(stream, src, &handler).await;
            drop(slot);
        });
    }
}

async fn connection(stream: tokio::net::TcpStream, src: SocketAddr, handler: &Handler) {
    let (framed, handle) =
        TcpStream::from_stream_with_buffer_size(AsyncIoTokioAsStd(stream), src, QUEUE);
    let mut messages = TimeoutStream::new(framed, IDLE);
    while let Some(Ok(message)) = messages.next().await {
        let (bytes, from) = message.into_parts();
        let Ok(request) = Request::from_bytes(bytes, from, Protocol::Tcp) else {
            return;
        };
        let response = ResponseHandle::new(from, handle.clone(), Protocol::Tcp);
        handler
            .handle_request::<_, TokioTime>(&request, response)
            .await;
    }
}
