//! The imperative shell around the core: the event loop and its I/O adapters.

pub mod agent;
pub mod announce;
pub mod catalog;
pub mod cluster;
pub mod control;
pub mod dns;
#[cfg(test)]
mod election_tests;
pub mod fleet;
pub mod fsutil;
pub mod interfaces;
pub mod listen;
pub mod logging;
pub mod metered;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod procstat;
pub mod repair;
pub mod snapshots;
pub mod telemetry;
pub mod templates;
pub mod trim;
pub mod watchdog;

pub use agent::{AgentError, Options, run};
pub use listen::raise_nofile_limit;
