//! `-template` (render the config file) and `autopilot template render` (a file template from catalog data, once or on every change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// Render a template from catalog data: once (`--once`, or with no --out), or again on every change.
    Render {
        /// The template file (Go text/template, the config's syntax).
        source: PathBuf,
        /// Where to write (atomically, only when changed); stdout if absent.
        #[arg(long, value_name = "DEST")]
        out: Option<PathBuf>,
        /// Render once, as soon as the data the template names exists, and exit.
        #[arg(long)]
        once: bool,
        /// Mode of the written file (octal).
        #[arg(long, default_value = "0644")]
        perms: String,
        /// A file or directory the template's `file` function may read (repeatable).
        #[arg(long = "allow-file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Catalog URL (default: $AUTOPILOT_CATALOG, then the default local catalog).
        #[arg(long, value_name = "URL")]
        catalog: Option<String>,
    },
}

/// `-template`: renders the config file with the environment and writes it to `out` (stdout for none or "-").
pub fn config_template(
    config: Option<&Path>,
    out: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    let path = autopilot_config::resolve_path(config, env)?;
    let text = autopilot_config::render(&path, env)?;
    match out {
        None => print!("{text}"),
        Some(p) if p == Path::new("-") => print!("{text}"),
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
    }
    Ok(0)
}

/// How long `template render --once` waits for the data by default.
const RENDER_TIMEOUT: Duration = Duration::from_secs(60);

/// A template or flag that cannot be used as given: exit 2, naming it.
fn unusable(origin: String, message: String) -> anyhow::Error {
    super::SetupError {
        origin,
        field: String::new(),
        message,
    }
    .into()
}

/// `autopilot template render`; `timeout` (the global `--timeout`) bounds
/// the whole command with `--once` (opening the catalog, the wait for data
/// and every render share it; `0`: wait for the data for ever), and opening
/// the catalog without it. A template, file or flag that cannot be used
/// exits 2.
pub fn render(
    cmd: &TemplateCmd,
    config: Option<&autopilot_config::Config>,
    timeout: Option<&str>,
    env: BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    let TemplateCmd::Render {
        source,
        out,
        once,
        perms,
        files,
        catalog,
    } = cmd;
    let timeout = match timeout {
        Some(t) => autopilot_config::parse_duration(t).map_err(|e| super::SetupError {
            origin: "--timeout".into(),
            field: String::new(),
            message: format!("{}: {e}", super::quote(t)),
        })?,
        None => RENDER_TIMEOUT,
    };
    let open_within = if timeout.is_zero() {
        super::DEFAULT_TIMEOUT
    } else {
        timeout
    };
    let opts = super::catalog_choice(catalog.as_deref(), config, &env, open_within)?;
    let perms = u32::from_str_radix(perms.trim_start_matches("0o"), 8)
        .ok()
        .filter(|p| *p <= 0o7777)
        .ok_or_else(|| {
            unusable(
                "--perms".into(),
                format!("{}: not an octal mode such as 0644", super::quote(perms)),
            )
        })?;
    let text = std::fs::read_to_string(source).map_err(|e| {
        unusable(
            source.display().to_string(),
            format!("cannot read the template: {e}"),
        )
    })?;
    // Unknown functions are errors now, as they are at config load.
    let known = autopilot_template::Funcs::with_env(Default::default());
    let tpl = autopilot_template::Template::parse(&text)
        .and_then(|t| {
            t.check_functions(known.names().chain(autopilot_config::TEMPLATE_DATA_FUNCS))
                .map(|()| t)
        })
        .map_err(|e| {
            unusable(
                format!("{}:{}:{}", source.display(), e.line, e.column),
                e.message,
            )
        })?;
    let req = RenderReq {
        source: source.clone(),
        text,
        tpl,
        out: out.clone(),
        once: *once || out.is_none(),
        timeout,
        perms,
        files: files.clone(),
        env,
    };
    super::block_on(render_cmd(opts, req))?
}

struct RenderReq {
    source: PathBuf,
    text: String,
    tpl: autopilot_template::Template,
    out: Option<PathBuf>,
    once: bool,
    timeout: Duration,
    perms: u32,
    files: Vec<PathBuf>,
    env: BTreeMap<String, String>,
}

/// Once, waiting for the data the template names; or for ever, with the
/// agent's own template task.
async fn render_cmd(o: super::CatalogOpts, req: RenderReq) -> anyhow::Result<i32> {
    use autopilot_runtime::templates::{self, Grants, RenderError};
    // It waits for data that may not exist yet, as `catalog watch` does: it
    // creates the embedded catalog so it can wait on it, and only reads.
    let cat = super::open_catalog(&o, &super::cli_owner(), super::Access::Await)
        .await?
        .cat;
    let name = req.source.display().to_string();
    if !req.once {
        let dest = req
            .out
            .clone()
            .context("rendering on every change needs --out")?;
        let cfg = autopilot_config::TemplateConfig {
            name: name.clone(),
            source: req.source,
            text: req.text,
            dest,
            command: None,
            wait_min: Duration::ZERO,
            wait_max: Duration::ZERO,
            perms: req.perms,
            when: None,
            files: req.files,
        };
        let ctx = templates::Ctx {
            catalog: cat,
            spawner: autopilot_process::Spawner::start()?,
            metrics: std::sync::Arc::new(autopilot_runtime::metrics::Metrics::new(&[])),
            env: req.env,
        };
        let (_pokes, rx) = tokio::sync::watch::channel(0);
        let task = templates::spawn(cfg, ctx, rx);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = task => {}
        }
        return Ok(0);
    }
    let tpl = std::sync::Arc::new(req.tpl);
    let grants = Grants {
        env: req.env,
        files: req.files,
    };
    // One deadline for the command: opening the catalog used part of it.
    let give_up = (!req.timeout.is_zero()).then_some(o.deadline.at);
    let mut changes = cat.changes();
    let mut told = String::new();
    // Whether the last attempt failed on the catalog (exit 3 on giving up)
    // rather than waiting for absent data (exit 1).
    let mut unreachable: bool;
    loop {
        changes.borrow_and_update();
        let (t, c, g, n) = (tpl.clone(), cat.clone(), grants.clone(), name.clone());
        let handle = tokio::runtime::Handle::current();
        let rendering = tokio::task::spawn_blocking(move || {
            templates::render_blocking(&n, &t, &c, &handle, &g)
        });
        // The engine bounds its own time; a render still running at the
        // deadline is waiting on the catalog's reads.
        let out = tokio::select! {
            biased;
            r = rendering => r.context("render task failed")?,
            _ = sleep_until_opt(give_up) => {
                return Err(super::Unreachable(format!(
                    "{name}: the catalog {} did not answer within {} (--timeout)",
                    o.url,
                    super::dur(req.timeout)
                ))
                .into());
            }
        };
        match out {
            Ok(text) => {
                match &req.out {
                    None => print!("{text}"),
                    Some(p) if p == Path::new("-") => print!("{text}"),
                    Some(p) => {
                        templates::write_if_changed(p, &text, req.perms)
                            .with_context(|| format!("cannot write {}", p.display()))?;
                    }
                }
                return Ok(0);
            }
            Err(RenderError::Template {
                template,
                line,
                column,
                message,
            }) => return Err(unusable(format!("{template}:{line}:{column}"), message)),
            Err(e) => {
                unreachable = matches!(e, RenderError::Unavailable { .. });
                let msg = e.to_string();
                if msg != told {
                    eprintln!("autopilot: {msg}");
                    told = msg;
                }
            }
        }
        let retry = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            _ = changes.changed() => {}
            _ = retry => {}
            _ = sleep_until_opt(give_up) => {
                let msg = format!(
                    "gave up after {} (--timeout): {told}",
                    super::dur(req.timeout)
                );
                if unreachable {
                    return Err(super::Unreachable(msg).into());
                }
                eprintln!("autopilot: {msg}");
                return Ok(super::exit::ABSENT);
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
