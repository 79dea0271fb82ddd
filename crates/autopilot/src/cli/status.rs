//! `autopilot status`: the running agent's jobs, their repair state and its watchdogs, as tables or as the agent's JSON.

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
    print!("{}", repair_section(&v));
    print!("{}", watchdog_section(&v));
    print!("{}", announce_section(&v));
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

/// The `ANNOUNCE` table: one line per prefix of each job with an
/// `announce` block (state and why); empty when no job has one.
fn announce_section(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for j in v["jobs"].as_array().into_iter().flatten() {
        let a = &j["announce"];
        for p in a["prefixes"].as_array().into_iter().flatten() {
            if out.is_empty() {
                out.push_str(&format!(
                    "{:<24} {:<40} {:<10} REASON\n",
                    "ANNOUNCE", "PREFIX", "STATE"
                ));
            }
            let mut reason = text(&p["reason"]);
            if let Some(e) = a["speakerError"].as_str() {
                reason = format!("{reason} ({})", autopilot_core::repair::clean(e));
            }
            out.push_str(&format!(
                "{:<24} {:<40} {:<10} {}\n",
                text(&j["name"]),
                text(&p["prefix"]),
                text(&p["state"]),
                reason
            ));
        }
    }
    out
}

/// A text field of the agent's JSON as printed: cleaned, `-` when absent.
fn text(v: &serde_json::Value) -> String {
    match v.as_str() {
        Some(s) if !s.is_empty() => autopilot_core::repair::clean(s),
        _ => "-".into(),
    }
}

/// The `REPAIR` table: one line per job with a `repair` block; empty
/// when no job has one.
fn repair_section(v: &serde_json::Value) -> String {
    let mut s = String::new();
    for j in v["jobs"].as_array().into_iter().flatten() {
        let r = &j["repair"];
        if !r.is_object() {
            continue;
        }
        if s.is_empty() {
            s.push_str(&format!(
                "{:<24} {:<10} {:<8} {:>7}  {:<24} {:<22} REASON\n",
                "REPAIR", "STATE", "STEP", "ATTEMPT", "SINCE", "FLAGS"
            ));
        }
        let flags: Vec<&str> = [
            ("running", "running"),
            ("holdsSlot", "slot"),
            ("waitingForBudget", "waiting"),
            ("exhausted", "exhausted"),
        ]
        .into_iter()
        .filter(|(k, _)| r[*k] == true)
        .map(|(_, f)| f)
        .collect();
        s.push_str(&format!(
            "{:<24} {:<10} {:<8} {:>7}  {:<24} {:<22} {}\n",
            text(&j["name"]),
            text(&r["state"]),
            text(&r["step"]),
            r["attempt"].as_u64().unwrap_or(0),
            text(&r["since"]),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            },
            text(&r["reason"]),
        ));
    }
    s
}

/// The `WATCHDOG` table; empty when the agent has none.
fn watchdog_section(v: &serde_json::Value) -> String {
    let list = v["watchdogs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if list.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "{:<24} {:<16} {:<8} {:<24} MESSAGE\n",
        "WATCHDOG", "JOB", "STATUS", "SINCE"
    );
    for w in list {
        s.push_str(&format!(
            "{:<24} {:<16} {:<8} {:<24} {}\n",
            text(&w["name"]),
            text(&w["job"]),
            text(&w["status"]),
            text(&w["since"]),
            text(&w["message"]),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_and_watchdog_sections() {
        let v = serde_json::json!({
            "jobs": [
                {"name": "app", "repair": {"state": "failure", "step": "restart", "attempt": 1,
                 "reason": "health\u{1b}[2Jfailing", "since": "2026-11-28T12:00:00Z",
                 "waitingForBudget": true, "holdsSlot": false, "exhausted": false, "running": false}},
                {"name": "side", "repair": null},
            ],
            "watchdogs": [{"name": "disk", "job": null, "status": "warning",
                           "message": "12% free", "since": "2026-11-28T11:00:00Z"}],
        });
        let r = repair_section(&v);
        assert!(r.starts_with("REPAIR"), "{r}");
        assert!(
            r.contains("app") && r.contains("failure") && r.contains("waiting"),
            "{r}"
        );
        assert!(!r.contains("side") && !r.contains('\u{1b}'), "{r}");
        let w = watchdog_section(&v);
        assert!(
            w.contains("disk") && w.contains("warning") && w.contains("12% free"),
            "{w}"
        );
        let none = serde_json::json!({"jobs": [{"name": "x"}]});
        assert_eq!(repair_section(&none), "");
        assert_eq!(watchdog_section(&none), "");
    }

    #[test]
    fn announce_section_shows_each_prefix_state_and_reason() {
        let v = serde_json::json!({
            "jobs": [
                {"name": "web", "announce": {"socket": "/run/bird/bird.ctl", "changes": 3,
                 "speakerError": "cannot connect\u{1b}[2J",
                 "prefixes": [
                    {"prefix": "192.0.2.10/32", "state": "withdrawn", "reason": "speaker unreachable"},
                    {"prefix": "2001:db8::1/128", "state": "withdrawn", "reason": "speaker unreachable"}]}},
                {"name": "side", "announce": null},
            ],
        });
        let a = announce_section(&v);
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines.len(), 3, "{a}");
        assert!(lines[0].starts_with("ANNOUNCE"), "{a}");
        assert!(
            lines[1].contains("192.0.2.10/32")
                && lines[1].contains("withdrawn")
                && lines[1].contains("speaker unreachable (cannot connect"),
            "{a}"
        );
        assert!(!a.contains("side") && !a.contains('\u{1b}'), "{a}");
        let ok = serde_json::json!({"jobs": [{"name": "web", "announce": {"prefixes": [
            {"prefix": "192.0.2.10/32", "state": "announced", "reason": null}]}}]});
        assert!(
            announce_section(&ok).contains("announced  -"),
            "{}",
            announce_section(&ok)
        );
        assert_eq!(announce_section(&serde_json::json!({"jobs": []})), "");
    }
}
