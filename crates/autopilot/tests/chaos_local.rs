//! Faults on the embedded catalog with real agents: a stepped wall clock never makes two
//! leaders, catalog files stay private under any umask, a full disk is no log or CPU storm,
//! and kill -9 in a loop leaves an intact database that loses nothing.
// Tests start the real binary and real tools as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// libfaketime from the Debian package `faketime`.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// One elected job whose `elected`/`demoted` handlers append a timestamp
/// read from the real clock: `env -u LD_PRELOAD` keeps a faked agent's
/// wall clock out of its handlers.
fn election_config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "test ! -e @DIR@/sick", interval: "100ms", ttl: 2 }},
       election: {{ name: "primary", ttl: "2s" }} }},
    {{ name: "on-elected", when: {{ source: "db", each: "elected" }},
       exec: ["env", "-u", "LD_PRELOAD", "sh", "-c", "echo elected $(date +%s%N) >> @DIR@/events"] }},
    {{ name: "on-demoted", when: {{ source: "db", each: "demoted" }},
       exec: ["env", "-u", "LD_PRELOAD", "sh", "-c", "echo demoted $(date +%s%N) >> @DIR@/events"] }},
  ]
}}"#
    )
}

fn is_leader(a: &Agent) -> bool {
    a.status()["jobs"][0]["election"]["leader"] == true
}

fn instances(url: &str, service: &str) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["catalog", "--catalog", url, "instances", service, "--json"])
        .output()
        .expect("cli");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Minutes since midnight of an RFC 3339 timestamp (`...THH:MM:...`).
fn minute_of_day(ts: &str) -> Option<i64> {
    let t = ts.split_once('T')?.1;
    let h: i64 = t.get(0..2)?.parse().ok()?;
    let m: i64 = t.get(3..5)?.parse().ok()?;
    Some(h * 60 + m)
}

fn assert_no_overlap(dirs: &[&Dir]) -> usize {
    let spans = leadership_spans(dirs);
    for w in spans.windows(2) {
        assert!(w[0].1 < w[1].0, "leadership overlap: {w:?}");
    }
    spans.len()
}

#[test]
fn a_wall_clock_step_never_makes_two_leaders() {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: apt-get install -y faketime"
    );
    let d = Dir::new("clock-step");
    let url = format!("local://{}", d.path("catalog").display());
    let (da, db) = (d.child("a"), d.child("b"));
    let a = start_with(
        &da,
        &election_config(7301),
        &[],
        &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", "a")],
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || is_leader(&a)));

    // b's wall clock reads this file on every call; its monotonic and
    // boot-time clocks are real.
    let offset = d.write("faketime", "+0\n");
    let offset_s = offset.display().to_string();
    let b = start_with(
        &db,
        &election_config(7302),
        &[],
        &[
            ("AUTOPILOT_CATALOG", &url),
            ("AUTOPILOT_HOSTNAME", "b"),
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &offset_s),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    b.ready();
    // b is a registered follower that knows a leads.
    assert!(wait_for(Duration::from_secs(10), || {
        let st = b.status();
        st["jobs"][0]["election"]["current"]["id"] == "db-a"
            && st["jobs"][0]["registration"]["catalog"] == "passing"
    }));

    // Step b's wall clock forward by an hour (a rename, so it is never
    // read half-written).
    let next = d.write("faketime.new", "+1h\n");
    std::fs::rename(&next, &offset).expect("step the clock");
    // The step took: b's displayed heartbeat is an hour ahead of a's.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let list = instances(&url, "db");
            let at = |id: &str| {
                list.iter()
                    .find(|i| i["id"] == id)
                    .and_then(|i| minute_of_day(i["lastHeartbeat"].as_str()?))
            };
            matches!((at("db-a"), at("db-b")), (Some(x), Some(y)) if (y - x).rem_euclid(1440) >= 55 && (y - x).rem_euclid(1440) <= 65)
        }),
        "b's wall clock never moved: {:?}",
        instances(&url, "db")
    );
    // Three seat TTLs with a healthy leader: b must not be elected.
    let stolen = wait_for(Duration::from_secs(6), || {
        db.read("events").contains("elected")
    });
    assert!(
        !stolen,
        "the follower with the stepped clock took the seat: a {:?}, b {:?}",
        da.read("events"),
        db.read("events")
    );
    assert!(is_leader(&a));
    assert_no_overlap(&[&da, &db]);

    // The stepped follower still takes over properly when a steps down.
    da.write("sick", "");
    assert!(
        wait_for(Duration::from_secs(5), || da
            .read("events")
            .contains("demoted")
            && db.read("events").contains("elected")),
        "b never took over; log:\n{}",
        b.log()
    );
    assert!(is_leader(&b));
    assert!(assert_no_overlap(&[&da, &db]) >= 2);
}

fn service_config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "web", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }} }},
  ]
}}"#
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// `autopilot catalog services` on the catalog in `dir` must fail; its stderr.
fn refused(dir: &std::path::Path) -> String {
    let out = Command::new(bin())
        .args(["catalog", "--catalog"])
        .arg(format!("local://{}", dir.display()))
        .arg("services")
        .output()
        .expect("cli");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    err
}

#[test]
fn catalog_files_are_private_under_umask_000_and_open_directories_are_refused() {
    let d = Dir::new("modes");
    let catalog = d.path("catalog");
    let url = format!("local://{}", catalog.display());
    let a = start_wrapped(
        &d,
        &service_config(7311),
        &["sh", "-c", "umask 000 && exec \"$@\"", "sh"],
        &[],
    );
    a.ready();
    assert!(
        wait_for(Duration::from_secs(10), || instances(&url, "web").len()
            == 1),
        "log:\n{}",
        a.log()
    );
    assert_eq!(mode(&catalog), 0o700, "catalog directory");
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        assert_eq!(mode(&catalog.join(f)), 0o600, "{f}");
    }
    // The agents' wake-up sockets, too.
    assert_eq!(mode(&catalog.join("watchers")), 0o700, "watchers");
    let socks: Vec<_> = std::fs::read_dir(catalog.join("watchers"))
        .expect("watchers")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!socks.is_empty(), "the agent's socket");
    for s in &socks {
        assert_eq!(mode(s), 0o600, "{}", s.display());
    }
    drop(a);

    // A directory others can write to is refused, with its path, mode and owner.
    let open = d.path("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = refused(&open);
    assert!(
        err.contains(&open.display().to_string()) && err.contains("0777") && err.contains("uid"),
        "{err}"
    );
    assert!(
        !open.join("catalog.db").exists(),
        "nothing is created there"
    );

    // So is one owned by another user.
    let theirs = d.path("theirs");
    std::fs::create_dir(&theirs).expect("dir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
    let err = refused(&theirs);
    assert!(
        err.contains(&theirs.display().to_string()) && err.contains("65534"),
        "{err}"
    );
}

/// A registered, elected job whose process ends soon after its agent is
/// killed (it polls its parent), so a kill -9 leaves nothing running.
fn chaos_config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "web", port: {port}, interfaces: ["static:127.0.0.1"],
       exec: ["sh", "-c", "while kill -0 $PPID 2>/dev/null; do sleep 0.1; done"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }},
       election: {{ name: "primary", ttl: "2s" }} }},
  ]
}}"#
    )
}

fn ids(url: &str, service: &str) -> Vec<String> {
    instances(url, service)
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (Debian package sqlite3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn kill_9_in_a_loop_leaves_an_intact_catalog_that_loses_nothing() {
    let d = Dir::new("kill9");
    let catalog = d.path("catalog");
    let url = format!("local://{}", catalog.display());
    let env = |host: &'static str| {
        [
            ("AUTOPILOT_CATALOG", url.clone()),
            ("AUTOPILOT_HOSTNAME", host.to_string()),
        ]
    };
    let start = |dir: &Dir, port: u16, host: &'static str| {
        let e = env(host);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_with(dir, &chaos_config(port), &[], &e)
    };
    let survivor_dir = d.child("keep");
    let survivor = start(&survivor_dir, 7320, "keep");
    survivor.ready();
    assert!(wait_for(Duration::from_secs(10), || ids(&url, "web")
        .contains(&"web-keep".to_string())));
    let (code, out) = survivor.cli(&["kv", "put", "config/before", "kept"]);
    assert_eq!(code, 0, "{out}");

    let victims = [(d.child("v1"), 7321, "v1"), (d.child("v2"), 7322, "v2")];
    // xorshift: random kill moments, reproducible from the printed seed.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill -9 seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..20 {
        let (dir, port, host) = &victims[round % 2];
        let mut a = start(dir, *port, host);
        // Anywhere from start-up (opening, first registration, first
        // campaign) to steady keep-alives and renewals.
        std::thread::sleep(Duration::from_millis(rand(1500)));
        a.signal(libc::SIGKILL);
        assert!(
            a.wait(Duration::from_secs(5)).is_some(),
            "round {round}: not killed"
        );
    }

    let db = catalog.join("catalog.db");
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
    // The surviving agent's entry and its data are all there.
    assert!(
        wait_for(Duration::from_secs(5), || ids(&url, "web")
            .contains(&"web-keep".to_string())),
        "the survivor's entry is gone: {:?}\n{}",
        ids(&url, "web"),
        survivor.log()
    );
    let (code, out) = survivor.cli(&["kv", "get", "config/before"]);
    assert_eq!((code, out.trim()), (0, "kept"));
    // The killed agents' entries expired; a restarted agent registers again
    // and the election still has exactly one leader.
    let (dir, port, host) = &victims[0];
    let back = start(dir, *port, host);
    back.ready();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let mut now = ids(&url, "web");
            now.sort();
            now == ["web-keep", "web-v1"]
        }),
        "after the restart: {:?}\n{}",
        ids(&url, "web"),
        back.log()
    );
    let leading = |a: &Agent| a.status()["jobs"][0]["election"]["leader"] == true;
    assert!(wait_for(Duration::from_secs(10), || leading(&survivor)
        ^ leading(&back)));
    assert!(survivor.status()["jobs"][0]["registration"]["catalog"] == "passing");
    drop(back);
    drop(survivor);
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
}

/// A tmpfs mounted for one test, unmounted when dropped (also on failure).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} (root needed)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("ticks"))
        .collect();
    // SAFETY: sysconf has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (f[0] + f[1]) as f64 / hz
}

fn registered_config() -> String {
    let job = |name: &str, port: u16| {
        format!(
            r#"{{ name: "{name}", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "true", interval: "200ms", ttl: 2 }} }},"#
        )
    };
    format!(
        "{{\n  control: {{ socket: \"@SOCKET@\" }},\n  jobs: [\n    {}\n    {}\n    {}\n  ]\n}}",
        job("svc-a", 7331),
        job("svc-b", 7332),
        job("svc-c", 7333)
    )
}

#[test]
fn a_full_disk_is_no_log_or_cpu_storm_and_registrations_come_back() {
    let d = Dir::new("disk-full");
    let mnt = d.path("tmpfs");
    let _tmpfs = Tmpfs::mount(&mnt, "2m");
    let url = format!("local://{}", mnt.join("catalog").display());
    let a = start_with(
        &d,
        &registered_config(),
        &[],
        &[("AUTOPILOT_CATALOG", &url)],
    );
    a.ready();
    let all = |url: &str| {
        ["svc-a", "svc-b", "svc-c"]
            .iter()
            .all(|s| instances(url, s).len() == 1)
    };
    assert!(
        wait_for(Duration::from_secs(10), || all(&url)),
        "{}",
        a.log()
    );

    // Fill the filesystem to the last byte.
    let fill = mnt.join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).expect("fill file");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Keep-alives fail, so the entries expire (and cannot be swept).
    assert!(
        wait_for(Duration::from_secs(10), || instances(&url, "svc-a")
            .is_empty()),
        "keep-alives kept working on a full disk?\n{}",
        a.log()
    );
    let lines = |a: &Agent| a.log().lines().count();
    let (lines0, cpu0, t0) = (lines(&a), cpu_seconds(a.pid()), Instant::now());
    // Measured over a fixed window: the storm is a rate.
    std::thread::sleep(Duration::from_secs(3));
    let (lines1, cpu1) = (lines(&a), cpu_seconds(a.pid()));
    let cpu = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "disk full for {:?}: {} log lines, {:.1}% CPU",
        t0.elapsed(),
        lines1 - lines0,
        cpu * 100.0
    );
    assert!(
        lines1 - lines0 <= 6,
        "the log grew by {} lines in 3 s on a full disk:\n{}",
        lines1 - lines0,
        a.log()
            .lines()
            .skip(lines0)
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        cpu < 0.20,
        "the agent used {:.0}% CPU on a full disk",
        cpu * 100.0
    );

    // Space again: everything is registered again and the agent says so.
    std::fs::remove_file(&fill).expect("free space");
    assert!(
        wait_for(Duration::from_secs(10), || all(&url)),
        "registrations did not come back:\n{}",
        a.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || a.log().contains("again")),
        "no recovery logged:\n{}",
        a.log()
    );
}
