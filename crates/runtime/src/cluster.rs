//! The runtime side of clusters: the presence listener, the leader prober of the fast crash failover, reading member records and intents (parsed leniently, every call under a deadline), and reinit: the per-job intent watch and emptying a data directory through descriptors.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use autopilot_catalog::{Catalog, Status};
use autopilot_core::cluster::{
    self, Failover, IntentKey, Intents, Member, Probe, Streak, Switchover,
};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// How often followers probe the leader.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// One connection attempt's deadline: a live host refuses at once; a
/// timeout is never counted as refused.
const PROBE_DEADLINE: Duration = Duration::from_millis(80);
/// The presence listener's accept queue: small, so a stopped agent's queue
/// fills and connections to it time out (never refuse).
const PRESENCE_BACKLOG: u32 = 8;

/// A TCP listener on the candidate's address, port 0, that accepts and
/// closes connections. It exists only so that connections to it are
/// refused once this process is dead: the kernel closes it with us.
pub struct Presence {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Presence {
    pub fn open(ip: IpAddr) -> std::io::Result<Presence> {
        let socket = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(ip, 0))?;
        let listener = socket.listen(PRESENCE_BACKLOG)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => drop(conn),
                    // Out of descriptors and the like: back off briefly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(Presence { addr, task })
    }
}

/// Where a follower probes the leader holding `term`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub term: u64,
    pub probe: SocketAddr,
    pub service: SocketAddr,
}

impl ProbeTarget {
    /// The target for a leader, from its member record; `None` without a
    /// readable probe address or a service IP (no name lookups here).
    pub fn of(leader: &autopilot_catalog::Leader, member: &Member) -> Option<ProbeTarget> {
        let probe = member.probe.as_deref()?.parse().ok()?;
        let ip: IpAddr = leader.address.parse().ok()?;
        Some(ProbeTarget {
            term: leader.term,
            probe,
            service: SocketAddr::new(ip, leader.port),
        })
    }
}

/// Whether a connection to `addr` is refused (ECONNREFUSED, within the
/// deadline). A timeout, an unreachable network or any other error is not.
async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_DEADLINE, TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

async fn round(t: &ProbeTarget) -> Probe {
    // The service is asked only when the agent's listener refused.
    if refused(t.probe).await && refused(t.service).await {
        Probe::Refused
    } else {
        Probe::NotRefused
    }
}

/// Probes the target every [`PROBE_EVERY`] and publishes the term it has
/// confirmed dead (3 refused rounds in a row), or `None`.
pub async fn run_prober(
    mut target: watch::Receiver<Option<ProbeTarget>>,
    suspect: watch::Sender<Option<u64>>,
) {
    loop {
        let current = target.borrow_and_update().clone();
        suspect.send_if_modified(|s| s.take().is_some());
        let Some(t) = current else {
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut streak = Streak::default();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = target.changed() => {
                    if r.is_err() { return }
                    break;
                }
                _ = tick.tick() => {}
            }
            let want = streak.record(round(&t).await).then_some(t.term);
            suspect.send_if_modified(|s| {
                let changed = *s != want;
                *s = want;
                changed
            });
        }
    }
}

/// The member records of an election, leniently parsed.
pub async fn members(
    catalog: &dyn Catalog,
    election: &str,
    limit: Duration,
) -> Option<Vec<Member>> {
    let svc = cluster::members_service(election);
    let list = tokio::time::timeout(limit, catalog.instances(&svc))
        .await
        .ok()?
        .ok()?;
    Some(
        list.iter()
            .filter_map(|i| {
                Member::from_record(election, &i.id, i.status == Status::Passing, &i.tags)
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct SwitchoverJson {
    from: String,
    to: Option<String>,
    #[serde(default)]
    at_ms: u64,
    deadline_ms: u64,
}

#[derive(Deserialize)]
struct FailoverJson {
    to: String,
    deadline_ms: u64,
}

/// The intents of an election. An intent whose value cannot be read is
/// ignored (logged), except `paused`, which is present = paused.
pub async fn intents(catalog: &dyn Catalog, election: &str, limit: Duration) -> Option<Intents> {
    let prefix = cluster::intents_prefix(election);
    let kv = tokio::time::timeout(limit, catalog.kv_list(&prefix))
        .await
        .ok()?
        .ok()?;
    let mut out = Intents::default();
    for (k, v) in kv {
        match IntentKey::parse(election, &k) {
            Some(IntentKey::Paused) => out.paused = true,
            Some(IntentKey::Switchover) => match serde_json::from_str::<SwitchoverJson>(&v) {
                Ok(s) => {
                    out.switchover = Some(Switchover {
                        from: s.from,
                        to: s.to,
                        at_ms: s.at_ms,
                        deadline_ms: s.deadline_ms,
                    })
                }
                Err(e) => {
                    tracing::debug!(%election, key = %k, "ignoring an unreadable intent: {e}")
                }
            },
            Some(IntentKey::Failover) => match serde_json::from_str::<FailoverJson>(&v) {
                Ok(f) => {
                    out.failover = Some(Failover {
                        to: f.to,
                        deadline_ms: f.deadline_ms,
                    })
                }
                Err(e) => {
                    tracing::debug!(%election, key = %k, "ignoring an unreadable intent: {e}")
                }
            },
            Some(IntentKey::Reinit(id)) => out.reinit.push(id),
            None => {}
        }
    }
    Some(out)
}

/// System directories a reinit never empties, whatever their owner (also
/// when reached through another path: compared by device and inode).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
];

/// How deep a data directory's tree may go before emptying gives up (each
/// level holds one descriptor).
const MAX_DEPTH: usize = 128;

/// Opens the data directory a reinit may empty: set, absolute, opened with
/// `O_DIRECTORY|O_NOFOLLOW` (a symlink swapped in is refused), owned by one
/// of `uids` (checked on the open descriptor), and none of [`SYSTEM_DIRS`].
pub fn open_data_dir(dir: Option<&Path>, uids: &[u32]) -> Result<std::os::fd::OwnedFd, String> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, fstat, stat};
    let dir = dir.ok_or("the job has no snapshot.dataDir to empty")?;
    if dir.parent().is_none() || !dir.is_absolute() {
        return Err(format!(
            "snapshot.dataDir {} is not a directory it may empty",
            dir.display()
        ));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(dir, flags, Mode::empty()).map_err(|e| {
        format!(
            "snapshot.dataDir {} cannot be opened as a directory (not a symlink): {e}",
            dir.display()
        )
    })?;
    let st = fstat(&fd).map_err(|e| format!("snapshot.dataDir {}: {e}", dir.display()))?;
    if !uids.contains(&st.st_uid) {
        return Err(format!(
            "snapshot.dataDir {} is owned by uid {}, not by this agent's user",
            dir.display(),
            st.st_uid
        ));
    }
    for sys in SYSTEM_DIRS {
        if let Ok(s) = stat(*sys)
            && s.st_dev == st.st_dev
            && s.st_ino == st.st_ino
        {
            return Err(format!(
                "snapshot.dataDir {} is the system directory {sys}",
                dir.display()
            ));
        }
    }
    Ok(fd)
}

/// Checks the data directory a reinit may empty (see [`open_data_dir`]);
/// [`empty_dir`] checks again on the descriptor it empties through.
pub fn check_data_dir(dir: Option<&Path>, uids: &[u32]) -> Result<PathBuf, String> {
    open_data_dir(dir, uids)?;
    dir.map(Path::to_path_buf)
        .ok_or_else(|| "the job has no snapshot.dataDir to empty".into())
}

/// Removes everything inside `dir` (not `dir` itself, nor anything a
/// symlink in it points to), through descriptors: the directory is opened
/// and checked once ([`open_data_dir`]), and every entry is removed relative
/// to its parent's descriptor, never following a symlink. Returns how many
/// entries of `dir` it removed.
pub fn empty_dir(dir: &Path, uids: &[u32]) -> Result<usize, String> {
    let fd = open_data_dir(Some(dir), uids)?;
    empty_fd(fd, 0).map_err(|e| format!("emptying snapshot.dataDir {}: {e}", dir.display()))
}

fn empty_fd(fd: std::os::fd::OwnedFd, depth: usize) -> nix::Result<usize> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, SFlag, fstatat};
    use nix::unistd::{UnlinkatFlags, unlinkat};
    if depth > MAX_DEPTH {
        return Err(nix::errno::Errno::ELOOP);
    }
    let mut d = Dir::from_fd(fd)?;
    let mut removed = 0usize;
    loop {
        // A batch at a time: names are read, then removed; the iterator
        // rewinds when dropped, so the next pass starts over.
        let batch: Vec<(std::ffi::CString, Option<Type>)> = d
            .iter()
            .filter_map(|e| match e {
                Ok(e) => {
                    let n = e.file_name().to_bytes();
                    (n != b"." && n != b"..").then(|| Ok((e.file_name().to_owned(), e.file_type())))
                }
                Err(e) => Some(Err(e)),
            })
            .take(256)
            .collect::<nix::Result<_>>()?;
        if batch.is_empty() {
            return Ok(removed);
        }
        for (name, kind) in batch {
            let is_dir = match kind {
                Some(t) => t == Type::Directory,
                None => {
                    let st = fstatat(
                        &d,
                        name.as_c_str(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?;
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                }
            };
            if is_dir {
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let sub = openat(&d, name.as_c_str(), flags, Mode::empty())?;
                empty_fd(sub, depth.saturating_add(1))?;
                unlinkat(&d, name.as_c_str(), UnlinkatFlags::RemoveDir)?;
            } else {
                unlinkat(&d, name.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
            removed = removed.saturating_add(1);
        }
    }
}

/// The file in a job's state directory holding the `requested_ms` of the
/// last reinit intent it claimed: an intent with that value is never acted
/// on again (only deleted), even after a crash between claim and delete.
pub const REINIT_HANDLED_FILE: &str = "reinit-handled";

/// How often a reinit watch reads its intent while reading fails (otherwise
/// only a change of the key wakes it), and how long it waits before asking
/// again after a refusal.
const REINIT_POLL: Duration = Duration::from_secs(1);
const REINIT_RETRY: Duration = Duration::from_secs(5);
/// One catalog call's deadline in the reinit watch.
const REINIT_CALL: Duration = Duration::from_secs(5);

/// What a reinit watch tells the agent.
#[derive(Debug)]
pub enum ReinitNews {
    /// A reinit intent not handled yet: the agent answers whether it takes
    /// it (and then stops campaigning for the job until it is claimed).
    Ask {
        requested_ms: u64,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// The intent of an accepted ask was deleted (`ok`: the agent empties
    /// and restarts the job), or could not be (another request replaced it,
    /// it was withdrawn, or the catalog failed: the agent gives it up).
    Claimed { requested_ms: u64, ok: bool },
}

#[derive(Deserialize)]
struct ReinitJson {
    requested_ms: u64,
}

/// The last handled `requested_ms` recorded in `file`, if any.
pub fn reinit_handled(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Watches one job's reinit intent `key` (independent of campaigning): an
/// intent whose `requested_ms` differs from the one recorded in `handled`
/// is asked about; once the agent accepts, the intent is deleted
/// conditionally (its value unchanged) and, only then, recorded as handled
/// and reported claimed. A refusal re-arms the ask after [`REINIT_RETRY`].
pub async fn watch_reinit<M: Send + 'static>(
    catalog: std::sync::Arc<dyn Catalog>,
    key: String,
    handled: PathBuf,
    tx: tokio::sync::mpsc::Sender<M>,
    wrap: impl Fn(ReinitNews) -> M + Send + 'static,
) {
    // Read when the key changes (subscribed before each read, so no change
    // is missed), and every REINIT_POLL only while reading fails: an idle
    // intent costs the catalog nothing.
    let mut changes = catalog.changes_under(&format!("kv/{key}"));
    let mut open = true;
    loop {
        changes.borrow_and_update();
        let mut wait = None;
        let value = match tokio::time::timeout(REINIT_CALL, catalog.kv_get(&key)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(%key, "cannot read the reinit intent: {e}");
                wait = Some(REINIT_POLL);
                None
            }
            Err(_) => {
                wait = Some(REINIT_POLL);
                None
            }
        };
        if let Some(v) = value {
            match serde_json::from_str::<ReinitJson>(&v) {
                Err(e) => tracing::debug!(%key, "ignoring an unreadable reinit intent: {e}"),
                Ok(r) if reinit_handled(&handled) == Some(r.requested_ms) => {
                    // Carried out already (its delete was lost): never again.
                    let _ = tokio::time::timeout(REINIT_CALL, catalog.kv_delete_if(&key, &v)).await;
                }
                Ok(r) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let ask = ReinitNews::Ask {
                        requested_ms: r.requested_ms,
                        reply,
                    };
                    if tx.send(wrap(ask)).await.is_err() {
                        return;
                    }
                    if answer.await.unwrap_or(false) {
                        let ok = claim(&*catalog, &key, &v, &handled, r.requested_ms).await;
                        let news = ReinitNews::Claimed {
                            requested_ms: r.requested_ms,
                            ok,
                        };
                        if tx.send(wrap(news)).await.is_err() {
                            return;
                        }
                    } else {
                        wait = Some(REINIT_RETRY);
                    }
                }
            }
        }
        if !open {
            wait = Some(wait.unwrap_or(REINIT_POLL));
        }
        tokio::select! {
            r = changes.changed(), if open => {
                // No more change news: poll.
                open = r.is_ok();
            }
            () = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Deletes the intent if it still holds `value`, then records `requested_ms`
/// as handled; whether both happened.
async fn claim(
    catalog: &dyn Catalog,
    key: &str,
    value: &str,
    handled: &Path,
    requested_ms: u64,
) -> bool {
    match tokio::time::timeout(REINIT_CALL, catalog.kv_delete_if(key, value)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::warn!(%key, "reinit not carried out: the intent was replaced or withdrawn meanwhile");
            return false;
        }
        Ok(Err(e)) => {
            tracing::warn!(%key, "reinit not carried out: cannot delete its intent: {e}");
            return false;
        }
        Err(_) => {
            tracing::warn!(%key, "reinit not carried out: deleting its intent timed out");
            return false;
        }
    }
    if let Some(dir) = handled.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), "cannot create the job state directory: {e}");
    }
    if let Err(e) = crate::fsutil::write_atomic(handled, requested_ms.to_string().as_bytes()) {
        // The intent is gone already: it cannot be seen again.
        tracing::warn!(file = %handled.display(), "cannot record the reinit handled: {e}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reinit_empties_only_a_real_directory_of_ours() {
        let me = [nix::unistd::geteuid().as_raw()];
        let base = std::env::temp_dir().join(format!("autopilot-reinit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let data = base.join("data");
        std::fs::create_dir_all(data.join("sub/deeper")).expect("mkdir");
        std::fs::write(data.join("sub/f"), "x").expect("write");
        std::fs::write(data.join("sub/deeper/h"), "x").expect("write");
        std::fs::write(data.join("g"), "x").expect("write");
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "keep").expect("write");
        std::os::unix::fs::symlink(outside.join("keep"), data.join("link")).expect("symlink");
        std::os::unix::fs::symlink(&outside, data.join("sub/dirlink")).expect("symlink");
        assert!(check_data_dir(None, &me).is_err());
        assert!(check_data_dir(Some(Path::new("/")), &me).is_err());
        assert!(check_data_dir(Some(Path::new("relative")), &me).is_err());
        assert!(
            check_data_dir(Some(&outside.join("keep")), &me).is_err(),
            "a file"
        );
        let link = base.join("dirlink");
        std::os::unix::fs::symlink(&data, &link).expect("symlink");
        assert!(check_data_dir(Some(&link), &me).is_err(), "a symlink");
        assert!(empty_dir(&link, &me).is_err(), "a symlink at empty time");
        assert!(check_data_dir(Some(&base.join("missing")), &me).is_err());
        // Owned by another user than the ones allowed.
        let other = [me[0].wrapping_add(1)];
        assert!(check_data_dir(Some(&data), &other).is_err());
        assert!(empty_dir(&data, &other).is_err());
        assert_eq!(check_data_dir(Some(&data), &me), Ok(data.clone()));
        assert_eq!(empty_dir(&data, &me).expect("empty"), 3);
        assert_eq!(std::fs::read_dir(&data).expect("read").count(), 0);
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).expect("kept"),
            "keep"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn reinit_refuses_system_directories_even_when_owned() {
        // Owner checks pass for every uid that owns these: only the
        // system-directory rule refuses them.
        for sys in ["/etc", "/var", "/usr", "/tmp", "/home"] {
            let Ok(meta) = std::fs::symlink_metadata(sys) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            let owner = [meta.uid()];
            let err = check_data_dir(Some(Path::new(sys)), &owner).expect_err(sys);
            assert!(err.contains("system directory"), "{sys}: {err}");
        }
    }

    #[test]
    fn a_handled_reinit_is_read_back() {
        let base = std::env::temp_dir().join(format!("autopilot-handled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        let f = base.join(REINIT_HANDLED_FILE);
        assert_eq!(reinit_handled(&f), None);
        crate::fsutil::write_atomic(&f, b"1700000000123").expect("write");
        assert_eq!(reinit_handled(&f), Some(1_700_000_000_123));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test]
    async fn a_closed_listener_refuses_and_a_live_one_accepts() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let p = Presence::open(ip).expect("listen");
        let addr = p.addr;
        assert!(!refused(addr).await);
        drop(p);
        // The accept task ends when aborted; the socket closes with it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !refused(addr).await {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
