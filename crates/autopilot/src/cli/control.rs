//! The `/v3` client commands (`reload`, `maintenance`, `putenv`, `putmetric`, `ping`): one request to the agent's control socket.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::{Deadline, Output};

pub struct Req {
    pub method: &'static str,
    pub uri: String,
    pub body: Option<String>,
}

impl Req {
    pub fn get(uri: &str) -> Req {
        Req {
            method: "GET",
            uri: uri.into(),
            body: None,
        }
    }

    pub fn post(uri: &str, body: Option<String>) -> Req {
        Req {
            method: "POST",
            uri: uri.into(),
            body,
        }
    }
}

/// A malformed argument: exit 2, naming the flag.
fn usage(flag: &str, message: String) -> anyhow::Error {
    super::SetupError {
        origin: flag.into(),
        field: String::new(),
        message,
    }
    .into()
}

pub fn reload() -> Req {
    Req::post("/v3/reload", None)
}

pub fn ping() -> Req {
    Req::get("/v3/ping")
}

pub fn maintenance(mode: &str) -> anyhow::Result<Req> {
    match mode {
        "enable" | "disable" => Ok(Req::post(&format!("/v3/maintenance/{mode}"), None)),
        other => Err(usage(
            "-maintenance",
            format!(
                "takes \"enable\" or \"disable\", not {}",
                super::quote(other)
            ),
        )),
    }
}

pub fn putenv(vars: &[String]) -> anyhow::Result<Req> {
    let mut m = serde_json::Map::new();
    for v in vars {
        let (k, val) = v.split_once('=').unwrap_or((v, ""));
        if k.is_empty() {
            return Err(usage(
                "-putenv",
                format!("{}: expected KEY=VALUE or KEY", super::quote(v)),
            ));
        }
        m.insert(k.to_string(), serde_json::Value::String(val.to_string()));
    }
    Ok(Req::post(
        "/v3/environ",
        Some(serde_json::Value::Object(m).to_string()),
    ))
}

/// One request per batch of distinct names, in order: `a=1 a=2` records
/// both observations (a JSON object would keep only the last). Every value
/// is checked here first, so a malformed one sends nothing.
pub fn putmetric(vars: &[String]) -> anyhow::Result<Vec<Req>> {
    let mut batches: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            return Err(usage(
                "-putmetric",
                format!("{}: expected NAME=VALUE", super::quote(v)),
            ));
        };
        let num = val
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .ok_or_else(|| {
                usage(
                    "-putmetric",
                    format!(
                        "{}: {} is not a finite number",
                        super::quote(v),
                        super::quote(val)
                    ),
                )
            })?;
        match batches.last_mut().filter(|m| !m.contains_key(k)) {
            Some(m) => {
                m.insert(k.to_string(), serde_json::Value::Number(num));
            }
            None => {
                let mut m = serde_json::Map::new();
                m.insert(k.to_string(), serde_json::Value::Number(num));
                batches.push(m);
            }
        }
    }
    Ok(batches
        .into_iter()
        .map(|m| Req::post("/v3/metric", Some(serde_json::Value::Object(m).to_string())))
        .collect())
}

/// Sends `req` before `deadline` and returns the answer's body; a refusal
/// is an error (exit 2: the request cannot be carried out as asked), no
/// answer or an agent shutting down is exit 3.
pub fn call(socket: &Path, req: Req, deadline: Deadline) -> anyhow::Result<String> {
    let what = format!("agent at {}", socket.display());
    let (code, body) = super::block_on(super::bounded(&what, deadline, async {
        Ok(autopilot_runtime::control::request(socket, req.method, &req.uri, req.body).await?)
    }))??;
    if code == 503 {
        // Shutting down: the agent cannot take requests any more.
        return Err(super::Unreachable(format!("{what}: {}", body.trim())).into());
    }
    if code != 200 {
        bail!("the agent refused the request ({code}): {}", body.trim());
    }
    Ok(body)
}

/// Sends each request in turn, all within one `--timeout`, and prints the
/// last answer, if any: as the agent wrote it, or with `-o json` as one
/// JSON document.
pub fn send(socket: &Path, reqs: Vec<Req>, timeout: Duration, out: Output) -> anyhow::Result<i32> {
    let deadline = Deadline::after(timeout);
    let mut body = String::new();
    for req in reqs {
        body = call(socket, req, deadline)?;
    }
    let body = body.trim();
    if out.json() {
        let v = match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v) => v,
            Err(_) if body.is_empty() => serde_json::json!({ "ok": true }),
            Err(_) => serde_json::json!({ "ok": true, "message": body }),
        };
        println!("{v}");
    } else if !body.is_empty() {
        println!("{body}");
    }
    Ok(0)
}
