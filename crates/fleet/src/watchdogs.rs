//! Watchdogs: the `_watchdogs` entries agents publish (id `<host>.<watchdog>`; tags `watchdog=`, `status=`, `message=`, `since=`, `job=`), read leniently.

use autopilot_catalog::{Catalog, Instance};
use autopilot_core::repair::{WATCHDOG_SERVICE, clean};
use serde::Serialize;

use crate::Result;
use crate::error::catalog;

/// One watchdog on one node, as read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchdogView {
    /// The entry's id (`<host>.<watchdog>`).
    pub id: String,
    /// The host (the id without `.<watchdog>`).
    pub node: String,
    pub watchdog: String,
    /// `ok`, `warning` or `error` as the agent tagged it (else the entry's status).
    pub status: String,
    /// The catalog status of the entry: passing, warning or critical.
    pub health: String,
    pub message: Option<String>,
    pub since: Option<String>,
    pub job: Option<String>,
    pub last_heartbeat: String,
}

impl WatchdogView {
    /// Reads an entry leniently: every text is cleaned, a missing tag is
    /// absent (the name falls back to the id's part after the host).
    pub fn parse(i: &Instance) -> WatchdogView {
        let tag = |k: &str| crate::tag(&i.tags, k).map(clean);
        // A host name may hold dots: the watchdog's name is the suffix.
        let named = crate::tag(&i.tags, "watchdog")
            .and_then(|w| i.id.strip_suffix(w)?.strip_suffix('.'))
            .filter(|n| !n.is_empty());
        let (node, rest) = match named {
            Some(n) => (n, ""),
            None => i.id.split_once('.').unwrap_or((i.id.as_str(), "")),
        };
        WatchdogView {
            id: clean(&i.id),
            node: clean(node),
            watchdog: tag("watchdog").unwrap_or_else(|| clean(rest)),
            status: tag("status").unwrap_or_else(|| i.status.as_str().to_string()),
            health: i.status.as_str().to_string(),
            message: tag("message").filter(|m| !m.is_empty()),
            since: tag("since"),
            job: tag("job").filter(|j| !j.is_empty()),
            last_heartbeat: clean(&i.last_heartbeat),
        }
    }
}

/// Every watchdog entry, by id.
pub async fn list(cat: &dyn Catalog) -> Result<Vec<WatchdogView>> {
    let mut out: Vec<WatchdogView> = cat
        .instances_with_heartbeats(WATCHDOG_SERVICE)
        .await
        .map_err(catalog("reading the watchdog entries"))?
        .iter()
        .map(WatchdogView::parse)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
