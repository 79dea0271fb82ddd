//! The `watchdogs` block and a job's `repair` block: check kinds, thresholds, ladders and budgets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use autopilot_core::spec::{
    FreeSpace, JobSpec, RepairBudget, RepairSpec, RepairStep, SnapshotSpec, Trigger, WatchdogCheck,
    WatchdogSpec,
};

use crate::decode::{Field, Obj, child};
use crate::json5::Kind;
use crate::{ConfigError, ConfigWarning, host_port, http_url};

/// The kinds of watchdog check; an entry sets exactly one.
const WATCHDOG_KINDS: [&str; 6] = ["exec", "http", "tcp", "disk", "catalog", "crashloop"];

const WATCHDOG_KEYS: [&str; 12] = [
    "name",
    "exec",
    "http",
    "tcp",
    "disk",
    "catalog",
    "crashloop",
    "interval",
    "timeout",
    "job",
    "rise",
    "fall",
];

const REPAIR_KEYS: [&str; 7] = [
    "ladder",
    "probation",
    "grace",
    "budget",
    "replace",
    "replaceTimeout",
    "exitCode",
];

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_WARN_ON: [u16; 2] = [429, 503];
const MAX_NAME: usize = 64;

/// Reads the top-level `watchdogs` array; `jobs` are the loaded jobs, which
/// `job` and `crashloop.job` must name.
pub(crate) fn watchdogs(f: &Field, jobs: &[JobSpec]) -> Result<Vec<WatchdogSpec>, ConfigError> {
    let mut out: Vec<WatchdogSpec> = Vec::new();
    let mut names = HashSet::new();
    for w in f.array()? {
        let spec = watchdog(&w, jobs)?;
        if !names.insert(spec.name.clone()) {
            let mut o = w.obj()?;
            return Err(o
                .require("name")?
                .err(format!("duplicate watchdog name {:?}", spec.name)));
        }
        out.push(spec);
    }
    Ok(out)
}

fn watchdog_name(f: &Field) -> Result<String, ConfigError> {
    let name = f.str()?;
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(f.err(format!(
            "{name:?} is not a valid watchdog name: 1-{MAX_NAME} letters, digits, '_', '.' or '-'"
        )));
    }
    Ok(name)
}

/// The job `f` names, or an error at `f`.
fn job_ref<'j>(f: &Field, jobs: &'j [JobSpec]) -> Result<&'j JobSpec, ConfigError> {
    let name = f.str()?;
    jobs.iter()
        .find(|j| j.name == name)
        .ok_or_else(|| f.err(format!("{name:?} names no job")))
}

fn watchdog(f: &Field, jobs: &[JobSpec]) -> Result<WatchdogSpec, ConfigError> {
    let mut o = f.obj()?;
    let name = watchdog_name(&o.require("name")?)?;
    let kinds: Vec<&str> = WATCHDOG_KINDS.into_iter().filter(|k| o.has(k)).collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => {
            return Err(f.err(format!(
                "watchdog {name:?} needs a check: set one of {}",
                WATCHDOG_KINDS.join(", ")
            )));
        }
        [first, second, ..] => {
            return Err(o.err(
                second,
                format!(
                    "watchdog {name:?} sets both '{first}' and '{second}': set exactly one of {}",
                    WATCHDOG_KINDS.join(", ")
                ),
            ));
        }
    };
    let interval = o
        .opt("interval", Field::positive_duration)?
        .unwrap_or(DEFAULT_INTERVAL);
    let timeout = match o.opt("timeout", Field::positive_duration)? {
        Some(t) if t > interval => {
            return Err(o.err(
                "timeout",
                format!(
                    "must not be longer than 'interval' ({})",
                    humantime(interval)
                ),
            ));
        }
        Some(t) => t,
        // A short interval shortens the default timeout rather than failing.
        None => DEFAULT_TIMEOUT.min(interval),
    };
    let rise = o.opt("rise", |f| f.int(1, 100))?.unwrap_or(1) as u32;
    let fall = o.opt("fall", |f| f.int(1, 100))?.unwrap_or(1) as u32;
    let mut job = match o.get("job") {
        Some(j) => Some(job_ref(&j, jobs)?.name.clone()),
        None => None,
    };
    let check_f = o.require(kind)?;
    let check = match kind {
        "exec" => WatchdogCheck::Exec {
            argv: check_f.exec()?,
        },
        "http" => http(&check_f, timeout)?,
        "tcp" => tcp(&check_f, timeout)?,
        "disk" => disk(&check_f)?,
        "catalog" => {
            if !check_f.bool()? {
                return Err(check_f.err(
                    "'catalog' takes only true (leave the watchdog out to not check the catalog)",
                ));
            }
            WatchdogCheck::Catalog
        }
        _ => {
            let (check, target) = crashloop(&check_f, jobs)?;
            job.get_or_insert(target);
            check
        }
    };
    o.finish(&WATCHDOG_KEYS)?;
    Ok(WatchdogSpec {
        name,
        check,
        interval,
        timeout,
        job,
        rise,
        fall,
    })
}

/// `slow`: a warning threshold, which only means something below the
/// watchdog's timeout (a slower answer is an error anyway).
fn slow(o: &mut Obj, timeout: Duration) -> Result<Option<Duration>, ConfigError> {
    let slow = o.opt("slow", Field::positive_duration)?;
    if let Some(s) = slow
        && s >= timeout
    {
        return Err(o.err(
            "slow",
            format!(
                "must be shorter than the watchdog's 'timeout' ({}): a slower answer is an error",
                humantime(timeout)
            ),
        ));
    }
    Ok(slow)
}

fn status_code(f: &Field) -> Result<u16, ConfigError> {
    // In range by `int`'s bounds.
    Ok(f.int(100, 599)? as u16)
}

fn http(f: &Field, timeout: Duration) -> Result<WatchdogCheck, ConfigError> {
    let mut o = f.obj()?;
    let url_f = o.require("url")?;
    let url = url_f.str()?;
    http_url(&url).map_err(|e| url_f.err(e.to_string()))?;
    let expect = o.opt("expect", status_code)?;
    let warn_on = match o.get("warnOn") {
        Some(w) => w
            .array()?
            .iter()
            .map(status_code)
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_WARN_ON.to_vec(),
    };
    let slow = slow(&mut o, timeout)?;
    o.finish(&["url", "expect", "warnOn", "slow"])?;
    Ok(WatchdogCheck::Http {
        url,
        expect,
        warn_on,
        slow,
    })
}

fn tcp(f: &Field, timeout: Duration) -> Result<WatchdogCheck, ConfigError> {
    let mut o = f.obj()?;
    let addr_f = o.require("address")?;
    let address = addr_f.str()?;
    host_port(&address).map_err(|e| addr_f.err(e.to_string()))?;
    let slow = slow(&mut o, timeout)?;
    o.finish(&["address", "slow"])?;
    Ok(WatchdogCheck::Tcp { address, slow })
}

fn disk(f: &Field) -> Result<WatchdogCheck, ConfigError> {
    let mut o = f.obj()?;
    let path_f = o.require("path")?;
    let path = PathBuf::from(path_f.str()?);
    if !path.is_absolute() {
        return Err(path_f.err(format!("{} is not an absolute path", path.display())));
    }
    let warning = o.opt("warning", free_space)?;
    let error = o.opt("error", free_space)?;
    match (warning, error) {
        (None, None) => {
            return Err(o.err(
                "warning",
                "a disk watchdog needs 'warning', 'error' or both (\"20%\" or a size such as \"500MiB\")",
            ));
        }
        (Some(FreeSpace::Percent(w)), Some(FreeSpace::Percent(e))) if e >= w => {
            return Err(o.err(
                "error",
                format!(
                    "the error threshold ({e}%) must be less free space than the warning one ({w}%)"
                ),
            ));
        }
        (Some(FreeSpace::Bytes(w)), Some(FreeSpace::Bytes(e))) if e >= w => {
            return Err(o.err(
                "error",
                format!("the error threshold ({e} bytes) must be less free space than the warning one ({w} bytes)"),
            ));
        }
        _ => {}
    }
    o.finish(&["path", "warning", "error"])?;
    Ok(WatchdogCheck::Disk {
        path,
        warning,
        error,
    })
}

/// The size units a threshold may use, lower-cased.
const SIZE_UNITS: [(&str, f64); 9] = [
    ("b", 1.0),
    ("kb", 1e3),
    ("mb", 1e6),
    ("gb", 1e9),
    ("tb", 1e12),
    ("kib", 1024.0),
    ("mib", 1_048_576.0),
    ("gib", 1_073_741_824.0),
    ("tib", 1_099_511_627_776.0),
];

/// A disk threshold: `"N%"` (0 < N <= 100) or a size (`"500MiB"`, `"2GB"`,
/// a number of bytes).
fn free_space(f: &Field) -> Result<FreeSpace, ConfigError> {
    const WANT: &str = "expected a percentage such as \"10%\" or a size such as \"500MiB\", \"2GB\" or a number of bytes";
    let (num, scale) = match &f.node.kind {
        Kind::Number(n) => (*n, 1.0),
        Kind::Str(s) => {
            let t = s.trim();
            if let Some(p) = t.strip_suffix('%') {
                let v: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| f.err(format!("{s:?}: {WANT}")))?;
                if !(v > 0.0 && v <= 100.0) {
                    return Err(f.err(format!(
                        "{s:?}: a percentage must be above 0 and at most 100"
                    )));
                }
                return Ok(FreeSpace::Percent(v));
            }
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let unit = unit.trim().to_ascii_lowercase();
            let scale = if unit.is_empty() {
                1.0
            } else {
                SIZE_UNITS
                    .iter()
                    .find(|(u, _)| *u == unit)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        f.err(format!(
                            "{s:?} has an unknown size unit; expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
                        ))
                    })?
            };
            let v: f64 = digits
                .parse()
                .map_err(|_| f.err(format!("{s:?}: {WANT}")))?;
            (v, scale)
        }
        other => {
            return Err(f.err(format!("{WANT}, found {}", other.type_name())));
        }
    };
    // Float arithmetic cannot trap; the range check refuses infinities and
    // NaN, so the conversion below is exact enough and never saturates.
    let bytes = (num * scale).floor();
    if !(1.0..18_446_744_073_709_551_616.0).contains(&bytes) {
        return Err(f.err(format!(
            "{num} is not a valid size: it must be between 1 byte and 16EiB"
        )));
    }
    Ok(FreeSpace::Bytes(bytes as u64))
}

fn crashloop(f: &Field, jobs: &[JobSpec]) -> Result<(WatchdogCheck, String), ConfigError> {
    let mut o = f.obj()?;
    let job_f = o.require("job")?;
    let job = job_ref(&job_f, jobs)?;
    if job.exec.is_empty() {
        return Err(job_f.err(format!(
            "job {:?} runs no process ('exec'), so it cannot crash-loop",
            job.name
        )));
    }
    let restarts = o.opt("restarts", |f| f.int(1, 1000))?.unwrap_or(5) as u32;
    let window = o
        .opt("window", Field::positive_duration)?
        .unwrap_or(Duration::from_secs(60));
    o.finish(&["job", "restarts", "window"])?;
    Ok((
        WatchdogCheck::Crashloop {
            job: job.name.clone(),
            restarts,
            window,
        },
        job.name.clone(),
    ))
}

/// What a job's `repair` block is checked against.
pub(crate) struct JobFacts<'a> {
    pub exec: &'a [String],
    pub trigger: &'a Trigger,
    pub snapshot: Option<&'a SnapshotSpec>,
}

/// Reads a job's `repair` block.
pub(crate) fn repair(
    f: &Field,
    job: &JobFacts,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<RepairSpec, ConfigError> {
    if job.exec.is_empty() {
        return Err(f.err("'repair' needs the job to run a process: set 'exec'"));
    }
    match job.trigger {
        Trigger::Interval(_) => {
            return Err(f.err(
                "'repair' does not apply to an interval job ('when.interval'): it runs again every period",
            ));
        }
        t if t.is_stop_hook() => {
            return Err(f.err(
                "'repair' does not apply to a stop hook ('when' on 'stopping' or 'stopped')",
            ));
        }
        Trigger::Event { each: true, .. } => {
            return Err(f.err(
                "'repair' does not apply to an 'each' handler ('when.each'): it runs once per event",
            ));
        }
        _ => {}
    }
    let mut o = f.obj()?;
    let ladder = ladder(&o.require("ladder")?, job)?;
    let mut spec = RepairSpec::new(ladder);
    if let Some(p) = o.opt("probation", Field::positive_duration)? {
        spec.probation = p;
    }
    if let Some(g) = o.opt("grace", Field::positive_duration)? {
        spec.grace = g;
    }
    if let Some(b) = o.opt("budget", budget)? {
        spec.budget = b;
    }
    spec.replace_exec = o.opt("replace", Field::exec)?;
    if let Some(t) = o.opt("replaceTimeout", Field::positive_duration)? {
        spec.replace_timeout = t;
    }
    if let Some(c) = o.opt("exitCode", |f| f.int(1, 255))? {
        // In range by `int`'s bounds.
        spec.exit_code = c as i32;
    }
    if !spec.ladder.contains(&RepairStep::Replace) {
        for key in ["replace", "replaceTimeout", "exitCode"] {
            if o.has(key) {
                warnings.push(ConfigWarning {
                    field: child(&o.path, key),
                    message: "ignored: only the 'replace' step uses it, and the ladder has none"
                        .into(),
                });
            }
        }
    }
    o.finish(&REPAIR_KEYS)?;
    Ok(spec)
}

fn ladder(f: &Field, job: &JobFacts) -> Result<Vec<RepairStep>, ConfigError> {
    let items = f.array()?;
    if items.is_empty() {
        return Err(f.err("the ladder is empty: list at least one of restart, reimage, replace"));
    }
    let last = items.len() - 1;
    let mut steps = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let name = item.str()?;
        let step = RepairStep::parse(&name).ok_or_else(|| {
            item.err(format!(
                "unknown repair step {name:?}; expected one of: restart, reimage, replace"
            ))
        })?;
        if steps.contains(&step) {
            return Err(item.err(format!("{name:?} is already in the ladder")));
        }
        if step == RepairStep::Replace && k != last {
            return Err(
                item.err("\"replace\" must be the last step: the agent exits for its replacement")
            );
        }
        if step == RepairStep::Reimage {
            let missing = match job.snapshot {
                None => Some("the job has no 'snapshot'"),
                Some(s) => match (s.data_dir.is_some(), s.restore.is_some()) {
                    (true, true) => None,
                    (false, true) => Some("the job's snapshot has no 'dataDir'"),
                    (true, false) => Some("the job's snapshot has no 'restore'"),
                    (false, false) => Some("the job's snapshot has no 'dataDir' and no 'restore'"),
                },
            };
            if let Some(m) = missing {
                return Err(item.err(format!(
                    "\"reimage\" restores the newest snapshot into the job's data directory, but {m}"
                )));
            }
        }
        steps.push(step);
    }
    Ok(steps)
}

/// `budget`: a positive count, or `"N%"` of the service's instances.
fn budget(f: &Field) -> Result<RepairBudget, ConfigError> {
    if let Kind::Str(s) = &f.node.kind
        && let Some(p) = s.trim().strip_suffix('%')
    {
        return match p.trim().parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(RepairBudget::Percent(n)),
            _ => Err(f.err(format!(
                "{s:?} is not a valid budget percentage: expected a whole number from 1% to 100%"
            ))),
        };
    }
    let n = f.int(1, i64::from(u32::MAX)).map_err(|_| {
        f.err("expected a positive number of instances, or a percentage such as \"20%\"")
    })?;
    // In range by `int`'s bounds.
    Ok(RepairBudget::Count(n as u32))
}

/// A duration as the config would write it.
fn humantime(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
