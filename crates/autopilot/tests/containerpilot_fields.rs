//! ContainerPilot 3.8 configs run unchanged: every field it accepts loads, fields autopilot cannot honour are named once in a warning, and a `consul` block without `catalog` runs on the default catalog.
// The tests run the real binary (through setpriv when root).
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_config::json5::{Kind, Node};
use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/containerpilot-all-fields.json5"
);

/// Every field of ContainerPilot 3.8's config structs (config, jobs,
/// watches, telemetry, control, logger, consul), as paths: `[]` stands for
/// any array element.
const CP_FIELDS: &[&str] = &[
    "consul",
    "consul.address",
    "consul.scheme",
    "consul.token",
    "consul.tls",
    "consul.tls.cafile",
    "consul.tls.capath",
    "consul.tls.clientcert",
    "consul.tls.clientkey",
    "consul.tls.servername",
    "consul.tls.verify",
    "logging",
    "logging.level",
    "logging.format",
    "logging.output",
    "stopTimeout",
    "control",
    "control.socket",
    "jobs",
    "jobs[].name",
    "jobs[].exec",
    "jobs[].port",
    "jobs[].interfaces",
    "jobs[].tags",
    "jobs[].initial_status",
    "jobs[].consul",
    "jobs[].consul.enableTagOverride",
    "jobs[].consul.deregisterCriticalServiceAfter",
    "jobs[].health",
    "jobs[].health.exec",
    "jobs[].health.timeout",
    "jobs[].health.interval",
    "jobs[].health.ttl",
    "jobs[].health.logging",
    "jobs[].health.logging.raw",
    "jobs[].timeout",
    "jobs[].restarts",
    "jobs[].stopTimeout",
    "jobs[].when",
    "jobs[].when.interval",
    "jobs[].when.source",
    "jobs[].when.once",
    "jobs[].when.each",
    "jobs[].when.timeout",
    "jobs[].logging",
    "jobs[].logging.raw",
    "watches",
    "watches[].name",
    "watches[].interval",
    "watches[].tag",
    "watches[].dc",
    "telemetry",
    "telemetry.port",
    "telemetry.interfaces",
    "telemetry.tags",
    "telemetry.metrics",
    "telemetry.metrics[].namespace",
    "telemetry.metrics[].subsystem",
    "telemetry.metrics[].name",
    "telemetry.metrics[].help",
    "telemetry.metrics[].type",
];

fn paths(node: &Node, at: &str, out: &mut BTreeSet<String>) {
    match &node.kind {
        Kind::Object(entries) => {
            for (k, _, v) in entries {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        Kind::Array(items) => {
            for v in items {
                paths(v, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

fn fixture_env(app_port: u16, telemetry_port: u16) -> BTreeMap<String, String> {
    [
        ("APP_PORT", app_port.to_string()),
        ("TELEMETRY_PORT", telemetry_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn the_fixture_uses_every_containerpilot_field_and_loads() {
    let env = fixture_env(8080, 9090);
    let rendered = autopilot_config::render(Path::new(FIXTURE), &env).expect("renders");
    let tree = autopilot_config::json5::parse(&rendered).expect("json5");
    let mut used = BTreeSet::new();
    paths(&tree, "", &mut used);
    let missing: Vec<&&str> = CP_FIELDS.iter().filter(|f| !used.contains(**f)).collect();
    assert!(missing.is_empty(), "fixture misses {missing:?}");

    let cfg = autopilot_config::load(Path::new(FIXTURE), &env).expect("loads");
    assert_eq!(cfg.jobs.len(), 6);
    let warned: Vec<String> = cfg.warnings.iter().map(|w| w.field.clone()).collect();
    assert_eq!(
        warned,
        ["watches[0].dc", "jobs[1].consul.enableTagOverride"],
        "the fields autopilot cannot honour are named"
    );
}

#[test]
fn the_all_fields_config_runs_to_sigterm() {
    let d = Dir::new("cp-all");
    let (app_port, telemetry_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(FIXTURE).expect("fixture");
    let env = fixture_env(app_port, telemetry_port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut a = start_with(&d, &text, &[], &env);
    a.ready();
    assert!(
        wait_for(Duration::from_secs(15), || {
            let st = a.status();
            st["jobs"]
                .as_array()
                .and_then(|j| j.iter().find(|j| j["name"] == "app"))
                .is_some_and(|j| j["health"] == "healthy")
        }),
        "app never turned healthy: {}",
        a.log()
    );
    assert!(d.path("prestart").exists(), "preStart ran");
    let addr = format!("127.0.0.1:{telemetry_port}");
    let metrics = http_tcp(&addr, "/metrics").expect("telemetry answers");
    assert_eq!(metrics.0, 200);
    assert!(metrics.1.contains("app_queue_depth"), "{}", metrics.1);
    assert!(wait_for(Duration::from_secs(10), || d
        .read("ticks")
        .lines()
        .count()
        >= 2));

    a.signal(libc::SIGTERM);
    let code = a.wait(Duration::from_secs(15));
    let log = a.log();
    assert!(code.is_some(), "stops on SIGTERM: {log}");
    assert!(d.path("prestop").exists() && d.path("poststop").exists());
    for field in [
        "watches[0].dc",
        "jobs[1].consul.enableTagOverride",
        "field=consul",
    ] {
        let n = log.lines().filter(|l| l.contains(field)).count();
        assert_eq!(n, 1, "one warning names {field}: {log}");
    }
    assert!(log.contains("all jobs stopped"), "{log}");
}

/// Runs the binary as a user whose default catalog is under `home`: root's
/// default is the machine's /var/lib/autopilot, which a test must not
/// touch, so as root the agent runs as `nobody` through setpriv.
fn start_unprivileged(d: &Dir, home: &Path, config: &Path) -> Agent {
    let run = d.child("run");
    let out = d.path("agent.log");
    let log = std::fs::File::create(&out).expect("log");
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin(),
        ]);
        c
    } else {
        Command::new(bin())
    };
    if root {
        for p in [&d.0, &run.0, &home.to_path_buf()] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).expect("chown");
        }
        std::os::unix::fs::chown(config, Some(65534), Some(65534)).expect("chown");
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).expect("chown");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run.0, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    cmd.arg("-config")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", &run.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let child = cmd.spawn().expect("spawn autopilot");
    Agent {
        child: Some(child),
        socket: d.path("ctl.sock"),
        config: config.to_path_buf(),
        out,
        started: Instant::now(),
    }
}

/// A config with `consul` and no `catalog` runs on the Consul backend at
/// that address (it once exited with "the Consul backend is not available
/// yet", then ran on the default catalog with a warning). A server that is
/// not up yet is an outage the agent rides out, not a start-up error.
#[test]
fn a_consul_block_without_catalog_runs_on_the_consul_backend() {
    let d = Dir::new("cp-consul");
    let home = d.child("home");
    let socket = d.path("ctl.sock");
    let port = autopilot_testkit::free_port();
    let config = d.write(
        "c.json5",
        &format!(
            r#"{{ consul: "127.0.0.1:{port}", control: {{ socket: "{}" }},
                 jobs: [{{ name: "app", exec: "sleep 600" }}] }}"#,
            socket.display()
        ),
    );
    let mut a = start_unprivileged(&d, &home.0, &config);
    a.ready();
    let st = a.status();
    assert_eq!(
        st["catalog"]["url"],
        format!("consul://127.0.0.1:{port}/autopilot"),
        "{st}"
    );
    assert!(
        !home.path(".local/state/autopilot/catalog.db").exists(),
        "the default catalog is not used"
    );
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some(), "{}", a.log());
    let log = a.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("field=consul")),
        "no warning: the consul block is used\n{log}"
    );
}
