//! The `autopilot` binary: dispatches the command line (`cli::args`) to `cli::*` and maps errors to exit codes.
//!
//! `cli::exit_code` maps errors to the documented exit codes (1 absent,
//! 2 config or usage, 3 unreachable or timed out).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::args::{Cli, Cmd, rewrite_single_dash};
use cli::cluster::ClusterCmd;
use cli::control;

fn main() -> ExitCode {
    let cli = Cli::parse_from(rewrite_single_dash(std::env::args_os()));
    if !cli.runs_long() {
        default_sigpipe();
    }
    match real_main(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("autopilot: {e:#}");
            ExitCode::from(cli::exit_code(&e).clamp(0, 255) as u8)
        }
    }
}

/// Rust ignores SIGPIPE, so printing to a closed pipe (`| head`) would
/// panic. Short-lived commands die of SIGPIPE instead, quietly with status
/// 141, as other tools do. The agent and the lock holder keep ignoring it:
/// a closed socket must not kill them (their children get SIGPIPE back).
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler code, and no other thread runs yet.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let env = cli::env_map();
    let out = if cli.json {
        cli::Output::Json
    } else {
        cli.output.unwrap_or_default()
    };
    if cli.version || matches!(cli.cmd, Some(Cmd::Version)) {
        return Ok(cli::info::version(out));
    }
    match &cli.cmd {
        Some(Cmd::Completions { shell }) => {
            return Ok(cli::info::completions(Cli::command(), *shell));
        }
        Some(Cmd::Man) => return cli::info::man(Cli::command()),
        Some(Cmd::Template { cmd: Some(cmd), .. }) => {
            let config = cli::load_config(cli.config.as_deref(), &env)?;
            return cli::template::render(cmd, config.as_ref(), cli.timeout.as_deref(), env);
        }
        _ => {}
    }
    if cli.template || matches!(cli.cmd, Some(Cmd::Template { .. })) {
        let dest = match &cli.cmd {
            Some(Cmd::Template { out, .. }) => out.clone().or(cli.out.clone()),
            _ => cli.out.clone(),
        };
        return cli::template::config_template(cli.config.as_deref(), dest.as_deref(), &env);
    }
    let timeout = cli::timeout_arg(cli.timeout.as_deref(), cli::DEFAULT_TIMEOUT)?;
    let reqs = if cli.reload {
        Some(vec![control::reload()])
    } else if let Some(m) = &cli.maintenance {
        Some(vec![control::maintenance(m)?])
    } else if !cli.putenv.is_empty() {
        Some(vec![control::putenv(&cli.putenv)?])
    } else if !cli.putmetric.is_empty() {
        Some(control::putmetric(&cli.putmetric)?)
    } else if cli.ping {
        Some(vec![control::ping()])
    } else {
        // The catalog commands' settings come from the config, if one is named.
        let catalog = |explicit: &Option<String>| -> anyhow::Result<cli::CatalogOpts> {
            let config = cli::load_config(cli.config.as_deref(), &env)?;
            cli::catalog_choice(explicit.as_deref(), config.as_ref(), &env, timeout)
        };
        match &cli.cmd {
            Some(Cmd::Reload) => Some(vec![control::reload()]),
            Some(Cmd::Maintenance { mode }) => Some(vec![control::maintenance(mode)?]),
            Some(Cmd::Putenv { vars }) => Some(vec![control::putenv(vars)?]),
            Some(Cmd::Putmetric { metrics }) => Some(control::putmetric(metrics)?),
            Some(Cmd::Ping) => Some(vec![control::ping()]),
            Some(Cmd::Cluster {
                cmd: ClusterCmd::Position { election, value },
                ..
            }) => Some(vec![cli::cluster::position_req(election.as_deref(), value)]),
            Some(Cmd::Status) => {
                let socket = client_socket(&cli, &env)?;
                return cli::status::status(&socket, timeout, out);
            }
            Some(Cmd::Catalog { catalog: url, cmd }) => {
                let o = catalog(url)?;
                return cli::block_on(cli::catalog::catalog_cmd(o, cmd, out))?;
            }
            Some(Cmd::Kv { catalog: url, cmd }) => {
                let o = catalog(url)?;
                return cli::block_on(cli::kv::kv_cmd(o, cmd, out))?;
            }
            Some(Cmd::Artifact { catalog: url, cmd }) => {
                let o = catalog(url)?;
                return cli::block_on(cli::artifact::artifact_cmd(o, cmd, out))?;
            }
            Some(Cmd::Leader { catalog: url, name }) => {
                let o = catalog(url)?;
                return cli::block_on(cli::catalog::leader_cmd(o, name, out))?;
            }
            Some(
                c @ (Cmd::Cluster { .. }
                | Cmd::Switchover(_)
                | Cmd::Failover(_)
                | Cmd::Pause(_)
                | Cmd::Resume(_)
                | Cmd::Reinit(_)),
            ) => return cli::cluster::dispatch(c, catalog, cli.timeout.as_deref(), out),
            Some(Cmd::Deploy(a)) => {
                let o = catalog(&a.catalog)?;
                return cli::block_on(cli::deploy::deploy_cmd(o, a, out))?;
            }
            Some(c @ (Cmd::Cockpit(_) | Cmd::Dns(_) | Cmd::ConsulApi(_))) => {
                return cli::dns::serve(c, catalog);
            }
            Some(Cmd::Repairs(a)) => {
                return cli::block_on(cli::repairs::repairs_cmd(catalog(&a.catalog)?, a, out))?;
            }
            Some(Cmd::Lock {
                catalog: url,
                wait,
                name,
                command,
            }) => {
                let wait = wait
                    .as_deref()
                    .map(|w| cli::duration_arg("--wait", w))
                    .transpose()?;
                let o = catalog(url)?;
                return cli::block_on(cli::lock::lock_cmd(o, name, wait, command, env))?;
            }
            Some(Cmd::Run)
            | Some(Cmd::Version)
            | Some(Cmd::Template { .. })
            | Some(Cmd::Completions { .. })
            | Some(Cmd::Man)
            | None => None,
        }
    };
    match reqs {
        Some(reqs) => control::send(&client_socket(&cli, &env)?, reqs, timeout, out),
        None => cli::run::run_agent(cli.config.as_deref(), cli.socket.clone(), cli.init, env),
    }
}

fn client_socket(
    cli: &Cli,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<PathBuf> {
    cli::socket_for_client(cli.socket.as_deref(), cli.config.as_deref(), env)
}
