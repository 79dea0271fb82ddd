//! `/v1/kv/KEY`: each Consul key is one catalog key under `_consul/kv/`, holding a JSON envelope (base64 value, flags, session, lock index, create/modify index) written with compare-and-swap.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::http::{self, Req};
use crate::view::{self, Rendered};
use crate::{HttpError, PREFIX, State};

/// The most keys one read or recursive delete handles.
pub const MAX_KEYS: usize = 10_000;
/// Attempts of one compare-and-swap write before giving up (503).
const ATTEMPTS: usize = 32;

pub fn kv_prefix() -> String {
    format!("{PREFIX}kv/")
}

fn ckey(key: &str) -> String {
    format!("{PREFIX}kv/{key}")
}

/// What is stored for one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// The value, base64; absent for an empty value.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(rename = "f", default)]
    pub flags: u64,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(rename = "l", default)]
    pub lock_index: u64,
    #[serde(rename = "c", default)]
    pub create_index: u64,
    #[serde(rename = "m", default)]
    pub modify_index: u64,
}

impl Envelope {
    pub fn parse(raw: &str) -> Option<Envelope> {
        serde_json::from_str(raw).ok()
    }

    fn encode(&self) -> Result<String, HttpError> {
        serde_json::to_string(self)
            .map_err(|e| HttpError::internal(format!("cannot encode a kv entry: {e}")))
    }
}

/// A key as Consul answers it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: u64,
    modify_index: u64,
}

fn pair<'a>(key: &'a str, e: &'a Envelope) -> KvPair<'a> {
    KvPair {
        lock_index: e.lock_index,
        key,
        flags: e.flags,
        value: e.value.as_deref(),
        session: e.session.as_deref(),
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

pub async fn handle(st: &Arc<State>, req: Req) -> Result<Response, HttpError> {
    let key = req
        .rest
        .strip_prefix("kv")
        .map(|k| k.strip_prefix('/').unwrap_or(k))
        .unwrap_or("")
        .to_string();
    if key.len() > 900 {
        return Err(HttpError::bad("key too long: at most 900 bytes"));
    }
    match req.method {
        Method::GET => get(st, &req, &key).await,
        Method::PUT | Method::POST => put(st, req, &key).await,
        Method::DELETE => delete(st, &req, &key).await,
        _ => {
            http::need_method(&req, &[Method::GET, Method::PUT, Method::DELETE])?;
            Err(http::unsupported(&req))
        }
    }
}

/// Every stored key under a Consul prefix, sorted, at most [`MAX_KEYS`].
async fn list(st: &State, prefix: &str) -> Result<Vec<(String, Envelope)>, HttpError> {
    let all = st.call(st.cat.kv_list(&ckey(prefix))).await?;
    if all.len() > MAX_KEYS {
        return Err(HttpError::internal(format!(
            "more than {MAX_KEYS} keys under {prefix:?}: narrow the prefix"
        )));
    }
    let strip = kv_prefix();
    Ok(all
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(&strip)?.to_string();
            Some((key, Envelope::parse(&v)?))
        })
        .collect())
}

async fn get(st: &Arc<State>, req: &Req, key: &str) -> Result<Response, HttpError> {
    let q = &req.query;
    q.only(&["recurse", "keys", "separator", "raw", "index", "wait"])?;
    let b = q.blocking()?;
    let recurse = q.has("recurse");
    let keys = q.has("keys");
    let raw = q.has("raw");
    let separator = q.get("separator").unwrap_or("").to_string();
    let view_key = format!("kv\0{key}\0{recurse}\0{keys}\0{raw}\0{separator}");
    let (r, idx) = view::answer(st, &view_key, b, || {
        let separator = separator.clone();
        async move {
            if keys {
                let all = list(st, key).await?;
                let mut out: BTreeSet<String> = BTreeSet::new();
                for (k, _) in &all {
                    let after = &k[key.len().min(k.len())..];
                    match (!separator.is_empty())
                        .then(|| after.find(separator.as_str()))
                        .flatten()
                    {
                        Some(i) => {
                            let end = key
                                .len()
                                .saturating_add(i)
                                .saturating_add(separator.len())
                                .min(k.len());
                            out.insert(k[..end].to_string());
                        }
                        None => {
                            out.insert(k.clone());
                        }
                    }
                }
                if out.is_empty() {
                    return Ok(Rendered::not_found());
                }
                // Like Consul's (the prefix's highest ModifyIndex), the
                // index moves with any write under the prefix.
                let modified: Vec<(&str, u64)> = all
                    .iter()
                    .map(|(k, e)| (k.as_str(), e.modify_index))
                    .collect();
                return Ok(Rendered::json(&out)?.tagged(&modified));
            }
            if recurse {
                let all = list(st, key).await?;
                if all.is_empty() {
                    return Ok(Rendered::not_found());
                }
                let pairs: Vec<KvPair> = all.iter().map(|(k, e)| pair(k, e)).collect();
                return Rendered::json(&pairs);
            }
            if key.is_empty() {
                return Err(HttpError::bad("Missing key name"));
            }
            let Some(e) = st
                .call(st.cat.kv_get(&ckey(key)))
                .await?
                .and_then(|v| Envelope::parse(&v))
            else {
                return Ok(Rendered::not_found());
            };
            if raw {
                let bytes = match &e.value {
                    Some(v) => B64
                        .decode(v)
                        .map_err(|_| HttpError::internal("a stored value is not base64"))?,
                    None => Vec::new(),
                };
                return Ok(Rendered {
                    status: StatusCode::OK,
                    body: Bytes::from(bytes),
                    content_type: "text/plain; charset=utf-8",
                    tag: e.modify_index,
                });
            }
            Rendered::json(&[pair(key, &e)])
        }
    })
    .await?;
    Ok(http::reply(r, Some(idx)))
}

async fn put(st: &Arc<State>, req: Req, key: &str) -> Result<Response, HttpError> {
    let q = &req.query;
    q.only(&["cas", "flags", "acquire", "release"])?;
    if key.is_empty() {
        return Err(HttpError::bad("Missing key name"));
    }
    autopilot_catalog::check_key(st.cat.url(), &ckey(key))
        .map_err(|e| HttpError::bad(format!("invalid key {key:?}: {e}")))?;
    let cas = q.u64("cas")?;
    let flags = q.u64("flags")?.unwrap_or(0);
    let acquire = q.get("acquire").map(str::to_string);
    let release = q.get("release").map(str::to_string);
    if acquire.is_some() && release.is_some() {
        return Err(HttpError::bad("Conflicting flags: acquire and release"));
    }
    let body = http::body(st, req.take_body()).await?;
    let value = (!body.is_empty()).then(|| B64.encode(&body));
    if let Some(s) = acquire.as_deref().or(release.as_deref())
        && crate::session::get(st, s).await?.is_none()
    {
        return Err(HttpError::internal(format!("invalid session \"{s}\"")));
    }
    let ok = write(st, key, |cur| {
        if let Some(c) = cas {
            let modify = cur.map(|e| e.modify_index);
            if (c == 0 && modify.is_some()) || (c != 0 && modify != Some(c)) {
                return None;
            }
        }
        let mut next = cur.cloned().unwrap_or_default();
        if let Some(s) = &acquire {
            match &next.session {
                Some(holder) if holder != s => return None,
                Some(_) => {}
                None => {
                    if st.sessions.delayed(key) {
                        return None;
                    }
                    next.lock_index = next.lock_index.saturating_add(1);
                    next.session = Some(s.clone());
                }
            }
        }
        if let Some(s) = &release {
            if next.session.as_deref() != Some(s.as_str()) {
                return None;
            }
            next.session = None;
        }
        next.value = value.clone();
        next.flags = flags;
        Some(next)
    })
    .await?;
    if ok && let Some(s) = &acquire {
        // The session may have ended between the check and the write; its
        // expiry pass could have missed this key: release it now.
        if crate::session::get(st, s).await?.is_none() {
            crate::session::release_held(st, s, false).await?;
            return http::json(&false);
        }
    }
    http::json(&ok)
}

/// Changes a key with compare-and-swap: `f` gets the current entry and
/// returns the new one (its indexes are set here), or `None` to refuse.
/// Returns whether it wrote.
pub async fn write(
    st: &State,
    key: &str,
    f: impl Fn(Option<&Envelope>) -> Option<Envelope>,
) -> Result<bool, HttpError> {
    let k = ckey(key);
    for _ in 0..ATTEMPTS {
        let raw = st.call(st.cat.kv_get(&k)).await?;
        let cur = raw.as_deref().and_then(Envelope::parse);
        let Some(mut next) = f(cur.as_ref()) else {
            return Ok(false);
        };
        let idx = view::next_index(st).await?;
        next.modify_index = idx;
        next.create_index = cur.as_ref().map_or(idx, |c| c.create_index);
        let encoded = next.encode()?;
        if st.call(st.cat.kv_cas(&k, raw.as_deref(), &encoded)).await? {
            st.views.wrote();
            return Ok(true);
        }
    }
    Err(HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("key {key:?} changed {ATTEMPTS} times during the write: try again"),
    ))
}

/// Deletes a key if `f` agrees with its current entry. Returns whether it deleted.
pub async fn delete_if(
    st: &State,
    key: &str,
    f: impl Fn(&Envelope) -> bool,
) -> Result<bool, HttpError> {
    let k = ckey(key);
    for _ in 0..ATTEMPTS {
        let Some(raw) = st.call(st.cat.kv_get(&k)).await? else {
            return Ok(false);
        };
        let Some(cur) = Envelope::parse(&raw) else {
            return Ok(false);
        };
        if !f(&cur) {
            return Ok(false);
        }
        if st.call(st.cat.kv_delete_if(&k, &raw)).await? {
            view::next_index(st).await?;
            return Ok(true);
        }
    }
    Err(HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("key {key:?} changed {ATTEMPTS} times during the delete: try again"),
    ))
}

/// Every key and entry under `prefix` (for sessions ending).
pub async fn entries(st: &State, prefix: &str) -> Result<Vec<(String, Envelope)>, HttpError> {
    list(st, prefix).await
}

async fn delete(st: &Arc<State>, req: &Req, key: &str) -> Result<Response, HttpError> {
    let q = &req.query;
    q.only(&["recurse", "cas"])?;
    let cas = q.u64("cas")?;
    if q.has("recurse") {
        if cas.is_some() {
            return Err(HttpError::bad("cas is not supported with recurse"));
        }
        let all = list(st, key).await?;
        for (k, _) in &all {
            st.call(st.cat.kv_delete(&ckey(k))).await?;
        }
        if !all.is_empty() {
            view::next_index(st).await?;
        }
        st.views.wrote();
        return http::json(&true);
    }
    if key.is_empty() {
        return Err(HttpError::bad("Missing key name"));
    }
    match cas {
        Some(c) => {
            let ok = delete_if(st, key, |e| e.modify_index == c).await?;
            http::json(&ok)
        }
        None => {
            if st.call(st.cat.kv_delete(&ckey(key))).await? {
                view::next_index(st).await?;
            }
            st.views.wrote();
            http::json(&true)
        }
    }
}
