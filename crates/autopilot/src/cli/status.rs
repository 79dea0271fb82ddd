//! `autopilot status`: the running agent's jobs, as a table or as the agent's JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::Output;
use super::control::{Req, call};

/// A job's ROLE and TERM columns: `leader` and the term it won, or
/// `follower`; `-` for a job without an election.
fn role(j: &serde_json::Value) -> (&'static str, String) {
    let e = &j["election"];
    if e.is_null() {
        return ("-", "-".into());
    }
    match e["term"].as_u64() {
        Some(term) if e["leader"] == true => ("leader", term.to_string()),
        _ => ("follower", "-".into()),
    }
}

pub fn status(socket: &Path, timeout: Duration, out: Output) -> anyhow::Result<i32> {
    let body = call(
        socket,
        Req::get("/v3/status"),
        super::Deadline::after(timeout),
    )?;
    if out.json() {
        println!("{}", body.trim());
        return Ok(0);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the agent sent invalid status JSON")?;
    println!(
        "autopilot {} pid {}{}{}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        if v["maintenance"] == true {
            "  [maintenance]"
        } else {
            ""
        },
        if v["stopping"] == true {
            "  [stopping]"
        } else {
            ""
        },
    );
    println!(
        "{:<24} {:<11} {:>8} {:<11} {:>8}  {:<8} {:>5}  CATALOG",
        "JOB", "STATUS", "PID", "HEALTH", "RESTARTS", "ROLE", "TERM"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        let pid = j["pid"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let reg = &j["registration"];
        let catalog = if reg.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} {}",
                reg["id"].as_str().unwrap_or("?"),
                reg["catalog"].as_str().unwrap_or("unregistered")
            )
        };
        let role = role(j);
        println!(
            "{:<24} {:<11} {:>8} {:<11} {:>8}  {:<8} {:>5}  {}",
            j["name"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            pid,
            j["health"].as_str().unwrap_or("?"),
            j["restarts"],
            role.0,
            role.1,
            catalog,
        );
    }
    let c = &v["catalog"];
    println!(
        "catalog {}{}",
        c["url"].as_str().unwrap_or("?"),
        c["error"]
            .as_str()
            .map(|e| format!("  [degraded: {e}]"))
            .unwrap_or_default()
    );
    Ok(0)
}
