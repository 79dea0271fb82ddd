//! Records the git commit and the build date for `autopilot version`; "unknown" without git or a repository.

// The build script runs git, not a supervised child: the process crate's
// one-reaper rule is about the agent.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (a commit, a checkout).
    for p in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // Reproducible builds set SOURCE_DATE_EPOCH; otherwise, now.
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.parse::<u64>().ok(),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
    };
    // RFC 3339 ends at the year 9999 (humantime refuses later times).
    const YEAR_10000: u64 = 253_402_300_800;
    let date = secs
        .filter(|s| *s < YEAR_10000)
        .map(|s| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
            let mut out = String::new();
            let _ = write!(out, "{}", humantime::format_rfc3339_seconds(t));
            out
        })
        // The date part (YYYY-MM-DD).
        .and_then(|s| s.get(..10).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AUTOPILOT_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=AUTOPILOT_BUILD_DATE={date}");
}
