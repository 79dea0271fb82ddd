//! Chaos under the Redis blueprint: etcd stalls (SIGSTOP) longer than the election TTL while
//! clients write with `WAIT 1`. Nothing acknowledged is lost, the Redis servers are never
//! restarted, and the cluster converges to one registered master with two replicas.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::redis::*;
use common::*;

/// The pid of the etcd member serving clients on `port`, from /proc.
fn etcd_pid(port: u16) -> i32 {
    let needle = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("etcd") && c.contains(&needle) && c.contains("listen-client-urls")
            })
        })
        .expect("etcd's pid")
}

/// One master registered as "redis", the two others replicating it; returns its index.
fn converged(c: &Cluster, ports: &[u16]) -> Option<usize> {
    let m = c.catalog("redis");
    let (&mp, 1) = (m.first()?, m.len()) else {
        return None;
    };
    let master = ports.iter().position(|p| *p == mp)?;
    (info(mp, "role").as_deref() == Some("master")
        && c.catalog("redis-replica").len() == 2
        && (0..ports.len())
            .filter(|i| *i != master)
            .all(|i| replicates(ports[i], mp)))
    .then_some(master)
}

#[test]
fn an_etcd_stall_past_the_ttl_loses_no_acknowledged_write() {
    let c = Cluster::new("chaos-redis");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Agent> = ["n1", "n2", "n3"]
        .iter()
        .zip(&ports)
        .map(|(n, p)| c.node(n, *p))
        .collect();
    let logs = |nodes: &[Agent]| {
        nodes
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(
        wait_for(Duration::from_secs(30), || converged(&c, &ports).is_some()),
        "no master with two replicas; logs:\n{}",
        logs(&nodes)
    );
    let redis_pids: Vec<Option<i32>> = nodes.iter().map(|a| a.job_pid("redis")).collect();

    let writer = Writer::start(ports.clone(), "s");
    assert!(wait_for(Duration::from_secs(5), || writer.acked_count() > 10));

    // Stall etcd (frozen, not dead) for twice the election TTL (5 s).
    let pid = etcd_pid(c.etcd.client_port);
    kill(pid, libc::SIGSTOP);
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(pid, libc::SIGCONT);
    let resumed = Instant::now();

    let mut master = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            master = converged(&c, &ports);
            master.is_some()
        }),
        "the cluster did not converge after etcd resumed; logs:\n{}",
        logs(&nodes)
    );
    eprintln!(
        "converged {:?} after etcd answered again",
        resumed.elapsed()
    );
    let master = master.expect("master");
    let (acked, lost) = writer.finish(ports[master]);
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    // A stall is not a death: no Redis server was restarted.
    let after: Vec<Option<i32>> = nodes.iter().map(|a| a.job_pid("redis")).collect();
    assert_eq!(redis_pids, after, "a Redis server was restarted");
}
