//! The HTTP side of the Consul backend: one pooled hyper client, requests with a deadline and a capped body, and the error mapping.

use std::time::Duration;

use autopilot_catalog::CatalogError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The largest answer read: a list of every check or every key under the
/// prefix. Consul itself caps a kv value at 512 KiB.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Everything but RFC 3986's unreserved characters is escaped in a path
/// segment (service and check IDs, session IDs).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// A kv key keeps its slashes: they are Consul's hierarchy.
const KEY: &AsciiSet = &SEGMENT.remove(b'/');

pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub fn key_path(s: &str) -> String {
    utf8_percent_encode(s, KEY).to_string()
}

/// One answer: its status, `X-Consul-Index` and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub index: Option<u64>,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        // Error bodies are short text; a long one is cut for messages.
        match t.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &t[..i]),
            None => t.to_string(),
        }
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`
    base: String,
    authority: String,
    token: Option<String>,
    /// The deadline of an ordinary (non-blocking) request.
    pub timeout: Duration,
    /// The catalog URL, for messages.
    pub url: String,
}

impl Http {
    pub fn new(authority: &str, token: Option<String>, timeout: Duration, url: &str) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(connector);
        Http {
            client,
            base: format!("http://{authority}"),
            authority: authority.to_string(),
            token,
            timeout,
            url: url.to_string(),
        }
    }

    pub fn unavailable(&self, message: String) -> CatalogError {
        CatalogError::Unavailable {
            url: self.url.clone(),
            message,
        }
    }

    pub fn invalid(&self, message: String) -> CatalogError {
        CatalogError::Invalid {
            url: self.url.clone(),
            message,
        }
    }

    /// Sends one request and reads its answer, all within `deadline`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<Answer, CatalogError> {
        let what = format!("{method} {path}");
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::USER_AGENT, "autopilot-catalog-consul");
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.invalid(format!("{what}: cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.unavailable(format!("{what}: {}", chain(&e))))?;
            let status = resp.status().as_u16();
            let index = resp
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.unavailable(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                index,
                body,
            })
        };
        let answer = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| self.unavailable(format!("{what}: no answer within {deadline:?}")))??;
        Ok(answer)
    }

    /// A request whose only acceptable answers are 200 and, if `not_found_ok`, 404.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        not_found_ok: bool,
    ) -> Result<Answer, CatalogError> {
        let what = format!("{method} {path}");
        let a = self.call(method, path, body, self.timeout).await?;
        match a.status {
            200 => Ok(a),
            404 if not_found_ok => Ok(a),
            s => Err(self.status_error(&what, s, &a)),
        }
    }

    pub fn status_error(&self, what: &str, status: u16, a: &Answer) -> CatalogError {
        let message = format!("{what}: HTTP {status}: {}", a.text());
        match status {
            // Refused as asked (bad token, bad request, unsupported): retrying cannot help.
            400 | 401 | 403 | 405 | 413 | 501 => self.invalid(message),
            _ => self.unavailable(message),
        }
    }
}

/// An error with its sources, for messages.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
