//! The PostgreSQL blueprint (examples/postgres) end to end on a real etcd, on the README's own paths: one guarded initdb, standbys from a snapshot, kill -9 failover, the old primary rewound (not re-cloned), a failed rewind kept aside, authentication, the pinned version, the private run dir and archive repository checks, fail-closed fencing, and synchronous mode (no acknowledged commit lost; only a listed standby promoted).
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The superuser's password in the tests.
const PASSWORD: &str = "s3cret:with\\escapes";

/// The client passfile the tests' psql reads (0600), beside the nodes' files.
fn passfile() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("autopilot-test-pgpass-{}", std::process::id()))
}

/// One value from `psql -Atc` against 127.0.0.1:`port` (None on any error),
/// authenticated through `passfile` (`None`: no password at all).
fn sql_as(passfile: Option<&std::path::Path>, port: u16, query: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-w", "-Atqc", query])
        .env("PGCONNECT_TIMEOUT", "2")
        .env(
            "PGPASSFILE",
            passfile.unwrap_or(std::path::Path::new("/dev/null")),
        )
        .env_remove("PGPASSWORD")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sql(port: u16, query: &str) -> Option<String> {
    sql_as(Some(&passfile()), port, query)
}

/// Tests of this process that hold the shared client passfile.
static PASSFILE_USERS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Writes the tests' client passfile (shared by the tests of this process,
/// which run in parallel); removed when the last guard drops.
fn client_passfile() -> RemoveOnDrop {
    let mut users = PASSFILE_USERS.lock().unwrap_or_else(|e| e.into_inner());
    if *users == 0 {
        let escaped = PASSWORD.replace('\\', "\\\\").replace(':', "\\:");
        write_mode(&passfile(), &format!("*:*:*:postgres:{escaped}\n"), 0o600);
    }
    *users += 1;
    RemoveOnDrop(passfile())
}

/// Removes the passfile when its last user drops.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let mut users = PASSFILE_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users == 0 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// start.sh refuses a password file that group or others can read, before
/// touching the data directory.
#[test]
fn a_group_readable_password_file_is_refused() {
    let dir = Dir::new("bp-pg-pw");
    write_mode(&dir.path("pw"), "secret\n", 0o640);
    let (ok, err) = start_sh(&dir, &[]);
    assert!(!ok, "{err}");
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(!dir.path("data/PG_VERSION").exists());
}

/// start.sh refuses a server or a data directory of another major version
/// than the pinned one (PG_MAJOR, 15 by default).
#[test]
fn another_major_version_is_refused() {
    let dir = Dir::new("bp-pg-major");
    write_mode(&dir.path("pw"), "secret\n", 0o600);
    std::fs::create_dir_all(dir.path("data")).expect("data dir");
    std::fs::write(dir.path("data/PG_VERSION"), "14\n").expect("PG_VERSION");
    let (ok, err) = start_sh(&dir, &[]);
    assert!(!ok, "{err}");
    assert!(err.contains("is PostgreSQL 14, not the pinned 15"), "{err}");
    let (ok, err) = start_sh(
        &dir,
        &[("PG_MAJOR", "14"), ("PG_BIN", "/usr/lib/postgresql/15/bin")],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("is PostgreSQL 15, not the pinned 14"), "{err}");
}

/// Runs the blueprint's start.sh alone on `dir` (data dir `data`, password
/// file `pw`) with an unreachable catalog unless `env` names one, so whatever
/// it does after its checks fails fast; returns whether it succeeded and its
/// stderr. Bounded (60 s): a start.sh that wrongly goes on to exec a server
/// is stopped (fast shutdown, then SIGKILL) and counts as a success.
fn start_sh(dir: &Dir, env: &[(&str, &str)]) -> (bool, String) {
    let bin_dir = std::path::Path::new(bin())
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let log = dir.path(&format!("start-{}.log", free_port()));
    let mut child = Command::new("sh")
        .arg("start.sh")
        .current_dir(example_dir("postgres"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("PG_RUN", &dir.0)
        .env("PGDATA", dir.path("data"))
        .env("PG_PORT", free_port().to_string())
        .env("PG_PASSWORD_FILE", dir.path("pw"))
        .env("AUTOPILOT_CATALOG", "etcd://127.0.0.1:1/none")
        .env("LEADER_RETRIES", "1")
        .env("PG_BIND", "127.0.0.1")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run start.sh");
    let mut status = None;
    if !wait_for(Duration::from_secs(60), || {
        status = child.try_wait().expect("wait start.sh");
        status.is_some()
    }) {
        // It exec'd a server (same pid): stop it and count that as success.
        kill(child.id() as i32, libc::SIGINT);
        if !wait_for(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
            let _ = child.wait();
        }
        return (true, std::fs::read_to_string(&log).unwrap_or_default());
    }
    (
        status.is_some_and(|s| s.success()),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// The uid the blueprint runs its server as: postgres when root runs it.
fn server_uid() -> u32 {
    let root = my_uid() == 0;
    let out = Command::new("id")
        .args(if root {
            vec!["-u", "postgres"]
        } else {
            vec!["-u"]
        })
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

/// Our own uid, from `id -u`.
fn my_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

/// start.sh refuses a private run directory it finds in a shared place
/// unless it is a real directory (not a symlink), 0700 and owned by the
/// server's user, and writes nothing into a refused one (another user could
/// have made it, or planted a link, to read the passfile or have root write
/// through the link); a missing one is made 0700 for the server's user.
#[test]
fn a_foreign_or_linked_private_run_dir_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = Dir::new("bp-pg-priv");
    write_mode(&dir.path("pw"), "secret\n", 0o600);
    let port = free_port().to_string();
    let env = [("PG_PORT", port.as_str())];
    let priv_dir = dir.path(&format!("autopilot-pg-{port}"));
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    let refused = |why: &str, says: &str, look_in: &std::path::Path| {
        let (ok, err) = start_sh(&dir, &env);
        assert!(!ok, "{why}: {err}");
        assert!(
            err.contains("private run directory") && err.contains(says),
            "{why}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(look_in).expect("read dir").count(),
            0,
            "{why}: nothing is written into a refused directory"
        );
        assert!(!dir.path("data").exists(), "{why}: refused first");
    };
    if my_uid() == 0 {
        // Another user's directory (nobody), with the right mode.
        std::fs::create_dir(&priv_dir).expect("mkdir");
        std::os::unix::fs::chown(&priv_dir, Some(65534), Some(65534)).expect("chown");
        mode(&priv_dir, 0o700);
        refused("owned by nobody", "not", &priv_dir);
        std::fs::remove_dir(&priv_dir).expect("rmdir");
    }
    // The server user's directory, but open to others.
    std::fs::create_dir(&priv_dir).expect("mkdir");
    std::os::unix::fs::chown(&priv_dir, Some(server_uid()), None).expect("chown");
    mode(&priv_dir, 0o755);
    refused("mode 0755", "755", &priv_dir);
    std::fs::remove_dir(&priv_dir).expect("rmdir");
    // A symlink to a directory that would pass every other check.
    let elsewhere = dir.path("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::os::unix::fs::chown(&elsewhere, Some(server_uid()), None).expect("chown");
    mode(&elsewhere, 0o700);
    std::os::unix::fs::symlink(&elsewhere, &priv_dir).expect("symlink");
    refused("a symlink", "symlink", &elsewhere);
    std::fs::remove_file(&priv_dir).expect("rm link");
    // None there: made 0700 for the server's user; start.sh goes on (to the
    // unreachable catalog) with the passfile written in it.
    let (ok, err) = start_sh(&dir, &env);
    assert!(!ok, "{err}");
    assert!(err.contains("cannot read the election"), "{err}");
    let meta = std::fs::symlink_metadata(&priv_dir).expect("made");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), server_uid());
    let pass = std::fs::metadata(priv_dir.join("pgpass")).expect("passfile");
    assert_eq!(pass.mode() & 0o777, 0o600);
    assert_eq!(pass.uid(), server_uid());
    assert!(
        !std::fs::read_dir(&priv_dir)
            .expect("read dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with('.')),
        "no temp file is left behind"
    );
}

/// start.sh never creates the archive repository: a missing one (a shared
/// mount that is not mounted) stops the start, instead of reading as "no
/// backups" and letting a node with no data and no primary initdb over a
/// lost cluster.
#[test]
fn a_missing_archive_repository_stops_the_start() {
    let dir = Dir::new("bp-pg-repo");
    write_mode(&dir.path("pw"), "secret\n", 0o600);
    let etcd = autopilot_testkit::Etcd::single(&dir.0);
    let url = format!("etcd://{}/pg-repo", etcd.endpoint());
    let repo = dir.path("archive");
    let repo_s = repo.display().to_string();
    let (ok, err) = start_sh(
        &dir,
        &[
            ("AUTOPILOT_CATALOG", url.as_str()),
            ("PG_ARCHIVE_REPO", repo_s.as_str()),
        ],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("the archive repository {repo_s} does not exist")),
        "{err}"
    );
    assert!(!repo.exists(), "the repository is never created");
    assert!(!dir.path("data/PG_VERSION").exists(), "no initdb");
}

/// Writes `text` to a new file with `mode`.
fn write_mode(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

struct Cluster {
    dir: Dir,
    etcd: autopilot_testkit::Etcd,
    /// Settings every node gets besides the defaults.
    extra: Vec<(String, String)>,
}

impl Cluster {
    /// A scratch directory with the password file, and an etcd.
    fn new(tag: &str, extra: &[(&str, &str)]) -> Cluster {
        let dir = Dir::new(tag);
        write_mode(&dir.path("pg-password"), &format!("{PASSWORD}\n"), 0o600);
        let etcd = autopilot_testkit::Etcd::single(&dir.0);
        // The shared archive exists before the first node starts (start.sh
        // never creates it).
        std::fs::create_dir(dir.path("archive")).expect("archive dir");
        let extra = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster { dir, etcd, extra }
    }

    fn url(&self) -> String {
        format!("etcd://{}/pg-bp", self.etcd.endpoint())
    }

    fn node(&self, name: &str, port: u16) -> Agent {
        let mut env = blueprint_env(&self.dir, &self.url(), name);
        env.extend([
            ("PG_RUN".into(), self.dir.0.display().to_string()),
            ("PG_PORT".into(), port.to_string()),
            // The README's own layout: the data directory `$PG_RUN/pg-$PG_PORT`.
            ("PGDATA".into(), self.data(port).display().to_string()),
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
        env.extend(self.extra.iter().cloned());
        start_example_ready(
            "postgres",
            "postgres.json5",
            &self.dir.path(&format!("{name}.log")),
            &self.dir.path(&format!("autopilot-postgres-{port}.sock")),
            &env,
        )
    }

    fn data(&self, port: u16) -> std::path::PathBuf {
        self.dir.path(&format!("pg-{port}"))
    }

    fn catalog(&self, service: &str) -> Vec<u16> {
        passing_ports(&self.url(), service)
    }
}

fn streams_from(standby: u16, primary: u16) -> bool {
    sql(standby, "select pg_is_in_recovery()").as_deref() == Some("t")
        && sql(
            primary,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        )
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n >= 1)
        && sql(standby, "select status from pg_stat_wal_receiver").as_deref() == Some("streaming")
        && sql(standby, "select sender_port from pg_stat_wal_receiver") == Some(primary.to_string())
}

#[test]
fn postgres_bootstrap_failover_and_rewind() {
    assert!(
        Command::new("psql").arg("--version").output().is_ok()
            && std::path::Path::new("/usr/lib/postgresql").exists(),
        "PostgreSQL is not installed: run ./scripts/test, which installs it"
    );
    let _passfile = client_passfile();
    let c = Cluster::new("bp-pg", &[]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["pg1", "pg2", "pg3"];
    let mut nodes: Vec<Option<Agent>> = (0..3).map(|i| Some(c.node(names[i], ports[i]))).collect();
    let logs = |nodes: &[Option<Agent>]| {
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // One primary registered as "postgres"; two standbys streaming from it.
    let mut primary = 0;
    assert!(
        wait_for(Duration::from_secs(60), || {
            let p = c.catalog("postgres");
            let Some(&pp) = p.first() else { return false };
            primary = ports.iter().position(|x| *x == pp).unwrap_or(0);
            p.len() == 1
                && c.catalog("postgres-replica").len() == 2
                && (0..3)
                    .filter(|i| *i != primary)
                    .all(|i| streams_from(ports[i], pp))
        }),
        "no primary with two streaming standbys:\n{}",
        logs(&nodes)
    );
    // The guarded bootstrap ran initdb on exactly one node; the others came from its snapshot.
    let all = logs(&nodes);
    assert_eq!(all.matches("bootstrap: initdb").count(), 1, "{all}");
    assert_eq!(all.matches("restored before start").count(), 2, "{all}");

    // Authentication is on: without the password, no connection (TCP or replication).
    let p0 = ports[primary];
    assert_eq!(sql_as(None, p0, "select 1"), None);
    assert_eq!(sql_as(None, ports[(primary + 1) % 3], "select 1"), None);
    let hba = sql(
        p0,
        "select string_agg(distinct auth_method, ',') from pg_hba_file_rules where type like 'host%'",
    );
    assert_eq!(hba.as_deref(), Some("scram-sha-256"));

    // Writes go to whoever is registered as "postgres".
    let write = |c: &Cluster, v: usize| {
        let Some(&p) = c.catalog("postgres").first() else {
            return false;
        };
        sql(p, &format!("insert into t values ({v}) returning 1")).as_deref() == Some("1")
    };
    sql(p0, "create table t (v int)").expect("create table");
    for v in 0..50 {
        assert!(wait_for(Duration::from_secs(10), || write(&c, v)));
    }
    // Let both standbys replay everything before the crash.
    let lsn = sql(p0, "select pg_current_wal_lsn()").expect("lsn");
    assert!(wait_for(Duration::from_secs(10), || {
        (0..3).filter(|i| *i != primary).all(|i| {
            sql(
                ports[i],
                &format!("select pg_last_wal_replay_lsn() >= '{lsn}'"),
            )
            .as_deref()
                == Some("t")
        })
    }));

    // kill -9 of the primary's agent and postmaster.
    let m = nodes[primary].take().expect("primary");
    let pm = m.job_pid("postgres").expect("postmaster pid");
    let killed = Instant::now();
    kill(m.pid(), libc::SIGKILL);
    kill(pm, libc::SIGKILL);
    let mut m = m;
    let _ = m.wait(Duration::from_secs(5));
    drop(m);

    let survivors: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let mut new_primary = survivors[0];
    assert!(
        wait_for(Duration::from_secs(30), || {
            survivors.iter().any(|&i| {
                let ok = c.catalog("postgres").contains(&ports[i])
                    && sql(ports[i], "insert into t values (100) returning 1").as_deref()
                        == Some("1");
                if ok {
                    new_primary = i;
                }
                ok
            })
        }),
        "no new primary:\n{}",
        logs(&nodes)
    );
    eprintln!(
        "failover (kill -9 → first write on the new primary): {:?}",
        killed.elapsed()
    );
    assert_eq!(
        sql(ports[new_primary], "select count(*) from t where v < 50").as_deref(),
        Some("50")
    );
    let other = survivors
        .iter()
        .copied()
        .find(|i| *i != new_primary)
        .expect("other");
    assert!(
        wait_for(Duration::from_secs(20), || streams_from(
            ports[other],
            ports[new_primary]
        )),
        "the other standby does not follow the new primary:\n{}",
        logs(&nodes)
    );

    // The other standby streams through its own replication slot.
    assert!(
        wait_for(Duration::from_secs(20), || {
            sql(
            ports[new_primary],
            &format!(
                "select count(*) from pg_replication_slots where slot_name = 'ap_127_0_0_1_{}' and active",
                ports[other]
            )
        )
        .as_deref()
            == Some("1")
        }),
        "no active slot for the other standby:\n{}",
        logs(&nodes)
    );

    // The old primary comes back: pg_rewind onto the new timeline, then streams.
    nodes[primary] = Some(c.node(names[primary], ports[primary]));
    assert!(
        wait_for(Duration::from_secs(30), || streams_from(
            ports[primary],
            ports[new_primary]
        )),
        "old primary did not rejoin:\n{}",
        nodes[primary].as_ref().map(|a| a.log()).unwrap_or_default()
    );
    let back = nodes[primary].as_ref().map(|a| a.log()).unwrap_or_default();
    assert!(back.contains("rewinding onto"), "{back}");
    assert!(
        !back.contains("cloning"),
        "rewind failed, re-cloned:\n{back}"
    );
    assert!(wait_for(Duration::from_secs(10), || write(&c, 200)));
    assert!(wait_for(Duration::from_secs(10), || {
        sql(ports[primary], "select count(*) from t where v = 200").as_deref() == Some("1")
    }));

    // A failed pg_rewind never deletes the only copy: the standby `other`
    // is stopped and made to look like an old primary whose rewind fails
    // (no standby.signal, a truncated pg_control); its data directory is
    // moved aside, kept, and the node is re-cloned.
    let o = nodes[other].take().expect("other node");
    drop(o);
    let data = c.data(ports[other]);
    std::fs::remove_file(data.join("standby.signal")).expect("standby.signal");
    std::fs::write(data.join("global/pg_control"), b"").expect("truncate pg_control");
    std::fs::write(data.join("keep-me"), b"the only copy").expect("marker");
    nodes[other] = Some(c.node(names[other], ports[other]));
    assert!(
        wait_for(Duration::from_secs(60), || streams_from(
            ports[other],
            ports[new_primary]
        )),
        "the node whose rewind failed did not rejoin:\n{}",
        nodes[other].as_ref().map(|a| a.log()).unwrap_or_default()
    );
    let back = nodes[other].as_ref().map(|a| a.log()).unwrap_or_default();
    assert!(back.contains("is KEPT at"), "{back}");
    let prefix = format!("pg-{}.failed-", ports[other]);
    let kept: Vec<_> = std::fs::read_dir(&c.dir.0)
        .expect("read test dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert_eq!(kept.len(), 1, "{back}");
    assert_eq!(
        std::fs::read(kept[0].path().join("keep-me")).expect("kept marker"),
        b"the only copy"
    );
    assert!(wait_for(Duration::from_secs(10), || {
        sql(ports[other], "select count(*) from t where v = 200").as_deref() == Some("1")
    }));
}

/// The primary and its standbys once it has `n` standbys streaming; in
/// synchronous mode, also listed in synchronous_standby_names (quorum).
fn wait_primary(c: &Cluster, ports: &[u16], sync: bool) -> Option<usize> {
    let mut primary = None;
    wait_for(Duration::from_secs(90), || {
        let p = c.catalog("postgres");
        let Some(&pp) = p.first() else { return false };
        let Some(i) = ports.iter().position(|x| *x == pp) else {
            return false;
        };
        let ok = (0..ports.len())
            .filter(|j| *j != i)
            .all(|j| streams_from(ports[j], pp))
            && (!sync
                || sql(
                    pp,
                    "select count(*) from pg_stat_replication where sync_state = 'quorum'",
                )
                .as_deref()
                    == Some(&(ports.len() - 1).to_string()));
        if ok {
            primary = Some(i);
        }
        ok
    });
    primary
}

/// Synchronous mode (PG_SYNCHRONOUS=on): a client commits continuously on
/// one connection and records every acknowledged id; kill -9 of the
/// primary's agent and of its server's whole process group; the new primary
/// has every acknowledged commit.
#[test]
fn synchronous_mode_crash_failover_loses_no_acknowledged_commit() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let _passfile = client_passfile();
    let c = Cluster::new("bp-pg-sync", &[("PG_SYNCHRONOUS", "on")]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["s1", "s2", "s3"];
    let mut nodes: Vec<Option<Agent>> = (0..3).map(|i| Some(c.node(names[i], ports[i]))).collect();
    let logs = |nodes: &[Option<Agent>]| {
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let primary = wait_primary(&c, &ports, true);
    let Some(primary) = primary else {
        panic!(
            "no primary with two synchronous standbys:\n{}",
            logs(&nodes)
        )
    };
    let p0 = ports[primary];
    sql(p0, "create table acked (v bigint primary key)").expect("create table");

    // One psql session: each insert, then an echo of its id once it committed.
    let mut client = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &p0.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-w", "-q", "-v", "ON_ERROR_STOP=1"])
        .env("PGPASSFILE", passfile())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = client.stdin.take().expect("stdin");
    let stdout = client.stdout.take().expect("stdout");
    let writer = std::thread::spawn(move || {
        for i in 1..=1_000_000u64 {
            if writeln!(stdin, "insert into acked values ({i});\n\\echo ok {i}").is_err() {
                return;
            }
        }
    });
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("ok ").and_then(|n| n.parse::<u64>().ok()) {
                a.store(n, Ordering::SeqCst);
            }
        }
    });
    assert!(
        wait_for(Duration::from_secs(30), || acked.load(Ordering::SeqCst)
            >= 300),
        "commits do not flow:\n{}",
        logs(&nodes)
    );

    // kill -9 of the primary's agent and of its server's process group.
    let m = nodes[primary].take().expect("primary");
    let pm = m.job_pid("postgres").expect("postmaster pid");
    kill(m.pid(), libc::SIGKILL);
    killpg(pm, libc::SIGKILL);
    let mut m = m;
    let _ = m.wait(Duration::from_secs(5));
    drop(m);
    let _ = client.wait();
    let _ = writer.join();
    let _ = reader.join();
    let last = acked.load(Ordering::SeqCst);

    let survivors: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let mut new_primary = None;
    assert!(
        wait_for(Duration::from_secs(60), || {
            survivors.iter().any(|&i| {
                let ok = c.catalog("postgres").contains(&ports[i])
                    && sql(ports[i], "select not pg_is_in_recovery()").as_deref() == Some("t");
                if ok {
                    new_primary = Some(i);
                }
                ok
            })
        }),
        "no new primary:\n{}",
        logs(&nodes)
    );
    let np = ports[new_primary.expect("new primary")];
    let have = sql(np, &format!("select count(*) from acked where v <= {last}"));
    eprintln!("acknowledged commits: {last}; on the new primary: {have:?}");
    assert_eq!(have, Some(last.to_string()), "{}", logs(&nodes));
}

/// fence.sh fails closed: a primary that does not answer (its postmaster
/// stopped, so its role cannot be told) is stopped, within a bound, rather
/// than left running unfenced.
#[test]
fn fence_stops_a_server_that_does_not_answer() {
    let dir = Dir::new("bp-pg-fence");
    let port = free_port();
    let data = dir.path(&format!("pg-{port}"));
    let run = dir.path(&format!("autopilot-pg-{port}"));
    let bin = "/usr/lib/postgresql/15/bin";
    for d in [&data, &run] {
        std::fs::create_dir_all(d).expect("dir");
        assert!(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(d)
                .status()
                .expect("chown")
                .success()
        );
    }
    write_mode(&dir.path("pw"), "secret\n", 0o600);
    let as_pg = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .args(args)
            .output()
            .expect("run as postgres")
    };
    let out = as_pg(&[
        &format!("{bin}/initdb"),
        "-D",
        &data.display().to_string(),
        "-U",
        "postgres",
        "--auth=trust",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server is this test's child, so the test reaps it once killed.
    let mut server = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(format!("{bin}/postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", run.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("postgres");
    let pm = server.id() as i32;
    assert!(wait_for(Duration::from_secs(30), || {
        Command::new("psql")
            .arg("-h")
            .arg(&run)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atqc",
                "select 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }));
    // The postmaster hangs: connections queue and are never answered.
    kill(pm, libc::SIGSTOP);

    let mut fence = Command::new("sh")
        .arg("fence.sh")
        .current_dir(example_dir("postgres"))
        .env("PG_RUN", &dir.0)
        .env("PGDATA", &data)
        .env("PG_PORT", port.to_string())
        .env("PG_PASSWORD_FILE", dir.path("pw"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path("fence.log")).expect("log"))
        .spawn()
        .expect("fence.sh");
    let mut stopped = false;
    let finished = wait_for(Duration::from_secs(40), || {
        stopped = stopped || matches!(server.try_wait(), Ok(Some(_)));
        matches!(fence.try_wait(), Ok(Some(_)))
    });
    stopped = stopped || matches!(server.try_wait(), Ok(Some(_)));
    if !finished {
        let _ = fence.kill();
        let _ = fence.wait();
    }
    // Whatever happened, nothing is left running.
    if !stopped {
        let _ = server.kill();
        let _ = server.wait();
    }
    assert!(finished, "fence.sh hangs on a server that does not answer");
    assert!(
        stopped,
        "fence.sh left the server running:\n{}",
        dir.read("fence.log")
    );
}

/// Synchronous mode: a standby that the catalog's key does not list as
/// synchronous never becomes the primary after a crash; if it wins the seat
/// it refuses to promote and hands the seat on to a listed one.
#[test]
fn synchronous_mode_promotes_only_a_listed_standby() {
    let _passfile = client_passfile();
    let c = Cluster::new("bp-pg-sync2", &[("PG_SYNCHRONOUS", "on")]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["l1", "l2", "l3"];
    let mut nodes: Vec<Option<Agent>> = (0..3).map(|i| Some(c.node(names[i], ports[i]))).collect();
    let logs = |nodes: &[Option<Agent>]| {
        nodes
            .iter()
            .flatten()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let Some(primary) = wait_primary(&c, &ports, true) else {
        panic!(
            "no primary with two synchronous standbys:\n{}",
            logs(&nodes)
        )
    };
    let standbys: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let (listed, unlisted) = (standbys[0], standbys[1]);
    // The primary's record of who may hold its commits, once it has
    // settled on both standbys, is replaced by one naming a single standby
    // (the primary rewrites it only when its streaming standbys change).
    let kv_get = || {
        Command::new(bin())
            .args(["kv", "--catalog", &c.url(), "get", "postgres/sync"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let mut both: Vec<String> = standbys
        .iter()
        .map(|i| format!("ap_127_0_0_1_{}", ports[*i]))
        .collect();
    both.sort();
    let settled = format!("ap_127_0_0_1_{} {}", ports[primary], both.join(" "));
    assert!(
        wait_for(Duration::from_secs(20), || kv_get().as_deref()
            == Some(&settled)),
        "the primary never recorded {settled:?} (has {:?})",
        kv_get()
    );
    let out = Command::new(bin())
        .args(["kv", "--catalog", &c.url(), "put", "postgres/sync"])
        .arg(format!(
            "ap_127_0_0_1_{} ap_127_0_0_1_{}",
            ports[primary], ports[listed]
        ))
        .output()
        .expect("kv put");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = nodes[primary].take().expect("primary");
    let pm = m.job_pid("postgres").expect("postmaster pid");
    kill(m.pid(), libc::SIGKILL);
    killpg(pm, libc::SIGKILL);
    let mut m = m;
    let _ = m.wait(Duration::from_secs(5));
    drop(m);

    assert!(
        wait_for(Duration::from_secs(60), || {
            c.catalog("postgres") == vec![ports[listed]]
                && sql(ports[listed], "select not pg_is_in_recovery()").as_deref() == Some("t")
        }),
        "the listed standby did not become the primary:\n{}",
        logs(&nodes)
    );
    assert!(
        wait_for(Duration::from_secs(30), || streams_from(
            ports[unlisted],
            ports[listed]
        )),
        "the unlisted standby does not follow:\n{}",
        logs(&nodes)
    );
    assert_eq!(
        sql(ports[unlisted], "select pg_is_in_recovery()").as_deref(),
        Some("t")
    );
    let text = nodes[unlisted]
        .as_ref()
        .map(|a| a.log())
        .unwrap_or_default();
    assert!(!text.contains("promoted"), "{text}");
    eprintln!(
        "the unlisted standby won the seat first: {}",
        text.contains("not a synchronous standby")
    );
}
