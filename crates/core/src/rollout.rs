//! Fleet rollouts as pure decisions: scale units by instance hash, the version each instance should run, the health gate that advances a rollout, and an instance's probation.
//!
//! A rollout is one record in the catalog, advanced by compare-and-swap by
//! whoever sees its gate hold (any agent, or the CLI): there is no
//! coordinator to lose. Everything here is a function of that record, the
//! member entries the agents publish and the caller's clock reading, so it
//! is tested without a catalog or a clock.
//!
//! Instances are ordered by a hash of their ID. At creation the record
//! stores, per unit, the highest hash it covers (`bounds`): an instance
//! keeps its unit whatever joins or leaves, and an instance that joins
//! during the rollout lands in the unit whose hash range covers it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where artifact records live: `_fleet/artifacts/<name>/<version>`.
pub const ARTIFACTS_PREFIX: &str = "_fleet/artifacts/";
/// Where rollout records live: `_fleet/rollouts/<name>/<id, 8 digits>`.
pub const ROLLOUTS_PREFIX: &str = "_fleet/rollouts/";
/// The `sha` tag of an instance that runs what its image shipped.
pub const ORIGINAL: &str = "original";
/// At most this many failures and events are kept in a record.
pub const RECORD_CAP: usize = 100;
/// At most this many scale units.
pub const MAX_UNITS: usize = 20;
/// A member's failure reason is cut to this many characters.
pub const REASON_CAP: usize = 200;

/// An artifact or version name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A sha256 in lower-case hex.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn rollouts_prefix(artifact: &str) -> String {
    format!("{ROLLOUTS_PREFIX}{artifact}/")
}

pub fn rollout_key(artifact: &str, id: u64) -> String {
    format!("{ROLLOUTS_PREFIX}{artifact}/{id:08}")
}

/// The id of a rollout key under `rollouts_prefix(artifact)`.
pub fn parse_rollout_key(artifact: &str, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(&rollouts_prefix(artifact))?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

pub fn artifact_key(artifact: &str, version: &str) -> String {
    format!("{ARTIFACTS_PREFIX}{artifact}/{version}")
}

/// The catalog service the instances of `artifact` publish themselves under.
pub fn member_service(artifact: &str) -> String {
    format!("_artifacts.{artifact}")
}

/// A member entry's ID: `<artifact>.<instance>`.
pub fn member_id(artifact: &str, instance: &str) -> String {
    format!("{artifact}.{instance}")
}

/// A version of an artifact, as the fleet runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub version: String,
    pub sha256: String,
}

/// One scale unit as given: a number of instances or a share of them, both
/// cumulative (`1,10%,50%,100%`: the first instance, then up to a tenth...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum UnitSpec {
    Count(u32),
    Percent(u8),
}

impl From<UnitSpec> for String {
    fn from(u: UnitSpec) -> String {
        match u {
            UnitSpec::Count(n) => n.to_string(),
            UnitSpec::Percent(p) => format!("{p}%"),
        }
    }
}

impl TryFrom<String> for UnitSpec {
    type Error = String;
    fn try_from(s: String) -> Result<UnitSpec, String> {
        parse_unit(&s)
    }
}

impl std::fmt::Display for UnitSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

fn parse_unit(s: &str) -> Result<UnitSpec, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        match p.parse::<u8>() {
            Ok(p @ 1..=100) => Ok(UnitSpec::Percent(p)),
            _ => Err(format!("unit {s:?}: a share is 1% to 100%")),
        }
    } else {
        match s.parse::<u32>() {
            Ok(n @ 1..=1_000_000) => Ok(UnitSpec::Count(n)),
            _ => Err(format!(
                "unit {s:?}: expected a number of instances (1 to 1000000) or a share such as 10%"
            )),
        }
    }
}

/// Parses `1,10%,50%,100%`. A list that does not end at `100%` gets it
/// appended: a rollout always ends with the whole fleet.
pub fn parse_units(s: &str) -> Result<Vec<UnitSpec>, String> {
    let mut units = Vec::new();
    for part in s.split(',') {
        units.push(parse_unit(part)?);
    }
    if units.last() != Some(&UnitSpec::Percent(100)) {
        units.push(UnitSpec::Percent(100));
    }
    if units.len() > MAX_UNITS {
        return Err(format!("at most {MAX_UNITS} units"));
    }
    Ok(units)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Rolling,
    Paused,
    Completed,
    /// Stopped by failures, without rolling back (`--no-rollback`).
    Failed,
    RollingBack,
    RolledBack,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Rolling => "rolling",
            State::Paused => "paused",
            State::Completed => "completed",
            State::Failed => "failed",
            State::RollingBack => "rolling_back",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    /// Whether a new rollout of the artifact must wait for this one.
    pub fn active(self) -> bool {
        matches!(self, State::Rolling | State::Paused | State::RollingBack)
    }

    /// Whether instances are still switching (the gate may move).
    pub fn moving(self) -> bool {
        matches!(self, State::Rolling | State::RollingBack)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub instance: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub at: String,
    pub by: String,
    pub what: String,
}

/// A rollout record (`_fleet/rollouts/<artifact>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub artifact: String,
    pub target: Target,
    /// The version the fleet ran before; `None`: what each instance's image
    /// shipped (no rollout had completed).
    pub from: Option<Target>,
    pub units: Vec<UnitSpec>,
    /// Per unit, the highest instance hash it covers (`None`: the unit was
    /// empty at creation and covers no hash of its own).
    pub bounds: Vec<Option<u64>>,
    /// Instances per unit at creation.
    pub unit_sizes: Vec<usize>,
    pub probation_ms: u64,
    pub max_failures: u32,
    /// Roll every updated instance back when the rollout fails.
    pub rollback: bool,
    pub state: State,
    /// The unit being rolled: every unit before it has passed its gate.
    pub unit: usize,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub events: Vec<RolloutEvent>,
    pub created: String,
    pub by: String,
    pub updated: String,
    /// A newer rollout of the artifact replaced this one: it no longer
    /// moves, and no action applies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
}

/// What an instance should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    Run(Target),
    /// What its image shipped (no rollout yet, or a rollback to before the first one).
    Original,
}

/// Where an instance falls in the order: the first 8 bytes of sha256(id).
pub fn instance_hash(instance: &str) -> u64 {
    let d = Sha256::digest(instance.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The parameters of a new rollout (`autopilot deploy`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: u64,
    pub artifact: String,
    pub target: Target,
    pub from: Option<Target>,
    pub units: Vec<UnitSpec>,
    pub probation: Duration,
    pub max_failures: u32,
    pub rollback: bool,
}

/// Cumulative instance counts per unit for `n` instances, never shrinking
/// and never above `n`.
fn cumulative(units: &[UnitSpec], n: usize) -> Vec<usize> {
    let mut prev = 0usize;
    units
        .iter()
        .map(|u| {
            let c = match *u {
                UnitSpec::Count(k) => usize::try_from(k).unwrap_or(usize::MAX),
                // ceil(p * n / 100) without overflow for any realistic n.
                UnitSpec::Percent(p) => n
                    .saturating_mul(usize::from(p))
                    .saturating_add(99)
                    .checked_div(100)
                    .unwrap_or(0),
            };
            prev = c.max(prev).min(n);
            prev
        })
        .collect()
}

/// A new rollout over the live `members` (instance IDs). With no member it
/// is complete at once: every instance that appears runs the target.
pub fn new_rollout(plan: Plan, members: &[String], now: &str, by: &str) -> Rollout {
    let mut units = plan.units;
    if units.is_empty() {
        units.push(UnitSpec::Percent(100));
    }
    let mut order: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (instance_hash(m), m.as_str()))
        .collect();
    order.sort_unstable();
    order.dedup();
    let counts = cumulative(&units, order.len());
    let mut bounds = Vec::with_capacity(counts.len());
    let mut unit_sizes = Vec::with_capacity(counts.len());
    let mut prev = 0usize;
    for &c in &counts {
        let bound = if c > prev {
            c.checked_sub(1).and_then(|i| order.get(i)).map(|(h, _)| *h)
        } else {
            None
        };
        bounds.push(bound);
        unit_sizes.push(c.saturating_sub(prev));
        prev = c;
    }
    let state = if order.is_empty() {
        State::Completed
    } else {
        State::Rolling
    };
    let mut r = Rollout {
        id: plan.id,
        artifact: plan.artifact,
        target: plan.target,
        from: plan.from,
        units,
        bounds,
        unit_sizes,
        probation_ms: u64::try_from(plan.probation.as_millis()).unwrap_or(u64::MAX),
        max_failures: plan.max_failures,
        rollback: plan.rollback,
        state,
        unit: 0,
        failures: Vec::new(),
        events: Vec::new(),
        created: now.to_string(),
        by: by.to_string(),
        updated: now.to_string(),
        superseded_by: None,
    };
    let what = if order.is_empty() {
        format!(
            "started and completed: no instance runs {} yet; every instance that starts gets {}",
            r.artifact, r.target.version
        )
    } else {
        format!(
            "started: {} to {} instances in {} units",
            r.target.version,
            order.len(),
            r.units.len()
        )
    };
    if order.is_empty() {
        r.unit = r.units.len().saturating_sub(1);
    }
    push_event(&mut r, now, by, what);
    r
}

fn push_event(r: &mut Rollout, now: &str, by: &str, what: String) {
    if r.events.len() >= RECORD_CAP {
        r.events.remove(0);
    }
    r.events.push(RolloutEvent {
        at: now.to_string(),
        by: by.to_string(),
        what,
    });
    r.updated = now.to_string();
}

/// The unit an instance belongs to.
pub fn unit_of(r: &Rollout, instance: &str) -> usize {
    let h = instance_hash(instance);
    r.bounds
        .iter()
        .position(|b| b.is_some_and(|b| h <= b))
        .unwrap_or_else(|| r.units.len().saturating_sub(1))
}

fn from_desired(r: &Rollout) -> Desired {
    match &r.from {
        Some(t) => Desired::Run(t.clone()),
        None => Desired::Original,
    }
}

/// What `instance` should run under the latest rollout `r` (none: its image).
pub fn desired(r: Option<&Rollout>, instance: &str) -> Desired {
    let Some(r) = r else {
        return Desired::Original;
    };
    match r.state {
        State::Completed => Desired::Run(r.target.clone()),
        State::RollingBack | State::RolledBack => from_desired(r),
        State::Rolling | State::Paused | State::Failed | State::Aborted => {
            if unit_of(r, instance) <= r.unit {
                Desired::Run(r.target.clone())
            } else {
                from_desired(r)
            }
        }
    }
}

/// Where an instance stands with its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Fetching,
    Starting,
    Probation,
    Ok,
    Failed,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Fetching => "fetching",
            MemberState::Starting => "starting",
            MemberState::Probation => "probation",
            MemberState::Ok => "ok",
            MemberState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<MemberState> {
        [
            MemberState::Fetching,
            MemberState::Starting,
            MemberState::Probation,
            MemberState::Ok,
            MemberState::Failed,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// An instance as its member entry (`_artifacts.<artifact>`) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance: String,
    /// The sha256 it runs, or [`ORIGINAL`].
    pub sha256: String,
    pub version: String,
    pub state: MemberState,
    /// The rollout its current state belongs to.
    pub rollout: Option<u64>,
    /// Its entry's status is passing (the job is healthy).
    pub passing: bool,
    pub reason: String,
}

/// Reads a member entry; `None` for an entry that is not one (another
/// artifact's, or tags that do not parse). Catalog data is untrusted: a
/// bad entry is skipped, never fatal.
pub fn parse_member(artifact: &str, id: &str, tags: &[String], passing: bool) -> Option<Member> {
    let instance = id.strip_prefix(artifact)?.strip_prefix('.')?;
    if instance.is_empty() {
        return None;
    }
    let tag = |k: &str| {
        tags.iter()
            .find_map(|t| t.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let sha = tag("sha")?;
    if sha != ORIGINAL && !valid_sha256(sha) {
        return None;
    }
    let state = MemberState::parse(tag("state")?)?;
    let rollout = match tag("rollout") {
        Some(v) => Some(v.parse().ok()?),
        None => None,
    };
    Some(Member {
        instance: instance.to_string(),
        sha256: sha.to_string(),
        version: clean(tag("version").unwrap_or_default()),
        state,
        rollout,
        passing,
        reason: clean(tag("reason").unwrap_or_default()),
    })
}

/// Catalog text bound for a record or a terminal: at most [`REASON_CAP`]
/// characters, control characters replaced by spaces.
pub fn clean(s: &str) -> String {
    s.chars()
        .take(REASON_CAP)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The tags of a member entry (the inverse of [`parse_member`]).
pub fn member_tags(m: &Member) -> Vec<String> {
    let mut tags = vec![
        format!("sha={}", m.sha256),
        format!("version={}", m.version),
        format!("state={}", m.state.as_str()),
    ];
    if let Some(r) = m.rollout {
        tags.push(format!("rollout={r}"));
    }
    if m.state == MemberState::Failed && !m.reason.is_empty() {
        tags.push(format!("reason={}", clean(&m.reason)));
    }
    tags
}

fn runs(m: &Member, t: Option<&Target>) -> bool {
    match t {
        Some(t) => m.sha256 == t.sha256,
        None => m.sha256 == ORIGINAL,
    }
}

/// The gate: the next record when the rollout moves (a unit passed, the
/// rollout completed, failed or finished rolling back, or new failures to
/// record), `None` when nothing changes. `members` are the live member
/// entries; an instance whose agent is gone is not waited for.
pub fn evaluate(r: &Rollout, members: &[Member], now: &str, by: &str) -> Option<Rollout> {
    match r.state {
        State::Rolling => {
            if r.superseded_by.is_some() {
                return None;
            }
            let scope: Vec<&Member> = members
                .iter()
                .filter(|m| unit_of(r, &m.instance) <= r.unit)
                .collect();
            let failed_now = |m: &Member| m.rollout == Some(r.id) && m.state == MemberState::Failed;
            let mut next = r.clone();
            let mut changed = false;
            for m in scope.iter().filter(|m| failed_now(m)) {
                // Recorded once per instance; the list is capped, so a
                // full list changes nothing and never causes a write.
                if next.failures.len() < RECORD_CAP
                    && !next.failures.iter().any(|f| f.instance == m.instance)
                {
                    next.failures.push(Failure {
                        instance: m.instance.clone(),
                        reason: m.reason.clone(),
                        at: now.to_string(),
                    });
                    changed = true;
                }
            }
            // Distinct instances that failed in this rollout: the recorded
            // ones (an instance that failed and then restarted or vanished
            // still counts) and the failing ones not recorded yet.
            let unrecorded = scope
                .iter()
                .filter(|m| {
                    failed_now(m) && !next.failures.iter().any(|f| f.instance == m.instance)
                })
                .count();
            let failed = next.failures.len().saturating_add(unrecorded);
            let max = usize::try_from(r.max_failures).unwrap_or(usize::MAX);
            // The unit being rolled must prove the version: at least one of
            // its live instances runs it, passed probation and is passing.
            // An empty or fully failed unit never lets the next one start.
            let unit_members: Vec<&&Member> = scope
                .iter()
                .filter(|m| unit_of(r, &m.instance) == r.unit)
                .collect();
            let proven = unit_members
                .iter()
                .any(|m| m.sha256 == r.target.sha256 && m.state == MemberState::Ok && m.passing);
            let had_members = r.unit_sizes.get(r.unit).is_some_and(|n| *n > 0);
            let all_failed = !unit_members.is_empty() && unit_members.iter().all(|m| failed_now(m));
            if failed > max || (had_members && all_failed) {
                next.state = if r.rollback {
                    State::RollingBack
                } else {
                    State::Failed
                };
                let what = format!(
                    "unit {} failed: {} instances failed (at most {} allowed{}){}",
                    r.unit.saturating_add(1),
                    failed,
                    r.max_failures,
                    if all_failed {
                        ", and none of the unit's instances succeeded"
                    } else {
                        ""
                    },
                    if r.rollback {
                        "; rolling back"
                    } else {
                        "; stopped without rolling back"
                    }
                );
                push_event(&mut next, now, by, what);
                return Some(next);
            }
            let passed = (proven || !had_members)
                && scope.iter().filter(|m| !failed_now(m)).all(|m| {
                    m.sha256 == r.target.sha256 && m.state == MemberState::Ok && m.passing
                });
            if passed {
                let last = r.units.len().saturating_sub(1);
                if r.unit >= last {
                    next.state = State::Completed;
                    next.unit = last;
                    let what = format!("completed: every instance runs {}", r.target.version);
                    push_event(&mut next, now, by, what);
                } else {
                    next.unit = r.unit.saturating_add(1);
                    let what = format!(
                        "unit {} passed; unit {} starts",
                        r.unit.saturating_add(1),
                        next.unit.saturating_add(1)
                    );
                    push_event(&mut next, now, by, what);
                }
                return Some(next);
            }
            if changed {
                next.updated = now.to_string();
                return Some(next);
            }
            None
        }
        State::RollingBack => {
            if r.superseded_by.is_some() {
                return None;
            }
            let done = members.iter().all(|m| {
                runs(m, r.from.as_ref())
                    && !matches!(m.state, MemberState::Fetching | MemberState::Starting)
            });
            if !done {
                return None;
            }
            let mut next = r.clone();
            next.state = State::RolledBack;
            let to = r
                .from
                .as_ref()
                .map_or("the original version", |t| t.version.as_str());
            push_event(
                &mut next,
                now,
                by,
                format!("rolled back: every instance runs {to}"),
            );
            Some(next)
        }
        _ => None,
    }
}

/// Why a person's action on a rollout cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} of {artifact} is {state}: {why}")]
pub struct Refusal {
    pub id: u64,
    pub artifact: String,
    pub state: &'static str,
    pub why: &'static str,
}

fn refuse(r: &Rollout, why: &'static str) -> Refusal {
    Refusal {
        id: r.id,
        artifact: r.artifact.clone(),
        state: r.state.as_str(),
        why,
    }
}

/// A person's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Rollback,
}

/// The record after a person's action, or why it cannot be carried out.
pub fn act(r: &Rollout, action: Action, now: &str, by: &str) -> Result<Rollout, Refusal> {
    if r.superseded_by.is_some() {
        return Err(refuse(r, "a newer rollout replaced it"));
    }
    let mut next = r.clone();
    let what = match (action, r.state) {
        (Action::Pause, State::Rolling) => {
            next.state = State::Paused;
            "paused: no further unit starts until it is resumed"
        }
        (Action::Pause, _) => return Err(refuse(r, "only a rolling rollout can be paused")),
        (Action::Resume, State::Paused) => {
            next.state = State::Rolling;
            "resumed"
        }
        (Action::Resume, _) => return Err(refuse(r, "only a paused rollout can be resumed")),
        // Aborting a rollback never sends anyone forward again: the
        // instances that returned stay returned, the others keep trying.
        (Action::Abort, State::RollingBack) => {
            next.state = State::RolledBack;
            "rollback ended by hand: every instance is still sent back to the previous version, but no one waits for the others"
        }
        (Action::Abort, State::Rolling | State::Paused) => {
            next.state = State::Aborted;
            "aborted: every instance keeps the version it has"
        }
        (Action::Abort, _) => return Err(refuse(r, "it has already ended")),
        (Action::Rollback, State::RollingBack | State::RolledBack) => {
            return Err(refuse(r, "it is already rolled back"));
        }
        (Action::Rollback, _) => {
            next.state = State::RollingBack;
            "rolling back: every instance returns to the previous version"
        }
    };
    push_event(&mut next, now, by, what.to_string());
    Ok(next)
}

/// Marks `r` replaced by rollout `next` (`autopilot deploy` writes this
/// first, by compare-and-swap, so a person's rollback written meanwhile is
/// never silently undone by a new rollout). Refused while `r` is active.
pub fn supersede(r: &Rollout, next: u64, now: &str, by: &str) -> Result<Rollout, Refusal> {
    if r.state.active() {
        return Err(refuse(
            r,
            "a new rollout must wait until it ends (autopilot deploy abort)",
        ));
    }
    if r.superseded_by.is_some() {
        return Err(refuse(r, "a newer rollout replaced it"));
    }
    let mut out = r.clone();
    out.superseded_by = Some(next);
    push_event(&mut out, now, by, format!("replaced by rollout {next}"));
    Ok(out)
}

/// Why the gate does not move yet: each instance in the units rolled so
/// far that holds it up, with the reason, for `deploy status`.
pub fn waiting_for(r: &Rollout, members: &[Member]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match r.state {
        State::Rolling | State::Paused => {
            for m in members.iter().filter(|m| unit_of(r, &m.instance) <= r.unit) {
                if m.rollout == Some(r.id) && m.state == MemberState::Failed {
                    continue;
                }
                let why = if m.sha256 != r.target.sha256 {
                    format!("runs {} ({})", m.version, m.state.as_str())
                } else if !m.passing {
                    "critical".to_string()
                } else if m.state != MemberState::Ok {
                    m.state.as_str().to_string()
                } else {
                    continue;
                };
                out.push((m.instance.clone(), why));
            }
            let in_unit = members.iter().any(|m| unit_of(r, &m.instance) == r.unit);
            if !in_unit && r.unit_sizes.get(r.unit).is_some_and(|n| *n > 0) {
                out.push((
                    format!("unit {}", r.unit.saturating_add(1)),
                    "no live instance to prove the version".to_string(),
                ));
            }
        }
        State::RollingBack => {
            for m in members.iter().filter(|m| !runs(m, r.from.as_ref())) {
                out.push((
                    m.instance.clone(),
                    format!("runs {} ({})", m.version, m.state.as_str()),
                ));
            }
        }
        _ => {}
    }
    out
}

/// The version the fleet runs before a new rollout, given the latest one.
pub fn from_for_next(latest: Option<&Rollout>) -> Option<Target> {
    let r = latest?;
    match r.state {
        State::Completed => Some(r.target.clone()),
        _ => r.from.clone(),
    }
}

/// Decodes a record read from the catalog (untrusted: any error is a
/// message, never a panic); the id must match its key.
pub fn decode(artifact: &str, id: u64, json: &str) -> Result<Rollout, String> {
    let r: Rollout =
        serde_json::from_str(json).map_err(|e| format!("rollout {id} of {artifact}: {e}"))?;
    if r.id != id || r.artifact != artifact {
        return Err(format!(
            "rollout {id} of {artifact}: the record names rollout {} of {:?}",
            r.id, r.artifact
        ));
    }
    if r.units.is_empty() || r.units.len() > MAX_UNITS || r.bounds.len() != r.units.len() {
        return Err(format!("rollout {id} of {artifact}: malformed units"));
    }
    let bad_target = |t: &Target| !valid_sha256(&t.sha256) || !valid_name(&t.version);
    if !valid_name(&r.artifact) || bad_target(&r.target) || r.from.as_ref().is_some_and(bad_target)
    {
        return Err(format!("rollout {id} of {artifact}: malformed checksum"));
    }
    Ok(r)
}

pub fn encode(r: &Rollout) -> String {
    // A struct of strings, numbers and vectors always serializes.
    serde_json::to_string(r).unwrap_or_default()
}

/// An instance's probation after it switched version: it must pass its
/// health checks within `window` of its start, then stay passing for
/// `window`. Times are the caller's monotonic clock.
#[derive(Debug, Clone)]
pub struct Probation {
    start: Duration,
    window: Duration,
    passing_since: Option<Duration>,
    state: MemberState,
    reason: String,
}

impl Probation {
    pub fn new(window: Duration, now: Duration) -> Probation {
        Probation {
            start: now,
            window,
            passing_since: None,
            state: MemberState::Starting,
            reason: String::new(),
        }
    }

    /// The job's health changed (or was read).
    pub fn health(&mut self, passing: bool, now: Duration) {
        match (self.state, passing) {
            (MemberState::Starting, true) => {
                self.state = MemberState::Probation;
                self.passing_since = Some(now);
                self.tick(now);
            }
            (MemberState::Probation, false) => {
                self.state = MemberState::Failed;
                self.reason = "health checks failed during probation".into();
            }
            _ => {}
        }
    }

    /// Moves on with time; returns the state.
    pub fn tick(&mut self, now: Duration) -> MemberState {
        match self.state {
            MemberState::Starting if now >= self.start.saturating_add(self.window) => {
                self.state = MemberState::Failed;
                self.reason = format!(
                    "not healthy within the probation of {} ms",
                    self.window.as_millis()
                );
            }
            MemberState::Probation
                if self
                    .passing_since
                    .is_some_and(|s| now >= s.saturating_add(self.window)) =>
            {
                self.state = MemberState::Ok;
            }
            _ => {}
        }
        self.state
    }

    pub fn state(&self) -> MemberState {
        self.state
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When [`Probation::tick`] may change the state next.
    pub fn next_deadline(&self) -> Option<Duration> {
        match self.state {
            MemberState::Starting => Some(self.start.saturating_add(self.window)),
            MemberState::Probation => self.passing_since.map(|s| s.saturating_add(self.window)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn t(v: &str) -> Target {
        Target {
            version: v.into(),
            sha256: format!("{:0>64}", v.replace('.', "")),
        }
    }

    fn plan(units: &str) -> Plan {
        Plan {
            id: 1,
            artifact: "api".into(),
            target: t("2"),
            from: Some(t("1")),
            units: parse_units(units).expect("units"),
            probation: Duration::from_secs(30),
            max_failures: 0,
            rollback: true,
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("api-host{i}")).collect()
    }

    fn member(r: &Rollout, id: &str, sha: &str, state: MemberState, passing: bool) -> Member {
        Member {
            instance: id.into(),
            sha256: sha.into(),
            version: String::new(),
            state,
            rollout: Some(r.id),
            passing,
            reason: String::new(),
        }
    }

    #[test]
    fn units_parse_and_end_at_the_whole_fleet() {
        assert_eq!(
            parse_units("1,10%,50%").expect("ok"),
            vec![
                UnitSpec::Count(1),
                UnitSpec::Percent(10),
                UnitSpec::Percent(50),
                UnitSpec::Percent(100)
            ]
        );
        assert!(parse_units("0").is_err());
        assert!(parse_units("101%").is_err());
        assert!(parse_units("x").is_err());
        assert!(parse_units(&vec!["1"; 30].join(",")).is_err());
    }

    #[test]
    fn units_split_the_members_cumulatively() {
        let r = new_rollout(plan("1,10%,50%,100%"), &ids(100), "t0", "cli");
        assert_eq!(r.unit_sizes, vec![1, 9, 40, 50]);
        let mut per_unit = [0usize; 4];
        for id in ids(100) {
            per_unit[unit_of(&r, &id)] += 1;
        }
        assert_eq!(per_unit, [1, 9, 40, 50]);
        // Small fleets: empty units cover no instance.
        let r = new_rollout(plan("1,10%,50%,100%"), &ids(3), "t0", "cli");
        assert_eq!(r.unit_sizes, vec![1, 0, 1, 1]);
        assert_eq!(r.bounds[1], None);
    }

    #[test]
    fn units_follow_the_hash_order_for_members_and_newcomers() {
        let r = new_rollout(plan("1,25%,50%,100%"), &ids(8), "t0", "cli");
        // Members and instances that join later (not in the record) alike:
        // sorted by hash, their units never go down.
        let mut all: Vec<String> = ids(8);
        all.extend((0..50).map(|i| format!("api-new{i}")));
        all.sort_by_key(|i| instance_hash(i));
        let units: Vec<usize> = all.iter().map(|i| unit_of(&r, i)).collect();
        assert!(units.windows(2).all(|w| w[0] <= w[1]), "{units:?}");
        assert!(units.contains(&0));
        assert!(units.iter().all(|u| *u < 4));
    }

    #[test]
    fn no_member_completes_at_once() {
        let r = new_rollout(plan("1,100%"), &[], "t0", "cli");
        assert_eq!(r.state, State::Completed);
        assert_eq!(desired(Some(&r), "anyone"), Desired::Run(t("2")));
    }

    #[test]
    fn desired_follows_units_and_rollback() {
        let mut r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        let first = ids(4)
            .into_iter()
            .find(|i| unit_of(&r, i) == 0)
            .expect("a first unit");
        let other = ids(4)
            .into_iter()
            .find(|i| unit_of(&r, i) == 1)
            .expect("a second unit");
        assert_eq!(desired(Some(&r), &first), Desired::Run(t("2")));
        assert_eq!(desired(Some(&r), &other), Desired::Run(t("1")));
        r.state = State::RollingBack;
        assert_eq!(desired(Some(&r), &first), Desired::Run(t("1")));
        r.from = None;
        assert_eq!(desired(Some(&r), &first), Desired::Original);
        assert_eq!(desired(None, &first), Desired::Original);
    }

    #[test]
    fn the_gate_waits_for_probation_then_advances_to_completion() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        let tgt = r.target.sha256.clone();
        let old = t("1").sha256;
        let mk = |r: &Rollout, first_state: MemberState| -> Vec<Member> {
            ids(4)
                .iter()
                .map(|i| {
                    if unit_of(r, i) <= r.unit {
                        member(r, i, &tgt, first_state, true)
                    } else {
                        member(r, i, &old, MemberState::Ok, true)
                    }
                })
                .collect()
        };
        assert_eq!(
            evaluate(&r, &mk(&r, MemberState::Probation), "t1", "a"),
            None
        );
        let r2 = evaluate(&r, &mk(&r, MemberState::Ok), "t2", "a").expect("advances");
        assert_eq!((r2.state, r2.unit), (State::Rolling, 1));
        assert_eq!(
            evaluate(&r2, &mk(&r2, MemberState::Probation), "t3", "a"),
            None
        );
        let r3 = evaluate(&r2, &mk(&r2, MemberState::Ok), "t4", "a").expect("completes");
        assert_eq!(r3.state, State::Completed);
        assert_eq!(evaluate(&r3, &mk(&r3, MemberState::Ok), "t5", "a"), None);
    }

    #[test]
    fn a_failure_rolls_back_and_a_rollback_finishes() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        let first = ids(4)
            .into_iter()
            .find(|i| unit_of(&r, i) == 0)
            .expect("first");
        let mut bad = member(&r, &first, &r.target.sha256, MemberState::Failed, false);
        bad.reason = "health checks failed during probation".into();
        let r2 = evaluate(&r, std::slice::from_ref(&bad), "t1", "a").expect("fails");
        assert_eq!(r2.state, State::RollingBack);
        assert_eq!(r2.failures.len(), 1);
        // Still on the bad version: not rolled back yet.
        assert_eq!(evaluate(&r2, std::slice::from_ref(&bad), "t2", "a"), None);
        let back = member(&r2, &first, &t("1").sha256, MemberState::Ok, true);
        let r3 = evaluate(&r2, &[back], "t3", "a").expect("rolled back");
        assert_eq!(r3.state, State::RolledBack);
        // Without rollback, it stops.
        let mut p = plan("1,100%");
        p.rollback = false;
        let r = new_rollout(p, &ids(4), "t0", "cli");
        assert_eq!(
            evaluate(&r, &[bad], "t1", "a").map(|r| r.state),
            Some(State::Failed)
        );
    }

    #[test]
    fn failures_within_the_budget_are_recorded_and_skipped() {
        let mut p = plan("100%");
        p.max_failures = 1;
        let r = new_rollout(p, &ids(3), "t0", "cli");
        let tgt = r.target.sha256.clone();
        let ms = vec![
            member(&r, "api-host0", &tgt, MemberState::Failed, false),
            member(&r, "api-host1", &tgt, MemberState::Ok, true),
            member(&r, "api-host2", &tgt, MemberState::Ok, true),
        ];
        let r2 = evaluate(&r, &ms, "t1", "a").expect("completes");
        assert_eq!(r2.state, State::Completed);
        assert_eq!(r2.failures.len(), 1);
    }

    #[test]
    fn a_unit_with_no_live_proof_never_passes() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        // The canary's agent is gone: nobody proved the version.
        assert_eq!(evaluate(&r, &[], "t1", "a"), None);
        let w = waiting_for(&r, &[]);
        assert!(
            w.iter().any(|(_, why)| why.contains("no live instance")),
            "{w:?}"
        );
        // Every instance of the unit failed, even within the budget: it fails.
        let mut p = plan("2,100%");
        p.max_failures = 1000;
        let r = new_rollout(p, &ids(6), "t0", "cli");
        let tgt = r.target.sha256.clone();
        let ms: Vec<Member> = ids(6)
            .iter()
            .filter(|i| unit_of(&r, i) == 0)
            .map(|i| member(&r, i, &tgt, MemberState::Failed, false))
            .collect();
        assert_eq!(ms.len(), 2);
        assert_eq!(
            evaluate(&r, &ms, "t1", "a").map(|r| r.state),
            Some(State::RollingBack)
        );
    }

    #[test]
    fn many_failures_within_the_budget_write_once() {
        let mut p = plan("100%");
        p.max_failures = 1000;
        let all = ids(150);
        let r = new_rollout(p, &all, "t0", "cli");
        let tgt = r.target.sha256.clone();
        let mut ms: Vec<Member> = all
            .iter()
            .map(|i| member(&r, i, &tgt, MemberState::Failed, false))
            .collect();
        ms[0].state = MemberState::Probation;
        ms[0].passing = true;
        let r2 = evaluate(&r, &ms, "t1", "a").expect("records failures");
        assert_eq!(r2.failures.len(), RECORD_CAP);
        assert_eq!(r2.state, State::Rolling);
        // Nothing new: no write, however many evaluators look.
        assert_eq!(evaluate(&r2, &ms, "t2", "b"), None);
        // Failures count even once their instances are gone.
        let mut p = plan("100%");
        p.max_failures = 1;
        let r = new_rollout(p, &ids(3), "t0", "cli");
        let bad = |i: &str| member(&r, i, &tgt, MemberState::Failed, false);
        let ok = |i: &str| member(&r, i, &tgt, MemberState::Probation, true);
        let r2 = evaluate(
            &r,
            &[bad("api-host0"), ok("api-host1"), ok("api-host2")],
            "t1",
            "a",
        )
        .expect("recorded");
        assert_eq!(r2.state, State::Rolling);
        let r3 = evaluate(&r2, &[ok("api-host1"), bad("api-host2")], "t2", "a").expect("fails");
        assert_eq!(r3.state, State::RollingBack);
    }

    #[test]
    fn aborting_a_rollback_never_sends_anyone_forward() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        let first = ids(4)
            .into_iter()
            .find(|i| unit_of(&r, i) == 0)
            .expect("first");
        let back = act(&r, Action::Rollback, "t1", "me").expect("rollback");
        let ended = act(&back, Action::Abort, "t2", "me").expect("abort");
        assert_eq!(ended.state, State::RolledBack);
        assert_eq!(desired(Some(&ended), &first), Desired::Run(t("1")));
    }

    #[test]
    fn a_superseded_rollout_takes_no_action_and_does_not_move() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        assert!(supersede(&r, 2, "t1", "me").is_err());
        let mut done = r.clone();
        done.state = State::Failed;
        let s = supersede(&done, 2, "t1", "me").expect("supersede");
        assert_eq!(s.superseded_by, Some(2));
        assert!(act(&s, Action::Rollback, "t2", "me").is_err());
        assert!(supersede(&s, 3, "t2", "me").is_err());
        let mut moving = s.clone();
        moving.state = State::RollingBack;
        assert_eq!(evaluate(&moving, &[], "t3", "a"), None);
    }

    #[test]
    fn waiting_for_names_what_holds_the_gate() {
        let r = new_rollout(plan("100%"), &ids(2), "t0", "cli");
        let tgt = r.target.sha256.clone();
        let ms = vec![
            member(&r, "api-host0", &tgt, MemberState::Ok, false),
            member(&r, "api-host1", &tgt, MemberState::Probation, true),
        ];
        assert_eq!(evaluate(&r, &ms, "t1", "a"), None);
        let w = waiting_for(&r, &ms);
        assert_eq!(
            w,
            vec![
                ("api-host0".to_string(), "critical".to_string()),
                ("api-host1".to_string(), "probation".to_string())
            ]
        );
    }

    #[test]
    fn a_failure_of_another_rollout_does_not_count() {
        let r = new_rollout(plan("100%"), &ids(1), "t0", "cli");
        let mut m = member(&r, "api-host0", &t("1").sha256, MemberState::Failed, false);
        m.rollout = Some(0);
        assert_eq!(evaluate(&r, &[m], "t1", "a"), None);
    }

    #[test]
    fn actions_follow_the_states() {
        let r = new_rollout(plan("1,100%"), &ids(4), "t0", "cli");
        let p = act(&r, Action::Pause, "t1", "me").expect("pause");
        assert_eq!(p.state, State::Paused);
        assert!(act(&p, Action::Pause, "t1", "me").is_err());
        assert_eq!(evaluate(&p, &[], "t2", "a"), None);
        let q = act(&p, Action::Resume, "t2", "me").expect("resume");
        assert_eq!(q.state, State::Rolling);
        let a = act(&q, Action::Abort, "t3", "me").expect("abort");
        assert!(act(&a, Action::Abort, "t3", "me").is_err());
        let b = act(&a, Action::Rollback, "t4", "me").expect("rollback");
        assert_eq!(b.state, State::RollingBack);
        assert!(act(&b, Action::Rollback, "t4", "me").is_err());
        assert_eq!(from_for_next(Some(&b)), Some(t("1")));
        let mut c = r.clone();
        c.state = State::Completed;
        assert_eq!(from_for_next(Some(&c)), Some(t("2")));
        assert_eq!(from_for_next(None), None);
    }

    #[test]
    fn records_round_trip_and_hostile_ones_are_refused() {
        let r = new_rollout(plan("1,10%,100%"), &ids(20), "t0", "cli");
        let json = encode(&r);
        assert_eq!(decode("api", 1, &json).expect("decodes"), r);
        assert!(decode("api", 2, &json).is_err());
        assert!(decode("other", 1, &json).is_err());
        assert!(decode("api", 1, "{").is_err());
        assert!(
            decode(
                "api",
                1,
                &json.replace("\"units\":[\"1\"", "\"units\":[\"0\"")
            )
            .is_err()
        );
        assert!(
            decode(
                "api",
                1,
                &json.replace("\"version\":\"2\"", "\"version\":\"\\u001b[2J\"")
            )
            .is_err()
        );
        assert_eq!(parse_rollout_key("api", &rollout_key("api", 7)), Some(7));
        assert_eq!(parse_rollout_key("api", "_fleet/rollouts/api/x"), None);
        assert_eq!(
            parse_rollout_key("api", "_fleet/rollouts/api2/00000001"),
            None
        );
    }

    #[test]
    fn member_tags_round_trip() {
        let m = Member {
            instance: "api-host1".into(),
            sha256: "a".repeat(64),
            version: "1.2".into(),
            state: MemberState::Failed,
            rollout: Some(3),
            passing: false,
            reason: "bad\nthing".into(),
        };
        let tags = member_tags(&m);
        let back = parse_member("api", "api.api-host1", &tags, false).expect("parses");
        assert_eq!(back.reason, "bad thing");
        assert_eq!(back.rollout, Some(3));
        assert_eq!(back.state, MemberState::Failed);
        assert_eq!(parse_member("api", "apix.host", &tags, false), None);
        assert_eq!(parse_member("api", "api.h", &["sha=zz".into()], true), None);
        assert!(valid_name("api-1.2_x"));
        assert!(!valid_name(".x") && !valid_name("a/b") && !valid_name(""));
    }

    #[test]
    fn probation_with_a_fake_clock() {
        let s = Duration::from_secs;
        let mut p = Probation::new(s(10), s(0));
        assert_eq!(p.tick(s(5)), MemberState::Starting);
        assert_eq!(p.next_deadline(), Some(s(10)));
        p.health(true, s(6));
        assert_eq!(p.tick(s(15)), MemberState::Probation);
        assert_eq!(p.tick(s(16)), MemberState::Ok);
        // Once ok, health no longer fails the probation.
        p.health(false, s(17));
        assert_eq!(p.state(), MemberState::Ok);
        // Unhealthy during probation.
        let mut p = Probation::new(s(10), s(0));
        p.health(true, s(1));
        p.health(false, s(2));
        assert_eq!(p.tick(s(3)), MemberState::Failed);
        assert!(p.reason().contains("during probation"));
        // Never healthy.
        let mut p = Probation::new(s(10), s(0));
        assert_eq!(p.tick(s(10)), MemberState::Failed);
        assert!(p.reason().contains("not healthy within"));
        // A zero window passes at the first healthy reading.
        let mut p = Probation::new(s(0), s(0));
        p.health(true, s(0));
        assert_eq!(p.state(), MemberState::Ok);
    }
}
