//! Key/value listing for people: keys under a prefix with their values, each cut at 4 KiB, at most 1000 entries.

use autopilot_catalog::Catalog;
use serde::Serialize;

use crate::error::catalog;
use crate::{FleetError, Result};

/// The most entries one listing returns.
pub const LIMIT_MAX: usize = 1000;
/// Values longer than this (bytes) are cut.
pub const VALUE_CAP: usize = 4096;
/// The longest prefix accepted.
pub const PREFIX_CAP: usize = 1024;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    /// The value, cut at [`VALUE_CAP`] bytes (on a character boundary).
    pub value: String,
    /// The value was cut.
    pub truncated: bool,
    /// The value's full length in bytes.
    pub size: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KvList {
    pub prefix: String,
    pub entries: Vec<KvEntry>,
    /// Keys under the prefix in all.
    pub total: usize,
    /// More keys exist than were returned.
    pub truncated: bool,
}

/// `s` cut to at most `cap` bytes on a character boundary.
pub fn cut(s: &str, cap: usize) -> (&str, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while end > 0 && !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    (s.get(..end).unwrap_or(""), true)
}

/// The number of entries a listing asked for `limit` returns at most:
/// `limit` up to [`LIMIT_MAX`]; 0 means [`LIMIT_MAX`].
pub fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        LIMIT_MAX
    } else {
        limit.min(LIMIT_MAX)
    }
}

/// Keys under `prefix` by name with their values; `limit` is at most
/// [`LIMIT_MAX`] (0 or more: [`LIMIT_MAX`]).
pub async fn list(cat: &dyn Catalog, prefix: &str, limit: usize) -> Result<KvList> {
    if prefix.len() > PREFIX_CAP || prefix.chars().any(char::is_control) {
        return Err(FleetError::Invalid(format!(
            "invalid prefix: at most {PREFIX_CAP} bytes, no control characters"
        )));
    }
    let limit = effective_limit(limit);
    let mut all = cat
        .kv_list(prefix)
        .await
        .map_err(catalog(format!("listing {}", crate::quote(prefix))))?;
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let total = all.len();
    let entries = all
        .iter()
        .take(limit)
        .map(|(k, v)| {
            let (value, truncated) = cut(v, VALUE_CAP);
            KvEntry {
                key: k.clone(),
                value: value.to_string(),
                truncated,
                size: v.len(),
            }
        })
        .collect();
    Ok(KvList {
        prefix: prefix.to_string(),
        entries,
        total,
        truncated: total > limit,
    })
}
