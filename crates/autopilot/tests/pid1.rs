//! PID-1 duty in a fresh PID namespace: orphans reaped, exit code passed out.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn unshare_available() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `autopilot -config CFG` as PID 1 of a new PID namespace, bounded in time.
fn in_pid_namespace(d: &Dir, cfg: &std::path::Path, limit_s: u32) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(limit_s.to_string())
        .args(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(bin())
        .arg("-config")
        .arg(cfg)
        .env(
            "AUTOPILOT_CATALOG",
            format!("local://{}", d.path("catalog").display()),
        )
        .env("AUTOPILOT_STATE_DIR", d.path("state"));
    cmd
}

#[test]
fn reaps_every_orphan_as_pid_1() {
    assert!(
        unshare_available(),
        "this test needs `unshare --pid --fork --mount-proc` (root, util-linux)"
    );
    let d = Dir::new("pid1");
    // The job orphans 100 short-lived processes, then counts zombies after
    // they have all exited. Its count is its exit code, and so autopilot's.
    let script = r#"
for i in $(seq 100); do (sleep 1 &) ; done
sleep 0.3
cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 == "(sleep)" && $4 == 1' | wc -l > DIR/orphans
sleep 1.8
cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == "Z"' | wc -l > DIR/zombies
echo $PPID > DIR/jobppid
exit $(cat DIR/zombies)
"#
    .replace("DIR", &d.0.display().to_string());
    let script_path = d.write("orphans.sh", &script);
    let cfg = d.write(
        "cfg.json5",
        &format!(
            r#"{{ control: {{ socket: "{}" }}, jobs: [{{ name: "orphans", exec: ["sh", "{}"] }}] }}"#,
            d.path("ctl.sock").display(),
            script_path.display()
        ),
    );
    let out = in_pid_namespace(&d, &cfg, 60)
        .output()
        .expect("run under unshare");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let orphans: usize = d.read("orphans").trim().parse().unwrap_or(0);
    assert_eq!(
        orphans, 100,
        "the orphans were re-parented to autopilot; log:\n{log}"
    );
    assert_eq!(d.read("zombies").trim(), "0", "no zombie left; log:\n{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    // The job's parent, not its PID: the agent's threads (the embedded
    // catalog's blocking pool, used before the first job starts) take PIDs
    // in the namespace too.
    assert_eq!(
        d.read("jobppid").trim(),
        "1",
        "autopilot was PID 1, the job's parent"
    );
}

#[test]
fn pid_1_exit_code_and_signal_death() {
    assert!(unshare_available());
    let d = Dir::new("pid1code");
    for (exec, want) in [("sh -c 'exit 7'", 7), ("sh -c 'kill -9 $$'", 137)] {
        let cfg = d.write(
            "cfg.json5",
            &format!(
                r#"{{ control: {{ socket: "{}" }}, jobs: [{{ name: "app", exec: {exec:?} }}] }}"#,
                d.path("ctl.sock").display()
            ),
        );
        let st = in_pid_namespace(&d, &cfg, 30).status().expect("run");
        assert_eq!(st.code(), Some(want));
    }
    // `--init` off PID 1 makes autopilot a sub-reaper: the same orphans are reaped.
    let script = d.write(
        "o.sh",
        &format!(
            "for i in $(seq 20); do (sleep 0.1 &); done; sleep 0.6; ps -o stat= --ppid $PPID | grep -c Z > {}; exit 0",
            d.path("z").display()
        ),
    );
    let cfg = d.write(
        "cfg2.json5",
        &format!(
            r#"{{ control: {{ socket: "{}" }}, jobs: [{{ name: "app", exec: ["sh", "{}"] }}] }}"#,
            d.path("ctl.sock").display(),
            script.display()
        ),
    );
    let st = Command::new(bin())
        .args(["--init", "-config"])
        .arg(&cfg)
        .env(
            "AUTOPILOT_CATALOG",
            format!("local://{}", d.path("catalog").display()),
        )
        .env("AUTOPILOT_STATE_DIR", d.path("state"))
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(0));
    assert_eq!(
        d.read("z").trim(),
        "0",
        "orphans of a sub-reaper are reaped"
    );
    std::thread::sleep(Duration::from_millis(10));
}
