//! Repairs: what self-repair is doing per service: the nodes' states (from their `_repair.<service>` entries and persisted records), how many are in repair, the budget-exhausted marker, and the repair history, newest first (`autopilot repairs list`).
//!
//! Everything read here is untrusted catalog data written by agents (or
//! anyone with write access): entries whose tags do not parse, values that
//! are not JSON or too large, are skipped and counted in a note, and every
//! text is cleaned (`repair::clean`: no control characters, at most 200
//! characters). Nothing is written.

use std::collections::{BTreeMap, BTreeSet};

use autopilot_catalog::{Catalog, Status};
use autopilot_core::repair::{
    self, HistoryRecord, NodeEntry, NodeRecord, NodeState, clean, history_prefix, node_service,
    service_of_node_service,
};
use serde_json::{Value, json};

use crate::error::catalog;
use crate::{FleetError, Result, quote};

/// Where every service's repair records live in the KV store.
pub const KV_ROOT: &str = "_fleet/repair/";
/// The longest service name accepted.
const NAME_CAP: usize = 200;
/// The largest exhausted marker read (bytes); a larger one is shown as unreadable.
const MARKER_CAP: usize = 4096;
/// Services read when none is named (each costs a catalog request); the
/// rest are counted, so junk keys cannot exhaust a deadline.
pub const SERVICES_CAP: usize = 200;
/// History records shown per service by default.
pub const DEFAULT_LIMIT: usize = 20;

/// The exhausted marker `{"since", "by"}` as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub since: Option<String>,
    pub by: Option<String>,
    /// The value is not the expected JSON (shown, never fatal).
    pub unreadable: bool,
}

/// A node as shown: its live entry, or only its persisted record.
#[derive(Debug, Clone)]
pub struct Node {
    pub entry: NodeEntry,
    /// The entry's catalog status (`None`: no live entry, from the record only).
    pub status: Option<Status>,
}

/// One service's repair data as read.
#[derive(Debug, Default)]
pub struct ServiceView {
    pub service: String,
    pub nodes: Vec<Node>,
    pub marker: Option<Marker>,
    /// Newest first, all of them (the caller applies a limit).
    pub history: Vec<HistoryRecord>,
    /// What was skipped and why.
    pub notes: Vec<String>,
    /// Whether anything at all was found for the service.
    pub found: bool,
}

impl ServiceView {
    pub fn live(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes
            .iter()
            .filter(|n| n.status.is_some())
            .map(|n| &n.entry)
    }

    pub fn in_repair(&self) -> usize {
        self.live().filter(|n| n.in_repair()).count()
    }

    pub fn slots_held(&self) -> usize {
        self.live().filter(|n| n.holds_slot).count()
    }

    pub fn waiting(&self) -> usize {
        self.live().filter(|n| n.waiting).count()
    }
}

/// A service name usable as a key segment: not empty, no `/`, no control
/// characters, at most 200 characters.
pub fn check_service(s: &str) -> Result<()> {
    if s.is_empty()
        || s.contains('/')
        || s.chars().any(char::is_control)
        || s.chars().count() > NAME_CAP
    {
        return Err(FleetError::Invalid(format!(
            "invalid service name {}: not empty, no '/' or control characters, at most {NAME_CAP} characters",
            quote(&clean(s))
        )));
    }
    Ok(())
}

/// The service a repair KV key belongs to.
pub(crate) fn service_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(KV_ROOT)?
        .split_once('/')
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
}

/// Reads one service (`Some`) or every service with repair data (the
/// first [`SERVICES_CAP`] by name), and how many were left out.
pub async fn read(cat: &dyn Catalog, service: Option<&str>) -> Result<(Vec<ServiceView>, usize)> {
    if let Some(s) = service {
        check_service(s)?;
    }
    let (names, kv): (BTreeSet<String>, Vec<(String, String)>) = match service {
        Some(s) => {
            let prefix = format!("{KV_ROOT}{s}/");
            (
                BTreeSet::from([s.to_string()]),
                cat.kv_list(&prefix)
                    .await
                    .map_err(catalog(format!("listing {prefix}")))?,
            )
        }
        None => {
            let kv = cat
                .kv_list(KV_ROOT)
                .await
                .map_err(catalog(format!("listing {KV_ROOT}")))?;
            let mut names: BTreeSet<String> = cat
                .services()
                .await
                .map_err(catalog("listing services"))?
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
        let svc = node_service(name);
        let entries = cat
            .instances(&svc)
            .await
            .map_err(catalog(format!("reading the instances of {}", quote(&svc))))?;
        let kv = by_service.remove(name.as_str()).unwrap_or_default();
        views.push(view(name, &entries, &kv));
    }
    Ok((views, left_out))
}

/// Builds one service's view from its live entries and KV pairs (pure).
pub fn view(
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
        match repair::parse_node(repair::node_of_entry(service, &i.id), &i.tags) {
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

pub fn node_json(n: &Node) -> Value {
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

pub fn history_json(r: &HistoryRecord) -> Value {
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

/// One service as `repairs list -o json` shows it, with at most `limit`
/// history records.
pub fn view_json(v: &ServiceView, limit: usize) -> Value {
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

/// The document `repairs list -o json` prints.
pub fn list_json(views: &[ServiceView], limit: usize) -> Value {
    let v: Vec<Value> = views.iter().map(|v| view_json(v, limit)).collect();
    json!({ "services": v })
}

/// Every service with repair data (`repairs list -o json`), `limit`
/// history records each.
pub async fn list(cat: &dyn Catalog, limit: usize) -> Result<Value> {
    let (views, _) = read(cat, None).await?;
    Ok(list_json(&views, limit))
}

/// One service's repair data (`repairs list SERVICE -o json`); `NotFound`
/// when there is none.
pub async fn service(cat: &dyn Catalog, name: &str, limit: usize) -> Result<Value> {
    let (views, _) = read(cat, Some(name)).await?;
    if !views.iter().any(|v| v.found) {
        return Err(FleetError::NotFound(format!(
            "no repair data for {} in catalog {}",
            quote(&clean(name)),
            cat.url()
        )));
    }
    Ok(list_json(&views, limit))
}

/// Alias of [`service`] under the contract's name.
pub async fn view_of(cat: &dyn Catalog, name: &str, limit: usize) -> Result<Value> {
    service(cat, name, limit).await
}

/// One service's summary in the overview.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RepairSummary {
    pub service: String,
    pub in_repair: usize,
    /// Budget slots held now.
    pub budget: usize,
    pub exhausted: bool,
}

impl RepairSummary {
    pub fn of(v: &ServiceView) -> RepairSummary {
        RepairSummary {
            service: v.service.clone(),
            in_repair: v.in_repair(),
            budget: v.slots_held(),
            exhausted: v.marker.is_some(),
        }
    }
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
        let j = view_json(&v, 0);
        assert_eq!(j["history"].as_array().map(Vec::len), Some(0));
        assert_eq!(j["historyTotal"], 1);
        let s = RepairSummary::of(&v);
        assert_eq!((s.in_repair, s.budget, s.exhausted), (1, 1, true));
    }
}
