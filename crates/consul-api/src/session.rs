//! `/v1/session/*`: sessions stored under `_consul/sessions/<id>`, their TTL enforced here (invalidated at twice the TTL without a renewal, as Consul grants), releasing or deleting the keys they hold; lock-delay kept in memory.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::duration::format_go_duration;
use crate::http::{self, Req};
use crate::view::{self, Rendered};
use crate::{HttpError, PREFIX, State};

/// Consul's bounds of a session TTL.
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Consul's default lock-delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// The most sessions kept.
const MAX_SESSIONS: usize = 10_000;

fn skey(id: &str) -> String {
    format!("{PREFIX}sessions/{id}")
}

/// A stored session; the JSON Consul answers is [`Session::public`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Session {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Consul answers it.
    pub lock_delay: u64,
    pub behavior: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub create_index: u64,
    pub modify_index: u64,
    /// When it is invalidated without a renewal (ms since the epoch); absent without a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl Session {
    fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": [],
            "ServiceChecks": null,
            "Checks": [],
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        })
    }

    fn ttl(&self) -> Option<Duration> {
        crate::duration::parse_go_duration(&self.ttl).filter(|d| !d.is_zero())
    }
}

/// Lock-delays in force: key → until when `acquire` fails.
#[derive(Default)]
pub struct Sessions {
    delays: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Whether `key` is within a lock-delay.
    pub fn delayed(&self, key: &str) -> bool {
        let mut d = self.delays.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        d.retain(|_, until| *until > now);
        d.contains_key(key)
    }

    fn delay(&self, key: &str, for_: Duration) {
        if for_.is_zero() {
            return;
        }
        let mut d = self.delays.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() >= crate::kv::MAX_KEYS {
            let now = Instant::now();
            d.retain(|_, until| *until > now);
        }
        if d.len() < crate::kv::MAX_KEYS
            && let Some(until) = Instant::now().checked_add(for_)
        {
            d.insert(key.to_string(), until);
        }
    }
}

pub async fn get(st: &State, id: &str) -> Result<Option<Session>, HttpError> {
    if id.is_empty() || id.len() > 128 || id.contains('/') {
        return Ok(None);
    }
    Ok(st
        .call(st.cat.kv_get(&skey(id)))
        .await?
        .and_then(|raw| serde_json::from_str(&raw).ok()))
}

async fn all(st: &State) -> Result<Vec<(String, Session)>, HttpError> {
    let raw = st
        .call(st.cat.kv_list(&format!("{PREFIX}sessions/")))
        .await?;
    Ok(raw
        .into_iter()
        .take(MAX_SESSIONS)
        .filter_map(|(_, v)| {
            let s: Session = serde_json::from_str(&v).ok()?;
            Some((v, s))
        })
        .collect())
}

pub async fn handle(st: &Arc<State>, req: Req) -> Result<Response, HttpError> {
    let parts: Vec<&str> = req.rest.splitn(3, '/').collect();
    let (op, arg) = match parts[..] {
        [_, op] => (op, None),
        [_, op, arg] => (op, Some(arg.to_string())),
        _ => return Err(http::unsupported(&req)),
    };
    match (op, arg) {
        ("create", None) => {
            http::need_method(&req, &[Method::PUT])?;
            req.query.only(&[])?;
            create(st, req).await
        }
        ("renew", Some(id)) => {
            http::need_method(&req, &[Method::PUT])?;
            req.query.only(&[])?;
            renew(st, &id).await
        }
        ("destroy", Some(id)) => {
            http::need_method(&req, &[Method::PUT])?;
            req.query.only(&[])?;
            if get(st, &id).await?.is_some() {
                invalidate(st, &id).await?;
            }
            http::json(&true)
        }
        ("info", Some(id)) => {
            http::need_method(&req, &[Method::GET])?;
            req.query.only(&["index", "wait"])?;
            let b = req.query.blocking()?;
            let (r, idx) = view::answer(st, &format!("session\0info\0{id}"), b, || async {
                let out: Vec<serde_json::Value> =
                    get(st, &id).await?.iter().map(Session::public).collect();
                Rendered::json(&out)
            })
            .await?;
            Ok(http::reply(r, Some(idx)))
        }
        ("list", None) | ("node", Some(_)) => {
            http::need_method(&req, &[Method::GET])?;
            req.query.only(&["index", "wait"])?;
            let b = req.query.blocking()?;
            let node = if op == "node" {
                parts.get(2).map(|s| s.to_string())
            } else {
                None
            };
            let key = format!("session\0list\0{}", node.as_deref().unwrap_or(""));
            let (r, idx) = view::answer(st, &key, b, || {
                let node = node.clone();
                async move {
                    let out: Vec<serde_json::Value> = all(st)
                        .await?
                        .iter()
                        .filter(|(_, s)| node.as_deref().is_none_or(|n| n == s.node))
                        .map(|(_, s)| s.public())
                        .collect();
                    Rendered::json(&out)
                }
            })
            .await?;
            Ok(http::reply(r, Some(idx)))
        }
        _ => Err(http::unsupported(&req)),
    }
}

async fn create(st: &Arc<State>, req: Req) -> Result<Response, HttpError> {
    let body = http::json_body(st, req.take_body()).await?;
    let name = http::str_field(&body, "Name")?.unwrap_or("").to_string();
    let node = http::str_field(&body, "Node")?
        .filter(|n| !n.is_empty())
        .unwrap_or(&st.cfg.node)
        .to_string();
    let behavior = http::str_field(&body, "Behavior")?
        .filter(|b| !b.is_empty())
        .unwrap_or("release")
        .to_string();
    if behavior != "release" && behavior != "delete" {
        return Err(HttpError::bad(format!(
            "Invalid Behavior setting '{behavior}'"
        )));
    }
    let lock_delay = http::duration_field(&body, "LockDelay")?.unwrap_or(DEFAULT_LOCK_DELAY);
    // Consul reads a bare number of LockDelay as seconds when below one second's nanoseconds.
    let lock_delay = if lock_delay < Duration::from_micros(1)
        && matches!(
            http::field(&body, "LockDelay"),
            Some(serde_json::Value::Number(_))
        ) {
        Duration::from_secs(lock_delay.as_nanos().try_into().unwrap_or(0))
    } else {
        lock_delay
    };
    let ttl = http::duration_field(&body, "TTL")?;
    if let Some(t) = ttl
        && !t.is_zero()
        && !(MIN_TTL..=MAX_TTL).contains(&t)
    {
        return Err(HttpError::bad(format!(
            "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
            t.as_secs()
        )));
    }
    for checks in ["Checks", "NodeChecks", "ServiceChecks"] {
        match http::field(&body, checks) {
            None => {}
            Some(serde_json::Value::Array(a))
                if a.iter().all(|c| c.as_str() == Some("serfHealth")) => {}
            Some(_) => {
                return Err(HttpError::bad(format!(
                    "session {checks} are not supported: sessions here live by TTL (see docs/consul-api.md)"
                )));
            }
        }
    }
    if all(st).await?.len() >= MAX_SESSIONS {
        return Err(HttpError::internal(format!(
            "more than {MAX_SESSIONS} sessions"
        )));
    }
    let id = uuid()?;
    let idx = view::next_index(st).await?;
    let ttl = ttl.filter(|t| !t.is_zero());
    let s = Session {
        id: id.clone(),
        name,
        node,
        lock_delay: u64::try_from(lock_delay.as_nanos()).unwrap_or(u64::MAX),
        behavior,
        ttl: ttl.map(format_go_duration).unwrap_or_default(),
        create_index: idx,
        modify_index: idx,
        expires_ms: ttl.map(expiry),
    };
    let raw = encode(&s)?;
    if !st.call(st.cat.kv_cas(&skey(&id), None, &raw)).await? {
        return Err(HttpError::internal("session ID collision: try again"));
    }
    st.views.wrote();
    http::json(&serde_json::json!({ "ID": id }))
}

/// When a session with this TTL is invalidated without a renewal: twice the TTL from now.
fn expiry(ttl: Duration) -> u64 {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    autopilot_catalog::now_ms().saturating_add(ms.saturating_mul(2))
}

fn encode(s: &Session) -> Result<String, HttpError> {
    serde_json::to_string(s)
        .map_err(|e| HttpError::internal(format!("cannot encode a session: {e}")))
}

async fn renew(st: &Arc<State>, id: &str) -> Result<Response, HttpError> {
    for _ in 0..16 {
        let Some(raw) = st.call(st.cat.kv_get(&skey(id))).await? else {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                format!("Session id '{id}' not found"),
            ));
        };
        let mut s: Session = serde_json::from_str(&raw)
            .map_err(|e| HttpError::internal(format!("session {id}: unreadable: {e}")))?;
        s.expires_ms = s.ttl().map(expiry);
        let next = encode(&s)?;
        if st.call(st.cat.kv_cas(&skey(id), Some(&raw), &next)).await? {
            return http::json(&[s.public()]);
        }
    }
    Err(HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("session {id} changed during the renewal: try again"),
    ))
}

/// Ends a session: removes it, then releases (or deletes, by its behavior)
/// the keys it holds, each under its lock-delay.
pub async fn invalidate(st: &State, id: &str) -> Result<(), HttpError> {
    let s = get(st, id).await?;
    if st.call(st.cat.kv_delete(&skey(id))).await? {
        view::next_index(st).await?;
    }
    st.views.wrote();
    let delete = s.as_ref().is_some_and(|s| s.behavior == "delete");
    let delay = Duration::from_nanos(s.map_or(0, |s| s.lock_delay));
    let released = release_held(st, id, delete).await?;
    if !delay.is_zero() {
        for k in released {
            st.sessions.delay(&k, delay);
        }
    }
    Ok(())
}

/// Releases (or deletes) every key held by session `id`.
/// Returns the keys it released or deleted.
pub async fn release_held(st: &State, id: &str, delete: bool) -> Result<Vec<String>, HttpError> {
    let mut done = Vec::new();
    for (k, e) in crate::kv::entries(st, "").await? {
        if e.session.as_deref() != Some(id) {
            continue;
        }
        let ok = if delete {
            crate::kv::delete_if(st, &k, |cur| cur.session.as_deref() == Some(id)).await?
        } else {
            crate::kv::write(st, &k, |cur| {
                let cur = cur?;
                if cur.session.as_deref() != Some(id) {
                    return None;
                }
                let mut next = cur.clone();
                next.session = None;
                Some(next)
            })
            .await?
        };
        if ok {
            done.push(k);
        }
    }
    Ok(done)
}

/// Invalidates every session past its expiry.
pub async fn expire(st: &State) {
    let now = autopilot_catalog::now_ms();
    let sessions = match all(st).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("consul-api: cannot list sessions: {e}");
            return;
        }
    };
    for (_, s) in sessions {
        if s.expires_ms.is_some_and(|t| t <= now)
            && let Err(e) = invalidate(st, &s.id).await
        {
            tracing::warn!("consul-api: cannot invalidate session {}: {e}", s.id);
        }
    }
}

/// A random (version 4) UUID, from the kernel's random source.
fn uuid() -> Result<String, HttpError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| HttpError::internal(format!("cannot read /dev/urandom: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}
