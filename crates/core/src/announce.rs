//! The announce gate: whether a job's anycast prefixes should be announced, from its registration, maintenance, stop and the disable file.
//!
//! Pure: the runtime gathers the inputs (the machine's registered status,
//! whether the agent is draining for a stop, the disable file, the
//! speaker's last answer) and executes the changes through the speaker.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::spec::EntryStatus;

/// A job's `announce` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSpec {
    /// Normalised prefixes (host bits zero), in config order, no duplicates.
    pub prefixes: Vec<Prefix>,
    /// The speaker's control socket (BIRD 2's `-s` path).
    pub socket: String,
    /// The base name of the include files the agent writes: routes for the
    /// static protocols `<protocol>4` / `<protocol>6` of the BIRD config.
    pub protocol: String,
    /// Where the include files live (`<dir>/<protocol>4.conf`, `...6.conf`).
    pub include_dir: String,
    /// While this file exists, every prefix is withdrawn.
    pub disable_file: String,
    /// Add the addresses to `lo` before announcing, remove them after withdrawing.
    pub loopback: bool,
    /// Wait after the withdrawal before the jobs get their stop signal.
    pub drain: Duration,
}

impl AnnounceSpec {
    /// The include file for one address family.
    pub fn include_file(&self, v6: bool) -> String {
        let family = if v6 { "6" } else { "4" };
        format!(
            "{}/{}{family}.conf",
            self.include_dir.trim_end_matches('/'),
            self.protocol
        )
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Parses `addr/len`; host bits must be zero (BIRD refuses them too).
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix: expected address/length"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("{l:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        let p = Prefix { addr, len };
        if p.masked() != addr {
            return Err(format!(
                "{s:?} has host bits set: did you mean {}/{len}?",
                p.masked()
            ));
        }
        Ok(p)
    }

    fn masked(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(self.len)));
                IpAddr::V4((bits & mask.unwrap_or(0)).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(self.len)));
                IpAddr::V6((bits & mask.unwrap_or(0)).into())
            }
        }
    }

    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What the gate is told about the job and the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateInput {
    /// The job's catalog entry as the machine registered it (after rise/fall).
    pub registered: Option<EntryStatus>,
    pub maintenance: bool,
    /// The agent is stopping (or draining before the stop).
    pub stopping: bool,
    /// The disable file exists.
    pub disabled: bool,
}

/// Why a prefix is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The job is registered, but not as passing.
    NotPassing,
    /// The job is not registered (not yet healthy, or gone).
    NotRegistered,
    Maintenance,
    Stopping,
    /// The speaker did not take the last change.
    SpeakerUnreachable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotPassing => "not passing",
            Reason::NotRegistered => "not registered",
            Reason::Maintenance => "maintenance",
            Reason::Stopping => "stopping",
            Reason::SpeakerUnreachable => "speaker unreachable",
        }
    }
}

/// A prefix's state, as `autopilot status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixState {
    Announced,
    Withdrawn(Reason),
    /// Withdrawn by hand through the disable file.
    Disabled,
}

impl PrefixState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrefixState::Announced => "announced",
            PrefixState::Withdrawn(_) => "withdrawn",
            PrefixState::Disabled => "disabled",
        }
    }

    pub fn reason(self) -> Option<&'static str> {
        match self {
            PrefixState::Withdrawn(r) => Some(r.as_str()),
            PrefixState::Disabled => Some("disable file present"),
            PrefixState::Announced => None,
        }
    }
}

/// What the speaker should hold: `Announced` only while the job is
/// registered as passing, not in maintenance, not stopping and not
/// disabled. The disable file wins over everything, then the stop, then
/// maintenance.
pub fn want(i: &GateInput) -> PrefixState {
    if i.disabled {
        PrefixState::Disabled
    } else if i.stopping {
        PrefixState::Withdrawn(Reason::Stopping)
    } else if i.maintenance {
        PrefixState::Withdrawn(Reason::Maintenance)
    } else {
        match i.registered {
            Some(EntryStatus::Passing) => PrefixState::Announced,
            Some(_) => PrefixState::Withdrawn(Reason::NotPassing),
            None => PrefixState::Withdrawn(Reason::NotRegistered),
        }
    }
}

/// The state to report given what is wanted and whether the speaker took
/// it: a prefix whose announcement the speaker did not confirm is withdrawn
/// (speaker unreachable); a withdrawal keeps its own reason.
pub fn state(want: PrefixState, speaker_ok: bool) -> PrefixState {
    match want {
        PrefixState::Announced if !speaker_ok => PrefixState::Withdrawn(Reason::SpeakerUnreachable),
        w => w,
    }
}

/// A change for the speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Announce(Prefix),
    Withdraw(Prefix),
}

/// The changes that bring `applied` (what the speaker last confirmed; `None`
/// when unknown, as at start) to `want` for `prefixes`. With an unknown
/// state every prefix gets its change, so a route left by an earlier run
/// is withdrawn.
pub fn changes(prefixes: &[Prefix], applied: Option<bool>, want: PrefixState) -> Vec<Change> {
    let on = want == PrefixState::Announced;
    if applied == Some(on) {
        return Vec::new();
    }
    prefixes
        .iter()
        .map(|p| {
            if on {
                Change::Announce(*p)
            } else {
                Change::Withdraw(*p)
            }
        })
        .collect()
}

/// The include file's text for the announced prefixes of one family:
/// one `route <prefix> blackhole;` per prefix (the static protocol
/// originates it; export filters decide where it goes).
pub fn include_text(prefixes: &[Prefix], v6: bool, announced: bool) -> String {
    let mut out = String::from("# written by autopilot: the routes its announce gate allows\n");
    if announced {
        for p in prefixes.iter().filter(|p| p.is_v6() == v6) {
            out.push_str(&format!("route {p} blackhole;\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(registered: Option<EntryStatus>) -> GateInput {
        GateInput {
            registered,
            maintenance: false,
            stopping: false,
            disabled: false,
        }
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let p = Prefix::parse("192.0.2.10/32").unwrap();
        assert_eq!(p.to_string(), "192.0.2.10/32");
        assert!(!p.is_v6());
        let p6 = Prefix::parse("2001:db8::1/128").unwrap();
        assert!(p6.is_v6());
        assert_eq!(Prefix::parse("192.0.2.0/24").unwrap().len, 24);
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().len, 0);
        let e = Prefix::parse("192.0.2.10/24").unwrap_err();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        assert!(Prefix::parse("192.0.2.10/33").is_err());
        assert!(Prefix::parse("2001:db8::/129").is_err());
        assert!(Prefix::parse("192.0.2.10").is_err());
        assert!(Prefix::parse("host/32").is_err());
        assert!(Prefix::parse("192.0.2.10/x").is_err());
    }

    #[test]
    fn announced_only_while_registered_passing() {
        assert_eq!(
            want(&input(Some(EntryStatus::Passing))),
            PrefixState::Announced
        );
        assert_eq!(
            want(&input(Some(EntryStatus::Critical))),
            PrefixState::Withdrawn(Reason::NotPassing)
        );
        assert_eq!(
            want(&input(Some(EntryStatus::Warning))),
            PrefixState::Withdrawn(Reason::NotPassing)
        );
        assert_eq!(
            want(&input(None)),
            PrefixState::Withdrawn(Reason::NotRegistered)
        );
    }

    #[test]
    fn disable_beats_stop_beats_maintenance() {
        let mut i = input(Some(EntryStatus::Passing));
        i.maintenance = true;
        assert_eq!(want(&i), PrefixState::Withdrawn(Reason::Maintenance));
        i.stopping = true;
        assert_eq!(want(&i), PrefixState::Withdrawn(Reason::Stopping));
        i.disabled = true;
        assert_eq!(want(&i), PrefixState::Disabled);
        assert_eq!(PrefixState::Disabled.as_str(), "disabled");
        assert_eq!(PrefixState::Disabled.reason(), Some("disable file present"));
    }

    #[test]
    fn an_unreachable_speaker_reads_as_withdrawn() {
        assert_eq!(
            state(PrefixState::Announced, false),
            PrefixState::Withdrawn(Reason::SpeakerUnreachable)
        );
        assert_eq!(state(PrefixState::Announced, true), PrefixState::Announced);
        assert_eq!(
            state(PrefixState::Withdrawn(Reason::Stopping), false),
            PrefixState::Withdrawn(Reason::Stopping)
        );
    }

    #[test]
    fn changes_only_on_a_difference_and_all_when_unknown() {
        let ps = [
            Prefix::parse("192.0.2.10/32").unwrap(),
            Prefix::parse("2001:db8::1/128").unwrap(),
        ];
        assert!(changes(&ps, Some(true), PrefixState::Announced).is_empty());
        assert!(changes(&ps, Some(false), PrefixState::Disabled).is_empty());
        assert_eq!(
            changes(&ps, Some(false), PrefixState::Announced),
            vec![Change::Announce(ps[0]), Change::Announce(ps[1])]
        );
        assert_eq!(
            changes(&ps, None, PrefixState::Withdrawn(Reason::NotRegistered)),
            vec![Change::Withdraw(ps[0]), Change::Withdraw(ps[1])]
        );
    }

    #[test]
    fn include_files_split_by_family() {
        let ps = [
            Prefix::parse("192.0.2.10/32").unwrap(),
            Prefix::parse("2001:db8::1/128").unwrap(),
        ];
        let v4 = include_text(&ps, false, true);
        assert!(v4.contains("route 192.0.2.10/32 blackhole;"));
        assert!(!v4.contains("2001:db8"));
        let v6 = include_text(&ps, true, true);
        assert!(v6.contains("route 2001:db8::1/128 blackhole;"));
        assert!(!include_text(&ps, false, false).contains("blackhole"));
    }
}
