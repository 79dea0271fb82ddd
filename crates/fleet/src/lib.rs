//! The fleet's read models and operations over a `&dyn Catalog`: what `autopilot`'s read commands and the cockpit both show and do (one source of truth).
//!
//! Every read takes the catalog and returns a `Serialize` type (or the JSON
//! value the CLI prints with `-o json`, byte for byte); every operation
//! writes an intent or a record and returns what it wrote, or a
//! [`FleetError`] the CLI maps to an exit code and the cockpit to an HTTP
//! status. Nothing here waits for agents, and nothing sets a deadline: the
//! caller bounds each call (the CLI with `--timeout`, the cockpit with its
//! request deadline). Everything read back is untrusted catalog data: it is
//! parsed leniently, skipped or reported when it does not parse, and never
//! panics.

pub mod artifacts;
pub mod audit;
pub mod clusters;
pub mod error;
pub mod kv;
pub mod nodes;
pub mod overview;
pub mod repairs;
pub mod rollouts;
pub mod services;
pub mod snapshots;
pub mod watchdogs;

pub use error::FleetError;

/// The result of every fleet function.
pub type Result<T> = std::result::Result<T, FleetError>;

/// A value quoted for a message, JSON-style (`"a\tb"`), never Rust's debug form.
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A tag's value (`key=value`) among an entry's tags; the first wins.
pub(crate) fn tag<'a>(tags: &'a [String], key: &str) -> Option<&'a str> {
    tags.iter()
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim())
}

/// A name usable as one key component: not empty, at most 256 bytes, no
/// `/`, not `.` or `..`, no control characters.
pub(crate) fn check_component(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 256
        || s.contains('/')
        || s == "."
        || s == ".."
        || s.chars().any(char::is_control)
    {
        return Err(FleetError::Invalid(format!(
            "invalid {what} {}: one printable path component",
            quote(s)
        )));
    }
    Ok(())
}

/// `n` hex digits (n ≤ 16) no caller can predict: std's per-process random
/// hash keys over the time, the process and a counter.
pub(crate) fn random_hex(n: usize) -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = std::hash::RandomState::new().hash_one((nanos, std::process::id(), seq));
    let s = format!("{h:016x}");
    s.get(..n.min(16)).unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests;
