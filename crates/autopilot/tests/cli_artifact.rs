//! `autopilot artifact push|list|show` as scripts use it, on a real embedded catalog and a file:// store: records, idempotent and conflicting pushes, exit codes 0/1/2/3, `-o json`.

// These tests run the real binary as a child process.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};

use common::*;

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

/// Runs the CLI with none of the variables that choose a config, a
/// catalog or a store, plus `env`.
fn ap_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .env_remove("AUTOPILOT_CATALOG")
        .env_remove("AUTOPILOT_ARTIFACT_STORE")
        .env_remove("CONTAINERPILOT")
        .env_remove("AUTOPILOT_CONFIG")
        .env("USER", "tester")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cli");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Setup {
    d: Dir,
    catalog: String,
    store: String,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let d = Dir::new(tag);
        let catalog = format!("local://{}", d.path("catalog").display());
        let store = format!("file://{}", d.path("store").display());
        Setup { d, catalog, store }
    }
    /// `autopilot artifact ARGS --catalog C` with the store in the environment.
    fn art(&self, args: &[&str]) -> Run {
        let mut a = vec!["artifact"];
        a.extend(args);
        a.extend(["--catalog", &self.catalog]);
        ap_env(&a, &[("AUTOPILOT_ARTIFACT_STORE", &self.store)])
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let r = self.art(&a);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.err);
        serde_json::from_str(&r.out).expect("json output")
    }
    /// A directory to push: a script, a sub-directory, a symlink.
    fn tree(&self, name: &str, greeting: &str) -> String {
        let root = self.d.path(name);
        std::fs::create_dir_all(root.join("etc")).expect("tree");
        std::fs::write(root.join("run.sh"), "#!/bin/sh\n").expect("run");
        std::fs::write(root.join("etc/greeting"), greeting).expect("greeting");
        let _ = std::os::unix::fs::symlink("etc/greeting", root.join("greeting"));
        root.display().to_string()
    }
}

#[test]
fn push_list_show_a_directory() {
    let s = Setup::new("art-push");
    let app = s.tree("app", "hello");
    let rec = s.json(&["push", "api", &app, "--version", "1.0.0"]);
    let sha = rec["sha256"].as_str().expect("sha").to_string();
    assert_eq!(sha.len(), 64);
    assert_eq!(rec["name"], "api");
    assert_eq!(rec["version"], "1.0.0");
    assert_eq!(rec["kind"], "tar");
    assert_eq!(rec["store"], s.store.as_str());
    assert!(
        rec["by"].as_str().expect("by").starts_with("tester@"),
        "{rec}"
    );
    assert!(rec.get("file").is_none(), "{rec}");
    assert!(
        s.d.path(&format!("store/artifacts/{sha}.snap")).exists(),
        "the object is in the store under its sha256"
    );

    // The table form, and a default version (the sha's first 12 digits).
    let bin = s.d.write("server", "#!/bin/sh\necho server\n");
    let r = s.art(&["push", "srv", bin.to_str().expect("utf-8")]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert!(r.out.contains("kind:     file"), "{}", r.out);
    assert!(r.out.contains("file:     server"), "{}", r.out);
    let srv = s.json(&[
        "show",
        "srv",
        r.out.lines().nth(1).expect("version line")[10..].trim(),
    ]);
    assert_eq!(
        srv["version"].as_str().expect("version"),
        &srv["sha256"].as_str().expect("sha")[..12]
    );

    std::fs::write(s.d.path("app/etc/greeting"), "hello again").expect("change");
    let v2 = s.json(&["push", "api", &app, "--version", "1.1.0"]);
    assert_ne!(v2["sha256"], rec["sha256"]);

    let r = s.art(&["list", "api"]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.out);
    assert!(lines[0].starts_with("VERSION"), "{}", r.out);
    assert!(lines[1].starts_with("1.1.0 "), "newest first: {}", r.out);
    assert!(lines[2].starts_with("1.0.0 "), "{}", r.out);
    assert!(lines[2].contains(&sha[..12]), "{}", r.out);
    assert!(lines[2].contains("tar"), "{}", r.out);

    let list = s.json(&["list", "api"]);
    let versions: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["version"].as_str().expect("version"))
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"]);
    assert_eq!(s.json(&["show", "api", "1.0.0"]), rec);
    let r = s.art(&["show", "api", "1.0.0"]);
    assert!(r.out.contains(&format!("sha256:   {sha}")), "{}", r.out);
}

#[test]
fn a_re_push_is_idempotent_and_a_conflicting_one_exits_1() {
    let s = Setup::new("art-repush");
    let app = s.tree("app", "one");
    let first = s.json(&["push", "api", &app, "--version", "1.0.0"]);
    let again = s.json(&["push", "api", &app, "--version", "1.0.0"]);
    assert_eq!(again, first, "the first record is kept, created and all");
    // Packing is deterministic: the same tree gives the same default version.
    let a = s.json(&["push", "api", &app]);
    let b = s.json(&["push", "api", &app]);
    assert_eq!(a["sha256"], first["sha256"]);
    assert_eq!(a, b);

    std::fs::write(s.d.path("app/etc/greeting"), "two").expect("change");
    let r = s.art(&["push", "api", &app, "--version", "1.0.0"]);
    assert_eq!(r.code, Some(1), "{}{}", r.out, r.err);
    assert!(
        r.err.contains(&format!(
            "version 1.0.0 of api already exists with another checksum ({})",
            first["sha256"].as_str().expect("sha")
        )),
        "{}",
        r.err
    );
    assert_eq!(s.json(&["show", "api", "1.0.0"]), first, "unchanged");
    assert_eq!(s.json(&["list", "api"]).as_array().expect("array").len(), 2);
}

#[test]
fn bad_input_exits_2_and_absent_exits_1() {
    let s = Setup::new("art-exit");
    let app = s.tree("app", "x");
    let missing = s.d.path("no-such-dir").display().to_string();
    let r = s.art(&["push", "api", &missing]);
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(r.err.contains(&missing), "names the path: {}", r.err);

    for args in [
        ["push", "../api", app.as_str(), "--version", "1"],
        ["push", "api", app.as_str(), "--version", "1/2"],
    ] {
        let r = s.art(&args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.err);
        assert!(r.err.contains("letters, digits"), "{}", r.err);
    }

    // No store: flag nor environment.
    let r = ap_env(
        &["artifact", "push", "api", &app, "--catalog", &s.catalog],
        &[],
    );
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(r.err.contains("--store"), "{}", r.err);
    assert!(r.err.contains("AUTOPILOT_ARTIFACT_STORE"), "{}", r.err);
    // A store flag wins over the environment.
    let other = format!("file://{}", s.d.path("other").display());
    let r = s.art(&["push", "api", &app, "--store", &other, "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert!(r.out.contains(&other), "{}", r.out);
    let r = s.art(&["push", "api", &app, "--store", "file://relative"]);
    assert_eq!(r.code, Some(2), "{}", r.err);

    let r = s.art(&["list", "nothing"]);
    assert_eq!(r.code, Some(1), "{}", r.err);
    assert!(r.err.contains("no artifact \"nothing\""), "{}", r.err);
    let r = s.art(&["show", "api", "9.9.9"]);
    assert_eq!(r.code, Some(1), "{}", r.err);
    assert!(r.err.contains("no version \"9.9.9\""), "{}", r.err);
    assert_eq!(s.art(&["show", "api", "../x"]).code, Some(2));

    // A catalog that is not there: unreachable, and not created by a reader.
    let none = format!("local://{}", s.d.path("none").display());
    for args in [
        vec!["artifact", "list", "api", "--catalog", &none],
        vec!["artifact", "show", "api", "1", "--catalog", &none],
    ] {
        let r = ap_env(&args, &[]);
        assert_eq!(r.code, Some(3), "{args:?}: {}", r.err);
    }
    assert!(!s.d.path("none").exists());
}

#[test]
fn an_unreadable_record_is_skipped_with_a_warning() {
    let s = Setup::new("art-corrupt");
    let app = s.tree("app", "x");
    s.json(&["push", "api", &app, "--version", "1"]);
    let r = ap_env(
        &[
            "kv",
            "put",
            "--catalog",
            &s.catalog,
            "_fleet/artifacts/api/2",
            "{broken",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.err);
    let r = s.art(&["list", "api"]);
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert_eq!(r.out.lines().count(), 2, "{}", r.out);
    assert!(
        r.err
            .contains("warning: skipped: catalog key _fleet/artifacts/api/2"),
        "{}",
        r.err
    );
    let r = s.art(&["show", "api", "2"]);
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(r.err.contains("unreadable artifact record"), "{}", r.err);
}

/// Record text is anyone's input: a terminal escape in `by` (from $USER
/// at push) is printed escaped by `show` and `list`, and kept in JSON.
#[test]
fn control_characters_in_a_record_are_not_printed_raw() {
    let s = Setup::new("art-ctl");
    let app = s.tree("app", "one");
    let evil = "te\u{1b}]0;pwned\u{7}ster";
    let r = ap_env(
        &[
            "artifact",
            "push",
            "api",
            &app,
            "--version",
            "1",
            "--catalog",
            &s.catalog,
        ],
        &[("AUTOPILOT_ARTIFACT_STORE", &s.store), ("USER", evil)],
    );
    assert_eq!(r.code, Some(0), "{}", r.err);
    for args in [&["show", "api", "1"][..], &["list", "api"][..]] {
        let r = s.art(args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.err);
        assert!(
            !r.out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: {:?}",
            r.out
        );
        assert!(
            r.out.contains("te\\u{1b}]0;pwned\\u{7}ster@"),
            "{args:?}: {}",
            r.out
        );
    }
    assert!(
        s.json(&["show", "api", "1"])["by"]
            .as_str()
            .expect("by")
            .starts_with(evil)
    );
}
