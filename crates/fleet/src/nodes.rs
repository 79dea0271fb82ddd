//! Nodes: the `_nodes` entries agents publish (one per agent, id = its hostname), a node's detail (its instances, watchdogs, repairs, health transitions, maintenance intent), and the maintenance intent a person writes at `_fleet/maintenance/<node>`.
//!
//! The entries are read only (agents write them); the maintenance intent is
//! the desired state the node's agent applies and then records as applied.

use autopilot_catalog::{Catalog, Instance, now_ms};
use autopilot_core::repair::clean;
use serde::Serialize;
use serde_json::Value;

use crate::error::catalog;
use crate::watchdogs::{self, WatchdogView};
use crate::{FleetError, Result, quote, repairs, services};

/// The layout and shapes agents and people share are core's.
pub use autopilot_core::intent::{
    HEALTH_KEEP as HEALTH_CAP, HealthTransition, Intent as MaintenanceIntent,
    MAX_INTENT_BYTES as VALUE_CAP, NODES_SERVICE, health_key, maintenance_key,
};

/// At most this many jobs of a node are read for its detail.
pub const JOBS_CAP: usize = 100;

/// A node as its `_nodes` entry says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub node: String,
    /// `passing`, or `warning` in maintenance.
    pub status: String,
    pub maintenance: bool,
    pub jobs: Vec<String>,
    pub version: Option<String>,
    pub started: Option<String>,
    pub session: Option<String>,
    pub address: String,
    pub last_heartbeat: String,
}

impl NodeView {
    /// Reads an entry leniently (every text cleaned, missing tags absent).
    pub fn parse(i: &Instance) -> NodeView {
        let tag = |k: &str| crate::tag(&i.tags, k).map(clean).filter(|v| !v.is_empty());
        let mut jobs: Vec<String> = i
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix("job="))
            .map(clean)
            .filter(|j| !j.is_empty())
            .collect();
        jobs.sort();
        jobs.dedup();
        NodeView {
            node: clean(&i.id),
            status: i.status.as_str().to_string(),
            maintenance: crate::tag(&i.tags, "maintenance") == Some("true"),
            jobs,
            version: tag("version"),
            started: tag("started"),
            session: tag("session"),
            address: clean(&i.address),
            last_heartbeat: clean(&i.last_heartbeat),
        }
    }
}

async fn entries(cat: &dyn Catalog) -> Result<Vec<Instance>> {
    cat.instances_with_heartbeats(NODES_SERVICE)
        .await
        .map_err(catalog("reading the node entries"))
}

/// Every node with a `_nodes` entry, by name.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<NodeView>> {
    let mut out: Vec<NodeView> = entries(cat).await?.iter().map(NodeView::parse).collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// A node in detail.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: NodeView,
    /// The node's job instances (id `<job>-<node>`), as `catalog instances -o json`.
    pub instances: Vec<Value>,
    pub watchdogs: Vec<WatchdogView>,
    /// The node's repair entries across services (`repairs list` node JSON
    /// with a `service` field).
    pub repairs: Vec<Value>,
    /// The last job health transitions, newest last (`[]` when none).
    pub health: Vec<HealthTransition>,
    /// The maintenance intent for the node (`_fleet/maintenance/<node>`), if
    /// any; the flattened `maintenance` flag is what the agent applied.
    pub intent: Option<MaintenanceIntent>,
    /// What could not be read and was skipped.
    pub notes: Vec<String>,
}

/// A value read only when not too large and parsing as `T`, else a note.
fn parse_capped<T: serde::de::DeserializeOwned>(
    raw: Option<String>,
    what: &str,
    notes: &mut Vec<String>,
) -> Option<T> {
    let raw = raw?;
    if raw.len() > VALUE_CAP {
        notes.push(format!("{what}: larger than {VALUE_CAP} bytes, skipped"));
        return None;
    }
    match serde_json::from_str(&raw) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("{what}: unreadable, skipped ({e})"));
            None
        }
    }
}

/// One node in detail; `NotFound` without a `_nodes` entry.
pub async fn detail(cat: &dyn Catalog, node: &str) -> Result<NodeDetail> {
    crate::check_component("node name", node)?;
    let all = entries(cat).await?;
    let Some(entry) = all.iter().find(|i| i.id == node) else {
        return Err(not_found(cat, node));
    };
    let view = NodeView::parse(entry);
    let mut notes = Vec::new();
    let mut instances = Vec::new();
    for job in view.jobs.iter().take(JOBS_CAP) {
        let id = format!("{job}-{node}");
        instances.extend(
            services::instances(cat, job)
                .await?
                .iter()
                .filter(|i| i.id == id)
                .map(services::instance_json),
        );
    }
    let dot = format!("{node}.");
    let watchdogs: Vec<WatchdogView> = watchdogs::list(cat)
        .await?
        .into_iter()
        .filter(|w| w.node == node || w.id.starts_with(&dot))
        .collect();
    // The node's instance ids: `<job>-<node>` for each of its jobs.
    let ids: Vec<String> = view.jobs.iter().map(|j| format!("{j}-{node}")).collect();
    let (views, _) = repairs::read(cat, None).await?;
    let mut repairs = Vec::new();
    for v in &views {
        for n in v.nodes.iter().filter(|n| ids.contains(&n.entry.id)) {
            let mut j = repairs::node_json(n);
            if let Some(o) = j.as_object_mut() {
                o.insert("service".into(), Value::String(v.service.clone()));
            }
            repairs.push(j);
        }
    }
    let hkey = health_key(node);
    let raw = cat
        .kv_get(&hkey)
        .await
        .map_err(catalog(format!("reading {hkey}")))?;
    let mut health: Vec<HealthTransition> = parse_capped::<Vec<Value>>(raw, &hkey, &mut notes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    let skip = health.len().saturating_sub(HEALTH_CAP);
    health.drain(..skip);
    for h in &mut health {
        h.job = clean(&h.job);
        h.status = clean(&h.status);
    }
    let maintenance = read_maintenance(cat, node, &mut notes).await?;
    Ok(NodeDetail {
        node: view,
        instances,
        watchdogs,
        repairs,
        health,
        intent: maintenance,
        notes,
    })
}

async fn read_maintenance(
    cat: &dyn Catalog,
    node: &str,
    notes: &mut Vec<String>,
) -> Result<Option<MaintenanceIntent>> {
    let key = maintenance_key(node);
    let raw = cat
        .kv_get(&key)
        .await
        .map_err(catalog(format!("reading {key}")))?;
    Ok(
        parse_capped::<MaintenanceIntent>(raw, &key, notes).map(|mut m| {
            m.by = clean(&m.by);
            m.id = clean(&m.id);
            m.applied_by = m.applied_by.as_deref().map(clean);
            m.outcome = m.outcome.as_deref().map(clean);
            m
        }),
    )
}

fn not_found(cat: &dyn Catalog, node: &str) -> FleetError {
    FleetError::NotFound(format!(
        "no node {} in catalog {} (no {NODES_SERVICE} entry: is its agent running?)",
        quote(node),
        cat.url()
    ))
}

/// Writes the maintenance intent for `node` (which must have a `_nodes`
/// entry, else `NotFound`): a new id, so the agent applies it once.
pub async fn request_maintenance(
    cat: &dyn Catalog,
    node: &str,
    on: bool,
    by: &str,
) -> Result<MaintenanceIntent> {
    crate::check_component("node name", node)?;
    if !entries(cat).await?.iter().any(|i| i.id == node) {
        return Err(not_found(cat, node));
    }
    let intent = MaintenanceIntent {
        on,
        id: crate::random_hex(16),
        by: by.to_string(),
        at_ms: now_ms(),
        applied_ms: None,
        applied_by: None,
        outcome: None,
    };
    let key = maintenance_key(node);
    let value = serde_json::to_string(&intent)
        .map_err(|e| FleetError::Invalid(format!("encoding {key}: {e}")))?;
    cat.kv_put(&key, &value)
        .await
        .map_err(catalog(format!("writing {key}")))?;
    Ok(intent)
}
