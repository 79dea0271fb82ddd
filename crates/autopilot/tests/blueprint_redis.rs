//! The Redis blueprint (examples/redis) end to end on a real etcd: election of one master, replicas following it, snapshots, restore of a new node, kill -9 failover with no lost `WAIT 1` write, and the old master rejoining.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::redis::*;
use common::*;

#[test]
fn redis_master_failover_snapshots_and_rejoin() {
    let c = Cluster::new("bp-redis");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let names = ["n1", "n2", "n3", "n4"];
    let mut nodes: Vec<Option<Agent>> = (0..3).map(|i| Some(c.node(names[i], ports[i]))).collect();

    // One master, registered as "redis"; the other two replicate it, as "redis-replica".
    let mut master = 0;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let m = c.catalog("redis");
            let Some(&mp) = m.first() else { return false };
            master = ports.iter().position(|p| *p == mp).unwrap_or(0);
            m.len() == 1
                && c.catalog("redis-replica").len() == 2
                && (0..3)
                    .filter(|i| *i != master)
                    .all(|i| replicates(ports[i], mp))
        }),
        "no master with two replicas; logs:\n{}",
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );

    // The master snapshots its RDB on an interval.
    let snapshots = || {
        std::process::Command::new(bin())
            .args(["kv", "--catalog", &c.url(), "get", "snapshots/redis/index"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).matches("sha256").count())
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(10), || snapshots() >= 1));

    // Writes acknowledged by WAIT 1 run across the failover.
    let writer = Writer::start(ports[..3].to_vec(), "k");
    std::thread::sleep(Duration::from_millis(800));

    // kill -9 of the master's agent and of redis-server.
    let m = nodes[master].take().expect("master node");
    let redis_pid = m.job_pid("redis").expect("redis pid");
    let killed = Instant::now();
    kill(m.pid(), libc::SIGKILL);
    kill(redis_pid, libc::SIGKILL);
    let mut m = m;
    let _ = m.wait(Duration::from_secs(5));
    drop(m);

    let survivors: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    let mut new_master = survivors[0];
    assert!(
        wait_for(Duration::from_secs(20), || {
            survivors.iter().any(|&i| {
                // The dead master's entry may linger until its session lease
                // expires; the new one must be there.
                let ok = info(ports[i], "role").as_deref() == Some("master")
                    && c.catalog("redis").contains(&ports[i]);
                if ok {
                    new_master = i;
                }
                ok
            })
        }),
        "no new master; logs:\n{}",
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    eprintln!(
        "failover (kill -9 → new master registered): {:?}",
        killed.elapsed()
    );
    let other = survivors
        .iter()
        .copied()
        .find(|i| *i != new_master)
        .expect("other");
    assert!(
        wait_for(Duration::from_secs(10), || replicates(
            ports[other],
            ports[new_master]
        )),
        "the other replica does not follow the new master"
    );
    // Writes succeed on the new master, then stop.
    let (acked, lost) = writer.finish(ports[new_master]);
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );

    // The old master, restarted on its old data dir, rejoins as a replica.
    nodes[master] = Some(c.node(names[master], ports[master]));
    assert!(
        wait_for(Duration::from_secs(20), || replicates(
            ports[master],
            ports[new_master]
        )),
        "old master did not rejoin as a replica:\n{}",
        nodes[master].as_ref().map(|a| a.log()).unwrap_or_default()
    );
    assert!(wait_for(Duration::from_secs(15), || c.catalog("redis")
        == [ports[new_master]]));

    // A fourth node with an empty data dir restores the newest snapshot, then
    // joins as a replica, announced only once it is in sync.
    let n4 = c.node(names[3], ports[3]);
    let mut announced_in_sync = None;
    assert!(wait_for(Duration::from_secs(20), || {
        if c.catalog("redis-replica").contains(&ports[3]) {
            announced_in_sync = Some(replicates(ports[3], ports[new_master]));
            true
        } else {
            false
        }
    }));
    assert_eq!(announced_in_sync, Some(true), "announced before its sync");
    assert!(
        n4.log().contains("restored before start"),
        "n4 did not restore a snapshot:\n{}",
        n4.log()
    );
    let sample = acked.iter().next().expect("a key");
    assert_eq!(resp(ports[3], &["EXISTS", sample]).as_deref(), Some(":1"));

    // Graceful handover: maintenance on the master. It resigns, pauses its
    // writes; another node catches up from it and takes over at once.
    let all = ports.clone();
    let writer = Writer::start(all.clone(), "g");
    std::thread::sleep(Duration::from_millis(500));
    let old = ports[new_master];
    let (code, out) = nodes[new_master]
        .as_ref()
        .expect("master agent")
        .cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    let handed = Instant::now();
    let mut next = 0;
    assert!(
        wait_for(Duration::from_secs(5), || {
            all.iter().any(|&p| {
                let ok = p != old && info(p, "role").as_deref() == Some("master");
                if ok {
                    next = p;
                }
                ok
            })
        }),
        "no new master after maintenance"
    );
    eprintln!(
        "graceful handover (maintenance → new master): {:?}",
        handed.elapsed()
    );
    let (_, lost) = writer.finish(next);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost in the handover: {lost:?}",
        lost.len()
    );
    assert!(
        wait_for(Duration::from_secs(10), || replicates(old, next)),
        "the old master does not follow the new one"
    );
}
