//! `autopilot artifact push|list|show`: uploading versions of a file or directory to the artifact store and reading their records.

use std::path::PathBuf;

use autopilot_artifact::{self as artifact, Record};
use clap::Subcommand;

use super::{Access, CatalogOpts, Deadline, Output, SetupError, bounded, exit, open_catalog};

#[derive(Subcommand, Debug)]
pub enum ArtifactCmd {
    /// Upload a file (as is) or a directory (as a tar) and record it as a version of NAME
    /// (exit 1 if VERSION exists with other content).
    Push {
        name: String,
        path: PathBuf,
        /// The version's name (default: the first 12 hex digits of its sha256).
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// The store to upload to: file:///path or s3://bucket/prefix.
        #[arg(long, env = "AUTOPILOT_ARTIFACT_STORE", value_name = "URL")]
        store: Option<String>,
    },
    /// List the versions of NAME, newest first (exit 1 if there are none).
    List { name: String },
    /// Show one version of NAME (exit 1 if it is not recorded).
    Show { name: String, version: String },
}

/// Who pushes: `$USER@host`, or `uid N@host`.
fn by() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    match std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        Some(u) => format!("{u}@{host}"),
        None => format!("uid {}@{host}", nix::unistd::Uid::current()),
    }
}

/// The exit code scripts rely on: a catalog error keeps its type (3 when
/// unreachable); anything else is a request that cannot be carried out (2).
/// The chain is kept, except where the message already names its cause
/// (it would be printed twice).
fn classify(e: artifact::Error) -> anyhow::Error {
    match e {
        artifact::Error::Catalog(c) => c.into(),
        e @ (artifact::Error::Io { .. } | artifact::Error::Corrupt { .. }) => {
            anyhow::Error::msg(e.to_string())
        }
        other => anyhow::Error::new(other),
    }
}

/// Catalog text as printed: a record is anyone's input, and a control
/// character (a terminal escape) must not reach the terminal as is.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_record(r: &Record, out: Output) -> anyhow::Result<()> {
    if out.json() {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("name:     {}", r.name);
    println!("version:  {}", r.version);
    println!("sha256:   {}", r.sha256);
    println!("size:     {}", r.size);
    println!("kind:     {}", r.kind.as_str());
    if let Some(f) = &r.file {
        println!("file:     {}", clean(f));
    }
    if let Some(m) = r.mode {
        println!("mode:     {m:04o}");
    }
    println!("store:    {}", clean(&r.store));
    println!("created:  {}", clean(&r.created));
    println!("by:       {}", clean(&r.by));
    Ok(())
}

pub async fn artifact_cmd(o: CatalogOpts, cmd: &ArtifactCmd, out: Output) -> anyhow::Result<i32> {
    let what = format!("catalog {}", o.url);
    match cmd {
        ArtifactCmd::Push {
            name,
            path,
            version,
            store,
        } => {
            for (flag, v) in [("NAME", Some(name)), ("--version", version.as_ref())] {
                if let Some(v) = v.filter(|v| !artifact::valid_name(v)) {
                    return Err(SetupError {
                        origin: flag.into(),
                        field: String::new(),
                        message: format!(
                            "{}: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                            super::quote(v)
                        ),
                    }
                    .into());
                }
            }
            let url = store
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| SetupError {
                    origin: "--store".into(),
                    field: String::new(),
                    message: "no artifact store: pass --store URL or set $AUTOPILOT_ARTIFACT_STORE"
                        .into(),
                })?;
            let store = artifact::open_store(url)?;
            if let Err(e) = std::fs::metadata(path) {
                return Err(SetupError {
                    origin: path.display().to_string(),
                    field: String::new(),
                    message: format!("cannot push it: {e}"),
                }
                .into());
            }
            let cat = open_catalog(&o, &super::cli_owner(), Access::Write)
                .await?
                .cat;
            // The upload takes as long as the bytes need; only the catalog
            // calls are bounded by --timeout.
            let up = artifact::upload(&*store, path).await.map_err(classify)?;
            let by = by();
            let recorded = bounded(&what, Deadline::after(o.timeout), async {
                Ok(artifact::record(&*cat, name, version.as_deref(), &up, &by).await)
            })
            .await?;
            match recorded {
                Ok(r) => {
                    print_record(&r, out)?;
                    Ok(exit::OK)
                }
                Err(e @ artifact::Error::Exists { .. }) => {
                    eprintln!("autopilot: {e}");
                    Ok(exit::ABSENT)
                }
                Err(e) => Err(classify(e)),
            }
        }
        ArtifactCmd::List { name } => {
            let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
                .await?
                .cat;
            let (list, bad) = bounded(&what, o.deadline, async {
                artifact::list_report(&*cat, name).await.map_err(classify)
            })
            .await?;
            for e in &bad {
                eprintln!("autopilot: warning: skipped: {e}");
            }
            if list.is_empty() {
                eprintln!("autopilot: no artifact {} in {what}", super::quote(name));
                return Ok(exit::ABSENT);
            }
            if out.json() {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(exit::OK);
            }
            let vw = list
                .iter()
                .map(|r| r.version.len())
                .max()
                .unwrap_or(0)
                .max("VERSION".len());
            println!(
                "{:<vw$}  {:<12}  {:>12}  {:<4}  {:<24}  BY",
                "VERSION", "SHA256", "SIZE", "KIND", "CREATED"
            );
            for r in &list {
                println!(
                    "{:<vw$}  {:<12}  {:>12}  {:<4}  {:<24}  {}",
                    r.version,
                    r.sha256.get(..12).unwrap_or(&r.sha256),
                    r.size,
                    r.kind.as_str(),
                    clean(&r.created),
                    clean(&r.by)
                );
            }
            Ok(exit::OK)
        }
        ArtifactCmd::Show { name, version } => {
            let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
                .await?
                .cat;
            let got = bounded(&what, o.deadline, async {
                artifact::get(&*cat, name, version).await.map_err(classify)
            })
            .await?;
            match got {
                Some(r) => {
                    print_record(&r, out)?;
                    Ok(exit::OK)
                }
                None => {
                    eprintln!(
                        "autopilot: no version {} of artifact {} in {what}",
                        super::quote(version),
                        super::quote(name)
                    );
                    Ok(exit::ABSENT)
                }
            }
        }
    }
}
