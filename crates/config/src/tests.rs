use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use autopilot_core::{EventCode, Restarts, Trigger};

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = [("PORT", "8080"), ("EQ", "a=b")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_str(Path::new("/etc/app.json5"), text, &env)
}

#[test]
fn full_containerpilot_example() {
    let c = load(
        r#"{
  consul: "localhost:8500",
  logging: { level: "INFO", format: "default", output: "stdout" },
  stopTimeout: 7,
  jobs: [
    {
      name: "app",
      exec: "/bin/app --port {{ .PORT }} --opt '{{ .EQ }}'",
      restarts: "unlimited",
      port: {{ .PORT }},
      when: { source: "setup", once: "exitSuccess", timeout: "60s" },
      health: { exec: "/usr/bin/curl --fail -s http://localhost/app", interval: 5, ttl: 10, timeout: "5s" },
      tags: ["app", "prod"],
      interfaces: ["eth0", "eth1[1]", "192.168.0.0/16", "static:192.168.1.100",],
      consul: { enableTagOverride: true, deregisterCriticalServiceAfter: "10m" },
    },
    { name: "setup", exec: ["/usr/local/bin/preStart-script.sh"], restarts: "never" },
    { name: "preStop", when: { source: "app", once: "stopping" }, exec: "/stop.sh", restarts: 2 },
    { name: "sensor", exec: "/sensor.sh", when: { interval: "1500ms" } },
    { name: "reload", exec: "/r.sh", when: { source: "watch.app", each: "changed" } },
    { name: "hup", exec: "/h.sh", when: { source: "SIGHUP" } },
    { name: "advert", port: 9000, initial_status: "passing" },
  ],
  watches: [{ name: "app", interval: 10 }],
  control: { socket: "/tmp/cp.sock" },
  telemetry: { port: 9090, interfaces: "eth0", metrics: [{ namespace: "ns", subsystem: "sub", name: "m", help: "h", type: "counter" }, { name: "solo", type: "gauge" }] },
}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = &c.jobs[0];
    assert_eq!(app.exec, vec!["/bin/app", "--port", "8080", "--opt", "a=b"]);
    assert_eq!(app.port, Some(8080));
    assert_eq!(app.restarts, Restarts::Unlimited);
    assert_eq!(app.stop_timeout, Duration::from_secs(7));
    assert_eq!(
        app.health.as_ref().map(|h| h.interval),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        app.trigger,
        Trigger::Event {
            source: "setup".into(),
            code: EventCode::ExitSuccess,
            each: false,
            timeout: Some(Duration::from_secs(60))
        }
    );
    assert_eq!(c.jobs[2].restarts, Restarts::Count(2));
    assert_eq!(
        c.jobs[3].trigger,
        Trigger::Interval(Duration::from_millis(1500))
    );
    assert_eq!(c.jobs[3].timeout, Some(Duration::from_millis(1500)));
    assert_eq!(c.jobs[3].restarts, Restarts::Unlimited);
    assert!(matches!(
        &c.jobs[5].trigger,
        Trigger::Event {
            code: EventCode::Signal,
            each: true,
            ..
        }
    ));
    assert!(c.jobs[6].exec.is_empty());
    let t = c.telemetry.expect("telemetry");
    assert_eq!(t.metrics[0].full_name, "ns_sub_m");
    assert_eq!(t.metrics[1].full_name, "solo");
    assert_eq!(c.consul.map(|c| c.address), Some("localhost:8500".into()));
    assert_eq!(c.control.socket, Some("/tmp/cp.sock".into()));
}

/// Each bad config, the `line:column: field` it must point at, and a part of the message.
#[test]
fn bad_configs_table() {
    let cases: &[(&str, &str, &str)] = &[
        ("{ jobz: [] }", "1:3: jobz", "unknown field"),
        (
            "{ jobs: [{ name: 'a', exec: 'x', restart: 1 }] }",
            "1:34: jobs[0].restart",
            "did you mean \"restarts\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 5 }] }",
            "1:29: jobs[0].exec",
            "expected a string or an array of strings, found a number",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x' }, {\n name: 'a', exec: 'y' }] }",
            "1:36: jobs[1].name",
            "duplicate job name \"a\"",
        ),
        (
            "{ jobs: [\n {name: 'a', exec: 'x'},\n {name: 'b', exec: 'x'},\n {name: 'c', exec: 'x', when: {interval: '1s', once: 'healthy'}}] }",
            "4:32: jobs[2].when.interval",
            "cannot be combined with 'once'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: {source: 'nope', once: 'healthy'} }] }",
            "1:49: jobs[0].when.source",
            "\"nope\" names no job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: {source: 'watch.db', each: 'changed'} }] }",
            "1:49: jobs[0].when.source",
            "names no job, watch",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: {source: 'a', once: 'healthy', each: 'healthy'} }] }",
            "1:71: jobs[0].when.each",
            "only one of",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: {source: 'a', once: 'bogus'} }] }",
            "1:60: jobs[0].when.once",
            "unknown event \"bogus\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', restarts: 'sometimes' }] }",
            "1:44: jobs[0].restarts",
            "\"never\", \"unlimited\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', restarts: -1 }] }",
            "1:44: jobs[0].restarts",
            "non-negative",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', timeout: '10parsecs' }] }",
            "1:43: jobs[0].timeout",
            "unknown unit",
        ),
        (
            "{ jobs: [{ name: 'web', exec: 'x', port: 80 }] }",
            "1:36: jobs[0].port",
            "needs 'health'",
        ),
        (
            "{ jobs: [{ name: 'web', exec: 'x', port: 70000, health: {exec: 'c', interval: 1, ttl: 2} }] }",
            "1:42: jobs[0].port",
            "out of range",
        ),
        (
            "{ jobs: [{ name: 'Web', exec: 'x', port: 80, initial_status: 'passing' }] }",
            "1:18: jobs[0].name",
            "not a valid service name",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {exec: 'c', interval: 1} }] }",
            "1:42: jobs[0].health.ttl",
            "required",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'sh -c \"unbalanced' }] }",
            "1:29: jobs[0].exec",
            "unbalanced quotes",
        ),
        (
            "{ jobs: [{ name: 'a', exec: '' }] }",
            "1:29: jobs[0].exec",
            "the command is empty",
        ),
        (
            "{ jobs: [{ name: 'a' }] }",
            "1:10: jobs[0].exec",
            "needs an 'exec'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', main: 'yes' }] }",
            "1:40: jobs[0].main",
            "expected true or false",
        ),
        ("{ jobs: { name: 'a' } }", "1:9: jobs", "expected an array"),
        (
            "{ jobs: [{ name: 'a', exec: 'x' }] ",
            "1:36: (syntax)",
            "missing '}'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: x }] }",
            "1:29: (syntax)",
            "strings must be quoted",
        ),
        (
            "{ logging: { level: 'LOUD' } }",
            "1:21: logging.level",
            "unknown level",
        ),
        (
            "{ watches: [{ name: 'db' }] }",
            "1:13: watches[0].interval",
            "required",
        ),
        (
            "{ telemetry: { metrics: [{ name: 'm', type: 'meter' }] } }",
            "1:45: telemetry.metrics[0].type",
            "unknown metric type",
        ),
        (
            "{ catalog: 'zookeeper://x' }",
            "1:12: catalog",
            "not a catalog URL",
        ),
        (
            "{ stopTimeout: 'soon' }",
            "1:16: stopTimeout",
            "not a valid duration",
        ),
        (
            "{\n  jobs: [{ name: {{ .X",
            "2:18: template",
            "unclosed action",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: { source: 'b', once: 'exitSuccess' } },\n { name: 'b', exec: 'y', when: { source: 'a', once: 'stopped' } }] }",
            "1:50: jobs[0].when.source",
            "'when' cycle: \"a\" -> \"b\" -> \"a\"",
        ),
        (
            "{ jobs: [{ name: 'z', exec: 'x' }, { name: 'a', exec: 'x', when: { source: 'a', each: 'stopping' } }] }",
            "1:76: jobs[1].when.source",
            "waits on its own event",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: { source: 'b', once: 'timerExpired' } }, { name: 'b', exec: 'y' }] }",
            "1:50: jobs[0].when.source",
            "no 'when.timeout'",
        ),
        (
            "{ jobs: [{ name: '../../etc', exec: 'x' }] }",
            "1:18: jobs[0].name",
            "not a valid job name: it contains a path separator",
        ),
        (
            "{ jobs: [{ exec: '/usr/bin/app' }] }",
            "1:10: jobs[0].name",
            "cannot name the job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: '..' } }] }",
            "1:52: jobs[0].election.name",
            "not a valid election name",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', when: { interval: 1e20 } }] }",
            "1:52: jobs[0].when.interval",
            "between 0 and 10 years",
        ),
        (
            "{ stopTimeout: '100000000000h' }",
            "1:16: stopTimeout",
            "between 0 and 10 years",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x\\u0000y' }] }",
            "1:29: jobs[0].exec",
            "NUL byte",
        ),
    ];
    let mut failures = Vec::new();
    for (text, at, msg) in cases {
        match load(text) {
            Ok(_) => failures.push(format!("{text}: loaded, expected an error")),
            Err(e) => {
                let s = e.to_string();
                let want_prefix = format!("/etc/app.json5:{at}: ");
                if !s.starts_with(&want_prefix) || !s.contains(msg) {
                    failures.push(format!(
                        "{text}\n   got: {s}\n  want: {want_prefix}...{msg}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn waits_that_can_fire_are_not_cycles() {
    // b gives up after its timeout and then publishes timerExpired and
    // stopped, so a's wait on it can end even though b waits on a.
    load(
        "{ jobs: [{ name: 'a', exec: 'x', when: { source: 'b', once: 'stopped' } },
                  { name: 'b', exec: 'y', when: { source: 'a', once: 'healthy', timeout: '1s' } },
                  { name: 'c', exec: 'z', when: { source: 'b', once: 'timerExpired' } }] }",
    )
    .expect("no cycle");
}

#[test]
fn watches_of_one_service_with_different_tags_keep_apart() {
    let c = load(
        r#"{ watches: [{ name: "db", interval: 5 }, { name: "db", tag: "primary", interval: 5, debounce: "200ms" }, { name: "web", tag: "x", interval: 1 }],
        jobs: [{ name: "a", exec: "x", when: { source: "watch.db.primary", each: "changed" } },
               { name: "b", exec: "x", when: { source: "watch.db", each: "changed" } },
               { name: "c", exec: "x", when: { source: "watch.web", each: "healthy" } }] }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<&str> = c.watches.iter().map(|w| w.source.as_str()).collect();
    assert_eq!(sources, vec!["watch.db", "watch.db.primary", "watch.web"]);
    assert_eq!(c.watches[1].debounce, Duration::from_millis(200));
    let e = load(r#"{ watches: [{ name: "db", interval: 5 }, { name: "db", interval: 9 }] }"#)
        .unwrap_err();
    assert!(e.to_string().contains("duplicate watch of \"db\""), "{e}");
}

#[test]
fn elections_and_roles() {
    let c = load(
        r#"{ jobs: [{ name: "redis", exec: "redis-server", port: 6379, health: { exec: "true", interval: 1, ttl: 3 },
            election: { name: "redis-primary", ttl: "5s" },
            roles: { leader: { name: "redis", tags: ["primary"] }, follower: { name: "redis-replica" } } },
          { name: "on-elected", exec: "true", when: { source: "redis", each: "elected" } },
          { name: "on-change", exec: "true", when: { source: "redis", each: "leaderChanged" } }] }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = c.jobs[0].election.as_ref().expect("election");
    assert_eq!(
        (e.name.as_str(), e.ttl),
        ("redis-primary", Duration::from_secs(5))
    );
    let r = c.jobs[0].roles.as_ref().expect("roles");
    assert_eq!(r.leader.tags.as_deref(), Some(&["primary".to_string()][..]));
    assert_eq!(r.follower.name.as_deref(), Some("redis-replica"));
    for (text, want) in [
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: 'e', ttl: '1s' } }] }",
            "jobs[0].election.ttl: must be at least 2s",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { ttl: '5s' } }] }",
            "jobs[0].election.name: this field is required",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: 'e' }, roles: {} }] }",
            "jobs[0].roles: 'roles' name the catalog entry",
        ),
        (
            "{ jobs: [{ name: 'ab', exec: 'x', port: 1, initial_status: 'passing', election: { name: 'e' }, roles: { leader: { name: 'Bad' } } }] }",
            "jobs[0].roles.leader.name",
        ),
    ] {
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn path_resolution_order() {
    let mut env = BTreeMap::new();
    assert!(matches!(resolve_path(None, &env), Err(ConfigError::NoPath)));
    env.insert("AUTOPILOT_CONFIG".to_string(), "/b".to_string());
    assert_eq!(resolve_path(None, &env).ok(), Some("/b".into()));
    env.insert("CONTAINERPILOT".to_string(), "/a".to_string());
    assert_eq!(resolve_path(None, &env).ok(), Some("/a".into()));
    assert_eq!(
        resolve_path(Some(Path::new("/c")), &env).ok(),
        Some("/c".into())
    );
}

#[test]
fn native_health_checks() {
    let c = load(
        r#"{ jobs: [
          { name: "web", exec: "x", port: 80,
            health: { http: "http://127.0.0.1:8080/health?full=1", expect: 204, interval: 1, ttl: 3, timeout: "500ms" } },
          { name: "db", exec: "y", port: 5432, health: { tcp: "[::1]:5432", interval: 1, ttl: 3 } },
          { name: "api", exec: "z", port: 81, health: { http: "http://localhost", interval: 1, ttl: 3 } },
          { name: "cache", exec: "w", port: 82,
            health: { exec: "true", interval: 1, ttl: 3, logging: { raw: true } } },
        ] }"#,
    )
    .expect("loads");
    let checks: Vec<_> = c
        .jobs
        .iter()
        .map(|j| j.health.as_ref().map(|h| h.check.clone()))
        .collect();
    assert_eq!(
        checks,
        vec![
            Some(HealthCheck::Http {
                url: "http://127.0.0.1:8080/health?full=1".into(),
                expect: Some(204)
            }),
            Some(HealthCheck::Tcp {
                address: "[::1]:5432".into()
            }),
            Some(HealthCheck::Http {
                url: "http://localhost".into(),
                expect: None
            }),
            Some(HealthCheck::Exec {
                argv: vec!["true".into()],
                raw: true
            }),
        ]
    );
    assert_eq!(
        c.jobs[0].health.as_ref().map(|h| h.timeout),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        http_url("http://127.0.0.1:8080/health?full=1").ok(),
        Some(("127.0.0.1".into(), 8080, "/health?full=1".into()))
    );
    assert_eq!(
        http_url("http://[::1]/").ok(),
        Some(("::1".into(), 80, "/".into()))
    );
    assert_eq!(host_port("[::1]:5432").ok(), Some(("::1".into(), 5432)));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn native_checks_default_interval_and_ttl_exec_checks_do_not() {
    let c = load(
        r#"{ jobs: [
          { name: "db", exec: "y", port: 5432, health: { tcp: "127.0.0.1:5432" } },
          { name: "web", exec: "x", port: 80, health: { http: "http://127.0.0.1/", interval: 2 } },
        ] }"#,
    )
    .expect("loads");
    let h = |i: usize| {
        c.jobs[i]
            .health
            .as_ref()
            .map(|h| (h.interval, h.ttl, h.timeout))
    };
    let s = Duration::from_secs;
    assert_eq!(h(0), Some((s(10), s(30), s(10))));
    assert_eq!(h(1), Some((s(2), s(6), s(2))));
    let e = load("{ jobs: [{ name: 'a', exec: 'x', health: {exec: 'c', ttl: 5} }] }")
        .expect_err("an exec check needs an interval");
    assert!(e.to_string().contains("jobs[0].health.interval"), "{e}");
}

#[test]
fn native_health_check_errors_name_the_field() {
    let cases = [
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {exec: 'c', http: 'http://h/', interval: 1, ttl: 2} }] }",
            "jobs[0].health.http",
            "set only one of 'exec', 'http' and 'tcp'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {tcp: 'h:1', http: 'http://h/', interval: 1, ttl: 2} }] }",
            "jobs[0].health.tcp",
            "set only one of",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {interval: 1, ttl: 2} }] }",
            "jobs[0].health.exec",
            "needs one of 'exec', 'http' or 'tcp'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {http: 'https://h/', interval: 1, ttl: 2} }] }",
            "jobs[0].health.http",
            "https is not supported",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {http: 'ftp://h/', interval: 1, ttl: 2} }] }",
            "jobs[0].health.http",
            "not an http:// URL",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {http: 'http://h/', expect: 99, interval: 1, ttl: 2} }] }",
            "jobs[0].health.expect",
            "out of range",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {tcp: 'h:1', expect: 200, interval: 1, ttl: 2} }] }",
            "jobs[0].health.expect",
            "only to an 'http' check",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {tcp: 'localhost', interval: 1, ttl: 2} }] }",
            "jobs[0].health.tcp",
            "is not host:port",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {tcp: 'h:0', interval: 1, ttl: 2} }] }",
            "jobs[0].health.tcp",
            "is not a port",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {tcp: '::1:5', interval: 1, ttl: 2} }] }",
            "jobs[0].health.tcp",
            "in brackets",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', health: {exec: 'c', logging: {rew: true}, interval: 1, ttl: 2} }] }",
            "jobs[0].health.logging.rew",
            "unknown field",
        ),
    ];
    for (text, field, message) in cases {
        let e = load(text).expect_err(text).to_string();
        assert!(e.contains(&format!(": {field}: ")), "{text}: {e}");
        assert!(e.contains(message), "{text}: {e}");
    }
}

#[test]
fn unhonoured_fields_load_with_a_warning_naming_them() {
    let c = load(
        r#"{ jobs: [{ name: "web", exec: "x", port: 80, initial_status: "passing",
                    consul: { enableTagOverride: true, deregisterCriticalServiceAfter: "10m" },
                    health: { tcp: "127.0.0.1:80", interval: 1, ttl: 3, logging: { raw: true } } }],
             watches: [{ name: "db", interval: 5, dc: "dc2" }] }"#,
    )
    .expect("loads");
    let fields: Vec<&str> = c.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "watches[0].dc",
            "jobs[0].health.logging.raw",
            "jobs[0].consul.enableTagOverride"
        ]
    );
    assert!(
        c.warnings
            .iter()
            .all(|w| w.message.starts_with("ignored: "))
    );
}

#[test]
fn a_job_may_log_its_stderr_at_info() {
    let c = load(
        r#"{ jobs: [{ name: "pg", exec: "postgres", logging: { stderr: "INFO" } },
                    { name: "app", exec: "app", logging: { raw: true, stderr: "warn" } }] }"#,
    )
    .expect("loads");
    let info: Vec<(&str, bool)> = c
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.stderr_at_info))
        .collect();
    assert_eq!(info, [("pg", true), ("app", false)]);
    let e = load(r#"{ jobs: [{ name: "a", exec: "x", logging: { stderr: "loud" } }] }"#)
        .expect_err("unknown level")
        .to_string();
    assert!(e.contains("jobs[0].logging.stderr: unknown level"), "{e}");
}

#[test]
fn check_address_errors_are_typed_quote_the_value_and_keep_the_cause() {
    use std::error::Error as _;
    let e = http_url("ftp://h/").expect_err("not http");
    assert!(matches!(e, AddressError::NotHttp { .. }), "{e:?}");
    assert_eq!(e.to_string(), "'ftp://h/' is not an http:// URL");
    let e = http_url("http://h\n:1/").expect_err("invalid");
    assert!(
        e.source().is_some(),
        "the parser's error is kept as the source"
    );
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(
        e.to_string()
            .starts_with("'http://h\\n:1/' is not a valid URL"),
        "{e}"
    );
    let e = host_port("h:x").expect_err("bad port");
    assert_eq!(e.to_string(), "'h:x': 'x' is not a port (1-65535)");
    let e = load("{ jobs: [{ name: 'a', exec: 'x', health: {tcp: 'h:0', interval: 1, ttl: 2} }] }")
        .expect_err("port 0")
        .to_string();
    assert!(e.contains(":1:"), "file:line kept: {e}");
    assert!(
        e.contains("jobs[0].health.tcp: 'h:0': '0' is not a port (1-65535)"),
        "{e}"
    );
}

#[test]
fn election_priority_and_max_lag() {
    let c = load(
        "{ jobs: [{ name: 'aa', exec: 'x', election: { name: 'e', priority: 0, maxLag: 1048576 } },\n{ name: 'bb', exec: 'x', election: { name: 'f' } }] }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = c.jobs[0].election.as_ref().expect("election");
    assert_eq!((e.priority, e.max_lag), (0, Some(1_048_576)));
    let f = c.jobs[1].election.as_ref().expect("election");
    assert_eq!(
        (f.priority, f.max_lag, f.ttl),
        (1, None, Duration::from_secs(5))
    );
    for (text, want) in [
        (
            "{ jobs: [{ name: 'a', exec: 'x',\n election: { name: 'e', priority: -1 } }] }",
            "2:",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: 'e', priority: 4294967296 } }] }",
            "jobs[0].election.priority",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: 'e', maxLag: 'lots' } }] }",
            "jobs[0].election.maxLag",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'x', election: { name: 'e', maxlag: 5 } }] }",
            "maxLag",
        ),
    ] {
        let err = load(text).expect_err(text).to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn data_dir_owner_is_a_user_name_beside_a_data_dir() {
    let snap = |extra: &str| {
        format!(
            "{{ jobs: [{{ name: 'db', exec: 'x', snapshot: {{ store: 'file:///tmp/s', dataDir: '/srv/db', restore: 'true'{extra} }} }}] }}"
        )
    };
    let c = load(&snap(", dataDirOwner: 'postgres'")).expect("valid");
    assert_eq!(
        c.jobs[0]
            .snapshot
            .as_ref()
            .and_then(|s| s.data_dir_owner.as_deref()),
        Some("postgres")
    );
    let e = load(&snap(", dataDirOwner: '../root'")).expect_err("not a name");
    assert!(
        e.to_string().contains("jobs[0].snapshot.dataDirOwner")
            && e.to_string().contains("not a user name"),
        "{e}"
    );
    let e = load(
        "{ jobs: [{ name: 'db', exec: 'x', snapshot: { store: 'file:///tmp/s', dataDirOwner: 'postgres' } }] }",
    )
    .expect_err("needs a dataDir");
    assert!(e.to_string().contains("needs a 'dataDir'"), "{e}");
}

fn load_env(text: &str, store: Option<&str>) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = store
        .map(|s| (ARTIFACT_STORE_ENV.to_string(), s.to_string()))
        .into_iter()
        .collect();
    load_str(Path::new("/etc/app.json5"), text, &env)
}

#[test]
fn a_job_runs_an_artifact() {
    let c = load_env(
        "{ jobs: [{ name: 'api', exec: '/opt/api/current/server', artifact: { name: 'api', dest: '/opt/api', store: 'file:///srv/a' } }] }",
        None,
    )
    .expect("valid");
    let a = c.jobs[0].artifact.as_ref().expect("artifact");
    assert_eq!(
        (a.name.as_str(), a.dest.as_path(), a.store.as_str()),
        ("api", Path::new("/opt/api"), "file:///srv/a")
    );
    assert_eq!(c.jobs[0].artifact_sha, None);
    // The store defaults to $AUTOPILOT_ARTIFACT_STORE.
    let text =
        "{ jobs: [{ name: 'api', exec: 'x', artifact: { name: 'api', dest: '/opt/api' } }] }";
    let c = load_env(text, Some("file:///var/lib/artifacts")).expect("valid");
    assert_eq!(
        c.jobs[0].artifact.as_ref().map(|a| a.store.as_str()),
        Some("file:///var/lib/artifacts")
    );
    let e = load_env(text, None).expect_err("no store").to_string();
    assert!(
        e.starts_with("/etc/app.json5:1:")
            && e.contains("jobs[0].artifact.store")
            && e.contains("AUTOPILOT_ARTIFACT_STORE"),
        "{e}"
    );
}

#[test]
fn bad_artifact_fields_are_named() {
    let job = |a: &str| format!("{{ jobs: [{{ name: 'api', exec: 'x', artifact: {a} }}] }}");
    for (a, field, want) in [
        (
            "{ name: '../x', dest: '/opt/a' }",
            "jobs[0].artifact.name",
            "not a valid artifact name",
        ),
        (
            "{ name: '', dest: '/opt/a' }",
            "jobs[0].artifact.name",
            "not a valid artifact name",
        ),
        (
            "{ name: 'a', dest: 'opt/a' }",
            "jobs[0].artifact.dest",
            "absolute",
        ),
        (
            "{ name: 'a', dest: '/opt/../etc' }",
            "jobs[0].artifact.dest",
            "absolute",
        ),
        (
            "{ name: 'a', dest: '/opt/a', store: 'http://x' }",
            "jobs[0].artifact.store",
            "not an artifact store",
        ),
        (
            "{ name: 'a', dest: '/opt/a', sha: 'x' }",
            "jobs[0].artifact.sha",
            "",
        ),
        ("{ dest: '/opt/a' }", "jobs[0].artifact.name", "required"),
    ] {
        let e = load_env(&job(a), Some("file:///s"))
            .expect_err(a)
            .to_string();
        assert!(
            e.starts_with("/etc/app.json5:1:") && e.contains(field) && e.contains(want),
            "{a}: {e}"
        );
    }
}

#[test]
fn a_config_bundle() {
    let c = load_env(
        "{ bundle: { name: 'cfg', dest: '/var/lib/autopilot/bundle', file: 'conf/autopilot.json5' }, jobs: [{ name: 'a', exec: 'x' }] }",
        Some("file:///s"),
    )
    .expect("valid");
    assert_eq!(
        c.bundle,
        Some(BundleConfig {
            name: "cfg".into(),
            dest: "/var/lib/autopilot/bundle".into(),
            store: "file:///s".into(),
            file: "conf/autopilot.json5".into(),
        })
    );
    for (file, ok) in [
        ("../x.json5", false),
        ("/etc/x", false),
        ("", false),
        ("./a", false),
    ] {
        let text = format!("{{ bundle: {{ name: 'cfg', dest: '/b', file: '{file}' }} }}");
        let e = load_env(&text, Some("file:///s"))
            .expect_err(file)
            .to_string();
        assert!(!ok && e.contains("bundle.file"), "{file}: {e}");
    }
    let e = load_env("{ bundle: { name: 'cfg', dest: '/b', file: 'a' } }", None)
        .expect_err("no store")
        .to_string();
    assert!(e.contains("bundle.store"), "{e}");
}

#[test]
fn artifact_dests_that_are_equal_or_nested_are_refused() {
    let job = |n: &str, dest: &str| {
        format!("{{ name: '{n}', exec: 'x', artifact: {{ name: '{n}', dest: '{dest}' }} }}")
    };
    for (a, b, how) in [
        ("/opt/a", "/opt/a", "is the same as"),
        ("/opt/a", "/opt/a/b", "is inside"),
        ("/opt/a/b", "/opt/a", "contains"),
        ("/opt/a", "/opt/a/", "is the same as"),
    ] {
        let text = format!("{{ jobs: [{}, {}] }}", job("one", a), job("two", b));
        let e = load_env(&text, Some("file:///s"))
            .expect_err(&text)
            .to_string();
        assert!(
            e.contains("jobs[1].artifact.dest") && e.contains(how) && e.contains("\"one\""),
            "{text}: {e}"
        );
    }
    // Siblings, and a name that only shares a prefix, are fine.
    let text = format!(
        "{{ jobs: [{}, {}, {}] }}",
        job("one", "/opt/a"),
        job("two", "/opt/b"),
        job("three", "/opt/ab")
    );
    load_env(&text, Some("file:///s")).expect("distinct dests");
    // The bundle is one more unit.
    for (bundle, ok) in [
        ("/opt/a", false),
        ("/opt", false),
        ("/opt/a/cfg", false),
        ("/var/lib/bundle", true),
    ] {
        let text = format!(
            "{{ bundle: {{ name: 'cfg', dest: '{bundle}', file: 'a.json5' }}, jobs: [{}] }}",
            job("one", "/opt/a")
        );
        let res = load_env(&text, Some("file:///s"));
        match (ok, res) {
            (true, r) => {
                r.expect(&text);
            }
            (false, r) => {
                let e = r.expect_err(&text).to_string();
                assert!(
                    e.contains("bundle.dest") && e.contains("config bundle"),
                    "{text}: {e}"
                );
            }
        }
    }
}
