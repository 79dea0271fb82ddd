//! `autopilot repairs list`: what self-repair is doing per service: the nodes' states (from their `_repair.<service>` entries and persisted records), how many are in repair, the budget-exhausted marker, and the repair history, newest first.
//!
//! The reading is `autopilot_fleet::repairs` (shared with the cockpit):
//! untrusted data is skipped and counted in a note, and every text is
//! cleaned. This module keeps the arguments and the text rendering.
//! Nothing is written.

use autopilot_core::repair::clean;
use autopilot_fleet as fleet;
use autopilot_fleet::repairs::{Node, ServiceView};
use clap::{Args, Subcommand};

use super::{Access, CatalogOpts, Output, bounded, exit, fleet_err, open_catalog, quote};

#[derive(Args, Debug)]
pub struct RepairsArgs {
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, global = true, value_name = "URL")]
    pub catalog: Option<String>,
    #[command(subcommand)]
    pub cmd: RepairsCmd,
}

#[derive(Subcommand, Debug)]
pub enum RepairsCmd {
    /// Show each service's nodes in repair, the budget, and the repair history, newest first.
    List {
        /// The service (the repaired job's name); default: every service with repair data.
        service: Option<String>,
        /// History records shown per service (0: none).
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
}

/// A service name usable as a key segment (exit 2 otherwise).
fn check_service(s: &str) -> anyhow::Result<()> {
    fleet::repairs::check_service(s).map_err(|e| fleet_err("repairs list", e))
}

/// Runs `autopilot repairs ...`.
pub async fn repairs_cmd(o: CatalogOpts, a: &RepairsArgs, out: Output) -> anyhow::Result<i32> {
    match &a.cmd {
        RepairsCmd::List { service, limit } => list(o, service.as_deref(), *limit, out).await,
    }
}

async fn list(
    o: CatalogOpts,
    service: Option<&str>,
    limit: usize,
    out: Output,
) -> anyhow::Result<i32> {
    if let Some(s) = service {
        check_service(s)?;
    }
    let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
        .await?
        .cat;
    let what = format!("catalog {}", o.url);
    let (views, left_out) = bounded(&what, o.deadline, async {
        fleet::repairs::read(cat.as_ref(), service)
            .await
            .map_err(|e| fleet_err("repairs list", e))
    })
    .await?;
    if left_out > 0 {
        eprintln!(
            "autopilot: repairs list: {left_out} more services with repair data not shown (name one)"
        );
    }
    if let Some(s) = service
        && !views.iter().any(|v| v.found)
    {
        eprintln!(
            "autopilot: no repair data for {} in catalog {}",
            quote(&clean(s)),
            o.url
        );
        return Ok(exit::ABSENT);
    }
    if out.json() {
        let doc = fleet::repairs::list_json(&views, limit);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if views.is_empty() {
        println!("no repair data in catalog {}", o.url);
    } else {
        let blocks: Vec<String> = views.iter().map(|v| render(v, limit)).collect();
        print!("{}", blocks.join("\n"));
    }
    Ok(exit::OK)
}

/// A node's flags column: `slot`, `waiting`, `leader`, `exhausted`, `gone`.
fn flags(n: &Node) -> String {
    let e = &n.entry;
    let mut f = Vec::new();
    if e.holds_slot {
        f.push("slot");
    }
    if e.waiting {
        f.push("waiting");
    }
    if e.leader {
        f.push("leader");
    }
    if e.exhausted {
        f.push("exhausted");
    }
    if n.status.is_none() {
        f.push("gone");
    }
    if f.is_empty() {
        "-".into()
    } else {
        f.join(",")
    }
}

fn or_dash(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// One service's block of the table output.
fn render(v: &ServiceView, limit: usize) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    let live = v.live().count();
    line(format!(
        "service {}: {live} node{}, in repair: {} ({} slot{} held), waiting for budget: {}",
        v.service,
        if live == 1 { "" } else { "s" },
        v.in_repair(),
        v.slots_held(),
        if v.slots_held() == 1 { "" } else { "s" },
        v.waiting()
    ));
    match &v.marker {
        None => line("  budget: not exhausted".into()),
        Some(m) if m.unreadable => line("  budget: EXHAUSTED (marker unreadable)".into()),
        Some(m) => line(format!(
            "  budget: EXHAUSTED since {} (first denied: {})",
            or_dash(m.since.as_deref()),
            or_dash(m.by.as_deref())
        )),
    }
    if !v.nodes.is_empty() {
        line(format!(
            "  {:<28} {:<10} {:<8} {:>7}  {:<24} {:<22} REASON",
            "NODE", "STATE", "STEP", "ATTEMPT", "SINCE", "FLAGS"
        ));
        for n in &v.nodes {
            let e = &n.entry;
            line(format!(
                "  {:<28} {:<10} {:<8} {:>7}  {:<24} {:<22} {}",
                e.id,
                e.state.as_str(),
                e.step.map_or("-", |s| s.as_str()),
                e.attempt,
                or_dash(e.since.as_deref()),
                flags(n),
                or_dash(e.reason.as_deref())
            ));
        }
    }
    let shown = v.history.len().min(limit);
    if v.history.is_empty() {
        line("  history: none".into());
    } else if shown > 0 {
        line(format!(
            "  history (newest first, {shown} of {}):",
            v.history.len()
        ));
        line(format!(
            "  {:<24} {:<28} {:<8} {:>7}  {:<11} {:<24} REASON / MESSAGE",
            "STARTED", "NODE", "STEP", "ATTEMPT", "OUTCOME", "ENDED"
        ));
        for r in v.history.iter().take(limit) {
            let text = match r.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => format!("{} / {m}", or_dash(Some(&r.reason))),
                None => or_dash(Some(&r.reason)).to_string(),
            };
            line(format!(
                "  {:<24} {:<28} {:<8} {:>7}  {:<11} {:<24} {}",
                r.started,
                r.node,
                r.step.as_str(),
                r.attempt,
                r.outcome.map_or("running", |o| o.as_str()),
                or_dash(r.ended.as_deref()),
                text
            ));
        }
    } else {
        line(format!("  history: {} records", v.history.len()));
    }
    for n in &v.notes {
        line(format!("  note: {n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use autopilot_catalog::{Instance, Status};

    #[test]
    fn hostile_data_is_printed_cleaned() {
        let entries = [Instance {
            id: "api-a".into(),
            name: "_repair.api".into(),
            address: "127.0.0.1".into(),
            port: 0,
            tags: [
                "state=failure",
                "slot=held",
                "attempt=2",
                "reason=bad\u{1b}[31m",
            ]
            .iter()
            .map(|t| t.to_string())
            .collect(),
            status: Status::Critical,
            last_heartbeat: String::new(),
        }];
        let kv = [
            (
                "_fleet/repair/api/nodes/api-gone",
                r#"{"state":"probation","step":"replace","attempt":3}"#,
            ),
            ("_fleet/repair/api/exhausted", "[1]"),
        ];
        let v = fleet::repairs::view("api", &entries, &kv);
        let text = render(&v, 20);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("gone"), "{text}");
        assert!(text.contains("EXHAUSTED (marker unreadable)"), "{text}");
    }
}
