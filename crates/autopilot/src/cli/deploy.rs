//! `autopilot deploy`: starts a rollout of an artifact's version, shows it (`status`, `history`), steers it (`pause`, `resume`, `abort`, `rollback`) and, with `--watch`/`--wait`, advances its gate as one more evaluator.
//!
//! Everything is a compare-and-swap on the rollout record
//! (`_fleet/rollouts/<name>/<id>`) against the exact text read, so the CLI
//! races agents harmlessly: a lost write is re-read and retried. The record
//! and the member entries are untrusted catalog data; the decisions are
//! `autopilot_core::rollout`'s.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use autopilot_catalog::Catalog;
use autopilot_core::rollout::{self, Action, Member, Rollout, State, Target, UnitSpec};
use autopilot_fleet::FleetError;
use autopilot_fleet::rollouts::{
    self, StartOptions, Transition, status_json, unit_phase, unit_views,
};
use clap::{Args, Subcommand};

use super::{
    Access, CatalogOpts, Deadline, Output, SetupError, bounded, exit, fleet_err, open_catalog,
    quote,
};

/// `--watch` re-reads this often even without a change notification (a safety net).
const RECHECK: Duration = Duration::from_secs(2);
/// Consecutive failed catalog reads `--watch`/`--wait` tolerate (each
/// bounded by `--timeout`) before giving up (exit 3).
const READ_RETRIES: u32 = 5;
/// Width of a unit's progress bar.
const BAR: usize = 10;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeployArgs {
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, global = true, value_name = "URL")]
    pub catalog: Option<String>,
    #[command(subcommand)]
    pub cmd: Option<DeployCmd>,
    /// The artifact to roll out.
    #[arg(required = true)]
    pub name: Option<String>,
    /// The version (as pushed with `autopilot artifact push`).
    #[arg(required = true)]
    pub version: Option<String>,
    /// Scale units, cumulative: instance counts or shares of the fleet.
    #[arg(long, value_name = "LIST", default_value = "1,10%,50%,100%")]
    pub units: String,
    /// How long an updated instance must stay healthy before its unit passes.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub probation: String,
    /// Failed instances tolerated in the units rolled so far.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failures: u32,
    /// On failure, stop without rolling the updated instances back.
    #[arg(long)]
    pub no_rollback: bool,
    /// Follow the rollout (advancing its gate) until it ends: exit 0 completed, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeployCmd {
    /// Show the latest rollout: state, versions, per-unit progress, failures.
    Status {
        name: String,
        /// Redraw on every catalog change and advance the gate until the rollout ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop starting further units (instances keep what they run).
    Pause { name: String },
    /// Resume a paused rollout.
    Resume { name: String },
    /// End the rollout where it stands (instances keep what they run).
    Abort { name: String },
    /// Send every instance back to the version before the rollout.
    Rollback { name: String },
    /// List the rollouts of an artifact, newest first.
    History { name: String },
}

/// A request that cannot be carried out as asked: exit 2.
fn refused(command: &str, message: String) -> anyhow::Error {
    SetupError {
        origin: command.into(),
        field: String::new(),
        message,
    }
    .into()
}

fn check_name(command: &str, what: &str, s: &str) -> anyhow::Result<()> {
    rollouts::check_name(what, s).map_err(|e| fleet_err(command, e))
}

/// Runs `autopilot deploy ...`.
pub async fn deploy_cmd(o: CatalogOpts, a: &DeployArgs, out: Output) -> anyhow::Result<i32> {
    match &a.cmd {
        None => {
            let (Some(name), Some(version)) = (&a.name, &a.version) else {
                return Err(refused(
                    "deploy",
                    "usage: autopilot deploy NAME VERSION".into(),
                ));
            };
            create(o, a, name, version, out).await
        }
        Some(DeployCmd::Status { name, watch }) => {
            check_name("deploy status", "artifact name", name)?;
            if *watch {
                let cat = open_catalog(&o, &super::cli_owner(), Access::Write)
                    .await?
                    .cat;
                follow(&o, cat.as_ref(), name, None, out).await
            } else {
                status(o, name, out).await
            }
        }
        Some(DeployCmd::Pause { name }) => transition(o, name, Action::Pause, out).await,
        Some(DeployCmd::Resume { name }) => transition(o, name, Action::Resume, out).await,
        Some(DeployCmd::Abort { name }) => transition(o, name, Action::Abort, out).await,
        Some(DeployCmd::Rollback { name }) => transition(o, name, Action::Rollback, out).await,
        Some(DeployCmd::History { name }) => history(o, name, out).await,
    }
}

fn what(o: &CatalogOpts) -> String {
    format!("catalog {}", o.url)
}

/// `deploy NAME VERSION`: writes rollout `latest + 1` by compare-and-swap from absent.
async fn create(
    o: CatalogOpts,
    a: &DeployArgs,
    name: &str,
    version: &str,
    out: Output,
) -> anyhow::Result<i32> {
    check_name("deploy", "artifact name", name)?;
    check_name("deploy", "version", version)?;
    let units = rollout::parse_units(&a.units).map_err(|e| refused("--units", e))?;
    let probation = super::duration_arg("--probation", &a.probation)?;
    let cat = open_catalog(&o, &super::cli_owner(), Access::Write)
        .await?
        .cat;
    let me = super::by();
    let opts = StartOptions {
        units,
        probation,
        max_failures: a.max_failures,
        rollback: !a.no_rollback,
    };
    let created = bounded(&what(&o), o.deadline, async {
        Ok(rollouts::create(cat.as_ref(), name, version, &opts, &me).await)
    })
    .await?;
    let r = match created {
        Ok(r) => r,
        Err(FleetError::NotFound(_)) => {
            eprintln!(
                "autopilot: deploy: no version {} of {name} in catalog {} (push it with `autopilot artifact push`)",
                quote(version),
                o.url
            );
            return Ok(exit::ABSENT);
        }
        Err(FleetError::Contended { key, attempts }) => {
            return Err(refused(
                "deploy",
                format!(
                    "{key} kept changing (the rollouts of {name} are being written by others); gave up after {attempts} attempts"
                ),
            ));
        }
        Err(e) => return Err(fleet_err("deploy", e)),
    };
    // The rollout is written: pruning is housekeeping, and its failure
    // (even past --timeout) must not make the deploy look failed.
    if let Err(e) = bounded(&what(&o), Deadline::after(o.timeout), async {
        rollouts::prune(cat.as_ref(), name)
            .await
            .map_err(|e| fleet_err("deploy", e))
    })
    .await
    {
        eprintln!("autopilot: deploy: warning: could not prune old rollouts of {name}: {e:#}");
    }
    if r.state == State::Completed {
        eprintln!(
            "autopilot: deploy: warning: no live instance of {name}: the rollout completed at once; every instance that starts gets {}",
            c(&r.target.version)
        );
    }
    if out.json() {
        println!("{}", rollout::encode(&r));
    } else {
        println!("{}", summary(&r));
    }
    if a.wait {
        std::io::stdout().flush()?;
        return follow(&o, cat.as_ref(), name, Some(r.id), out).await;
    }
    Ok(exit::OK)
}

/// Catalog text as printed on a terminal: see [`rollout::clean`].
fn c(s: &str) -> String {
    rollout::clean(s)
}

/// The version a target names, cleaned for a terminal.
fn version_of(t: Option<&Target>) -> String {
    c(t.map_or(rollout::ORIGINAL, |t| t.version.as_str()))
}

/// The one line `deploy` prints.
fn summary(r: &Rollout) -> String {
    let units: Vec<String> = r
        .units
        .iter()
        .zip(&r.unit_sizes)
        .map(|(u, n)| format!("{u}={n}"))
        .collect();
    format!(
        "rollout {} of {}: {} (from {}), {}, units {}, probation {}, max failures {}, {}",
        r.id,
        r.artifact,
        c(&r.target.version),
        version_of(r.from.as_ref()),
        r.state.as_str(),
        units.join(" "),
        super::dur(Duration::from_millis(r.probation_ms)),
        r.max_failures,
        if r.rollback {
            "rollback on failure"
        } else {
            "no rollback"
        }
    )
}

fn bar(done: usize, total: usize) -> String {
    let filled = done
        .saturating_mul(BAR)
        .checked_div(total)
        .unwrap_or(0)
        .min(BAR);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The status text; `tty` draws progress bars.
fn render(r: &Rollout, ms: &[Member], tty: bool) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "rollout {} of {}: {}, unit {} of {}",
        r.id,
        r.artifact,
        r.state.as_str(),
        r.unit.saturating_add(1),
        r.units.len()
    ));
    if let Some(next) = r.superseded_by {
        line(format!("  replaced by rollout {next}"));
    }
    let target = c(&r.target.version);
    line(format!(
        "  target {target} ({}), from {}{}",
        c(short(&r.target.sha256)),
        version_of(r.from.as_ref()),
        r.from
            .as_ref()
            .map(|t| format!(" ({})", c(short(&t.sha256))))
            .unwrap_or_default()
    ));
    line(format!(
        "  probation {}, max failures {}, {}; created {} by {}, updated {}",
        super::dur(Duration::from_millis(r.probation_ms)),
        r.max_failures,
        if r.rollback {
            "rollback on failure"
        } else {
            "no rollback"
        },
        c(&r.created),
        c(&r.by),
        c(&r.updated)
    ));
    let waiting = waiting_line(r, ms);
    for (k, u) in unit_views(r, ms).iter().enumerate() {
        let spec = r.units.get(k).map(UnitSpec::to_string).unwrap_or_default();
        let phase = unit_phase(r, k);
        let n = k.saturating_add(1);
        if tty {
            line(format!(
                "  unit {n} ({spec}) {} {}/{} on {target}, {} ok{} ({phase})",
                bar(u.on_target, u.instances),
                u.on_target,
                u.instances,
                u.ok,
                if u.failed > 0 {
                    format!(", {} failed", u.failed)
                } else {
                    String::new()
                }
            ));
        } else {
            line(format!(
                "  unit {n} ({spec}): {phase}, {} instances, {} on {target}, {} ok, {} failed",
                u.instances, u.on_target, u.ok, u.failed
            ));
        }
        if k == r.unit
            && let Some(w) = &waiting
        {
            line(format!("    waiting for: {w}"));
        }
    }
    if !r.failures.is_empty() {
        line(format!("  failures ({}):", r.failures.len()));
        for f in &r.failures {
            line(format!(
                "    {} at {}: {}",
                c(&f.instance),
                c(&f.at),
                c(&f.reason)
            ));
        }
    }
    if let Some(e) = r.events.last() {
        line(format!(
            "  last event: {} {} by {}",
            c(&e.at),
            c(&e.what),
            c(&e.by)
        ));
    }
    s
}

/// How many instances `deploy status` names as holding the gate.
const WAITING_SHOWN: usize = 10;

/// `host-a (critical), host-b (probation)[, and N more]`: what holds the
/// gate of the unit being rolled (or the rollback), `None` when nothing does.
fn waiting_line(r: &Rollout, ms: &[Member]) -> Option<String> {
    let w = rollout::waiting_for(r, ms);
    if w.is_empty() || r.superseded_by.is_some() {
        return None;
    }
    let mut parts: Vec<String> = w
        .iter()
        .take(WAITING_SHOWN)
        .map(|(i, why)| format!("{} ({})", c(i), c(why)))
        .collect();
    if w.len() > WAITING_SHOWN {
        parts.push(format!(
            "and {} more",
            w.len().saturating_sub(WAITING_SHOWN)
        ));
    }
    Some(parts.join(", "))
}

fn no_rollout(name: &str, o: &CatalogOpts) -> i32 {
    eprintln!("autopilot: no rollout of {name} in catalog {}", o.url);
    exit::ABSENT
}

/// `deploy status NAME` (one reading).
async fn status(o: CatalogOpts, name: &str, out: Output) -> anyhow::Result<i32> {
    let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
        .await?
        .cat;
    let read = bounded(&what(&o), o.deadline, async {
        rollouts::read_status(cat.as_ref(), name)
            .await
            .map_err(|e| fleet_err("deploy", e))
    })
    .await?;
    let Some((l, ms)) = read else {
        return Ok(no_rollout(name, &o));
    };
    if out.json() {
        println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&l.rollout, &ms))?
        );
    } else {
        print!(
            "{}",
            render(&l.rollout, &ms, std::io::stdout().is_terminal())
        );
    }
    Ok(exit::OK)
}

/// The exit code of an ended rollout.
fn ended_code(s: State) -> i32 {
    if s == State::Completed {
        exit::OK
    } else {
        exit::ABSENT
    }
}

/// `--watch`/`--wait`: redraws on every catalog change and applies the gate
/// (`evaluate`) by compare-and-swap, until the rollout (`id`, else the
/// latest) ends. Each round's reads get a whole `--timeout`.
async fn follow(
    o: &CatalogOpts,
    cat: &dyn Catalog,
    name: &str,
    id: Option<u64>,
    out: Output,
) -> anyhow::Result<i32> {
    let tty = std::io::stdout().is_terminal() && !out.json();
    let me = super::by();
    let mut changes = cat.changes();
    // After `deploy` created the rollout, the first round gets a whole
    // --timeout; `status --watch` shares the one that opened the catalog.
    let mut deadline = if id.is_some() {
        Deadline::after(o.timeout)
    } else {
        o.deadline
    };
    let mut last_shown = String::new();
    let mut failed_reads = 0u32;
    loop {
        changes.borrow_and_update();
        // The gate: whoever sees it hold writes the next record; a lost
        // write means someone else moved it, and the next round re-reads.
        let read = bounded(&what(o), deadline, async {
            rollouts::step(cat, name, &me)
                .await
                .map_err(|e| fleet_err("deploy", e))
        })
        .await;
        let read = match read {
            Ok(read) => {
                failed_reads = 0;
                read
            }
            // A catalog that fails a read or two (a leader election, a
            // restart) must not end a watch of a rollout that is fine; a
            // record that cannot be read as one (exit 2) is not retried.
            Err(e) if e.downcast_ref::<SetupError>().is_none() && failed_reads < READ_RETRIES => {
                failed_reads = failed_reads.saturating_add(1);
                let pause = backoff(failed_reads);
                eprintln!(
                    "autopilot: deploy: reading the rollout of {name} failed ({failed_reads} in a row, {READ_RETRIES} tolerated); retrying in {}: {e:#}",
                    super::dur(pause)
                );
                tokio::time::sleep(pause).await;
                deadline = Deadline::after(o.timeout);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((l, ms, moved)) = read else {
            return Ok(no_rollout(name, o));
        };
        if let Some(id) = id
            && l.rollout.id != id
        {
            // A newer rollout replaced ours, so ours had ended.
            eprintln!(
                "autopilot: rollout {id} of {name} was followed by rollout {}",
                l.rollout.id
            );
            return Ok(exit::ABSENT);
        }
        if moved {
            deadline = Deadline::after(o.timeout);
            continue;
        }
        let shown = if out.json() {
            status_json(&l.rollout, &ms).to_string()
        } else {
            render(&l.rollout, &ms, tty)
        };
        if shown != last_shown {
            let mut so = std::io::stdout().lock();
            if tty {
                // Home and clear: a redraw in place.
                write!(so, "\x1b[H\x1b[2J{shown}")?;
            } else if out.json() {
                writeln!(so, "{shown}")?;
            } else {
                write!(so, "{shown}")?;
            }
            so.flush()?;
            last_shown = shown;
        }
        if !l.rollout.state.active() {
            return Ok(ended_code(l.rollout.state));
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    tokio::time::sleep(RECHECK).await;
                }
            }
            _ = tokio::time::sleep(RECHECK) => {}
        }
        deadline = Deadline::after(o.timeout);
    }
}

/// The pause before retry `n` (from 1) of a failed read: 0.5s doubling, at most 8s.
fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(4);
    Duration::from_millis(500u64.saturating_mul(1u64 << doublings))
}

/// `deploy pause|resume|abort|rollback NAME`: the core transition, by
/// compare-and-swap, re-read and retried when an evaluator moved the record.
async fn transition(
    o: CatalogOpts,
    name: &str,
    action: Action,
    out: Output,
) -> anyhow::Result<i32> {
    let verb = match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Abort => "abort",
        Action::Rollback => "rollback",
    };
    let command = format!("deploy {verb}");
    check_name(&command, "artifact name", name)?;
    let cat = open_catalog(&o, &super::cli_owner(), Access::Write)
        .await?
        .cat;
    let me = super::by();
    let t = match action {
        Action::Pause => Transition::Pause,
        Action::Resume => Transition::Resume,
        Action::Abort => Transition::Abort,
        Action::Rollback => Transition::Rollback,
    };
    let done = bounded(&what(&o), o.deadline, async {
        Ok(rollouts::transition(cat.as_ref(), name, t, &me).await)
    })
    .await?;
    match done {
        Ok(r) => {
            if out.json() {
                println!("{}", rollout::encode(&r));
            } else {
                println!("rollout {} of {name}: {}", r.id, r.state.as_str());
            }
            Ok(exit::OK)
        }
        Err(FleetError::NotFound(_)) => Ok(no_rollout(name, &o)),
        Err(FleetError::Contended { key, attempts }) => Err(refused(
            &command,
            format!(
                "{key} kept changing (the rollout of {name} is being written by others); gave up after {attempts} attempts"
            ),
        )),
        Err(e) => Err(fleet_err(&command, e)),
    }
}

/// `deploy history NAME`: every kept record, newest first.
async fn history(o: CatalogOpts, name: &str, out: Output) -> anyhow::Result<i32> {
    check_name("deploy history", "artifact name", name)?;
    let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
        .await?
        .cat;
    let all = bounded(&what(&o), o.deadline, async {
        rollouts::records(cat.as_ref(), name)
            .await
            .map_err(|e| fleet_err("deploy", e))
    })
    .await?;
    if all.is_empty() {
        return Ok(no_rollout(name, &o));
    }
    if out.json() {
        let v = rollouts::history_json(&all);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    println!(
        "{:<8} {:<12} {:<20} {:<20} {:<24} {:<24} BY",
        "ID", "STATE", "TARGET", "FROM", "CREATED", "UPDATED"
    );
    for (id, key, _, r) in all.iter().rev() {
        match r {
            Ok(r) => println!(
                "{:<8} {:<12} {:<20} {:<20} {:<24} {:<24} {}{}",
                r.id,
                r.state.as_str(),
                c(&r.target.version),
                version_of(r.from.as_ref()),
                c(&r.created),
                c(&r.updated),
                c(&r.by),
                r.superseded_by
                    .map(|n| format!(" (replaced by rollout {n})"))
                    .unwrap_or_default()
            ),
            Err(e) => println!("{id:<8} {:<12} {key}: {}", "invalid", c(e)),
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_bounded() {
        assert_eq!(bar(5, 10), "[#####.....]");
        assert_eq!(bar(0, 0), "[..........]");
        assert_eq!(bar(12, 10), "[##########]", "never more than full");
        assert_eq!(bar(1, 3), "[###.......]");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(8));
    }
}
