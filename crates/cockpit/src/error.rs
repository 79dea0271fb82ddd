//! The cockpit's errors: setup errors (token files, TLS material, the listen address) and the JSON error replies of the API.

use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What stops the cockpit from starting: each names the file, line or flag.
#[derive(Debug, thiserror::Error)]
pub enum CockpitError {
    #[error("token file {}: {source}", path.display())]
    TokenFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token file {}: readable by group or others (mode {mode:o}): chmod 600 it",
        path.display()
    )]
    TokenFileMode { path: PathBuf, mode: u32 },
    #[error("token file {}:{line}: {message}", path.display())]
    TokenLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("token file {}: {message}", path.display())]
    TokenFile { path: PathBuf, message: String },
    #[error("tls {what} {}: {message}", path.display())]
    Tls {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "refusing to listen on {addr} without tokens: give --token-file, or listen on a loopback address"
    )]
    NotLoopback { addr: std::net::SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// An API error: its status and a lower-case message, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"autopilot cockpit\""),
            );
        }
        r
    }
}
