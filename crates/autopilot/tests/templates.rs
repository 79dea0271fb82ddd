//! Templates through the real binary, on both backends: rendering from catalog data, writing only on change, `wait`, a failing command retried, `when` gating, and `autopilot template render`.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;

/// An agent advertising `web` on `port` as host `host`, healthy while `<dir>/ok-<host>` exists.
fn web_agent(dir: &Dir, host: &str, port: u16, url: &str) -> Agent {
    let sub = dir.child(host);
    let flag = dir.path(&format!("ok-{host}"));
    let cfg = format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [{{ name: "web", exec: "sleep 60", port: {port}, interfaces: ["static:127.0.0.1"],
            health: {{ exec: "test -e {flag}", interval: "100ms", ttl: 2, timeout: "1s" }} }}]
}}"#,
        flag = flag.display()
    );
    let a = start_with(
        &sub,
        &cfg,
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_ETCD_TTL", "2s"),
            ("AUTOPILOT_HOSTNAME", host),
        ],
    );
    a.ready();
    a
}

fn kv(url: &str, key: &str, value: &str) {
    let st = Command::new(bin())
        .args(["kv", "put", key, value])
        .env("AUTOPILOT_CATALOG", url)
        .status()
        .expect("kv put");
    assert!(st.success());
}

const SOURCE: &str = r#"# {{ env "GREETING" }}
upstream web {
{{- range sortBy "Port" (service "web") }}
  server {{ .Address }}:{{ .Port }};
{{- end }}
}
mode={{ keyOrDefault "cfg/mode" "none" }}
"#;

fn templates_body(d: &Dir, url: &str) {
    let (pa, pb) = (
        autopilot_testkit::free_port(),
        autopilot_testkit::free_port(),
    );
    d.write("upstream.tmpl", SOURCE);
    let cfg = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [{ name: "idle", exec: "sleep 600" }],
  templates: [{
    source: "upstream.tmpl",
    dest: "@DIR@/out/upstream.conf",
    perms: "0640",
    wait: { min: "200ms", max: "1s" },
    command: ["sh", "-c", "echo run >> @DIR@/cmd.log; test -e @DIR@/cmd-ok"],
  }],
}"#;
    let agent = start_with(
        d,
        cfg,
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_ETCD_TTL", "2s"),
            ("GREETING", "hello"),
        ],
    );
    agent.ready();
    let out = d.path("out/upstream.conf");
    assert!(
        wait_for(Duration::from_secs(5), || out.exists()),
        "{}",
        agent.log()
    );
    assert_eq!(
        d.read("out/upstream.conf"),
        "# hello\nupstream web {\n}\nmode=none\n"
    );
    let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
    assert_eq!(mode & 0o7777, 0o640);

    // The command fails until cmd-ok exists: it is retried, and the agent lives on.
    assert!(
        wait_for(Duration::from_secs(5), || d.lines("cmd.log").len() >= 2),
        "command not retried: {}",
        agent.log()
    );
    assert!(agent.log().contains("command failed (exit code 1)"));
    d.write("cmd-ok", "");
    let runs = |d: &Dir| d.lines("cmd.log").len();
    assert!(wait_for(Duration::from_secs(5), || {
        let n = runs(d);
        std::thread::sleep(Duration::from_millis(2500));
        n == runs(d)
    }));
    let settled = runs(d);

    // Two backends register: both appear, sorted by port, and the command runs again.
    std::fs::write(d.path("ok-a"), "").expect("flag");
    std::fs::write(d.path("ok-b"), "").expect("flag");
    let _a = web_agent(d, "a", pa, url);
    let _b = web_agent(d, "b", pb, url);
    let (lo, hi) = (pa.min(pb), pa.max(pb));
    let want = format!(
        "# hello\nupstream web {{\n  server 127.0.0.1:{lo};\n  server 127.0.0.1:{hi};\n}}\nmode=none\n"
    );
    assert!(
        wait_for(Duration::from_secs(10), || d.read("out/upstream.conf")
            == want),
        "{}",
        d.read("out/upstream.conf")
    );
    assert!(wait_for(Duration::from_secs(3), || runs(d) > settled));
    std::thread::sleep(Duration::from_millis(1500));
    let settled = runs(d);
    let inode = std::fs::metadata(&out).expect("meta").ino();

    // An unrelated change renders the same text: no write, no command.
    kv(url, "other/x", "1");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::metadata(&out).expect("meta").ino(),
        inode,
        "{}",
        agent.log()
    );
    assert_eq!(runs(d), settled, "command ran without a change");

    // A burst of ten changes is coalesced by `wait` into few renders.
    for i in 0..10 {
        kv(url, "cfg/mode", &format!("m{i}"));
    }
    assert!(wait_for(Duration::from_secs(5), || d
        .read("out/upstream.conf")
        .contains("mode=m9")));
    std::thread::sleep(Duration::from_millis(1500));
    let burst = runs(d) - settled;
    assert!((1..=3).contains(&burst), "{burst} commands for one burst");

    // A backend turning unhealthy leaves the upstream block.
    std::fs::remove_file(d.path("ok-b")).expect("unflag");
    assert!(
        wait_for(Duration::from_secs(5), || !d
            .read("out/upstream.conf")
            .contains(&format!(":{pb};"))),
        "{}",
        d.read("out/upstream.conf")
    );
    assert!(d.read("out/upstream.conf").contains(&format!(":{pa};")));
}

#[test]
fn templates_render_on_change_on_the_embedded_catalog() {
    let d = Dir::new("tpl-local");
    let url = format!("local://{}", d.path("catalog").display());
    templates_body(&d, &url);
}

#[test]
fn templates_render_on_change_on_etcd() {
    let d = Dir::new("tpl-etcd");
    let etcd = autopilot_testkit::Etcd::single(&d.0);
    templates_body(&d, &format!("etcd://{}/tpl", etcd.endpoint()));
}

#[test]
fn a_template_waits_for_its_when_event() {
    let d = Dir::new("tpl-when");
    d.write("t.tmpl", "ready\n");
    let cfg = r#"{
  control: { socket: "@SOCKET@" },
  jobs: [
    { name: "setup", exec: ["sh", "-c", "while [ ! -e @DIR@/go ]; do sleep 0.05; done"] },
    { name: "idle", exec: "sleep 600" },
  ],
  templates: [{ source: "t.tmpl", dest: "@DIR@/t.out", when: { source: "setup", once: "exitSuccess" } }],
}"#;
    let agent = start(&d, cfg);
    agent.ready();
    std::thread::sleep(Duration::from_millis(700));
    assert!(!d.path("t.out").exists(), "rendered before its event");
    d.write("go", "");
    assert!(
        wait_for(Duration::from_secs(5), || d.path("t.out").exists()),
        "{}",
        agent.log()
    );
    assert_eq!(d.read("t.out"), "ready\n");
}

fn render(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["template", "render"])
        .args(args)
        .env("AUTOPILOT_CATALOG", url)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn template_render_cli_waits_for_keys_and_confines_files() {
    let d = Dir::new("tpl-cli");
    let url = format!("local://{}", d.path("catalog").display());
    let t = d.write(
        "k.tmpl",
        "primary={{ key \"cfg/primary\" }} {{ range ls \"cfg\" }}{{ .Key }} {{ end }}",
    );
    let t = t.display().to_string();

    // `key` of a missing key waits; --timeout bounds the wait.
    let (code, _, err) = render(&url, &[&t, "--once", "--timeout", "300ms"]);
    assert_eq!(code, 1);
    assert!(err.contains("waiting for key \"cfg/primary\""), "{err}");

    // It renders as soon as the key appears.
    let waiter = {
        let (url, t, out) = (url.clone(), t.clone(), d.path("k.out"));
        std::thread::spawn(move || {
            render(&url, &[&t, "--once", "--out", &out.display().to_string()])
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    kv(&url, "cfg/primary", "10.0.0.1");
    let (code, _, err) = waiter.join().expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.read("k.out"), "primary=10.0.0.1 primary ");

    // Files are readable only inside a granted path.
    let secret = d.write("secret", "s3cret");
    std::fs::create_dir_all(d.path("pub")).expect("mkdir");
    d.write("pub/motd", "hi");
    let f = d.write(
        "f.tmpl",
        &format!(
            "{{{{ file \"{}\" }}}} {{{{ file \"{}\" }}}}",
            d.path("pub/motd").display(),
            secret.display()
        ),
    );
    let grant = d.path("pub").display().to_string();
    let (code, out, err) = render(&url, &[&f.display().to_string(), "--allow-file", &grant]);
    assert_eq!(code, 2, "a template error is a usage error: {out}");
    assert!(err.contains("not readable by this template"), "{err}");
    assert!(!out.contains("s3cret"));

    // A syntax error names the template file, line and column.
    let bad = d.write("bad.tmpl", "a\n {{ range }}");
    let (code, _, err) = render(&url, &[&bad.display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.tmpl:2:"), "{err}");
}
