//! The cluster commands (`cluster list`, `cluster position`, `switchover`, `failover`, `pause`, `resume`, `reinit`): member records and intents in the catalog.
//!
//! Agents publish one member record per candidate (service `_members.<election>`)
//! and act on intents (keys under `_cluster/<election>/`); these commands read the
//! records and write the intents, then wait on the catalog for the outcome. The
//! formats are the contract in ARCHITECTURE.md; everything read back is untrusted
//! (tags are parsed leniently and never panic).

use std::time::Duration;

use anyhow::Context;
use autopilot_catalog::{Catalog, Status, now_ms};
use autopilot_fleet as fleet;
use autopilot_fleet::clusters::{Member, View, intent_json, intent_key, ms_field, str_field};
use clap::{Args, Subcommand};
use serde_json::json;

use super::control::Req;
use super::{
    Access, CatalogOpts, Deadline, Output, SetupError, Unreachable, exit, fleet_err, open_catalog,
    quote,
};

/// How long `switchover` and `failover` wait by default.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `reinit` waits by default (a rebuild restores or clones data).
pub const REINIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Re-read this often even without a change notification (a safety net).
const RECHECK: Duration = Duration::from_millis(250);

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// One table of an election's members: role, term, health, position, lag, priority, heartbeat.
    List { election: String },
    /// Publish this node's replication position (from a hook): a decimal number or a PostgreSQL LSN X/Y.
    Position {
        /// The election (default: the agent's only election).
        #[arg(long, value_name = "NAME")]
        election: Option<String>,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

/// The catalog flag every cluster command takes.
#[derive(Args, Debug)]
pub struct CatalogArg {
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, global = true, value_name = "URL")]
    pub catalog: Option<String>,
}

#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub catalog: CatalogArg,
    pub election: String,
    /// The member to hand over to (default: the most advanced eligible one).
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,
    /// Schedule the handover at this time (RFC 3339) and return at once.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Refuse a target further behind than this (position units), whatever its maxlag tag says.
    #[arg(long, value_name = "N")]
    pub max_lag: Option<u64>,
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub catalog: CatalogArg,
    pub election: String,
    /// The member that must lead.
    #[arg(long, value_name = "ID", required = true)]
    pub to: String,
}

#[derive(Args, Debug)]
pub struct ElectionArgs {
    #[command(flatten)]
    pub catalog: CatalogArg,
    pub election: String,
}

#[derive(Args, Debug)]
pub struct ReinitArgs {
    #[command(flatten)]
    pub catalog: CatalogArg,
    pub election: String,
    /// The member to rebuild.
    pub id: String,
    /// Return once the request is written.
    #[arg(long)]
    pub no_wait: bool,
}

/// A request that cannot be carried out as asked: exit 2 with `message`.
fn refused(command: &str, message: String) -> anyhow::Error {
    SetupError {
        origin: command.into(),
        field: String::new(),
        message,
    }
    .into()
}

/// Election names become key components: one printable path component.
fn check_election(command: &str, election: &str) -> anyhow::Result<()> {
    fleet::clusters::check_election(election).map_err(|e| fleet_err(command, e))
}

/// An election's view (members with their heartbeats, leader, intents).
async fn read_view(cat: &dyn Catalog, election: &str) -> anyhow::Result<View> {
    fleet::clusters::read_view(cat, election)
        .await
        .map_err(|e| fleet_err("cluster", e))
}

/// Deletes our intent only if it still holds what we wrote.
async fn withdraw(cat: &dyn Catalog, key: &str, ours: &str) -> anyhow::Result<bool> {
    fleet::clusters::withdraw(cat, key, ours)
        .await
        .map_err(|e| fleet_err("cluster", e))
}

/// Writes an intent unless a live one (its deadline not passed) stands.
async fn write_intent(
    cat: &dyn Catalog,
    command: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    fleet::clusters::write_intent(cat, key, value)
        .await
        .map_err(|e| fleet_err(command, e))
}

fn when(ms: Option<u64>) -> String {
    ms.map_or_else(|| "?".into(), autopilot_catalog::rfc3339_ms)
}

/// The first line of `cluster list`: leader, pause and pending operations.
fn summary(election: &str, v: &View) -> String {
    let mut parts = vec![match &v.leader {
        Some(l) => format!("{election}: {} leads at term {}", l.id, l.term),
        None => format!("{election}: nobody leads"),
    }];
    if let Some(p) = &v.paused {
        parts.push(format!("PAUSED since {}", when(ms_field(p, "since_ms"))));
    }
    if let Some(s) = &v.switchover {
        parts.push(format!(
            "switchover pending: {} -> {} at {}, until {}",
            str_field(s, "from").unwrap_or("?"),
            str_field(s, "to").unwrap_or("the best member"),
            when(ms_field(s, "at_ms")),
            when(ms_field(s, "deadline_ms"))
        ));
    }
    if let Some(f) = &v.failover {
        parts.push(format!(
            "failover pending: to {}, until {}",
            str_field(f, "to").unwrap_or("?"),
            when(ms_field(f, "deadline_ms"))
        ));
    }
    if v.paused.is_none() && v.switchover.is_none() && v.failover.is_none() {
        parts.push("not paused, nothing pending".into());
    }
    parts.join("; ")
}

/// The age of an RFC 3339 heartbeat, as people read it.
fn age(heartbeat: &str, now: std::time::SystemTime) -> String {
    match humantime::parse_rfc3339_weak(heartbeat) {
        Ok(t) => match now.duration_since(t) {
            Ok(d) if d >= Duration::from_secs(1) => format!("{}s ago", d.as_secs()),
            Ok(d) => format!("{}ms ago", d.as_millis()),
            Err(_) => "now".into(),
        },
        Err(_) => "?".into(),
    }
}

/// Catalog text as a table cell: control characters (a terminal escape, a
/// line break) in a hostile record are escaped, never printed raw.
fn cell(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_view(election: &str, v: &View, out: Output) -> anyhow::Result<()> {
    if out.json() {
        println!("{}", serde_json::to_string_pretty(&v.to_json(election))?);
        return Ok(());
    }
    println!("{}", cell(&summary(election, v)));
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 8]> = v
        .members
        .iter()
        .map(|m| {
            [
                cell(&m.id),
                v.role(m).to_string(),
                if v.is_leader(m) {
                    opt(v.leader.as_ref().map(|l| l.term))
                } else {
                    "-".into()
                },
                m.status.as_str().to_string(),
                opt(m.position),
                opt(v.lag(m)),
                m.priority.to_string(),
                age(&m.last_heartbeat, now),
            ]
        })
        .collect();
    let head = [
        "MEMBER",
        "ROLE",
        "TERM",
        "HEALTH",
        "POSITION",
        "LAG",
        "PRIORITY",
        "HEARTBEAT",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(head.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    Ok(())
}

/// Runs one of the catalog-side cluster commands; `catalog` chooses the
/// catalog from a `--catalog` flag as every catalog command does.
/// (`cluster position` goes to the control socket, as `reload` does.)
pub fn dispatch(
    cmd: &super::args::Cmd,
    catalog: impl Fn(&Option<String>) -> anyhow::Result<CatalogOpts>,
    timeout: Option<&str>,
    out: Output,
) -> anyhow::Result<i32> {
    use super::args::Cmd;
    use super::block_on;
    match cmd {
        Cmd::Cluster {
            catalog: c,
            cmd: ClusterCmd::List { election },
        } => block_on(list(catalog(&c.catalog)?, election, out))?,
        Cmd::Switchover(a) => block_on(switchover(catalog(&a.catalog.catalog)?, a, timeout, out))?,
        Cmd::Failover(a) => block_on(failover(catalog(&a.catalog.catalog)?, a, timeout, out))?,
        Cmd::Pause(a) => block_on(pause(catalog(&a.catalog.catalog)?, a, out))?,
        Cmd::Resume(a) => block_on(resume(catalog(&a.catalog.catalog)?, a, out))?,
        Cmd::Reinit(a) => block_on(reinit(catalog(&a.catalog.catalog)?, a, timeout, out))?,
        other => Err(anyhow::anyhow!("not a cluster command: {other:?}")),
    }
}

/// `autopilot cluster list ELECTION`.
pub async fn list(o: CatalogOpts, election: &str, out: Output) -> anyhow::Result<i32> {
    check_election("cluster list", election)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Read).await?;
    let what = format!("catalog {}", o.url);
    let view = super::bounded(&what, o.deadline, async {
        read_view(opened.cat.as_ref(), election).await
    })
    .await?;
    print_view(election, &view, out)?;
    Ok(exit::OK)
}

/// `autopilot cluster position`: the request to the agent's control socket.
pub fn position_req(election: Option<&str>, value: &str) -> Req {
    Req::post(
        "/v3/cluster/position",
        Some(json!({ "election": election, "position": value }).to_string()),
    )
}

/// The command's own timeout: `--timeout`, else `default`; the catalog is
/// opened and every wait ends within it.
fn with_timeout(
    mut o: CatalogOpts,
    flag: Option<&str>,
    default: Duration,
) -> anyhow::Result<CatalogOpts> {
    o.timeout = super::timeout_arg(flag, default)?;
    o.deadline = Deadline::after(o.timeout);
    Ok(o)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits, woken by catalog changes, until `done` holds of the election's
/// view, or `deadline`. Returns the view that satisfied it.
async fn wait_until(
    cat: &dyn Catalog,
    election: &str,
    deadline: Deadline,
    mut done: impl FnMut(&View) -> bool,
) -> anyhow::Result<Option<View>> {
    let mut changes = cat.changes();
    loop {
        changes.borrow_and_update();
        // A failed read is retried until the deadline: an outage during a
        // handover is not its failure.
        if let Ok(Ok(v)) = tokio::time::timeout_at(deadline.at, read_view(cat, election)).await
            && done(&v)
        {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline.at {
            return Ok(None);
        }
        let next = (tokio::time::Instant::now() + RECHECK).min(deadline.at);
        tokio::select! {
            r = changes.changed() => {
                // A closed notifier: the re-check interval alone.
                if r.is_err() {
                    tokio::time::sleep_until(next).await;
                }
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

fn handed_over(
    election: &str,
    v: &View,
    started: std::time::Instant,
    out: Output,
) -> anyhow::Result<i32> {
    let took = started.elapsed();
    let l = v.leader.as_ref().context("no leader after the handover")?;
    if out.json() {
        println!(
            "{}",
            json!({
                "election": election,
                "leader": fleet::clusters::leader_json(&v.leader),
                "handoverMs": ms(took),
            })
        );
    } else {
        println!(
            "{} leads {election} at term {} (handover took {})",
            l.id,
            l.term,
            super::dur(took)
        );
    }
    Ok(exit::OK)
}

/// `autopilot switchover ELECTION [--to ID] [--at TIME] [--max-lag N]`.
pub async fn switchover(
    o: CatalogOpts,
    a: &SwitchoverArgs,
    timeout: Option<&str>,
    out: Output,
) -> anyhow::Result<i32> {
    const CMD: &str = "switchover";
    check_election(CMD, &a.election)?;
    let at_ms = match &a.at {
        None => None,
        Some(t) => {
            let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
                refused(
                    "--at",
                    format!("{}: {e} (RFC 3339, e.g. 2026-01-02T03:04:05Z)", quote(t)),
                )
            })?;
            let at = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(ms)
                .unwrap_or(0);
            if at < now_ms() {
                return Err(refused("--at", format!("{} is in the past", quote(t))));
            }
            Some(at)
        }
    };
    let o = with_timeout(o, timeout, HANDOVER_TIMEOUT)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Write).await?;
    let cat = opened.cat.as_ref();
    let what = format!("catalog {}", o.url);
    let req = fleet::clusters::SwitchoverRequest {
        to: a.to.clone(),
        at_ms,
        max_lag: a.max_lag,
        window_ms: ms(o.timeout),
    };
    let sw = super::bounded(&what, o.deadline, async {
        fleet::clusters::request_switchover(cat, &a.election, &req)
            .await
            .map_err(|e| fleet_err(CMD, e))
    })
    .await?;
    let (key, value, at, deadline) = (sw.key, sw.value, sw.at_ms, sw.deadline_ms);
    let leader = sw.from;
    if a.at.is_some() {
        if out.json() {
            println!(
                "{}",
                json!({"election": a.election, "scheduled": intent_json(&Some(serde_json::from_str(&value)?))})
            );
        } else {
            println!(
                "switchover of {} from {} scheduled at {} (valid until {})",
                a.election,
                leader,
                autopilot_catalog::rfc3339_ms(at),
                autopilot_catalog::rfc3339_ms(deadline)
            );
        }
        return Ok(exit::OK);
    }
    let started = std::time::Instant::now();
    let done = wait_until(cat, &a.election, o.deadline, |v| {
        v.leader.as_ref().is_some_and(|l| match &a.to {
            Some(to) => &l.id == to,
            None => l.id != leader,
        })
    })
    .await?;
    finish(cat, &key, &value, &a.election, done, started, &o, CMD, out).await
}

/// After the wait: withdraw our intent (within a fresh short bound: the
/// command's deadline may be spent), then report or time out (exit 3).
#[allow(clippy::too_many_arguments)]
async fn finish(
    cat: &dyn Catalog,
    key: &str,
    value: &str,
    election: &str,
    done: Option<View>,
    started: std::time::Instant,
    o: &CatalogOpts,
    command: &str,
    out: Output,
) -> anyhow::Result<i32> {
    let cleanup = Deadline::after(super::DEFAULT_TIMEOUT);
    let withdrawn = super::bounded(
        &format!("catalog {}", o.url),
        cleanup,
        withdraw(cat, key, value),
    )
    .await;
    match done {
        Some(v) => {
            withdrawn?;
            handed_over(election, &v, started, out)
        }
        None => {
            let note = match withdrawn {
                Ok(_) => "the request was withdrawn".to_string(),
                Err(e) => format!("withdrawing the request failed ({e:#}): delete {key}"),
            };
            Err(Unreachable(format!(
                "{command} of {election} did not complete within {} (--timeout); {note}",
                super::dur(o.timeout)
            ))
            .into())
        }
    }
}

/// `autopilot failover ELECTION --to ID`.
pub async fn failover(
    o: CatalogOpts,
    a: &FailoverArgs,
    timeout: Option<&str>,
    out: Output,
) -> anyhow::Result<i32> {
    const CMD: &str = "failover";
    check_election(CMD, &a.election)?;
    let o = with_timeout(o, timeout, HANDOVER_TIMEOUT)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Write).await?;
    let cat = opened.cat.as_ref();
    let what = format!("catalog {}", o.url);
    let v = super::bounded(&what, o.deadline, read_view(cat, &a.election)).await?;
    // A seat is ended only when its holder's own record says critical: a
    // leader without a record (an older agent, a job without an address)
    // may be healthy, and ending its seat would make two primaries.
    if let Some(l) = &v.leader {
        match v.member(&l.id) {
            None => {
                return Err(refused(
                    CMD,
                    format!(
                        "{} leads {} (term {}) but has no member record, so its health is unknown: its seat is not ended; stop it or wait for its seat to expire, then retry",
                        l.id, a.election, l.term
                    ),
                ));
            }
            Some(m) if m.passing() => {
                return Err(refused(
                    CMD,
                    format!(
                        "{} leads {} and is passing: use `autopilot switchover {} --to {}`",
                        m.id, a.election, a.election, a.to
                    ),
                ));
            }
            Some(m) if m.status != Status::Critical => {
                return Err(refused(
                    CMD,
                    format!(
                        "{} leads {} and is {}, not critical: its seat is not ended",
                        m.id,
                        a.election,
                        m.status.as_str()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let m = v.member(&a.to).ok_or_else(|| {
        refused(
            CMD,
            format!(
                "{} is not a member of {} (members: {})",
                quote(&a.to),
                a.election,
                v.member_ids()
            ),
        )
    })?;
    if !m.passing() {
        return Err(refused(
            CMD,
            format!(
                "{} is {}, not passing: it cannot campaign",
                m.id,
                m.status.as_str()
            ),
        ));
    }
    if v.leader.as_ref().is_some_and(|l| l.id == a.to) {
        return Err(refused(CMD, format!("{} already leads", a.to)));
    }
    let value =
        json!({"to": a.to, "deadline_ms": now_ms().saturating_add(ms(o.timeout))}).to_string();
    let key = intent_key(&a.election, "failover");
    super::bounded(&what, o.deadline, write_intent(cat, CMD, &key, &value)).await?;
    let started = std::time::Instant::now();
    // The intent first, so only the target campaigns for the freed seat.
    if let Some(l) = &v.leader {
        let ended = super::bounded(&what, o.deadline, async {
            Ok(cat.end_seat(&a.election, l).await?)
        })
        .await;
        match ended {
            Ok(true) => eprintln!(
                "autopilot: ended the seat of {} (term {}), which was critical",
                l.id, l.term
            ),
            Ok(false) => {}
            Err(e) => {
                let _ = withdraw(cat, &key, &value).await;
                return Err(e);
            }
        }
    }
    let done = wait_until(cat, &a.election, o.deadline, |v| {
        v.leader.as_ref().is_some_and(|l| l.id == a.to)
    })
    .await?;
    finish(cat, &key, &value, &a.election, done, started, &o, CMD, out).await
}

/// `autopilot pause ELECTION`: idempotent (a pause keeps its first time).
pub async fn pause(o: CatalogOpts, a: &ElectionArgs, out: Output) -> anyhow::Result<i32> {
    check_election("pause", &a.election)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Write).await?;
    let cat = opened.cat.as_ref();
    let what = format!("catalog {}", o.url);
    let me = super::by();
    let wrote = super::bounded(&what, o.deadline, async {
        fleet::clusters::pause(cat, &a.election, &me)
            .await
            .map_err(|e| fleet_err("pause", e))
    })
    .await?
    .changed;
    if out.json() {
        println!(
            "{}",
            json!({"election": a.election, "paused": true, "changed": wrote})
        );
    } else if wrote {
        println!(
            "{} paused: no automatic failover until `autopilot resume {}`",
            a.election, a.election
        );
    } else {
        println!("{} was already paused", a.election);
    }
    Ok(exit::OK)
}

/// `autopilot resume ELECTION`: idempotent.
pub async fn resume(o: CatalogOpts, a: &ElectionArgs, out: Output) -> anyhow::Result<i32> {
    check_election("resume", &a.election)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Write).await?;
    let cat = opened.cat.as_ref();
    let what = format!("catalog {}", o.url);
    let me = super::by();
    let removed = super::bounded(&what, o.deadline, async {
        fleet::clusters::resume(cat, &a.election, &me)
            .await
            .map_err(|e| fleet_err("resume", e))
    })
    .await?
    .changed;
    if out.json() {
        println!(
            "{}",
            json!({"election": a.election, "paused": false, "changed": removed})
        );
    } else if removed {
        println!("{} resumed", a.election);
    } else {
        println!("{} was not paused", a.election);
    }
    Ok(exit::OK)
}

/// `autopilot reinit ELECTION ID [--no-wait]`.
pub async fn reinit(
    o: CatalogOpts,
    a: &ReinitArgs,
    timeout: Option<&str>,
    out: Output,
) -> anyhow::Result<i32> {
    const CMD: &str = "reinit";
    check_election(CMD, &a.election)?;
    let o = with_timeout(o, timeout, REINIT_TIMEOUT)?;
    let opened = open_catalog(&o, &super::cli_owner(), Access::Write).await?;
    let cat = opened.cat.as_ref();
    let what = format!("catalog {}", o.url);
    let v = super::bounded(&what, o.deadline, read_view(cat, &a.election)).await?;
    if v.leader.as_ref().is_some_and(|l| l.id == a.id) {
        return Err(refused(
            CMD,
            format!(
                "{} leads {}: hand the seat over first (`autopilot switchover {}`)",
                a.id, a.election, a.election
            ),
        ));
    }
    if v.member(&a.id).is_none() {
        eprintln!(
            "autopilot: {} is not a member of {} (members: {})",
            quote(&a.id),
            a.election,
            v.member_ids()
        );
        return Ok(exit::ABSENT);
    }
    let key = intent_key(&a.election, &format!("reinit/{}", a.id));
    autopilot_catalog::check_key(cat.url(), &key)?;
    let value = json!({ "requested_ms": now_ms() }).to_string();
    super::bounded(&what, o.deadline, async {
        Ok(cat.kv_put(&key, &value).await?)
    })
    .await?;
    if a.no_wait {
        if !out.json() {
            println!("reinit of {} in {} requested", a.id, a.election);
        } else {
            println!(
                "{}",
                json!({"election": a.election, "id": a.id, "requested": true})
            );
        }
        return Ok(exit::OK);
    }
    let started = std::time::Instant::now();
    let mut gone = false;
    // Whether the agent consumed the request, read on the same wake-ups as
    // the view (by the racing reader below).
    let consumed = std::cell::Cell::new(false);
    let id = a.id.clone();
    let done = wait_until(cat, &a.election, o.deadline, |v| {
        let passing = v.member(&id).is_some_and(Member::passing);
        gone |= !passing;
        passing && (gone || consumed.get())
    });
    let done = {
        tokio::pin!(done);
        loop {
            tokio::select! {
                r = &mut done => break r?,
                _ = tokio::time::sleep(RECHECK), if !consumed.get() => {
                    if let Ok(Ok(None)) = tokio::time::timeout(RECHECK, cat.kv_get(&key)).await {
                        consumed.set(true);
                    }
                }
            }
        }
    };
    match done {
        Some(_) => {
            let took = started.elapsed();
            if out.json() {
                println!(
                    "{}",
                    json!({"election": a.election, "id": a.id, "rebuiltMs": ms(took)})
                );
            } else {
                println!(
                    "{} in {} rebuilt and passing again after {}",
                    a.id,
                    a.election,
                    super::dur(took)
                );
            }
            Ok(exit::OK)
        }
        None => Err(Unreachable(format!(
            "{} in {} was not rebuilt and passing within {} (--timeout); the request {key} stands until its agent acts on it",
            a.id,
            a.election,
            super::dur(o.timeout)
        ))
        .into()),
    }
}
