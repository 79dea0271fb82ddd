//! The control socket: ContainerPilot's `/v3` HTTP API on a unix socket, and the client the CLI uses.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::listen::Limits;
use crate::metrics::Metrics;

/// Requests the control socket passes to the agent loop.
#[derive(Debug)]
pub enum Command {
    Reload(oneshot::Sender<Result<(), String>>),
    Maintenance(bool, oneshot::Sender<bool>),
    /// Set (`Some`) or clear variables; the agent answers whether the totals it
    /// keeps stay within [`ENV_MAX_VARS`] and [`ENV_MAX_TOTAL`] (else nothing applies).
    PutEnv(
        BTreeMap<String, Option<String>>,
        oneshot::Sender<Result<(), String>>,
    ),
    Status(oneshot::Sender<serde_json::Value>),
    /// A hook published its replication position for `election` (`None`:
    /// the agent's only election).
    Position {
        election: Option<String>,
        position: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another agent is already listening there")]
    InUse { path: PathBuf },
    #[error(
        "control socket {path}: a {kind} is in the way (only a stale socket is removed); move it or choose another path"
    )]
    NotSocket { path: PathBuf, kind: &'static str },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

#[derive(Clone)]
struct Ctx {
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

/// Binds the socket with mode 0600 (removing a stale socket left by a dead
/// agent, refusing anything else at the path) and serves it until the
/// process exits, with the connection bounds of [`Limits`].
pub async fn serve(
    path: &Path,
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) -> Result<(), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let ft = meta.file_type();
            // Anything but a socket (a config file, a symlink, a directory)
            // is someone's data: never delete it on their behalf.
            if !ft.is_socket() {
                return Err(ControlError::NotSocket {
                    path: path.to_path_buf(),
                    kind: file_kind(&ft),
                });
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    // Created with a restrictive umask so the socket is never reachable by
    // others, even for the instant before the chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    let app = Router::new()
        .route("/v3/ping", get(|| async { "ok" }))
        .route("/v3/reload", post(reload))
        .route("/v3/maintenance/enable", post(|s| maintenance(s, true)))
        .route("/v3/maintenance/disable", post(|s| maintenance(s, false)))
        .route("/v3/environ", post(environ))
        .route("/v3/metric", post(metric))
        .route("/v3/status", get(status))
        .route("/v3/cluster/position", post(position))
        .with_state(Ctx { tx, metrics });
    crate::listen::spawn(listener, app, Limits::default(), "control");
    Ok(())
}

fn file_kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_fifo() {
        "FIFO"
    } else {
        "device"
    }
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, msg.into() + "\n").into_response()
}

fn gone() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down\n").into_response()
}

async fn reload(State(c): State<Ctx>) -> Response {
    let (tx, rx) = oneshot::channel();
    if c.tx.send(Command::Reload(tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => bad(e),
        Err(_) => gone(),
    }
}

async fn maintenance(State(c): State<Ctx>, on: bool) -> Response {
    let (tx, rx) = oneshot::channel();
    if c.tx.send(Command::Maintenance(on, tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(updated) => axum::Json(serde_json::json!({ "updated": updated })).into_response(),
        Err(_) => gone(),
    }
}

/// The body as a JSON object, or the message for a 400.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

fn valid_env_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Limits on one `/v3/environ` request: every variable reaches every later
/// child's environment, so a bad one would break all spawns.
const ENV_MAX_VALUE: usize = 32 << 10;
/// Also the limits on everything `putenv` has set so far, which the agent checks.
pub const ENV_MAX_VARS: usize = 256;
pub const ENV_MAX_TOTAL: usize = 256 << 10;

/// The variables of a `/v3/environ` body (`None`: unset), or the message for
/// a 400. All are checked before any applies.
fn parse_environ(body: &Bytes) -> Result<BTreeMap<String, Option<String>>, String> {
    let m = json_object(body)?;
    if m.len() > ENV_MAX_VARS {
        return Err(format!(
            "{} variables in one request; at most {ENV_MAX_VARS}",
            m.len()
        ));
    }
    let mut env = BTreeMap::new();
    let mut total = 0usize;
    for (k, v) in m {
        if !valid_env_name(&k) {
            return Err(format!("{k:?} is not a valid environment variable name"));
        }
        let v = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) if s.is_empty() => None,
            serde_json::Value::String(s) => Some(s),
            other => return Err(format!("{k}: expected a string or null, found {other}")),
        };
        if let Some(v) = &v {
            if v.contains('\0') {
                return Err(format!("{k}: the value contains a NUL byte"));
            }
            if v.len() > ENV_MAX_VALUE {
                return Err(format!(
                    "{k}: the value is {} bytes; at most {ENV_MAX_VALUE}",
                    v.len()
                ));
            }
        }
        total = total
            .saturating_add(k.len())
            .saturating_add(v.as_ref().map_or(0, String::len))
            .saturating_add(2);
        if total > ENV_MAX_TOTAL {
            return Err(format!(
                "the variables exceed {ENV_MAX_TOTAL} bytes in total"
            ));
        }
        env.insert(k, v);
    }
    Ok(env)
}

async fn environ(State(c): State<Ctx>, body: Bytes) -> Response {
    let env = match parse_environ(&body) {
        Ok(env) => env,
        Err(e) => return bad(e),
    };
    let (tx, rx) = oneshot::channel();
    if c.tx.send(Command::PutEnv(env, tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => bad(e),
        Err(_) => gone(),
    }
}

async fn metric(State(c): State<Ctx>, body: Bytes) -> Response {
    let m = match json_object(&body) {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    // Validate everything first so a bad entry applies nothing.
    let mut vals = Vec::new();
    for (k, v) in m {
        let x = match &v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let Some(x) = x else {
            return bad(format!("{k}: expected a number, found {v}"));
        };
        vals.push((k, x));
    }
    for (k, x) in &vals {
        if let Err(e) = c.metrics.check(k, *x) {
            return bad(e.to_string());
        }
    }
    for (k, x) in vals {
        if let Err(e) = c.metrics.put(&k, x) {
            return bad(e.to_string());
        }
    }
    StatusCode::OK.into_response()
}

/// The body of `/v3/cluster/position`, or the message for a 400.
fn parse_position(body: &Bytes) -> Result<(Option<String>, u64), String> {
    let m = json_object(body)?;
    for k in m.keys() {
        if k != "election" && k != "position" {
            return Err(format!("{k}: unknown field (expected election, position)"));
        }
    }
    let election = match m.get("election") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "election: expected a name (1-256 characters) or null, found {}",
                truncate(&other.to_string())
            ));
        }
    };
    let position = match m.get("position") {
        Some(serde_json::Value::String(s)) => {
            autopilot_core::cluster::parse_position(s).map_err(|e| truncate(&e))?
        }
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("position: {n} is not a u64"))?,
        Some(other) => {
            return Err(format!(
                "position: expected a decimal u64 or an LSN X/Y as a string, found {}",
                truncate(&other.to_string())
            ));
        }
        None => return Err("position: this field is required".into()),
    };
    Ok((election, position))
}

/// Bounds an echoed value in an error message.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

async fn position(State(c): State<Ctx>, body: Bytes) -> Response {
    let (election, position) = match parse_position(&body) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Position {
        election,
        position,
        reply: tx,
    };
    if c.tx.send(cmd).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => bad(e),
        Err(_) => gone(),
    }
}

async fn status(State(c): State<Ctx>) -> Response {
    match status_of(&c.tx).await {
        Some(v) => axum::Json(v).into_response(),
        None => gone(),
    }
}

pub(crate) async fn status_of(tx: &mpsc::Sender<Command>) -> Option<serde_json::Value> {
    let (rtx, rrx) = oneshot::channel();
    tx.send(Command::Status(rtx)).await.ok()?;
    rrx.await.ok()
}

/// Sends one request to an agent's control socket; returns the status code and body.
pub async fn request(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> Result<(u16, String), ControlError> {
    let proto = |message: String| ControlError::Protocol {
        path: path.to_path_buf(),
        message,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "autopilot")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| proto(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| proto(e.to_string()))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| proto(e.to_string()))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_bodies() {
        let p = |b: &str| parse_position(&Bytes::from(b.to_string()));
        assert_eq!(p(r#"{"position": "42"}"#), Ok((None, 42)));
        assert_eq!(
            p(r#"{"election": "db", "position": "1/A"}"#),
            Ok((Some("db".into()), (1 << 32) | 10))
        );
        assert_eq!(p(r#"{"election": null, "position": 7}"#), Ok((None, 7)));
        let huge = "9".repeat(10_000);
        for (body, field) in [
            (r#"{"position": -1}"#.to_string(), "position"),
            (r#"{"position": 1.5}"#.to_string(), "position"),
            (r#"{"position": "x/y"}"#.to_string(), "position"),
            (format!(r#"{{"position": "{huge}"}}"#), "position"),
            (
                r#"{"position": "1", "election": ""}"#.to_string(),
                "election",
            ),
            (r#"{"position": "1", "other": 1}"#.to_string(), "other"),
            (r#"{"election": "db"}"#.to_string(), "position"),
        ] {
            let e = p(&body).expect_err(&body);
            assert!(e.starts_with(field), "{body}: {e}");
            assert!(e.len() < 300, "bounded message: {e}");
        }
    }

    #[test]
    fn hostile_environ_bodies_are_refused() {
        let ok = parse_environ(&Bytes::from(r#"{"A":"1","B":null,"C":""}"#)).expect("ok");
        assert_eq!(ok.get("A"), Some(&Some("1".to_string())));
        assert_eq!(ok.get("B"), Some(&None));
        let big = "x".repeat(ENV_MAX_VALUE + 1);
        let many: Vec<String> = (0..=ENV_MAX_VARS)
            .map(|i| format!("\"V{i}\":\"x\""))
            .collect();
        let total: Vec<String> = (0..9)
            .map(|i| format!("\"T{i}\":\"{}\"", "y".repeat(ENV_MAX_VALUE)))
            .collect();
        for (body, why) in [
            (r#"{"A":"a\u0000b"}"#.to_string(), "NUL"),
            (r#"{"A\u0000":"x"}"#.to_string(), "not a valid"),
            (format!(r#"{{"A":"{big}"}}"#), "at most"),
            (
                format!("{{{}}}", many.join(",")),
                "variables in one request",
            ),
            (format!("{{{}}}", total.join(",")), "in total"),
            (r#"{"A":1}"#.to_string(), "expected a string"),
        ] {
            let e = parse_environ(&Bytes::from(body)).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[tokio::test]
    async fn only_a_stale_socket_is_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::new(&[]));
        let (tx, _rx) = mpsc::channel(1);
        let path = dir.path().join("ctl.sock");
        // A stale socket: bound, then its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        serve(&path, tx.clone(), metrics.clone())
            .await
            .expect("stale socket replaced");
        assert!(matches!(
            serve(&path, tx.clone(), metrics.clone()).await,
            Err(ControlError::InUse { .. })
        ));
        for (name, kind) in [("dir", "directory"), ("link", "symlink")] {
            let p = dir.path().join(name);
            if name == "dir" {
                std::fs::create_dir(&p).expect("dir");
            } else {
                std::os::unix::fs::symlink("/etc/passwd", &p).expect("link");
            }
            let e = serve(&p, tx.clone(), metrics.clone())
                .await
                .expect_err(name);
            assert!(e.to_string().contains(kind), "{e}");
            assert!(std::fs::symlink_metadata(&p).is_ok(), "{name} was removed");
        }
    }
}
