//! `autopilot repairs list`: what self-repair is doing per service: the nodes' states (from their `_repair.<service>` entries and persisted records), how many are in repair, the budget-exhausted marker, and the repair history, newest first.
//!
//! Everything read here is untrusted catalog data written by agents (or
//! anyone with write access): entries whose tags do not parse, values that
//! are not JSON or too large, are skipped and counted in a note, and every
//! text is printed cleaned (`repair::clean`: no control characters, at most
//! 200 characters). Nothing is written.

use std::collections::{BTreeMap, BTreeSet};

use autopilot_catalog::{Catalog, Status};
use autopilot_core::repair::{
    self, HistoryRecord, NodeEntry, NodeRecord, NodeState, clean, history_prefix, node_service,
    service_of_node_service,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Access, CatalogOpts, Output, SetupError, bounded, exit, open_catalog, quote};

/// Where every service's repair records live in the KV store.
const KV_ROOT: &str = "_fleet/repair/";
/// The longest service name accepted on the command line.
const NAME_CAP: usize = 200;
/// The largest exhausted marker read (bytes); a larger one is shown as unreadable.
const MARKER_CAP: usize = 4096;
/// Services read when none is named (each costs a catalog request); the
/// rest are counted on stderr, so junk keys cannot exhaust `--timeout`.
const SERVICES_CAP: usize = 200;

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

/// The exhausted marker `{"since", "by"}` as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    since: Option<String>,
    by: Option<String>,
    /// The value is not the expected JSON (shown, never fatal).
    unreadable: bool,
}

/// A node as shown: its live entry, or only its persisted record.
#[derive(Debug, Clone)]
struct Node {
    entry: NodeEntry,
    /// The entry's catalog status (`None`: no live entry, from the record only).
    status: Option<Status>,
}

/// One service's repair data as read.
#[derive(Debug, Default)]
struct ServiceView {
    service: String,
    nodes: Vec<Node>,
    marker: Option<Marker>,
    /// Newest first, all of them (the caller applies `--limit`).
    history: Vec<HistoryRecord>,
    /// What was skipped and why.
    notes: Vec<String>,
    /// Whether anything at all was found for the service.
    found: bool,
}

impl ServiceView {
    fn live(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes
            .iter()
            .filter(|n| n.status.is_some())
            .map(|n| &n.entry)
    }

    fn in_repair(&self) -> usize {
        self.live().filter(|n| n.in_repair()).count()
    }

    fn slots_held(&self) -> usize {
        self.live().filter(|n| n.holds_slot).count()
    }

    fn waiting(&self) -> usize {
        self.live().filter(|n| n.waiting).count()
    }
}

/// A request that cannot be carried out as asked: exit 2.
fn refused(message: String) -> anyhow::Error {
    SetupError {
        origin: "repairs list".into(),
        field: String::new(),
        message,
    }
    .into()
}

/// A service name usable as a key segment: not empty, no `/`, no control
/// characters, at most 200 characters.
fn check_service(s: &str) -> anyhow::Result<()> {
    if s.is_empty()
        || s.contains('/')
        || s.chars().any(char::is_control)
        || s.chars().count() > NAME_CAP
    {
        return Err(refused(format!(
            "invalid service name {}: not empty, no '/' or control characters, at most {NAME_CAP} characters",
            quote(&clean(s))
        )));
    }
    Ok(())
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
    let (views, left_out) = bounded(&what, o.deadline, read(cat.as_ref(), service)).await?;
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
        let v: Vec<Value> = views.iter().map(|v| view_json(v, limit)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "services": v }))?
        );
    } else if views.is_empty() {
        println!("no repair data in catalog {}", o.url);
    } else {
        let blocks: Vec<String> = views.iter().map(|v| render(v, limit)).collect();
        print!("{}", blocks.join("\n"));
    }
    Ok(exit::OK)
}

/// The service a repair KV key belongs to.
fn service_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(KV_ROOT)?
        .split_once('/')
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
}

/// Reads one service (`Some`) or every service with repair data (the
/// first [`SERVICES_CAP`] by name), and how many were left out.
async fn read(
    cat: &dyn Catalog,
    service: Option<&str>,
) -> anyhow::Result<(Vec<ServiceView>, usize)> {
    let (names, kv): (BTreeSet<String>, Vec<(String, String)>) = match service {
        Some(s) => (
            BTreeSet::from([s.to_string()]),
            cat.kv_list(&format!("{KV_ROOT}{s}/")).await?,
        ),
        None => {
            let kv = cat.kv_list(KV_ROOT).await?;
            let mut names: BTreeSet<String> = cat
                .services()
                .await?
                .iter()
                .filter_map(|s| service_of_node_service(&s.name))
                .map(str::to_string)
                .collect();
            names.extend(
                kv.iter()
                    .filter_map(|(k, _)| service_of_key(k).map(str::to_string)),
            );
            (names, kv)
        }
    };
    let mut by_service: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (k, v) in &kv {
        if let Some(s) = service_of_key(k) {
            by_service.entry(s).or_default().push((k, v));
        }
    }
    let left_out = names.len().saturating_sub(SERVICES_CAP);
    let mut views = Vec::new();
    for name in names.iter().take(SERVICES_CAP) {
        let entries = cat.instances(&node_service(name)).await?;
        let kv = by_service.remove(name.as_str()).unwrap_or_default();
        views.push(view(name, &entries, &kv));
    }
    Ok((views, left_out))
}

/// Builds one service's view from its live entries and KV pairs (pure).
fn view(
    service: &str,
    entries: &[autopilot_catalog::Instance],
    kv: &[(&str, &str)],
) -> ServiceView {
    let mut v = ServiceView {
        service: clean(service),
        found: !entries.is_empty() || !kv.is_empty(),
        ..ServiceView::default()
    };
    let mut bad_entries = 0usize;
    for i in entries {
        match repair::parse_node(&i.id, &i.tags) {
            Some(entry) => v.nodes.push(Node {
                entry,
                status: Some(i.status),
            }),
            None => bad_entries = bad_entries.saturating_add(1),
        }
    }
    let live: BTreeSet<String> = v.nodes.iter().map(|n| n.entry.id.clone()).collect();
    let nodes_prefix = format!("{KV_ROOT}{service}/nodes/");
    let history = history_prefix(service);
    let exhausted = repair::exhausted_key(service);
    let (mut bad_records, mut bad_history) = (0usize, 0usize);
    let mut hist: Vec<(&str, HistoryRecord)> = Vec::new();
    for (k, val) in kv {
        if let Some(id) = k.strip_prefix(&nodes_prefix) {
            let Some(rec) = NodeRecord::decode(val) else {
                bad_records = bad_records.saturating_add(1);
                continue;
            };
            // A node that has no live entry but was left in repair (the
            // agent died, or exited for its replacement): still worth seeing.
            let id = clean(id);
            if rec.state != NodeState::Healthy && !live.contains(&id) {
                v.nodes.push(Node {
                    entry: entry_of_record(&id, &rec),
                    status: None,
                });
            }
        } else if k.starts_with(&history) {
            match HistoryRecord::decode(val) {
                Some(r) => hist.push((k, r)),
                None => bad_history = bad_history.saturating_add(1),
            }
        } else if *k == exhausted {
            v.marker = Some(marker(val));
        }
    }
    // Keys sort by start time (13 digits of ms), then node: newest first.
    hist.sort_by(|a, b| b.0.cmp(a.0));
    v.history = hist.into_iter().map(|(_, r)| r).collect();
    v.nodes.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
    let mut note = |n: usize, what: &str| {
        if n > 0 {
            v.notes.push(format!("{n} {what} skipped (unreadable)"));
        }
    };
    note(bad_entries, "node entries");
    note(bad_records, "node records");
    note(bad_history, "history records");
    v
}

fn entry_of_record(id: &str, r: &NodeRecord) -> NodeEntry {
    NodeEntry {
        id: id.to_string(),
        state: r.state,
        step: r.step,
        attempt: r.attempt,
        reason: r.reason.as_deref().map(clean),
        since: None,
        waiting: false,
        holds_slot: false,
        leader: false,
        exhausted: r.exhausted,
    }
}

fn marker(val: &str) -> Marker {
    let parsed = (val.len() <= MARKER_CAP)
        .then(|| serde_json::from_str::<Value>(val).ok())
        .flatten()
        .filter(Value::is_object);
    match parsed {
        Some(m) => {
            let field = |f: &str| m.get(f).and_then(Value::as_str).map(clean);
            Marker {
                since: field("since"),
                by: field("by"),
                unreadable: false,
            }
        }
        None => Marker {
            since: None,
            by: None,
            unreadable: true,
        },
    }
}

fn node_json(n: &Node) -> Value {
    let e = &n.entry;
    json!({
        "id": e.id,
        "state": e.state.as_str(),
        "step": e.step.map(|s| s.as_str()),
        "attempt": e.attempt,
        "reason": e.reason,
        "since": e.since,
        "waitingForBudget": e.waiting,
        "holdsSlot": e.holds_slot,
        "leader": e.leader,
        "exhausted": e.exhausted,
        "live": n.status.is_some(),
        "status": n.status.map(Status::as_str),
    })
}

fn history_json(r: &HistoryRecord) -> Value {
    json!({
        "node": r.node,
        "job": r.job,
        "step": r.step.as_str(),
        "attempt": r.attempt,
        "reason": r.reason,
        "started": r.started,
        "ended": r.ended,
        "outcome": r.outcome.map(|o| o.as_str()),
        "message": r.message,
    })
}

fn view_json(v: &ServiceView, limit: usize) -> Value {
    let marker = v.marker.as_ref().map(|m| {
        json!({
            "since": m.since,
            "by": m.by,
            "unreadable": m.unreadable,
        })
    });
    json!({
        "service": v.service,
        "nodes": v.nodes.iter().map(node_json).collect::<Vec<_>>(),
        "inRepair": v.in_repair(),
        "slotsHeld": v.slots_held(),
        "waitingForBudget": v.waiting(),
        "budgetExhausted": marker,
        "history": v.history.iter().take(limit).map(history_json).collect::<Vec<_>>(),
        "historyTotal": v.history.len(),
        "notes": v.notes,
    })
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
    use autopilot_catalog::Instance;

    fn inst(id: &str, tags: &[&str], status: Status) -> Instance {
        Instance {
            id: id.into(),
            name: "_repair.api".into(),
            address: "127.0.0.1".into(),
            port: 0,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status,
            last_heartbeat: String::new(),
        }
    }

    #[test]
    fn service_names_are_key_segments() {
        assert!(check_service("api").is_ok());
        assert!(check_service("").is_err());
        assert!(check_service("a/b").is_err());
        assert!(check_service("a\nb").is_err());
        assert!(check_service(&"x".repeat(201)).is_err());
        assert_eq!(service_of_key("_fleet/repair/api/history/1-a"), Some("api"));
        assert_eq!(service_of_key("_fleet/repair//x"), None);
        assert_eq!(service_of_key("_fleet/repair/api"), None);
    }

    #[test]
    fn hostile_data_is_skipped_or_cleaned() {
        let entries = [
            inst(
                "api-a",
                &[
                    "state=failure",
                    "slot=held",
                    "attempt=2",
                    "reason=bad\u{1b}[31m",
                ],
                Status::Critical,
            ),
            inst("api-b", &["no state"], Status::Passing),
        ];
        let good = r#"{"node":"api-a","job":"api","step":"restart","attempt":1,"reason":"r","started":"2026-01-01T00:00:00Z"}"#;
        let huge = format!(r#"{{"node":"{}"}}"#, "x".repeat(70_000));
        let kv = [
            ("_fleet/repair/api/history/0000000000001-api-a", good),
            ("_fleet/repair/api/history/0000000000002-api-a", "not json"),
            (
                "_fleet/repair/api/history/0000000000003-api-a",
                huge.as_str(),
            ),
            (
                "_fleet/repair/api/nodes/api-gone",
                r#"{"state":"probation","step":"replace","attempt":3}"#,
            ),
            ("_fleet/repair/api/nodes/api-a", "{{{"),
            ("_fleet/repair/api/exhausted", "[1]"),
        ];
        let v = view("api", &entries, &kv);
        assert_eq!(v.nodes.len(), 2, "{:?}", v.nodes);
        assert_eq!(v.in_repair(), 1);
        assert_eq!(v.history.len(), 1);
        assert_eq!(
            v.notes,
            [
                "1 node entries skipped (unreadable)",
                "1 node records skipped (unreadable)",
                "2 history records skipped (unreadable)"
            ]
        );
        assert!(v.marker.as_ref().is_some_and(|m| m.unreadable));
        let text = render(&v, 20);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("gone"), "{text}");
        assert!(text.contains("EXHAUSTED (marker unreadable)"), "{text}");
        let j = view_json(&v, 0);
        assert_eq!(j["history"].as_array().map(Vec::len), Some(0));
        assert_eq!(j["historyTotal"], 1);
    }
}
