//! The pure core of the agent: events, job specifications and the supervisor state machine.
//!
//! Nothing here performs I/O or reads a clock; see `ARCHITECTURE.md`.

pub mod event;
pub mod machine;
pub mod spec;
pub mod watch;

pub use event::{Event, EventCode};
pub use machine::{
    Action, ExitStatus, HealthStatus, Input, JobView, Machine, Phase, ProcKind, Role, RunId, Sig,
    StopReason,
};
pub use spec::{
    Backoff, ElectionSpec, EntryStatus, HealthSpec, JobSpec, Restarts, RoleSpec, Roles,
    SnapshotSpec, Trigger, main_job,
};
pub use watch::{Endpoint, WatchState};

#[cfg(test)]
mod tests;
