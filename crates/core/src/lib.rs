//! The pure core of the agent: events, job specifications and the supervisor state machine.
//!
//! Nothing here performs I/O or reads a clock; see `ARCHITECTURE.md`.

// Times and counters come from configs and the clock: no silent wrap or
// truncation (see ARCHITECTURE.md, "Lints").
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    clippy::arithmetic_side_effects
)]

pub mod announce;
pub mod cluster;
pub mod event;
pub mod intent;
pub mod machine;
pub mod repair;
pub mod rollout;
pub mod spec;
pub mod watch;

pub use event::{Event, EventCode};
pub use machine::{
    Action, ExitStatus, HealthStatus, Input, JobView, Machine, Phase, ProcKind, Role, RunId, Sig,
    StopReason,
};
pub use spec::{
    Backoff, ElectionSpec, EntryStatus, HealthCheck, HealthSpec, JobSpec, Restarts, RoleSpec,
    Roles, SnapshotSpec, Trigger, main_job,
};
pub use watch::{Endpoint, WatchState};

// Tests compute fake times with plain arithmetic.
#[cfg(test)]
#[allow(
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod tests;
