//! The shared request machinery: the state every handler sees, authentication by route access, the catalog deadline, the JSON body extractor, security headers and the request timeout.

use std::future::Future;
use std::sync::Arc;

use autopilot_catalog::Catalog;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::auth::{Caller, Role, Tokens};
use crate::error::ApiError;
use crate::server::Limits;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// What a handler needs: the catalog, the tokens, the bounds.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub cat: Arc<dyn Catalog>,
    pub tokens: Tokens,
    pub limits: Limits,
    /// One permit per open event stream.
    pub streams: Arc<Semaphore>,
}

impl AppState {
    pub fn new(cat: Arc<dyn Catalog>, tokens: Tokens, limits: Limits) -> AppState {
        AppState(Arc::new(Inner {
            cat,
            tokens,
            streams: Arc::new(Semaphore::new(limits.max_event_streams.max(1))),
            limits,
        }))
    }

    pub fn inner(&self) -> &Inner {
        &self.0
    }

    pub fn cat(&self) -> &dyn Catalog {
        self.0.cat.as_ref()
    }

    /// Runs a catalog call under the deadline: 503 past it.
    pub async fn call<T, E>(&self, f: impl Future<Output = Result<T, E>>) -> Result<T, ApiError>
    where
        E: Into<ApiError>,
    {
        match tokio::time::timeout(self.0.limits.catalog_deadline, f).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(ApiError::unavailable(format!(
                "catalog {}: no answer within {} ms",
                self.0.cat.url(),
                self.0.limits.catalog_deadline.as_millis()
            ))),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the OpenAPI document, the page's assets).
    Open,
    /// A read or admin token, when tokens are configured.
    Read,
    /// An admin token; refused when no tokens are configured.
    Admin,
}

/// The message of a refused action when the cockpit has no tokens.
pub const ACTIONS_OFF: &str = "actions need an admin token: start the cockpit with --token-file";

/// Checks the caller against `access`; the caller is put in the request's extensions.
pub async fn authorize(
    state: AppState,
    access: Access,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.0.tokens;
    // Without tokens the cockpit listens on loopback only; a page on another
    // site whose name was rebound to 127.0.0.1 still sends its own Host.
    if tokens.is_empty() && !loopback_host(req.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a cockpit without tokens answers only requests for localhost, 127.0.0.1 or [::1] (the Host header)",
        ));
    }
    let caller = match access {
        Access::Open => tokens.caller(req.headers()).unwrap_or(Caller::Anonymous),
        Access::Read => tokens.caller(req.headers())?,
        Access::Admin => {
            if tokens.is_empty() {
                return Err(ApiError::new(StatusCode::FORBIDDEN, ACTIONS_OFF));
            }
            let caller = tokens.caller(req.headers())?;
            if let Caller::Token {
                name,
                role: Role::Read,
            } = &caller
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("the token of {name} is read-only: actions need an admin token"),
                ));
            }
            caller
        }
    };
    let admin = access == Access::Admin;
    req.extensions_mut().insert(caller);
    if !admin {
        return Ok(next.run(req).await);
    }
    // An action runs to its end in a task of its own: a client that goes
    // away (or the request timeout) after the intent is written must not
    // cancel the audit record that follows it.
    match tokio::spawn(next.run(req)).await {
        Ok(r) => Ok(r),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action failed: {e}"),
        )),
    }
}

/// Whether the request's `Host` names this machine's loopback: `localhost`
/// (or a name under it), a 127/8 address or `[::1]`, with or without a port.
pub fn loopback_host(headers: &axum::http::HeaderMap) -> bool {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host.as_str(),
        }
    };
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The security headers on every response; API answers are never cached.
pub async fn headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Every request but an event stream ends within the request timeout, its
/// body included: a slow client cannot hold a connection slot.
pub async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == crate::routes::EVENTS {
        return next.run(req).await;
    }
    let limit = state.0.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took more than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// A JSON request body of at most [`MAX_BODY`] bytes; an empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {} KiB", MAX_BODY / 1024),
                )
            } else {
                ApiError::new(e.status(), format!("cannot read the request body: {e}"))
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Unknown paths: a JSON 404.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}
