//! The `/v3` client commands (`reload`, `maintenance`, `putenv`, `putmetric`, `ping`): one request to the agent's control socket.

use std::path::Path;

use anyhow::{Context, bail};

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

pub fn reload() -> Req {
    Req::post("/v3/reload", None)
}

pub fn ping() -> Req {
    Req::get("/v3/ping")
}

pub fn maintenance(mode: &str) -> anyhow::Result<Req> {
    match mode {
        "enable" | "disable" => Ok(Req::post(&format!("/v3/maintenance/{mode}"), None)),
        other => bail!("-maintenance takes \"enable\" or \"disable\", not {other:?}"),
    }
}

pub fn putenv(vars: &[String]) -> anyhow::Result<Req> {
    let mut m = serde_json::Map::new();
    for v in vars {
        let (k, val) = v.split_once('=').unwrap_or((v, ""));
        if k.is_empty() {
            bail!("-putenv {v:?}: expected KEY=VALUE or KEY");
        }
        m.insert(k.to_string(), serde_json::Value::String(val.to_string()));
    }
    Ok(Req::post(
        "/v3/environ",
        Some(serde_json::Value::Object(m).to_string()),
    ))
}

pub fn putmetric(vars: &[String]) -> anyhow::Result<Req> {
    let mut m = serde_json::Map::new();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            bail!("-putmetric {v:?}: expected NAME=VALUE");
        };
        let n: f64 = val
            .trim()
            .parse()
            .with_context(|| format!("-putmetric {v:?}: {val:?} is not a number"))?;
        let num = serde_json::Number::from_f64(n)
            .with_context(|| format!("-putmetric {v:?}: {val:?} is not a finite number"))?;
        m.insert(k.to_string(), serde_json::Value::Number(num));
    }
    Ok(Req::post(
        "/v3/metric",
        Some(serde_json::Value::Object(m).to_string()),
    ))
}

/// Sends `req` and returns the answer's body; a refusal is an error.
pub fn call(socket: &Path, req: Req) -> anyhow::Result<String> {
    let (code, body) = super::block_on(autopilot_runtime::control::request(
        socket, req.method, &req.uri, req.body,
    ))??;
    if code != 200 {
        bail!("the agent refused the request ({code}): {}", body.trim());
    }
    Ok(body)
}

/// Sends `req` and prints the answer, if any.
pub fn send(socket: &Path, req: Req) -> anyhow::Result<i32> {
    let body = call(socket, req)?;
    if !body.trim().is_empty() {
        println!("{}", body.trim());
    }
    Ok(0)
}
