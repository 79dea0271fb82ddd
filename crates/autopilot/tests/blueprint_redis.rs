//! The Redis blueprint (examples/redis) end to end on a real etcd: election of one master, replicas following it, snapshots, restore of a new node, kill -9 failover with no lost `WAIT 1` write, the old master rejoining; and its production defaults: the password, the fence of a deposed master (frozen, or its pause lapsed), AOF across a kill -9 of every node, the private run dir check.
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
    // With AOF on, redis ignores dump.rdb: the snapshot must be loaded as the AOF's base.
    assert!(
        n4.log().contains("DB loaded from base file"),
        "n4's redis did not load the restored snapshot:\n{}",
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

/// The index of the node that is master with every other node replicating it and registered.
fn settled(c: &Cluster, ports: &[u16]) -> Option<usize> {
    let m = c.catalog("redis");
    let &[mp] = m.as_slice() else { return None };
    let master = ports.iter().position(|p| *p == mp)?;
    (c.catalog("redis-replica").len() == ports.len() - 1
        && ports
            .iter()
            .filter(|p| **p != mp)
            .all(|p| replicates(*p, mp)))
    .then_some(master)
}

/// A one-node cluster whose master is elected, registered and takes writes.
fn one_master(c: &Cluster, port: u16, extra: &[(&str, &str)]) -> Agent {
    let n = c.node_with("n1", port, extra);
    assert!(
        wait_for(Duration::from_secs(30), || c.catalog("redis") == [port]
            && resp(port, &["SET", "ready", "1"]).as_deref() == Some("+OK")),
        "no writable master:\n{}",
        n.log()
    );
    n
}

#[test]
fn redis_refuses_clients_without_the_password_and_keeps_it_private() {
    let c = Cluster::new("bp-redis-auth");
    let port = free_port();
    let n1 = one_master(&c, port, &[]);

    let anon = resp_as(port, None, Duration::from_secs(3), &["SET", "b", "1"]);
    assert!(
        anon.as_deref().is_some_and(|r| r.starts_with("-NOAUTH")),
        "a write without the password: {anon:?}"
    );
    let wrong = resp_as(
        port,
        Some("wrong"),
        Duration::from_secs(3),
        &["SET", "b", "1"],
    );
    assert!(
        wrong.as_deref().is_some_and(|r| r.starts_with("-NOAUTH")),
        "a write with a wrong password: {wrong:?}"
    );
    assert_eq!(resp(port, &["EXISTS", "b"]).as_deref(), Some(":0"));

    // The password is on no command line and in no environment of the agent or the server.
    let redis = n1.job_pid("redis").expect("redis pid");
    for (pid, what) in [
        (redis, "cmdline"),
        (redis, "environ"),
        (n1.pid(), "cmdline"),
        (n1.pid(), "environ"),
    ] {
        let text = std::fs::read(format!("/proc/{pid}/{what}")).expect("read /proc");
        assert!(
            !String::from_utf8_lossy(&text).contains(PASSWORD),
            "the password is in /proc/{pid}/{what}"
        );
    }

    // A password file others can read: the node refuses to start its server.
    let loose = c.dir.write("loose.password", "loose-secret\n");
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let port2 = free_port();
    let n2 = c.node_with(
        "n2",
        port2,
        &[("REDIS_PASSWORD_FILE", &loose.display().to_string())],
    );
    assert!(
        wait_for(Duration::from_secs(15), || n2
            .log()
            .contains("readable by group or others")),
        "{}",
        n2.log()
    );
    assert!(resp(port2, &["PING"]).is_none(), "redis started anyway");
}

#[test]
fn a_master_frozen_while_it_is_deposed_holds_writes_when_it_thaws() {
    let c = Cluster::new("bp-redis-frozen");
    let port = free_port();
    let n1 = one_master(&c, port, &[]);
    let redis = n1.job_pid("redis").expect("redis pid");

    // Deposed (maintenance resigns the seat) while its server cannot answer INFO.
    kill(redis, libc::SIGSTOP);
    let (code, out) = n1.cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let log = n1.log();
            log.contains("cannot tell the role") || log.contains("job exited job=fence")
        }),
        "the fence hook did not run:\n{}",
        n1.log()
    );
    kill(redis, libc::SIGCONT);

    // Thawed, it is a master without the seat: its writes must be held, and stay held.
    assert!(
        wait_for(Duration::from_secs(10), || holds_writes(port, "thawed")),
        "the thawed deposed master takes writes:\n{}",
        n1.log()
    );
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        assert!(
            holds_writes(port, "thawed"),
            "the pause lifted:\n{}",
            n1.log()
        );
    }
    // The path under test: the fence could not read the role while the server was frozen.
    assert!(n1.log().contains("cannot tell the role"), "{}", n1.log());
}

#[test]
fn a_deposed_masters_pause_is_renewed_while_it_is_deposed() {
    let c = Cluster::new("bp-redis-renew");
    let port = free_port();
    let n1 = one_master(&c, port, &[("REDIS_PAUSE_MS", "1500")]);
    let (code, out) = n1.cli(&["maintenance", "enable"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_for(Duration::from_secs(10), || holds_writes(port, "deposed")),
        "the deposed master takes writes:\n{}",
        n1.log()
    );
    // Twice the pause's own timeout later, writes are still held.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(3) {
        assert!(
            holds_writes(port, "deposed"),
            "the pause lapsed:\n{}",
            n1.log()
        );
    }
    // A pause that ended anyway (here: lifted by hand) is put back.
    assert_eq!(resp(port, &["CLIENT", "UNPAUSE"]).as_deref(), Some("+OK"));
    assert!(
        wait_for(Duration::from_secs(5), || holds_writes(port, "deposed")),
        "the lapsed pause of a deposed master was not renewed:\n{}",
        n1.log()
    );
}

#[test]
fn writes_acknowledged_a_second_before_a_kill_9_of_every_node_survive() {
    let c = Cluster::new("bp-redis-aof");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["n1", "n2", "n3"];
    // Snapshots (the only persistence without AOF) are taken once, at the first election.
    let extra = [("SNAPSHOT_INTERVAL", "1h")];
    let start = |i: usize| c.node_with(names[i], ports[i], &extra);
    let nodes: Vec<Agent> = (0..3).map(start).collect();
    assert!(
        wait_for(Duration::from_secs(30), || settled(&c, &ports).is_some()),
        "no master with two replicas"
    );

    let writer = Writer::start(ports.clone(), "d");
    assert!(wait_for(Duration::from_secs(10), || writer.acked_count() > 100));
    let durable = writer.acked_keys();
    let acked_at = Instant::now();
    // appendfsync everysec: a write acknowledged a second ago is on disk. Writes go on meanwhile.
    assert!(wait_for(Duration::from_secs(5), || acked_at.elapsed()
        > Duration::from_millis(1200)));

    let pids: Vec<(i32, i32)> = nodes
        .iter()
        .map(|n| (n.pid(), n.job_pid("redis").expect("redis pid")))
        .collect();
    for (agent, redis) in &pids {
        kill(*agent, libc::SIGKILL);
        kill(*redis, libc::SIGKILL);
    }
    for mut n in nodes {
        let _ = n.wait(Duration::from_secs(5));
    }
    let _ = writer.stop();

    let nodes: Vec<Agent> = (0..3).map(start).collect();
    let mut master = 0;
    assert!(
        wait_for(Duration::from_secs(40), || {
            settled(&c, &ports).map(|m| master = m).is_some()
        }),
        "the cluster did not come back:\n{}",
        nodes
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let lost: Vec<&String> = durable
        .iter()
        .filter(|k| resp(ports[master], &["EXISTS", k]).as_deref() != Some(":1"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} writes acknowledged over a second before the kill were lost: {:?}",
        lost.len(),
        durable.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
}

/// The fence lock lives in the node's private run directory: one found
/// there is refused unless it is a real directory (not a symlink), 0700 and
/// ours (in a shared /tmp another user could have made it and hold the lock,
/// so a deposed master would never be paused); a missing one is made 0700.
/// Driven through health.sh, which renews a deposed master's pause under the
/// lock, against a real redis-server that is a master without the seat.
#[test]
fn a_foreign_or_linked_private_run_dir_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let c = Cluster::new("bp-redis-priv");
    let dir = &c.dir;
    let port = free_port();
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let up = wait_for(Duration::from_secs(10), || {
        resp(port, &["PING"]).as_deref() == Some("+PONG")
    });
    let state = dir.path("state");
    std::fs::create_dir(&state).expect("state dir");
    let bin_dir = std::path::Path::new(bin()).parent().expect("bin dir");
    let health = || {
        let out = std::process::Command::new("sh")
            .arg("health.sh")
            .current_dir(example_dir("redis"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("REDIS_PORT", port.to_string())
            .env("REDIS_RUN", &dir.0)
            .env("REDIS_PASSWORD_FILE", dir.path("redis.password"))
            .env("AUTOPILOT_JOB_STATE_DIR", &state)
            .env("AUTOPILOT_HOSTNAME", "priv-test")
            .env("REDIS_PAUSE_MS", "60000")
            .env_remove("AUTOPILOT_LEADER_REDIS_FILE")
            .env_remove("AUTOPILOT_LEADER_REDIS_ID")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("health.sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let priv_dir = dir.path(&format!("autopilot-redis-{port}"));
    let uid = std::fs::metadata(&dir.0).expect("dir").uid();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    let mut failures = Vec::new();
    let mut refused = |why: &str, says: &str, look_in: &std::path::Path| {
        let (ok, err) = health();
        let empty = std::fs::read_dir(look_in).map(|d| d.count()).unwrap_or(0) == 0;
        if ok || !err.contains("private run directory") || !err.contains(says) || !empty {
            failures.push(format!("{why}: ok={ok} empty={empty}: {err}"));
        }
    };
    if up {
        if uid == 0 {
            // Another user's directory (nobody), with the right mode.
            std::fs::create_dir(&priv_dir).expect("mkdir");
            std::os::unix::fs::chown(&priv_dir, Some(65534), Some(65534)).expect("chown");
            mode(&priv_dir, 0o700);
            refused("owned by nobody", "not 0 700", &priv_dir);
            std::fs::remove_dir(&priv_dir).expect("rmdir");
        }
        // Ours, but open to others.
        std::fs::create_dir(&priv_dir).expect("mkdir");
        mode(&priv_dir, 0o755);
        refused("mode 0755", "755", &priv_dir);
        std::fs::remove_dir(&priv_dir).expect("rmdir");
        // A symlink to a directory that passes every other check.
        let elsewhere = dir.path("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        mode(&elsewhere, 0o700);
        std::os::unix::fs::symlink(&elsewhere, &priv_dir).expect("symlink");
        refused("a symlink", "symlink", &elsewhere);
        std::fs::remove_file(&priv_dir).expect("rm link");
    }
    // None there: made 0700, the lock taken in it, the deposed master paused.
    let fresh = up.then(health);
    let paused = up && holds_writes(port, "priv-test");
    let _ = server.kill();
    let _ = server.wait();
    assert!(up, "redis-server did not start");
    assert!(failures.is_empty(), "{failures:#?}");
    let (ok, err) = fresh.expect("ran");
    assert!(ok, "{err}");
    let meta = std::fs::symlink_metadata(&priv_dir).expect("made");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert!(priv_dir.join("fence.lock").exists());
    assert!(paused, "health.sh renews a deposed master's pause");
}
