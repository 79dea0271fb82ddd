//! Services: the catalog's service list and instances as the CLI prints them (`catalog services`, `catalog instances`), user-service summaries with health counts, and a service's detail (instances, elections, repair).

use autopilot_catalog::{Catalog, Instance, Status};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::catalog;
use crate::{FleetError, Result, clusters, repairs};

/// At most this many services are read one by one (each costs a catalog
/// request); the rest are left out of summaries.
pub const SERVICES_CAP: usize = 500;

/// An instance as JSON: camelCase field names, as every JSON output
/// (`autopilot catalog instances -o json`).
pub fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id,
        "name": i.name,
        "address": i.address,
        "port": i.port,
        "tags": i.tags,
        "status": i.status.as_str(),
        "lastHeartbeat": i.last_heartbeat,
    })
}

pub fn instances_json(list: &[Instance]) -> Value {
    Value::Array(list.iter().map(instance_json).collect())
}

/// Whether a service name is reserved (agents' records: `_members.*`,
/// `_repair.*`, `_nodes`, `_watchdogs`, ...): user services cannot start with `_`.
pub fn reserved(name: &str) -> bool {
    name.starts_with('_')
}

/// Every service with its instance counts, reserved ones included
/// (`autopilot catalog services`).
pub async fn counts(cat: &dyn Catalog) -> Result<Vec<autopilot_catalog::ServiceSummary>> {
    cat.services().await.map_err(catalog("listing services"))
}

/// [`counts`] as `autopilot catalog services -o json` prints it.
pub fn counts_json(list: &[autopilot_catalog::ServiceSummary]) -> Value {
    Value::Array(
        list.iter()
            .map(|s| json!({"name": s.name, "instances": s.instances, "passing": s.passing}))
            .collect(),
    )
}

/// The live instances of a service with their last heartbeats
/// (`autopilot catalog instances`).
pub async fn instances(cat: &dyn Catalog, name: &str) -> Result<Vec<Instance>> {
    cat.instances_with_heartbeats(name)
        .await
        .map_err(catalog(format!(
            "reading the instances of {}",
            crate::quote(name)
        )))
}

/// A user service with its health counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceSummary {
    pub name: String,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    pub total: usize,
    /// The election leader's id when one of the service's instances leads.
    pub leader: Option<String>,
}

impl ServiceSummary {
    pub(crate) fn of(name: &str, list: &[Instance], leaders: &[String]) -> ServiceSummary {
        let count = |s: Status| list.iter().filter(|i| i.status == s).count();
        ServiceSummary {
            name: name.to_string(),
            passing: count(Status::Passing),
            warning: count(Status::Warning),
            critical: count(Status::Critical),
            total: list.len(),
            leader: list
                .iter()
                .find(|i| leaders.contains(&i.id))
                .map(|i| i.id.clone()),
        }
    }
}

/// The order of services: failing first (most critical, then most
/// warning), then by name.
pub fn failing_first(a: &ServiceSummary, b: &ServiceSummary) -> std::cmp::Ordering {
    b.critical
        .cmp(&a.critical)
        .then(b.warning.cmp(&a.warning))
        .then_with(|| a.name.cmp(&b.name))
}

/// The user services' names (reserved ones hidden), at most [`SERVICES_CAP`].
pub(crate) async fn user_names(cat: &dyn Catalog) -> Result<Vec<String>> {
    let mut names: Vec<String> = counts(cat)
        .await?
        .into_iter()
        .map(|s| s.name)
        .filter(|n| !reserved(n))
        .collect();
    names.sort();
    names.truncate(SERVICES_CAP);
    Ok(names)
}

/// Every user service with its counts and leader, failing first, and
/// each service's instances (for callers that need them too).
pub(crate) async fn summaries(
    cat: &dyn Catalog,
) -> Result<(Vec<ServiceSummary>, Vec<Vec<Instance>>)> {
    let leaders = clusters::leader_ids(cat).await?;
    let mut out = Vec::new();
    for name in user_names(cat).await? {
        let list = instances(cat, &name).await?;
        out.push((ServiceSummary::of(&name, &list, &leaders), list));
    }
    out.sort_by(|a, b| failing_first(&a.0, &b.0));
    Ok(out.into_iter().unzip())
}

/// Every user service (names starting `_` are reserved and hidden), failing first.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<ServiceSummary>> {
    Ok(summaries(cat).await?.0)
}

/// One service: its instances, the elections its instances are members
/// of, and its repair view (as `repairs list -o json` shows a service).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDetail {
    pub name: String,
    pub summary: ServiceSummary,
    /// As `autopilot catalog instances -o json`.
    pub instances: Vec<Value>,
    pub elections: Vec<String>,
    pub repair: Option<Value>,
}

/// A service's detail; `NotFound` when it has no instance and no repair data.
pub async fn detail(cat: &dyn Catalog, name: &str) -> Result<ServiceDetail> {
    crate::check_component("service name", name)?;
    let list = instances(cat, name).await?;
    let ids: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    let mut elections = Vec::new();
    let mut leaders = Vec::new();
    for e in clusters::election_names(cat).await? {
        let members = cat
            .instances(&clusters::members_service(&e))
            .await
            .map_err(catalog(format!(
                "reading the members of {}",
                crate::quote(&e)
            )))?;
        let member_of = members
            .iter()
            .map(|i| clusters::Member::parse(&e, i))
            .any(|m| ids.contains(&m.id));
        if member_of {
            if let Some(l) = cat.leader(&e).await.map_err(catalog(format!(
                "reading the leader of {}",
                crate::quote(&e)
            )))? {
                leaders.push(l.id);
            }
            elections.push(e);
        }
    }
    let (views, _) = repairs::read(cat, Some(name)).await?;
    let repair = views
        .iter()
        .find(|v| v.found)
        .map(|v| repairs::view_json(v, repairs::DEFAULT_LIMIT));
    if list.is_empty() && repair.is_none() {
        return Err(FleetError::NotFound(format!(
            "no service {} in catalog {}",
            crate::quote(name),
            cat.url()
        )));
    }
    Ok(ServiceDetail {
        name: name.to_string(),
        summary: ServiceSummary::of(name, &list, &leaders),
        instances: list.iter().map(instance_json).collect(),
        elections,
        repair,
    })
}
