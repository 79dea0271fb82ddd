//! The subcommands, one module per family, and what they share: config and catalog choice, opening the catalog, sockets, `--timeout`, `-o`, exit codes, the async runtime.

pub mod args;
pub mod artifact;
pub mod catalog;
pub mod cluster;
pub mod cockpit;
pub mod consul;
pub mod control;
pub mod deploy;
pub mod dns;
pub mod info;
pub mod kv;
pub mod lock;
pub mod repairs;
pub mod run;
pub mod status;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// A startup error a person fixes in the config (or a flag): exit code 2,
/// naming the file and the field.
#[derive(Debug)]
pub struct SetupError {
    /// The config file, or the flag that chose the value.
    pub origin: String,
    /// The field in the config file; empty when a flag chose the value.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.field, self.message)
        }
    }
}

impl std::error::Error for SetupError {}

pub fn env_map() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let out = rt.block_on(f);
    // Dropping the runtime would wait for blocking catalog calls still
    // running (a keep-alive stuck on a locked database); the answer is known.
    rt.shutdown_background();
    Ok(out)
}

fn uid() -> u32 {
    nix::unistd::Uid::current().as_raw()
}

pub fn is_root() -> bool {
    uid() == 0
}

/// The stable exit codes scripts rely on (documented in the README).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The key, leader or lock is absent, or a compare-and-swap lost.
    pub const ABSENT: i32 = 1;
    /// A usage or config error (clap also exits 2 on bad arguments), or a
    /// command that cannot be carried out as asked (a template that does not
    /// parse, a file that cannot be read or written, an internal failure):
    /// never 1, which a script takes for "absent".
    pub const USAGE: i32 = 2;
    /// The catalog or the agent could not be reached, or did not answer in time.
    pub const UNREACHABLE: i32 = 3;
}

/// The catalog or the agent did not answer (refused, absent, or not within
/// `--timeout`): exit 3.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The exit code an error maps to: the first cause in the chain that says;
/// an error nothing classifies is 2, never 1 (which scripts read as
/// "absent": a failed `leader` must not look like "nobody leads").
pub fn exit_code(e: &anyhow::Error) -> i32 {
    use autopilot_catalog::CatalogError;
    use autopilot_runtime::control::ControlError;
    for cause in e.chain() {
        if cause.is::<autopilot_config::ConfigError>() || cause.is::<SetupError>() {
            return exit::USAGE;
        }
        if cause.is::<Unreachable>() {
            return exit::UNREACHABLE;
        }
        if let Some(f) = cause.downcast_ref::<autopilot_fleet::FleetError>() {
            return f.exit_code();
        }
        if let Some(c) = cause.downcast_ref::<CatalogError>() {
            return match c {
                CatalogError::Unavailable { .. } => exit::UNREACHABLE,
                CatalogError::Invalid { .. }
                | CatalogError::BadUrl { .. }
                | CatalogError::Unsupported { .. } => exit::USAGE,
                CatalogError::SeatLost { .. } => exit::ABSENT,
            };
        }
        if let Some(c) = cause.downcast_ref::<ControlError>() {
            return match c {
                ControlError::Connect { .. } | ControlError::Protocol { .. } => exit::UNREACHABLE,
                _ => exit::USAGE,
            };
        }
    }
    exit::USAGE
}

/// A fleet error as the CLI reports it: a catalog failure as the catalog
/// error itself (exit 3 when unreachable), bad input or a refusal as a
/// `SetupError` of `command` (exit 2), the rest as is (absent or lost
/// compare-and-swap: exit 1).
pub fn fleet_err(command: &str, e: autopilot_fleet::FleetError) -> anyhow::Error {
    use autopilot_fleet::FleetError;
    match e {
        FleetError::Catalog { source, .. } => source.into(),
        FleetError::Invalid(message) | FleetError::Refused(message) => SetupError {
            origin: command.into(),
            field: String::new(),
            message,
        }
        .into(),
        other => other.into(),
    }
}

/// The output format of every command that prints data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document, camelCase field names (a stable interface).
    Json,
}

impl Output {
    pub fn json(self) -> bool {
        self == Output::Json
    }
}

/// How long one command may wait on the catalog or the agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `--timeout` for a whole command: opening the catalog (or the
/// socket) and every request after it share it, so a command never waits
/// longer than the flag says.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    /// The whole allowance, for messages.
    pub total: Duration,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration) -> Deadline {
        let now = tokio::time::Instant::now();
        Deadline {
            // A timeout too long to represent is as good as none: a year.
            at: now
                .checked_add(total)
                .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
                .unwrap_or(now),
            total,
        }
    }
}

/// `--timeout` as a duration (`5s`, `500ms`; `0` is not allowed: nothing
/// may block for ever), or `default`.
pub fn timeout_arg(flag: Option<&str>, default: Duration) -> anyhow::Result<Duration> {
    match flag {
        Some(t) => duration_arg("--timeout", t),
        None => Ok(default),
    }
}

/// A duration flag's value (`5s`, `500ms`), more than 0; else exit 2
/// naming the flag.
pub fn duration_arg(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let d = autopilot_config::parse_duration(value).map_err(|e| SetupError {
        origin: flag.into(),
        field: String::new(),
        message: format!("{}: {e}", quote(value)),
    })?;
    if d.is_zero() {
        return Err(SetupError {
            origin: flag.into(),
            field: String::new(),
            message: "must be more than 0".into(),
        }
        .into());
    }
    Ok(d)
}

/// A duration as people write it (`1.5s`, `250ms`), never Rust's debug form.
pub fn dur(d: Duration) -> String {
    autopilot_runtime::logging::dur(d)
}

/// A value quoted for a message, JSON-style (`"a\tb"`), never Rust's
/// debug form.
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Runs `f` until the command's deadline; past it, the catalog or agent
/// `what` is unreachable (exit 3).
pub async fn bounded<T>(
    what: &str,
    d: Deadline,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at(d.at, f).await {
        Ok(r) => r,
        Err(_) => Err(Unreachable(format!(
            "{what}: no answer within {} (--timeout)",
            dur(d.total)
        ))
        .into()),
    }
}

/// The config a client command reads its settings from: `--config`, else
/// `$CONTAINERPILOT`, else `$AUTOPILOT_CONFIG` (as the agent finds it);
/// `None` when none is named. A named config that cannot be loaded is an
/// error (exit 2), never silently skipped.
pub fn load_config(
    flag: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Option<autopilot_config::Config>> {
    match autopilot_config::resolve_path(flag, env) {
        Err(autopilot_config::ConfigError::NoPath) => Ok(None),
        Err(e) => Err(e.into()),
        Ok(p) => Ok(Some(autopilot_config::load(&p, env)?)),
    }
}

/// Where a catalog command connects, and for how long it may wait.
pub struct CatalogOpts {
    pub url: String,
    pub etcd: autopilot_config::EtcdConfig,
    /// `--timeout`: what one wait on the catalog may take.
    pub timeout: Duration,
    /// The command's deadline (`--timeout` from its start): opening the
    /// catalog and the operation share it.
    pub deadline: Deadline,
}

/// The catalog URL, in the agent's order (`--catalog`, `$AUTOPILOT_CATALOG`,
/// the config's `catalog`, the default), and the etcd settings (the
/// config's `etcd` block, each overridden by its `$AUTOPILOT_ETCD_*`).
pub fn catalog_choice(
    explicit: Option<&str>,
    config: Option<&autopilot_config::Config>,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> anyhow::Result<CatalogOpts> {
    let url = autopilot_catalog::select_url(
        explicit,
        env,
        config
            .and_then(autopilot_runtime::catalog::config_catalog)
            .as_deref(),
        is_root(),
    );
    let none = autopilot_config::EtcdConfig::default();
    let etcd = autopilot_runtime::catalog::etcd_settings(config.map_or(&none, |c| &c.etcd), env)
        .map_err(|message| SetupError {
            origin: "environment".into(),
            field: String::new(),
            message,
        })?;
    Ok(CatalogOpts {
        url,
        etcd,
        timeout,
        deadline: Deadline::after(timeout),
    })
}

/// Whether a command may create (or write to) the catalog it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Readers open an existing catalog only: a mistyped path is an error
    /// (exit 3), not an empty catalog created on the spot; on etcd the
    /// start-up check only reads, so read-only users work and reading
    /// wakes no watcher.
    Read,
    /// Reads only, but may wait for data before any agent started: creates
    /// the embedded catalog so it can wait on it; on etcd, as `Read`.
    Await,
    Write,
}

/// An open catalog.
pub struct Opened {
    pub cat: Arc<dyn autopilot_catalog::Catalog>,
}

/// Opens the catalog as session `owner`, within the command's deadline.
pub async fn open_catalog(o: &CatalogOpts, owner: &str, access: Access) -> anyhow::Result<Opened> {
    use autopilot_catalog::CatalogUrl;
    let opened = async {
        match autopilot_catalog::parse_url(&o.url)? {
            CatalogUrl::Local(dir) => {
                let owner = owner.to_string();
                // SQLite may wait on a lock: off the runtime thread, so the
                // timeout can end the wait.
                let cat = tokio::task::spawn_blocking(move || match access {
                    Access::Read => {
                        autopilot_catalog_local::LocalCatalog::open_existing(&dir, &owner)
                    }
                    Access::Await | Access::Write => {
                        autopilot_catalog_local::LocalCatalog::open(&dir, &owner)
                    }
                })
                .await
                .context("the catalog task failed")??;
                Ok(Opened { cat: Arc::new(cat) })
            }
            CatalogUrl::Etcd { endpoints, prefix } => {
                let opts = autopilot_catalog_etcd::EtcdOptions {
                    endpoints,
                    prefix,
                    ca: o.etcd.ca.clone(),
                    cert: o.etcd.cert.clone(),
                    key: o.etcd.key.clone(),
                    username: o.etcd.username.clone(),
                    password: o.etcd.password.clone(),
                    lease_ttl: o
                        .etcd
                        .lease_ttl
                        .unwrap_or(autopilot_runtime::catalog::DEFAULT_LEASE_TTL),
                };
                let cat = Arc::new(match access {
                    Access::Read | Access::Await => {
                        autopilot_catalog_etcd::EtcdCatalog::connect_read_only(opts, owner).await?
                    }
                    Access::Write => {
                        autopilot_catalog_etcd::EtcdCatalog::connect(opts, owner).await?
                    }
                });
                Ok(Opened { cat })
            }
            CatalogUrl::Consul { .. } => {
                let none = autopilot_config::EtcdConfig::default();
                Ok(Opened {
                    cat: autopilot_runtime::catalog::open(&o.url, owner, &none).await?,
                })
            }
        }
    };
    bounded(&format!("catalog {}", o.url), o.deadline, opened).await
}

pub fn default_socket(env: &BTreeMap<String, String>) -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/run/containerpilot.socket");
    }
    match env.get("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => Path::new(d).join("autopilot.socket"),
        None => std::env::temp_dir().join(format!("autopilot-{}.socket", uid())),
    }
}

/// The socket a client command talks to: `--socket` (or `$AUTOPILOT_SOCKET`),
/// else the config's `control.socket`, else the default. A config that is
/// named but broken is an error (exit 2): falling back to the default
/// socket would talk to another agent, or to none.
pub fn socket_for_client(
    socket: Option<&Path>,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    Ok(load_config(config, env)?
        .and_then(|c| c.control.socket)
        .unwrap_or_else(|| default_socket(env)))
}

/// A catalog session name unique to this CLI process.
pub fn cli_owner() -> String {
    format!("cli-{}", std::process::id())
}

/// Who writes: `user@host`, for rollout events and intents.
pub fn by() -> String {
    let uid = nix::unistd::Uid::current();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{}", uid.as_raw()));
    let host = std::env::var("AUTOPILOT_HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}
