//! The CLI as scripts use it: `--config` for every command, read-only commands that create nothing, exit codes 0/1/2/3, `--timeout` against a frozen etcd or agent, `-o json` in camelCase, status roles and restarts, heartbeats, version, completions and man.

// These tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// What one CLI run gave: exit code, stdout, stderr, and how long it took.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
    took: Duration,
}

/// Runs the CLI with none of the variables that choose a config, a socket
/// or a catalog, plus `env`.
fn ap_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let t = Instant::now();
    let out = Command::new(bin())
        .args(args)
        .env_remove("AUTOPILOT_CATALOG")
        .env_remove("AUTOPILOT_SOCKET")
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cli");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

fn ap(args: &[&str]) -> Run {
    ap_env(args, &[])
}

fn local(d: &Dir, name: &str) -> String {
    format!("local://{}", d.path(name).display())
}

#[test]
fn the_config_names_the_catalog_of_every_catalog_command() {
    let d = Dir::new("cli-config");
    let (url, other) = (local(&d, "cat"), local(&d, "other"));
    assert_eq!(
        ap(&["kv", "put", "--catalog", &url, "k", "from-config"]).code,
        Some(0)
    );
    assert_eq!(
        ap(&["kv", "put", "--catalog", &other, "k", "from-flag"]).code,
        Some(0)
    );
    let cfg = d.write(
        "c.json5",
        &format!("{{ catalog: '{url}', jobs: [{{ name: 'a', exec: 'true' }}] }}"),
    );
    let cfg = cfg.to_str().expect("utf-8");
    // Before: the config was ignored and the default catalog was read.
    let r = ap(&["-config", cfg, "kv", "get", "k"]);
    assert_eq!(
        (r.code, r.out.trim()),
        (Some(0), "from-config"),
        "{}",
        r.err
    );
    let r = ap(&["--config", cfg, "kv", "get", "k", "--catalog", &other]);
    assert_eq!(
        (r.code, r.out.trim()),
        (Some(0), "from-flag"),
        "an explicit --catalog wins"
    );
    let r = ap_env(&["kv", "get", "k"], &[("CONTAINERPILOT", cfg)]);
    assert_eq!(
        (r.code, r.out.trim()),
        (Some(0), "from-config"),
        "$CONTAINERPILOT, as the agent"
    );
    let r = ap(&["-config", cfg, "kv", "ls", "-o", "json"]);
    assert_eq!(r.out.trim(), r#"{"k":"from-config"}"#, "{}", r.err);
    let r = ap(&["-config", cfg, "catalog", "services", "-o", "json"]);
    assert_eq!((r.code, r.out.trim()), (Some(0), "[]"), "{}", r.err);
    let r = ap(&["-config", cfg, "leader", "nobody"]);
    assert_eq!(r.code, Some(1), "{}", r.err);
    let tpl = d.write("t.tmpl", "[{{ key \"k\" }}]");
    let r = ap(&[
        "-config",
        cfg,
        "template",
        "render",
        tpl.to_str().expect("utf-8"),
        "--once",
    ]);
    assert_eq!(
        (r.code, r.out.trim()),
        (Some(0), "[from-config]"),
        "{}",
        r.err
    );
    // `lock` creates the catalog the config names, and no other.
    let lock_url = local(&d, "locks");
    let lcfg = d.write(
        "l.json5",
        &format!("{{ catalog: '{lock_url}', jobs: [{{ name: 'a', exec: 'true' }}] }}"),
    );
    let r = ap(&[
        "-config",
        lcfg.to_str().expect("utf-8"),
        "lock",
        "l",
        "--",
        "true",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert!(d.path("locks").join("catalog.db").exists());
}

#[test]
fn the_config_etcd_block_reaches_catalog_commands() {
    let d = Dir::new("cli-config-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let ep = etcd.endpoint();
    autopilot_testkit::enable_auth(&ep, "agent", "pw-from-config", "/app");
    let cfg = d.write(
        "c.json5",
        &format!(
            "{{ catalog: 'etcd://{ep}/app', etcd: {{ username: 'agent', password: 'pw-from-config' }},\n  jobs: [{{ name: 'a', exec: 'true' }}] }}"
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let r = ap(&["-config", cfg, "kv", "put", "k", "v"]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    // Before: written to the default local catalog, not to etcd.
    let stored = autopilot_testkit::etcdctl(
        &ep,
        &[
            "--user",
            "root:rootpw",
            "get",
            "/app/kv/k",
            "--print-value-only",
        ],
    );
    assert_eq!(stored.trim(), "v");
    let r = ap(&["-config", cfg, "kv", "get", "k"]);
    assert_eq!((r.code, r.out.trim()), (Some(0), "v"), "{}", r.err);
    // Without the config's credentials, etcd refuses.
    let r = ap(&["kv", "get", "k", "--catalog", &format!("etcd://{ep}/app")]);
    assert_ne!(r.code, Some(0), "{}", r.out);
}

#[test]
fn read_only_commands_never_create_a_catalog() {
    let d = Dir::new("cli-ro");
    let url = local(&d, "none");
    let cases: &[&[&str]] = &[
        &["catalog", "services"],
        &["catalog", "instances", "web"],
        &["kv", "get", "k"],
        &["kv", "ls"],
        &["leader", "x"],
    ];
    for args in cases {
        let mut a = args.to_vec();
        a.extend(["--catalog", &url]);
        let r = ap(&a);
        // Before: exit 0 with an empty table, and the directory created.
        assert_eq!(r.code, Some(3), "{args:?}: {}{}", r.out, r.err);
        assert!(r.err.contains("no catalog at"), "{args:?}: {}", r.err);
        assert!(!d.path("none").exists(), "{args:?} created the catalog");
    }
}

#[test]
fn a_broken_config_is_reported_by_client_commands() {
    let d = Dir::new("cli-broken");
    let cfg = d.write(
        "bad.json5",
        "{\n  jobs: [\n    { name: 'a', exec: 'true', restarts: 'sometimes' },\n  ],\n}\n",
    );
    let cfg = cfg.to_str().expect("utf-8");
    let cases: &[&[&str]] = &[
        &["-reload"],
        &["reload"],
        &["-maintenance", "enable"],
        &["maintenance", "enable"],
        &["-putenv", "A=1"],
        &["putenv", "A=1"],
        &["-putmetric", "a=1"],
        &["putmetric", "a=1"],
        &["-ping"],
        &["ping"],
        &["status"],
        &["kv", "get", "k"],
        &["catalog", "services"],
    ];
    for args in cases {
        let mut a = vec!["-config", cfg];
        a.extend_from_slice(args);
        let r = ap(&a);
        // Before: the default socket was tried (exit 1, "cannot reach the agent").
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.err);
        assert!(
            r.err.contains(&format!("{cfg}:3:")) && r.err.contains("jobs[0].restarts"),
            "{args:?}: {}",
            r.err
        );
    }
    // A config that does not exist is an error too, not the default socket.
    let r = ap(&[
        "-config",
        &d.path("missing.json5").display().to_string(),
        "ping",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.err);
}

#[test]
fn exit_codes_tell_absent_from_usage_from_unreachable() {
    let d = Dir::new("cli-codes");
    let url = local(&d, "cat");
    let kv = |args: &[&str]| {
        let mut a = vec!["kv", "--catalog", &url];
        a.extend_from_slice(args);
        ap(&a).code
    };
    assert_eq!(kv(&["put", "k", "v"]), Some(0));
    assert_eq!(kv(&["get", "missing"]), Some(1));
    assert_eq!(kv(&["cas", "k", "wrong", "new"]), Some(1), "lost CAS");
    assert_eq!(kv(&["cas", "--absent", "k", "new"]), Some(1), "lost CAS");
    assert_eq!(kv(&["cas", "k", "v", "w"]), Some(0));
    assert_eq!(kv(&["del", "missing"]), Some(1));
    assert_eq!(kv(&["get"]), Some(2), "usage");
    assert_eq!(kv(&["get", "k", "--timeout", "soon"]), Some(2), "usage");
    assert_eq!(ap(&["leader", "x", "--catalog", &url]).code, Some(1));
    assert_eq!(
        ap(&["catalog", "services", "--catalog", "nosuch://x"]).code,
        Some(2)
    );
    // A lock held by another: --wait gives up with 1.
    let mut holder = Command::new(bin())
        .args(["lock", "--catalog", &url, "l", "--", "sh", "-c"])
        .arg(format!("touch {}; sleep 30", d.path("held").display()))
        .spawn()
        .expect("holder");
    assert!(wait_for(Duration::from_secs(10), || d
        .path("held")
        .exists()));
    let r = ap(&[
        "lock",
        "--catalog",
        &url,
        "--wait",
        "300ms",
        "l",
        "--",
        "true",
    ]);
    kill(holder.id() as i32, libc::SIGTERM);
    let _ = holder.wait();
    assert_eq!(r.code, Some(1), "{}", r.err);
    // Malformed arguments are usage errors, before any socket is tried.
    let none = d.path("none.sock").display().to_string();
    for args in [
        &["-putmetric", "a=x"][..],
        &["putmetric", "a"],
        &["-maintenance", "sideways"],
        &["putenv", "=x"],
    ] {
        let mut a = vec!["--socket", &none];
        a.extend_from_slice(args);
        assert_eq!(ap(&a).code, Some(2), "{args:?}");
    }
    // No agent at the socket: unreachable.
    let r = ap(&[
        "status",
        "--socket",
        &d.path("none.sock").display().to_string(),
    ]);
    assert_eq!(r.code, Some(3), "{}", r.err);
}

/// Every command against a frozen etcd returns 3 within its timeout + 1 s.
#[test]
fn a_frozen_etcd_times_out_with_exit_3() {
    let d = Dir::new("cli-frozen-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let url = format!("etcd://{}/frozen", etcd.endpoint());
    assert_eq!(
        ap(&["kv", "put", "--catalog", &url, "k", "v"]).code,
        Some(0)
    );
    let tpl = d.write("t.tmpl", "{{ key \"k\" }}");
    etcd.pause();
    let cases: &[&[&str]] = &[
        &["kv", "get", "k"],
        &["kv", "put", "k", "w"],
        &["kv", "ls"],
        &["catalog", "services"],
        &["catalog", "instances", "web"],
        &["catalog", "watch", "web"],
        &["leader", "x"],
        &["lock", "l", "--", "true"],
        &["template", "render", tpl.to_str().expect("utf-8"), "--once"],
    ];
    for args in cases {
        // --catalog belongs to the subcommand (`template render`'s to render).
        let at = if args[0] == "template" { 2 } else { 1 };
        let mut full: Vec<&str> = vec!["--timeout", "1s"];
        full.extend_from_slice(&args[..at]);
        full.extend(["--catalog", &url]);
        full.extend_from_slice(&args[at..]);
        let r = ap(&full);
        assert_eq!(r.code, Some(3), "{full:?}: {}{}", r.out, r.err);
        assert!(
            r.took < Duration::from_secs(2),
            "{full:?} took {:?}",
            r.took
        );
    }
    etcd.resume();
}

/// A socket whose agent never answers (accepted by the kernel, never read).
#[test]
fn a_frozen_agent_times_out_with_exit_3() {
    let d = Dir::new("cli-frozen-agent");
    let sock = d.path("ctl.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let s = sock.to_str().expect("utf-8");
    let cases: &[&[&str]] = &[
        &["status"],
        &["ping"],
        &["-ping"],
        &["reload"],
        &["maintenance", "enable"],
        &["putenv", "A=1"],
        &["putmetric", "a=1"],
    ];
    for args in cases {
        let mut a = vec!["--timeout", "1s", "--socket", s];
        a.extend_from_slice(args);
        let r = ap(&a);
        // Before: blocked for ever.
        assert_eq!(r.code, Some(3), "{args:?}: {}", r.err);
        assert!(
            r.took < Duration::from_secs(2),
            "{args:?} took {:?}",
            r.took
        );
    }
}

/// Every object key in a JSON document, recursively.
fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn camel(doc: &str, what: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(doc).unwrap_or_else(|e| panic!("{what}: {e}: {doc}"));
    let mut ks = Vec::new();
    keys(&v, &mut ks);
    for k in ks {
        assert!(
            !k.contains('_')
                && !k.contains('-')
                && k.chars().next().is_some_and(|c| c.is_ascii_lowercase()),
            "{what}: key {k:?} is not camelCase"
        );
    }
    v
}

const ELECTED: &str = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "db", exec: "sleep 120", main: true, port: @PORT@, interfaces: ["static:127.0.0.1"],
      health: { exec: "true", interval: "100ms", ttl: 2 },
      election: { name: "dbprimary", ttl: "2s" } },
    { name: "tick", when: { interval: "100ms" }, exec: "sh -c 'echo t >> @DIR@/ticks'" },
    { name: "crash", exec: "sh -c 'echo c >> @DIR@/crashes; exit 1'", restarts: 2 },
    { name: "ontick", when: { source: "tick", each: "exitSuccess" }, exec: "sh -c 'echo o >> @DIR@/ontick'" },
  ]
}"#;

#[test]
fn status_shows_role_and_term_and_counts_only_restarts_and_json_is_camel_case() {
    let d = Dir::new("cli-status");
    let a = start(&d, &ELECTED.replace("@PORT@", &free_port().to_string()));
    a.ready();
    let url = local(&d, "catalog");
    assert!(
        wait_for(Duration::from_secs(15), || {
            let s = a.status();
            s["jobs"][0]["election"]["leader"] == true
                && d.lines("ticks").len() >= 5
                && d.lines("crashes").len() >= 3
                && d.lines("ontick").len() >= 3
        }),
        "never elected, ticked and crashed: {}",
        a.log()
    );
    let (c, out) = a.cli(&["status", "-o", "json"]);
    assert_eq!(c, 0, "{out}");
    let v = camel(&out, "status");
    let job = |n: &str| {
        v["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|j| j["name"] == n))
            .cloned()
            .unwrap_or_default()
    };
    // Before: every periodic run counted as a restart.
    assert_eq!(job("tick")["restarts"], 0, "periodic runs are not restarts");
    assert_eq!(job("crash")["restarts"], 2);
    assert_eq!(
        job("ontick")["restarts"],
        0,
        "triggered runs are not restarts"
    );
    let term = job("db")["election"]["term"].as_u64().expect("term");
    assert_eq!(job("db")["election"]["role"], "leader");
    let (c, table) = a.cli(&["status"]);
    assert_eq!(c, 0);
    let row = table
        .lines()
        .find(|l| l.starts_with("db "))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cols.windows(2).any(|w| w == ["leader", &term.to_string()]),
        "ROLE and TERM: {table}"
    );
    let header: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        header.contains(&"ROLE") && header.contains(&"TERM"),
        "{table}"
    );
    // `--json` is `-o json`; every JSON output is camelCase.
    assert_eq!(
        a.cli(&["catalog", "services", "--json"]).1,
        a.cli(&["catalog", "services", "-o", "json"]).1
    );
    let (c, out) = a.cli(&["catalog", "instances", "db", "-o", "json"]);
    assert_eq!(c, 0, "{out}");
    let inst = camel(&out, "instances");
    assert!(
        inst[0]["lastHeartbeat"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{out}"
    );
    let (_, out) = a.cli(&["leader", "dbprimary", "-o", "json"]);
    assert_eq!(camel(&out, "leader")["term"], term);
    camel(&a.cli(&["catalog", "services", "-o", "json"]).1, "services");
    camel(&a.cli(&["version", "-o", "json"]).1, "version");
    camel(
        &a.cli(&["maintenance", "enable", "-o", "json"]).1,
        "maintenance",
    );
    camel(&a.cli(&["ping", "-o", "json"]).1, "ping");
    assert_eq!(
        ap(&["kv", "put", "--catalog", &url, "k", "v"]).code,
        Some(0)
    );
    camel(
        &ap(&["kv", "get", "--catalog", &url, "k", "-o", "json"]).out,
        "kv get",
    );
}

/// Milliseconds since midnight of an RFC 3339 `...THH:MM:SS.mmmZ` time.
fn ms_of_day(t: &str) -> Option<i64> {
    let time = t.split_once('T')?.1.strip_suffix('Z')?;
    let (hms, ms) = time.split_once('.')?;
    let mut p = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (p.next()??, p.next()??, p.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

#[test]
fn catalog_instances_shows_the_real_heartbeat_on_etcd() {
    let d = Dir::new("cli-heartbeat");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let url = format!("etcd://{}/hb", etcd.endpoint());
    let cfg = r#"{
  control: { socket: "@SOCKET@" },
  etcd: { leaseTTL: "3s" },
  jobs: [{ name: "web", exec: "sleep 120", port: @PORT@, interfaces: ["static:127.0.0.1"],
           health: { exec: "true", interval: "100ms", ttl: 3 } }]
}"#;
    let cfg = cfg.replace("@PORT@", &free_port().to_string());
    let a = start_with(&d, &cfg, &[], &[("AUTOPILOT_CATALOG", &url)]);
    a.ready();
    let beat = || {
        let r = ap(&[
            "catalog",
            "instances",
            "web",
            "-o",
            "json",
            "--catalog",
            &url,
        ]);
        let v: serde_json::Value = serde_json::from_str(&r.out).ok()?;
        ms_of_day(v[0]["lastHeartbeat"].as_str()?)
    };
    let mut first = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            first = beat();
            first.is_some()
        }),
        "never registered: {}",
        a.log()
    );
    let first = first.expect("first");
    // Keep-alives every second (TTL/3): the heartbeat moves on. Before: it
    // stayed at the registration time.
    assert!(
        wait_for(Duration::from_secs(10), || beat()
            .is_some_and(|b| (b - first).rem_euclid(86_400_000) >= 2000)),
        "the heartbeat never moved past {first}"
    );
}

#[test]
fn putmetric_records_every_observation() {
    let d = Dir::new("cli-putmetric");
    let port = free_port();
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "app", exec: "sleep 60" }}],
  telemetry: {{ port: {port}, interfaces: ["static:127.0.0.1"], metrics: [
    {{ name: "hits", help: "hits", type: "counter" }},
    {{ name: "lat", help: "latency", type: "histogram" }},
  ] }},
}}"#
    );
    let a = start(&d, &cfg);
    a.ready();
    let (c, out) = a.cli(&["putmetric", "hits=1", "hits=2", "lat=0.1", "lat=0.2"]);
    assert_eq!(c, 0, "{out}");
    let (c, out) = a.cli(&["-putmetric", "hits=4", "-putmetric", "hits=8"]);
    assert_eq!(c, 0, "{out}");
    let (_, body) = http_tcp(&format!("127.0.0.1:{port}"), "/metrics").expect("metrics");
    let value = |name: &str| {
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    // Before: the last value of each name only (hits 2 + 8, one observation).
    assert_eq!(value("hits").as_deref(), Some("15"), "{body}");
    assert_eq!(value("lat_count").as_deref(), Some("2"), "{body}");
}

#[test]
fn version_completions_and_man_page() {
    let r = ap(&["version"]);
    assert_eq!(r.code, Some(0));
    let lines: Vec<&str> = r.out.lines().collect();
    assert!(lines[0].starts_with("autopilot "), "{}", r.out);
    let commit = lines
        .iter()
        .find_map(|l| l.strip_prefix("commit: "))
        .expect("commit");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    let built = lines
        .iter()
        .find_map(|l| l.strip_prefix("built: "))
        .expect("built");
    assert!(built == "unknown" || built.len() == 10, "{built}");
    assert_eq!(ap(&["-version"]).out, r.out);
    for (shell, mark) in [
        ("bash", "_autopilot()"),
        ("zsh", "#compdef autopilot"),
        ("fish", "complete -c autopilot"),
    ] {
        let r = ap(&["completions", shell]);
        assert_eq!(r.code, Some(0), "{shell}");
        assert!(
            r.out.contains(mark) && r.out.contains("catalog"),
            "{shell}: {}",
            r.out
        );
    }
    let r = ap(&["man"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.out.contains(".TH autopilot") && r.out.contains("Exit codes"),
        "{}",
        r.out
    );
}

/// An etcd that is down (nothing listens on its port) is unreachable: exit
/// 3 within `--timeout`, naming the endpoint; not 2, which says "fix your
/// config".
#[test]
fn a_down_etcd_exits_3_within_the_timeout() {
    // Held for the whole test: refused, and no etcd of another test can take it.
    let down = autopilot_testkit::refused_port();
    let port = down.port;
    let url = format!("etcd://127.0.0.1:{port}/down");
    let cases: &[&[&str]] = &[
        &["kv", "get", "k"],
        &["kv", "put", "k", "v"],
        &["leader", "x"],
        &["catalog", "services"],
        &["lock", "l", "--", "true"],
    ];
    for args in cases {
        let mut full: Vec<&str> = vec!["--timeout", "2s", args[0], "--catalog", &url];
        full.extend_from_slice(&args[1..]);
        let r = ap(&full);
        assert_eq!(r.code, Some(3), "{full:?}: {}", r.err);
        assert!(r.err.contains(&port.to_string()), "{}", r.err);
        assert!(
            r.took < Duration::from_secs(3),
            "{full:?} took {:?}",
            r.took
        );
    }
    // A config problem stays a config problem: a CA file that is not PEM,
    // and an endpoint that is not a URL.
    let d = Dir::new("cli-etcd-down");
    let junk = d.write("ca.pem", "not a certificate\n");
    let r = ap_env(
        &["kv", "get", "--catalog", &url, "k"],
        &[("AUTOPILOT_ETCD_CA", junk.to_str().expect("utf-8"))],
    );
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(r.err.contains("ca.pem"), "{}", r.err);
    for bad in ["etcd://[::1/x", "etcd://127.0.0.1:99999/x"] {
        let r = ap(&["kv", "get", "--catalog", bad, "k"]);
        assert_eq!(r.code, Some(2), "{bad}: {}", r.err);
        assert!(r.err.contains("invalid endpoint"), "{}", r.err);
    }
}

/// The cluster's revision, which every write bumps.
fn etcd_revision(endpoint: &str) -> u64 {
    let out = autopilot_testkit::etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status json");
    v[0]["Status"]["header"]["revision"]
        .as_u64()
        .expect("a revision")
}

/// Reading commands write nothing to etcd (no start-up probe key): the
/// revision stays where it was, so no watcher wakes and read-only etcd
/// users can run them.
#[test]
fn read_only_commands_write_nothing_to_etcd() {
    let d = Dir::new("cli-etcd-ro");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let url = format!("etcd://{ep}/ro");
    assert_eq!(
        ap(&["kv", "put", "--catalog", &url, "k", "v"]).code,
        Some(0)
    );
    let before = etcd_revision(&ep);
    let cases: &[(&[&str], i32)] = &[
        (&["kv", "get", "k"], 0),
        (&["kv", "ls"], 0),
        (&["leader", "x"], 1),
        (&["catalog", "services"], 0),
        (&["catalog", "instances", "web"], 0),
    ];
    for (args, code) in cases {
        let mut full: Vec<&str> = vec![args[0], "--catalog", &url];
        full.extend_from_slice(&args[1..]);
        let r = ap(&full);
        assert_eq!(r.code, Some(*code), "{full:?}: {}", r.err);
        assert_eq!(etcd_revision(&ep), before, "{full:?} wrote to etcd");
    }
    // The measure works: a write moves it.
    assert_eq!(
        ap(&["kv", "put", "--catalog", &url, "k", "w"]).code,
        Some(0)
    );
    assert!(etcd_revision(&ep) > before);
}

/// A user whose role may only read the prefix can run the reading
/// commands (they used to fail their start-up write probe, exit 2); a
/// write is still refused as a config problem.
#[test]
fn a_read_only_etcd_user_runs_the_reading_commands() {
    let d = Dir::new("cli-etcd-reader");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let ctl = |args: &[&str]| autopilot_testkit::etcdctl(&ep, args);
    ctl(&["put", "/ro/kv/k", "v"]);
    ctl(&["user", "add", "root:rootpw"]);
    ctl(&["user", "add", "reader:readerpw"]);
    ctl(&["role", "add", "readers"]);
    ctl(&[
        "role",
        "grant-permission",
        "readers",
        "--prefix=true",
        "read",
        "/ro/",
    ]);
    ctl(&["user", "grant-role", "reader", "readers"]);
    ctl(&["auth", "enable"]);
    let url = format!("etcd://{ep}/ro");
    let env = [
        ("AUTOPILOT_ETCD_USERNAME", "reader"),
        ("AUTOPILOT_ETCD_PASSWORD", "readerpw"),
    ];
    let r = ap_env(&["kv", "get", "--catalog", &url, "k"], &env);
    assert_eq!((r.code, r.out.trim()), (Some(0), "v"), "{}", r.err);
    let r = ap_env(&["kv", "ls", "--catalog", &url], &env);
    assert_eq!(r.code, Some(0), "{}", r.err);
    let r = ap_env(&["leader", "--catalog", &url, "x"], &env);
    assert_eq!(r.code, Some(1), "nobody leads: {}", r.err);
    let r = ap_env(&["catalog", "services", "--catalog", &url], &env);
    assert_eq!(r.code, Some(0), "{}", r.err);
    let tpl = d.write("t.tmpl", "k={{ key \"k\" }}");
    let r = ap_env(
        &[
            "template",
            "render",
            "--catalog",
            &url,
            tpl.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert_eq!((r.code, r.out.as_str()), (Some(0), "k=v"), "{}", r.err);
    let r = ap_env(&["kv", "put", "--catalog", &url, "k", "w"], &env);
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(r.err.contains("not allowed"), "{}", r.err);
}

/// Failures that are not "absent" never exit 1, which scripts read as
/// "absent": a template or flag that cannot be used exits 2, a locked
/// command that cannot be started 127 (not found) or 126, as `env` and
/// `flock` do.
#[test]
fn errors_that_are_not_absence_never_exit_1() {
    let d = Dir::new("cli-not-absent");
    let url = local(&d, "cat");
    let render = |args: &[&str]| {
        let mut full = vec!["template", "render", "--catalog", &url, "--timeout", "2s"];
        full.extend_from_slice(args);
        ap(&full)
    };
    let bad = d.write("bad.tmpl", "a\n {{ range }}");
    let r = render(&[bad.to_str().expect("utf-8")]);
    assert_eq!(r.code, Some(2), "a template that does not parse: {}", r.err);
    assert!(r.err.contains("bad.tmpl:2:"), "{}", r.err);
    let missing = d.path("missing.tmpl").display().to_string();
    let r = render(&[&missing]);
    assert_eq!(r.code, Some(2), "a missing template: {}", r.err);
    assert!(r.err.contains("missing.tmpl"), "{}", r.err);
    let good = d.write("good.tmpl", "x");
    let good = good.to_str().expect("utf-8");
    let r = render(&[good, "--perms", "999"]);
    assert_eq!(r.code, Some(2), "bad --perms: {}", r.err);
    assert!(r.err.contains("--perms"), "{}", r.err);
    // The template fails while rendering (a file it was not granted).
    let secret = d.write("secret", "s3cret");
    let f = d.write(
        "f.tmpl",
        &format!("{{{{ file \"{}\" }}}}", secret.display()),
    );
    let r = render(&[f.to_str().expect("utf-8")]);
    assert_eq!(r.code, Some(2), "a template that fails: {}", r.err);
    assert!(!r.out.contains("s3cret"));
    // A command that cannot be started.
    let r = ap(&["lock", "--catalog", &url, "l", "--", "/nonexistent/cmd"]);
    assert_eq!(r.code, Some(127), "{}", r.err);
    let r = ap(&[
        "lock",
        "--catalog",
        &url,
        "l",
        "--",
        secret.to_str().expect("utf-8"),
    ]);
    assert_eq!(r.code, Some(126), "not executable: {}", r.err);
    // The lock was released: the next holder gets it at once.
    let r = ap(&["lock", "--catalog", &url, "--wait", "2s", "l", "--", "true"]);
    assert_eq!(r.code, Some(0), "{}", r.err);
}
