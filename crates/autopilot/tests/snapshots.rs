//! Snapshots and restore-before-start with real agents: simultaneous cold start converges
//! (one bootstrap, the others restore), retention prunes, and a corrupt newest snapshot is skipped.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn config(port: u16, store: &str) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{
    name: "db", port: {port}, interfaces: ["static:127.0.0.1"],
    exec: ["sh", "-c", "test -s @DIR@/data/db.txt || echo \"fresh from $AUTOPILOT_HOSTNAME\" > @DIR@/data/db.txt; while :; do sleep 0.2; if [ -e @DIR@/writer ]; then date +%s%N >> @DIR@/data/db.txt; fi; done"],
    health: {{ exec: "test -s @DIR@/data/db.txt", interval: "100ms", ttl: 2 }},
    election: {{ name: "db-primary", ttl: "2s" }},
    snapshot: {{
      store: "{store}", interval: "300ms", retain: 2, leaderOnly: true, dataDir: "@DIR@/data",
      create: ["sh", "-c", "cp @DIR@/data/db.txt \"$AUTOPILOT_SNAPSHOT_FILE\""],
      restore: ["sh", "-c", "cp \"$AUTOPILOT_SNAPSHOT_FILE\" \"$AUTOPILOT_DATA_DIR/db.txt\""],
    }},
  }}]
}}"#
    )
}

fn kv(url: &str, key: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(["kv", "get", key, "--catalog", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn index(url: &str) -> Vec<serde_json::Value> {
    kv(url, "snapshots/db/index")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn body(d: &Dir, url: &str) {
    let store_dir = d.path("store");
    let store = format!("file://{}", store_dir.display());
    // Three nodes at the same instant, empty store, no leader.
    let nodes: Vec<(Dir, Agent)> = (1..=3)
        .map(|i| {
            let dir = d.child(&format!("n{i}"));
            let host = format!("n{i}");
            let a = start_with(
                &dir,
                &config(7100 + i, &store),
                &[],
                &[
                    ("AUTOPILOT_CATALOG", url),
                    ("AUTOPILOT_HOSTNAME", &host),
                    ("AUTOPILOT_ETCD_TTL", "3s"),
                ],
            );
            (dir, a)
        })
        .collect();
    for (_, a) in &nodes {
        a.ready();
    }
    let healthy = |a: &Agent| a.status()["jobs"][0]["health"] == "healthy";
    assert!(
        wait_for(Duration::from_secs(20), || nodes
            .iter()
            .all(|(_, a)| healthy(a))),
        "all converge to healthy with no human help"
    );
    let boot = kv(url, "snapshots/db/bootstrap").expect("one node bootstrapped");
    let boot = boot.split(' ').next().expect("claimant").to_string();
    let want = format!("fresh from {}", boot.trim_start_matches("db-"));
    for (dir, _) in &nodes {
        let first = dir
            .read("data/db.txt")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            first, want,
            "every node starts from the bootstrap node's data"
        );
    }
    // The leader keeps writing; retention keeps the 2 newest snapshots.
    let leader = Command::new(bin())
        .args(["leader", "db-primary", "--json", "--catalog", url])
        .output()
        .expect("leader");
    let leader: serde_json::Value = serde_json::from_slice(&leader.stdout).expect("json");
    let lid = leader["id"]
        .as_str()
        .expect("id")
        .trim_start_matches("db-")
        .to_string();
    let (ldir, _) = nodes
        .iter()
        .find(|(dir, _)| dir.0.ends_with(&lid))
        .expect("leader node");
    ldir.write("writer", "");
    assert!(wait_for(Duration::from_secs(10), || index(url).len() == 2));
    std::thread::sleep(Duration::from_millis(800));
    let objects = || {
        std::fs::read_dir(store_dir.join("db"))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(5), || objects() == 2),
        "retention prunes the store: {}",
        objects()
    );
    std::fs::remove_file(ldir.path("writer")).expect("stop writing");
    std::thread::sleep(Duration::from_millis(800));

    // Corrupt the newest snapshot: a new node restores the previous one.
    let idx = index(url);
    assert_eq!(idx.len(), 2);
    let (newest, older) = (
        idx[0]["sha256"].as_str().expect("sha"),
        idx[1]["sha256"].as_str().expect("sha"),
    );
    // Stop snapshotting over the corruption: the leader no longer changes its data.
    std::fs::write(
        store_dir.join("db").join(format!("{newest}.snap")),
        b"corrupted",
    )
    .expect("corrupt");
    let dir4 = d.child("n4");
    let a4 = start_with(
        &dir4,
        &config(7104, &store),
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_HOSTNAME", "n4"),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    a4.ready();
    assert!(wait_for(Duration::from_secs(10), || healthy(&a4)));
    let got = Command::new("sha256sum")
        .arg(dir4.path("data/db.txt"))
        .output()
        .expect("sha256sum");
    let got = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.starts_with(older),
        "restored the older snapshot {older}, got {got}"
    );
    assert!(
        a4.log().contains("checksum mismatch"),
        "the corrupt one was detected"
    );
    drop(nodes);
}

#[test]
fn snapshots_and_restore_on_the_embedded_catalog() {
    let d = Dir::new("snap-local");
    body(&d, &format!("local://{}", d.path("catalog").display()));
}

#[test]
fn snapshots_and_restore_on_etcd() {
    let d = Dir::new("snap-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    body(&d, &format!("etcd://{}/snap", etcd.endpoint()));
}

#[test]
fn a_stale_bootstrap_claim_is_taken_over() {
    let d = Dir::new("snap-stale");
    let url = format!("local://{}", d.path("catalog").display());
    // A node claimed the bootstrap long ago and died before its first snapshot.
    let out = Command::new(bin())
        .args([
            "kv",
            "put",
            "snapshots/db/bootstrap",
            "db-ghost 1000",
            "--catalog",
            &url,
        ])
        .output()
        .expect("kv put");
    assert!(out.status.success());
    let store = format!("file://{}", d.path("store").display());
    let dir = d.child("n1");
    let a = start_with(
        &dir,
        &config(7150, &store),
        &[],
        &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", "n1")],
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || a.status()["jobs"][0]
        ["health"]
        == "healthy"));
    assert!(kv(&url, "snapshots/db/bootstrap").is_some_and(|c| c.starts_with("db-n1 ")));
    assert!(a.log().contains("taking over a stale bootstrap claim"));
}
