//! The blueprint start hooks read `autopilot leader`'s exit code: no leader (1) starts a master, an unreachable catalog (3) never does.

// These tests run the blueprints' shell hooks as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A directory of fake servers: each records its name and arguments in
/// `calls` and exits 0, so a hook's `exec` ends the hook; `--version`
/// answers as PostgreSQL 15 (the blueprint's pinned major) without a record.
fn fakes(d: &Dir, names: &[&str]) -> std::path::PathBuf {
    let bin = d.child("fakes").0.clone();
    // Writable by all: the postgres hooks run their servers as `postgres`.
    let calls = d.path("calls");
    std::fs::write(&calls, "").expect("calls");
    std::fs::set_permissions(&calls, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    for n in names {
        let p = bin.join(n);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo \"{n} (PostgreSQL) 15.0\"; exit 0; }}\necho \"{n} $*\" >> {}\n",
                d.path("calls").display()
            ),
        )
        .expect("write fake");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

/// The blueprints' password file (authentication is on by default): owner-only.
fn password_file(d: &Dir) -> String {
    let p = d.path("password");
    std::fs::write(&p, "s3cret\n").expect("password");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p.display().to_string()
}

/// Runs `sh start.sh` in the example's directory with `autopilot` and the
/// fakes first on the PATH; its exit code (None: still running after 30 s).
fn start_hook(example: &str, fakes: &Path, env: &[(&str, &str)]) -> Option<i32> {
    let bin_dir = Path::new(bin()).parent().expect("bin dir");
    let path = format!(
        "{}:{}:{}",
        fakes.display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh")
        .arg("start.sh")
        .current_dir(example_dir(example))
        .env("PATH", path)
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(fakes.join("../start.log")).expect("start.log"))
        .spawn()
        .expect("spawn start.sh");
    let mut code = None;
    wait_for(Duration::from_secs(30), || match c.try_wait() {
        Ok(Some(st)) => {
            code = st.code();
            true
        }
        _ => false,
    });
    if code.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    code
}

#[test]
fn redis_start_never_starts_a_master_while_the_catalog_is_unreachable() {
    let d = Dir::new("hook-redis");
    let fakes = fakes(&d, &["redis-server"]);
    let data = d.path("data").display().to_string();
    let pw = password_file(&d);
    // Nothing listens on this port (held, so no other test's etcd takes it).
    let refused = autopilot_testkit::refused_port();
    let down = format!("etcd://127.0.0.1:{}/redis", refused.port);
    let env = [
        ("AUTOPILOT_CATALOG", down.as_str()),
        ("REDIS_DATA", data.as_str()),
        ("REDIS_PASSWORD_FILE", pw.as_str()),
        ("LEADER_RETRIES", "2"),
    ];
    // Before: "no master elected: starting as a master".
    assert_eq!(start_hook("redis", &fakes, &env), Some(1));
    assert!(
        d.lines("calls").is_empty(),
        "redis-server ran: {:?}",
        d.lines("calls")
    );
    // Reachable and nobody leads: a master.
    let url = local_catalog(&d);
    let env = [
        ("AUTOPILOT_CATALOG", url.as_str()),
        ("REDIS_DATA", data.as_str()),
        ("REDIS_PASSWORD_FILE", pw.as_str()),
    ];
    assert_eq!(start_hook("redis", &fakes, &env), Some(0));
    let calls = d.lines("calls");
    assert!(
        calls.len() == 1 && !calls[0].contains("--replicaof"),
        "{calls:?}"
    );
}

#[test]
fn postgres_start_never_initdbs_while_the_catalog_is_unreachable() {
    let d = Dir::new("hook-pg");
    let fakes = fakes(&d, &["initdb", "postgres", "pg_basebackup"]);
    let (data, run) = (d.path("data"), d.path("run"));
    std::fs::create_dir(&run).expect("run dir");
    let pw = password_file(&d);
    // The shared archive exists (start.sh never creates it) and is empty.
    let repo = d.path("archive");
    std::fs::create_dir(&repo).expect("archive dir");
    let repo = repo.display().to_string();
    let refused = autopilot_testkit::refused_port();
    let down = format!("etcd://127.0.0.1:{}/pg", refused.port);
    let env = [
        ("AUTOPILOT_CATALOG", down.as_str()),
        ("PGDATA", data.to_str().expect("utf-8")),
        ("PG_RUN", run.to_str().expect("utf-8")),
        ("PG_BIN", fakes.to_str().expect("utf-8")),
        ("PG_PASSWORD_FILE", pw.as_str()),
        ("PG_ARCHIVE_REPO", repo.as_str()),
        ("LEADER_RETRIES", "2"),
    ];
    // Before: initdb, then postgres as a primary.
    assert_eq!(
        start_hook("postgres", &fakes, &env),
        Some(1),
        "{}",
        d.read("start.log")
    );
    assert!(
        d.read("start.log").contains("cannot read the election"),
        "it stopped for the catalog: {}",
        d.read("start.log")
    );
    assert!(d.lines("calls").is_empty(), "ran: {:?}", d.lines("calls"));
    // Reachable and nobody leads: initdb, then the server.
    let url = local_catalog(&d);
    let env = [
        ("AUTOPILOT_CATALOG", url.as_str()),
        ("PGDATA", data.to_str().expect("utf-8")),
        ("PG_RUN", run.to_str().expect("utf-8")),
        ("PG_BIN", fakes.to_str().expect("utf-8")),
        ("PG_PASSWORD_FILE", pw.as_str()),
        ("PG_ARCHIVE_REPO", repo.as_str()),
    ];
    assert_eq!(
        start_hook("postgres", &fakes, &env),
        Some(0),
        "{}",
        d.read("start.log")
    );
    let calls = d.lines("calls");
    assert!(
        calls.len() == 2 && calls[0].starts_with("initdb") && calls[1].starts_with("postgres"),
        "{calls:?}"
    );
}

/// An embedded catalog that exists (an agent's would), with nobody leading.
fn local_catalog(d: &Dir) -> String {
    let url = format!("local://{}", d.path("catalog").display());
    let out = Command::new(bin())
        .args(["kv", "put", "--catalog", &url, "seed", "x"])
        .output()
        .expect("kv put");
    assert!(out.status.success());
    url
}
