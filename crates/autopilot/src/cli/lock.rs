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
                eprintln!("autopilot: lock {name}: keep-alive unanswered after {every:?}");
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
            Err(_) => eprintln!("autopilot: lock {name}: lock check unanswered after {every:?}"),
        }
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
/// With `wait`, gives up (exit 1) if the lock is not ours within it.
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
    match wait {
        Some(w) => match tokio::time::timeout(w, cat.lock(name)).await {
            Ok(r) => r?,
            Err(_) => {
                eprintln!("autopilot: lock {name}: not acquired within {w:?} (--wait)");
                return Ok(super::exit::ABSENT);
            }
        },
        None => cat.lock(name).await?,
    }
    // Waiting for the lock may have taken long: confirm the session now,
    // so the TTL is counted from a known instant.
    let locked_at = Instant::now();
    let confirmed = match tokio::time::timeout(o.timeout, cat.keep_alive()).await {
        Ok(r) => r.map(|_| ()).map_err(anyhow::Error::new),
        Err(_) => {
            Err(super::Unreachable(format!("no answer within {:?} (--timeout)", o.timeout)).into())
        }
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
            return Err(e.into());
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
                    "autopilot: lock {name}: the session was not confirmed for {:?} of the lock's {ttl:?} TTL; the lock may be lost, stopping the command",
                    ttl.saturating_sub(margin),
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
            "autopilot: lock {name}: unlock unanswered after {:?}; the lock expires with the session",
            o.timeout
        ),
    }
    Ok(match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    })
}
