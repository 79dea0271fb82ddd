//! Cluster decisions for one election, pure: member records, lag and ranking, intents (pause, failover, switchover) and the majority vote of the fast crash failover.
//!
//! The election task gathers typed inputs (member records, the leader,
//! intents, its own clock) and executes what [`decide`] and [`end_seat_due`]
//! return. Nothing here decides *safety*: the catalog's compare-and-swap
//! campaign is the only thing that makes a leader; these rules only choose
//! who tries, and when. Member data comes from other agents and is
//! untrusted: [`Member::from_record`] ignores tags it cannot read, and all
//! arithmetic saturates.

use std::time::Duration;

/// One candidate as its member record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The candidate ID (`<job>-<hostname>`).
    pub id: String,
    pub passing: bool,
    pub priority: u32,
    pub max_lag: Option<u64>,
    pub position: Option<u64>,
    /// The leader term this member has confirmed dead.
    pub suspect: Option<u64>,
    /// The agent's presence listener, `ip:port`.
    pub probe: Option<String>,
}

/// The catalog service name of an election's member records.
pub fn members_service(election: &str) -> String {
    format!("_members.{election}")
}

/// The member record ID of a candidate.
pub fn member_id(election: &str, candidate: &str) -> String {
    format!("{election}.{candidate}")
}

/// The key prefix of an election's intents.
pub fn intents_prefix(election: &str) -> String {
    format!("_cluster/{election}/")
}

/// Which intent a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentKey {
    Paused,
    Switchover,
    Failover,
    Reinit(String),
}

impl IntentKey {
    pub fn key(&self, election: &str) -> String {
        let p = intents_prefix(election);
        match self {
            IntentKey::Paused => format!("{p}paused"),
            IntentKey::Switchover => format!("{p}switchover"),
            IntentKey::Failover => format!("{p}failover"),
            IntentKey::Reinit(id) => format!("{p}reinit/{id}"),
        }
    }

    /// The intent a full key names, if any.
    pub fn parse(election: &str, key: &str) -> Option<IntentKey> {
        let rest = key.strip_prefix(&intents_prefix(election))?;
        match rest {
            "paused" => Some(IntentKey::Paused),
            "switchover" => Some(IntentKey::Switchover),
            "failover" => Some(IntentKey::Failover),
            _ => rest
                .strip_prefix("reinit/")
                .filter(|id| !id.is_empty())
                .map(|id| IntentKey::Reinit(id.to_string())),
        }
    }
}

impl Member {
    /// Reads a member record of `election`; `None` when its ID is not one.
    /// Unreadable tags are ignored (the value stays unknown).
    pub fn from_record(election: &str, id: &str, passing: bool, tags: &[String]) -> Option<Member> {
        let candidate = id.strip_prefix(election)?.strip_prefix('.')?;
        if candidate.is_empty() {
            return None;
        }
        let mut m = Member {
            id: candidate.to_string(),
            passing,
            priority: 1,
            max_lag: None,
            position: None,
            suspect: None,
            probe: None,
        };
        for t in tags {
            let Some((k, v)) = t.split_once('=') else {
                continue;
            };
            match k {
                "priority" => {
                    if let Ok(p) = v.parse() {
                        m.priority = p;
                    }
                }
                "maxlag" => m.max_lag = v.parse().ok().or(m.max_lag),
                "position" => m.position = v.parse().ok().or(m.position),
                "suspect" => m.suspect = v.parse().ok().or(m.suspect),
                "probe" if v.parse::<std::net::SocketAddr>().is_ok() => {
                    m.probe = Some(v.to_string());
                }
                _ => {}
            }
        }
        Some(m)
    }

    /// The tags of this member's record, in the contract's format.
    pub fn tags(&self) -> Vec<String> {
        let mut t = Vec::new();
        if let Some(p) = &self.probe {
            t.push(format!("probe={p}"));
        }
        t.push(format!("priority={}", self.priority));
        if let Some(l) = self.max_lag {
            t.push(format!("maxlag={l}"));
        }
        if let Some(p) = self.position {
            t.push(format!("position={p}"));
        }
        if let Some(s) = self.suspect {
            t.push(format!("suspect={s}"));
        }
        t
    }
}

/// A replication position: a decimal u64, or a PostgreSQL LSN `X/Y` (hex,
/// `X << 32 | Y`).
pub fn parse_position(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some((hi, lo)) = s.split_once('/') {
        let hi = u32::from_str_radix(hi, 16)
            .map_err(|_| format!("position: {s:?} is not an LSN X/Y (hex, 32 bits each)"))?;
        let lo = u32::from_str_radix(lo, 16)
            .map_err(|_| format!("position: {s:?} is not an LSN X/Y (hex, 32 bits each)"))?;
        return Ok((u64::from(hi) << 32) | u64::from(lo));
    }
    s.parse::<u64>()
        .map_err(|_| format!("position: {s:?} is neither a decimal u64 nor an LSN X/Y"))
}

/// The highest position a passing member published (0 if none did). A
/// critical member's position is left out: a broken member with a
/// diverged, far-ahead position must not push every healthy one past its
/// lag limit.
fn highest(members: &[Member]) -> u64 {
    members
        .iter()
        .filter(|m| m.passing)
        .filter_map(|m| m.position)
        .max()
        .unwrap_or(0)
}

/// How far `m` is behind the most advanced passing member.
pub fn lag(m: &Member, members: &[Member]) -> u64 {
    highest(members).saturating_sub(m.position.unwrap_or(0))
}

/// Passing, priority above 0 and within its own lag limit.
pub fn eligible(m: &Member, members: &[Member]) -> bool {
    m.passing && m.priority > 0 && m.max_lag.is_none_or(|l| lag(m, members) <= l)
}

/// Healthy and within its lag limit, whatever its priority (a switchover
/// target named by a person).
fn caught_up(m: &Member, members: &[Member]) -> bool {
    m.passing && m.max_lag.is_none_or(|l| lag(m, members) <= l)
}

/// Eligible candidates, best first: position desc, priority desc, ID asc.
/// Members in `exclude` (confirmed dead) are left out.
pub fn ranking<'a>(members: &'a [Member], exclude: &[&str]) -> Vec<&'a Member> {
    let mut r: Vec<&Member> = members
        .iter()
        .filter(|m| !exclude.contains(&m.id.as_str()) && eligible(m, members))
        .collect();
    r.sort_by(|a, b| {
        b.position
            .unwrap_or(0)
            .cmp(&a.position.unwrap_or(0))
            .then(b.priority.cmp(&a.priority))
            .then(a.id.cmp(&b.id))
    });
    r
}

/// How long rank r waits per rank after the seat is seen free.
pub fn grace(ttl: Duration) -> Duration {
    ttl.checked_div(10)
        .unwrap_or_default()
        .max(Duration::from_millis(200))
}

/// `_cluster/<election>/switchover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switchover {
    pub from: String,
    pub to: Option<String>,
    pub at_ms: u64,
    pub deadline_ms: u64,
}

/// `_cluster/<election>/failover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub to: String,
    pub deadline_ms: u64,
}

/// The intents of an election as read (expiry is checked by [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Intents {
    pub paused: bool,
    pub switchover: Option<Switchover>,
    pub failover: Option<Failover>,
    /// Candidate IDs with a reinit request.
    pub reinit: Vec<String>,
}

/// An intent whose deadline lies further ahead than this (the longest CLI
/// timeout) is ignored: a mistaken or hostile `deadline_ms` must not stop
/// every candidate from campaigning for ever.
pub const MAX_INTENT_HORIZON_MS: u64 = 10 * 60 * 1000;

/// Whether an intent with this deadline is in force at `now_ms`.
fn live(deadline_ms: u64, now_ms: u64) -> bool {
    deadline_ms > now_ms && deadline_ms <= now_ms.saturating_add(MAX_INTENT_HORIZON_MS)
}

impl Intents {
    /// The failover in force: not expired (nor absurdly far ahead).
    pub fn failover(&self, now_ms: u64) -> Option<&Failover> {
        self.failover
            .as_ref()
            .filter(|f| live(f.deadline_ms, now_ms))
    }

    /// The switchover in force: not expired (nor absurdly far ahead) and due.
    pub fn switchover(&self, now_ms: u64) -> Option<&Switchover> {
        self.switchover
            .as_ref()
            .filter(|s| live(s.deadline_ms, now_ms) && s.at_ms <= now_ms)
    }

    /// Whether any intent changes who may campaign (used when the member
    /// records could not be read: the candidate then waits).
    pub fn constrains(&self, now_ms: u64) -> bool {
        self.paused || self.failover(now_ms).is_some() || self.switchover(now_ms).is_some()
    }

    /// Whether a switchover away from `me` is in force (`me` must not take
    /// the seat back, even as its own stale seat).
    pub fn handing_over(&self, me: &str, now_ms: u64) -> bool {
        self.switchover(now_ms).is_some_and(|s| s.from == me)
    }
}

/// Whether `id` has a member record that is passing.
fn present_passing(members: &[Member], id: &str) -> bool {
    members.iter().any(|m| m.id == id && m.passing)
}

/// The candidate a switchover hands over to: the named one, or the best
/// eligible member other than the leader it is from.
pub fn switchover_target_id(s: &Switchover, members: &[Member]) -> Option<String> {
    match &s.to {
        Some(to) => Some(to.clone()),
        None => ranking(members, &[s.from.as_str()])
            .first()
            .map(|m| m.id.clone()),
    }
}

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// This candidate's ID.
    pub me: &'a str,
    /// Every member record, this candidate's own as it knows itself.
    pub members: &'a [Member],
    /// Who holds the seat (`None`: free).
    pub leader: Option<&'a str>,
    /// Whether this candidate holds the seat.
    pub leading: bool,
    pub intents: &'a Intents,
    /// Who held the seat last (for a paused cluster).
    pub last_holder: Option<&'a str>,
    /// Members confirmed dead (left out of the ranking).
    pub dead: &'a [&'a str],
    /// When this candidate saw the seat free (monotonic).
    pub free_since: Option<Duration>,
    pub now: Duration,
    /// Wall clock, unix milliseconds (intents carry wall-clock times).
    pub now_ms: u64,
    pub ttl: Duration,
}

/// What the election task should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Try to win the free seat now (or renew it, as leader).
    Campaign,
    /// Not yet: decide again at this instant (or on any change).
    WaitUntil(Duration),
    /// Do not campaign until something changes.
    Wait,
    /// The leader hands over (a switchover to a ready target).
    Resign,
}

/// The decision for one candidate that wants to lead.
pub fn decide(v: &View<'_>) -> Step {
    let switchover = v.intents.switchover(v.now_ms);
    if v.leading {
        if let Some(s) = switchover.filter(|s| s.from == v.me) {
            let target = switchover_target_id(s, v.members);
            let ready = target
                .as_deref()
                .filter(|t| *t != v.me)
                .and_then(|t| v.members.iter().find(|m| m.id == t))
                .is_some_and(|m| caught_up(m, v.members));
            if ready {
                return Step::Resign;
            }
        }
        return Step::Campaign;
    }
    if v.leader.is_some() {
        return Step::Wait;
    }
    // The seat is free. A failover counts only while its target is a
    // present, passing member: a dead target must not leave the cluster
    // leaderless until the deadline.
    if let Some(f) = v
        .intents
        .failover(v.now_ms)
        .filter(|f| present_passing(v.members, &f.to))
    {
        return if f.to == v.me {
            Step::Campaign
        } else {
            Step::Wait
        };
    }
    // A switchover counts only if it is from the leader that held the
    // seat last and its target is a present, passing member; otherwise it
    // cannot be carried out, and the ordinary rules apply.
    if let Some(s) = switchover.filter(|s| v.last_holder == Some(s.from.as_str())) {
        match switchover_target_id(s, v.members) {
            Some(t) if t == v.me && present_passing(v.members, &t) => return Step::Campaign,
            Some(t) if present_passing(v.members, &t) => return Step::Wait,
            _ => {}
        }
    }
    if v.intents.paused {
        return if v.last_holder == Some(v.me) {
            Step::Campaign
        } else {
            Step::Wait
        };
    }
    ranked(v)
}

/// The ordinary rule for a free seat: rank r campaigns r x grace after it
/// saw the seat free.
fn ranked(v: &View<'_>) -> Step {
    let order = ranking(v.members, v.dead);
    let Some(r) = order.iter().position(|m| m.id == v.me) else {
        return Step::Wait;
    };
    let r = u32::try_from(r).unwrap_or(u32::MAX);
    let since = v.free_since.unwrap_or(v.now);
    let due = since.saturating_add(grace(v.ttl).saturating_mul(r));
    if v.now >= due {
        Step::Campaign
    } else {
        Step::WaitUntil(due)
    }
}

/// The intents this candidate deletes once it has won the seat: a failover
/// or switchover carried out.
pub fn done_on_win(me: &str, intents: &Intents, members: &[Member]) -> Vec<IntentKey> {
    let mut done = Vec::new();
    if intents.failover.as_ref().is_some_and(|f| f.to == me) {
        done.push(IntentKey::Failover);
    }
    if let Some(s) = &intents.switchover
        && s.from != me
        && switchover_target_id(s, members).is_none_or(|t| t == me)
    {
        done.push(IntentKey::Switchover);
    }
    done
}

/// The votes a leader needs to be declared dead: a majority of the
/// members, n = member records including the leader's.
pub fn majority(n: usize) -> usize {
    (n.saturating_sub(1) >> 1).saturating_add(1)
}

/// Whether a majority of the members (n = member records including the
/// leader's) has confirmed the leader holding `term` dead.
pub fn confirmed_dead(members: &[Member], leader: &str, term: u64) -> bool {
    let votes = members
        .iter()
        .filter(|m| m.id != leader && m.suspect == Some(term))
        .count();
    votes >= majority(members.len())
}

/// Whether this candidate (a voter: a non-leader member that suspects the
/// leader's term itself) should end the leader's seat now.
pub fn end_seat_due(
    me: &str,
    members: &[Member],
    leader: &str,
    term: u64,
    intents: &Intents,
) -> bool {
    if intents.paused || me == leader {
        return false;
    }
    let voter = members
        .iter()
        .any(|m| m.id == me && m.suspect == Some(term));
    voter && confirmed_dead(members, leader, term)
}

/// A probe round's outcome, as the fast path counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Both the presence listener and the service refused.
    Refused,
    /// Anything else: accepted, a timeout, unreachable, another error.
    NotRefused,
}

/// Consecutive rounds of "both refused" that confirm a leader dead.
pub const SUSPECT_ROUNDS: u32 = 3;

/// The prober's count: confirmed after [`SUSPECT_ROUNDS`] refused rounds in
/// a row; any other round clears it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak(u32);

impl Streak {
    /// Records a round; returns whether the leader is now confirmed dead.
    pub fn record(&mut self, p: Probe) -> bool {
        self.0 = match p {
            Probe::Refused => self.0.saturating_add(1),
            Probe::NotRefused => 0,
        };
        self.0 >= SUSPECT_ROUNDS
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn m(id: &str, position: Option<u64>) -> Member {
        Member {
            id: id.into(),
            passing: true,
            priority: 1,
            max_lag: None,
            position,
            suspect: None,
            probe: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn view<'a>(me: &'a str, members: &'a [Member], intents: &'a Intents) -> View<'a> {
        View {
            me,
            members,
            leader: None,
            leading: false,
            intents,
            last_holder: None,
            dead: &[],
            free_since: Some(ms(1000)),
            now: ms(1000),
            now_ms: 1_000_000,
            ttl: Duration::from_secs(5),
        }
    }

    #[test]
    fn records_parse_leniently() {
        let tags: Vec<String> = [
            "priority=7",
            "maxlag=99999999999999999999999",
            "position=18446744073709551615",
            "suspect=x",
            "probe=not-an-address",
            "garbage",
            "=",
            "priority=-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = Member::from_record("db", "db.pg-a", true, &tags).expect("member");
        assert_eq!(got.id, "pg-a");
        assert_eq!(got.priority, 7);
        assert_eq!(got.max_lag, None);
        assert_eq!(got.position, Some(u64::MAX));
        assert_eq!((got.suspect, got.probe), (None, None));
        assert!(Member::from_record("db", "other.pg-a", true, &[]).is_none());
        assert!(Member::from_record("db", "db.", true, &[]).is_none());
        assert!(Member::from_record("db", "dbx.a", true, &[]).is_none());
        // Round trip.
        let mut a = m("a", Some(5));
        a.probe = Some("127.0.0.1:9".into());
        a.suspect = Some(3);
        a.max_lag = Some(10);
        let back = Member::from_record("e", "e.a", true, &a.tags()).expect("member");
        assert_eq!(back, a);
    }

    #[test]
    fn positions() {
        assert_eq!(parse_position("42"), Ok(42));
        assert_eq!(parse_position("0/16B3748"), Ok(0x16B_3748));
        assert_eq!(parse_position("1/0"), Ok(1 << 32));
        assert_eq!(parse_position("FFFFFFFF/FFFFFFFF"), Ok(u64::MAX));
        for bad in [
            "",
            "-1",
            "1/",
            "/1",
            "x",
            "1/2/3",
            "100000000/0",
            "18446744073709551616",
        ] {
            let e = parse_position(bad).expect_err(bad);
            assert!(e.starts_with("position"), "{e}");
        }
    }

    #[test]
    fn lag_and_eligibility() {
        let mut members = vec![m("a", Some(100)), m("b", Some(40)), m("c", None)];
        assert_eq!(lag(&members[1], &members), 60);
        assert_eq!(lag(&members[2], &members), 100);
        members[1].max_lag = Some(50);
        assert!(!eligible(&members[1], &members));
        members[1].max_lag = Some(60);
        assert!(eligible(&members[1], &members));
        members[2].priority = 0;
        assert!(!eligible(&members[2], &members));
        members[0].passing = false;
        assert!(!eligible(&members[0], &members));
        // Nobody published: no lag.
        let none = vec![m("a", None)];
        assert_eq!(lag(&none[0], &none), 0);
    }

    #[test]
    fn ranking_prefers_position_then_priority_then_id() {
        let mut members = vec![
            m("c", Some(5)),
            m("a", Some(5)),
            m("b", Some(9)),
            m("d", Some(5)),
        ];
        members[3].priority = 3;
        let order: Vec<&str> = ranking(&members, &[])
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
        let order: Vec<&str> = ranking(&members, &["b"])
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(order, ["d", "a", "c"]);
    }

    #[test]
    fn ranks_campaign_one_grace_apart() {
        let members = vec![m("a", Some(9)), m("b", Some(5)), m("c", Some(1))];
        let intents = Intents::default();
        let mut v = view("a", &members, &intents);
        assert_eq!(decide(&v), Step::Campaign);
        v.me = "c";
        assert_eq!(decide(&v), Step::WaitUntil(ms(2000)));
        v.now = ms(2000);
        assert_eq!(decide(&v), Step::Campaign);
        // A held seat: nobody campaigns.
        v.leader = Some("a");
        assert_eq!(decide(&v), Step::Wait);
        // A dead rank 0 is skipped.
        let dead = ["a"];
        let mut v = view("b", &members, &intents);
        v.dead = &dead;
        assert_eq!(decide(&v), Step::Campaign);
        // priority 0 never campaigns automatically.
        let mut members = members.clone();
        members[0].priority = 0;
        let v = view("a", &members, &intents);
        assert_eq!(decide(&v), Step::Wait);
    }

    #[test]
    fn pause_lets_only_the_last_holder_retake() {
        let members = vec![m("a", None), m("b", None)];
        let intents = Intents {
            paused: true,
            ..Intents::default()
        };
        let mut v = view("a", &members, &intents);
        assert_eq!(decide(&v), Step::Wait);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::Campaign);
        v.me = "b";
        assert_eq!(decide(&v), Step::Wait);
    }

    #[test]
    fn failover_picks_one_even_past_priority_and_pause() {
        let mut members = vec![m("a", Some(9)), m("b", Some(1))];
        members[1].priority = 0;
        members[1].max_lag = Some(1);
        let mut intents = Intents {
            paused: true,
            failover: Some(Failover {
                to: "b".into(),
                deadline_ms: 1_200_000,
            }),
            ..Intents::default()
        };
        let v = view("b", &members, &intents);
        assert_eq!(decide(&v), Step::Campaign);
        let v = view("a", &members, &intents);
        assert_eq!(decide(&v), Step::Wait);
        assert_eq!(done_on_win("b", &intents, &members), [IntentKey::Failover]);
        assert!(done_on_win("a", &intents, &members).is_empty());
        // Expired: ignored.
        intents.failover.as_mut().expect("set").deadline_ms = 1_000_000;
        intents.paused = false;
        let v = view("a", &members, &intents);
        assert_eq!(decide(&v), Step::Campaign);
    }

    #[test]
    fn switchover_waits_for_a_caught_up_target() {
        let mut members = vec![m("a", Some(100)), m("b", Some(10)), m("c", Some(90))];
        members[1].max_lag = Some(50);
        let mut intents = Intents {
            switchover: Some(Switchover {
                from: "a".into(),
                to: Some("b".into()),
                at_ms: 999_000,
                deadline_ms: 1_200_000,
            }),
            ..Intents::default()
        };
        let mut v = view("a", &members, &intents);
        v.leading = true;
        v.leader = Some("a");
        // b is beyond its lag limit: the leader stays.
        assert_eq!(decide(&v), Step::Campaign);
        members[1].position = Some(95);
        let mut v = view("a", &members, &intents);
        v.leading = true;
        v.leader = Some("a");
        assert_eq!(decide(&v), Step::Resign);
        // Seat free: only b campaigns, at once, a and c wait.
        for (me, want) in [("b", Step::Campaign), ("a", Step::Wait), ("c", Step::Wait)] {
            let mut v = view(me, &members, &intents);
            v.last_holder = Some("a");
            assert_eq!(decide(&v), want, "{me}");
        }
        assert_eq!(
            done_on_win("b", &intents, &members),
            [IntentKey::Switchover]
        );
        // Not yet due: the leader stays.
        intents.switchover.as_mut().expect("set").at_ms = 1_100_000;
        let mut v = view("a", &members, &intents);
        v.leading = true;
        assert_eq!(decide(&v), Step::Campaign);
        // To nobody in particular: the best other member.
        intents.switchover = Some(Switchover {
            from: "a".into(),
            to: None,
            at_ms: 0,
            deadline_ms: 1_200_000,
        });
        let mut v = view("b", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::Campaign);
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::Wait);
        let mut v = view("a", &members, &intents);
        v.leading = true;
        assert_eq!(decide(&v), Step::Resign);
    }

    #[test]
    fn lag_counts_only_passing_members() {
        // A critical member with a diverged, far-ahead position does not
        // push the healthy ones past their limit (review finding 16).
        let mut members = vec![m("a", Some(1_000_000)), m("b", Some(100)), m("c", Some(90))];
        members[0].passing = false;
        members[1].max_lag = Some(50);
        members[2].max_lag = Some(50);
        assert_eq!(lag(&members[1], &members), 0);
        assert_eq!(lag(&members[2], &members), 10);
        assert!(eligible(&members[1], &members));
        assert!(eligible(&members[2], &members));
        let ids: Vec<&str> = ranking(&members, &[])
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn a_switchover_that_cannot_be_carried_out_is_ignored() {
        // Review finding 6: the target died after the leader resigned.
        let mut members = vec![m("a", Some(100)), m("b", Some(100)), m("c", Some(90))];
        let mut intents = Intents {
            switchover: Some(Switchover {
                from: "a".into(),
                to: Some("b".into()),
                at_ms: 0,
                deadline_ms: 1_200_000,
            }),
            ..Intents::default()
        };
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::Wait);
        // b critical: ordinary rules (c ranks second, a grace later).
        members[1].passing = false;
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::WaitUntil(ms(1500)));
        // b gone: the same.
        members.remove(1);
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::WaitUntil(ms(1500)));
        // From a node that did not hold the seat last: ignored.
        let members = vec![m("a", Some(100)), m("b", Some(100)), m("c", Some(90))];
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("c");
        assert_eq!(decide(&v), Step::WaitUntil(ms(2000)));
        // A deadline beyond now + 10 min: ignored by everyone.
        intents.switchover.as_mut().expect("set").deadline_ms = u64::MAX;
        let mut v = view("c", &members, &intents);
        v.last_holder = Some("a");
        assert_eq!(decide(&v), Step::WaitUntil(ms(2000)));
        assert!(!intents.constrains(1_000_000));
        assert!(!intents.handing_over("a", 1_000_000));
        intents.switchover.as_mut().expect("set").deadline_ms = 1_000_000 + MAX_INTENT_HORIZON_MS;
        assert!(intents.constrains(1_000_000));
        assert!(intents.handing_over("a", 1_000_000));
        assert!(!intents.handing_over("b", 1_000_000));
    }

    #[test]
    fn a_failover_to_an_absent_or_critical_target_is_ignored() {
        let mut members = vec![m("a", Some(100)), m("b", Some(90))];
        let mut intents = Intents {
            failover: Some(Failover {
                to: "x".into(),
                deadline_ms: 1_200_000,
            }),
            ..Intents::default()
        };
        // x has no record: a ranks first and campaigns.
        assert_eq!(decide(&view("a", &members, &intents)), Step::Campaign);
        intents.failover.as_mut().expect("set").to = "b".into();
        assert_eq!(decide(&view("a", &members, &intents)), Step::Wait);
        members[1].passing = false;
        assert_eq!(decide(&view("a", &members, &intents)), Step::Campaign);
        members[1].passing = true;
        intents.failover.as_mut().expect("set").deadline_ms = u64::MAX;
        assert_eq!(decide(&view("a", &members, &intents)), Step::Campaign);
        assert!(!intents.constrains(1_000_000));
    }

    #[test]
    fn a_majority_of_suspects_ends_the_seat() {
        let mut members = vec![m("l", None), m("a", None), m("b", None)];
        let intents = Intents::default();
        assert_eq!(majority(3), 2);
        assert_eq!(majority(2), 1);
        assert_eq!(majority(4), 2);
        assert_eq!(majority(5), 3);
        members[1].suspect = Some(7);
        assert!(!end_seat_due("a", &members, "l", 7, &intents));
        members[2].suspect = Some(6);
        assert!(
            !end_seat_due("a", &members, "l", 7, &intents),
            "another term"
        );
        members[2].suspect = Some(7);
        assert!(end_seat_due("a", &members, "l", 7, &intents));
        assert!(end_seat_due("b", &members, "l", 7, &intents));
        // The leader's own tag never counts, and it never votes.
        members[0].suspect = Some(7);
        members[2].suspect = None;
        assert!(!end_seat_due("a", &members, "l", 7, &intents));
        assert!(!end_seat_due("l", &members, "l", 7, &intents));
        // Paused: never.
        members[2].suspect = Some(7);
        let paused = Intents {
            paused: true,
            ..Intents::default()
        };
        assert!(!end_seat_due("a", &members, "l", 7, &paused));
    }

    #[test]
    fn three_refused_rounds_in_a_row_confirm() {
        let mut s = Streak::default();
        assert!(!s.record(Probe::Refused));
        assert!(!s.record(Probe::Refused));
        assert!(!s.record(Probe::NotRefused));
        assert!(!s.record(Probe::Refused));
        assert!(!s.record(Probe::Refused));
        assert!(s.record(Probe::Refused));
        assert!(s.record(Probe::Refused));
        assert!(!s.record(Probe::NotRefused));
    }

    #[test]
    fn intent_keys() {
        for k in [
            IntentKey::Paused,
            IntentKey::Switchover,
            IntentKey::Failover,
            IntentKey::Reinit("pg-a".into()),
        ] {
            assert_eq!(IntentKey::parse("db", &k.key("db")), Some(k));
        }
        assert_eq!(IntentKey::parse("db", "_cluster/db/other"), None);
        assert_eq!(IntentKey::parse("db", "_cluster/db/reinit/"), None);
        assert_eq!(IntentKey::parse("db", "_cluster/dbx/paused"), None);
    }

    #[test]
    fn hostile_numbers_do_not_overflow() {
        let mut members = vec![m("a", Some(u64::MAX)), m("b", Some(0))];
        members[1].max_lag = Some(u64::MAX);
        assert_eq!(lag(&members[1], &members), u64::MAX);
        assert!(eligible(&members[1], &members));
        let intents = Intents::default();
        let mut v = view("b", &members, &intents);
        v.ttl = Duration::MAX;
        v.free_since = Some(Duration::MAX);
        assert!(matches!(decide(&v), Step::WaitUntil(_) | Step::Campaign));
    }
}
