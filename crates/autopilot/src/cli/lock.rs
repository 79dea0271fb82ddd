//! `autopilot lock NAME -- CMD`: runs a command while holding a cluster-wide lock, tied to the holder's life and session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use autopilot_catalog::Catalog;
use autopilot_process::{Attach, Exit, Sig, SpawnSpec, Spawner, signal_group, signal_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;

use super::dur;

/// What the keep-alive task last learned about the lock.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// Confirmed by a keep-alive *sent* at this instant (the lock lives at
    /// least `ttl` from then).
    Since(Instant),
    /// The catalog says the lock is no longer ours (the session was lost
    /// and replaced): another holder may already be in.
    Lost,
}

/// Keeps the session alive and checks after each keep-alive that the lock
/// is still ours: a keep-alive can succeed on a *new* session after the old
/// one and its locks were lost. Every attempt is bounded, so a stalled
/// catalog cannot hold up the next one.
async fn keep_alive(cat: Arc<dyn Catalog>, name: String, every: Duration, tx: watch::Sender<Held>) {
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match tokio::time::timeout(every, cat.keep_alive()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("autopilot: lock {name}: keep-alive failed: {e}");
                continue;
            }
            Err(_) => {
                eprintln!(
                    "autopilot: lock {name}: keep-alive unanswered after {}",
                    dur(every)
                );
                continue;
            }
        }
        match tokio::time::timeout(every, cat.holds_lock(&name)).await {
            Ok(Ok(true)) => {
                tx.send_replace(Held::Since(sent));
            }
            Ok(Ok(false)) => {
                tx.send_replace(Held::Lost);
                return;
            }
            Ok(Err(e)) => eprintln!("autopilot: lock {name}: cannot check the lock: {e}"),
            Err(_) => eprintln!(
                "autopilot: lock {name}: lock check unanswered after {}",
                dur(every)
            ),
        }
    }
}

/// A key no one writes: reading it proves the catalog answers.
const PROBE_KEY: &str = "autopilot-cli/probe";

/// Watches the catalog while the lock is awaited: a keep-alive (so the
/// waiting session keeps its place in the queue) and a read, every `every`.
/// Returns an error (exit 3) once nothing has answered for `limit`;
/// `failing` tells whether the last probe failed. Waiting for a lock that
/// is held stays unbounded: only an unreachable catalog ends the wait.
async fn watch_catalog(
    cat: Arc<dyn Catalog>,
    limit: Duration,
    every: Duration,
    failing: watch::Sender<bool>,
) -> anyhow::Error {
    let mut last_ok = Instant::now();
    let mut why = String::from("no answer");
    loop {
        let give_up = last_ok + limit;
        let probe = async {
            cat.keep_alive().await?;
            cat.kv_get(PROBE_KEY).await
        };
        match tokio::time::timeout_at(give_up, probe).await {
            Ok(Ok(_)) => {
                last_ok = Instant::now();
                failing.send_replace(false);
            }
            Ok(Err(e)) => {
                why = e.to_string();
                failing.send_replace(true);
            }
            Err(_) => {
                failing.send_replace(true);
            }
        }
        let now = Instant::now();
        if now >= last_ok + limit {
            return super::Unreachable(format!(
                "unreachable for {} (--timeout) while waiting for the lock: {why}",
                dur(limit)
            ))
            .into();
        }
        tokio::time::sleep(every.min((last_ok + limit).saturating_duration_since(now))).await;
    }
}

/// Waits for the lock: unbounded (or up to `wait`) while the catalog
/// answers; an error (exit 3) once it has not answered for `o.timeout`.
/// `Ok(false)`: not acquired within `wait`.
async fn acquire(
    cat: &Arc<dyn Catalog>,
    o: &super::CatalogOpts,
    name: &str,
    wait: Option<Duration>,
) -> anyhow::Result<bool> {
    let every = (o.timeout / 4)
        .min(cat.lock_ttl() / 3)
        .max(Duration::from_millis(100));
    let (tx, failing) = watch::channel(false);
    let give_up = wait.map(|w| Instant::now() + w);
    tokio::select! {
        r = cat.lock(name) => {
            r?;
            Ok(true)
        }
        e = watch_catalog(cat.clone(), o.timeout, every, tx) => Err(e.context(format!("lock {name}"))),
        _ = sleep_until_opt(give_up) => {
            let w = wait.map(dur).unwrap_or_default();
            if *failing.borrow() {
                return Err(super::Unreachable(format!(
                    "lock {name}: not acquired within {w} (--wait), and the catalog {} is not answering",
                    o.url
                ))
                .into());
            }
            eprintln!("autopilot: lock {name}: not acquired within {w} (--wait)");
            Ok(false)
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The exit code of a command that cannot be started, as `env`, `timeout`
/// and `flock` give: 127 when it is not found, 126 when it cannot run.
fn spawn_failure_code(e: &autopilot_process::SpawnError) -> i32 {
    match e {
        autopilot_process::SpawnError::Exec { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            127
        }
        _ => 126,
    }
}

/// Holds the lock while the command runs and releases it only after the
/// command exited. SIGTERM and SIGINT go to the command's process group; if
/// this process is killed, the kernel kills the command (parent-death
/// signal, and a guard process that kills the command's whole group) and
/// the lock expires with the session. If the session cannot be confirmed
/// for nearly the lock's TTL, or the catalog says the lock is no longer
/// ours, another holder may enter: the command gets SIGTERM (SIGKILL once
/// the TTL has passed) and the exit code is 1.
/// With `wait`, gives up (exit 1) if the lock is not ours within it. A
/// catalog that does not answer for `--timeout` while the lock is awaited
/// ends the wait (exit 3); a command that cannot be started exits 127 (not
/// found) or 126.
pub async fn lock_cmd(
    o: super::CatalogOpts,
    name: &str,
    wait: Option<Duration>,
    command: &[String],
    env: BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    if command.is_empty() {
        return Err(super::SetupError {
            origin: "lock".into(),
            field: String::new(),
            message: "needs a command after --".into(),
        }
        .into());
    }
    let owner = format!(
        "lock-{}-{}",
        std::process::id(),
        autopilot_catalog::now_ms()
    );
    let cat = super::open_catalog(&o, &owner, super::Access::Write)
        .await?
        .cat;
    let ttl = cat.lock_ttl();
    let margin = (ttl / 5).max(Duration::from_millis(300));
    if !acquire(&cat, &o, name, wait).await? {
        return Ok(super::exit::ABSENT);
    }
    // Waiting for the lock may have taken long: confirm the session now,
    // so the TTL is counted from a known instant.
    let locked_at = Instant::now();
    let confirmed = match tokio::time::timeout(o.timeout, cat.keep_alive()).await {
        Ok(r) => r.map(|_| ()).map_err(anyhow::Error::new),
        Err(_) => Err(super::Unreachable(format!(
            "no answer within {} (--timeout)",
            dur(o.timeout)
        ))
        .into()),
    };
    if let Err(e) = confirmed {
        let _ = tokio::time::timeout(o.timeout, cat.unlock(name)).await;
        return Err(e.context(format!("lock {name}: cannot confirm the session")));
    }
    // Handlers first, so a signal that comes right after the spawn is forwarded.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let spawner = Spawner::start()?;
    // The command's parent-death signal does not reach its descendants: it
    // runs in a group led by a guard that kills the whole group if this
    // process dies. The group exists first, so no descendant escapes it.
    let guard = match spawner.spawn_group_guard(Sig::Term) {
        Ok(g) => g,
        Err(e) => {
            let _ = tokio::time::timeout(o.timeout, cat.unlock(name)).await;
            return Err(e.into());
        }
    };
    let group = guard.pid;
    let spec = SpawnSpec {
        argv: command.to_vec(),
        env: env.into_iter().collect(),
        raw_output: true,
        tag: format!("lock.{name}"),
    };
    let attach = Attach {
        inherit_stdio: true,
        die_with_parent: true,
        group: Some(group),
    };
    let mut child = match spawner.spawn_attached(&spec, attach) {
        Ok(c) => c,
        Err(e) => {
            let _ = signal_process(guard.pid, Sig::Kill);
            let _ = tokio::time::timeout(o.timeout, cat.unlock(name)).await;
            eprintln!("autopilot: lock {name}: {e}");
            return Ok(spawn_failure_code(&e));
        }
    };
    let every = cat
        .keep_alive_interval()
        .unwrap_or(ttl / 3)
        .min(ttl / 3)
        .max(Duration::from_millis(100));
    let (tx, mut confirmed) = watch::channel(Held::Since(locked_at));
    let renew = tokio::spawn(keep_alive(cat.clone(), name.to_string(), every, tx));
    let (mut last, mut renewing) = (locked_at, true);
    // Once the lock is (or may be) lost: when the command gets SIGKILL.
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let exit = loop {
        let held = *confirmed.borrow_and_update();
        match held {
            Held::Since(at) => last = at,
            Held::Lost if kill_at.is_none() => {
                kill_at = Some(Instant::now() + ttl);
                eprintln!(
                    "autopilot: lock {name}: the catalog no longer holds the lock for this session (the session was lost); stopping the command"
                );
                signal_group(group, Sig::Term)?;
            }
            Held::Lost => {}
        }
        let deadline = last + ttl.saturating_sub(margin);
        tokio::select! {
            r = &mut child.exit => break r,
            _ = term.recv() => signal_group(group, Sig::Term)?,
            _ = int.recv() => signal_group(group, Sig::Int)?,
            r = confirmed.changed(), if renewing => renewing = r.is_ok(),
            // The grace after SIGTERM is over: another holder may be in.
            _ = tokio::time::sleep_until(kill_at.unwrap_or(last + ttl)), if kill_at.is_some() && !killed => {
                killed = true;
                signal_group(group, Sig::Kill)?;
            }
            _ = tokio::time::sleep_until(deadline), if kill_at.is_none() => {
                // A full TTL without confirmation ends the lock.
                kill_at = Some(last + ttl);
                eprintln!(
                    "autopilot: lock {name}: the session was not confirmed for {} of the lock's {} TTL; the lock may be lost, stopping the command",
                    dur(ttl.saturating_sub(margin)),
                    dur(ttl),
                );
                signal_group(group, Sig::Term)?;
            }
        }
    };
    renew.abort();
    // The command is done: stop the guard with a signal it cannot catch, so
    // it leaves the group alone.
    signal_process(guard.pid, Sig::Kill)?;
    let _ = guard.exit.await;
    let lost = kill_at.is_some();
    let exit = exit.context("lost the command's exit status")?;
    if lost {
        // Best effort, bounded: the catalog is not answering, and the lock
        // may already be someone else's.
        let _ = tokio::time::timeout(ttl, cat.unlock(name)).await;
        return Ok(1);
    }
    // Bounded: the lock expires with the session if the catalog is gone.
    match tokio::time::timeout(o.timeout, cat.unlock(name)).await {
        Ok(r) => r?,
        Err(_) => eprintln!(
            "autopilot: lock {name}: unlock unanswered after {}; the lock expires with the session",
            dur(o.timeout)
        ),
    }
    Ok(match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    })
}
