//! `/v1/catalog/*` and `/v1/health/*`: every catalog instance (registered here or by autopilot agents) as Consul's nodes, services and checks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use autopilot_catalog::{Instance, Status};
use axum::http::Method;
use axum::response::Response;
use serde_json::{Value, json};

use crate::http::{self, Req};
use crate::view::{self, Rendered};
use crate::{HttpError, State};

/// The most services listed, and instances of one service.
const MAX_SERVICES: usize = 5000;
const MAX_INSTANCES: usize = 10_000;

/// One instance as Consul sees it: its node, the service, its checks.
struct Entry {
    node: String,
    inst: Instance,
    checks: Vec<Value>,
    /// The registered `Meta` of a service registered here; `{}` otherwise.
    meta: Value,
}

/// The node of an instance: this server's for services registered here;
/// the host of an agent's `<job>-<host>` ID; else its address.
fn node_of(st: &State, inst: &Instance) -> String {
    if st.agent.service(&inst.id).is_some() {
        return st.cfg.node.clone();
    }
    inst.id
        .strip_prefix(&inst.name)
        .and_then(|r| r.strip_prefix('-'))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| inst.address.clone())
}

fn serf(node: &str) -> Value {
    json!({
        "Node": node,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

async fn instances(st: &State, name: &str) -> Result<Vec<Entry>, HttpError> {
    let mut all = st.call(st.cat.instances(name)).await?;
    all.truncate(MAX_INSTANCES);
    Ok(all
        .into_iter()
        .map(|inst| {
            let node = node_of(st, &inst);
            let mut checks = vec![serf(&node)];
            let mut meta = json!({});
            match st.agent.service(&inst.id) {
                Some(svc) if svc.name == inst.name => {
                    meta = svc.meta.clone();
                    checks.extend(
                        svc.checks
                            .iter()
                            .map(|c| crate::agent::check_json(&node, &svc, c)),
                    );
                }
                _ => {
                    let (id, name, status) = match inst.status {
                        Status::Maintenance => (
                            format!("_service_maintenance:{}", inst.id),
                            "Service Maintenance Mode".to_string(),
                            "critical",
                        ),
                        s => (
                            format!("service:{}", inst.id),
                            format!("Service '{}' check", inst.name),
                            s.as_str(),
                        ),
                    };
                    checks.push(json!({
                        "Node": node,
                        "CheckID": id,
                        "Name": name,
                        "Status": status,
                        "Notes": "",
                        "Output": format!("autopilot: {}", inst.status.as_str()),
                        "ServiceID": inst.id,
                        "ServiceName": inst.name,
                        "ServiceTags": inst.tags,
                        "Type": "ttl",
                        "CreateIndex": 0,
                        "ModifyIndex": 0,
                    }));
                }
            }
            Entry {
                node,
                inst,
                checks,
                meta,
            }
        })
        .collect())
}

fn node_json(st: &State, e: &Entry) -> Value {
    json!({
        "ID": "",
        "Node": e.node,
        "Address": e.inst.address,
        "Datacenter": st.cfg.datacenter,
        "TaggedAddresses": {"lan": e.inst.address, "wan": e.inst.address},
        "Meta": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

fn service_json(e: &Entry) -> Value {
    json!({
        "ID": e.inst.id,
        "Service": e.inst.name,
        "Tags": e.inst.tags,
        "Address": e.inst.address,
        "Meta": e.meta,
        "Port": e.inst.port,
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false,
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

pub async fn handle(st: &Arc<State>, req: Req) -> Result<Response, HttpError> {
    http::need_method(&req, &[Method::GET])?;
    let parts: Vec<&str> = req.rest.splitn(3, '/').collect();
    let q = &req.query;
    let b = q.blocking()?;
    let tags: Vec<String> = q.all("tag").into_iter().map(str::to_string).collect();
    let (key, r) = match parts[..] {
        ["catalog", "services"] => {
            q.only(&["index", "wait"])?;
            ("catalog\0services".to_string(), Kind::Services)
        }
        ["catalog", "service", name] if !name.is_empty() => {
            q.only(&["index", "wait", "tag", "near"])?;
            (
                format!("catalog\0service\0{name}"),
                Kind::CatalogService(name.to_string()),
            )
        }
        ["catalog", "nodes"] => {
            q.only(&["index", "wait", "near"])?;
            ("catalog\0nodes".to_string(), Kind::Nodes)
        }
        ["catalog", "datacenters"] => {
            q.only(&[])?;
            return http::json(&[st.cfg.datacenter.as_str()]);
        }
        ["health", "service", name] if !name.is_empty() => {
            q.only(&["index", "wait", "tag", "near", "passing"])?;
            let passing = q.flag("passing");
            (
                format!("health\0service\0{name}"),
                Kind::Health(name.to_string(), passing),
            )
        }
        ["health", "checks", name] if !name.is_empty() => {
            q.only(&["index", "wait", "near"])?;
            (
                format!("health\0checks\0{name}"),
                Kind::Checks(name.to_string()),
            )
        }
        ["health", "state", state] => {
            q.only(&["index", "wait", "near"])?;
            if !["any", "passing", "warning", "critical"].contains(&state) {
                return Err(HttpError::bad(format!(
                    "Invalid state {state:?}: any, passing, warning or critical"
                )));
            }
            (
                format!("health\0state\0{state}"),
                Kind::State(state.to_string()),
            )
        }
        _ => return Err(http::unsupported(&req)),
    };
    // A service's reads share one answer and index whatever the filters
    // (as Consul's share the table's index): the filters apply after, so an
    // index from `?passing` blocks a read without it, and the other way round.
    let (rendered, idx) = view::answer(st, &key, b, || compute(st, &r)).await?;
    let rendered = match &r {
        Kind::CatalogService(_) => filter(rendered, |v| {
            tags.iter().all(|t| {
                v["ServiceTags"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
            })
        })?,
        Kind::Health(_, passing) => filter(rendered, |v| {
            let tagged = tags.iter().all(|t| {
                v["Service"]["Tags"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
            });
            let ok = !passing
                || v["Checks"].as_array().is_some_and(|c| {
                    c.iter()
                        .all(|c| c.get("Status").and_then(Value::as_str) == Some("passing"))
                });
            tagged && ok
        })?,
        _ => rendered,
    };
    Ok(http::reply(rendered, Some(idx)))
}

/// Keeps the elements of a JSON array answer that `keep` accepts.
fn filter(r: Rendered, keep: impl Fn(&Value) -> bool) -> Result<Rendered, HttpError> {
    let all: Vec<Value> = serde_json::from_slice(&r.body)
        .map_err(|e| HttpError::internal(format!("cannot filter the answer: {e}")))?;
    let kept: Vec<&Value> = all.iter().filter(|v| keep(v)).collect();
    if kept.len() == all.len() {
        return Ok(r);
    }
    Rendered::json(&kept)
}

enum Kind {
    Services,
    CatalogService(String),
    Nodes,
    Health(String, bool),
    Checks(String),
    State(String),
}

/// Every instance of every service (for nodes and states).
async fn everything(st: &State) -> Result<Vec<Entry>, HttpError> {
    let mut services = st.call(st.cat.services()).await?;
    services.truncate(MAX_SERVICES);
    let mut out = Vec::new();
    for s in services {
        out.extend(instances(st, &s.name).await?);
        if out.len() > MAX_INSTANCES {
            return Err(HttpError::internal(format!(
                "more than {MAX_INSTANCES} instances in the catalog"
            )));
        }
    }
    Ok(out)
}

async fn compute(st: &State, kind: &Kind) -> Result<Rendered, HttpError> {
    match kind {
        Kind::Services => {
            let mut services = st.call(st.cat.services()).await?;
            services.truncate(MAX_SERVICES);
            let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in services {
                if s.instances == 0 {
                    continue;
                }
                let insts = st.call(st.cat.instances(&s.name)).await?;
                if insts.is_empty() {
                    continue;
                }
                let t = out.entry(s.name.clone()).or_default();
                for i in insts {
                    t.extend(i.tags);
                }
            }
            Rendered::json(&out)
        }
        Kind::CatalogService(name) => {
            let out: Vec<Value> = instances(st, name)
                .await?
                .iter()
                .map(|e| {
                    json!({
                        "ID": "",
                        "Node": e.node,
                        "Address": e.inst.address,
                        "Datacenter": st.cfg.datacenter,
                        "TaggedAddresses": {"lan": e.inst.address, "wan": e.inst.address},
                        "NodeMeta": {},
                        "ServiceKind": "",
                        "ServiceID": e.inst.id,
                        "ServiceName": e.inst.name,
                        "ServiceTags": e.inst.tags,
                        "ServiceAddress": e.inst.address,
                        "ServiceMeta": e.meta,
                        "ServicePort": e.inst.port,
                        "ServiceWeights": {"Passing": 1, "Warning": 1},
                        "ServiceEnableTagOverride": false,
                        "CreateIndex": 0,
                        "ModifyIndex": 0,
                    })
                })
                .collect();
            Rendered::json(&out)
        }
        Kind::Nodes => {
            let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
            for e in everything(st).await? {
                nodes
                    .entry(e.node.clone())
                    .or_insert_with(|| node_json(st, &e));
            }
            let out: Vec<Value> = nodes.into_values().collect();
            Rendered::json(&out)
        }
        Kind::Health(name, _) => {
            let out: Vec<Value> = instances(st, name)
                .await?
                .iter()
                .map(|e| {
                    json!({
                        "Node": node_json(st, e),
                        "Service": service_json(e),
                        "Checks": e.checks,
                    })
                })
                .collect();
            Rendered::json(&out)
        }
        Kind::Checks(name) => {
            let out: Vec<Value> = instances(st, name)
                .await?
                .into_iter()
                .flat_map(|e| e.checks.into_iter().skip(1))
                .collect();
            Rendered::json(&out)
        }
        Kind::State(state) => {
            let mut seen_nodes = BTreeSet::new();
            let mut out = Vec::new();
            for e in everything(st).await? {
                for (i, c) in e.checks.into_iter().enumerate() {
                    if i == 0 && !seen_nodes.insert(e.node.clone()) {
                        continue;
                    }
                    let s = c.get("Status").and_then(Value::as_str).unwrap_or("");
                    if state == "any" || s == state {
                        out.push(c);
                    }
                }
            }
            Rendered::json(&out)
        }
    }
}
