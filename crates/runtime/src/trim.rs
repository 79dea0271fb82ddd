//! Start-up trim: once the agent has started, drops this process's page-table entries for its read-only file mappings (its own code and constants, the shared libraries'), so only the code it runs from then on stays resident (issue 18).
//!
//! Start-up runs code that is never needed again (command-line and config
//! parsing, opening the catalog, the first spawns), and the kernel maps code
//! in 64 KiB windows around each page touched ("fault-around"), so after
//! start-up most of the binary counts in the agent's RSS although little of it
//! is used. `MADV_DONTNEED` on a read-only private file mapping only unmaps:
//! the pages stay in the page cache, and whatever the agent runs afterwards
//! is mapped again by an ordinary minor fault. Measured in
//! docs/benchmarks.md.

use std::io;

/// One read-only, file-backed mapping that may be unmapped.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    len: usize,
    rss_kb: u64,
}

/// Parses `/proc/self/smaps`: every mapping of a file that is not writable
/// and holds no anonymous (copied-on-write) page. A mapping that was ever
/// written (relocated data before it was made read-only) has anonymous pages
/// and is left alone: unmapping those would lose the writes.
fn candidates(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut cur: Option<(Mapping, bool)> = None;
    let finish = |m: Option<(Mapping, bool)>, out: &mut Vec<Mapping>| {
        if let Some((m, true)) = m {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            finish(cur.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let eligible = perms.starts_with('r')
                && perms.as_bytes().get(1) == Some(&b'-')
                && perms.ends_with('p')
                && path.starts_with('/');
            cur = Some((
                Mapping {
                    start,
                    len: end.saturating_sub(start),
                    rss_kb: 0,
                },
                eligible,
            ));
            continue;
        }
        let Some((m, eligible)) = cur.as_mut() else {
            continue;
        };
        let value = fields.next().and_then(|v| v.parse::<u64>().ok());
        match (first, value) {
            ("Rss:", Some(v)) => m.rss_kb = v,
            ("Anonymous:", Some(v)) if v > 0 => *eligible = false,
            // Locked pages cannot be dropped (and were locked for a reason).
            ("VmFlags:", _) if line.split_whitespace().any(|f| f == "lo") => *eligible = false,
            _ => {}
        }
    }
    finish(cur.take(), &mut out);
    out.retain(|m| m.len > 0 && m.rss_kb > 0);
    out
}

/// Unmaps the resident pages of every read-only file mapping (see the
/// module doc); returns the kilobytes that were resident in them.
#[allow(unsafe_code)]
pub fn trim_code_pages() -> io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = 0u64;
    for m in candidates(&smaps) {
        let Some(addr) = std::ptr::NonNull::new(m.start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is exactly one whole mapping of this process, as
        // listed by the kernel a moment ago: private, file-backed, not
        // writable, and without a single anonymous (modified) page. For such
        // a mapping MADV_DONTNEED only removes page-table entries; the next
        // access maps the same file contents again, so no code or data that
        // the program relies on changes. Read-only mappings are never made
        // writable again (the loader's RELRO goes from writable to read-only,
        // never back), so no page can become anonymous in between.
        let res = unsafe {
            nix::sys::mman::madvise(addr, m.len, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
        };
        if res.is_ok() {
            dropped = dropped.saturating_add(m.rss_kb);
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55e0a000-55e0b000 r--p 00000000 fe:00 123 /usr/bin/autopilot
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55e0b000-55e0d000 r-xp 00001000 fe:00 123 /usr/bin/autopilot
Rss:                  12 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55e0d000-55e0e000 r--p 00003000 fe:00 123 /usr/bin/autopilot
Rss:                   4 kB
Anonymous:             4 kB
VmFlags: rd mr mw me ac
55e0e000-55e0f000 rw-p 00004000 fe:00 123 /usr/bin/autopilot
Rss:                   4 kB
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac
7f00000-7f01000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f01000-7f02000 r-xp 00000000 fe:00 9 /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo
7f02000-7f04000 r--s 00000000 fe:00 10 /dev/shm/x
Rss:                   8 kB
Anonymous:             0 kB
7f04000-7f05000 r--p 00000000 fe:00 11 /usr/lib/libm.so.6
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unmodified_read_only_private_file_mappings() {
        let got = candidates(SMAPS);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x55e0a000,
                    len: 0x1000,
                    rss_kb: 8
                },
                Mapping {
                    start: 0x55e0b000,
                    len: 0x2000,
                    rss_kb: 12
                },
            ],
            "the relocated data (anonymous pages), writable, shared, locked, \
             non-file and non-resident mappings are left alone"
        );
    }

    #[test]
    fn trimming_this_process_keeps_it_running_and_drops_pages() {
        // Touch a good part of this test binary's code first.
        let before = candidates(&std::fs::read_to_string("/proc/self/smaps").unwrap())
            .iter()
            .map(|m| m.rss_kb)
            .sum::<u64>();
        assert!(before > 0);
        let dropped = trim_code_pages().unwrap();
        assert!(
            dropped > 0,
            "nothing was resident in read-only file mappings"
        );
        // Code and constants still work after the unmap (they fault back in).
        let s: String = (0..1000).map(|i| format!("{i:x}")).collect();
        assert!(s.len() > 1000);
        let after = candidates(&std::fs::read_to_string("/proc/self/smaps").unwrap())
            .iter()
            .map(|m| m.rss_kb)
            .sum::<u64>();
        assert!(
            after < before,
            "resident code did not shrink: {before} kB -> {after} kB"
        );
    }
}
