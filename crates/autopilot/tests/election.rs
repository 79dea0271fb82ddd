//! Leader election with real agents on both backends: one winner, failover with a higher
//! fencing token, graceful handover, resigning when unhealthy, and role-aware registration.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 120", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "test ! -e @DIR@/sick", interval: "100ms", ttl: 2 }},
       election: {{ name: "db-primary", ttl: "2s" }},
       roles: {{ leader: {{ name: "db", tags: ["primary"] }}, follower: {{ name: "db-replica" }} }} }},
    {{ name: "on-elected", when: {{ source: "db", each: "elected" }},
       exec: ["sh", "-c", "date +%s%N > @DIR@/elected; echo $AUTOPILOT_LEADER_DB_PRIMARY_ID $AUTOPILOT_LEADER_DB_PRIMARY_TERM >> @DIR@/elected-terms"] }},
    {{ name: "on-demoted", when: {{ source: "db", each: "demoted" }},
       exec: ["sh", "-c", "date +%s%N > @DIR@/demoted; echo \"saw:$AUTOPILOT_LEADER_DB_PRIMARY_ID\" >> @DIR@/demoted-saw"] }},
    {{ name: "on-leader", when: {{ source: "db", each: "leaderChanged" }},
       exec: ["sh", "-c", "echo $AUTOPILOT_LEADER_DB_PRIMARY_ID $AUTOPILOT_LEADER_DB_PRIMARY_TERM >> @DIR@/leaders"] }},
  ]
}}"#
    )
}

struct Node {
    dir: Dir,
    agent: Agent,
}

fn node(d: &Dir, host: &str, port: u16, url: &str) -> Node {
    let dir = d.child(host);
    let agent = start_with(
        &dir,
        &config(port),
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_HOSTNAME", host),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    agent.ready();
    Node { dir, agent }
}

/// `autopilot leader db-primary --json`: (id, term).
fn leader(url: &str) -> Option<(String, u64)> {
    let out = Command::new(bin())
        .args(["leader", "db-primary", "--json", "--catalog", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    assert!(v["address"].is_string() && v["port"].is_u64(), "{v}");
    Some((v["id"].as_str()?.to_string(), v["term"].as_u64()?))
}

fn leaders_of(nodes: &[Node]) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.agent.child.is_some() && n.agent.status()["jobs"][0]["election"]["leader"] == true
        })
        .map(|(i, _)| i)
        .collect()
}

fn names(url: &str, service: &str) -> Vec<String> {
    let out = Command::new(bin())
        .args(["catalog", "--catalog", url, "instances", service, "--json"])
        .output()
        .expect("cli");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

fn election_body(d: &Dir, url: &str) {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| node(d, &format!("n{i}"), 7000 + i, url))
        .collect();
    assert!(wait_for(Duration::from_secs(10), || leaders_of(&nodes)
        .len()
        == 1));
    let first = leaders_of(&nodes)[0];
    let (id, term1) = leader(url).expect("a leader");
    assert_eq!(id, format!("db-n{}", first + 1));
    assert_eq!(leaders_of(&nodes), vec![first], "exactly one leader");
    // Role-aware registration: the leader is `db` (primary), the others `db-replica`.
    assert!(wait_for(Duration::from_secs(5), || names(url, "db")
        == vec![id.clone()]
        && names(url, "db-replica").len() == 2));
    // The `elected` handler sees the term it won (its fencing token).
    assert!(
        wait_for(Duration::from_secs(5), || nodes[first]
            .dir
            .read("elected-terms")
            .lines()
            .any(|l| l == format!("{id} {term1}"))),
        "elected handler env: {:?}",
        nodes[first].dir.read("elected-terms")
    );
    // Followers learned the leader and its term from their environment.
    for n in &nodes {
        assert!(wait_for(Duration::from_secs(5), || n
            .dir
            .read("leaders")
            .contains(&format!("{id} {term1}"))));
    }

    // An unhealthy leader resigns; another takes over with a higher term.
    nodes[first].dir.write("sick", "");
    assert!(wait_for(Duration::from_secs(10), || leader(url)
        .is_some_and(|(i, _)| i != id)));
    let (id2, term2) = leader(url).expect("new leader");
    assert!(term2 > term1, "fencing token grows: {term1} -> {term2}");
    assert!(wait_for(Duration::from_secs(5), || !nodes[first]
        .dir
        .read("demoted")
        .is_empty()));
    // A demoted node no longer tells its children it leads.
    assert!(wait_for(Duration::from_secs(5), || !nodes[first]
        .dir
        .read("demoted-saw")
        .is_empty()));
    for line in nodes[first].dir.lines("demoted-saw") {
        assert_ne!(
            line,
            format!("saw:{id}"),
            "the demoted handler saw itself as leader"
        );
    }
    std::fs::remove_file(nodes[first].dir.path("sick")).expect("heal");

    // Graceful stop of the leader hands over in under a second.
    let second: usize = id2
        .trim_start_matches("db-n")
        .parse::<usize>()
        .expect("index")
        - 1;
    let t = Instant::now();
    nodes[second].agent.signal(libc::SIGTERM);
    assert!(wait_for(Duration::from_secs(5), || leader(url)
        .is_some_and(|(i, _)| i != id2)));
    let handover = t.elapsed();
    eprintln!("graceful handover took {handover:?}");
    assert!(
        handover < Duration::from_millis(1500),
        "handover {handover:?} (+CLI start)"
    );
    let (id3, term3) = leader(url).expect("third leader");
    assert!(term3 > term2);

    // kill -9 of the leader's agent: a new leader within TTL + 1 s.
    let third: usize = id3
        .trim_start_matches("db-n")
        .parse::<usize>()
        .expect("index")
        - 1;
    let job_pid = nodes[third].agent.status()["jobs"][0]["pid"]
        .as_i64()
        .expect("pid") as i32;
    let t = Instant::now();
    nodes[third].agent.signal(libc::SIGKILL);
    killpg(job_pid, libc::SIGKILL);
    // The dead leader's role entry goes with its seat: no reader ever sees
    // two leaders' entries.
    let mut most = 0;
    assert!(wait_for(Duration::from_secs(10), || {
        most = most.max(names(url, "db").len());
        leader(url).is_some_and(|(i, _)| i != id3)
    }));
    let failover = t.elapsed();
    assert!(wait_for(Duration::from_secs(5), || {
        let listed = names(url, "db");
        most = most.max(listed.len());
        listed.len() == 1
    }));
    assert!(most <= 1, "two leaders' entries listed at once");
    eprintln!("failover after kill -9 took {failover:?}");
    assert!(
        failover < Duration::from_secs(3) + Duration::from_millis(1500),
        "TTL 2 s + 1 s (+CLI): {failover:?}"
    );
    let (_, term4) = leader(url).expect("fourth leader");
    assert!(term4 > term3);
}

#[test]
fn elections_on_the_embedded_catalog() {
    let d = Dir::new("elect-local");
    let url = format!("local://{}", d.path("catalog").display());
    election_body(&d, &url);
}

#[test]
fn elections_on_etcd() {
    let d = Dir::new("elect-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    election_body(&d, &format!("etcd://{}/elect", etcd.endpoint()));
}
