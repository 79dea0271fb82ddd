//! A job's `dest` on disk: checking it, installing verified versions as `dest/<sha256>/`, and switching `dest/current` atomically.
//!
//! Layout: `dest/<sha>/` exists only once verified and fully unpacked
//! (unpacked into `dest/.unpack-<random>/`, then renamed);
//! `dest/current` and `dest/previous` are relative symlinks, replaced by
//! renaming a new symlink over them, so `current` always names a complete
//! version; a real directory found at `dest/current` before the first
//! switch is kept as `dest/original`. An old version is renamed to
//! `dest/.trash-<random>` before it is removed, so a removal cut short
//! never leaves a partial tree under a sha.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use autopilot_snapshot::Store;

use crate::unpack::{self, Limits};
use crate::{Error, Kind, Record, STORE_SET, io, record_key, valid_sha};

/// What `dest/current` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// An installed version.
    Sha(String),
    /// What was on disk before any switch (`dest/original`, or `dest/current`
    /// itself while it is still a real directory).
    Original,
    /// Nothing usable.
    Missing,
}

use autopilot_core::rollout::ORIGINAL;
const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
/// Scratch entries older than this are a crashed install's and are
/// removed (younger ones may be a concurrent install's).
const STALE: Duration = Duration::from_secs(300);
/// Prefix of a version being removed: renamed to it first, so a removal cut
/// short never leaves a partial `dest/<sha>` (swept at any age).
const TRASH: &str = ".trash-";
/// Scratch entries of this crate (and of the store's copy into `.fetch-*`).
const SCRATCH: [&str; 5] = [".unpack-", ".fetch-", "..fetch-", ".current-", ".previous-"];

fn real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Checks that `dest` may be written by this process without a local user
/// redirecting the writes: absolute, a real directory (not a symlink),
/// owned by us or root, not writable by group or others. A missing `dest`
/// is created 0755 (with its parents).
pub fn check_dest(dest: &Path) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::Unsafe {
            path: dest.to_path_buf(),
            why,
        })
    };
    if !dest.is_absolute() {
        return refuse("an artifact's dest must be an absolute path".into());
    }
    // Before creating anything: a missing dest is created through them.
    check_ancestors(dest)?;
    if let Err(e) = std::fs::symlink_metadata(dest) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Error::Io {
                context: format!("cannot read {}", dest.display()),
                source: e,
            });
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dest)
            .map_err(io(format!("cannot create {}", dest.display())))?;
        // Whatever the umask: 0755 as documented (never wider).
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("cannot set the mode of {}", dest.display())))?;
    }
    // Checked again after creating it: someone may have been faster.
    let m =
        std::fs::symlink_metadata(dest).map_err(io(format!("cannot read {}", dest.display())))?;
    if m.file_type().is_symlink() {
        return refuse("a symlink: an artifact's dest must be a real directory".into());
    }
    if !m.is_dir() {
        return refuse("not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return refuse(format!(
            "owned by uid {}: an artifact's dest must be owned by uid {me} or root",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return refuse(format!(
            "writable by group or others (mode {:04o}): remove those bits (chmod go-w)",
            m.mode() & 0o7777
        ));
    }
    // Again: the ones just created, and a rename meanwhile.
    if check_ancestors(dest)? && m.uid() != me {
        return refuse(format!(
            "owned by uid {}: under a directory others may write to (sticky), dest must be owned by uid {me}",
            m.uid()
        ));
    }
    Ok(())
}

/// Checks every existing ancestor of `dest` as `dest` itself (a real
/// directory owned by us or root, not writable by group or others), except
/// that a sticky directory writable by all (`/tmp`) is allowed: then it
/// returns true and `dest` must be ours. Whoever may rename an ancestor
/// may redirect every write below it.
fn check_ancestors(dest: &Path) -> Result<bool, Error> {
    let me = nix::unistd::geteuid().as_raw();
    let mut sticky = false;
    for a in dest.ancestors().skip(1) {
        let refuse = |why: String| {
            Err(Error::Unsafe {
                path: dest.to_path_buf(),
                why: format!("{why} (its ancestor {})", a.display()),
            })
        };
        let m = match std::fs::symlink_metadata(a) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: format!("cannot read {}", a.display()),
                    source: e,
                });
            }
        };
        if m.file_type().is_symlink() {
            return refuse("under a symlink: every directory above dest must be real".into());
        }
        if !m.is_dir() {
            return refuse("under something that is not a directory".into());
        }
        if m.uid() != me && m.uid() != 0 {
            return refuse(format!(
                "under a directory owned by uid {}: it must be owned by uid {me} or root",
                m.uid()
            ));
        }
        if m.mode() & 0o022 != 0 {
            if m.mode() & 0o1000 == 0 {
                return refuse(format!(
                    "under a directory writable by group or others (mode {:04o})",
                    m.mode() & 0o7777
                ));
            }
            sticky = true;
        }
    }
    Ok(sticky)
}

/// Fetches `rec` from `store` into `dest` and verifies its sha256 and size
/// before anything is unpacked; unpacks it (safely, on a blocking thread)
/// and renames it to `dest/<sha256>`, which it returns. An existing
/// `dest/<sha256>` is reused: such a directory exists only verified (for a
/// kind file, only with its file in it). On any error nothing is left in
/// `dest`; leftovers of crashed runs are swept first.
pub async fn install(store: &dyn Store, rec: &Record, dest: &Path) -> Result<PathBuf, Error> {
    rec.validate(&record_key(&rec.name, &rec.version))?;
    check_dest(dest)?;
    sweep(dest);
    let dir = dest.join(&rec.sha256);
    if real_dir(&dir) && complete(rec, &dir) {
        return Ok(dir);
    }
    if real_dir(&dir) {
        // Not what this record unpacks to (another kind or file name):
        // out of the way, then installed afresh.
        trash(dest, &dir)?;
    }
    // Removed on drop: a failed fetch or a mismatch leaves nothing.
    let tmp = autopilot_snapshot::scratch_file(dest, ".fetch-").map_err(io(format!(
        "cannot create a temp file in {}",
        dest.display()
    )))?;
    fetch_bounded(store, rec, dest, &tmp).await?;
    let (sha, size) = autopilot_snapshot::sha256_file(&tmp)
        .await
        .map_err(io(format!("cannot hash {}", tmp.display())))?;
    if sha != rec.sha256 {
        return Err(Error::Checksum {
            name: rec.name.clone(),
            version: rec.version.clone(),
            expected: rec.sha256.clone(),
            got: sha,
        });
    }
    if size != rec.size {
        return Err(Error::Size {
            name: rec.name.clone(),
            version: rec.version.clone(),
            expected: rec.size,
            got: size,
        });
    }
    let (rec, dest) = (rec.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || unpack_verified(tmp, &rec, &dest, dir))
        .await
        .map_err(|e| Error::Io {
            context: "the unpacking task failed".into(),
            source: std::io::Error::other(e),
        })?
}

/// Whether an existing `dest/<sha>` holds what `rec` unpacks to (for a
/// kind file: its file, a regular file).
fn complete(rec: &Record, dir: &Path) -> bool {
    match (rec.kind, &rec.file) {
        (Kind::Tar, _) => true,
        (Kind::File, Some(f)) => std::fs::symlink_metadata(dir.join(f)).is_ok_and(|m| m.is_file()),
        (Kind::File, None) => false,
    }
}

/// Copies the object into `tmp`, refusing more than `rec.size` bytes: a
/// file store's object is measured first; any other store's copy (its
/// `.fetch-*` temp files in `dest`) is watched and dropped once it grows
/// past the size.
async fn fetch_bounded(
    store: &dyn Store,
    rec: &Record,
    dest: &Path,
    tmp: &Path,
) -> Result<(), Error> {
    let too_big = |got: u64| Error::Size {
        name: rec.name.clone(),
        version: rec.version.clone(),
        expected: rec.size,
        got,
    };
    if let Some(root) = store.url().strip_prefix("file://") {
        let obj = Path::new(root)
            .join(STORE_SET)
            .join(format!("{}.snap", rec.sha256));
        if let Ok(m) = std::fs::metadata(&obj)
            && m.len() != rec.size
        {
            return Err(too_big(m.len()));
        }
    }
    let ours = tmp
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let theirs = format!(".fetch-{}-", rec.sha256);
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(entries) = std::fs::read_dir(dest) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if (name.contains(&ours) || name.starts_with(&theirs))
                    && let Ok(m) = e.metadata()
                    && m.len() > rec.size
                {
                    return m.len();
                }
            }
        }
    };
    tokio::select! {
        got = store.get(STORE_SET, &rec.sha256, tmp) => Ok(got?),
        // Dropping the copy removes its temp file.
        size = watch => Err(too_big(size)),
    }
}

fn unpack_verified(
    tmp: tempfile::TempPath,
    rec: &Record,
    dest: &Path,
    dir: PathBuf,
) -> Result<PathBuf, Error> {
    // 0700 and removed on drop until renamed: a half-unpacked version is
    // never visible under its sha.
    let work = tempfile::Builder::new()
        .prefix(".unpack-")
        .rand_bytes(12)
        .tempdir_in(dest)
        .map_err(io(format!(
            "cannot create a directory in {}",
            dest.display()
        )))?;
    match (rec.kind, &rec.file) {
        (Kind::Tar, _) => unpack::unpack(&tmp, work.path(), Limits::for_size(rec.size))
            // Which artifact the refused entry came from, for the report.
            .map_err(|e| match e {
                Error::Unsafe { path, why } => Error::Unsafe {
                    path,
                    why: format!("{why} (artifact {} {})", rec.name, rec.version),
                },
                other => other,
            })?,
        (Kind::File, Some(name)) => {
            let to = work.path().join(name);
            tmp.persist(&to).map_err(|e| Error::Io {
                context: format!("cannot move the download to {}", to.display()),
                source: e.error,
            })?;
            // The pushed file's bits; a record written before they were
            // kept says nothing: a single file is most often the program.
            let mode = rec.mode.unwrap_or(0o755) & 0o755;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("cannot set the mode of {}", to.display())))?;
        }
        (Kind::File, None) => {
            return Err(Error::Invalid {
                key: record_key(&rec.name, &rec.version),
                why: "kind file without a file name".into(),
            });
        }
    }
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).map_err(io(
        format!("cannot set the mode of {}", work.path().display()),
    ))?;
    // Everything on disk before the rename makes it visible: a crash
    // never leaves a `dest/<sha>` with truncated files.
    let d = std::fs::File::open(work.path())
        .map_err(io(format!("cannot open {}", work.path().display())))?;
    nix::unistd::syncfs(&d).map_err(|e| Error::Io {
        context: format!("cannot sync {}", work.path().display()),
        source: e.into(),
    })?;
    match std::fs::rename(work.path(), &dir) {
        Ok(()) => {
            // Renamed: nothing for the guard to remove.
            let _ = work.keep();
            sync_dir(dest)?;
            Ok(dir)
        }
        // Another install of the same version won: use it (ours is dropped).
        Err(_) if real_dir(&dir) => Ok(dir),
        Err(e) => Err(Error::Io {
            context: format!(
                "cannot rename {} to {}",
                work.path().display(),
                dir.display()
            ),
            source: e,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("cannot sync {}", dir.display())))
}

/// What `dest/current` points at (see [`Current`]). A `dest/current` that
/// is missing while `dest/original` exists is `Original`: a crash between
/// the two renames of the first switch leaves that.
pub fn current(dest: &Path) -> Current {
    let cur = dest.join(CURRENT);
    match std::fs::symlink_metadata(&cur) {
        Ok(m) if m.is_dir() => Current::Original,
        Ok(m) if m.file_type().is_symlink() => match link_target(&cur) {
            Some(t) if t == ORIGINAL && real_dir(&dest.join(ORIGINAL)) => Current::Original,
            Some(t) if valid_sha(&t) && real_dir(&dest.join(&t)) => Current::Sha(t),
            _ => Current::Missing,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && real_dir(&dest.join(ORIGINAL)) => {
            Current::Original
        }
        _ => Current::Missing,
    }
}

fn link_target(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.to_str().map(str::to_string))
}

/// Points `dest/current` at `to`, atomically (a new symlink renamed over
/// the old one); `dest/previous` then points at the version it replaced.
/// The first switch away from a real directory `dest/current` keeps it as
/// `dest/original`. Afterwards every other installed version is removed
/// (current and previous stay), as are scratch entries of crashed installs.
pub fn switch(dest: &Path, to: &Current) -> Result<(), Error> {
    check_dest(dest)?;
    let cur = dest.join(CURRENT);
    let original = dest.join(ORIGINAL);
    let target = match to {
        Current::Sha(s) if !valid_sha(s) => {
            return Err(Error::BadName {
                what: "sha256",
                value: s.clone(),
            });
        }
        Current::Sha(s) => s.clone(),
        Current::Original => ORIGINAL.to_string(),
        Current::Missing => {
            return Err(Error::NotInstalled {
                dest: dest.to_path_buf(),
                what: "nothing (a missing version)".into(),
            });
        }
    };
    let mut old = link_target(&cur);
    if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
        if std::fs::symlink_metadata(&original).is_ok() {
            return Err(Error::Unsafe {
                path: original,
                why: "exists while current is a directory too: move one of them away".into(),
            });
        }
        std::fs::rename(&cur, &original).map_err(io(format!(
            "cannot rename {} to {}",
            cur.display(),
            original.display()
        )))?;
        sync_dir(dest)?;
        old = Some(ORIGINAL.to_string());
    } else if old.is_none() && real_dir(&original) {
        // A crash after the rename above: `original` is what ran.
        old = Some(ORIGINAL.to_string());
    }
    if !real_dir(&dest.join(&target)) {
        return Err(Error::NotInstalled {
            dest: dest.to_path_buf(),
            what: if target == ORIGINAL {
                "the original version (dest/original)".into()
            } else {
                format!("version {target}")
            },
        });
    }
    // Only a link already naming the target is left alone: a missing
    // `current` (a crash between the renames above, or a switch to the
    // original of a directory just renamed) is made again.
    if link_target(&cur).as_deref() != Some(target.as_str()) {
        // Checked again right before the writes that matter.
        check_dest(dest)?;
        // `previous` first: a crash between the two keeps a way back.
        if let Some(o) = old
            .as_deref()
            .filter(|o| *o != target && real_dir(&dest.join(o)))
        {
            replace_link(dest, PREVIOUS, o)?;
        }
        replace_link(dest, CURRENT, &target)?;
        sync_dir(dest)?;
    }
    gc(dest);
    Ok(())
}

/// Makes `dest/name` a symlink to `target` in one rename.
fn replace_link(dest: &Path, name: &str, target: &str) -> Result<(), Error> {
    let link = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .rand_bytes(12)
        .make_in(dest, |p| std::os::unix::fs::symlink(target, p))
        .map_err(io(format!("cannot create a link in {}", dest.display())))?;
    let to = dest.join(name);
    link.persist(&to).map_err(|e| Error::Io {
        context: format!("cannot replace {}", to.display()),
        source: e.error,
    })?;
    Ok(())
}

/// Renames `dir` to `dest/.trash-<random>` (atomic: `dest/<sha>` is
/// there whole or not at all), then removes it.
fn trash(dest: &Path, dir: &Path) -> Result<(), Error> {
    let to = tempfile::Builder::new()
        .prefix(TRASH)
        .rand_bytes(12)
        .make_in(dest, |p| std::fs::rename(dir, p))
        .map_err(io(format!("cannot move {} out of the way", dir.display())))?
        .into_temp_path()
        .keep()
        .map_err(|e| Error::Io {
            context: format!("cannot keep {}", e.path.display()),
            source: e.error,
        })?;
    std::fs::remove_dir_all(&to).map_err(io(format!("cannot remove {}", to.display())))
}

/// Removes what crashed runs left: trash at any age, scratch entries
/// older than [`STALE`]. A failure is logged.
fn sweep(dest: &Path) {
    let entries = match std::fs::read_dir(dest) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot list {} to remove leftovers: {e}", dest.display());
            return;
        }
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let stale = SCRATCH.iter().any(|p| name.starts_with(p))
            && meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE);
        if !(stale || name.starts_with(TRASH)) {
            continue;
        }
        let res = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = res {
            tracing::warn!("cannot remove {}: {err}", path.display());
        }
    }
}

/// Removes every version but current and previous (each renamed to trash
/// first), then leftovers. A failure is logged: the switch itself is done.
fn gc(dest: &Path) {
    let keep: Vec<String> = [CURRENT, PREVIOUS]
        .iter()
        .filter_map(|n| link_target(&dest.join(n)))
        .collect();
    let entries = match std::fs::read_dir(dest) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot list {} to remove old versions: {e}", dest.display());
            return;
        }
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let old_version = valid_sha(&name)
            && !keep.contains(&name)
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if old_version && let Err(err) = trash(dest, &path) {
            tracing::warn!("{err}");
        }
    }
    sweep(dest);
}
