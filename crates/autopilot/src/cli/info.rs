//! `autopilot version`, `completions` and `man`: what this binary is, and its interface for shells and `man`.

use super::Output;

/// The crate version, the git commit and the build date (UTC), as
/// `build.rs` recorded them; "unknown" when they could not be learned (a
/// tarball without git, say).
pub fn version(out: Output) -> i32 {
    let (version, commit, date) = (
        env!("CARGO_PKG_VERSION"),
        env!("AUTOPILOT_GIT_COMMIT"),
        env!("AUTOPILOT_BUILD_DATE"),
    );
    if out.json() {
        println!(
            "{}",
            serde_json::json!({ "version": version, "commit": commit, "buildDate": date })
        );
    } else {
        println!("autopilot {version}");
        println!("commit: {commit}");
        println!("built: {date}");
    }
    0
}

/// Shells `autopilot completions` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Prints the completion script for `shell`, generated from the parser.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> i32 {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "autopilot", &mut std::io::stdout());
    0
}

/// Prints the man page (roff), generated from the parser.
pub fn man(cmd: clap::Command) -> anyhow::Result<i32> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.version(env!("CARGO_PKG_VERSION"))).render(&mut buf)?;
    use std::io::Write;
    std::io::stdout().write_all(&buf)?;
    Ok(0)
}
