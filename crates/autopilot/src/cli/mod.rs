//! The subcommands, one module per family, and the settings they share (catalog choice, sockets, the async runtime).

pub mod catalog;
pub mod control;
pub mod kv;
pub mod lock;
pub mod run;
pub mod status;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The catalog URL (flag, `$AUTOPILOT_CATALOG`, default) and the etcd settings from the environment.
pub fn catalog_choice(
    explicit: Option<&str>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(String, autopilot_config::EtcdConfig)> {
    let url = autopilot_catalog::select_url(explicit, env, None, is_root());
    let etcd = autopilot_runtime::catalog::etcd_settings(&Default::default(), env)
        .map_err(anyhow::Error::msg)?;
    Ok((url, etcd))
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

/// The socket a client command talks to: `--socket`, else the config's
/// `control.socket` (when a config can be found and loaded), else the default.
pub fn socket_for_client(
    socket: Option<&Path>,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> PathBuf {
    if let Some(s) = socket {
        return s.to_path_buf();
    }
    autopilot_config::resolve_path(config, env)
        .ok()
        .and_then(|p| autopilot_config::load(&p, env).ok())
        .and_then(|c| c.control.socket)
        .unwrap_or_else(|| default_socket(env))
}

/// A catalog session name unique to this CLI process.
pub fn cli_owner() -> String {
    format!("cli-{}", std::process::id())
}
