//! Running the agent (the default command), with its startup errors mapped to the config field that caused them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autopilot_runtime::AgentError;
use autopilot_runtime::control::ControlError;

use super::{SetupError, default_socket, is_root};

/// Where per-job state directories live when `$AUTOPILOT_STATE_DIR` is unset.
fn default_state_root(env: &BTreeMap<String, String>) -> PathBuf {
    if is_root() {
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

/// Where the control socket path came from, for error messages.
enum SocketOrigin {
    Flag,
    Env,
    Config,
    Default,
}

pub fn run_agent(
    config: Option<&Path>,
    socket_flag: Option<PathBuf>,
    init: bool,
    env: BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    let path = autopilot_config::resolve_path(config, &env)?;
    let config = autopilot_config::load(&path, &env)?;
    let file = path.display().to_string();
    let setup = |field: &str, message: String| SetupError {
        origin: file.clone(),
        field: field.to_string(),
        message,
    };
    let log = autopilot_runtime::logging::init(&config.logging)
        .map_err(|e| setup("logging.output", e.to_string()))?;
    let (socket, origin) = match (socket_flag, &config.control.socket) {
        (Some(s), _) => {
            let from_env = env
                .get("AUTOPILOT_SOCKET")
                .is_some_and(|e| Path::new(e) == s);
            (
                s,
                if from_env {
                    SocketOrigin::Env
                } else {
                    SocketOrigin::Flag
                },
            )
        }
        (None, Some(s)) => (s.clone(), SocketOrigin::Config),
        (None, None) => (default_socket(&env), SocketOrigin::Default),
    };
    let catalog_explicit =
        config.catalog.is_some() || env.get("AUTOPILOT_CATALOG").is_some_and(|c| !c.is_empty());
    // A ContainerPilot `consul` block chooses the Consul backend when
    // nothing else is chosen.
    let catalog_url = autopilot_catalog::select_url(
        None,
        &env,
        autopilot_runtime::catalog::config_catalog(&config).as_deref(),
        is_root(),
    );
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
        init: init || std::process::id() == 1,
        log,
        catalog_url,
        catalog_explicit,
        commit: env!("AUTOPILOT_GIT_COMMIT").to_string(),
    };
    match super::block_on(autopilot_runtime::run(opts))? {
        Ok(code) => Ok(code),
        Err(AgentError::Interfaces { index, message, .. }) => {
            Err(setup(&format!("jobs[{index}].interfaces"), message).into())
        }
        Err(AgentError::TelemetryInterfaces(message)) => {
            Err(setup("telemetry.interfaces", message).into())
        }
        Err(AgentError::Telemetry(message)) => Err(setup("telemetry.port", message).into()),
        Err(AgentError::Dns(e @ autopilot_dns::DnsError::Domain { .. })) => {
            Err(setup("dns.domain", e.to_string()).into())
        }
        Err(AgentError::Dns(e)) => Err(setup("dns.listen", e.to_string()).into()),
        Err(AgentError::Control(
            e @ (ControlError::InUse { .. }
            | ControlError::Io { .. }
            | ControlError::NotSocket { .. }),
        )) => Err(match origin {
            SocketOrigin::Config => setup("control.socket", e.to_string()),
            SocketOrigin::Default => setup(
                "control.socket",
                format!("{e} (the default path; set control.socket to choose another)"),
            ),
            SocketOrigin::Flag => SetupError {
                origin: "--socket".into(),
                field: String::new(),
                message: e.to_string(),
            },
            SocketOrigin::Env => SetupError {
                origin: "$AUTOPILOT_SOCKET".into(),
                field: String::new(),
                message: e.to_string(),
            },
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}
