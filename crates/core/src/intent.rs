//! The node's fleet-facing state: the maintenance intent (`_fleet/maintenance/<node>`) read leniently and what the agent does with it, the `_nodes` entry's tags, and the node's health log (`_fleet/health/<node>`).
//!
//! Pure: the runtime reads and writes the keys under deadlines; this module
//! decodes, decides and encodes.

use serde::{Deserialize, Serialize};

/// The reserved service of the node entries (one per agent, id = node).
pub const NODES_SERVICE: &str = "_nodes";
/// The largest intent value read; a bigger one is ignored as hostile.
pub const MAX_INTENT_BYTES: usize = 64 * 1024;
/// The longest intent `id` and `by` accepted.
const MAX_ID: usize = 128;
const MAX_BY: usize = 256;
/// Health transitions kept per node.
pub const HEALTH_KEEP: usize = 50;

/// The key of a node's maintenance intent.
pub fn maintenance_key(node: &str) -> String {
    format!("_fleet/maintenance/{node}")
}

/// The key of a node's health log.
pub fn health_key(node: &str) -> String {
    format!("_fleet/health/{node}")
}

/// A maintenance intent as written by `fleet::nodes::request_maintenance`
/// and completed by the node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub on: bool,
    pub id: String,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub applied_ms: Option<u64>,
    #[serde(default)]
    pub applied_by: Option<String>,
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("the intent is {0} bytes; at most {MAX_INTENT_BYTES}")]
    TooBig(usize),
    #[error("the intent is not valid JSON of the expected shape: {0}")]
    Shape(String),
    #[error("the intent's {field} is invalid: {why}")]
    Field { field: &'static str, why: String },
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Decodes an intent value; anything unusual is an error, never a panic.
pub fn decode(raw: &str) -> Result<Intent, IntentError> {
    if raw.len() > MAX_INTENT_BYTES {
        return Err(IntentError::TooBig(raw.len()));
    }
    let i: Intent = serde_json::from_str(raw).map_err(|e| IntentError::Shape(e.to_string()))?;
    if i.id.is_empty() || i.id.len() > MAX_ID || !printable(&i.id) {
        return Err(IntentError::Field {
            field: "id",
            why: format!("it must be 1-{MAX_ID} printable characters"),
        });
    }
    if i.by.len() > MAX_BY || !printable(&i.by) {
        return Err(IntentError::Field {
            field: "by",
            why: format!("it must be at most {MAX_BY} printable characters"),
        });
    }
    Ok(i)
}

/// The intent `raw` with the agent's record of carrying it out; other
/// fields (including ones this version does not know) are kept as they are.
pub fn record(
    raw: &str,
    applied_ms: u64,
    applied_by: &str,
    outcome: &str,
) -> Result<String, IntentError> {
    if raw.len() > MAX_INTENT_BYTES {
        return Err(IntentError::TooBig(raw.len()));
    }
    let mut v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| IntentError::Shape(e.to_string()))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(IntentError::Shape("not a JSON object".into()));
    };
    obj.insert("applied_ms".into(), applied_ms.into());
    obj.insert("applied_by".into(), applied_by.into());
    obj.insert("outcome".into(), outcome.into());
    Ok(v.to_string())
}

/// What the agent does after reading its intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Enter (`true`) or leave maintenance, then record the outcome.
    Apply { on: bool },
    /// Already applied by this agent, not yet recorded by this session.
    Record,
    /// Nothing to do.
    Nothing,
    /// A value that cannot be an intent: log it (with a count) and ignore it.
    Ignore(String),
}

/// Decides what to do with the intent read (`Ok(None)`: no key).
///
/// `last_applied` is the id this agent last applied, `starting` whether it
/// has not applied any intent since it started: at start the intent is the
/// desired state and is applied whatever its id (it survives restarts). A
/// local `autopilot maintenance` stands until an intent with a new id.
/// `recorded` is the id this session last recorded: an intent recorded by
/// another session is recorded once more under this one (a restarted agent
/// says it applied it), and then left alone, so two agents that share a
/// node name never rewrite each other's record in turn.
pub fn decide(
    read: Result<Option<&Intent>, &IntentError>,
    last_applied: Option<&str>,
    starting: bool,
    recorded: Option<&str>,
    session: &str,
) -> Decision {
    let intent = match read {
        Err(e) => return Decision::Ignore(e.to_string()),
        Ok(None) => return Decision::Nothing,
        Ok(Some(i)) => i,
    };
    if starting || last_applied != Some(intent.id.as_str()) {
        return Decision::Apply { on: intent.on };
    }
    let theirs = intent.applied_by.as_deref() != Some(session);
    if intent.outcome.is_none() || (theirs && recorded != Some(intent.id.as_str())) {
        return Decision::Record;
    }
    Decision::Nothing
}

/// What the `_nodes` entry of an agent shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub maintenance: bool,
    pub version: String,
    /// RFC 3339.
    pub started: String,
    pub session: String,
    pub jobs: Vec<String>,
}

impl NodeView {
    /// The entry's tags, in a fixed order.
    pub fn tags(&self) -> Vec<String> {
        let mut tags = vec![
            format!("maintenance={}", self.maintenance),
            format!("version={}", self.version),
            format!("started={}", self.started),
            format!("session={}", self.session),
        ];
        tags.extend(self.jobs.iter().map(|j| format!("job={j}")));
        tags
    }

    /// A node in maintenance shows `warning` (its entry stays, so a person
    /// can turn maintenance off); else `passing`.
    pub fn warning(&self) -> bool {
        self.maintenance
    }
}

/// One job health transition in a node's health log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTransition {
    pub job: String,
    pub status: String,
    pub at_ms: u64,
}

/// The health log `existing` (absent or unreadable: empty) with `t`
/// appended, newest last, keeping the newest [`HEALTH_KEEP`].
pub fn push_health(existing: Option<&str>, t: HealthTransition) -> String {
    let mut log: Vec<HealthTransition> = existing
        .filter(|s| s.len() <= MAX_INTENT_BYTES)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    log.push(t);
    let extra = log.len().saturating_sub(HEALTH_KEEP);
    log.drain(..extra);
    serde_json::to_string(&log).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn intent(on: bool, id: &str) -> Intent {
        Intent {
            on,
            id: id.into(),
            by: "ops".into(),
            at_ms: 1,
            applied_ms: None,
            applied_by: None,
            outcome: None,
        }
    }

    #[test]
    fn decodes_the_contract_shape_and_refuses_hostile_values() {
        let raw = r#"{"on": true, "id": "00112233aabbccdd", "by": "alice", "at_ms": 5,
                      "applied_ms": null, "applied_by": null, "outcome": null}"#;
        let i = decode(raw).unwrap();
        assert!(i.on);
        assert_eq!(i.id, "00112233aabbccdd");
        assert_eq!(i.applied_by, None);
        for bad in [
            "",
            "garbage",
            "[]",
            "null",
            r#"{"on": "yes", "id": "x"}"#,
            r#"{"on": true}"#,
            r#"{"on": true, "id": ""}"#,
            r#"{"on": true, "id": "a\u0000b"}"#,
            r#"{"on": true, "id": 7}"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
        let huge = format!(
            r#"{{"on": true, "id": "x", "by": "{}"}}"#,
            "a".repeat(MAX_INTENT_BYTES)
        );
        assert_eq!(decode(&huge), Err(IntentError::TooBig(huge.len())));
        let deep = "[".repeat(10_000);
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn recording_keeps_unknown_fields() {
        let raw = r#"{"on":false,"id":"a","by":"b","at_ms":3,"extra":{"k":1}}"#;
        let out = record(raw, 9, "h1/7/8", "applied").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["extra"]["k"], 1);
        assert_eq!(v["applied_ms"], 9);
        assert_eq!(v["applied_by"], "h1/7/8");
        assert_eq!(v["outcome"], "applied");
        assert_eq!(decode(&out).unwrap().outcome.as_deref(), Some("applied"));
        assert!(record("[1]", 1, "s", "applied").is_err());
    }

    #[test]
    fn decisions() {
        let s = "h1/1/1";
        let on = intent(true, "a");
        // At start the intent is applied whatever was applied before.
        assert_eq!(
            decide(Ok(Some(&on)), None, true, None, s),
            Decision::Apply { on: true }
        );
        assert_eq!(
            decide(Ok(Some(&on)), Some("a"), true, Some("a"), s),
            Decision::Apply { on: true }
        );
        // Applied, not recorded yet.
        assert_eq!(
            decide(Ok(Some(&on)), Some("a"), false, None, s),
            Decision::Record
        );
        let mut done = on.clone();
        done.applied_by = Some(s.into());
        done.outcome = Some("applied".into());
        done.applied_ms = Some(2);
        assert_eq!(
            decide(Ok(Some(&done)), Some("a"), false, Some("a"), s),
            Decision::Nothing
        );
        // Recorded by an earlier session of this node (a restart): this
        // session records it once.
        let mut theirs = done.clone();
        theirs.applied_by = Some("h1/2/2".into());
        assert_eq!(
            decide(Ok(Some(&theirs)), Some("a"), false, None, s),
            Decision::Record
        );
        // Then left alone, even when a second agent with this node's name
        // records it again: the two never rewrite it in turn.
        assert_eq!(
            decide(Ok(Some(&theirs)), Some("a"), false, Some("a"), s),
            Decision::Nothing
        );
        // A new id is applied.
        let off = intent(false, "b");
        assert_eq!(
            decide(Ok(Some(&off)), Some("a"), false, None, s),
            Decision::Apply { on: false }
        );
        assert_eq!(
            decide(Ok(None), Some("a"), false, None, s),
            Decision::Nothing
        );
        assert_eq!(decide(Ok(None), None, true, None, s), Decision::Nothing);
        let err = IntentError::Shape("x".into());
        assert!(matches!(
            decide(Err(&err), Some("a"), false, None, s),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn node_tags() {
        let v = NodeView {
            maintenance: true,
            version: "0.1.0".into(),
            started: "2026-01-01T00:00:00.000Z".into(),
            session: "h1/2/3".into(),
            jobs: vec!["db".into(), "web".into()],
        };
        assert_eq!(
            v.tags(),
            [
                "maintenance=true",
                "version=0.1.0",
                "started=2026-01-01T00:00:00.000Z",
                "session=h1/2/3",
                "job=db",
                "job=web"
            ]
        );
        assert!(v.warning());
    }

    #[test]
    fn health_log_keeps_the_newest() {
        let t = |n: u64| HealthTransition {
            job: "db".into(),
            status: if n.is_multiple_of(2) {
                "healthy"
            } else {
                "unhealthy"
            }
            .into(),
            at_ms: n,
        };
        let mut log = push_health(Some("not json"), t(0));
        for n in 1..60 {
            log = push_health(Some(&log), t(n));
        }
        let v: Vec<HealthTransition> = serde_json::from_str(&log).unwrap();
        assert_eq!(v.len(), HEALTH_KEEP);
        assert_eq!(v.first().unwrap().at_ms, 10);
        assert_eq!(v.last().unwrap().at_ms, 59);
    }
}
