//! Packing a directory as a deterministic tar: sorted entries, uid/gid 0, modes and mtimes kept, symlinks kept, special files refused.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{Error, io, unpack};

/// Writes the tree under `src` (its contents, not `src` itself) to the
/// (existing, empty) file `out`. The same tree always gives the same bytes.
pub fn pack_dir(src: &Path, out: &Path) -> Result<(), Error> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)
        .map_err(io(format!("cannot write {}", out.display())))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let mut stack = vec![(src.to_path_buf(), PathBuf::new())];
    // Depth first, entries of each directory sorted by their bytes: a
    // directory's entry comes before its contents, as tar expects.
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(format!("cannot list {}", dir.display())))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(format!("cannot list {}", dir.display())))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(io(format!("cannot read {}", path.display())))?;
            let ft = meta.file_type();
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mode(meta.mode() & 0o7777);
            h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
            let werr = io(format!("cannot write {}", out.display()));
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &rel, std::io::empty())
                    .map_err(werr)?;
                subdirs.push((path, rel));
            } else if ft.is_file() {
                let mut f = std::fs::File::open(&path)
                    .map_err(io(format!("cannot read {}", path.display())))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                // A file that grows while packed must not overrun its
                // header's size (the archive would be corrupt): exactly
                // `len` bytes, or an error.
                let mut data = std::io::Read::take(&mut f, meta.len());
                let mut counted = Counted {
                    inner: &mut data,
                    n: 0,
                };
                b.append_data(&mut h, &rel, &mut counted)
                    .map_err(|e| Error::Io {
                        context: format!("cannot pack {}", path.display()),
                        source: e,
                    })?;
                if counted.n != meta.len() {
                    return Err(Error::Io {
                        context: format!("cannot pack {}", path.display()),
                        source: std::io::Error::other("the file shrank while it was packed"),
                    });
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(io(format!("cannot read the link {}", path.display())))?;
                // Refused now rather than by every agent that unpacks it.
                unpack::check_symlink(&rel, &target).map_err(|why| Error::Unsafe {
                    path: path.clone(),
                    why,
                })?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &rel, &target).map_err(werr)?;
            } else {
                return Err(Error::Unsafe {
                    path,
                    why: "a fifo, socket or device cannot be packed".into(),
                });
            }
        }
        // Popped in order: push in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    let mut w = b
        .into_inner()
        .map_err(io(format!("cannot write {}", out.display())))?;
    w.flush()
        .map_err(io(format!("cannot write {}", out.display())))?;
    Ok(())
}

/// Counts the bytes read through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n = self.n.saturating_add(n as u64);
        Ok(n)
    }
}
