//! The runtime side of clusters: the presence listener, the leader prober of the fast crash failover, and reading member records and intents (parsed leniently, every call under a deadline).

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

/// The data directory a reinit may empty: set, not `/`, a real directory
/// (not a symlink) owned by this process's user.
pub fn check_data_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir.ok_or("the job has no snapshot.dataDir to empty")?;
    if dir.parent().is_none() || !dir.is_absolute() {
        return Err(format!(
            "snapshot.dataDir {} is not a directory it may empty",
            dir.display()
        ));
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("snapshot.dataDir {}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!(
            "snapshot.dataDir {} is not a directory",
            dir.display()
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "snapshot.dataDir {} is owned by uid {}, not by this agent's user",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(dir.to_path_buf())
}

/// Removes everything inside `dir` (not `dir` itself, nor anything a
/// symlink in it points to); returns how many entries it removed.
pub fn empty_dir(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        n = n.saturating_add(1);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reinit_empties_only_a_real_directory_of_ours() {
        let base = std::env::temp_dir().join(format!("autopilot-reinit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let data = base.join("data");
        std::fs::create_dir_all(data.join("sub")).expect("mkdir");
        std::fs::write(data.join("sub/f"), "x").expect("write");
        std::fs::write(data.join("g"), "x").expect("write");
        let outside = base.join("outside");
        std::fs::write(&outside, "keep").expect("write");
        std::os::unix::fs::symlink(&outside, data.join("link")).expect("symlink");
        assert!(check_data_dir(None).is_err());
        assert!(check_data_dir(Some(Path::new("/"))).is_err());
        assert!(check_data_dir(Some(Path::new("relative"))).is_err());
        assert!(check_data_dir(Some(&outside)).is_err(), "a file");
        let link = base.join("dirlink");
        std::os::unix::fs::symlink(&data, &link).expect("symlink");
        assert!(check_data_dir(Some(&link)).is_err(), "a symlink");
        assert!(check_data_dir(Some(&base.join("missing"))).is_err());
        assert_eq!(check_data_dir(Some(&data)), Ok(data.clone()));
        assert_eq!(empty_dir(&data).expect("empty"), 3);
        assert_eq!(std::fs::read_dir(&data).expect("read").count(), 0);
        assert_eq!(std::fs::read_to_string(&outside).expect("kept"), "keep");
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
