//! Clusters (elections): member records (`_members.<election>`) read leniently, the view `autopilot cluster list` prints, election summaries, and the pause/resume/switchover intents under `_cluster/<election>/`.
//!
//! Agents publish one member record per candidate and act on the intents;
//! these functions read the records and write the intents. They never wait
//! for the agents: the CLI keeps its wait loops.

use autopilot_catalog::{Catalog, Instance, Leader, Status, now_ms};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::catalog;
use crate::{FleetError, Result, quote};

/// The service prefix of member records.
pub const MEMBERS_PREFIX: &str = "_members.";
/// At most this many elections are read one by one.
pub const ELECTIONS_CAP: usize = 200;
/// How long an immediate switchover request stays valid by default.
pub const HANDOVER_WINDOW_MS: u64 = 30_000;
/// A scheduled switchover stays valid this long after its time.
pub const SCHEDULE_GRACE_MS: u64 = 60_000;

/// Election names become key components: one printable path component.
pub fn check_election(election: &str) -> Result<()> {
    if election.is_empty()
        || election.len() > 256
        || election.contains('/')
        || election == "."
        || election == ".."
        || election.chars().any(char::is_control)
    {
        return Err(FleetError::Invalid(format!(
            "invalid election name {}: one printable path component",
            quote(election)
        )));
    }
    Ok(())
}

pub fn members_service(election: &str) -> String {
    format!("{MEMBERS_PREFIX}{election}")
}

pub fn intent_key(election: &str, what: &str) -> String {
    format!("_cluster/{election}/{what}")
}

/// One member record, parsed leniently: an unparsable tag is absent.
#[derive(Debug, Clone)]
pub struct Member {
    /// The candidate ID (the record's ID without `<election>.`).
    pub id: String,
    pub address: String,
    pub port: u16,
    pub status: Status,
    pub priority: u32,
    pub max_lag: Option<u64>,
    pub position: Option<u64>,
    pub suspect: Option<u64>,
    pub last_heartbeat: String,
}

impl Member {
    pub fn parse(election: &str, i: &Instance) -> Member {
        let tag = |key: &str| crate::tag(&i.tags, key);
        let num = |key: &str| tag(key).and_then(|v| v.parse::<u64>().ok());
        let id =
            i.id.strip_prefix(election)
                .and_then(|r| r.strip_prefix('.'))
                .filter(|r| !r.is_empty())
                .unwrap_or(&i.id)
                .to_string();
        Member {
            id,
            address: i.address.clone(),
            port: i.port,
            status: i.status,
            priority: tag("priority")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1),
            max_lag: num("maxlag"),
            position: num("position"),
            suspect: num("suspect"),
            last_heartbeat: i.last_heartbeat.clone(),
        }
    }

    pub fn passing(&self) -> bool {
        self.status == Status::Passing
    }
}

/// What `cluster list` shows and the other commands decide on.
#[derive(Debug, Clone)]
pub struct View {
    pub leader: Option<Leader>,
    pub members: Vec<Member>,
    pub paused: Option<Value>,
    pub switchover: Option<Value>,
    pub failover: Option<Value>,
}

impl View {
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The highest published position, if anyone published one.
    pub fn highest(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.position).max()
    }

    /// The contract's lag: highest position minus the member's (a member
    /// without a position lags by the highest); `None` when nobody published.
    pub fn lag(&self, m: &Member) -> Option<u64> {
        let top = self.highest()?;
        Some(top.saturating_sub(m.position.unwrap_or(0)))
    }

    pub fn is_leader(&self, m: &Member) -> bool {
        self.leader.as_ref().is_some_and(|l| l.id == m.id)
    }

    pub fn role(&self, m: &Member) -> &'static str {
        match (m.passing(), self.is_leader(m)) {
            (false, _) => "-",
            (true, true) => "leader",
            (true, false) => "replica",
        }
    }

    pub fn member_ids(&self) -> String {
        if self.members.is_empty() {
            return "none".into();
        }
        self.members
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The document `autopilot cluster list -o json` prints.
    pub fn to_json(&self, election: &str) -> Value {
        let members: Vec<_> = self
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "address": m.address,
                    "port": m.port,
                    "role": self.role(m),
                    "health": m.status.as_str(),
                    "position": m.position,
                    "lag": self.lag(m),
                    "priority": m.priority,
                    "maxLag": m.max_lag,
                    "lastHeartbeat": m.last_heartbeat,
                    "suspect": m.suspect,
                })
            })
            .collect();
        json!({
            "election": election,
            "leader": leader_json(&self.leader),
            "paused": self.paused.is_some(),
            "switchover": intent_json(&self.switchover),
            "failover": intent_json(&self.failover),
            "members": members,
        })
    }
}

/// An election's view with its name: serializes as `cluster list -o json`.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub election: String,
    pub view: View,
}

impl Serialize for ClusterView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.view.to_json(&self.election).serialize(s)
    }
}

/// An intent's value as JSON; an unparsable one is kept as its text, so it
/// is shown rather than hidden.
pub fn intent_value(raw: Option<String>) -> Option<Value> {
    let raw = raw?;
    Some(
        serde_json::from_str::<Value>(&raw)
            .ok()
            .filter(Value::is_object)
            .unwrap_or(Value::String(raw)),
    )
}

pub fn leader_json(l: &Option<Leader>) -> Value {
    match l {
        Some(l) => json!({"id": l.id, "address": l.address, "port": l.port, "term": l.term}),
        None => Value::Null,
    }
}

/// A stored intent as camelCase JSON (times as given, unix milliseconds).
pub fn intent_json(v: &Option<Value>) -> Value {
    let Some(v) = v else {
        return Value::Null;
    };
    let Some(o) = v.as_object() else {
        return json!({ "invalid": v });
    };
    let mut out = serde_json::Map::new();
    for (k, val) in o {
        let camel = match k.as_str() {
            "at_ms" => "atMs",
            "deadline_ms" => "deadlineMs",
            "since_ms" => "sinceMs",
            "requested_ms" => "requestedMs",
            other => other,
        };
        out.insert(camel.to_string(), val.clone());
    }
    Value::Object(out)
}

pub fn ms_field(v: &Value, field: &str) -> Option<u64> {
    v.get(field).and_then(Value::as_u64)
}

pub fn str_field<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

fn ctx(what: &str, election: &str) -> String {
    format!("reading {what} of {}", quote(election))
}

/// Reads an election's members, leader and intents.
pub async fn read_view(cat: &dyn Catalog, election: &str) -> Result<View> {
    let instances = cat
        .instances_with_heartbeats(&members_service(election))
        .await
        .map_err(catalog(ctx("the members", election)))?;
    let mut members: Vec<Member> = instances
        .iter()
        .map(|i| Member::parse(election, i))
        .collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let intent = async |what: &str| {
        cat.kv_get(&intent_key(election, what))
            .await
            .map(intent_value)
            .map_err(catalog(ctx(&format!("the {what} intent"), election)))
    };
    Ok(View {
        leader: cat
            .leader(election)
            .await
            .map_err(catalog(ctx("the leader", election)))?,
        members,
        paused: intent("paused").await?,
        switchover: intent("switchover").await?,
        failover: intent("failover").await?,
    })
}

/// `cluster list`'s view of one election; `NotFound` when the election
/// has no member, no leader and no intent (`cluster list` itself prints
/// the empty view).
pub async fn view(cat: &dyn Catalog, election: &str) -> Result<ClusterView> {
    check_election(election)?;
    let view = read_view(cat, election).await?;
    if view.members.is_empty()
        && view.leader.is_none()
        && view.paused.is_none()
        && view.switchover.is_none()
        && view.failover.is_none()
    {
        return Err(FleetError::NotFound(format!(
            "no election {} in catalog {}",
            quote(election),
            cat.url()
        )));
    }
    Ok(ClusterView {
        election: election.to_string(),
        view,
    })
}

/// The names of the elections that have member records, sorted, at most
/// [`ELECTIONS_CAP`].
pub async fn election_names(cat: &dyn Catalog) -> Result<Vec<String>> {
    let mut names: Vec<String> = cat
        .services()
        .await
        .map_err(catalog("listing services"))?
        .into_iter()
        .filter_map(|s| {
            s.name
                .strip_prefix(MEMBERS_PREFIX)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.truncate(ELECTIONS_CAP);
    Ok(names)
}

/// The ids of every election's leader (elections with member records).
pub(crate) async fn leader_ids(cat: &dyn Catalog) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in election_names(cat).await? {
        if let Some(l) = cat
            .leader(&e)
            .await
            .map_err(catalog(ctx("the leader", &e)))?
        {
            out.push(l.id);
        }
    }
    Ok(out)
}

/// The current leader of an election (`autopilot leader`), `None` when nobody leads.
pub async fn leader(cat: &dyn Catalog, election: &str) -> Result<Option<Leader>> {
    cat.leader(election)
        .await
        .map_err(catalog(ctx("the leader", election)))
}

/// A leader as JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeaderView {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub term: u64,
}

impl From<&Leader> for LeaderView {
    fn from(l: &Leader) -> LeaderView {
        LeaderView {
            id: l.id.clone(),
            address: l.address.clone(),
            port: l.port,
            term: l.term,
        }
    }
}

/// One election in a list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ElectionSummary {
    pub name: String,
    pub leader: Option<LeaderView>,
    pub paused: bool,
    pub members: usize,
    pub healthy: usize,
}

/// Every election found through its `_members.<election>` service.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<ElectionSummary>> {
    let mut out = Vec::new();
    for e in election_names(cat).await? {
        let members = cat
            .instances(&members_service(&e))
            .await
            .map_err(catalog(ctx("the members", &e)))?;
        let leader = cat
            .leader(&e)
            .await
            .map_err(catalog(ctx("the leader", &e)))?;
        let paused = cat
            .kv_get(&intent_key(&e, "paused"))
            .await
            .map_err(catalog(ctx("the paused intent", &e)))?
            .is_some();
        out.push(ElectionSummary {
            leader: leader.as_ref().map(LeaderView::from),
            paused,
            members: members.len(),
            healthy: members
                .iter()
                .filter(|i| i.status == Status::Passing)
                .count(),
            name: e,
        });
    }
    Ok(out)
}

/// What a pause or resume did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PauseOutcome {
    pub election: String,
    pub paused: bool,
    /// Whether this call changed anything (a pause keeps its first time).
    pub changed: bool,
}

/// Pauses automatic failover: idempotent (a pause keeps its first time).
pub async fn pause(cat: &dyn Catalog, election: &str, by: &str) -> Result<PauseOutcome> {
    check_election(election)?;
    let key = intent_key(election, "paused");
    let value = json!({ "since_ms": now_ms(), "by": by }).to_string();
    let changed = cat
        .kv_cas(&key, None, &value)
        .await
        .map_err(catalog(format!("writing {key}")))?;
    Ok(PauseOutcome {
        election: election.to_string(),
        paused: true,
        changed,
    })
}

/// Resumes automatic failover: idempotent.
pub async fn resume(cat: &dyn Catalog, election: &str, _by: &str) -> Result<PauseOutcome> {
    check_election(election)?;
    let key = intent_key(election, "paused");
    let changed = cat
        .kv_delete(&key)
        .await
        .map_err(catalog(format!("deleting {key}")))?;
    Ok(PauseOutcome {
        election: election.to_string(),
        paused: false,
        changed,
    })
}

/// Why `m` cannot be handed the seat (`None`: it can). `named`: the operator
/// named `m`, an explicit choice that priority 0 does not forbid
/// (priority 0 only keeps a member out of automatic choices).
pub fn ineligible(v: &View, m: &Member, max_lag: Option<u64>, named: bool) -> Option<String> {
    if !m.passing() {
        return Some(format!("{} is {}, not passing", m.id, m.status.as_str()));
    }
    if v.is_leader(m) {
        return Some(format!("{} already leads", m.id));
    }
    if m.priority == 0 && !named {
        return Some(format!(
            "{} has priority 0 (it never leads automatically)",
            m.id
        ));
    }
    let lag = v.lag(m).unwrap_or(0);
    for (limit, from) in [(m.max_lag, "its maxLag"), (max_lag, "--max-lag")] {
        if let Some(limit) = limit
            && lag > limit
        {
            return Some(format!("{} lags by {lag}, beyond {from} of {limit}", m.id));
        }
    }
    None
}

/// Deletes an intent only if it still holds what we wrote: an intent
/// written since by someone else is left alone.
pub async fn withdraw(cat: &dyn Catalog, key: &str, ours: &str) -> Result<bool> {
    cat.kv_delete_if(key, ours)
        .await
        .map_err(catalog(format!("withdrawing {key}")))
}

/// Writes an intent unless a live one (its deadline not passed) stands.
pub async fn write_intent(cat: &dyn Catalog, key: &str, value: &str) -> Result<()> {
    let old = cat
        .kv_get(key)
        .await
        .map_err(catalog(format!("reading {key}")))?;
    if let Some(old) = &old {
        let live = serde_json::from_str::<Value>(old)
            .ok()
            .and_then(|v| ms_field(&v, "deadline_ms"))
            .is_some_and(|d| d > now_ms());
        if live {
            return Err(FleetError::Refused(format!(
                "another request is pending ({key} = {old}); wait for it or delete it"
            )));
        }
    }
    if !cat
        .kv_cas(key, old.as_deref(), value)
        .await
        .map_err(catalog(format!("writing {key}")))?
    {
        return Err(FleetError::Refused(format!(
            "{key} changed while it was written; try again"
        )));
    }
    Ok(())
}

/// A switchover request.
#[derive(Debug, Clone, Default)]
pub struct SwitchoverRequest {
    /// The member to hand over to (default: the most advanced eligible one).
    pub to: Option<String>,
    /// Schedule the handover at this time (unix ms); `None`: now.
    pub at_ms: Option<u64>,
    /// Refuse a target further behind than this, whatever its maxlag tag says.
    pub max_lag: Option<u64>,
    /// How long an immediate request stays valid (ms); 0: [`HANDOVER_WINDOW_MS`].
    pub window_ms: u64,
}

/// The switchover intent as written.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Switchover {
    pub election: String,
    pub key: String,
    pub from: String,
    pub to: Option<String>,
    pub at_ms: u64,
    pub deadline_ms: u64,
    /// The exact text written (what `withdraw` expects).
    #[serde(skip)]
    pub value: String,
}

/// Writes a switchover intent after the CLI's checks (a leader exists, the
/// target is eligible, no live request stands); does not wait.
pub async fn request_switchover(
    cat: &dyn Catalog,
    election: &str,
    req: &SwitchoverRequest,
) -> Result<Switchover> {
    check_election(election)?;
    if let Some(at) = req.at_ms
        && at < now_ms()
    {
        return Err(FleetError::Invalid(format!(
            "{} is in the past",
            autopilot_catalog::rfc3339_ms(at)
        )));
    }
    let v = read_view(cat, election).await?;
    let Some(leader) = v.leader.clone() else {
        return Err(FleetError::Refused(format!(
            "nobody leads {election}: use `autopilot failover {election} --to ID`"
        )));
    };
    match &req.to {
        Some(to) => {
            let m = v.member(to).ok_or_else(|| {
                FleetError::Refused(format!(
                    "{} is not a member of {election} (members: {})",
                    quote(to),
                    v.member_ids()
                ))
            })?;
            if let Some(why) = ineligible(&v, m, req.max_lag, true) {
                return Err(FleetError::Refused(format!(
                    "cannot hand {election} to {why}"
                )));
            }
        }
        None => {
            if !v
                .members
                .iter()
                .any(|m| ineligible(&v, m, req.max_lag, false).is_none())
            {
                return Err(FleetError::Refused(format!(
                    "no member of {election} other than the leader is passing, has a priority and is within its lag limit"
                )));
            }
        }
    }
    let now = now_ms();
    let window = if req.window_ms == 0 {
        HANDOVER_WINDOW_MS
    } else {
        req.window_ms
    };
    let (at, deadline) = match req.at_ms {
        Some(at) => (at, at.saturating_add(SCHEDULE_GRACE_MS)),
        None => (now, now.saturating_add(window)),
    };
    let value =
        json!({"from": leader.id, "to": req.to, "at_ms": at, "deadline_ms": deadline}).to_string();
    let key = intent_key(election, "switchover");
    write_intent(cat, &key, &value).await?;
    Ok(Switchover {
        election: election.to_string(),
        key,
        from: leader.id,
        to: req.to.clone(),
        at_ms: at,
        deadline_ms: deadline,
        value,
    })
}
