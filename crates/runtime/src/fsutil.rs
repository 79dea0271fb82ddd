//! Crash-safe file writes: an exclusive temp file with an unpredictable name, fsync, rename, fsync of the directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates an empty temp file in `dir` whose name starts with `prefix`.
/// The name is random and the open is `O_CREAT|O_EXCL|O_NOFOLLOW`, so a
/// file or symlink another user planted in a shared directory is never
/// followed or reused. Dropping the result removes the file.
pub fn temp_file_in(dir: &Path, prefix: &str, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(12)
        .make_in(dir, |p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .mode(mode)
                .open(p)
        })
}

/// Replaces `path` with `data` so readers see the old or the new content,
/// never a partial file, even if the process dies mid-write.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, None)
}

/// As [`write_atomic`], and the file gets exactly `mode` (the umask does not
/// apply) before it becomes visible.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // 0666 less the umask, as a plain create would give, unless a mode is set.
    let mut tmp = temp_file_in(dir, &format!(".{name}.tmp-"), mode.unwrap_or(0o666) & 0o666)?;
    tmp.write_all(data)?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    // On any error above, dropping `tmp` removes it: nothing is left behind.
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        // The names the old code used: `.<name>.tmp-<pid>`.
        let planted = dir.path().join(format!(".out.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
        let out = dir.path().join("out");
        write_atomic_mode(&out, b"new", Some(0o600)).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "new");
        assert!(!std::fs::symlink_metadata(&out).expect("meta").is_symlink());
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        // Only the planted link and the two files: no temp file left.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 3);
    }
}
