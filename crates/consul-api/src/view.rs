//! Indexes and blocking queries: the monotonic index kept in the catalog, the index of each read's answer, and waiting for an answer to change.
//!
//! One counter (`_consul/index`, CAS-incremented) orders everything: every
//! kv and session write takes the next value as its `ModifyIndex`. A read
//! (one path and its result-shaping parameters) keeps the index of its last
//! answer: when the answer's content changes, its index becomes the
//! counter's current value, or the counter is advanced when nothing was
//! written through it (a change by an autopilot agent). So an index only
//! grows, changes exactly when the answer does, and is never 0.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::sync::watch;

use crate::{HttpError, PREFIX, State};

/// The catalog key of the counter.
pub fn index_key() -> String {
    format!("{PREFIX}index")
}

/// The most reads remembered; beyond it, those nobody is waiting on are forgotten.
const MAX_VIEWS: usize = 4096;
/// Consul's default and largest `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// A rendered answer.
#[derive(Clone)]
pub struct Rendered {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    /// What else the answer's index follows beyond the body (a kv key list
    /// follows every `ModifyIndex` under its prefix, as Consul's does).
    pub tag: u64,
}

impl Rendered {
    /// The answer with `tag` set from `v`'s hash.
    pub fn tagged(mut self, v: &impl Hash) -> Rendered {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut h);
        self.tag = h.finish();
        self
    }

    pub fn json(v: &impl serde::Serialize) -> Result<Rendered, HttpError> {
        let body = serde_json::to_vec(v)
            .map_err(|e| HttpError::internal(format!("cannot encode the answer: {e}")))?;
        Ok(Rendered {
            status: StatusCode::OK,
            body: Bytes::from(body),
            content_type: "application/json",
            tag: 0,
        })
    }

    pub fn not_found() -> Rendered {
        Rendered {
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            content_type: "text/plain; charset=utf-8",
            tag: 0,
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.status.as_u16().hash(&mut h);
        self.body.hash(&mut h);
        self.tag.hash(&mut h);
        h.finish()
    }
}

#[derive(Default)]
struct ViewEntry {
    /// (catalog revision, local write generation) the answer was computed at.
    stamp: Option<(u64, u64)>,
    rendered: Option<Rendered>,
    fingerprint: u64,
    index: u64,
}

pub struct Views {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ViewEntry>>>>,
    changes: watch::Receiver<u64>,
    /// Bumped on every write made here, so a read after it never serves an
    /// answer computed before it (the catalog's revision may lag).
    generation: watch::Sender<u64>,
    /// Serializes increments of the counter made here.
    counter: tokio::sync::Mutex<u64>,
}

impl Views {
    pub fn new(changes: watch::Receiver<u64>) -> Views {
        Views {
            map: Mutex::new(HashMap::new()),
            changes,
            generation: watch::channel(0).0,
            counter: tokio::sync::Mutex::new(0),
        }
    }

    /// Records a write made through this server.
    pub fn wrote(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn stamp(&self) -> (u64, u64) {
        (*self.changes.borrow(), *self.generation.borrow())
    }

    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<ViewEntry>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(key) {
            return e.clone();
        }
        if map.len() >= MAX_VIEWS {
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
        let e = Arc::new(tokio::sync::Mutex::new(ViewEntry::default()));
        if map.len() < MAX_VIEWS {
            map.insert(key.to_string(), e.clone());
        }
        e
    }
}

/// The counter's current value (at least 1).
pub async fn current_index(st: &State) -> Result<u64, HttpError> {
    let raw = st.call(st.cat.kv_get(&index_key())).await?;
    let n = raw.and_then(|r| r.trim().parse::<u64>().ok()).unwrap_or(0);
    let mut last = st.views.counter.lock().await;
    *last = (*last).max(n);
    Ok((*last).max(1))
}

/// Advances the counter and returns the new value.
pub async fn next_index(st: &State) -> Result<u64, HttpError> {
    let key = index_key();
    let mut last = st.views.counter.lock().await;
    for _ in 0..64 {
        let raw = st.call(st.cat.kv_get(&key)).await?;
        let n = raw
            .as_deref()
            .and_then(|r| r.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // Never 1: a read answers 1 before anything was counted.
        let next = n.max(*last).max(1).saturating_add(1);
        if st
            .call(st.cat.kv_cas(&key, raw.as_deref(), &next.to_string()))
            .await?
        {
            *last = next;
            st.views.wrote();
            return Ok(next);
        }
    }
    Err(HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot advance the index: too many concurrent writers",
    ))
}

/// The blocking part of a read's query string.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blocking {
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

/// Answers a read: at once when no `index` is given, when it is 0, or when
/// the answer's index differs from it (newer, or older after a reset);
/// else when the answer changes or the wait (capped, plus up to 1/16
/// jitter) ends, whichever is first.
pub async fn answer<F, Fut>(
    st: &State,
    key: &str,
    b: Blocking,
    compute: F,
) -> Result<(Rendered, u64), HttpError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Rendered, HttpError>>,
{
    let entry = st.views.entry(key);
    let mut changes = st.views.changes.clone();
    let mut generation = st.views.generation.subscribe();
    changes.borrow_and_update();
    generation.borrow_and_update();
    let wanted = b.index.unwrap_or(0);
    let first = current(st, &entry, wanted == 0, &compute).await?;
    if wanted == 0 || first.1 != wanted {
        return Ok(first);
    }
    let wait = b.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let wait = wait.saturating_add(jitter(wait / 16));
    let deadline = tokio::time::Instant::now()
        .checked_add(wait)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut last = first;
    let mut changes_open = true;
    let mut generation_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(last),
            r = changes.changed(), if changes_open => changes_open = r.is_ok(),
            r = generation.changed(), if generation_open => generation_open = r.is_ok(),
        }
        changes.borrow_and_update();
        generation.borrow_and_update();
        last = current(st, &entry, false, &compute).await?;
        if last.1 != wanted {
            return Ok(last);
        }
    }
}

/// The read's answer and index now: recomputed unless the catalog and this
/// server's writes are unchanged since the last computation (`fresh` forces it).
async fn current<F, Fut>(
    st: &State,
    entry: &tokio::sync::Mutex<ViewEntry>,
    fresh: bool,
    compute: &F,
) -> Result<(Rendered, u64), HttpError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Rendered, HttpError>>,
{
    let mut e = entry.lock().await;
    let stamp = st.views.stamp();
    if !fresh
        && e.stamp == Some(stamp)
        && let Some(r) = &e.rendered
    {
        return Ok((r.clone(), e.index));
    }
    let r = compute().await?;
    let fp = r.fingerprint();
    if e.index == 0 {
        e.index = current_index(st).await?;
    } else if fp != e.fingerprint {
        let now = current_index(st).await?;
        e.index = if now > e.index {
            now
        } else {
            next_index(st).await?
        };
    }
    e.fingerprint = fp;
    e.stamp = Some(stamp);
    e.rendered = Some(r.clone());
    Ok((r, e.index))
}

/// A random duration in [0, max).
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    Duration::from_nanos(r % nanos)
}
