//! The HTTP side: dispatch by method and path, tokens (`X-Consul-Token`, `?token=`, `Authorization: Bearer`), query parameters, request bodies and Consul's reply headers.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::view::{Blocking, Rendered};
use crate::{HttpError, State};

/// The largest request body (Consul's kv value limit).
pub const MAX_BODY: usize = 512 * 1024;

pub fn router(st: Arc<State>) -> axum::Router {
    axum::Router::new().fallback(root).with_state(st)
}

async fn root(
    axum::extract::State(st): axum::extract::State<Arc<State>>,
    req: Request,
) -> Response {
    let fut = handle(&st, req);
    assert_send(&fut);
    match fut.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn assert_send<T: Send>(_: &T) {}

/// A request's parts, decoded.
pub struct Req {
    pub method: Method,
    /// The path after `/v1/`, percent-decoded per segment.
    pub rest: String,
    pub query: Query,
    /// Taken once by the handler that reads it (a Mutex so `&Req` is `Send`).
    body: std::sync::Mutex<Option<Body>>,
}

impl Req {
    pub fn take_body(&self) -> Body {
        self.body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(Body::empty)
    }
}

async fn handle(st: &Arc<State>, req: Request) -> Result<Response, HttpError> {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path();
    let Some(rest) = raw_path.strip_prefix("/v1/") else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {raw_path}"),
        ));
    };
    let rest = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| HttpError::bad("the path is not valid UTF-8 after percent-decoding"))?
        .into_owned();
    let query = Query::parse(parts.uri.query().unwrap_or(""))?;
    let write = !matches!(parts.method, Method::GET | Method::HEAD) || legacy_write(&rest);
    authorize(st, write, &parts.headers, &query)?;
    let req = Req {
        method: parts.method,
        rest,
        query,
        body: std::sync::Mutex::new(Some(body)),
    };
    if let Some(dc) = req.query.get("dc")
        && !dc.is_empty()
        && dc != st.cfg.datacenter
    {
        return Err(HttpError::internal(format!(
            "No path to datacenter (only {} is served)",
            st.cfg.datacenter
        )));
    }
    let family = req.rest.split('/').next().unwrap_or("");
    match family {
        "kv" => crate::kv::handle(st, req).await,
        "session" => crate::session::handle(st, req).await,
        "agent" => crate::agent::handle(st, req).await,
        "catalog" | "health" => crate::health::handle(st, req).await,
        "status" => status(st, req),
        _ => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unsupported endpoint: /v1/{} (see docs/consul-api.md for what is served)",
                req.rest
            ),
        )),
    }
}

fn status(st: &State, req: Req) -> Result<Response, HttpError> {
    req.query.only(&[])?;
    need_method(&req, &[Method::GET])?;
    let me = st.cfg.advertise.to_string();
    let r = match req.rest.as_str() {
        "status/leader" => Rendered::json(&me)?,
        "status/peers" => Rendered::json(&[me])?,
        _ => return Err(unsupported(&req)),
    };
    Ok(reply(r, None))
}

/// The writes Consul before 1.0 took as GET, and python-consul 0.7 still
/// sends so: deregistering a service, updating a TTL check.
pub fn legacy_write(rest: &str) -> bool {
    rest.starts_with("agent/service/deregister/")
        || rest.starts_with("agent/check/pass/")
        || rest.starts_with("agent/check/warn/")
        || rest.starts_with("agent/check/fail/")
}

pub fn unsupported(req: &Req) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        format!(
            "unsupported endpoint: {} /v1/{} (see docs/consul-api.md for what is served)",
            req.method, req.rest
        ),
    )
}

pub fn need_method(req: &Req, allowed: &[Method]) -> Result<(), HttpError> {
    if allowed.contains(&req.method) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    Err(HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on /v1/{} (allowed: {})",
            req.method,
            req.rest,
            names.join(", ")
        ),
    ))
}

/// Writes need an admin token, reads a read or admin token, when tokens are
/// configured; without tokens only requests for a loopback Host are served.
fn authorize(st: &State, write: bool, headers: &HeaderMap, q: &Query) -> Result<(), HttpError> {
    let tokens = &st.tokens;
    if tokens.is_empty() {
        if !autopilot_cockpit::app::loopback_host(headers) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "a server without --token-file answers only requests for localhost, 127.0.0.1 or [::1] (the Host header)",
            ));
        }
        return Ok(());
    }
    let token = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| rest.trim().to_string())
                })
        })
        .or_else(|| q.get("token").map(str::to_string));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "Permission denied: a token is needed (X-Consul-Token header or ?token=)",
        ));
    };
    let Some((name, role)) = tokens.find(&token) else {
        return Err(HttpError::new(StatusCode::FORBIDDEN, "ACL not found"));
    };
    if write && role != autopilot_cockpit::auth::Role::Admin {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!("Permission denied: the token of {name} is read-only"),
        ));
    }
    Ok(())
}

/// A query string: ordered pairs; a flag without a value (`?recurse`) has an empty value.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// Parameters every endpoint accepts (and ignores, but `dc` and `token`).
const COMMON: [&str; 7] = [
    "dc",
    "token",
    "stale",
    "consistent",
    "cached",
    "pretty",
    "ns",
];

impl Query {
    pub fn parse(q: &str) -> Result<Query, HttpError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
            .take(257)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.len() > 256 {
            return Err(HttpError::bad("more than 256 query parameters"));
        }
        if let Some((_, ns)) = pairs.iter().find(|(k, _)| k == "ns")
            && !ns.is_empty()
            && ns != "default"
        {
            return Err(HttpError::bad(
                "namespaces are not supported: only ns=default",
            ));
        }
        Ok(Query { pairs })
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, k: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, k: &str) -> bool {
        self.pairs.iter().any(|(key, _)| key == k)
    }

    /// A flag such as `?passing`, `?passing=1` or `?passing=true` (`false`/`0` turn it off).
    pub fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| v != "false" && v != "0")
    }

    /// Refuses any parameter but the common ones and `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), HttpError> {
        for (k, _) in &self.pairs {
            if !COMMON.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
                return Err(HttpError::bad(format!(
                    "unsupported query parameter {k:?} (see docs/consul-api.md)"
                )));
            }
        }
        Ok(())
    }

    pub fn u64(&self, k: &str) -> Result<Option<u64>, HttpError> {
        self.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| HttpError::bad(format!("invalid {k} {v:?}: expected an integer")))
            })
            .transpose()
    }

    /// `index` and `wait`.
    pub fn blocking(&self) -> Result<Blocking, HttpError> {
        let index = self.u64("index")?;
        let wait = self
            .get("wait")
            .map(|w| {
                crate::duration::parse_go_duration(w)
                    .or_else(|| w.parse::<u64>().ok().map(std::time::Duration::from_secs))
                    .ok_or_else(|| HttpError::bad(format!("invalid wait {w:?}: expected 10s, 5m")))
            })
            .transpose()?;
        Ok(Blocking { index, wait })
    }
}

/// A read's reply with Consul's headers.
pub fn reply(r: Rendered, index: Option<u64>) -> Response {
    let mut resp = (r.status, r.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    if let Some(i) = index {
        h.insert("x-consul-index", HeaderValue::from(i.max(1)));
    }
    h.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    resp
}

/// A write's JSON reply.
pub fn json(v: &impl serde::Serialize) -> Result<Response, HttpError> {
    Ok(reply(Rendered::json(v)?, None))
}

/// The request body, at most [`MAX_BODY`] bytes, within the body timeout.
pub async fn body(st: &State, body: Body) -> Result<Bytes, HttpError> {
    match tokio::time::timeout(st.cfg.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: more than {MAX_BODY} bytes, or unreadable"),
        )),
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
    }
}

/// A JSON object body (an empty body reads as `{}`).
pub async fn json_body(st: &State, b: Body) -> Result<serde_json::Value, HttpError> {
    let bytes = body(st, b).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| HttpError::bad(format!("Request decode failed: {e}")))
}

/// A field of a JSON object, matched as Go's decoder does: any case, and
/// snake_case for CamelCase (`deregister_critical_service_after`).
pub fn field<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let want = norm(name);
    v.as_object()?
        .iter()
        .find(|(k, _)| norm(k) == want)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A string field; a field of another type is a 400.
pub fn str_field<'a>(v: &'a serde_json::Value, name: &str) -> Result<Option<&'a str>, HttpError> {
    match field(v, name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(HttpError::bad(format!(
            "Request decode failed: {name} must be a string"
        ))),
    }
}

/// A duration field: a Go duration string, or a number of nanoseconds.
pub fn duration_field(
    v: &serde_json::Value,
    name: &str,
) -> Result<Option<std::time::Duration>, HttpError> {
    match field(v, name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => crate::duration::parse_go_duration(s)
            .map(Some)
            .ok_or_else(|| HttpError::bad(format!("Request decode failed: invalid {name} {s:?}"))),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|ns| Some(std::time::Duration::from_nanos(ns)))
            .ok_or_else(|| HttpError::bad(format!("Request decode failed: invalid {name}"))),
        Some(_) => Err(HttpError::bad(format!(
            "Request decode failed: {name} must be a duration"
        ))),
    }
}
