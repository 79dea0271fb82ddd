//! The PostgreSQL blueprint's continuous archiving (pgBackRest) on a real etcd: every node and data directory lost, three fresh nodes restore the newest base backup plus the archived WAL, with every transaction committed before the last archived segment.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PASSWORD: &str = "archive-s3cret";

/// One value from `psql -Atc` against 127.0.0.1:`port` (None on any error).
fn sql(pass: &Path, port: u16, query: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-w", "-Atqc", query])
        .env("PGCONNECT_TIMEOUT", "2")
        .env("PGPASSFILE", pass)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

struct Cluster {
    dir: Dir,
    etcd: autopilot_testkit::Etcd,
    ports: Vec<u16>,
    /// The catalog's prefix: a new one is a new, empty catalog.
    prefix: String,
}

impl Cluster {
    fn url(&self) -> String {
        format!("etcd://{}/{}", self.etcd.endpoint(), self.prefix)
    }

    fn pass(&self) -> PathBuf {
        self.dir.path("client-pgpass")
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path(&format!("pg-{}", self.ports[i]))
    }

    fn node(&self, i: usize) -> Agent {
        let name = format!("a{}", i + 1);
        let port = self.ports[i];
        let mut env = blueprint_env(&self.dir, &self.url(), &name);
        env.extend([
            ("PG_RUN".into(), self.dir.0.display().to_string()),
            ("PG_PORT".into(), port.to_string()),
            ("PGDATA".into(), self.data(i).display().to_string()),
            ("PG_BIND".into(), "127.0.0.1".into()),
            (
                "PG_PASSWORD_FILE".into(),
                self.dir.path("pg-password").display().to_string(),
            ),
            (
                "PG_ARCHIVE_REPO".into(),
                self.dir.path("archive").display().to_string(),
            ),
        ]);
        start_example_ready(
            "postgres",
            "postgres.json5",
            &self.dir.path(&format!("{name}-{}.log", self.prefix)),
            &self.dir.path(&format!("autopilot-postgres-{port}.sock")),
            &env,
        )
    }

    /// The index of the primary once it accepts writes and both standbys
    /// stream from it.
    fn primary(&self, timeout: Duration) -> Option<usize> {
        let mut primary = None;
        wait_for(timeout, || {
            let Some(&pp) = passing_ports(&self.url(), "postgres").first() else {
                return false;
            };
            let Some(i) = self.ports.iter().position(|x| *x == pp) else {
                return false;
            };
            let ok = sql(&self.pass(), pp, "select not pg_is_in_recovery()").as_deref()
                == Some("t")
                && sql(
                    &self.pass(),
                    pp,
                    "select count(*) from pg_stat_replication where state = 'streaming'",
                )
                .as_deref()
                    == Some("2");
            if ok {
                primary = Some(i);
            }
            ok
        });
        primary
    }
}

fn logs(nodes: &[Agent]) -> String {
    nodes
        .iter()
        .map(|a| a.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn a_cluster_whose_every_node_is_lost_comes_back_from_the_archive() {
    assert!(
        Command::new("pgbackrest").arg("version").output().is_ok(),
        "pgBackRest is not installed: run ./scripts/test, which installs it"
    );
    let dir = Dir::new("pg-archive");
    // The shared archive exists before the first node starts (start.sh never creates it).
    std::fs::create_dir(dir.path("archive")).expect("archive dir");
    write_mode(&dir.path("pg-password"), &format!("{PASSWORD}\n"), 0o600);
    write_mode(
        &dir.path("client-pgpass"),
        &format!("*:*:*:postgres:{PASSWORD}\n"),
        0o600,
    );
    let etcd = autopilot_testkit::Etcd::single(&dir.0);
    let mut c = Cluster {
        dir,
        etcd,
        ports: (0..3).map(|_| free_port()).collect(),
        prefix: "first".into(),
    };
    let nodes: Vec<Agent> = (0..3).map(|i| c.node(i)).collect();
    let Some(primary) = c.primary(Duration::from_secs(120)) else {
        panic!("no primary with two standbys:\n{}", logs(&nodes))
    };
    let p0 = c.ports[primary];

    // N transactions, each its own commit, then a WAL switch, archived.
    const N: usize = 300;
    sql(&c.pass(), p0, "create table t (v int primary key)").expect("create table");
    let script: String = (1..=N)
        .map(|i| format!("insert into t values ({i});\n"))
        .collect();
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &p0.to_string(), "-U", "postgres"])
        .args([
            "-d",
            "postgres",
            "-w",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &script,
        ])
        .env("PGPASSFILE", c.pass())
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seg = sql(&c.pass(), p0, "select pg_walfile_name(pg_switch_wal())").expect("switch");
    assert!(
        wait_for(Duration::from_secs(60), || {
            sql(
                &c.pass(),
                p0,
                "select coalesce(last_archived_wal, '') from pg_stat_archiver",
            )
            .is_some_and(|last| last.as_str() >= seg.as_str())
        }),
        "segment {seg} not archived:\n{}",
        logs(&nodes)
    );

    // Every node stops; every data directory and agent state goes; the
    // catalog is a new one too: only the archive remains.
    drop(nodes);
    for i in 0..3 {
        std::fs::remove_dir_all(c.data(i)).expect("remove data dir");
        let _ = std::fs::remove_dir_all(c.dir.path(&format!("state-a{}", i + 1)));
    }
    let _ = std::fs::remove_dir_all(c.dir.path("store"));
    c.prefix = "second".into();

    let started = Instant::now();
    let nodes: Vec<Agent> = (0..3).map(|i| c.node(i)).collect();
    let mut leader_at = None;
    let mut new_primary = None;
    assert!(
        wait_for(Duration::from_secs(180), || {
            let Some(&pp) = passing_ports(&c.url(), "postgres").first() else {
                return false;
            };
            let ok = sql(&c.pass(), pp, "select count(*) from t").as_deref()
                == Some(&N.to_string())
                && sql(&c.pass(), pp, "insert into t values (0) returning 1").as_deref()
                    == Some("1");
            if ok {
                leader_at = Some(started.elapsed());
                new_primary = c.ports.iter().position(|x| *x == pp);
            }
            ok
        }),
        "the cluster did not come back with every transaction:\n{}",
        logs(&nodes)
    );
    let Some(back) = c.primary(Duration::from_secs(180)) else {
        panic!("the standbys did not come back:\n{}", logs(&nodes))
    };
    let all = started.elapsed();
    eprintln!(
        "full-cluster restore from the archive: a writable primary with every transaction after {:?}, both standbys streaming after {all:?}",
        leader_at.unwrap_or_default()
    );
    assert_eq!(Some(back), new_primary);
    let text = logs(&nodes);
    assert!(!text.contains("bootstrap: initdb"), "{text}");
    assert!(
        text.contains("restoring the newest base backup from the archive"),
        "{text}"
    );
    for i in 0..3 {
        assert!(
            wait_for(Duration::from_secs(30), || sql(
                &c.pass(),
                c.ports[i],
                "select count(*) from t"
            )
            .as_deref()
                == Some(&(N + 1).to_string())),
            "node {i} misses transactions:\n{text}"
        );
    }
}
