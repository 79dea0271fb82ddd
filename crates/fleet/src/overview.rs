//! The fleet overview (`GET /api/v1/overview`): services failing first, elections, nodes, failing instances (critical first), repairs and the latest rollouts, stamped with the catalog revision it was read at.

use autopilot_catalog::{Catalog, Instance, Status, now_ms};
use serde::Serialize;
use serde_json::Value;

use crate::Result;
use crate::clusters::{self, ElectionSummary};
use crate::nodes::{self, NodeView};
use crate::repairs::{self, RepairSummary};
use crate::rollouts::{self, RolloutSummary};
use crate::services::{self, ServiceSummary};

/// Failing instances listed at most.
pub const FAILING_CAP: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The catalog's change revision when the read began.
    pub revision: u64,
    pub generated_ms: u64,
    pub services: Vec<ServiceSummary>,
    pub elections: Vec<ElectionSummary>,
    pub nodes: Vec<NodeView>,
    /// As `autopilot catalog instances -o json`, critical first.
    pub failing: Vec<Value>,
    pub repairs: Vec<RepairSummary>,
    pub rollouts: Vec<RolloutSummary>,
}

fn rank(s: Status) -> u8 {
    match s {
        Status::Critical => 0,
        Status::Warning => 1,
        Status::Maintenance => 2,
        Status::Passing => 3,
    }
}

/// The failing instances (critical or warning) of the lists, critical first, then
/// by service and id, at most [`FAILING_CAP`].
pub fn failing(lists: &[Vec<Instance>]) -> Vec<Value> {
    let mut bad: Vec<&Instance> = lists
        .iter()
        .flatten()
        .filter(|i| matches!(i.status, Status::Critical | Status::Warning))
        .collect();
    bad.sort_by(|a, b| {
        rank(a.status)
            .cmp(&rank(b.status))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    bad.into_iter()
        .take(FAILING_CAP)
        .map(services::instance_json)
        .collect()
}

/// Reads the whole overview.
pub async fn read(cat: &dyn Catalog) -> Result<Overview> {
    let revision = *cat.changes().borrow();
    let (services, lists) = services::summaries(cat).await?;
    let elections = clusters::list(cat).await?;
    let nodes = nodes::list(cat).await?;
    let (views, _) = repairs::read(cat, None).await?;
    let rollouts = rollouts::list(cat).await?;
    Ok(Overview {
        revision,
        generated_ms: now_ms(),
        failing: failing(&lists),
        services,
        elections,
        nodes,
        repairs: views.iter().map(RepairSummary::of).collect(),
        rollouts,
    })
}
