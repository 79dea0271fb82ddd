//! Faults the agent loop itself must survive without losing anything: a stop during a reload,
//! a full disk under the watch handlers' instances file, snapshots that exist but cannot be used,
//! and a scratch directory no other user can predict.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs of `size` mounted at `path`, unmounted on drop (the tests run as root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).expect("mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(path)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("fill")).expect("fill file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("fill")).expect("free space");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_stop_during_a_reload_wins() {
    let d = Dir::new("stop-reload");
    // The old job takes a second to stop, so SIGTERM lands mid-reload.
    let old = r#"{
  control: { socket: "@SOCKET@" },
  stopTimeout: "5s",
  jobs: [{ name: "app", exec: ["sh", "-c", "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done"] }]
}"#;
    let mut a = start(&d, old);
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || a
        .job_pid("app")
        .is_some()));
    // The new config would leave a mark if it ever started.
    let new = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [{ name: "next", exec: ["sh", "-c", "touch @DIR@/new-config-ran; sleep 60"] }]
}"#
    .replace("@SOCKET@", &a.socket.display().to_string())
    .replace("@DIR@", &d.0.display().to_string());
    std::fs::write(&a.config, new).expect("new config");
    let (code, out) = a.cli(&["reload"]);
    assert_eq!(code, 0, "{out}");
    a.signal(libc::SIGTERM);
    let code = a.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "the agent exits; log:\n{}", a.log());
    assert!(
        !d.path("new-config-ran").exists(),
        "the new config never starts after SIGTERM; log:\n{}",
        a.log()
    );
}

/// The lines the watch handler appended: the ports it saw in the instances file.
fn seen(d: &Dir) -> Vec<String> {
    d.lines("seen")
}

#[test]
fn a_watch_handler_never_acts_on_the_previous_list() {
    let d = Dir::new("watch-stale");
    let url = format!("local://{}", d.path("catalog").display());
    // The watcher's scratch directory (where the instances file lives) is
    // on a small filesystem the test fills.
    let run = Tmpfs::mount(d.path("run"), "256k");
    let watcher = r#"{
  control: { socket: "@SOCKET@" },
  watches: [{ name: "svc", interval: 60 }],
  jobs: [
    { name: "keep", exec: "sleep 600" },
    { name: "on-change", when: { source: "watch.svc", each: "changed" },
      exec: ["sh", "-c", "grep -o '\"port\": [0-9]*' \"$AUTOPILOT_WATCH_FILE\" | tr -dc '0-9\\n' | sort | tr '\\n' ' ' >> @DIR@/seen; echo >> @DIR@/seen"] },
  ]
}"#;
    let wd = d.child("watcher");
    let a = start_with(
        &wd,
        watcher,
        &[],
        &[
            ("AUTOPILOT_CATALOG", &url),
            ("XDG_RUNTIME_DIR", &run.0.display().to_string()),
        ],
    );
    a.ready();
    let member = |host: &str, port: u16| {
        let dir = d.child(host);
        let cfg = format!(
            r#"{{ control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "svc", port: {port}, interfaces: ["static:127.0.0.1"], initial_status: "passing" }}] }}"#
        );
        let m = start_with(
            &dir,
            &cfg,
            &[],
            &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", host)],
        );
        m.ready();
        (dir, m)
    };
    let _b = member("b", 9001);
    assert!(
        wait_for(Duration::from_secs(10), || seen(&wd)
            .iter()
            .any(|l| l.trim() == "9001")),
        "the handler saw the first instance: {:?}; log:\n{}",
        seen(&wd),
        a.log()
    );
    let before = seen(&wd).len();
    run.fill();
    let _c = member("c", 9002);
    assert!(wait_for(Duration::from_secs(10), || {
        let mut p = passing_ports(&url, "svc");
        p.sort();
        p == vec![9001, 9002]
    }));
    // While the file cannot be written, the change is held back: the
    // handler must not run on the old list. (Absence needs a bounded wait;
    // the watch reacts within milliseconds when it can.)
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            seen(&wd).len(),
            before,
            "the handler ran while the instances file could not be written: {:?}",
            seen(&wd)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        a.log().contains("cannot write the instances file"),
        "{}",
        a.log()
    );
    run.free();
    assert!(
        wait_for(Duration::from_secs(10), || seen(&wd)
            .iter()
            .any(|l| l.trim() == "9001 9002")),
        "published once the file is written: {:?}",
        seen(&wd)
    );
    for l in &seen(&wd)[before..] {
        assert_eq!(l.trim(), "9001 9002", "no stale list after the change");
    }
}

fn snapshot_config(store: &str) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{
    name: "db", port: 7201, interfaces: ["static:127.0.0.1"],
    exec: ["sh", "-c", "test -s @DIR@/data/db.txt || echo fresh > @DIR@/data/db.txt; exec sleep 600"],
    health: {{ exec: "test -s @DIR@/data/db.txt", interval: "100ms", ttl: 2 }},
    snapshot: {{
      store: "{store}", dataDir: "@DIR@/data",
      restore: ["sh", "-c", "cp \"$AUTOPILOT_SNAPSHOT_FILE\" \"$AUTOPILOT_DATA_DIR/db.txt\""],
    }},
  }}]
}}"#
    )
}

fn kv_put(url: &str, key: &str, value: &str) {
    let out = Command::new(bin())
        .args(["kv", "put", key, value, "--catalog", url])
        .output()
        .expect("kv put");
    assert!(out.status.success(), "{out:?}");
}

/// An agent whose snapshot set has `index` recorded; returns once it
/// reports why it is waiting, having started nothing.
fn waits_instead_of_starting_empty(tag: &str, index: Option<&str>, store_setup: impl Fn(&Dir)) {
    let d = Dir::new(tag);
    let url = format!("local://{}", d.path("catalog").display());
    store_setup(&d);
    if let Some(index) = index {
        kv_put(&url, "snapshots/db/index", index);
    }
    let store = format!("file://{}", d.path("store").display());
    let a = start_with(
        &d,
        &snapshot_config(&store),
        &[],
        &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", "n1")],
    );
    a.ready();
    let why = || {
        a.status()["jobs"][0]["restore"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        wait_for(Duration::from_secs(10), || why()
            .contains("not starting empty")),
        "status says why: {:?}; log:\n{}",
        why(),
        a.log()
    );
    assert!(
        why().contains("snapshots/db/force-bootstrap db-n1"),
        "{}",
        why()
    );
    let st = a.status();
    assert_eq!(st["jobs"][0]["status"], "restoring");
    assert!(st["jobs"][0]["pid"].is_null(), "the job never started");
    assert!(!d.path("data/db.txt").exists(), "no empty start");
    assert!(
        a.log().contains("restore before start"),
        "the reason is logged: {}",
        a.log()
    );
    // A person orders this instance to start fresh: it does, once.
    kv_put(&url, "snapshots/db/force-bootstrap", "db-n1");
    assert!(
        wait_for(Duration::from_secs(10), || a.status()["jobs"][0]["health"]
            == "healthy"),
        "starts fresh when ordered; log:\n{}",
        a.log()
    );
    assert_eq!(d.read("data/db.txt").trim(), "fresh");
    assert!(a.status()["jobs"][0]["restore"].is_null());
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn snapshots_that_all_fail_their_checksum_do_not_mean_an_empty_start() {
    let index = format!(r#"[{{"sha256":"{SHA}","size":9,"created_ms":1,"by":"db-old"}}]"#);
    waits_instead_of_starting_empty("snap-corrupt", Some(&index), |d| {
        std::fs::create_dir_all(d.path("store/db")).expect("store");
        std::fs::write(d.path(&format!("store/db/{SHA}.snap")), "corrupted").expect("object");
    });
}

#[test]
fn an_unreachable_store_or_an_unreadable_index_does_not_mean_an_empty_start() {
    // The index names a snapshot the store does not have (a lost bucket).
    let index = format!(r#"[{{"sha256":"{SHA}","size":9,"created_ms":1,"by":"db-old"}}]"#);
    waits_instead_of_starting_empty("snap-missing", Some(&index), |_| {});
    // The index itself is damaged: snapshots existed, so still no empty start.
    waits_instead_of_starting_empty("snap-garbled", Some("{not json"), |_| {});
}

#[test]
fn a_catalog_that_lost_its_index_does_not_mean_an_empty_start_while_the_store_has_snapshots() {
    // etcd restored empty: no index, no bootstrap claim, no leader; the
    // store still holds the set's snapshots.
    waits_instead_of_starting_empty("snap-noindex", None, |d| {
        std::fs::create_dir_all(d.path("store/db")).expect("store");
        std::fs::write(d.path(&format!("store/db/{SHA}.snap")), "test").expect("object");
    });
}

#[test]
fn the_scratch_directory_is_private_unpredictable_and_removed_at_exit() {
    let d = Dir::new("scratch");
    let cfg = r#"{
  control: { socket: "@SOCKET@" },
  watches: [{ name: "svc", interval: 60 }],
  jobs: [{ name: "show", exec: ["sh", "-c", "echo $AUTOPILOT_WATCH_SVC_FILE > @DIR@/file; sleep 600"] }]
}"#;
    let mut a = start(&d, cfg);
    a.ready();
    assert!(wait_for(Duration::from_secs(5), || !d
        .read("file")
        .is_empty()));
    let file = std::path::PathBuf::from(d.read("file").trim());
    let dir = file.parent().expect("scratch dir").to_path_buf();
    let name = dir.file_name().expect("name").to_string_lossy().to_string();
    assert_ne!(name, format!("autopilot-{}", a.pid()), "not predictable");
    assert!(name.starts_with("autopilot-") && name.len() > "autopilot-".len() + 5);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir)
        .expect("scratch")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "private: {mode:o}");
    a.signal(libc::SIGTERM);
    // The main job dies by SIGTERM: 128 + 15.
    assert_eq!(a.wait(Duration::from_secs(10)), Some(143));
    assert!(!dir.exists(), "removed at exit");
}
