//! Rollouts: the rollout records (`_fleet/rollouts/<artifact>/<id>`) and member entries read as `autopilot deploy status/history` print them, the latest rollout per artifact, and starting and steering one (`deploy NAME VERSION`, `pause`/`resume`/`abort`/`rollback`), plus one evaluation of the gate.
//!
//! Everything is a compare-and-swap on the rollout record against the exact
//! text read, so callers race agents harmlessly: a lost write is re-read and
//! retried. The record and the member entries are untrusted catalog data;
//! the decisions are `autopilot_core::rollout`'s.

use std::collections::BTreeSet;
use std::time::Duration;

use autopilot_catalog::{Catalog, Status, now_ms, rfc3339_ms};
use autopilot_core::rollout::{
    self, Action, Member, Plan, Rollout, State, Target, UnitSpec, member_service,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::catalog;
use crate::{FleetError, Result, quote};

/// How many lost compare-and-swaps a write retries before giving up.
pub const CAS_ATTEMPTS: usize = 5;
/// Rollout records kept per artifact; older ones are deleted after a create.
pub const KEEP_RECORDS: usize = 50;
/// At most this many artifacts are listed.
pub const ARTIFACTS_CAP: usize = 500;

/// Catalog text as printed on a terminal: see [`rollout::clean`].
pub fn c(s: &str) -> String {
    rollout::clean(s)
}

fn now() -> String {
    rfc3339_ms(now_ms())
}

/// An artifact name or version, checked.
pub fn check_name(what: &str, s: &str) -> Result<()> {
    if rollout::valid_name(s) {
        return Ok(());
    }
    Err(FleetError::Invalid(format!(
        "invalid {what} {}: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128",
        quote(s)
    )))
}

/// The latest rollout record of an artifact, as read.
#[derive(Debug, Clone)]
pub struct Latest {
    pub key: String,
    /// The exact text read: the expected value of the next compare-and-swap.
    pub raw: String,
    pub rollout: Rollout,
}

/// One record as read: its id, key, text, and the decoded rollout or why not.
pub type RecordRead = (u64, String, String, std::result::Result<Rollout, String>);

/// Every rollout record of `name` by id (ascending), each decoded or why not.
pub async fn records(cat: &dyn Catalog, name: &str) -> Result<Vec<RecordRead>> {
    let prefix = rollout::rollouts_prefix(name);
    let mut out: Vec<_> = cat
        .kv_list(&prefix)
        .await
        .map_err(catalog(format!("listing {prefix}")))?
        .into_iter()
        .filter_map(|(k, v)| {
            let id = rollout::parse_rollout_key(name, &k)?;
            let r = rollout::decode(name, id, &v);
            Some((id, k, v, r))
        })
        .collect();
    out.sort_by_key(|(id, ..)| *id);
    Ok(out)
}

/// The latest record (the highest id), `None` when there is none; a
/// record that does not decode is `Refused`, naming its key, never
/// skipped: deciding on an older record would undo what it says.
pub async fn latest(cat: &dyn Catalog, name: &str) -> Result<Option<Latest>> {
    let Some((_, key, raw, r)) = records(cat, name).await?.pop() else {
        return Ok(None);
    };
    match r {
        Ok(rollout) => Ok(Some(Latest { key, raw, rollout })),
        Err(e) => Err(FleetError::Refused(format!(
            "{key}: {} (repair or delete the key)",
            c(&e)
        ))),
    }
}

/// The live member entries of `name` that parse (untrusted: others are skipped).
pub async fn members(cat: &dyn Catalog, name: &str) -> Result<Vec<Member>> {
    let svc = member_service(name);
    Ok(cat
        .instances(&svc)
        .await
        .map_err(catalog(format!("reading the instances of {svc}")))?
        .iter()
        .filter_map(|i| rollout::parse_member(name, &i.id, &i.tags, i.status == Status::Passing))
        .collect())
}

/// The instance IDs of every live entry of `_artifacts.<name>`: an
/// instance still fetching or with odd tags is a member all the same.
async fn member_ids(cat: &dyn Catalog, name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}.");
    let svc = member_service(name);
    Ok(cat
        .instances(&svc)
        .await
        .map_err(catalog(format!("reading the instances of {svc}")))?
        .into_iter()
        .filter_map(|i| {
            i.id.strip_prefix(&prefix)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
        })
        .collect())
}

/// The target named by the artifact record `_fleet/artifacts/<name>/<version>`
/// (`None`: no such version).
async fn artifact_target(cat: &dyn Catalog, name: &str, version: &str) -> Result<Option<Target>> {
    let key = rollout::artifact_key(name, version);
    let Some(raw) = cat
        .kv_get(&key)
        .await
        .map_err(catalog(format!("reading {key}")))?
    else {
        return Ok(None);
    };
    // Only these two fields matter here; the record's other fields are the artifact command's.
    let v: Value = serde_json::from_str(&raw)
        .map_err(|e| FleetError::Refused(format!("{key}: not an artifact record: {e}")))?;
    let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default();
    let (rec_version, sha256) = (field("version"), field("sha256"));
    if rec_version != version || !rollout::valid_sha256(sha256) {
        return Err(FleetError::Refused(format!(
            "{key}: malformed artifact record (version {}, sha256 {})",
            quote(rec_version),
            quote(sha256)
        )));
    }
    Ok(Some(Target {
        version: rec_version.to_string(),
        sha256: sha256.to_string(),
    }))
}

/// How a rollout is started.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Scale units, cumulative.
    pub units: Vec<UnitSpec>,
    /// How long an updated instance must stay healthy before its unit passes.
    pub probation: Duration,
    /// Failed instances tolerated in the units rolled so far.
    pub max_failures: u32,
    /// On failure, roll the updated instances back.
    pub rollback: bool,
}

impl StartOptions {
    /// The defaults of `autopilot deploy`.
    pub const UNITS: &'static str = "1,10%,50%,100%";
    pub const PROBATION: Duration = Duration::from_secs(30);

    /// Options from text (as a request body carries them): `units` like
    /// `1,10%,50%,100%`, `probation` like `30s`; absent ones default.
    pub fn parse(
        units: Option<&str>,
        probation: Option<&str>,
        max_failures: Option<u32>,
    ) -> Result<StartOptions> {
        let units = rollout::parse_units(units.unwrap_or(Self::UNITS))
            .map_err(|e| FleetError::Invalid(format!("units: {e}")))?;
        let probation = match probation {
            None => Self::PROBATION,
            Some(p) => {
                let d = humantime::parse_duration(p)
                    .map_err(|e| FleetError::Invalid(format!("probation {}: {e}", quote(p))))?;
                if d.is_zero() {
                    return Err(FleetError::Invalid("probation: must be more than 0".into()));
                }
                d
            }
        };
        Ok(StartOptions {
            units,
            probation,
            max_failures: max_failures.unwrap_or(0),
            rollback: true,
        })
    }
}

/// Writes rollout `latest + 1` of `name` by compare-and-swap from absent
/// (marking the latest replaced first). `NotFound` when the version was
/// never pushed; `Refused` while a rollout is active; `Contended` when
/// every attempt lost. Old records are not pruned (see [`prune`]).
pub async fn create(
    cat: &dyn Catalog,
    name: &str,
    version: &str,
    opts: &StartOptions,
    by: &str,
) -> Result<Rollout> {
    check_name("artifact name", name)?;
    check_name("version", version)?;
    // The key of the last write lost, for the give-up message.
    let mut contested = rollout::rollout_key(name, 1);
    for _ in 0..CAS_ATTEMPTS {
        let latest = latest(cat, name).await?;
        if let Some(l) = &latest
            && l.rollout.state.active()
        {
            return Err(FleetError::Refused(format!(
                "rollout {} of {name} ({}) is {}; wait for it to end, or stop it with `autopilot deploy abort {name}`",
                l.rollout.id,
                c(&l.rollout.target.version),
                l.rollout.state.as_str()
            )));
        }
        let Some(target) = artifact_target(cat, name, version).await? else {
            return Err(FleetError::NotFound(format!(
                "no version {} of {name} in catalog {} (push it with `autopilot artifact push`)",
                quote(version),
                cat.url()
            )));
        };
        let ids = member_ids(cat, name).await?;
        let id = latest
            .as_ref()
            .map_or(1, |l| l.rollout.id.saturating_add(1));
        if let Some(l) = &latest {
            // Mark the latest record replaced first, against the exact
            // text read: a rollback (or any write) made meanwhile makes
            // this lose, and the next round sees it (active: refused)
            // instead of a new rollout silently undoing it. A record
            // already marked replaced by `id` (a deploy that stopped
            // between its two writes) needs no second mark.
            if l.rollout.superseded_by != Some(id) {
                let marked = rollout::supersede(&l.rollout, id, &now(), by)
                    .map_err(|e| FleetError::Refused(c(&e.to_string())))?;
                if !cat
                    .kv_cas(&l.key, Some(&l.raw), &rollout::encode(&marked))
                    .await
                    .map_err(catalog(format!("writing {}", l.key)))?
                {
                    contested.clone_from(&l.key);
                    continue;
                }
            }
        }
        let plan = Plan {
            id,
            artifact: name.to_string(),
            target,
            // The version the fleet runs, from the record as read.
            from: rollout::from_for_next(latest.as_ref().map(|l| &l.rollout)),
            units: opts.units.clone(),
            probation: opts.probation,
            max_failures: opts.max_failures,
            rollback: opts.rollback,
        };
        let r = rollout::new_rollout(plan, &ids, &now(), by);
        let key = rollout::rollout_key(name, id);
        let raw = rollout::encode(&r);
        if cat
            .kv_cas(&key, None, &raw)
            .await
            .map_err(catalog(format!("writing {key}")))?
        {
            return Ok(r);
        }
        // Someone else wrote rollout `id`: re-read.
        contested = key;
    }
    Err(FleetError::Contended {
        key: contested,
        attempts: CAS_ATTEMPTS,
    })
}

/// Deletes the oldest records beyond [`KEEP_RECORDS`] (each only if it still
/// holds what was read; the newest is never touched).
pub async fn prune(cat: &dyn Catalog, name: &str) -> Result<()> {
    let all = records(cat, name).await?;
    let extra = all.len().saturating_sub(KEEP_RECORDS);
    for (_, key, raw, _) in all.iter().take(extra) {
        cat.kv_delete_if(key, raw)
            .await
            .map_err(catalog(format!("deleting {key}")))?;
    }
    Ok(())
}

/// What a started rollout came to.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The record written (as `deploy -o json` prints it).
    pub rollout: Value,
    pub id: u64,
    pub state: &'static str,
    /// Pruning old records failed (housekeeping: the rollout stands).
    pub prune_error: Option<String>,
}

/// Starts a rollout ([`create`]) and prunes old records (best effort).
pub async fn start(
    cat: &dyn Catalog,
    artifact: &str,
    version: &str,
    opts: &StartOptions,
    by: &str,
) -> Result<Started> {
    let r = create(cat, artifact, version, opts, by).await?;
    let prune_error = prune(cat, artifact).await.err().map(|e| e.to_string());
    Ok(Started {
        rollout: record_json(&r),
        id: r.id,
        state: r.state.as_str(),
        prune_error,
    })
}

/// A person's steering of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Transition {
    pub fn verb(self) -> &'static str {
        match self {
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Abort => "abort",
            Transition::Rollback => "rollback",
        }
    }

    /// From its verb (`pause`, `resume`, `abort`, `rollback`).
    pub fn parse(verb: &str) -> Option<Transition> {
        [
            Transition::Pause,
            Transition::Resume,
            Transition::Abort,
            Transition::Rollback,
        ]
        .into_iter()
        .find(|t| t.verb() == verb)
    }

    fn action(self) -> Action {
        match self {
            Transition::Pause => Action::Pause,
            Transition::Resume => Action::Resume,
            Transition::Abort => Action::Abort,
            Transition::Rollback => Action::Rollback,
        }
    }
}

/// Applies a transition to the latest rollout by compare-and-swap,
/// re-read and retried when an evaluator moved the record. `NotFound`
/// without a rollout; `Refused` when the core refuses the transition.
pub async fn transition(
    cat: &dyn Catalog,
    artifact: &str,
    t: Transition,
    by: &str,
) -> Result<Rollout> {
    check_name("artifact name", artifact)?;
    let mut contested = rollout::rollout_key(artifact, 1);
    for _ in 0..CAS_ATTEMPTS {
        let Some(l) = latest(cat, artifact).await? else {
            return Err(no_rollout(cat, artifact));
        };
        let next = rollout::act(&l.rollout, t.action(), &now(), by)
            .map_err(|e| FleetError::Refused(c(&e.to_string())))?;
        if cat
            .kv_cas(&l.key, Some(&l.raw), &rollout::encode(&next))
            .await
            .map_err(catalog(format!("writing {}", l.key)))?
        {
            return Ok(next);
        }
        contested = l.key;
    }
    Err(FleetError::Contended {
        key: contested,
        attempts: CAS_ATTEMPTS,
    })
}

fn no_rollout(cat: &dyn Catalog, name: &str) -> FleetError {
    FleetError::NotFound(format!("no rollout of {name} in catalog {}", cat.url()))
}

/// One round of following a rollout: the latest record, its members, and
/// whether this round moved the gate (`evaluate`, written by
/// compare-and-swap; a lost write means someone else moved it).
pub async fn step(
    cat: &dyn Catalog,
    name: &str,
    by: &str,
) -> Result<Option<(Latest, Vec<Member>, bool)>> {
    let Some(l) = latest(cat, name).await? else {
        return Ok(None);
    };
    let ms = members(cat, name).await?;
    let mut moved = false;
    if l.rollout.state.moving()
        && let Some(next) = rollout::evaluate(&l.rollout, &ms, &now(), by)
    {
        moved = cat
            .kv_cas(&l.key, Some(&l.raw), &rollout::encode(&next))
            .await
            .map_err(catalog(format!("writing {}", l.key)))?;
    }
    Ok(Some((l, ms, moved)))
}

/// One unit's progress as counted from the live member entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitView {
    /// Live instances in the unit now.
    pub instances: usize,
    pub on_target: usize,
    pub ok: usize,
    pub failed: usize,
}

pub fn unit_views(r: &Rollout, ms: &[Member]) -> Vec<UnitView> {
    let mut v = vec![UnitView::default(); r.units.len()];
    for m in ms {
        let Some(u) = v.get_mut(rollout::unit_of(r, &m.instance)) else {
            continue;
        };
        u.instances = u.instances.saturating_add(1);
        if m.sha256 == r.target.sha256 {
            u.on_target = u.on_target.saturating_add(1);
            if m.state == rollout::MemberState::Ok && m.passing {
                u.ok = u.ok.saturating_add(1);
            }
        }
        if m.rollout == Some(r.id) && m.state == rollout::MemberState::Failed {
            u.failed = u.failed.saturating_add(1);
        }
    }
    v
}

/// Where a unit stands in the rollout's state.
pub fn unit_phase(r: &Rollout, k: usize) -> &'static str {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (r.state, k.cmp(&r.unit)) {
        (State::Completed, _) => "passed",
        (State::RollingBack, Less | Equal) => "rolling back",
        (State::RolledBack, Less | Equal) => "rolled back",
        (State::Rolling | State::Paused, Greater) => "waiting",
        (_, Greater) => "not started",
        (State::Failed | State::Aborted | State::Rolling | State::Paused, Less) => "passed",
        (State::Rolling, Equal) => "rolling",
        (State::Paused, Equal) => "paused",
        (State::Failed, Equal) => "failed",
        (State::Aborted, Equal) => "aborted",
    }
}

/// A record as JSON (`deploy -o json`, `deploy history -o json`).
pub fn record_json(r: &Rollout) -> Value {
    serde_json::from_str(&rollout::encode(r)).unwrap_or(Value::Null)
}

/// The document `deploy status -o json` prints.
pub fn status_json(r: &Rollout, ms: &[Member]) -> Value {
    let units: Vec<_> = unit_views(r, ms)
        .iter()
        .enumerate()
        .map(|(k, u)| {
            json!({
                "unit": k.saturating_add(1),
                "spec": r.units.get(k).map(UnitSpec::to_string),
                "phase": unit_phase(r, k),
                "sizeAtCreation": r.unit_sizes.get(k),
                "instances": u.instances,
                "onTarget": u.on_target,
                "ok": u.ok,
                "failed": u.failed,
            })
        })
        .collect();
    let members: Vec<_> = ms
        .iter()
        .map(|m| {
            json!({
                "instance": m.instance,
                "unit": rollout::unit_of(r, &m.instance).saturating_add(1),
                "sha256": m.sha256,
                "version": m.version,
                "state": m.state.as_str(),
                "rollout": m.rollout,
                "passing": m.passing,
                "reason": m.reason,
            })
        })
        .collect();
    let waiting: Vec<_> = if r.superseded_by.is_some() {
        Vec::new()
    } else {
        rollout::waiting_for(r, ms)
    }
    .into_iter()
    .map(|(instance, why)| json!({"instance": instance, "why": why}))
    .collect();
    json!({"rollout": record_json(r), "units": units, "members": members, "waiting_for": waiting})
}

/// The latest rollout of an artifact and its members, as read.
pub async fn read_status(
    cat: &dyn Catalog,
    artifact: &str,
) -> Result<Option<(Latest, Vec<Member>)>> {
    check_name("artifact name", artifact)?;
    let Some(l) = latest(cat, artifact).await? else {
        return Ok(None);
    };
    let ms = members(cat, artifact).await?;
    Ok(Some((l, ms)))
}

/// `deploy status -o json` of an artifact; `NotFound` without a rollout.
pub async fn status(cat: &dyn Catalog, artifact: &str) -> Result<Value> {
    match read_status(cat, artifact).await? {
        Some((l, ms)) => Ok(status_json(&l.rollout, &ms)),
        None => Err(no_rollout(cat, artifact)),
    }
}

/// `deploy history -o json`: every kept record, newest first (an
/// unreadable one as `{"id","key","invalid"}`).
pub fn history_json(all: &[RecordRead]) -> Value {
    Value::Array(
        all.iter()
            .rev()
            .map(|(id, key, _, r)| match r {
                Ok(r) => record_json(r),
                Err(e) => json!({"id": id, "key": key, "invalid": e}),
            })
            .collect(),
    )
}

/// `deploy history -o json` of an artifact; `NotFound` without a rollout.
pub async fn history(cat: &dyn Catalog, artifact: &str) -> Result<Value> {
    check_name("artifact name", artifact)?;
    let all = records(cat, artifact).await?;
    if all.is_empty() {
        return Err(no_rollout(cat, artifact));
    }
    Ok(history_json(&all))
}

/// One artifact's latest rollout, in a list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RolloutSummary {
    pub artifact: String,
    pub id: u64,
    pub state: String,
    /// The version rolled from (`original`: what each image shipped).
    pub from: String,
    pub to: String,
    /// Live instances on the target version.
    pub done: usize,
    /// Live instances of the artifact.
    pub total: usize,
    /// The record does not decode (shown, never fatal): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// The latest rollout of every artifact that has rollout records, by name.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<RolloutSummary>> {
    let all = cat
        .kv_list(rollout::ROLLOUTS_PREFIX)
        .await
        .map_err(catalog(format!("listing {}", rollout::ROLLOUTS_PREFIX)))?;
    let names: BTreeSet<String> = all
        .iter()
        .filter_map(|(k, _)| {
            let (name, id) = k.strip_prefix(rollout::ROLLOUTS_PREFIX)?.split_once('/')?;
            rollout::parse_rollout_key(name, k)?;
            (!id.is_empty()).then(|| name.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for name in names.into_iter().take(ARTIFACTS_CAP) {
        let newest = all
            .iter()
            .filter_map(|(k, v)| Some((rollout::parse_rollout_key(&name, k)?, v)))
            .max_by_key(|(id, _)| *id);
        let Some((id, raw)) = newest else { continue };
        match rollout::decode(&name, id, raw) {
            Ok(r) => {
                let ms = members(cat, &name).await?;
                let done = ms.iter().filter(|m| m.sha256 == r.target.sha256).count();
                out.push(RolloutSummary {
                    artifact: name,
                    id,
                    state: r.state.as_str().to_string(),
                    from: c(r.from.as_ref().map_or(rollout::ORIGINAL, |t| &t.version)),
                    to: c(&r.target.version),
                    done,
                    total: ms.len(),
                    invalid: None,
                });
            }
            Err(e) => out.push(RolloutSummary {
                artifact: name,
                id,
                state: "invalid".into(),
                from: String::new(),
                to: String::new(),
                done: 0,
                total: 0,
                invalid: Some(c(&e)),
            }),
        }
    }
    Ok(out)
}
