//! Snapshots: each set's index (`snapshots/<set>/index`: the recorded snapshots, newest first, as JSON), read leniently.

use autopilot_catalog::Catalog;
use autopilot_core::repair::clean;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::catalog;

pub const PREFIX: &str = "snapshots/";
/// Snapshots shown per set.
pub const SHOWN: usize = 50;
/// The largest index read (bytes).
pub const INDEX_CAP: usize = 1024 * 1024;

/// One recorded snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub sha256: String,
    pub size: u64,
    pub created_ms: u64,
    /// The instance that took it.
    pub by: String,
}

/// One snapshot set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotSet {
    pub set: String,
    pub count: usize,
    /// Newest first, at most [`SHOWN`].
    pub snapshots: Vec<Snapshot>,
    /// The index exists but does not read as a list of snapshots.
    pub unreadable: bool,
    /// The node that bootstrapped the set fresh, if recorded.
    pub bootstrap: Option<String>,
}

/// Every set with an index, by name.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<SnapshotSet>> {
    let all = cat
        .kv_list(PREFIX)
        .await
        .map_err(catalog(format!("listing {PREFIX}")))?;
    let mut out = Vec::new();
    for (k, v) in &all {
        let Some(set) = k
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix("/index"))
            .filter(|s| !s.is_empty() && !s.contains('/'))
        else {
            continue;
        };
        let parsed = (v.len() <= INDEX_CAP)
            .then(|| serde_json::from_str::<Vec<Snapshot>>(v).ok())
            .flatten();
        let bootstrap_key = format!("{PREFIX}{set}/bootstrap");
        let bootstrap = all
            .iter()
            .find(|(k, _)| *k == bootstrap_key)
            .map(|(_, v)| clean(v));
        let unreadable = parsed.is_none();
        let list = parsed.unwrap_or_default();
        out.push(SnapshotSet {
            set: clean(set),
            count: list.len(),
            snapshots: list
                .into_iter()
                .take(SHOWN)
                .map(|s| Snapshot {
                    sha256: clean(&s.sha256),
                    by: clean(&s.by),
                    ..s
                })
                .collect(),
            unreadable,
            bootstrap,
        });
    }
    out.sort_by(|a, b| a.set.cmp(&b.set));
    Ok(out)
}
