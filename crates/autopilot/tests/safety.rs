//! Split-brain safety: a leader cut off from etcd (and only it) demotes itself before any other
//! node is elected, over 20 trials, checked from the agents' own event handler timestamps.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use autopilot_testkit::{Etcd, Proxy};
use common::*;

const TRIALS: usize = 20;

fn config(port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ exec: "true", interval: "100ms", ttl: 2 }},
       election: {{ name: "primary", ttl: "2s" }} }},
    {{ name: "on-elected", when: {{ source: "db", each: "elected" }}, exec: ["sh", "-c", "echo elected $(date +%s%N) >> @DIR@/events"] }},
    {{ name: "on-demoted", when: {{ source: "db", each: "demoted" }}, exec: ["sh", "-c", "echo demoted $(date +%s%N) >> @DIR@/events"] }},
    {{ name: "on-changed", when: {{ source: "db", each: "leaderChanged" }}, exec: ["sh", "-c", "echo $AUTOPILOT_LEADER_PRIMARY_ID >> @DIR@/leaders"] }},
  ]
}}"#
    )
}

fn leader(url: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(["leader", "primary", "--json", "--catalog", url])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["id"].as_str().map(str::to_string)
}

/// (kind, nanoseconds) for each handler run of a node.
fn events(dir: &Dir) -> Vec<(String, u128)> {
    dir.read("events")
        .lines()
        .filter_map(|l| {
            let (k, t) = l.split_once(' ')?;
            Some((k.to_string(), t.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn a_cut_off_leader_demotes_before_anyone_else_is_elected() {
    let d = Dir::new("safety");
    let etcd = Etcd::single(&d.0);
    let direct = format!("etcd://{}/safety", etcd.endpoint());
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let proxy = Proxy::start(etcd.client_port);
        let dir = d.child(&format!("n{i}"));
        let url = format!("etcd://{}/safety", proxy.endpoint());
        let host = format!("n{i}");
        let a = start_with(
            &dir,
            &config(7200 + i),
            &[],
            &[("AUTOPILOT_CATALOG", &url), ("AUTOPILOT_HOSTNAME", &host)],
        );
        a.ready();
        nodes.push((dir, a, proxy));
    }
    let dump = |nodes: &Vec<(Dir, Agent, Proxy)>| {
        for (dir, a, _) in nodes {
            eprintln!("==== {}\n{:?}\n{}", dir.0.display(), events(dir), a.log());
        }
    };
    assert!(wait_for(Duration::from_secs(10), || leader(&direct).is_some()));
    let index = |id: &str| {
        id.trim_start_matches("db-n")
            .parse::<usize>()
            .expect("node")
            - 1
    };
    for trial in 0..TRIALS {
        let old = leader(&direct).expect("a leader");
        let li = index(&old);
        let t = Instant::now();
        nodes[li].2.cut();
        if !wait_for(Duration::from_secs(15), || {
            leader(&direct).is_some_and(|l| l != old)
        }) {
            dump(&nodes);
            panic!("trial {trial}: nobody took over");
        }
        let new = leader(&direct).expect("new leader");
        let ni = index(&new);
        assert!(wait_for(Duration::from_secs(5), || events(&nodes[ni].0)
            .last()
            .is_some_and(|e| e.0 == "elected")));
        let elected = events(&nodes[ni].0).last().map(|e| e.1).expect("elected");
        let demoted = events(&nodes[li].0)
            .into_iter()
            .rev()
            .find(|e| e.0 == "demoted")
            .map(|e| e.1);
        if demoted.is_none_or(|dm| dm >= elected) {
            dump(&nodes);
            panic!(
                "trial {trial}: {old} demoted at {demoted:?}, {new} elected at {elected}: overlap"
            );
        }
        eprintln!(
            "trial {trial}: {old} demoted {:.0} ms before {new} was elected; takeover after {:?}",
            (elected - demoted.unwrap_or(0)) as f64 / 1e6,
            t.elapsed()
        );
        nodes[li].2.heal();
        // The next trial starts once the healed node reads the catalog again: its
        // `leaderChanged` handler has recorded the new leader.
        assert!(
            wait_for(Duration::from_secs(15), || nodes[li]
                .0
                .lines("leaders")
                .last()
                .is_some_and(|l| *l == new)),
            "trial {trial}: {old} never saw {new} after the cut healed"
        );
    }
    // Over the whole run, leadership intervals of different nodes never overlap.
    let dirs: Vec<&Dir> = nodes.iter().map(|(dir, _, _)| dir).collect();
    let spans = leadership_spans(&dirs);
    for w in spans.windows(2) {
        assert!(w[0].1 < w[1].0, "leadership overlap: {w:?}");
    }
    assert!(spans.len() > TRIALS);
}
