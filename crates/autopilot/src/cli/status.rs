//! `autopilot status`: the running agent's jobs, as a table or as the agent's JSON.

use std::path::Path;

use anyhow::Context;

use super::control::{Req, call};

pub fn status(socket: &Path, json: bool) -> anyhow::Result<i32> {
    let body = call(socket, Req::get("/v3/status"))?;
    if json {
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
        "{:<24} {:<11} {:>8} {:<11} {:>8}  CATALOG",
        "JOB", "STATUS", "PID", "HEALTH", "RESTARTS"
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
        println!(
            "{:<24} {:<11} {:>8} {:<11} {:>8}  {}",
            j["name"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            pid,
            j["health"].as_str().unwrap_or("?"),
            j["restarts"],
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
