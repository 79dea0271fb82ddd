//! Change wake-ups between the processes sharing a catalog: each open catalog binds a unix datagram socket under `<dir>/watchers/`, and a writer that committed a visible change sends one byte to every socket there.
//!
//! No inotify: an inotify instance per agent ran into the per-user limit
//! (`fs.inotify.max_user_instances`, 128 by default) and woke every agent
//! on every write to the WAL, heartbeats included. A datagram is sent only
//! after a commit that bumped the revision, so heartbeats wake nobody. A
//! lost datagram (a writer killed between its commit and its send, a full
//! receive queue, a writer of an older version) is covered by the
//! watcher's slow poll of the revision.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The subdirectory of the catalog directory holding the watcher sockets.
pub(crate) const WATCHERS: &str = "watchers";

/// The most sockets one wake-up sends to: a bound on a writer's work,
/// whatever fills the directory. Far above the agents one machine runs.
const MAX_WATCHERS: usize = 8192;

/// Sends the wake-ups of one open catalog.
pub(crate) struct Waker {
    dir: PathBuf,
    /// An unbound, non-blocking socket to send from; `None` if it could
    /// not be made (then watchers learn of changes by their poll).
    sock: Option<UnixDatagram>,
}

impl Waker {
    pub(crate) fn new(catalog_dir: &Path) -> Waker {
        let sock = UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        });
        if let Err(e) = &sock {
            tracing::warn!(
                "catalog {}: cannot make a socket to wake other agents: {e}; they will see this agent's changes by their poll, up to {}s late",
                catalog_dir.display(),
                crate::POLL.as_secs()
            );
        }
        Waker {
            dir: catalog_dir.join(WATCHERS),
            sock: sock.ok(),
        }
    }

    /// Sends one byte to every watcher socket, never blocking; a socket
    /// nobody listens on any more (its process died) is removed.
    pub(crate) fn wake_all(&self) {
        let Some(sock) = &self.sock else { return };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten().take(MAX_WATCHERS) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "sock") {
                continue;
            }
            match sock.send_to(&[1], &path) {
                Ok(_) => {}
                // Nobody bound: a watcher that died without removing it.
                Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {
                    let _ = std::fs::remove_file(&path);
                }
                // Gone meanwhile, or its queue is full (so it is woken
                // anyway): nothing to do.
                Err(_) => {}
            }
        }
    }
}

/// A bound watcher socket's file, removed when dropped.
pub(crate) struct SocketFile(pub(crate) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds this catalog's watcher socket at `<dir>/watchers/<random>.sock`,
/// mode 0600, with an unpredictable name. Must be called inside a tokio
/// runtime.
pub(crate) fn bind(catalog_dir: &Path) -> io::Result<(tokio::net::UnixDatagram, SocketFile)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = catalog_dir.join(WATCHERS);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        // The umask may have taken bits we asked for; set exactly 0700.
        Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The catalog directory is ours and closed to others; a symlink or a
    // file here is still refused rather than followed.
    if !std::fs::symlink_metadata(&dir)?.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let path = dir.join(format!("{}.sock", random_name()?));
    let sock = UnixDatagram::bind(&path)?;
    let file = SocketFile(path);
    std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o600))?;
    sock.set_nonblocking(true)?;
    Ok((tokio::net::UnixDatagram::from_std(sock)?, file))
}

/// 16 hex digits from the kernel's random source.
fn random_name() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads every queued wake-up: one wake-up re-reads once, however many
/// writers sent one.
pub(crate) fn drain(sock: &tokio::net::UnixDatagram) {
    let mut buf = [0u8; 16];
    while sock.try_recv(&mut buf).is_ok() {}
}
