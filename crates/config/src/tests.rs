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
fn the_dns_block() {
    assert_eq!(load("{}").unwrap().dns, None);
    let d = load("{ dns: {} }").unwrap().dns.unwrap();
    assert_eq!(d.listen.to_string(), "127.0.0.1:8600");
    assert_eq!(d.domain, "autopilot.");
    assert_eq!(d.ttl, Duration::ZERO);
    let d = load("{ dns: { listen: '[::1]:53', domain: 'Consul', ttl: '30s' } }")
        .unwrap()
        .dns
        .unwrap();
    assert_eq!(d.listen.to_string(), "[::1]:53");
    assert_eq!(d.domain, "consul.");
    assert_eq!(d.ttl, Duration::from_secs(30));
    for (text, field, msg) in [
        (
            "{ dns: { listen: 'localhost' } }",
            "dns.listen",
            "not an address and port",
        ),
        ("{ dns: { domain: 'a..b' } }", "dns.domain", "label \"\""),
        (
            "{ dns: { domain: '.' } }",
            "dns.domain",
            "must name a domain",
        ),
        ("{ dns: { ttl: 'soon' } }", "dns.ttl", ""),
        ("{ dns: { port: 53 } }", "dns.port", "unknown field"),
        ("{ dns: 5 }", "dns", "expected"),
    ] {
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(msg), "{text}: {e}");
    }
}

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

mod watchdogs_and_repair {
    use std::path::PathBuf;
    use std::time::Duration;

    use autopilot_core::spec::{
        FreeSpace, RepairBudget, RepairSpec, RepairStep, WatchdogCheck, WatchdogSpec,
    };

    use super::load;

    /// A config with the job `app` (snapshot with dataDir and restore), the
    /// port-only job `advert`, and `extra` spliced into the root.
    fn with(extra: &str) -> String {
        format!(
            "{{ jobs: [{{ name: 'app', exec: '/bin/app', restarts: 'unlimited', \
             snapshot: {{ store: 'file:///snap', create: 'true', restore: 'true', dataDir: '/data' }} }}, \
             {{ name: 'advert', port: 9000, initial_status: 'passing' }}], {extra} }}"
        )
    }

    fn watchdog(entry: &str) -> Result<WatchdogSpec, String> {
        let c = load(&with(&format!("watchdogs: [{entry}]"))).map_err(|e| e.to_string())?;
        Ok(c.watchdogs.into_iter().next().expect("one watchdog"))
    }

    /// A job `jj` with `fields` and a repair block `r`, beside `app`.
    fn repair_of(fields: &str, r: &str) -> Result<(RepairSpec, Vec<String>), String> {
        let text = format!(
            "{{ jobs: [{{ name: 'app', exec: 'true' }}, {{ name: 'jj'{fields}, repair: {r} }}] }}"
        );
        let c = load(&text).map_err(|e| e.to_string())?;
        let spec = c.jobs[1].repair.clone().expect("a repair block");
        Ok((spec, c.warnings.iter().map(|w| w.to_string()).collect()))
    }

    #[test]
    fn the_contract_example_loads() {
        let c = load(&with(
            r#"watchdogs: [
    {name: "disk", disk: {path: "/data", warning: "20%", error: "5%"}, interval: "30s"},
    {name: "api", http: {url: "http://127.0.0.1:8080/health", warnOn: [429, 503], slow: "2s"}, job: "app"},
    {name: "port", tcp: {address: "127.0.0.1:8080", slow: "1s"}},
    {name: "script", exec: ["/bin/check"], interval: "10s", timeout: "5s", rise: 2, fall: 3},
    {name: "catalog", catalog: true},
    {name: "loop", crashloop: {job: "app", restarts: 5, window: "60s"}},
  ]"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let w = &c.watchdogs;
        assert_eq!(w.len(), 6);
        assert_eq!(
            w[0],
            WatchdogSpec {
                name: "disk".into(),
                check: WatchdogCheck::Disk {
                    path: PathBuf::from("/data"),
                    warning: Some(FreeSpace::Percent(20.0)),
                    error: Some(FreeSpace::Percent(5.0)),
                },
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
                job: None,
                rise: 1,
                fall: 1,
            }
        );
        assert_eq!(
            w[1].check,
            WatchdogCheck::Http {
                url: "http://127.0.0.1:8080/health".into(),
                expect: None,
                warn_on: vec![429, 503],
                slow: Some(Duration::from_secs(2)),
            }
        );
        assert_eq!(w[1].job.as_deref(), Some("app"));
        assert_eq!(
            w[2].check,
            WatchdogCheck::Tcp {
                address: "127.0.0.1:8080".into(),
                slow: Some(Duration::from_secs(1)),
            }
        );
        assert_eq!(
            w[3].check,
            WatchdogCheck::Exec {
                argv: vec!["/bin/check".into()]
            }
        );
        assert_eq!((w[3].rise, w[3].fall), (2, 3));
        assert_eq!(w[4].check, WatchdogCheck::Catalog);
        assert_eq!(
            w[5].check,
            WatchdogCheck::Crashloop {
                job: "app".into(),
                restarts: 5,
                window: Duration::from_secs(60),
            }
        );
        // A crashloop watchdog counts for its own job unless told otherwise.
        assert_eq!(w[5].job.as_deref(), Some("app"));
    }

    #[test]
    fn no_watchdogs_and_no_repair_by_default() {
        let c = load(&with("")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.watchdogs.is_empty());
        assert!(c.jobs.iter().all(|j| j.repair.is_none()));
    }

    #[test]
    fn watchdog_defaults() {
        let w =
            watchdog("{ name: 'x', exec: '/bin/check --fast' }").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.interval, Duration::from_secs(10));
        assert_eq!(w.timeout, Duration::from_secs(5));
        assert_eq!((w.rise, w.fall, w.job), (1, 1, None));
        assert_eq!(
            w.check,
            WatchdogCheck::Exec {
                argv: vec!["/bin/check".into(), "--fast".into()]
            }
        );
        // A short interval shortens the default timeout.
        let w = watchdog("{ name: 'x', catalog: true, interval: '2s' }")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.timeout, Duration::from_secs(2));
        let w = watchdog("{ name: 'x', http: { url: 'http://h/' }, timeout: '10s' }")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.timeout, Duration::from_secs(10));
        let WatchdogCheck::Http {
            warn_on, expect, ..
        } = w.check
        else {
            panic!("not http: {:?}", w.check)
        };
        assert_eq!((warn_on, expect), (vec![429, 503], None));
        let w = watchdog("{ name: 'x', http: { url: 'http://h/', warnOn: [], expect: 204 } }")
            .unwrap_or_else(|e| panic!("{e}"));
        let WatchdogCheck::Http {
            warn_on, expect, ..
        } = w.check
        else {
            panic!("not http: {:?}", w.check)
        };
        assert_eq!((warn_on, expect), (vec![], Some(204)));
        let w = watchdog("{ name: 'x', crashloop: { job: 'app' }, job: 'app' }")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            w.check,
            WatchdogCheck::Crashloop {
                job: "app".into(),
                restarts: 5,
                window: Duration::from_secs(60)
            }
        );
        for ok in ["a", "A.b_c-1", &"x".repeat(64)] {
            let w = watchdog(&format!("{{ name: '{ok}', catalog: true }}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(w.name, ok);
        }
    }

    #[test]
    fn disk_thresholds() {
        let disk = |w: &str, e: &str| -> Result<(Option<FreeSpace>, Option<FreeSpace>), String> {
            let mut fields = String::new();
            if !w.is_empty() {
                fields += &format!(", warning: {w}");
            }
            if !e.is_empty() {
                fields += &format!(", error: {e}");
            }
            let spec = watchdog(&format!(
                "{{ name: 'd', disk: {{ path: '/data'{fields} }} }}"
            ))?;
            match spec.check {
                WatchdogCheck::Disk { warning, error, .. } => Ok((warning, error)),
                other => panic!("not disk: {other:?}"),
            }
        };
        let b = |n| Some(FreeSpace::Bytes(n));
        let p = |n| Some(FreeSpace::Percent(n));
        assert_eq!(disk("'500MiB'", ""), Ok((b(500 << 20), None)));
        assert_eq!(disk("", "'2GB'"), Ok((None, b(2_000_000_000))));
        assert_eq!(disk("'1.5GiB'", "'1 kib'"), Ok((b(3 << 29), b(1024))));
        assert_eq!(disk("1000000", "'4096'"), Ok((b(1_000_000), b(4096))));
        assert_eq!(disk("'12.5%'", "'0.5%'"), Ok((p(12.5), p(0.5))));
        assert_eq!(disk("'100%'", ""), Ok((p(100.0), None)));
        // Different units are not compared: the percentage depends on the disk.
        assert_eq!(disk("'1GiB'", "'10%'"), Ok((b(1 << 30), p(10.0))));
        assert_eq!(disk("'1%'", "'1TB'"), Ok((p(1.0), b(1_000_000_000_000))));
        for (w, e, want) in [
            (
                "",
                "",
                "watchdogs[0].disk.warning: a disk watchdog needs 'warning', 'error' or both",
            ),
            (
                "'0%'",
                "",
                "watchdogs[0].disk.warning: \"0%\": a percentage must be above 0 and at most 100",
            ),
            (
                "'100.1%'",
                "",
                "a percentage must be above 0 and at most 100",
            ),
            ("'-5%'", "", "a percentage must be above 0"),
            ("'NaN%'", "", "a percentage must be above 0"),
            (
                "'x%'",
                "",
                "watchdogs[0].disk.warning: \"x%\": expected a percentage",
            ),
            ("", "'5%'", ""),
            (
                "'5%'",
                "'5%'",
                "watchdogs[0].disk.error: the error threshold (5%) must be less free space than the warning one (5%)",
            ),
            (
                "'5%'",
                "'10%'",
                "watchdogs[0].disk.error: the error threshold (10%)",
            ),
            (
                "'1GB'",
                "'2GB'",
                "watchdogs[0].disk.error: the error threshold (2000000000 bytes) must be less",
            ),
            (
                "'1GB'",
                "1000000000",
                "watchdogs[0].disk.error: the error threshold",
            ),
            (
                "'2PB'",
                "",
                "watchdogs[0].disk.warning: \"2PB\" has an unknown size unit",
            ),
            (
                "'MiB'",
                "",
                "watchdogs[0].disk.warning: \"MiB\": expected a percentage",
            ),
            ("''", "", "expected a percentage"),
            ("0", "", "watchdogs[0].disk.warning: 0 is not a valid size"),
            ("0.5", "", "is not a valid size"),
            ("-1", "", "is not a valid size"),
            (
                "1e300",
                "",
                "watchdogs[0].disk.warning: 1000000000000000000000",
            ),
            ("'99999999999999TiB'", "", "is not a valid size"),
            ("Infinity", "", "is not a valid size"),
            (
                "true",
                "",
                "watchdogs[0].disk.warning: expected a percentage such as \"10%\" or a size such as \"500MiB\", \"2GB\" or a number of bytes, found",
            ),
        ] {
            let r = disk(w, e);
            if want.is_empty() {
                assert!(r.is_ok(), "{w} {e}: {r:?}");
                continue;
            }
            let err = r.expect_err(want);
            assert!(err.contains(want), "{w} {e}\n got: {err}\nwant: {want}");
        }
        let e =
            watchdog("{ name: 'd', disk: { path: 'data', error: '5%' } }").expect_err("relative");
        assert!(
            e.contains("watchdogs[0].disk.path: data is not an absolute path"),
            "{e}"
        );
        let e = watchdog("{ name: 'd', disk: { error: '5%' } }").expect_err("no path");
        assert!(
            e.contains("watchdogs[0].disk.path: this field is required"),
            "{e}"
        );
    }

    #[test]
    fn bad_watchdogs_name_the_field() {
        for (entry, want) in [
            (
                "{ catalog: true }",
                "watchdogs[0].name: this field is required",
            ),
            (
                "{ name: 42, catalog: true }",
                "watchdogs[0].name: expected a string, found",
            ),
            (
                "{ name: ['a'], catalog: true }",
                "watchdogs[0].name: expected a string",
            ),
            (
                "{ name: '', catalog: true }",
                "watchdogs[0].name: \"\" is not a valid watchdog name",
            ),
            (
                "{ name: 'a b', catalog: true }",
                "is not a valid watchdog name: 1-64 letters",
            ),
            (
                "{ name: 'a/b', catalog: true }",
                "is not a valid watchdog name",
            ),
            (
                "{ name: 'a\\nb', catalog: true }",
                "watchdogs[0].name: \"a\\nb\" is not a valid",
            ),
            (
                &format!("{{ name: '{}', catalog: true }}", "x".repeat(65)),
                "is not a valid watchdog name",
            ),
            (
                "{ name: 'w' }",
                "watchdogs[0]: watchdog \"w\" needs a check: set one of exec, http, tcp, disk, catalog, crashloop",
            ),
            (
                "{ name: 'w', exec: 'true', catalog: true }",
                "watchdogs[0].catalog: watchdog \"w\" sets both 'exec' and 'catalog': set exactly one of exec, http, tcp, disk, catalog, crashloop",
            ),
            (
                "{ name: 'w', catalog: false }",
                "watchdogs[0].catalog: 'catalog' takes only true",
            ),
            (
                "{ name: 'w', catalog: 'yes' }",
                "watchdogs[0].catalog: expected true or false",
            ),
            (
                "{ name: 'w', exec: '' }",
                "watchdogs[0].exec: the command is empty",
            ),
            (
                "{ name: 'w', exec: 'a \"b' }",
                "watchdogs[0].exec: unbalanced quotes",
            ),
            (
                "{ name: 'w', exec: 5 }",
                "watchdogs[0].exec: expected a string or an array of strings",
            ),
            (
                "{ name: 'w', catalog: true, interval: 0 }",
                "watchdogs[0].interval: must be at least 1ms",
            ),
            (
                "{ name: 'w', catalog: true, interval: 1e300 }",
                "watchdogs[0].interval: 1000000000000000000000",
            ),
            (
                "{ name: 'w', catalog: true, timeout: '99999999999h' }",
                "watchdogs[0].timeout: \"99999999999h\" is not a valid duration",
            ),
            (
                "{ name: 'w', catalog: true, timeout: '11s' }",
                "watchdogs[0].timeout: must not be longer than 'interval' (10s)",
            ),
            (
                "{ name: 'w', catalog: true, interval: '500ms', timeout: '1s' }",
                "must not be longer than 'interval' (500ms)",
            ),
            (
                "{ name: 'w', catalog: true, rise: 0 }",
                "watchdogs[0].rise: 0 is out of range (1..=100)",
            ),
            (
                "{ name: 'w', catalog: true, fall: 101 }",
                "watchdogs[0].fall: 101 is out of range (1..=100)",
            ),
            (
                "{ name: 'w', catalog: true, fall: 1e300 }",
                "watchdogs[0].fall: ",
            ),
            (
                "{ name: 'w', catalog: true, rise: 1.5 }",
                "watchdogs[0].rise: expected an integer",
            ),
            (
                "{ name: 'w', catalog: true, job: 'ghost' }",
                "watchdogs[0].job: \"ghost\" names no job",
            ),
            (
                "{ name: 'w', catalog: true, job: 3 }",
                "watchdogs[0].job: expected a string",
            ),
            (
                "{ name: 'w', catalog: true, jobs: 'app' }",
                "watchdogs[0].jobs: unknown field (did you mean \"job\"?)",
            ),
            (
                "{ name: 'w', catalog: true, zzz: 1 }",
                "watchdogs[0].zzz: unknown field; expected one of: name, exec",
            ),
            (
                "{ name: 'w', http: 'http://h/' }",
                "watchdogs[0].http: expected an object",
            ),
            (
                "{ name: 'w', http: {} }",
                "watchdogs[0].http.url: this field is required",
            ),
            (
                "{ name: 'w', http: { url: 'https://h/' } }",
                "watchdogs[0].http.url: 'https://h/': https is not supported",
            ),
            (
                "{ name: 'w', http: { url: 'h:80' } }",
                "watchdogs[0].http.url: ",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', expect: 99 } }",
                "watchdogs[0].http.expect: 99 is out of range (100..=599)",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', warnOn: [503, 600] } }",
                "watchdogs[0].http.warnOn[1]: 600 is out of range",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', warnOn: 503 } }",
                "watchdogs[0].http.warnOn: expected an array",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', slow: '5s' } }",
                "watchdogs[0].http.slow: must be shorter than the watchdog's 'timeout' (5s)",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', slow: 1e300 } }",
                "watchdogs[0].http.slow: 1000000000000000000000",
            ),
            (
                "{ name: 'w', http: { url: 'http://h/', status: 200 } }",
                "watchdogs[0].http.status: unknown field",
            ),
            (
                "{ name: 'w', tcp: {} }",
                "watchdogs[0].tcp.address: this field is required",
            ),
            (
                "{ name: 'w', tcp: { address: 'h' } }",
                "watchdogs[0].tcp.address: 'h' is not host:port",
            ),
            (
                "{ name: 'w', tcp: { address: 'h:0' } }",
                "watchdogs[0].tcp.address: 'h:0': '0' is not a port",
            ),
            (
                "{ name: 'w', tcp: { address: 'h:1', slow: '6s' }, timeout: '5s' }",
                "watchdogs[0].tcp.slow: must be shorter",
            ),
            (
                "{ name: 'w', crashloop: {} }",
                "watchdogs[0].crashloop.job: this field is required",
            ),
            (
                "{ name: 'w', crashloop: { job: 'ghost' } }",
                "watchdogs[0].crashloop.job: \"ghost\" names no job",
            ),
            (
                "{ name: 'w', crashloop: { job: 'advert' } }",
                "watchdogs[0].crashloop.job: job \"advert\" runs no process ('exec'), so it cannot crash-loop",
            ),
            (
                "{ name: 'w', crashloop: { job: 'app', restarts: 0 } }",
                "watchdogs[0].crashloop.restarts: 0 is out of range (1..=1000)",
            ),
            (
                "{ name: 'w', crashloop: { job: 'app', restarts: 1001 } }",
                "out of range (1..=1000)",
            ),
            (
                "{ name: 'w', crashloop: { job: 'app', restarts: 1e300 } }",
                "watchdogs[0].crashloop.restarts: ",
            ),
            (
                "{ name: 'w', crashloop: { job: 'app', window: 0 } }",
                "watchdogs[0].crashloop.window: must be at least 1ms",
            ),
            (
                "{ name: 'w', crashloop: { job: 'app', window: '1e300s' } }",
                "watchdogs[0].crashloop.window: ",
            ),
            ("'w'", "watchdogs[0]: expected an object, found"),
        ] {
            let e = watchdog(entry).expect_err(entry);
            assert!(e.contains(want), "{entry}\n got: {e}\nwant: {want}");
            assert!(e.starts_with("/etc/app.json5:1:"), "{e}");
        }
        let e = load(&with(
            "watchdogs: [{ name: 'a', catalog: true },\n { name: 'a', exec: 'true' }]",
        ))
        .expect_err("duplicate")
        .to_string();
        assert!(
            e.contains("/etc/app.json5:2:10: watchdogs[1].name: duplicate watchdog name \"a\""),
            "{e}"
        );
        let e = load(&with("watchdogs: { name: 'a' }"))
            .expect_err("object")
            .to_string();
        assert!(e.contains("watchdogs: expected an array"), "{e}");
        // The known top-level fields keep their order, `watchdogs` last.
        let e = load("{ zzz: 1 }").expect_err("unknown").to_string();
        assert!(e.contains("expected one of: consul, catalog,"), "{e}");
        assert!(e.ends_with("etcd, bundle, watchdogs, dns"), "{e}");
        let e = load("{ watchdog: [] }").expect_err("unknown").to_string();
        assert!(
            e.contains("watchdog: unknown field (did you mean \"watchdogs\"?)"),
            "{e}"
        );
    }

    #[test]
    fn repair_block_defaults_and_values() {
        let (r, warnings) = repair_of(", exec: 'true'", "{ ladder: ['restart'] }")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r, RepairSpec::new(vec![RepairStep::Restart]));
        assert_eq!(r.probation, Duration::from_secs(60));
        assert_eq!(r.grace, Duration::from_secs(60));
        assert_eq!(r.budget, RepairBudget::Count(1));
        assert_eq!(r.replace_exec, None);
        assert_eq!(r.replace_timeout, Duration::from_secs(60));
        assert_eq!(r.exit_code, 75);
        assert!(warnings.is_empty(), "{warnings:?}");
        let text = "{ jobs: [{ name: 'app', exec: '/bin/app', \
            snapshot: { store: 'file:///snap', restore: ['/bin/restore', '--into', '/data'], dataDir: '/data' }, \
            repair: { ladder: ['restart', 'reimage', 'replace'], probation: '2m', grace: 30, budget: '20%', \
                      replace: ['/bin/page', 'replacing'], replaceTimeout: '10s', exitCode: 3 } }] }";
        let c = load(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.jobs[0].repair,
            Some(RepairSpec {
                ladder: vec![
                    RepairStep::Restart,
                    RepairStep::Reimage,
                    RepairStep::Replace
                ],
                probation: Duration::from_secs(120),
                grace: Duration::from_secs(30),
                budget: RepairBudget::Percent(20),
                replace_exec: Some(vec!["/bin/page".into(), "replacing".into()]),
                replace_timeout: Duration::from_secs(10),
                exit_code: 3,
            })
        );
        for (b, want) in [
            ("1", RepairBudget::Count(1)),
            ("'3'", RepairBudget::Count(3)),
            ("4294967295", RepairBudget::Count(u32::MAX)),
            ("'1%'", RepairBudget::Percent(1)),
            ("' 100% '", RepairBudget::Percent(100)),
        ] {
            let (r, _) = repair_of(
                ", exec: 'true'",
                &format!("{{ ladder: ['restart'], budget: {b} }}"),
            )
            .unwrap_or_else(|e| panic!("{b}: {e}"));
            assert_eq!(r.budget, want, "{b}");
        }
        let (r, _) = repair_of(
            ", exec: 'true'",
            "{ ladder: ['replace'], replace: '/bin/page now' }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.ladder, vec![RepairStep::Replace]);
        assert_eq!(r.replace_exec, Some(vec!["/bin/page".into(), "now".into()]));
        // A job started after another's success, and a `once` handler, may be repaired.
        for fields in [
            ", exec: 'true', when: { source: 'app', once: 'exitSuccess' }",
            ", exec: 'true', when: { source: 'app', once: 'healthy' }",
            ", exec: 'true', port: 8080, health: { tcp: '127.0.0.1:8080' }",
        ] {
            repair_of(fields, "{ ladder: ['restart'] }")
                .unwrap_or_else(|e| panic!("{fields}: {e}"));
        }
    }

    #[test]
    fn replace_settings_without_a_replace_step_warn() {
        let (_, warnings) = repair_of(
            ", exec: 'true'",
            "{ ladder: ['restart'], replace: '/bin/page', replaceTimeout: '5s', exitCode: 9 }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("jobs[1].repair.replace: ignored: only the 'replace' step uses it"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("jobs[1].repair.replaceTimeout: ignored"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("jobs[1].repair.exitCode: ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn bad_repair_blocks_name_the_field() {
        const SNAP: &str = ", exec: 'true', snapshot: { store: 'file:///s', create: 'true' }";
        for (fields, r, want) in [
            (
                ", exec: 'true'",
                "{}",
                "jobs[1].repair.ladder: this field is required",
            ),
            (
                ", exec: 'true'",
                "true",
                "jobs[1].repair: expected an object",
            ),
            (
                ", exec: 'true'",
                "{ ladder: [] }",
                "jobs[1].repair.ladder: the ladder is empty: list at least one of restart, reimage, replace",
            ),
            (
                ", exec: 'true'",
                "{ ladder: 'restart' }",
                "jobs[1].repair.ladder: expected an array",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart', 'reboot'] }",
                "jobs[1].repair.ladder[1]: unknown repair step \"reboot\"; expected one of: restart, reimage, replace",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['Restart'] }",
                "jobs[1].repair.ladder[0]: unknown repair step \"Restart\"",
            ),
            (
                ", exec: 'true'",
                "{ ladder: [1] }",
                "jobs[1].repair.ladder[0]: expected a string",
            ),
            (
                ", exec: 'true'",
                "{ ladder: [['restart']] }",
                "jobs[1].repair.ladder[0]: expected a string",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart', 'restart'] }",
                "jobs[1].repair.ladder[1]: \"restart\" is already in the ladder",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace', 'restart'] }",
                "jobs[1].repair.ladder[0]: \"replace\" must be the last step",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['reimage'] }",
                "jobs[1].repair.ladder[0]: \"reimage\" restores the newest snapshot into the job's data directory, but the job has no 'snapshot'",
            ),
            (
                SNAP,
                "{ ladder: ['restart', 'reimage'] }",
                "jobs[1].repair.ladder[1]: \"reimage\" restores the newest snapshot into the job's data directory, but the job's snapshot has no 'dataDir' and no 'restore'",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], probation: 0 }",
                "jobs[1].repair.probation: must be at least 1ms",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], probation: 1e300 }",
                "jobs[1].repair.probation: 1000000000000000000000",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], grace: '-1s' }",
                "jobs[1].repair.grace: \"-1s\": a duration cannot be negative",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], grace: '99999999999999999999h' }",
                "jobs[1].repair.grace: ",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: 0 }",
                "jobs[1].repair.budget: expected a positive number of instances, or a percentage such as \"20%\"",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: -1 }",
                "jobs[1].repair.budget: expected a positive number",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: 1e300 }",
                "jobs[1].repair.budget: expected a positive number",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: 4294967296 }",
                "jobs[1].repair.budget: expected a positive number",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: 1.5 }",
                "jobs[1].repair.budget: expected a positive number",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: 'all' }",
                "jobs[1].repair.budget: expected a positive number",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: '0%' }",
                "jobs[1].repair.budget: \"0%\" is not a valid budget percentage: expected a whole number from 1% to 100%",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: '101%' }",
                "is not a valid budget percentage",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: '12.5%' }",
                "is not a valid budget percentage",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], budget: '%' }",
                "is not a valid budget percentage",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], replace: '' }",
                "jobs[1].repair.replace: the command is empty",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], replace: {} }",
                "jobs[1].repair.replace: expected a string or an array of strings",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], replaceTimeout: 0 }",
                "jobs[1].repair.replaceTimeout: must be at least 1ms",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], replaceTimeout: 1e300 }",
                "jobs[1].repair.replaceTimeout: ",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], exitCode: 0 }",
                "jobs[1].repair.exitCode: 0 is out of range (1..=255)",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], exitCode: 256 }",
                "jobs[1].repair.exitCode: 256 is out of range (1..=255)",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['replace'], exitCode: 1e300 }",
                "jobs[1].repair.exitCode: ",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], steps: [] }",
                "jobs[1].repair.steps: unknown field; expected one of: ladder, probation",
            ),
            (
                ", exec: 'true'",
                "{ ladder: ['restart'], exitcode: 3 }",
                "jobs[1].repair.exitcode: unknown field (did you mean \"exitCode\"?)",
            ),
            (
                ", port: 8080, initial_status: 'passing'",
                "{ ladder: ['restart'] }",
                "jobs[1].repair: 'repair' needs the job to run a process: set 'exec'",
            ),
            (
                ", exec: 'true', when: { interval: '5s' }",
                "{ ladder: ['restart'] }",
                "jobs[1].repair: 'repair' does not apply to an interval job ('when.interval')",
            ),
            (
                ", exec: 'true', when: { source: 'app', each: 'healthy' }",
                "{ ladder: ['restart'] }",
                "jobs[1].repair: 'repair' does not apply to an 'each' handler ('when.each')",
            ),
            (
                ", exec: 'true', when: { source: 'app', once: 'stopping' }",
                "{ ladder: ['restart'] }",
                "jobs[1].repair: 'repair' does not apply to a stop hook",
            ),
            (
                ", exec: 'true', when: { source: 'app', once: 'stopped' }",
                "{ ladder: ['restart'] }",
                "jobs[1].repair: 'repair' does not apply to a stop hook",
            ),
        ] {
            let e = repair_of(fields, r).expect_err(r);
            assert!(e.contains(want), "{fields} {r}\n got: {e}\nwant: {want}");
            assert!(e.starts_with("/etc/app.json5:1:"), "{e}");
        }
        // `repair` is listed among a job's fields (`announce` and
        // `dieWithAgent` follow it).
        let e = load("{ jobs: [{ name: 'a', exec: 'true', zzz: 1 }] }")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("expected one of: artifact, name, exec,"), "{e}");
        assert!(e.contains("snapshot, repair"), "{e}");
    }

    #[test]
    fn repair_is_part_of_the_job_spec_equality() {
        let a = load("{ jobs: [{ name: 'a', exec: 'true', repair: { ladder: ['restart'] } }] }")
            .unwrap_or_else(|e| panic!("{e}"));
        let b = load(
            "{ jobs: [{ name: 'a', exec: 'true', repair: { ladder: ['restart'], budget: 2 } }] }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = load("{ jobs: [{ name: 'a', exec: 'true' }] }").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.jobs[0], b.jobs[0]);
        assert_ne!(a.jobs[0], c.jobs[0]);
        let mut plain = a.jobs[0].clone();
        plain.repair = None;
        assert_eq!(plain, c.jobs[0]);
    }
}

mod announce {
    use super::*;

    fn job(a: &str) -> String {
        format!(
            "{{ jobs: [{{ name: 'web', exec: 'x', port: 80, health: {{ exec: 'true', interval: 1, ttl: 5 }}, announce: {a} }}] }}"
        )
    }

    #[test]
    fn an_announce_block_with_defaults_and_every_field() {
        let c = load(&job("{ prefixes: ['192.0.2.10/32', '2001:db8::1/128'] }")).unwrap();
        let a = c.jobs[0].announce.clone().expect("an announce block");
        assert_eq!(a.prefixes.len(), 2);
        assert_eq!(a.prefixes[1].to_string(), "2001:db8::1/128");
        assert_eq!(a.socket, "/run/bird/bird.ctl");
        assert_eq!(a.protocol, "autopilot");
        assert_eq!(a.disable_file, "/etc/autopilot/announce-disable");
        assert_eq!(a.include_file(false), "/run/autopilot/autopilot4.conf");
        assert_eq!(a.drain, Duration::ZERO);
        assert!(!c.jobs[0].die_with_agent);
        let c = load(&job(
            "{ prefixes: ['198.51.100.0/24'], speaker: 'bird', socket: '/s/b.ctl', protocol: 'ap_web', includeDir: '/run/x/', disableFile: '/d', loopback: false, drain: '1500ms' }",
        ))
        .unwrap();
        let a = c.jobs[0].announce.clone().unwrap();
        assert_eq!(a.include_file(true), "/run/x/ap_web6.conf");
        assert_eq!(a.drain, Duration::from_millis(1500));
        let c = load("{ jobs: [{ name: 'bird', exec: 'bird -f', dieWithAgent: true }] }").unwrap();
        assert!(c.jobs[0].die_with_agent);
    }

    #[test]
    fn the_anycast_example_loads() {
        let c = load(include_str!("../../../examples/anycast/autopilot.json5")).unwrap();
        assert!(c.jobs[0].die_with_agent);
        let a = c.jobs[1].announce.clone().expect("the api job announces");
        assert_eq!(a.prefixes.len(), 2);
        assert_eq!(a.include_file(false), "/run/autopilot/autopilot4.conf");
        assert_eq!(a.drain, Duration::from_secs(5));
    }

    #[test]
    fn bad_announce_fields_are_named() {
        for (a, field, want) in [
            ("{ }", "jobs[0].announce.prefixes", "required"),
            (
                "{ prefixes: [] }",
                "jobs[0].announce.prefixes",
                "at least one",
            ),
            (
                "{ prefixes: ['192.0.2.10/24'] }",
                "jobs[0].announce.prefixes[0]",
                "host bits",
            ),
            (
                "{ prefixes: ['192.0.2.10'] }",
                "jobs[0].announce.prefixes[0]",
                "not a prefix",
            ),
            (
                "{ prefixes: ['10.0.0.1/32', '10.0.0.1/32'] }",
                "jobs[0].announce.prefixes[1]",
                "twice",
            ),
            (
                "{ prefixes: ['10.0.0.1/32'], speaker: 'exabgp' }",
                "jobs[0].announce.speaker",
                "unknown speaker",
            ),
            (
                "{ prefixes: ['10.0.0.1/32'], socket: 'bird.ctl' }",
                "jobs[0].announce.socket",
                "absolute",
            ),
            (
                "{ prefixes: ['10.0.0.1/32'], protocol: 'a b' }",
                "jobs[0].announce.protocol",
                "protocol name",
            ),
            (
                "{ prefixes: ['10.0.0.1/32'], drain: 'soon' }",
                "jobs[0].announce.drain",
                "",
            ),
            (
                "{ prefixes: ['10.0.0.0/24'], loopback: true }",
                "jobs[0].announce.loopback",
                "not a /32 or /128",
            ),
            (
                "{ prefixes: ['10.0.0.1/32'], prefix: 1 }",
                "jobs[0].announce.prefix",
                "unknown field",
            ),
        ] {
            let e = load(&job(a)).expect_err(a).to_string();
            assert!(
                e.starts_with("/etc/app.json5:1:") && e.contains(field) && e.contains(want),
                "{a}: {e}"
            );
        }
        let e =
            load("{ jobs: [{ name: 'w', exec: 'x', announce: { prefixes: ['10.0.0.1/32'] } }] }")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("jobs[0].announce") && e.contains("'port'"),
            "{e}"
        );
    }
}
