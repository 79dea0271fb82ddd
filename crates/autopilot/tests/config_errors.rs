//! Bad configs through the real binary: exit code 2, a message naming file, line, column and field, and no job started.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn bad_configs_exit_2_and_start_nothing() {
    let cases: &[(&str, &str)] = &[
        (
            "{ jobs: [{ name: 'b', exec: 'true', when: { interval: '1s', once: 'x' } }, { name: 'a', exec: 'touch @DIR@/started' }] }",
            "config.json5:1:45: jobs[0].when.interval: 'interval' cannot be combined with 'once'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' },\n  { name: 'a', exec: 'true' }] }",
            "config.json5:2:3: jobs[1].name: duplicate job name \"a\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started', when: { source: 'ghost', once: 'healthy' } }] }",
            "jobs[0].when.source: \"ghost\" names no job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started', port: 'http' }] }",
            "jobs[0].port: expected an integer",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }], nonsense: true }",
            "nonsense: unknown field",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  templates: [{ source: 'nope.tmpl', dest: 'out' }] }",
            "config.json5:2:25: templates[0].source: cannot read @DIR@/nope.tmpl",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  templates: [{ source: 'bad.tmpl', dest: 'out' }] }",
            "bad.tmpl:2:1: template: unexpected EOF: {{if}} without {{end}}",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  templates: [{ source: 'ok.tmpl', dest: 'out', perms: '0999' }] }",
            "templates[0].perms: \"0999\" is not an octal mode",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  templates: [{ source: 'ok.tmpl', dest: 'out', when: { source: 'ghost', once: 'exitSuccess' } }] }",
            "templates[0].when.source: \"ghost\" names no job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' },\n  { name: '../x', exec: 'true' }] }",
            "config.json5:2:11: jobs[1].name: \"../x\" is not a valid job name: it contains a path separator",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' },\n  { name: 'b', exec: 'true', when: { interval: 1e20 } }] }",
            "config.json5:2:48: jobs[1].when.interval: 100000000000000000000 is not a valid duration",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' },\n  { name: 'b', exec: 'true', when: { source: 'c', once: 'exitSuccess' } },\n  { name: 'c', exec: 'true', when: { source: 'b', once: 'stopped' } }] }",
            "config.json5:2:46: jobs[1].when.source: 'when' cycle: \"b\" -> \"c\" -> \"b\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  templates: [{ source: 'typo.tmpl', dest: 'out' }] }",
            "typo.tmpl:2:4: template: function \"servics\" not defined",
        ),
        (
            "{{ range 1000000000 }}{{ end }}{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }] }",
            "config.json5:1:1: template: template ",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  watchdogs: [{ name: 'w', exec: 'true', tcp: { address: 'h:1' } }] }",
            "config.json5:2:42: watchdogs[0].tcp: watchdog \"w\" sets both 'exec' and 'tcp': set exactly one of exec, http, tcp, disk, catalog, crashloop",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  watchdogs: [{ name: 'w', crashloop: { job: 'ghost' } }] }",
            "config.json5:2:46: watchdogs[0].crashloop.job: \"ghost\" names no job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  watchdogs: [{ name: 'w', disk: { path: '/', warning: '5%', error: '10%' } }] }",
            "config.json5:2:62: watchdogs[0].disk.error: the error threshold (10%) must be less free space than the warning one (5%)",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started' }],\n  watchdogs: [{ name: 'w', catalog: true }, { name: 'w', catalog: true }] }",
            "config.json5:2:53: watchdogs[1].name: duplicate watchdog name \"w\"",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started',\n  repair: { ladder: ['restart', 'reimage'] } }] }",
            "config.json5:2:33: jobs[0].repair.ladder[1]: \"reimage\" restores the newest snapshot into the job's data directory, but the job has no 'snapshot'",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started',\n  repair: { ladder: ['replace', 'restart'] } }] }",
            "config.json5:2:22: jobs[0].repair.ladder[0]: \"replace\" must be the last step",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started', when: { interval: '1s' },\n  repair: { ladder: ['restart'] } }] }",
            "config.json5:2:11: jobs[0].repair: 'repair' does not apply to an interval job",
        ),
        (
            "{ jobs: [{ name: 'a', exec: 'touch @DIR@/started',\n  repair: { ladder: ['restart'], budget: '0%' } }] }",
            "config.json5:2:42: jobs[0].repair.budget: \"0%\" is not a valid budget percentage",
        ),
    ];
    for (text, want) in cases {
        let d = Dir::new("badcfg");
        d.write("bad.tmpl", "ok\n{{ if .X }}");
        d.write("ok.tmpl", "ok");
        d.write("typo.tmpl", "ok\n{{ servics \"db\" }}");
        let want = &want.replace("@DIR@", &d.0.display().to_string());
        let mut a = start(&d, text);
        let code = a.wait(Duration::from_secs(10));
        let log = a.log();
        assert_eq!(code, Some(2), "{text}: {log}");
        assert!(log.contains(want), "{text}\n got: {log}\nwant: {want}");
        assert!(
            !d.path("started").exists(),
            "a job started despite the bad config"
        );
    }
}

#[test]
fn missing_config_is_a_clear_error() {
    let out = std::process::Command::new(bin())
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no config file given"));
    let out = std::process::Command::new(bin())
        .args(["-config", "/nonexistent/cfg.json5"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cfg.json5"));
}
