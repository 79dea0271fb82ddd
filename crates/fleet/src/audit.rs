//! The audit log of actions taken through the cockpit: one record per action at `_fleet/audit/<at ms, 13 digits>-<8 hex>`, pruned to the newest 1000 by the writer, listed newest first.

use autopilot_catalog::{Catalog, now_ms};
use autopilot_core::repair::clean;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::catalog;
use crate::{FleetError, Result};

pub const PREFIX: &str = "_fleet/audit/";
/// Records kept: the writer deletes older ones.
pub const KEEP: usize = 1000;
/// The largest record read or written (bytes).
pub const RECORD_CAP: usize = 16 * 1024;
/// The longest `who`, `action`, `target` or `outcome` kept (bytes); longer
/// ones are cut, so a hostile target never keeps an action out of the log.
pub const FIELD_CAP: usize = 1024;
/// The largest `params` kept (bytes, as JSON); larger ones are replaced by
/// a note of their size.
pub const PARAMS_CAP: usize = 8 * 1024;

/// One action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who acted (the token's name).
    pub who: String,
    /// What was done (`maintenance`, `switchover`, `pause`, `rollout.start`, ...).
    pub action: String,
    /// What it was done to (a node, an election, an artifact).
    pub target: String,
    #[serde(default)]
    pub params: Value,
    /// `accepted`, `refused: ...`, or `unknown: ...` when the catalog did
    /// not answer in time (the intent may or may not be written).
    pub outcome: String,
}

impl AuditEntry {
    /// An entry stamped now, its fields cut to [`FIELD_CAP`] and its params
    /// to [`PARAMS_CAP`] so that it always fits in [`RECORD_CAP`].
    pub fn new(who: &str, action: &str, target: &str, params: Value, outcome: &str) -> AuditEntry {
        let field = |s: &str| crate::kv::cut(s, FIELD_CAP).0.to_string();
        let size = serde_json::to_string(&params).map_or(usize::MAX, |s| s.len());
        let params = if size > PARAMS_CAP {
            serde_json::json!({ "cut": true, "bytes": size })
        } else {
            params
        };
        AuditEntry {
            at_ms: now_ms(),
            who: field(who),
            action: field(action),
            target: field(target),
            params,
            outcome: field(outcome),
        }
    }
}

/// A record as listed, with its key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub key: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// The audit log, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditList {
    pub entries: Vec<AuditRecord>,
    /// Records that could not be read and were skipped.
    pub unreadable: usize,
}

/// The key of a record written at `at_ms`.
pub fn key(at_ms: u64, suffix: &str) -> String {
    format!("{PREFIX}{at_ms:013}-{suffix}")
}

/// Writes one record (a new key, never overwriting) and prunes the log to
/// the newest [`KEEP`]; returns the record's key.
pub async fn record(cat: &dyn Catalog, entry: &AuditEntry) -> Result<String> {
    let value = serde_json::to_string(entry)
        .map_err(|e| FleetError::Invalid(format!("encoding an audit record: {e}")))?;
    if value.len() > RECORD_CAP {
        return Err(FleetError::Invalid(format!(
            "audit record larger than {RECORD_CAP} bytes"
        )));
    }
    let mut written = None;
    for _ in 0..5 {
        let k = key(entry.at_ms, &crate::random_hex(8));
        if cat
            .kv_cas(&k, None, &value)
            .await
            .map_err(catalog(format!("writing {k}")))?
        {
            written = Some(k);
            break;
        }
    }
    let Some(k) = written else {
        return Err(FleetError::Contended {
            key: key(entry.at_ms, "*"),
            attempts: 5,
        });
    };
    prune(cat, KEEP).await?;
    Ok(k)
}

/// Deletes all but the newest `keep` records (keys sort by time).
pub async fn prune(cat: &dyn Catalog, keep: usize) -> Result<usize> {
    let mut keys: Vec<String> = cat
        .kv_list(PREFIX)
        .await
        .map_err(catalog(format!("listing {PREFIX}")))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    let extra = keys.len().saturating_sub(keep);
    for k in keys.iter().take(extra) {
        cat.kv_delete(k)
            .await
            .map_err(catalog(format!("deleting {k}")))?;
    }
    Ok(extra)
}

/// The newest `limit` records (at most [`KEEP`]; 0: [`KEEP`]), newest
/// first; unreadable ones are counted and skipped.
pub async fn list(cat: &dyn Catalog, limit: usize) -> Result<AuditList> {
    let limit = if limit == 0 { KEEP } else { limit.min(KEEP) };
    let mut all = cat
        .kv_list(PREFIX)
        .await
        .map_err(catalog(format!("listing {PREFIX}")))?;
    all.sort_by(|a, b| b.0.cmp(&a.0));
    let mut entries = Vec::new();
    let mut unreadable = 0usize;
    for (k, v) in all {
        if entries.len() >= limit {
            break;
        }
        let parsed = (v.len() <= RECORD_CAP)
            .then(|| serde_json::from_str::<AuditEntry>(&v).ok())
            .flatten();
        match parsed {
            Some(mut e) => {
                e.who = clean(&e.who);
                e.action = clean(&e.action);
                e.target = clean(&e.target);
                e.outcome = clean(&e.outcome);
                entries.push(AuditRecord {
                    key: clean(&k),
                    entry: e,
                });
            }
            None => unreadable = unreadable.saturating_add(1),
        }
    }
    Ok(AuditList {
        entries,
        unreadable,
    })
}
