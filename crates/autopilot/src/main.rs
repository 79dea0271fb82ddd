//! The `autopilot` binary: ContainerPilot's single-dash flags and modern subcommands over the runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use autopilot_config::ConfigError;
use clap::{Parser, Subcommand};

/// Flags ContainerPilot users pass with one dash; rewritten to two for clap.
const SINGLE_DASH: [&str; 13] = [
    "config",
    "template",
    "out",
    "reload",
    "maintenance",
    "putenv",
    "putmetric",
    "ping",
    "version",
    "pid1",
    "init",
    "socket",
    "help",
];

#[derive(Parser, Debug)]
#[command(
    name = "autopilot",
    about = "Runs a service's jobs as PID 1: supervises, health-checks and registers them",
    disable_version_flag = true
)]
struct Cli {
    /// JSON5 config file (default: $CONTAINERPILOT, then $AUTOPILOT_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Control socket to talk to (default: the config's control.socket).
    #[arg(long, global = true, env = "AUTOPILOT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Render the config template and exit.
    #[arg(long)]
    template: bool,
    /// Where -template writes (default: stdout, "-").
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Reload the running agent's config.
    #[arg(long)]
    reload: bool,
    /// Toggle maintenance mode of the running agent.
    #[arg(long, value_name = "enable|disable")]
    maintenance: Option<String>,
    /// Set (K=V) or clear (K) an environment variable for future jobs.
    #[arg(long, value_name = "K=V")]
    putenv: Vec<String>,
    /// Update a configured metric (K=V).
    #[arg(long, value_name = "K=V")]
    putmetric: Vec<String>,
    /// Check that the agent's control socket answers.
    #[arg(long)]
    ping: bool,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
    /// Reap orphans and forward signals even when not PID 1.
    #[arg(long, alias = "pid1")]
    init: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Reload the running agent's config; an invalid config is reported and not applied.
    Reload,
    /// Enter or leave maintenance mode.
    Maintenance {
        #[arg(value_parser = ["enable", "disable"])]
        mode: String,
    },
    /// Set (K=V) or clear (K) environment variables for future jobs.
    Putenv {
        #[arg(required = true)]
        vars: Vec<String>,
    },
    /// Update configured metrics (K=V).
    Putmetric {
        #[arg(required = true)]
        metrics: Vec<String>,
    },
    /// Check that the agent answers.
    Ping,
    /// Show the jobs of the running agent.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Render the config file's template, or (`template render`) a file template from the catalog.
    Template {
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<TemplateCmd>,
    },
    /// Print the version.
    Version,
    /// Read the service catalog.
    Catalog {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, then the default local catalog).
        #[arg(long, global = true, value_name = "URL")]
        catalog: Option<String>,
        #[command(subcommand)]
        cmd: CatalogCmd,
    },
    /// Read and write keys in the catalog, for hooks.
    Kv {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, then the default local catalog).
        #[arg(long, global = true, value_name = "URL")]
        catalog: Option<String>,
        #[command(subcommand)]
        cmd: KvCmd,
    },
    /// Print the current leader of an election (exit 1 if nobody leads).
    Leader {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, then the default local catalog).
        #[arg(long, value_name = "URL")]
        catalog: Option<String>,
        name: String,
        /// `{"id", "address", "port", "term"}`.
        #[arg(long)]
        json: bool,
    },
    /// Run a command while holding a cluster-wide lock; other callers wait their turn.
    Lock {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, then the default local catalog).
        #[arg(long, value_name = "URL")]
        catalog: Option<String>,
        name: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KvCmd {
    /// Print a key's value (exit 1 if it is absent).
    Get { key: String },
    /// Set a key.
    Put { key: String, value: String },
    /// `cas KEY EXPECTED NEW`, or `cas --absent KEY NEW`: set a key only if it
    /// holds EXPECTED (or does not exist); exit 1 if it did not.
    Cas {
        key: String,
        #[arg(num_args = 1..=2, required = true, value_name = "[EXPECTED] NEW")]
        values: Vec<String>,
        #[arg(long)]
        absent: bool,
    },
    /// Delete a key (exit 1 if it was absent).
    Del { key: String },
    /// List keys (and values) under a prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CatalogCmd {
    /// List services with their instance counts.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// List the live instances of a service.
    Instances {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a service's passing instances now and after every change, until interrupted.
    Watch {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = std::env::args_os().map(|a| {
        let s = a.to_string_lossy();
        match s.strip_prefix('-') {
            Some(rest)
                if !rest.starts_with('-')
                    && SINGLE_DASH.contains(&rest.split('=').next().unwrap_or_default()) =>
            {
                format!("-{s}").into()
            }
            _ => a,
        }
    });
    let cli = Cli::parse_from(args);
    match real_main(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("autopilot: {e:#}");
            ExitCode::from(code)
        }
    }
}

#[derive(Subcommand, Debug)]
enum TemplateCmd {
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
        /// With --once: give up after this long (e.g. 30s; 0 waits for ever).
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        timeout: String,
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

fn env_map() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let env = env_map();
    if cli.version || matches!(cli.cmd, Some(Cmd::Version)) {
        println!("autopilot {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    if let Some(Cmd::Template {
        cmd:
            Some(TemplateCmd::Render {
                source,
                out,
                once,
                timeout,
                perms,
                files,
                catalog,
            }),
        ..
    }) = &cli.cmd
    {
        let (url, etcd) = catalog_choice(catalog.as_deref(), &env)?;
        let perms = u32::from_str_radix(perms.trim_start_matches("0o"), 8)
            .ok()
            .filter(|p| *p <= 0o7777)
            .with_context(|| format!("--perms {perms:?}: not an octal mode such as 0644"))?;
        let timeout = autopilot_config::parse_duration(timeout)
            .map_err(|e| anyhow::anyhow!("--timeout {timeout:?}: {e}"))?;
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read template {}", source.display()))?;
        let tpl = autopilot_template::Template::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: {}",
                source.display(),
                e.line,
                e.column,
                e.message
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
        return block_on(render_cmd(url, etcd, req))?;
    }
    if cli.template || matches!(cli.cmd, Some(Cmd::Template { .. })) {
        let out = match &cli.cmd {
            Some(Cmd::Template { out, .. }) => out.clone().or(cli.out.clone()),
            _ => cli.out.clone(),
        };
        let path = autopilot_config::resolve_path(cli.config.as_deref(), &env)?;
        let text = autopilot_config::render(&path, &env)?;
        match out.as_deref() {
            None => print!("{text}"),
            Some(p) if p == Path::new("-") => print!("{text}"),
            Some(p) => {
                std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
            }
        }
        return Ok(0);
    }
    let client = if cli.reload {
        Some(Req::post("/v3/reload", None))
    } else if let Some(m) = &cli.maintenance {
        Some(maintenance(m)?)
    } else if !cli.putenv.is_empty() {
        Some(putenv(&cli.putenv)?)
    } else if !cli.putmetric.is_empty() {
        Some(putmetric(&cli.putmetric)?)
    } else if cli.ping {
        Some(Req::get("/v3/ping"))
    } else {
        match &cli.cmd {
            Some(Cmd::Reload) => Some(Req::post("/v3/reload", None)),
            Some(Cmd::Maintenance { mode }) => Some(maintenance(mode)?),
            Some(Cmd::Putenv { vars }) => Some(putenv(vars)?),
            Some(Cmd::Putmetric { metrics }) => Some(putmetric(metrics)?),
            Some(Cmd::Ping) => Some(Req::get("/v3/ping")),
            Some(Cmd::Status { json }) => return status(&cli, &env, *json),
            Some(Cmd::Catalog { catalog, cmd }) => {
                let url =
                    autopilot_catalog::select_url(catalog.as_deref(), &env, None, nix_is_root());
                let etcd = autopilot_runtime::catalog::etcd_settings(&Default::default(), &env)
                    .map_err(anyhow::Error::msg)?;
                return block_on(catalog_cmd(url, etcd, cmd))?;
            }
            Some(Cmd::Kv { catalog, cmd }) => {
                let (url, etcd) = catalog_choice(catalog.as_deref(), &env)?;
                return block_on(kv_cmd(url, etcd, cmd))?;
            }
            Some(Cmd::Leader {
                catalog,
                name,
                json,
            }) => {
                let (url, etcd) = catalog_choice(catalog.as_deref(), &env)?;
                return block_on(leader_cmd(url, etcd, name, *json))?;
            }
            Some(Cmd::Lock {
                catalog,
                name,
                command,
            }) => {
                let (url, etcd) = catalog_choice(catalog.as_deref(), &env)?;
                return block_on(lock_cmd(url, etcd, name, command))?;
            }
            _ => None,
        }
    };
    if let Some(req) = client {
        let socket = socket_for_client(&cli, &env);
        let (code, body) = block_on(autopilot_runtime::control::request(
            &socket, req.method, &req.uri, req.body,
        ))??;
        if code != 200 {
            bail!("the agent refused the request ({code}): {}", body.trim());
        }
        if !body.trim().is_empty() {
            println!("{}", body.trim());
        }
        return Ok(0);
    }
    run_agent(&cli, env)
}

struct Req {
    method: &'static str,
    uri: String,
    body: Option<String>,
}

impl Req {
    fn get(uri: &str) -> Req {
        Req {
            method: "GET",
            uri: uri.into(),
            body: None,
        }
    }
    fn post(uri: &str, body: Option<String>) -> Req {
        Req {
            method: "POST",
            uri: uri.into(),
            body,
        }
    }
}

fn maintenance(mode: &str) -> anyhow::Result<Req> {
    match mode {
        "enable" | "disable" => Ok(Req::post(&format!("/v3/maintenance/{mode}"), None)),
        other => bail!("-maintenance takes \"enable\" or \"disable\", not {other:?}"),
    }
}

fn putenv(vars: &[String]) -> anyhow::Result<Req> {
    let mut m = serde_json::Map::new();
    for v in vars {
        let (k, val) = v.split_once('=').unwrap_or((v, ""));
        if k.is_empty() {
            bail!("-putenv {v:?}: expected KEY=VALUE or KEY");
        }
        m.insert(k.to_string(), serde_json::Value::String(val.to_string()));
    }
    Ok(Req::post(
        "/v3/environ",
        Some(serde_json::Value::Object(m).to_string()),
    ))
}

fn putmetric(vars: &[String]) -> anyhow::Result<Req> {
    let mut m = serde_json::Map::new();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            bail!("-putmetric {v:?}: expected NAME=VALUE");
        };
        let n: f64 = val
            .trim()
            .parse()
            .with_context(|| format!("-putmetric {v:?}: {val:?} is not a number"))?;
        let num = serde_json::Number::from_f64(n)
            .with_context(|| format!("-putmetric {v:?}: {val:?} is not a finite number"))?;
        m.insert(k.to_string(), serde_json::Value::Number(num));
    }
    Ok(Req::post(
        "/v3/metric",
        Some(serde_json::Value::Object(m).to_string()),
    ))
}

fn default_socket(env: &BTreeMap<String, String>) -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/run/containerpilot.socket");
    }
    match env.get("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => Path::new(d).join("autopilot.socket"),
        None => std::env::temp_dir().join(format!("autopilot-{}.socket", uid())),
    }
}

fn uid() -> u32 {
    nix::unistd::Uid::current().as_raw()
}

fn nix_is_root() -> bool {
    uid() == 0
}

/// The socket a client command talks to: `--socket`, else the config's
/// `control.socket` (when a config can be found and loaded), else the default.
fn socket_for_client(cli: &Cli, env: &BTreeMap<String, String>) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    autopilot_config::resolve_path(cli.config.as_deref(), env)
        .ok()
        .and_then(|p| autopilot_config::load(&p, env).ok())
        .and_then(|c| c.control.socket)
        .unwrap_or_else(|| default_socket(env))
}

fn status(cli: &Cli, env: &BTreeMap<String, String>, json: bool) -> anyhow::Result<i32> {
    let socket = socket_for_client(cli, env);
    let (code, body) = block_on(autopilot_runtime::control::request(
        &socket,
        "GET",
        "/v3/status",
        None,
    ))??;
    if code != 200 {
        bail!("the agent refused the request ({code}): {}", body.trim());
    }
    if json {
        println!("{}", body.trim());
        return Ok(0);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the agent sent invalid status JSON")?;
    println!(
        "autopilot {} pid {}{}{}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        if v["maintenance"] == true {
            "  [maintenance]"
        } else {
            ""
        },
        if v["stopping"] == true {
            "  [stopping]"
        } else {
            ""
        },
    );
    println!(
        "{:<24} {:<11} {:>8} {:<11} {:>8}  CATALOG",
        "JOB", "STATUS", "PID", "HEALTH", "RESTARTS"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        let pid = j["pid"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let reg = &j["registration"];
        let catalog = if reg.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} {}",
                reg["id"].as_str().unwrap_or("?"),
                reg["catalog"].as_str().unwrap_or("unregistered")
            )
        };
        println!(
            "{:<24} {:<11} {:>8} {:<11} {:>8}  {}",
            j["name"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            pid,
            j["health"].as_str().unwrap_or("?"),
            j["restarts"],
            catalog,
        );
    }
    let c = &v["catalog"];
    println!(
        "catalog {}{}",
        c["url"].as_str().unwrap_or("?"),
        c["error"]
            .as_str()
            .map(|e| format!("  [degraded: {e}]"))
            .unwrap_or_default()
    );
    Ok(0)
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

async fn catalog_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    cmd: &CatalogCmd,
) -> anyhow::Result<i32> {
    let owner = format!("cli-{}", std::process::id());
    let cat = autopilot_runtime::catalog::open(&url, &owner, &etcd).await?;
    match cmd {
        CatalogCmd::Services { json } => {
            let list = cat.services().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:>9} {:>8}", "SERVICE", "INSTANCES", "PASSING");
                for s in list {
                    println!("{:<32} {:>9} {:>8}", s.name, s.instances, s.passing);
                }
            }
        }
        CatalogCmd::Instances { name, json } => {
            let list = cat.instances(name).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_instances(&list);
            }
        }
        CatalogCmd::Watch { name, json } => {
            let mut changes = cat.changes();
            let mut last = None;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                changes.borrow_and_update();
                let passing: Vec<_> = cat
                    .instances(name)
                    .await?
                    .into_iter()
                    .filter(|i| i.status == autopilot_catalog::Status::Passing)
                    .collect();
                let key: Vec<_> = passing
                    .iter()
                    .map(|i| (&i.address, i.port, &i.tags))
                    .map(|k| format!("{k:?}"))
                    .collect();
                if last.as_ref() != Some(&key) {
                    if *json {
                        println!("{}", serde_json::to_string(&passing)?);
                    } else {
                        println!(
                            "{} {name}: {} passing: {}",
                            autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms()),
                            passing.len(),
                            passing
                                .iter()
                                .map(|i| format!("{}:{}", i.address, i.port))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    last = Some(key);
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return Ok(1) },
                    _ = tokio::signal::ctrl_c() => return Ok(0),
                    _ = term.recv() => return Ok(0),
                }
            }
        }
    }
    Ok(0)
}

/// Where per-job state directories live when `$AUTOPILOT_STATE_DIR` is unset.
fn default_state_root(env: &BTreeMap<String, String>) -> PathBuf {
    if nix_is_root() {
        return PathBuf::from("/var/lib/autopilot/jobs");
    }
    let base = env
        .get("XDG_STATE_HOME")
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| Path::new(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("autopilot/jobs")
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

/// `autopilot template render`: once, waiting for the data the template
/// names; or for ever, with the agent's own template task.
async fn render_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    req: RenderReq,
) -> anyhow::Result<i32> {
    use autopilot_runtime::templates::{self, Grants, RenderError};
    let owner = format!("cli-{}", std::process::id());
    let cat = autopilot_runtime::catalog::open(&url, &owner, &etcd).await?;
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
    let give_up = (!req.timeout.is_zero()).then(|| tokio::time::Instant::now() + req.timeout);
    let mut changes = cat.changes();
    let mut told = String::new();
    loop {
        changes.borrow_and_update();
        let (t, c, g, n) = (tpl.clone(), cat.clone(), grants.clone(), name.clone());
        let handle = tokio::runtime::Handle::current();
        let out = tokio::task::spawn_blocking(move || {
            templates::render_blocking(&n, &t, &c, &handle, &g)
        })
        .await
        .context("render task failed")?;
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
            Err(e @ RenderError::Template { .. }) => anyhow::bail!("{e}"),
            Err(e) => {
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
            _ = sleep_until_opt(give_up) => anyhow::bail!("gave up after {:?}: {told}", req.timeout),
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn catalog_choice(
    explicit: Option<&str>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(String, autopilot_config::EtcdConfig)> {
    let url = autopilot_catalog::select_url(explicit, env, None, nix_is_root());
    let etcd = autopilot_runtime::catalog::etcd_settings(&Default::default(), env)
        .map_err(anyhow::Error::msg)?;
    Ok((url, etcd))
}

async fn kv_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    cmd: &KvCmd,
) -> anyhow::Result<i32> {
    let owner = format!("cli-{}", std::process::id());
    let cat = autopilot_runtime::catalog::open(&url, &owner, &etcd).await?;
    Ok(match cmd {
        KvCmd::Get { key } => match cat.kv_get(key).await? {
            Some(v) => {
                println!("{v}");
                0
            }
            None => {
                eprintln!("autopilot: no key {key:?} in catalog {url}");
                1
            }
        },
        KvCmd::Put { key, value } => {
            cat.kv_put(key, value).await?;
            0
        }
        KvCmd::Cas {
            key,
            values,
            absent,
        } => {
            let (expected, value) = match (values.as_slice(), absent) {
                ([new], true) => (None, new),
                ([old, new], false) => (Some(old.as_str()), new),
                _ => bail!(
                    "usage: autopilot kv cas KEY EXPECTED NEW, or autopilot kv cas --absent KEY NEW"
                ),
            };
            i32::from(!cat.kv_cas(key, expected, value).await?)
        }
        KvCmd::Del { key } => i32::from(!cat.kv_delete(key).await?),
        KvCmd::Ls { prefix, json } => {
            let list = cat.kv_list(prefix).await?;
            if *json {
                let m: serde_json::Map<String, serde_json::Value> = list
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                println!("{}", serde_json::Value::Object(m));
            } else {
                for (k, v) in list {
                    println!("{k}\t{v}");
                }
            }
            0
        }
    })
}

async fn leader_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    name: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let owner = format!("cli-{}", std::process::id());
    let cat = autopilot_runtime::catalog::open(&url, &owner, &etcd).await?;
    match cat.leader(name).await? {
        Some(l) if json => println!("{}", serde_json::to_string(&l)?),
        Some(l) => println!("{} {}:{} term {}", l.id, l.address, l.port, l.term),
        None => {
            eprintln!("autopilot: nobody leads {name:?}");
            return Ok(1);
        }
    }
    Ok(0)
}

/// Holds the lock while the command runs, keeping this session alive so
/// the lock does not expire under a long command, then releases it. If
/// this process is killed, the lock expires with its session.
#[allow(clippy::disallowed_methods)] // replaced by the process crate's spawner
async fn lock_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    name: &str,
    command: &[String],
) -> anyhow::Result<i32> {
    let owner = format!(
        "lock-{}-{}",
        std::process::id(),
        autopilot_catalog::now_ms()
    );
    let cat = autopilot_runtime::catalog::open(&url, &owner, &etcd).await?;
    cat.lock(name).await?;
    let (program, args) = command
        .split_first()
        .context("lock needs a command after --")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("cannot run {program:?}"))?;
    let every = cat
        .keep_alive_interval()
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    let mut last = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last.elapsed() >= every {
            last = std::time::Instant::now();
            if let Err(e) = cat.keep_alive().await {
                eprintln!("autopilot: lock {name}: {e}");
            }
        }
    };
    cat.unlock(name).await?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn print_instances(list: &[autopilot_catalog::Instance]) {
    println!(
        "{:<36} {:<22} {:<11} {:<24} TAGS",
        "ID", "ADDRESS", "STATUS", "LAST HEARTBEAT"
    );
    for i in list {
        println!(
            "{:<36} {:<22} {:<11} {:<24} {}",
            i.id,
            format!("{}:{}", i.address, i.port),
            i.status.as_str(),
            i.last_heartbeat,
            i.tags.join(",")
        );
    }
}

fn hostname(env: &BTreeMap<String, String>) -> String {
    env.get("AUTOPILOT_HOSTNAME")
        .filter(|h| !h.is_empty())
        .cloned()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

fn run_agent(cli: &Cli, env: BTreeMap<String, String>) -> anyhow::Result<i32> {
    let path = autopilot_config::resolve_path(cli.config.as_deref(), &env)?;
    let config = autopilot_config::load(&path, &env)?;
    let log = autopilot_runtime::logging::init(&config.logging)?;
    let socket = cli
        .socket
        .clone()
        .or_else(|| config.control.socket.clone())
        .unwrap_or_else(|| default_socket(&env));
    let init = cli.init || std::process::id() == 1;
    let catalog_explicit =
        config.catalog.is_some() || env.get("AUTOPILOT_CATALOG").is_some_and(|c| !c.is_empty());
    let catalog_url =
        autopilot_catalog::select_url(None, &env, config.catalog.as_deref(), nix_is_root());
    let job_state_root = env
        .get("AUTOPILOT_STATE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default_state_root(&env));
    let opts = autopilot_runtime::Options {
        job_state_root,
        hostname: hostname(&env),
        config,
        env,
        socket,
        init,
        log,
        catalog_url,
        catalog_explicit,
    };
    let code = block_on(autopilot_runtime::run(opts))??;
    Ok(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
