//! Live updates: `/api/v1/events`, a Server-Sent Events stream driven by the catalog's change revision, coalesced and kept alive, with a cap on open streams.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::ApiError;

/// At most one `change` event per this long: a burst of catalog writes is one event.
pub const COALESCE: Duration = Duration::from_millis(100);
/// A `: keep-alive` comment this often, so proxies keep the stream open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/v1/events`.
pub async fn events(State(state): State<AppState>) -> Result<Response, ApiError> {
    let inner = state.inner();
    let permit = inner.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "{} event streams are open: try again later",
            inner.limits.max_event_streams
        ))
    })?;
    let rx = inner.cat.changes();
    Ok(Sse::new(changes(rx, permit, COALESCE))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

fn event(name: &str, revision: u64) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::json!({ "revision": revision }).to_string())
}

struct Feed {
    rx: watch::Receiver<u64>,
    /// When the last `change` went out; `None` before the `hello`.
    last: Option<Instant>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// `hello` with the current revision at once, then a `change` per catalog
/// change, at most one per `every` (changes in between are merged into the
/// next). Ends when the catalog's change feed ends.
pub fn changes(
    rx: watch::Receiver<u64>,
    permit: impl Into<Option<OwnedSemaphorePermit>>,
    every: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let feed = Feed {
        rx,
        last: None,
        _permit: permit.into(),
    };
    stream::unfold(feed, move |mut feed| async move {
        let Some(last) = feed.last else {
            let rev = *feed.rx.borrow_and_update();
            feed.last = Some(
                Instant::now()
                    .checked_sub(every)
                    .unwrap_or_else(Instant::now),
            );
            return Some((Ok(event("hello", rev)), feed));
        };
        if let Some(at) = last.checked_add(every) {
            tokio::time::sleep_until(at).await;
        }
        feed.rx.changed().await.ok()?;
        let rev = *feed.rx.borrow_and_update();
        feed.last = Some(Instant::now());
        Some((Ok(event("change", rev)), feed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(e: &Event) -> String {
        // Event has no accessors; its Debug form carries the buffer.
        format!("{e:?}")
    }

    #[tokio::test(start_paused = true)]
    async fn hello_then_one_change_per_window() {
        let (tx, rx) = watch::channel(7u64);
        let s = changes(rx, None, COALESCE);
        tokio::pin!(s);
        let hello = s.next().await.unwrap().unwrap();
        assert!(text(&hello).contains("hello") && text(&hello).contains("7"));
        tx.send(8).unwrap();
        let t0 = Instant::now();
        let first = s.next().await.unwrap().unwrap();
        assert!(text(&first).contains("change") && text(&first).contains("8"));
        assert!(
            t0.elapsed() < Duration::from_millis(10),
            "the first change goes at once"
        );
        // A burst: three changes within the window become one event, the newest.
        for r in 9..=11 {
            tx.send(r).unwrap();
        }
        let t1 = Instant::now();
        let second = s.next().await.unwrap().unwrap();
        assert!(text(&second).contains("11"), "{}", text(&second));
        assert!(
            t1.elapsed() >= Duration::from_millis(99),
            "coalesced: {:?}",
            t1.elapsed()
        );
        drop(tx);
        assert!(s.next().await.is_none(), "ends with the feed");
    }
}
