//! `/v1/agent/*`: this server is the agent of the services registered through it: each is a catalog entry of its own session, kept alive here, its TTL checks kept here and folded into the entry's status; definitions are stored under `_consul/agent/<node>/` so a restarted server registers them again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_catalog::{Registration, Status};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::http::{self, Req};
use crate::{HttpError, PREFIX, State};

/// The most services registered here.
const MAX_SERVICES: usize = 1000;
/// The most checks of one service, and tags.
const MAX_CHECKS: usize = 32;
const MAX_TAGS: usize = 64;

#[derive(Debug, Clone)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub ttl: Duration,
    pub status: Status,
    pub output: String,
    pub notes: String,
    pub expires: Instant,
    /// `DeregisterCriticalServiceAfter` of this check: the service goes
    /// once this check has been critical this long (Consul times it per check).
    pub deregister_after: Option<Duration>,
    pub critical_since: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: Value,
    pub checks: Vec<Check>,
    /// The status last written to the catalog.
    pub written: Option<Status>,
}

impl Service {
    /// The worst of the checks (passing without checks).
    pub fn status(&self) -> Status {
        let mut s = Status::Passing;
        for c in &self.checks {
            if rank(c.status) > rank(s) {
                s = c.status;
            }
        }
        s
    }

    fn registration(&self, st: &State) -> Registration {
        Registration {
            id: self.id.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            port: self.port,
            tags: self.tags.clone(),
            status: self.status(),
            ttl: st.cfg.entry_ttl,
            // Reaping is per check, here (see `check_ttls`); the entry's TTL
            // covers this server's death.
            deregister_critical_after: None,
            seat: None,
        }
    }
}

fn rank(s: Status) -> u8 {
    match s {
        Status::Passing => 0,
        Status::Warning => 1,
        Status::Critical => 2,
        Status::Maintenance => 3,
    }
}

#[derive(Default)]
pub struct Agent {
    services: Mutex<BTreeMap<String, Service>>,
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Service>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of a service registered here.
    pub fn service(&self, id: &str) -> Option<Service> {
        self.lock().get(id).cloned()
    }
}

fn def_key(st: &State, id: &str) -> String {
    format!("{PREFIX}agent/{}/{id}", st.cfg.node)
}

pub async fn handle(st: &Arc<State>, req: Req) -> Result<Response, HttpError> {
    let parts: Vec<&str> = req.rest.splitn(4, '/').collect();
    match parts[..] {
        ["agent", "self"] => {
            http::need_method(&req, &[Method::GET])?;
            req.query.only(&[])?;
            let c = &st.cfg;
            http::json(&json!({
                "Config": {
                    "Datacenter": c.datacenter,
                    "NodeName": c.node,
                    "NodeID": "",
                    "Server": true,
                    "Revision": "autopilot",
                    "Version": "1.15.0",
                },
                "Member": {
                    "Name": c.node,
                    "Addr": c.advertise.ip().to_string(),
                    "Port": c.advertise.port(),
                    "Tags": {"dc": c.datacenter, "role": "consul"},
                    "Status": 1,
                },
                "Meta": {},
                "Stats": {},
            }))
        }
        ["agent", "services"] => {
            http::need_method(&req, &[Method::GET])?;
            req.query.only(&[])?;
            let out: BTreeMap<String, Value> = st
                .agent
                .lock()
                .values()
                .map(|s| (s.id.clone(), agent_service(st, s)))
                .collect();
            http::json(&out)
        }
        ["agent", "service", id] if req.method == Method::GET => {
            req.query.only(&[])?;
            match st.agent.service(id) {
                Some(s) => http::json(&agent_service(st, &s)),
                None => Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown service ID: {id}"),
                )),
            }
        }
        ["agent", "checks"] => {
            http::need_method(&req, &[Method::GET])?;
            req.query.only(&[])?;
            let mut out = BTreeMap::new();
            for s in st.agent.lock().values() {
                for c in &s.checks {
                    out.insert(c.id.clone(), check_json(&st.cfg.node, s, c));
                }
            }
            http::json(&out)
        }
        ["agent", "service", "register"] => {
            http::need_method(&req, &[Method::PUT])?;
            req.query.only(&["replace-existing-checks"])?;
            let body = http::json_body(st, req.take_body()).await?;
            register(st, &body).await?;
            Ok(http::reply(empty(), None))
        }
        ["agent", "service", "deregister", id] => {
            // GET too: see `http::legacy_write`.
            http::need_method(&req, &[Method::PUT, Method::GET])?;
            req.query.only(&[])?;
            if st.agent.service(id).is_none() {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                    ),
                ));
            }
            deregister(st, id).await?;
            Ok(http::reply(empty(), None))
        }
        ["agent", "check", op @ ("pass" | "warn" | "fail"), id] => {
            // GET too: see `http::legacy_write`.
            http::need_method(&req, &[Method::PUT, Method::GET])?;
            req.query.only(&["note"])?;
            let status = match op {
                "pass" => Status::Passing,
                "warn" => Status::Warning,
                _ => Status::Critical,
            };
            let note = req.query.get("note").unwrap_or("").to_string();
            update(st, id, status, note).await?;
            Ok(http::reply(empty(), None))
        }
        ["agent", "check", "update", id] => {
            http::need_method(&req, &[Method::PUT])?;
            req.query.only(&[])?;
            let id = id.to_string();
            let body = http::json_body(st, req.take_body()).await?;
            let status = http::str_field(&body, "Status")?
                .and_then(Status::parse)
                .filter(|s| *s != Status::Maintenance)
                .ok_or_else(|| HttpError::bad("Invalid check status"))?;
            let output = http::str_field(&body, "Output")?.unwrap_or("").to_string();
            update(st, &id, status, output).await?;
            Ok(http::reply(empty(), None))
        }
        _ => Err(http::unsupported(&req)),
    }
}

fn empty() -> crate::view::Rendered {
    crate::view::Rendered {
        status: StatusCode::OK,
        body: Default::default(),
        content_type: "text/plain; charset=utf-8",
        tag: 0,
    }
}

fn agent_service(st: &State, s: &Service) -> Value {
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false,
        "Datacenter": st.cfg.datacenter,
    })
}

/// A service check as Consul answers it.
pub fn check_json(node: &str, s: &Service, c: &Check) -> Value {
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "Type": "ttl",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

/// Reads a service definition (Consul's `/v1/agent/service/register` body).
fn parse_service(st: &State, body: &Value) -> Result<Service, HttpError> {
    let name = http::str_field(body, "Name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| HttpError::bad("Missing service name"))?
        .to_string();
    let id = http::str_field(body, "ID")?
        .filter(|n| !n.is_empty())
        .unwrap_or(&name)
        .to_string();
    for (what, v) in [("name", &name), ("ID", &id)] {
        if v.len() > 256 || v.chars().any(|c| c.is_control() || c == '/') {
            return Err(HttpError::bad(format!(
                "invalid service {what} {v:?}: at most 256 printable characters, no '/'"
            )));
        }
    }
    if let Some(k) = http::str_field(body, "Kind")?
        && !k.is_empty()
        && k != "typical"
    {
        return Err(HttpError::bad(format!(
            "service kind {k:?} is not supported (see docs/consul-api.md)"
        )));
    }
    for unsupported in ["Connect", "Proxy", "SidecarService"] {
        if http::field(body, unsupported).is_some() {
            return Err(HttpError::bad(format!(
                "{unsupported} is not supported (see docs/consul-api.md)"
            )));
        }
    }
    let tags: Vec<String> = match http::field(body, "Tags") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_TAGS => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| HttpError::bad("Request decode failed: Tags must be strings"))?,
        Some(_) => {
            return Err(HttpError::bad(format!(
                "Tags must be an array of at most {MAX_TAGS} strings"
            )));
        }
    };
    let address = http::str_field(body, "Address")?
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| advertise_ip(st));
    let port = match http::field(body, "Port") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| HttpError::bad("Request decode failed: Port must be 0-65535"))?,
    };
    let meta = http::field(body, "Meta").cloned().unwrap_or(json!({}));
    let mut defs: Vec<&Value> = Vec::new();
    if let Some(c) = http::field(body, "Check") {
        defs.push(c);
    }
    match http::field(body, "Checks") {
        None => {}
        Some(Value::Array(a)) => defs.extend(a.iter()),
        Some(_) => return Err(HttpError::bad("Checks must be an array")),
    }
    if defs.len() > MAX_CHECKS {
        return Err(HttpError::bad(format!("more than {MAX_CHECKS} checks")));
    }
    let many = defs.len() > 1;
    let mut checks = Vec::new();
    for (i, c) in defs.iter().enumerate() {
        for kind in [
            "HTTP",
            "TCP",
            "Args",
            "Script",
            "GRPC",
            "DockerContainerID",
            "AliasService",
            "H2PING",
            "UDP",
            "OSService",
        ] {
            if http::field(c, kind).is_some() {
                return Err(HttpError::bad(format!(
                    "{kind} checks are not supported: only TTL checks (see docs/consul-api.md)"
                )));
            }
        }
        let ttl = http::duration_field(c, "TTL")?
            .filter(|t| !t.is_zero())
            .ok_or_else(|| HttpError::bad("a check needs a TTL: only TTL checks are supported"))?;
        let n = i.saturating_add(1);
        let cid = http::str_field(c, "CheckID")?
            .or(http::str_field(c, "ID")?)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                if many {
                    format!("service:{id}:{n}")
                } else {
                    format!("service:{id}")
                }
            });
        let cname = http::str_field(c, "Name")?
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("Service '{name}' check"));
        let status = match http::str_field(c, "Status")? {
            None | Some("") => Status::Critical,
            Some(s) => Status::parse(s)
                .filter(|s| *s != Status::Maintenance)
                .ok_or_else(|| HttpError::bad(format!("Invalid check status {s:?}")))?,
        };
        let deregister_after =
            http::duration_field(c, "DeregisterCriticalServiceAfter")?.filter(|d| !d.is_zero());
        checks.push(Check {
            id: cid,
            name: cname,
            ttl,
            status,
            output: String::new(),
            notes: http::str_field(c, "Notes")?.unwrap_or("").to_string(),
            expires: Instant::now().checked_add(ttl).unwrap_or_else(Instant::now),
            deregister_after,
            critical_since: None,
        });
    }
    Ok(Service {
        id,
        name,
        tags,
        address,
        port,
        meta,
        checks,
        written: None,
    })
}

fn advertise_ip(st: &State) -> String {
    let ip = st.cfg.advertise.ip();
    if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        ip.to_string()
    }
}

async fn register(st: &State, body: &Value) -> Result<(), HttpError> {
    let mut svc = parse_service(st, body)?;
    {
        let services = st.agent.lock();
        if !services.contains_key(&svc.id) && services.len() >= MAX_SERVICES {
            return Err(HttpError::internal(format!(
                "more than {MAX_SERVICES} services registered here"
            )));
        }
        // A check registered again keeps its state, as Consul's agent does.
        if let Some(old) = services.get(&svc.id) {
            for c in &mut svc.checks {
                if let Some(o) = old.checks.iter().find(|o| o.id == c.id) {
                    c.status = o.status;
                    c.output = o.output.clone();
                    c.expires = o.expires;
                    c.critical_since = o.critical_since;
                }
            }
        }
    }
    st.call(st.cat.register(&svc.registration(st))).await?;
    svc.written = Some(svc.status());
    let def = serde_json::to_string(body)
        .map_err(|e| HttpError::internal(format!("cannot encode a service: {e}")))?;
    st.call(st.cat.kv_put(&def_key(st, &svc.id), &def)).await?;
    st.agent.lock().insert(svc.id.clone(), svc);
    st.views.wrote();
    Ok(())
}

async fn deregister(st: &State, id: &str) -> Result<(), HttpError> {
    st.call(st.cat.deregister(id)).await?;
    st.call(st.cat.kv_delete(&def_key(st, id))).await?;
    st.agent.lock().remove(id);
    st.views.wrote();
    Ok(())
}

async fn update(st: &State, id: &str, status: Status, output: String) -> Result<(), HttpError> {
    let changed = {
        let mut services = st.agent.lock();
        let Some(svc) = services
            .values_mut()
            .find(|s| s.checks.iter().any(|c| c.id == id))
        else {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
                ),
            ));
        };
        for c in svc.checks.iter_mut().filter(|c| c.id == id) {
            if status != Status::Critical {
                c.critical_since = None;
            }
            c.status = status;
            c.output = output.chars().take(4096).collect();
            c.expires = Instant::now()
                .checked_add(c.ttl)
                .unwrap_or_else(Instant::now);
        }
        st.views.wrote();
        svc.written != Some(svc.status())
    };
    if changed {
        sync_status(st, id).await?;
    }
    Ok(())
}

/// Writes the aggregate status of the service holding check `check_id` (or
/// of service `check_id` itself) to the catalog, registering it again if
/// its entry is gone.
async fn sync_status(st: &State, check_or_service: &str) -> Result<(), HttpError> {
    let svc = {
        let services = st.agent.lock();
        services
            .values()
            .find(|s| s.id == check_or_service || s.checks.iter().any(|c| c.id == check_or_service))
            .cloned()
    };
    let Some(svc) = svc else { return Ok(()) };
    let status = svc.status();
    if !st.call(st.cat.set_status(&svc.id, status)).await? {
        st.call(st.cat.register(&svc.registration(st))).await?;
    }
    if let Some(s) = st.agent.lock().get_mut(&svc.id) {
        s.written = Some(status);
    }
    st.views.wrote();
    Ok(())
}

/// Turns lapsed TTL checks critical, and removes services critical for
/// longer than their `DeregisterCriticalServiceAfter`.
pub async fn check_ttls(st: &State) {
    let now = Instant::now();
    let mut to_sync = Vec::new();
    let mut to_remove = Vec::new();
    {
        let mut services = st.agent.lock();
        for s in services.values_mut() {
            for c in s.checks.iter_mut() {
                if c.status != Status::Critical && c.expires <= now {
                    c.status = Status::Critical;
                    c.output = format!("TTL expired (last update more than {:?} ago)", c.ttl);
                }
            }
            let mut reap = false;
            for c in s.checks.iter_mut() {
                if c.status != Status::Critical {
                    c.critical_since = None;
                    continue;
                }
                let since = *c.critical_since.get_or_insert(now);
                if c.deregister_after
                    .is_some_and(|after| now.duration_since(since) >= after)
                {
                    reap = true;
                }
            }
            if reap {
                to_remove.push(s.id.clone());
                continue;
            }
            let status = s.status();
            if s.written != Some(status) {
                to_sync.push(s.id.clone());
            }
        }
    }
    for id in to_sync {
        if let Err(e) = sync_status(st, &id).await {
            tracing::warn!("consul-api: cannot update the status of {id}: {e}");
        }
    }
    for id in to_remove {
        tracing::info!(
            "consul-api: deregistering {id}: critical longer than DeregisterCriticalServiceAfter"
        );
        if let Err(e) = deregister(st, &id).await {
            tracing::warn!("consul-api: cannot deregister {id}: {e}");
        }
    }
}

/// Keeps the entries registered here alive; registers them again if the
/// catalog lost them (an expiry while this server could not reach it).
pub async fn keep_alive(st: &State) {
    let n = st.agent.lock().len();
    if n == 0 {
        return;
    }
    match st.call(st.cat.keep_alive()).await {
        Ok(refreshed) if refreshed >= n => {}
        Ok(_) => {
            let all: Vec<Service> = st.agent.lock().values().cloned().collect();
            for s in all {
                if let Err(e) = st.call(st.cat.register(&s.registration(st))).await {
                    tracing::warn!("consul-api: cannot register {} again: {e}", s.id);
                }
            }
            st.views.wrote();
        }
        Err(e) => tracing::warn!("consul-api: keep-alive failed: {e}"),
    }
}

/// Registers the services stored by an earlier run on this node again,
/// their checks critical until passed (Consul's default for TTL checks).
pub async fn restore(st: &State) -> Result<(), HttpError> {
    let prefix = format!("{PREFIX}agent/{}/", st.cfg.node);
    let defs = st.call(st.cat.kv_list(&prefix)).await?;
    for (k, raw) in defs.into_iter().take(MAX_SERVICES) {
        let parsed = serde_json::from_str::<Value>(&raw)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_service(st, &v).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut svc) => {
                for c in svc.checks.iter_mut() {
                    c.status = Status::Critical;
                }
                st.call(st.cat.register(&svc.registration(st))).await?;
                svc.written = Some(svc.status());
                st.agent.lock().insert(svc.id.clone(), svc);
            }
            Err(e) => tracing::warn!("consul-api: ignoring the stored service {k}: {e}"),
        }
    }
    Ok(())
}
