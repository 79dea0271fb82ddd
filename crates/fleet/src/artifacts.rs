//! Artifacts: the records `_fleet/artifacts/<name>/<version>` (read with `autopilot_artifact`'s functions): every artifact with its newest version, and one artifact's versions.

use std::collections::BTreeSet;

use autopilot_artifact::Record;
use autopilot_catalog::Catalog;
use autopilot_core::rollout::{ARTIFACTS_PREFIX, clean, valid_name};
use serde::Serialize;

use crate::error::catalog;
use crate::{FleetError, Result};

/// At most this many artifacts are listed.
pub const CAP: usize = 500;

/// One artifact in a list.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSummary {
    pub name: String,
    pub versions: usize,
    /// The newest version recorded.
    pub latest: Option<Record>,
    /// Records that could not be read.
    pub unreadable: usize,
}

/// One artifact's versions, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub name: String,
    pub versions: Vec<Record>,
    /// Why each unreadable record was skipped.
    pub unreadable: Vec<String>,
}

fn artifact_error(e: autopilot_artifact::Error) -> FleetError {
    match e {
        autopilot_artifact::Error::Catalog(source) => FleetError::Catalog {
            context: "reading artifact records".into(),
            source,
        },
        autopilot_artifact::Error::BadName { .. } => FleetError::Invalid(e.to_string()),
        other => FleetError::Refused(clean(&other.to_string())),
    }
}

/// One artifact's versions; `NotFound` when none is recorded.
pub async fn versions(cat: &dyn Catalog, name: &str) -> Result<Versions> {
    let (good, bad) = autopilot_artifact::list_report(cat, name)
        .await
        .map_err(artifact_error)?;
    if good.is_empty() && bad.is_empty() {
        return Err(FleetError::NotFound(format!(
            "no artifact {} in catalog {}",
            crate::quote(name),
            cat.url()
        )));
    }
    Ok(Versions {
        name: name.to_string(),
        versions: good,
        unreadable: bad.iter().map(|e| clean(&e.to_string())).collect(),
    })
}

/// Every artifact with records, by name.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<ArtifactSummary>> {
    let keys = cat
        .kv_list(ARTIFACTS_PREFIX)
        .await
        .map_err(catalog(format!("listing {ARTIFACTS_PREFIX}")))?;
    let names: BTreeSet<&str> = keys
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(ARTIFACTS_PREFIX)?.split_once('/'))
        .map(|(n, _)| n)
        .filter(|n| valid_name(n))
        .collect();
    let mut out = Vec::new();
    for name in names.into_iter().take(CAP) {
        let (good, bad) = autopilot_artifact::list_report(cat, name)
            .await
            .map_err(artifact_error)?;
        out.push(ArtifactSummary {
            name: name.to_string(),
            versions: good.len(),
            latest: good.into_iter().next(),
            unreadable: bad.len(),
        });
    }
    Ok(out)
}
