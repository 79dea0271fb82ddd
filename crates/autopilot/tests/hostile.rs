//! Hostile configs and templates through the real binary: exit 2 with file:line:column and the field, fast, in bounded memory, never a crash or a hang.
//!
//! The corpus is `tests/hostile/`: one config per file whose first line is
//! `// expect: FRAGMENT` (or `A | B`: either, where two limits race), template sources they name under `templates/`, and
//! templates that only fail when rendered from catalog data under `runtime/`
//! (first line `{{/* expect: FRAGMENT */}}`). Cases too big to keep as files
//! are generated below.
// Tests start the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A run still going after this long is a hang.
const HANG: Duration = Duration::from_secs(2);

/// Address space the agent may use while refusing a config: an allocation
/// beyond it fails, and the agent aborts (exit 134), which fails the case.
const MEMORY: u64 = 2 << 30;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// The fragment a case's first line promises.
fn expectation(bytes: &[u8], open: &str, close: &str) -> Option<String> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?;
    let rest = line.strip_prefix(open)?.strip_prefix(" expect: ")?;
    let end = if close.is_empty() {
        None
    } else {
        rest.find(close)
    };
    Some(rest[..end.unwrap_or(rest.len())].trim_end().to_string())
}

/// Whether `out` has `NAME.EXT:LINE:COL: ` for a config or template file.
fn has_position(out: &str) -> bool {
    [".json5:", ".tmpl:"].iter().any(|ext| {
        out.match_indices(ext).any(|(i, _)| {
            let rest = &out[i + ext.len()..];
            let mut parts = rest.splitn(3, ':');
            let num = |p: Option<&str>| {
                p.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            };
            num(parts.next())
                && num(parts.next())
                && parts.next().is_some_and(|r| r.starts_with(' '))
        })
    })
}

struct Run {
    code: Option<i32>,
    out: String,
    took: Duration,
}

/// Runs the agent on `config` under a memory limit, killing it after [`HANG`].
fn run(dir: &Dir, config: &Path) -> Run {
    let log = dir.path("agent.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(bin());
    cmd.arg("-config")
        .arg(config)
        .env(
            "AUTOPILOT_CATALOG",
            format!("local://{}", dir.path("catalog").display()),
        )
        .env("AUTOPILOT_STATE_DIR", dir.path("state"))
        .env("AUTOPILOT_SOCKET", dir.path("ctl.sock"))
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file);
    let limit = libc::rlimit {
        rlim_cur: MEMORY,
        rlim_max: MEMORY,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child's
    // own limits; `limit` is a plain value copied into the closure.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn autopilot");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: status.and_then(|s| s.code().or(s.signal().map(|n| 128 + n))),
        out: std::fs::read_to_string(&log).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// Whether `out` holds the fragment, or one of `A | B`.
fn matches(out: &str, want: &str) -> bool {
    want.split(" | ").any(|w| out.contains(w))
}

/// Checks one case; returns a failure description, if any.
fn check(name: &str, r: &Run, want: &str) -> Option<String> {
    let out = r.out.chars().take(600).collect::<String>();
    if r.code.is_none() {
        return Some(format!(
            "{name}: still running after {HANG:?} (a hang)\n{out}"
        ));
    }
    if r.code != Some(2) {
        return Some(format!("{name}: exit {:?}, want 2\n{out}", r.code));
    }
    if !has_position(&r.out) {
        return Some(format!("{name}: no file:line:column in\n{out}"));
    }
    if !matches(&r.out, want) {
        return Some(format!("{name}: want {want:?} in\n{out}"));
    }
    None
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read corpus") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[test]
fn hostile_corpus_exits_2_with_position_and_field() {
    let d = Dir::new("hostile");
    // A copy, so relative template paths resolve and nothing is written into the tree.
    let root = d.path("corpus");
    copy_dir(&corpus(), &root);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json5"))
        .collect();
    files.sort();
    assert!(files.len() >= 100, "only {} hostile configs", files.len());
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path).expect("read case");
        let Some(want) = expectation(&bytes, "//", "") else {
            failures.push(format!("{name}: first line is not `// expect: ...`"));
            continue;
        };
        let run_dir = d.child(&format!("run-{name}"));
        let r = run(&run_dir, path);
        if r.took > slowest.0 {
            slowest = (r.took, name.clone());
        }
        failures.extend(check(&name, &r, &want));
    }
    eprintln!(
        "{} hostile configs; slowest {:?} ({})",
        files.len(),
        slowest.0,
        slowest.1
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn generated_giants_exit_2_fast() {
    let n = 100_000;
    let job = "{ jobs: [{ name: 'a', exec: 'true' }] }";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nested-if",
            format!("{}{job}{}", "{{ if 1 }}".repeat(n), "{{ end }}".repeat(n)),
            "template: {{if}} nested deeper than 100",
        ),
        (
            "else-if-chain",
            format!("{{{{ if 0 }}}}{}{job}{{{{ end }}}}", "{{ else if 0 }}".repeat(n)),
            "template: {{if}} nested deeper than 100",
        ),
        (
            "nested-parens",
            format!("{{{{ {}1{} }}}}{job}", "(".repeat(n), ")".repeat(n)),
            "template: parentheses nested deeper than 100",
        ),
        (
            "nested-arrays",
            format!("{{ jobs: {}{} }}", "[".repeat(n), "]".repeat(n)),
            "(syntax): document is nested too deeply",
        ),
        (
            "nested-objects",
            format!("{}1{}", "{ a: ".repeat(n), " }".repeat(n)),
            "(syntax): document is nested too deeply",
        ),
        (
            "huge-file",
            format!("{{ catalog: '{}' }}", "x".repeat(5 << 20)),
            "(file): the file is larger than 4194304 bytes",
        ),
        (
            "huge-name",
            format!("{{ jobs: [{{ name: '{}', exec: 'true' }}] }}", "x".repeat(3 << 20)),
            "jobs[0].name: ",
        ),
        (
            "many-keys",
            format!("{{ {} jobs: [] }}", (0..n).map(|i| format!("k{i}: 1,")).collect::<String>()),
            "k0: unknown field",
        ),
        (
            "many-jobs-ring",
            format!(
                "{{ jobs: [{}] }}",
                (0..10_000)
                    .map(|i| format!(
                        "{{ name: 'j{i}', exec: 'true', when: {{ source: 'j{}', once: 'exitSuccess' }} }},",
                        (i + 1) % 10_000
                    ))
                    .collect::<String>()
            ),
            "jobs[0].when.source: 'when' cycle: \"j0\" -> \"j1\"",
        ),
    ];
    let d = Dir::new("hostile-gen");
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        let path = d.write(&format!("{name}.json5"), text);
        let r = run(&d.child(&format!("run-{name}")), &path);
        eprintln!("{name}: {:?}", r.took);
        failures.extend(check(name, &r, want));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Templates that parse but blow a limit only when rendered from catalog
/// data: the agent reports the error and keeps supervising.
#[test]
fn hostile_runtime_templates_fail_the_render_not_the_agent() {
    let mut failures = Vec::new();
    let dir = corpus().join("runtime");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("runtime corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for src in &files {
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read(src).expect("read template");
        let want = expectation(&text, "{{/*", "*/}}").expect("`{{/* expect: ... */}}` first line");
        let d = Dir::new("hostile-rt");
        std::fs::write(d.path("t.tmpl"), &text).expect("copy template");
        let mut a = start(
            &d,
            "{ jobs: [{ name: 'app', exec: 'sleep 60' }],
               templates: [{ source: '@DIR@/t.tmpl', dest: '@DIR@/out' }] }",
        );
        let started = Instant::now();
        let seen = wait_for(Duration::from_secs(5), || matches(&a.log(), &want));
        let took = started.elapsed();
        let alive = a.wait(Duration::ZERO).is_none();
        let rss = peak_rss_kib(a.pid());
        let log: String = a.log().chars().take(600).collect();
        if !seen || !alive {
            failures.push(format!(
                "{name}: seen {seen}, alive {alive}, want {want:?}\n{log}"
            ));
        } else if rss > 512 * 1024 {
            failures.push(format!("{name}: peak RSS {rss} KiB"));
        }
        eprintln!("{name}: error after {took:?}, peak RSS {rss} KiB");
        a.signal(libc::SIGTERM);
        assert!(
            a.wait(Duration::from_secs(10)).is_some(),
            "{name}: agent did not stop"
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
