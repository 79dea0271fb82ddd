//! Unpacking a tar that may be hostile: entries stay inside the tree, nothing is written through a symlink, special files and oversized archives are refused.
//!
//! The agent unpacks as root what a less trusted person pushed, so every
//! entry is checked rather than trusted to `tar::Entry::unpack_in`:
//! - paths are relative and have no `..`;
//! - every directory on an entry's way is a real directory (never a
//!   symlink, even one pointing inside), and files are created
//!   `O_EXCL|O_NOFOLLOW`: a duplicate entry cannot replace what was
//!   written, a symlink cannot redirect a later write;
//! - a symlink's target is relative and stays in the tree, with `..`
//!   only at its start (so the kernel resolves those through real
//!   directories, as checked, and never through another symlink);
//! - a hard link's target is a regular file already unpacked;
//! - devices, fifos, sparse and unknown entries are refused;
//! - the number of entries and the bytes written are bounded;
//! - set-user-ID, set-group-ID and sticky bits are dropped, as are
//!   group and other write bits;
//! - `L`/`K`/`x`/`g` entries (read into memory) are bounded to 64 KiB.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{Error, io};

/// Bounds on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub entries: u64,
    pub bytes: u64,
}

pub const MAX_ENTRIES: u64 = 1_000_000;
pub const MAX_BYTES: u64 = 64 << 30;

impl Limits {
    /// The contract's bounds for an archive of `size` bytes: a million
    /// entries, and the smaller of 1000 times its size and 64 GiB.
    pub fn for_size(size: u64) -> Limits {
        Limits {
            entries: MAX_ENTRIES,
            bytes: size.saturating_mul(1000).min(MAX_BYTES),
        }
    }
}

/// An entry's path, normalised: relative, `.` dropped, no `..`.
fn entry_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("a path with `..`".into()),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path".into()),
        }
    }
    Ok(out)
}

/// Whether a symlink at `rel` (relative to the tree's root) pointing at
/// `target` stays inside the tree: `target` relative, `..` only at its
/// start and no more of them than `rel` has parent directories.
pub fn check_symlink(rel: &Path, target: &Path) -> Result<(), String> {
    let depth = rel.components().count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_name = false;
    let mut any = false;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "a symlink to an absolute path ({})",
                    target.display()
                ));
            }
            Component::CurDir => any = true,
            Component::ParentDir if seen_name => {
                return Err(format!(
                    "a symlink target with `..` after a name ({}): only leading `..` are allowed",
                    target.display()
                ));
            }
            Component::ParentDir => {
                ups += 1;
                any = true;
                if ups > depth {
                    return Err(format!(
                        "a symlink pointing outside the tree ({})",
                        target.display()
                    ));
                }
            }
            Component::Normal(_) => {
                seen_name = true;
                any = true;
            }
        }
    }
    if !any {
        return Err("a symlink with an empty target".into());
    }
    Ok(())
}

/// Makes sure every directory from `root` down to `rel`'s parent is a real
/// directory, creating missing ones (0755).
fn real_parents(root: &Path, rel: &Path) -> Result<(), Error> {
    let mut p = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Unsafe {
                    path: rel.to_path_buf(),
                    why: "refused archive entry: its path goes through a symlink or a file".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&p)
                    .map_err(io(format!("cannot create {}", p.display())))?;
            }
            Err(e) => {
                return Err(Error::Io {
                    context: format!("cannot read {}", p.display()),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// The most a GNU long-name/long-link (`L`/`K`) or pax (`x`/`g`) entry may
/// hold: the tar crate reads them wholly into memory.
pub const MAX_META: u64 = 64 << 10;

/// Walks the 512-byte headers the way the tar crate will (a pax `size`
/// overriding the next entry's) and refuses an `L`/`K`/`x`/`g` entry over
/// [`MAX_META`] before the tar crate reads one into memory. Anything it
/// cannot follow is left for the real pass to report.
fn check_meta_sizes(tar: &Path) -> Result<(), Error> {
    use std::io::Read;
    let f = std::fs::File::open(tar).map_err(io(format!("cannot read {}", tar.display())))?;
    let mut r = std::io::BufReader::with_capacity(64 << 10, f);
    let mut block = [0u8; 512];
    let mut pax_size: Option<u64> = None;
    loop {
        if r.read_exact(&mut block).is_err() || block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&block);
        let kind = h.entry_type();
        let Ok(mut size) = h.entry_size() else {
            return Ok(());
        };
        let meta = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if meta && size > MAX_META {
            return Err(Error::Unsafe {
                path: tar.to_path_buf(),
                why: format!(
                    "refused archive: a {} entry of {size} bytes (at most {MAX_META})",
                    match kind.as_byte() {
                        b'L' => "long name",
                        b'K' => "long link",
                        _ => "pax header",
                    }
                ),
            });
        }
        if kind.is_gnu_sparse() {
            // Refused by the real pass; its extension blocks are not followed here.
            return Ok(());
        }
        if !meta && let Some(s) = pax_size.take() {
            size = s;
        }
        let mut skip = size.checked_next_multiple_of(512).unwrap_or(u64::MAX);
        if kind.is_pax_local_extensions() {
            // At most MAX_META bytes, checked above.
            let mut data = Vec::new();
            (&mut r)
                .take(size)
                .read_to_end(&mut data)
                .map_err(io(format!("cannot read {}", tar.display())))?;
            // As the tar crate does: the first `size` record counts.
            pax_size = tar::PaxExtensions::new(&data)
                .map_while(Result::ok)
                .find(|e| e.key() == Ok("size"))
                .and_then(|e| e.value().ok().and_then(|v| v.parse::<u64>().ok()));
            skip = skip.saturating_sub(data.len() as u64);
        }
        let Ok(skip) = i64::try_from(skip) else {
            return Ok(());
        };
        r.seek_relative(skip)
            .map_err(io(format!("cannot read {}", tar.display())))?;
    }
}

/// Unpacks the tar at `tar` into the (empty, private) directory `into`.
pub fn unpack(tar: &Path, into: &Path, limits: Limits) -> Result<(), Error> {
    check_meta_sizes(tar)?;
    let f = std::fs::File::open(tar).map_err(io(format!("cannot read {}", tar.display())))?;
    let mut ar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let bad_tar = |e: std::io::Error| Error::Io {
        context: format!("cannot read the archive {}", tar.display()),
        source: e,
    };
    let mut count = 0u64;
    let mut bytes = 0u64;
    // Directory modes are applied last: a read-only directory must not
    // stop its own contents from being written.
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in ar.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        count = count.saturating_add(1);
        if count > limits.entries {
            return Err(Error::Unsafe {
                path: tar.to_path_buf(),
                why: format!("refused archive: more than {} entries", limits.entries),
            });
        }
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let unsafe_entry = |why: String| Error::Unsafe {
            path: raw.clone(),
            why: format!("refused archive entry: {why}"),
        };
        let rel = entry_path(&raw).map_err(unsafe_entry)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        if rel.as_os_str().is_empty() {
            // `./` itself: the root is ours.
            if kind == tar::EntryType::Directory {
                continue;
            }
            return Err(unsafe_entry("an entry with an empty path".into()));
        }
        real_parents(into, &rel)?;
        let dst = into.join(&rel);
        // Never group- or other-writable, whatever the pusher's umask: the
        // tree is run as root.
        let mode = entry.header().mode().map_err(bad_tar)? & 0o755;
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(unsafe_entry("a duplicate entry".into())),
                    Err(_) => std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&dst)
                        .map_err(io(format!("cannot create {}", dst.display())))?,
                }
                dirs.push((dst, (mode | 0o700) & 0o755));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                bytes = bytes.saturating_add(size);
                if bytes > limits.bytes {
                    return Err(Error::Unsafe {
                        path: tar.to_path_buf(),
                        why: format!("refused archive: more than {} bytes unpacked", limits.bytes),
                    });
                }
                if exists(&dst) {
                    return Err(unsafe_entry("a duplicate entry".into()));
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc_flags())
                    .mode(0o600)
                    .open(&dst)
                    .map_err(io(format!("cannot create {}", dst.display())))?;
                let got = std::io::copy(&mut entry, &mut f)
                    .map_err(io(format!("cannot unpack {}", dst.display())))?;
                if got != size {
                    return Err(Error::Io {
                        context: format!("cannot unpack {}", dst.display()),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the archive ends inside this entry",
                        ),
                    });
                }
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io(format!("cannot set the mode of {}", dst.display())))?;
                if let Ok(mtime) = entry.header().mtime()
                    && let Some(t) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(mtime))
                {
                    // A time the filesystem cannot hold is not worth failing for.
                    let _ = f.set_modified(t);
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad_tar)?
                    .ok_or_else(|| unsafe_entry("a symlink without a target".into()))?
                    .into_owned();
                check_symlink(&rel, &target).map_err(unsafe_entry)?;
                if exists(&dst) {
                    return Err(unsafe_entry("a duplicate entry".into()));
                }
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(io(format!("cannot create the link {}", dst.display())))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad_tar)?
                    .ok_or_else(|| unsafe_entry("a hard link without a target".into()))?
                    .into_owned();
                let trel = entry_path(&target)
                    .map_err(|why| unsafe_entry(format!("a hard link to {why}")))?;
                if trel.as_os_str().is_empty() {
                    return Err(unsafe_entry("a hard link to the root".into()));
                }
                real_parents(into, &trel)?;
                let src = into.join(&trel);
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(unsafe_entry(format!(
                            "a hard link to {}, which is not a regular file of the archive",
                            target.display()
                        )));
                    }
                }
                if exists(&dst) {
                    return Err(unsafe_entry("a duplicate entry".into()));
                }
                std::fs::hard_link(&src, &dst)
                    .map_err(io(format!("cannot create the link {}", dst.display())))?;
            }
            other => {
                return Err(unsafe_entry(format!(
                    "a {} entry (only files, directories and links are allowed)",
                    type_name(other)
                )));
            }
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, mode) in dirs {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("cannot set the mode of {}", p.display())))?;
    }
    Ok(())
}

fn libc_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

fn type_name(t: tar::EntryType) -> String {
    match t {
        tar::EntryType::Fifo => "fifo".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::GNUSparse => "sparse file".into(),
        other => format!("type {:?}", other.as_byte() as char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw tar header: the name written as is (no checks), so tests can
    /// build what a hostile pusher would.
    fn header(name: &str, kind: tar::EntryType, size: u64, link: Option<&str>) -> tar::Header {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    struct Case {
        dir: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Case {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir(dir.path().join("into")).expect("into");
            std::fs::create_dir(dir.path().join("outside")).expect("outside");
            Case { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().join("into")
        }
        fn outside(&self) -> PathBuf {
            self.dir.path().join("outside")
        }
        /// Builds a tar of `entries` (header, data) and unpacks it.
        fn run(&self, entries: &[(tar::Header, &[u8])], limits: Limits) -> Result<(), Error> {
            let mut b = tar::Builder::new(Vec::new());
            for (h, data) in entries {
                b.append(h, *data).expect("append");
            }
            let bytes = b.into_inner().expect("tar");
            let p = self.dir.path().join("a.tar");
            std::fs::write(&p, bytes).expect("write tar");
            unpack(&p, &self.root(), limits)
        }
        fn listing(&self) -> Vec<String> {
            let mut out = Vec::new();
            walk(self.dir.path(), self.dir.path(), &mut out);
            out.sort();
            out
        }
    }

    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("ls").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).expect("prefix").display().to_string());
            if e.file_type().expect("type").is_dir() {
                walk(root, &p, out);
            }
        }
    }

    const ROOMY: Limits = Limits {
        entries: 100,
        bytes: 1 << 20,
    };

    fn refused(r: Result<(), Error>, what: &str) -> String {
        match r {
            Err(e @ Error::Unsafe { .. }) => e.to_string(),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }

    /// One entry as raw bytes: a GNU header of type `kind` saying `size`,
    /// then `data` padded to 512 (so `size` may lie, as a pax `size` allows).
    fn raw(out: &mut Vec<u8>, kind: u8, name: &str, size: u64, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    fn unpack_raw(c: &Case, bytes: &[u8]) -> Result<(), Error> {
        let p = c.dir.path().join("raw.tar");
        std::fs::write(&p, bytes).expect("write tar");
        unpack(&p, &c.root(), ROOMY)
    }

    #[test]
    fn oversized_long_name_and_pax_entries_are_refused_before_they_are_read() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let c = Case::new();
            let mut t = Vec::new();
            let big = vec![b'a'; (MAX_META + 1) as usize];
            raw(&mut t, kind, "././@LongLink", big.len() as u64, &big);
            raw(&mut t, b'0', "f", 1, b"x");
            t.resize(t.len() + 1024, 0);
            let e = refused(unpack_raw(&c, &t), "oversized meta entry");
            assert!(e.contains("bytes (at most 65536)"), "{e}");
        }
        // At the limit: read as usual (a long name of 300 characters works).
        let c = Case::new();
        let mut t = Vec::new();
        let long = format!("{}/{}", "n".repeat(150), "m".repeat(150));
        let name = format!("{long}\0");
        raw(
            &mut t,
            b'L',
            "././@LongLink",
            name.len() as u64,
            name.as_bytes(),
        );
        raw(&mut t, b'0', "short", 2, b"ok");
        t.resize(t.len() + 1024, 0);
        unpack_raw(&c, &t).expect("a small long name unpacks");
        assert_eq!(std::fs::read(c.root().join(&long)).expect("read"), b"ok");
    }

    #[test]
    fn the_first_pass_follows_a_pax_size_to_find_a_later_oversized_entry() {
        let c = Case::new();
        let mut t = Vec::new();
        // The header says 0 bytes, the pax record 600: the tar crate reads
        // 600, and so must the first pass to find the next header.
        let rec = b"12 size=600\n";
        raw(&mut t, b'x', "././@PaxHeader", rec.len() as u64, rec);
        raw(&mut t, b'0', "f", 0, &[b'y'; 600]);
        let big = vec![b'a'; (MAX_META + 1) as usize];
        raw(&mut t, b'L', "././@LongLink", big.len() as u64, &big);
        raw(&mut t, b'0', "g", 1, b"x");
        t.resize(t.len() + 1024, 0);
        let e = refused(unpack_raw(&c, &t), "oversized entry after a pax size");
        assert!(e.contains("long name"), "{e}");
    }

    #[test]
    fn modes_are_never_group_or_other_writable() {
        let c = Case::new();
        let mut f = header("d/f", tar::EntryType::Regular, 1, None);
        f.set_mode(0o777);
        f.set_cksum();
        let mut d = header("d/", tar::EntryType::Directory, 0, None);
        d.set_mode(0o077);
        d.set_cksum();
        c.run(&[(d, b""), (f, b"x")], ROOMY).expect("unpack");
        let mode = |p: PathBuf| {
            std::fs::symlink_metadata(p)
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(c.root().join("d/f")), 0o755);
        assert_eq!(mode(c.root().join("d")), 0o755);
    }

    #[test]
    fn a_plain_archive_unpacks_with_modes_links_and_mtimes() {
        let c = Case::new();
        let mut exe = header("bin/run", tar::EntryType::Regular, 3, None);
        exe.set_mode(0o4755);
        exe.set_cksum();
        c.run(
            &[
                (header("./", tar::EntryType::Directory, 0, None), b""),
                (header("bin/", tar::EntryType::Directory, 0, None), b""),
                (exe, b"run"),
                (
                    header("bin/same", tar::EntryType::Link, 0, Some("bin/run")),
                    b"",
                ),
                (
                    header("lib/up", tar::EntryType::Symlink, 0, Some("../bin/run")),
                    b"",
                ),
                (
                    header("dot", tar::EntryType::Symlink, 0, Some("./bin")),
                    b"",
                ),
            ],
            ROOMY,
        )
        .expect("unpack");
        let into = c.root();
        assert_eq!(
            std::fs::read(into.join("lib/up")).expect("through the link"),
            b"run"
        );
        let m = std::fs::metadata(into.join("bin/run")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "set-uid dropped");
        assert_eq!(
            m.modified().expect("mtime"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&m),
            2,
            "the hard link is one file"
        );
    }

    #[test]
    fn dot_dot_and_absolute_paths_are_refused() {
        let c = Case::new();
        let e = refused(
            c.run(
                &[(header("../x", tar::EntryType::Regular, 1, None), b"x")],
                ROOMY,
            ),
            "../x",
        );
        assert!(e.contains("`..`"), "{e}");
        assert!(e.starts_with("../x: refused archive entry"), "{e}");
        let e = refused(
            c.run(
                &[(header("a/../../x", tar::EntryType::Regular, 1, None), b"x")],
                ROOMY,
            ),
            "a/../../x",
        );
        assert!(e.contains("`..`"), "{e}");
        let abs = c.outside().join("abs");
        let e = refused(
            c.run(
                &[(
                    header(
                        abs.to_str().expect("utf-8"),
                        tar::EntryType::Regular,
                        1,
                        None,
                    ),
                    b"x",
                )],
                ROOMY,
            ),
            "/abs",
        );
        assert!(e.contains("absolute"), "{e}");
        assert!(!abs.exists());
        assert_eq!(c.listing(), ["a.tar", "into", "outside"]);
    }

    #[test]
    fn a_symlink_out_and_a_write_through_it_are_refused() {
        let c = Case::new();
        let outside = c.outside();
        let target = outside.to_str().expect("utf-8");
        // `l -> /etc` then `l/passwd`: the link itself is refused first.
        let e = refused(
            c.run(
                &[
                    (header("l", tar::EntryType::Symlink, 0, Some(target)), b""),
                    (
                        header("l/passwd", tar::EntryType::Regular, 4, None),
                        b"evil",
                    ),
                ],
                ROOMY,
            ),
            "l -> /abs",
        );
        assert!(e.contains("absolute"), "{e}");
        assert!(!outside.join("passwd").exists());
        for t in ["..", "../outside", "a/../..", "x/../../outside"] {
            let c = Case::new();
            refused(
                c.run(
                    &[(header("l", tar::EntryType::Symlink, 0, Some(t)), b"")],
                    ROOMY,
                ),
                t,
            );
        }
        // A symlink that stays inside is fine, but nothing is ever written
        // through one (a later entry could swap where it points).
        let c = Case::new();
        let e = refused(
            c.run(
                &[
                    (header("d/", tar::EntryType::Directory, 0, None), b""),
                    (header("l", tar::EntryType::Symlink, 0, Some("d")), b""),
                    (header("l/f", tar::EntryType::Regular, 1, None), b"x"),
                ],
                ROOMY,
            ),
            "l/f",
        );
        assert!(e.contains("through a symlink"), "{e}");
        // Nor does a later entry replace a link (or a file) already there.
        let c = Case::new();
        let e = refused(
            c.run(
                &[
                    (header("f", tar::EntryType::Regular, 1, None), b"x"),
                    (header("f", tar::EntryType::Symlink, 0, Some("g")), b""),
                ],
                ROOMY,
            ),
            "dup",
        );
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn a_hard_link_out_is_refused() {
        let c = Case::new();
        let victim = c.outside().join("shadow");
        std::fs::write(&victim, "secret").expect("victim");
        let e = refused(
            c.run(
                &[(
                    header(
                        "sh",
                        tar::EntryType::Link,
                        0,
                        Some(victim.to_str().expect("utf-8")),
                    ),
                    b"",
                )],
                ROOMY,
            ),
            "hard link to /abs",
        );
        assert!(e.contains("absolute"), "{e}");
        let e = refused(
            c.run(
                &[(
                    header("sh", tar::EntryType::Link, 0, Some("../outside/shadow")),
                    b"",
                )],
                ROOMY,
            ),
            "hard link to ../",
        );
        assert!(e.contains("`..`"), "{e}");
        // Through a symlink that stays inside, to a file that is not there.
        let c = Case::new();
        refused(
            c.run(
                &[
                    (header("d/", tar::EntryType::Directory, 0, None), b""),
                    (header("l", tar::EntryType::Symlink, 0, Some("d")), b""),
                    (header("h", tar::EntryType::Link, 0, Some("l/x")), b""),
                ],
                ROOMY,
            ),
            "hard link through a symlink",
        );
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "secret",
            "untouched"
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&victim).expect("meta")),
            1
        );
    }

    #[test]
    fn fifos_and_devices_are_refused() {
        for (kind, word) in [
            (tar::EntryType::Fifo, "fifo"),
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Block, "block device"),
            (tar::EntryType::GNUSparse, "sparse"),
        ] {
            let c = Case::new();
            let mut h = header("p", kind, 0, None);
            if kind == tar::EntryType::GNUSparse {
                // tar reads sparse maps from GNU headers only.
                h = tar::Header::new_gnu();
                h.set_path("p").expect("path");
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(kind);
                h.set_size(0);
                if let Some(g) = h.as_gnu_mut() {
                    g.set_real_size(0);
                    g.set_is_extended(false);
                }
                h.set_cksum();
            }
            let e = refused(c.run(&[(h, b"")], ROOMY), word);
            assert!(e.contains(word), "{e}");
            assert!(!c.root().join("p").exists());
        }
    }

    #[test]
    fn too_many_entries_or_bytes_are_refused() {
        let c = Case::new();
        let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (header(n, tar::EntryType::Regular, 0, None), &b""[..]))
            .collect();
        let small = Limits {
            entries: 10,
            bytes: 1 << 20,
        };
        let e = refused(c.run(&entries, small), "entries");
        assert!(e.contains("more than 10 entries"), "{e}");
        let c = Case::new();
        let big = vec![7u8; 2000];
        let e = refused(
            c.run(
                &[(header("big", tar::EntryType::Regular, 2000, None), &big)],
                Limits {
                    entries: 10,
                    bytes: 1000,
                },
            ),
            "bytes",
        );
        assert!(e.contains("more than 1000 bytes"), "{e}");
        assert!(!c.root().join("big").exists(), "refused before writing");
        assert_eq!(Limits::for_size(10).bytes, 10_000);
        assert_eq!(Limits::for_size(1 << 40).bytes, MAX_BYTES);
        assert_eq!(Limits::for_size(u64::MAX).bytes, MAX_BYTES);
    }

    #[test]
    fn symlink_targets() {
        let ok = |rel: &str, t: &str| check_symlink(Path::new(rel), Path::new(t));
        assert!(ok("a/b/l", "../../x").is_ok());
        assert!(ok("a/b/l", "../c/./d").is_ok());
        assert!(ok("l", "x").is_ok());
        assert!(ok("a/b/l", "../../../x").is_err());
        assert!(ok("a/b/l", "c/../../x").is_err(), "`..` after a name");
        assert!(ok("l", "/x").is_err());
        assert!(ok("l", "").is_err());
    }
}
