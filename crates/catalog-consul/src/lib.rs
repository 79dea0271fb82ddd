//! The Consul catalog backend: entries as agent services with a TTL check, locks and election seats as kv keys acquired by sessions, and a change stream from blocking queries, all through Consul's HTTP API.
//!
//! Layout (see docs/consul-backend.md): an entry is the service `ID` with
//! the check `service:<ID>` (TTL = the entry's TTL,
//! `DeregisterCriticalServiceAfter` = its own or its TTL); keys live under
//! `<prefix>/kv/`, locks under `<prefix>/locks/` (acquired by the agent's
//! session), election seats under `<prefix>/elections/` (acquired by one
//! session per seat; the value carries the candidate and the wall-clock
//! instant the seat lapses unless renewed, since Consul's session TTLs are
//! 10 s at least), the term being the seat key's `LockIndex`; an entry bound
//! to a seat has its binding under `<prefix>/bound/<ID>`.

mod http;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, ServiceSummary, Status,
    check_key, now_ms, rfc3339_ms,
};
use base64::Engine as _;
use hyper::Method;
use serde::Deserialize;
use tokio::sync::{Mutex, watch};

use crate::http::{Answer, Http, key_path, segment};

/// The agent session's TTL when the URL names none: Consul's minimum.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Consul refuses session TTLs below this.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// The deadline of one ordinary request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one blocking query of the change stream waits on the server.
const BLOCKING_WAIT: Duration = Duration::from_secs(30);
/// How long opening waits for the change stream's first answers.
const PRIME_WAIT: Duration = Duration::from_secs(2);
/// Most services listed by `services()`.
const MAX_SERVICES: usize = 10_000;
/// Meta keys the backend writes on its services.
const META_REGISTERED: &str = "autopilot_registered_ms";
const META_STATUS: &str = "autopilot_status";

/// How to reach Consul and name things there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulOptions {
    /// `host:port` of the HTTP API.
    pub address: String,
    /// Prefix of the backend's kv keys (kv, locks, elections), no slashes at the ends.
    pub prefix: String,
    /// The agent session's TTL (locks); Consul invalidates it between one and two TTLs after the last renewal.
    pub session_ttl: Duration,
    /// Sent as `X-Consul-Token`.
    pub token: Option<String>,
    pub request_timeout: Duration,
}

impl ConsulOptions {
    /// Parses what follows `consul://`: `host:port[/prefix][?ttl=10s]`.
    pub fn parse(rest: &str) -> Result<ConsulOptions, CatalogError> {
        let url = format!("consul://{rest}");
        let bad = |message: String| CatalogError::BadUrl {
            url: url.clone(),
            message,
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (address, prefix) = path.split_once('/').unwrap_or((path, ""));
        if address.is_empty() || !address.contains(':') {
            return Err(bad(
                "expected consul://host:port[/prefix][?ttl=10s]".to_string()
            ));
        }
        if address.contains('@') {
            return Err(bad(
                "credentials do not belong in the URL: use the consul block's token".to_string(),
            ));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            "autopilot".to_string()
        } else {
            prefix.to_string()
        };
        check_key(&url, &prefix).map_err(|e| bad(e.to_string()))?;
        let mut session_ttl = DEFAULT_SESSION_TTL;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ttl", v)) => {
                    session_ttl = parse_duration(v)
                        .filter(|d| *d >= MIN_SESSION_TTL)
                        .ok_or_else(|| {
                            bad(format!(
                                "ttl={v}: expected a duration of at least 10s (Consul's minimum session TTL), such as 15s"
                            ))
                        })?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {pair:?}: only ttl is known"
                    )));
                }
            }
        }
        Ok(ConsulOptions {
            address: address.to_string(),
            prefix,
            session_ttl,
            token: None,
            request_timeout: REQUEST_TIMEOUT,
        })
    }
}

/// `10s`, `1500ms`, `2m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// A duration as Consul reads it (Go's `time.ParseDuration`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

#[derive(Debug, Clone)]
struct Owned {
    reg: Registration,
    registered_ms: u64,
}

#[derive(Debug, Clone)]
struct SeatHeld {
    session: String,
    term: u64,
    /// The seat session's TTL, and when it was last renewed.
    session_ttl: Duration,
    renewed: Instant,
}

/// What a seat key holds.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct SeatValue {
    id: String,
    address: String,
    port: u16,
    /// When the seat lapses unless renewed (ms since the epoch); 0: never.
    #[serde(default)]
    expires_ms: u64,
}

impl SeatValue {
    fn lapsed(&self, now: u64) -> bool {
        self.expires_ms != 0 && now > self.expires_ms
    }
}

/// What `<prefix>/bound/<ID>` holds: the seat an entry is bound to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
struct Binding {
    election: String,
    term: u64,
}

#[derive(Default)]
struct State {
    /// The agent session (locks), created on first need.
    session: Option<String>,
    renewed: Option<Instant>,
    owned: BTreeMap<String, Owned>,
    locks: BTreeSet<String>,
    seats: BTreeMap<String, SeatHeld>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl KvEntry {
    fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node", default)]
    node: Option<NodeJson>,
    #[serde(rename = "Service")]
    service: ServiceJson,
    #[serde(rename = "Checks", default)]
    checks: Option<Vec<CheckJson>>,
}

#[derive(Debug, Deserialize)]
struct NodeJson {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct ServiceJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service")]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct CheckJson {
    #[serde(rename = "CheckID", default)]
    check_id: String,
    #[serde(rename = "Status", default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// The backend: one agent's view of a Consul server.
pub struct ConsulCatalog {
    http: Http,
    prefix: String,
    owner: String,
    session_ttl: Duration,
    state: Mutex<State>,
    /// The keep-alive interval in ms (a third of the shortest TTL), read without the lock.
    keep_alive_ms: AtomicU64,
    changes: Arc<watch::Sender<u64>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ConsulCatalog {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

fn check_id(id: &str) -> String {
    format!("service:{id}")
}

fn verb(s: Status) -> &'static str {
    match s {
        Status::Passing => "pass",
        Status::Warning => "warn",
        Status::Critical | Status::Maintenance => "fail",
    }
}

fn check_status(s: Status) -> &'static str {
    match s {
        Status::Passing => "passing",
        Status::Warning => "warning",
        Status::Critical | Status::Maintenance => "critical",
    }
}

/// Whether a check update failed because the check (so the service) is gone.
fn check_gone(a: &Answer) -> bool {
    if a.status == 404 {
        return true;
    }
    let t = a.text().to_ascii_lowercase();
    a.status == 500
        && (t.contains("does not have associated ttl")
            || t.contains("unknown check")
            || t.contains("not found"))
}

fn is_true(a: &Answer) -> bool {
    String::from_utf8_lossy(&a.body).trim() == "true"
}

impl ConsulCatalog {
    /// Opens the backend; nothing is sent until it is used, so a server that
    /// is down at start is retried like any outage. Starts the change stream.
    pub async fn connect(opts: ConsulOptions, owner: &str) -> Result<ConsulCatalog, CatalogError> {
        let url = format!("consul://{}/{}", opts.address, opts.prefix);
        let http = Http::new(&opts.address, opts.token, opts.request_timeout, &url);
        let (tx, _) = watch::channel(0u64);
        let changes = Arc::new(tx);
        let (p1, r1) = tokio::sync::oneshot::channel();
        let (p2, r2) = tokio::sync::oneshot::channel();
        let watchers = vec![
            tokio::spawn(watch_loop(
                http.clone(),
                "/v1/health/state/any".to_string(),
                changes.clone(),
                p1,
            )),
            tokio::spawn(watch_loop(
                http.clone(),
                format!("/v1/kv/{}/?keys", key_path(&opts.prefix)),
                changes.clone(),
                p2,
            )),
        ];
        // The first index of each stream, so a change made right after
        // opening is told; a server that is down is not waited for long.
        let _ = tokio::time::timeout(PRIME_WAIT, async {
            let _ = r1.await;
            let _ = r2.await;
        })
        .await;
        Ok(ConsulCatalog {
            http,
            prefix: opts.prefix,
            owner: owner.to_string(),
            session_ttl: opts.session_ttl,
            state: Mutex::new(State::default()),
            keep_alive_ms: AtomicU64::new(millis(opts.session_ttl / 3)),
            changes,
            watchers,
        })
    }

    fn kv_path(&self, key: &str) -> String {
        format!("/v1/kv/{}/kv/{}", key_path(&self.prefix), key_path(key))
    }

    fn lock_path(&self, name: &str) -> String {
        format!("/v1/kv/{}/locks/{}", key_path(&self.prefix), key_path(name))
    }

    fn bound_path(&self, id: &str) -> String {
        format!("/v1/kv/{}/bound/{}", key_path(&self.prefix), segment(id))
    }

    /// Every entry binding: entry ID -> its seat.
    async fn bindings(&self) -> Result<BTreeMap<String, Binding>, CatalogError> {
        let path = format!("/v1/kv/{}/bound/?recurse", key_path(&self.prefix));
        let a = self.http.expect(Method::GET, &path, None, true).await?;
        if a.status == 404 {
            return Ok(BTreeMap::new());
        }
        let entries: Vec<KvEntry> = self.parse(&format!("GET {path}"), &a)?;
        let strip = format!("{}/bound/", self.prefix);
        let mut out = BTreeMap::new();
        for e in &entries {
            let Some(id) = e.key.strip_prefix(&strip) else {
                continue;
            };
            // Unreadable bindings are skipped: a stray key never hides an entry.
            if let Ok(b) = serde_json::from_str::<Binding>(&self.decode(e)?) {
                out.insert(id.to_string(), b);
            }
        }
        Ok(out)
    }

    fn election_path(&self, name: &str) -> String {
        format!(
            "/v1/kv/{}/elections/{}",
            key_path(&self.prefix),
            key_path(name)
        )
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        a: &Answer,
    ) -> Result<T, CatalogError> {
        serde_json::from_slice(&a.body).map_err(|e| {
            self.http
                .unavailable(format!("{what}: unexpected answer: {e}"))
        })
    }

    /// Recomputes the keep-alive interval: a third of the shortest of the
    /// session TTL and the entries' TTLs.
    fn update_interval(&self, st: &State) {
        let shortest = st
            .owned
            .values()
            .map(|o| o.reg.ttl)
            .chain([self.session_ttl])
            .min()
            .unwrap_or(self.session_ttl);
        let every = (shortest / 3).max(Duration::from_millis(100));
        self.keep_alive_ms.store(millis(every), Ordering::Relaxed);
    }

    // ---- kv ------------------------------------------------------------

    async fn read_kv(&self, path: &str) -> Result<Option<KvEntry>, CatalogError> {
        let a = self.http.expect(Method::GET, path, None, true).await?;
        if a.status == 404 {
            return Ok(None);
        }
        let mut list: Vec<KvEntry> = self.parse(&format!("GET {path}"), &a)?;
        Ok(list.pop())
    }

    fn decode(&self, e: &KvEntry) -> Result<String, CatalogError> {
        let Some(v) = &e.value else {
            return Ok(String::new());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|err| {
                self.http
                    .invalid(format!("key {}: value is not base64: {err}", e.key))
            })?;
        String::from_utf8(bytes).map_err(|_| {
            self.http
                .invalid(format!("key {}: value is not UTF-8 text", e.key))
        })
    }

    async fn put_bool(&self, path: &str, body: Vec<u8>) -> Result<bool, CatalogError> {
        let a = self
            .http
            .expect(Method::PUT, path, Some(body), false)
            .await?;
        Ok(is_true(&a))
    }

    // ---- sessions ----------------------------------------------------------

    async fn create_session(&self, name: &str, ttl: Duration) -> Result<String, CatalogError> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": go_duration(ttl),
            // A lost holder's lock is free at once: fencing terms, not a
            // delay, keep a late writer out.
            "LockDelay": "0s",
            "Behavior": "release",
        });
        let a = self
            .http
            .expect(
                Method::PUT,
                "/v1/session/create",
                Some(body.to_string().into_bytes()),
                false,
            )
            .await?;
        let created: SessionCreated = self.parse("PUT /v1/session/create", &a)?;
        Ok(created.id)
    }

    /// Renews a session: `Ok(false)` when Consul no longer knows it.
    async fn renew_session(&self, id: &str) -> Result<bool, CatalogError> {
        let a = self
            .http
            .expect(
                Method::PUT,
                &format!("/v1/session/renew/{}", segment(id)),
                None,
                true,
            )
            .await?;
        Ok(a.status == 200)
    }

    async fn destroy_session(&self, id: &str) -> Result<(), CatalogError> {
        self.http
            .expect(
                Method::PUT,
                &format!("/v1/session/destroy/{}", segment(id)),
                None,
                true,
            )
            .await?;
        Ok(())
    }

    /// The agent session, renewed when half its TTL has passed, replaced
    /// (with every held lock taken again) when Consul has lost it.
    async fn ensure_session(&self, st: &mut State) -> Result<String, CatalogError> {
        if let (Some(id), Some(at)) = (&st.session, st.renewed) {
            if at.elapsed() < self.session_ttl / 2 {
                return Ok(id.clone());
            }
            let id = id.clone();
            if self.renew_session(&id).await? {
                st.renewed = Some(Instant::now());
                return Ok(id);
            }
            tracing::warn!(catalog = %self.http.url, "the agent session was lost; replacing it");
        }
        self.new_session(st).await
    }

    async fn new_session(&self, st: &mut State) -> Result<String, CatalogError> {
        st.session = None;
        let id = self
            .create_session(&format!("autopilot {}", self.owner), self.session_ttl)
            .await?;
        st.session = Some(id.clone());
        st.renewed = Some(Instant::now());
        // Locks held on the lost session are taken again if still free.
        let held: Vec<String> = st.locks.iter().cloned().collect();
        for name in held {
            if !self
                .put_bool(
                    &format!("{}?acquire={}", self.lock_path(&name), segment(&id)),
                    Vec::new(),
                )
                .await?
            {
                tracing::warn!(catalog = %self.http.url, lock = %name, "lock lost with the old session");
                st.locks.remove(&name);
            }
        }
        Ok(id)
    }

    /// Tries to acquire a lock key with the agent session, once; replaces a
    /// session Consul says is invalid and tries again.
    async fn acquire_lock(&self, name: &str) -> Result<bool, CatalogError> {
        let mut st = self.state.lock().await;
        for attempt in 0..2 {
            let sid = self.ensure_session(&mut st).await?;
            let path = format!("{}?acquire={}", self.lock_path(name), segment(&sid));
            let a = self
                .http
                .call(Method::PUT, &path, Some(Vec::new()), self.http.timeout)
                .await?;
            match a.status {
                200 => {
                    let got = is_true(&a);
                    if got {
                        st.locks.insert(name.to_string());
                    }
                    return Ok(got);
                }
                // Consul answers 500 "invalid session" for a session it lost.
                500 if attempt == 0 && a.text().to_ascii_lowercase().contains("session") => {
                    st.session = None;
                }
                s => return Err(self.http.status_error(&format!("PUT {path}"), s, &a)),
            }
        }
        Err(self
            .http
            .unavailable(format!("lock {name}: the session keeps being lost")))
    }

    // ---- seats -------------------------------------------------------------

    /// An election's seat key as it is, lapsed or not (`None`: nobody holds it).
    async fn seat_raw(&self, election: &str) -> Result<Option<(KvEntry, SeatValue)>, CatalogError> {
        let Some(e) = self.read_kv(&self.election_path(election)).await? else {
            return Ok(None);
        };
        if e.holder().is_none() {
            return Ok(None);
        }
        let text = self.decode(&e)?;
        let v: SeatValue = serde_json::from_str(&text).map_err(|err| {
            self.http.invalid(format!(
                "election {election}: the seat holds no candidate: {err}"
            ))
        })?;
        Ok(Some((e, v)))
    }

    /// The live seat of an election: held and not lapsed.
    async fn seat(&self, election: &str) -> Result<Option<(KvEntry, SeatValue)>, CatalogError> {
        let now = now_ms();
        Ok(self
            .seat_raw(election)
            .await?
            .filter(|(_, v)| !v.lapsed(now)))
    }

    /// Whether this agent holds `election`'s seat at `term` right now.
    async fn holds_seat(
        &self,
        st: &State,
        election: &str,
        term: u64,
    ) -> Result<bool, CatalogError> {
        let Some(held) = st.seats.get(election) else {
            return Ok(false);
        };
        if held.term != term {
            return Ok(false);
        }
        Ok(match self.seat(election).await? {
            Some((e, _)) => e.holder() == Some(held.session.as_str()) && e.lock_index == term,
            None => false,
        })
    }

    /// Removes this agent's entries bound to `election` (server and memory).
    async fn drop_bound(&self, st: &mut State, election: &str) -> Result<(), CatalogError> {
        let bound: Vec<String> = st
            .owned
            .values()
            .filter(|o| o.reg.seat.as_ref().is_some_and(|s| s.election == election))
            .map(|o| o.reg.id.clone())
            .collect();
        for id in bound {
            self.deregister_remote(&id, true).await?;
            st.owned.remove(&id);
        }
        self.update_interval(st);
        Ok(())
    }

    // ---- entries -------------------------------------------------------------

    async fn register_remote(
        &self,
        reg: &Registration,
        registered_ms: u64,
    ) -> Result<(), CatalogError> {
        let mut meta = serde_json::Map::new();
        meta.insert(META_REGISTERED.into(), registered_ms.to_string().into());
        if reg.status == Status::Maintenance {
            meta.insert(META_STATUS.into(), "maintenance".into());
        }
        let body = serde_json::json!({
            "ID": reg.id,
            "Name": reg.name,
            "Tags": reg.tags,
            "Address": reg.address,
            "Port": reg.port,
            "Meta": meta,
            "Check": {
                "CheckID": check_id(&reg.id),
                "Name": format!("autopilot heartbeat of {}", reg.id),
                "TTL": go_duration(reg.ttl),
                "Status": check_status(reg.status),
                "DeregisterCriticalServiceAfter":
                    go_duration(reg.deregister_critical_after.unwrap_or(reg.ttl)),
            },
        });
        self.http
            .expect(
                Method::PUT,
                "/v1/agent/service/register",
                Some(body.to_string().into_bytes()),
                false,
            )
            .await?;
        Ok(())
    }

    /// Removes a service, then its seat binding if it had one.
    async fn deregister_remote(&self, id: &str, bound: bool) -> Result<(), CatalogError> {
        self.http
            .expect(
                Method::PUT,
                &format!("/v1/agent/service/deregister/{}", segment(id)),
                None,
                true,
            )
            .await?;
        if bound {
            self.http
                .expect(Method::DELETE, &self.bound_path(id), None, true)
                .await?;
        }
        Ok(())
    }

    /// Writes (before the service) or removes (after it) an entry's binding.
    async fn write_binding(&self, reg: &Registration) -> Result<(), CatalogError> {
        if let Some(seat) = &reg.seat {
            let b = Binding {
                election: seat.election.clone(),
                term: seat.term,
            };
            let body = serde_json::to_vec(&b)
                .map_err(|e| self.http.invalid(format!("entry {}: {e}", reg.id)))?;
            self.put_bool(&self.bound_path(&reg.id), body).await?;
        }
        Ok(())
    }

    /// Sends an entry's status as its TTL check update: `Ok(false)` if the
    /// check (so the service) is gone.
    async fn update_check(&self, id: &str, status: Status) -> Result<bool, CatalogError> {
        let path = format!(
            "/v1/agent/check/{}/{}",
            verb(status),
            segment(&check_id(id))
        );
        let a = self
            .http
            .call(Method::PUT, &path, Some(Vec::new()), self.http.timeout)
            .await?;
        if a.status == 200 {
            return Ok(true);
        }
        if check_gone(&a) {
            return Ok(false);
        }
        Err(self.http.status_error(&format!("PUT {path}"), a.status, &a))
    }

    async fn read_instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError> {
        let path = format!("/v1/health/service/{}", segment(service));
        let a = self.http.expect(Method::GET, &path, None, true).await?;
        if a.status == 404 {
            return Ok(Vec::new());
        }
        let entries: Vec<HealthEntry> = self.parse(&format!("GET {path}"), &a)?;
        let bindings = if entries.is_empty() {
            BTreeMap::new()
        } else {
            self.bindings().await?
        };
        let mut seats: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let meta = e.service.meta.unwrap_or_default();
            // A seat-bound entry is listed only while its seat is held at its term.
            if let Some(b) = bindings.get(&e.service.id) {
                let current = match seats.get(&b.election) {
                    Some(t) => *t,
                    None => {
                        let t = self.seat(&b.election).await?.map(|(k, _)| k.lock_index);
                        seats.insert(b.election.clone(), t);
                        t
                    }
                };
                if current != Some(b.term) {
                    continue;
                }
            }
            let checks = e.checks.unwrap_or_default();
            let worst = checks
                .iter()
                .map(|c| match c.status.as_str() {
                    "passing" => 0,
                    "warning" => 1,
                    _ => 2,
                })
                .max()
                .unwrap_or(0);
            let maintenance = checks.iter().any(|c| {
                c.check_id.starts_with("_service_maintenance")
                    || c.check_id.starts_with("_node_maintenance")
            }) || (worst == 2
                && meta.get(META_STATUS).is_some_and(|s| s == "maintenance"));
            let status = if maintenance {
                Status::Maintenance
            } else {
                [Status::Passing, Status::Warning, Status::Critical][worst]
            };
            let address = if e.service.address.is_empty() {
                e.node.map(|n| n.address).unwrap_or_default()
            } else {
                e.service.address
            };
            let registered = meta
                .get(META_REGISTERED)
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(0);
            out.push(Instance {
                id: e.service.id,
                name: e.service.service,
                address,
                port: e.service.port,
                tags: e.service.tags.unwrap_or_default(),
                status,
                last_heartbeat: rfc3339_ms(registered),
            });
        }
        out.sort();
        Ok(out)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One blocking-query loop of the change stream: bumps the counter whenever
/// the answer's index moves (either way), backs off with jitter on failure.
async fn watch_loop(
    http: Http,
    path: String,
    changes: Arc<watch::Sender<u64>>,
    primed: tokio::sync::oneshot::Sender<()>,
) {
    let mut primed = Some(primed);
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut index: u64 = 0;
    let mut backoff = Duration::from_millis(100);
    let mut outage = autopilot_catalog::Outage::default();
    loop {
        let (query, deadline) = if index == 0 {
            (path.clone(), http.timeout)
        } else {
            (
                format!("{path}{sep}index={index}&wait={}s", BLOCKING_WAIT.as_secs()),
                // Consul adds up to wait/16 of jitter.
                BLOCKING_WAIT + BLOCKING_WAIT / 16 + http.timeout,
            )
        };
        let started = Instant::now();
        match http.call(Method::GET, &query, None, deadline).await {
            Ok(a) if a.status == 200 || a.status == 404 => {
                outage.recovered(&http.url, "the change stream");
                backoff = Duration::from_millis(100);
                let new = a.index.unwrap_or(0);
                if new == 0 {
                    // No index: not a blocking-capable answer; poll slowly.
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                if new != index {
                    if index != 0 {
                        changes.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    // An index that went backwards restarts from 0 (Consul's rule).
                    index = if new < index { 0 } else { new };
                    if let Some(p) = primed.take() {
                        let _ = p.send(());
                    }
                } else if started.elapsed() < Duration::from_millis(50) {
                    // An early answer with nothing new: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(a) => {
                outage.failed(
                    &http.url,
                    "the change stream",
                    &format!("GET {path}: HTTP {}: {}", a.status, a.text()),
                );
                sleep_with_jitter(&mut backoff).await;
            }
            Err(e) => {
                outage.failed(&http.url, "the change stream", &e.to_string());
                // After an outage anything may have changed.
                index = 0;
                changes.send_modify(|n| *n = n.wrapping_add(1));
                sleep_with_jitter(&mut backoff).await;
            }
        }
    }
}

async fn sleep_with_jitter(backoff: &mut Duration) {
    let ms = millis(*backoff);
    let jitter = fastrand::u64(0..=ms / 2);
    tokio::time::sleep(Duration::from_millis(ms.saturating_add(jitter))).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

#[async_trait::async_trait]
impl Catalog for ConsulCatalog {
    fn url(&self) -> &str {
        &self.http.url
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        let mut st = self.state.lock().await;
        if let Some(seat) = &reg.seat
            && !self.holds_seat(&st, &seat.election, seat.term).await?
        {
            return Err(CatalogError::SeatLost {
                url: self.http.url.clone(),
                id: reg.id.clone(),
                election: seat.election.clone(),
                term: seat.term,
            });
        }
        let registered_ms = now_ms();
        self.write_binding(reg).await?;
        self.register_remote(reg, registered_ms).await?;
        let was_bound = st.owned.get(&reg.id).is_some_and(|o| o.reg.seat.is_some());
        if was_bound && reg.seat.is_none() {
            self.http
                .expect(Method::DELETE, &self.bound_path(&reg.id), None, true)
                .await?;
        }
        st.owned.insert(
            reg.id.clone(),
            Owned {
                reg: reg.clone(),
                registered_ms,
            },
        );
        self.update_interval(&st);
        Ok(())
    }

    async fn set_status(&self, id: &str, status: Status) -> Result<bool, CatalogError> {
        let mut st = self.state.lock().await;
        let Some(owned) = st.owned.get(id).cloned() else {
            return Ok(false);
        };
        let was = owned.reg.status;
        let ok = if (was == Status::Maintenance) != (status == Status::Maintenance) {
            // Maintenance is kept in the service's Meta: register again.
            let reg = Registration {
                status,
                ..owned.reg.clone()
            };
            self.register_remote(&reg, owned.registered_ms).await?;
            true
        } else {
            self.update_check(id, status).await?
        };
        if ok {
            if let Some(o) = st.owned.get_mut(id) {
                o.reg.status = status;
            }
        } else {
            st.owned.remove(id);
            self.update_interval(&st);
        }
        Ok(ok)
    }

    async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
        let mut st = self.state.lock().await;
        if let Some(o) = st.owned.get(id) {
            let bound = o.reg.seat.is_some();
            self.deregister_remote(id, bound).await?;
            st.owned.remove(id);
            self.update_interval(&st);
        }
        Ok(())
    }

    async fn keep_alive(&self) -> Result<usize, CatalogError> {
        let mut st = self.state.lock().await;
        if let Some(sid) = st.session.clone() {
            if self.renew_session(&sid).await? {
                st.renewed = Some(Instant::now());
            } else {
                tracing::warn!(catalog = %self.http.url, "the agent session was lost; replacing it");
                self.new_session(&mut st).await?;
            }
        }
        // Seat-bound entries whose seat is gone are removed, never refreshed.
        let mut seats: BTreeMap<(String, u64), bool> = BTreeMap::new();
        let entries: Vec<Owned> = st.owned.values().cloned().collect();
        let mut refreshed = 0usize;
        let mut restored = 0usize;
        for o in entries {
            if let Some(seat) = &o.reg.seat {
                let k = (seat.election.clone(), seat.term);
                let held = match seats.get(&k) {
                    Some(h) => *h,
                    None => {
                        let h = self.holds_seat(&st, &seat.election, seat.term).await?;
                        seats.insert(k, h);
                        h
                    }
                };
                if !held {
                    self.deregister_remote(&o.reg.id, true).await?;
                    st.owned.remove(&o.reg.id);
                    continue;
                }
            }
            if self.update_check(&o.reg.id, o.reg.status).await? {
                refreshed += 1;
                continue;
            }
            if matches!(o.reg.status, Status::Critical | Status::Maintenance) {
                // Reaped after DeregisterCriticalServiceAfter, as Consul does:
                // gone until registered again.
                st.owned.remove(&o.reg.id);
                continue;
            }
            // Consul lost it (a restarted or replaced server): restore it.
            self.write_binding(&o.reg).await?;
            self.register_remote(&o.reg, o.registered_ms).await?;
            refreshed += 1;
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(catalog = %self.http.url, entries = restored, "registrations restored");
        }
        self.update_interval(&st);
        Ok(refreshed)
    }

    fn keep_alive_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            self.keep_alive_ms.load(Ordering::Relaxed),
        ))
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError> {
        let a = self
            .http
            .expect(Method::GET, "/v1/catalog/services", None, false)
            .await?;
        let names: BTreeMap<String, serde_json::Value> =
            self.parse("GET /v1/catalog/services", &a)?;
        let mut out = Vec::new();
        for name in names.keys().take(MAX_SERVICES) {
            let list = self.read_instances(name).await?;
            if list.is_empty() {
                continue;
            }
            out.push(ServiceSummary {
                name: name.clone(),
                instances: list.len(),
                passing: list.iter().filter(|i| i.status == Status::Passing).count(),
            });
        }
        Ok(out)
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError> {
        self.read_instances(service).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn kv_get(&self, key: &str) -> Result<Option<String>, CatalogError> {
        check_key(&self.http.url, key)?;
        match self.read_kv(&self.kv_path(key)).await? {
            Some(e) => Ok(Some(self.decode(&e)?)),
            None => Ok(None),
        }
    }

    async fn kv_put(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        check_key(&self.http.url, key)?;
        if !self
            .put_bool(&self.kv_path(key), value.as_bytes().to_vec())
            .await?
        {
            return Err(self
                .http
                .unavailable(format!("key {key}: the write was refused")));
        }
        Ok(())
    }

    async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, CatalogError> {
        check_key(&self.http.url, key)?;
        let path = self.kv_path(key);
        let Some(expected) = expected else {
            return self
                .put_bool(&format!("{path}?cas=0"), value.as_bytes().to_vec())
                .await;
        };
        // Value-CAS onto index-CAS: read, compare, write at that index;
        // a write in between makes Consul refuse and we read again.
        for _ in 0..8 {
            let Some(e) = self.read_kv(&path).await? else {
                return Ok(false);
            };
            if self.decode(&e)? != expected {
                return Ok(false);
            }
            if self
                .put_bool(
                    &format!("{path}?cas={}", e.modify_index),
                    value.as_bytes().to_vec(),
                )
                .await?
            {
                return Ok(true);
            }
        }
        Err(self.http.unavailable(format!(
            "key {key}: it keeps changing under the compare-and-swap"
        )))
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, CatalogError> {
        check_key(&self.http.url, key)?;
        let path = self.kv_path(key);
        for _ in 0..8 {
            let Some(e) = self.read_kv(&path).await? else {
                return Ok(false);
            };
            let a = self
                .http
                .expect(
                    Method::DELETE,
                    &format!("{path}?cas={}", e.modify_index),
                    None,
                    false,
                )
                .await?;
            if is_true(&a) {
                return Ok(true);
            }
        }
        Err(self
            .http
            .unavailable(format!("key {key}: it keeps changing under the delete")))
    }

    async fn kv_delete_if(&self, key: &str, expected: &str) -> Result<bool, CatalogError> {
        check_key(&self.http.url, key)?;
        let path = self.kv_path(key);
        for _ in 0..8 {
            let Some(e) = self.read_kv(&path).await? else {
                return Ok(false);
            };
            if self.decode(&e)? != expected {
                return Ok(false);
            }
            let a = self
                .http
                .expect(
                    Method::DELETE,
                    &format!("{path}?cas={}", e.modify_index),
                    None,
                    false,
                )
                .await?;
            if is_true(&a) {
                return Ok(true);
            }
        }
        Err(self
            .http
            .unavailable(format!("key {key}: it keeps changing under the delete")))
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String)>, CatalogError> {
        if prefix.chars().any(|c| c.is_control()) || prefix.len() > 1024 {
            return Err(self.http.invalid(format!("invalid prefix {prefix:?}")));
        }
        let path = format!("{}?recurse", self.kv_path(prefix));
        let a = self.http.expect(Method::GET, &path, None, true).await?;
        if a.status == 404 {
            return Ok(Vec::new());
        }
        let entries: Vec<KvEntry> = self.parse(&format!("GET {path}"), &a)?;
        let strip = format!("{}/kv/", self.prefix);
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let Some(k) = e.key.strip_prefix(&strip) else {
                continue;
            };
            if k.starts_with(prefix) {
                out.push((k.to_string(), self.decode(e)?));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn lock(&self, name: &str) -> Result<(), CatalogError> {
        check_key(&self.http.url, name)?;
        let path = self.lock_path(name);
        loop {
            if self.acquire_lock(name).await? {
                return Ok(());
            }
            // Held: wait (a blocking query) for the key to change, at most
            // a third of the session TTL so the session is renewed meanwhile.
            let Some(e) = self.read_kv(&path).await? else {
                continue;
            };
            if e.holder().is_none() {
                continue;
            }
            let wait = (self.session_ttl / 3).max(Duration::from_millis(100));
            let q = format!(
                "{path}?index={}&wait={}ms",
                e.modify_index,
                wait.as_millis()
            );
            let a = self
                .http
                .call(Method::GET, &q, None, wait + wait / 16 + self.http.timeout)
                .await?;
            if !matches!(a.status, 200 | 404) {
                return Err(self.http.status_error(&format!("GET {q}"), a.status, &a));
            }
        }
    }

    async fn try_lock(&self, name: &str) -> Result<bool, CatalogError> {
        check_key(&self.http.url, name)?;
        self.acquire_lock(name).await
    }

    async fn unlock(&self, name: &str) -> Result<(), CatalogError> {
        check_key(&self.http.url, name)?;
        let mut st = self.state.lock().await;
        st.locks.remove(name);
        if let Some(sid) = st.session.clone() {
            self.put_bool(
                &format!("{}?release={}", self.lock_path(name), segment(&sid)),
                Vec::new(),
            )
            .await?;
        }
        Ok(())
    }

    async fn holds_lock(&self, name: &str) -> Result<bool, CatalogError> {
        check_key(&self.http.url, name)?;
        let sid = self.state.lock().await.session.clone();
        let Some(sid) = sid else {
            return Ok(false);
        };
        Ok(self
            .read_kv(&self.lock_path(name))
            .await?
            .is_some_and(|e| e.holder() == Some(sid.as_str())))
    }

    fn lock_ttl(&self) -> Duration {
        self.session_ttl
    }

    async fn campaign(
        &self,
        election: &str,
        me: &Candidate,
        ttl: Duration,
    ) -> Result<Option<u64>, CatalogError> {
        check_key(&self.http.url, election)?;
        let mut st = self.state.lock().await;
        let path = self.election_path(election);
        let value = |now: u64| {
            serde_json::to_vec(&SeatValue {
                id: me.id.clone(),
                address: me.address.clone(),
                port: me.port,
                expires_ms: now.saturating_add(millis(ttl)),
            })
            .map_err(|e| self.http.invalid(format!("election {election}: {e}")))
        };
        if let Some(mut held) = st.seats.get(election).cloned() {
            // Renewal: still ours at our term and not lapsed, then the
            // value is written again (same session: the term stays).
            let now = now_ms();
            let ours = self.seat(election).await?.is_some_and(|(e, _)| {
                e.holder() == Some(held.session.as_str()) && e.lock_index == held.term
            });
            let mut renewed = false;
            if ours {
                if held.renewed.elapsed() >= held.session_ttl / 2 {
                    if self.renew_session(&held.session).await? {
                        held.renewed = Instant::now();
                    } else {
                        held.term = 0;
                    }
                }
                if held.term != 0 {
                    renewed = self
                        .put_bool(
                            &format!("{path}?acquire={}", segment(&held.session)),
                            value(now)?,
                        )
                        .await
                        .unwrap_or(false);
                }
            }
            if renewed {
                let term = held.term;
                st.seats.insert(election.to_string(), held);
                return Ok(Some(term));
            }
            // Lost (lapsed, ended or taken): its bound entries go with it.
            st.seats.remove(election);
            self.drop_bound(&mut st, election).await?;
            let _ = self.destroy_session(&held.session).await;
        }
        if let Some((e, v)) = self.seat_raw(election).await? {
            if !v.lapsed(now_ms()) {
                return Ok(None);
            }
            // An abandoned seat: its holder stopped renewing. Ending its
            // session frees the key (the term moves on at the next acquire).
            if let Some(sid) = e.holder() {
                self.destroy_session(sid).await?;
            }
        }
        // Consul's session TTL is 10 s at least; the seat's own lapse time
        // (in the value) is what ends an abandoned seat sooner.
        let session_ttl = ttl.max(MIN_SESSION_TTL);
        let sid = self
            .create_session(&format!("autopilot seat {election} {}", me.id), session_ttl)
            .await?;
        let won = self
            .put_bool(
                &format!("{path}?acquire={}", segment(&sid)),
                value(now_ms())?,
            )
            .await;
        let won = match won {
            Ok(w) => w,
            Err(e) => {
                let _ = self.destroy_session(&sid).await;
                return Err(e);
            }
        };
        let term = if won {
            self.read_kv(&path)
                .await?
                .filter(|e| e.holder() == Some(sid.as_str()))
                .map(|e| e.lock_index)
        } else {
            None
        };
        match term {
            Some(term) => {
                st.seats.insert(
                    election.to_string(),
                    SeatHeld {
                        session: sid,
                        term,
                        session_ttl,
                        renewed: Instant::now(),
                    },
                );
                Ok(Some(term))
            }
            None => {
                self.destroy_session(&sid).await?;
                Ok(None)
            }
        }
    }

    async fn resign(&self, election: &str) -> Result<(), CatalogError> {
        check_key(&self.http.url, election)?;
        let mut st = self.state.lock().await;
        let Some(held) = st.seats.remove(election) else {
            return Ok(());
        };
        // The bound entries first: no reader sees them without their seat.
        self.drop_bound(&mut st, election).await?;
        self.put_bool(
            &format!(
                "{}?release={}",
                self.election_path(election),
                segment(&held.session)
            ),
            Vec::new(),
        )
        .await?;
        self.destroy_session(&held.session).await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>, CatalogError> {
        check_key(&self.http.url, election)?;
        Ok(self.seat(election).await?.map(|(e, v)| Leader {
            id: v.id,
            address: v.address,
            port: v.port,
            term: e.lock_index,
        }))
    }

    async fn end_seat(&self, election: &str, leader: &Leader) -> Result<bool, CatalogError> {
        check_key(&self.http.url, election)?;
        let Some((e, v)) = self.seat(election).await? else {
            return Ok(false);
        };
        if v.id != leader.id || e.lock_index != leader.term {
            return Ok(false);
        }
        let Some(sid) = e.holder().map(str::to_string) else {
            return Ok(false);
        };
        // Destroying the seat's session releases the key (Behavior release);
        // bound entries are no longer listed from that moment.
        self.destroy_session(&sid).await?;
        let mut st = self.state.lock().await;
        if st.seats.get(election).is_some_and(|h| h.session == sid) {
            st.seats.remove(election);
            self.drop_bound(&mut st, election).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = ConsulOptions::parse("127.0.0.1:8500").unwrap();
        assert_eq!(
            (o.address.as_str(), o.prefix.as_str(), o.session_ttl),
            ("127.0.0.1:8500", "autopilot", DEFAULT_SESSION_TTL)
        );
        let o = ConsulOptions::parse("consul:8500/env1/?ttl=15s").unwrap();
        assert_eq!(
            (o.address.as_str(), o.prefix.as_str(), o.session_ttl),
            ("consul:8500", "env1", Duration::from_secs(15))
        );
        assert!(ConsulOptions::parse("consul").is_err(), "no port");
        assert!(ConsulOptions::parse("a:1?ttl=1h").is_err());
        assert!(
            ConsulOptions::parse("a:1?ttl=2s").is_err(),
            "below Consul's minimum"
        );
        assert!(ConsulOptions::parse("a:1?token=x").is_err());
        assert!(ConsulOptions::parse("u:p@a:1").is_err());
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn paths_escape_what_consul_would_misread() {
        assert_eq!(segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(key_path("kv/x y/z"), "kv/x%20y/z");
    }
}
