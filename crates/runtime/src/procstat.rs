//! The standard Prometheus process metrics (`process_*`), read from `/proc/self` at scrape time.
//!
//! A value that cannot be read is left out rather than reported as 0.

use std::fmt::Write;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, fixed at
/// 100 by the Linux ABI whatever the kernel's `HZ`.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// `(utime + stime, starttime)` in ticks from the text of `/proc/self/stat`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after the last ')'. Field 3 (state) is index 0 here.
    let rest = &stat[stat.rfind(')')?.saturating_add(1)..];
    let f: Vec<&str> = rest.split_whitespace().take(20).collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some((utime.saturating_add(stime), start))
}

/// A `Name:   N kB` line of `/proc/self/status`, in bytes.
fn status_kb(status: &str, name: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line
        .strip_prefix(name)?
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb as f64 * 1024.0)
}

fn btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads the process metrics of this process.
pub fn sample() -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((cpu, start)) = parse_stat(&stat)
    {
        s.cpu_seconds = Some(cpu as f64 / USER_HZ);
        if let Some(boot) = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(btime)
        {
            s.start_time_seconds = Some(boot as f64 + start as f64 / USER_HZ);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        s.resident_bytes = status_kb(&status, "VmRSS");
        s.virtual_bytes = status_kb(&status, "VmSize");
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        s.open_fds = Some(dir.count().saturating_sub(1) as f64);
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        s.max_fds = Some(soft as f64);
    }
    s
}

/// The process metrics in the text exposition format.
pub fn render() -> String {
    let s = sample();
    let mut out = String::new();
    let families: [(&str, &str, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            s.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            s.start_time_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            s.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            s.virtual_bytes,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            s.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            s.max_fds,
        ),
    ];
    for (name, kind, help, v) in families {
        if let Some(v) = v {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let stat =
            "42 (a) b (c) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 1234 1000 200";
        assert_eq!(parse_stat(stat), Some((300, 1234)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t   512 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(512.0 * 1024.0));
        assert_eq!(status_kb(status, "VmSize"), Some(2048.0 * 1024.0));
        assert_eq!(btime("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
    }

    #[test]
    fn this_process_has_sane_values() {
        let s = sample();
        assert!(s.resident_bytes.is_some_and(|v| v > 0.0), "{s:?}");
        assert!(s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.open_fds.is_some_and(|v| v >= 1.0), "{s:?}");
        assert!(s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.start_time_seconds.is_some_and(|v| v > 1.5e9), "{s:?}");
        assert!(s.cpu_seconds.is_some_and(|v| v >= 0.0), "{s:?}");
        let text = render();
        assert_eq!(text.matches("# TYPE process_").count(), 6, "{text}");
    }
}
