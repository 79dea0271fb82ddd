//! Events on the agent's bus: their codes, sources and names as configs spell them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventCode {
    Startup,
    Shutdown,
    ExitSuccess,
    ExitFailed,
    Healthy,
    Unhealthy,
    Changed,
    Stopping,
    Stopped,
    EnterMaintenance,
    ExitMaintenance,
    /// A signal event; the source names the signal (`SIGHUP`, `SIGUSR2`).
    Signal,
    /// A job's `when.timeout` expired before its event arrived.
    TimerExpired,
    /// The job won its election.
    Elected,
    /// The job stopped being leader (resigned, or could not renew in time).
    Demoted,
    /// The leader of the job's election changed.
    LeaderChanged,
    /// A repair step (restart, reimage, replace) began on the job.
    RepairStarted,
    /// The job passed its probation after a repair: healthy again.
    RepairFinished,
    /// A repair step did not bring the job back (or could not run).
    RepairFailed,
    /// The job needs a repair but the service's repair budget is taken:
    /// published once per exhaustion, fleet-wide, by the agent that noticed.
    RepairBudgetExhausted,
}

impl EventCode {
    pub const ALL: [EventCode; 20] = [
        EventCode::Startup,
        EventCode::Shutdown,
        EventCode::ExitSuccess,
        EventCode::ExitFailed,
        EventCode::Healthy,
        EventCode::Unhealthy,
        EventCode::Changed,
        EventCode::Stopping,
        EventCode::Stopped,
        EventCode::EnterMaintenance,
        EventCode::ExitMaintenance,
        EventCode::Signal,
        EventCode::TimerExpired,
        EventCode::Elected,
        EventCode::Demoted,
        EventCode::LeaderChanged,
        EventCode::RepairStarted,
        EventCode::RepairFinished,
        EventCode::RepairFailed,
        EventCode::RepairBudgetExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventCode::Startup => "startup",
            EventCode::Shutdown => "shutdown",
            EventCode::ExitSuccess => "exitSuccess",
            EventCode::ExitFailed => "exitFailed",
            EventCode::Healthy => "healthy",
            EventCode::Unhealthy => "unhealthy",
            EventCode::Changed => "changed",
            EventCode::Stopping => "stopping",
            EventCode::Stopped => "stopped",
            EventCode::EnterMaintenance => "enterMaintenance",
            EventCode::ExitMaintenance => "exitMaintenance",
            EventCode::Signal => "signal",
            EventCode::TimerExpired => "timerExpired",
            EventCode::Elected => "elected",
            EventCode::Demoted => "demoted",
            EventCode::LeaderChanged => "leaderChanged",
            EventCode::RepairStarted => "repairStarted",
            EventCode::RepairFinished => "repairFinished",
            EventCode::RepairFailed => "repairFailed",
            EventCode::RepairBudgetExhausted => "repairBudgetExhausted",
        }
    }

    /// Parses a code as written in `when.once`/`when.each`.
    pub fn parse(s: &str) -> Option<EventCode> {
        EventCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Codes published by the agent itself rather than by a job or watch.
    pub fn is_global(self) -> bool {
        matches!(
            self,
            EventCode::Startup
                | EventCode::Shutdown
                | EventCode::EnterMaintenance
                | EventCode::ExitMaintenance
        )
    }
}

impl fmt::Display for EventCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The source of the agent's own events.
pub const GLOBAL: &str = "global";

/// The signals that become events rather than shutdown requests.
pub const SIGNAL_EVENTS: [&str; 2] = ["SIGHUP", "SIGUSR2"];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub code: EventCode,
    pub source: String,
}

impl Event {
    pub fn new(code: EventCode, source: &str) -> Self {
        Event {
            code,
            source: source.to_string(),
        }
    }

    pub fn global(code: EventCode) -> Self {
        Event::new(code, GLOBAL)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.source, self.code)
    }
}
