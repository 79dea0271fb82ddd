//! The command line: ContainerPilot's single-dash flags, rewritten for clap, and the subcommands.

use std::ffi::OsString;
use std::path::PathBuf;

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
    after_help = "Exit codes: 0 ok; 1 absent (key, leader, lock) or a lost compare-and-swap; 2 usage or config error, or a request that cannot be carried out (a bad template, an unreadable file, a refused request); 3 catalog or agent unreachable, or timed out. `lock` exits with its command's code (127 or 126 if it cannot be started).",
    disable_version_flag = true
)]
pub struct Cli {
    /// JSON5 config file (default: $CONTAINERPILOT, then $AUTOPILOT_CONFIG). Every command takes the
    /// control socket, the catalog URL and the `etcd` block from it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket to talk to (default: the config's control.socket).
    #[arg(long, global = true, env = "AUTOPILOT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How long to wait for the catalog or the agent (default 5s; `template render --once`: 60s;
    /// `switchover`, `failover`: 30s; `reinit`: 120s).
    #[arg(long, global = true, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<super::Output>,
    /// The same as `-o json`.
    #[arg(long, global = true, conflicts_with = "output")]
    pub json: bool,
    /// Render the config template and exit.
    #[arg(long)]
    pub template: bool,
    /// Where -template writes (default: stdout, "-").
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Reload the running agent's config.
    #[arg(long)]
    pub reload: bool,
    /// Toggle maintenance mode of the running agent.
    #[arg(long, value_name = "enable|disable")]
    pub maintenance: Option<String>,
    /// Set (K=V) or clear (K) an environment variable for future jobs.
    #[arg(long, value_name = "K=V")]
    pub putenv: Vec<String>,
    /// Update a configured metric (K=V).
    #[arg(long, value_name = "K=V")]
    pub putmetric: Vec<String>,
    /// Check that the agent's control socket answers.
    #[arg(long)]
    pub ping: bool,
    /// Print the version, commit and build date, and exit.
    #[arg(long)]
    pub version: bool,
    /// Reap orphans and forward signals even when not PID 1.
    #[arg(long, alias = "pid1")]
    pub init: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
    /// Update configured metrics (K=V); a repeated name records each value.
    Putmetric {
        #[arg(required = true)]
        metrics: Vec<String>,
    },
    /// Check that the agent answers.
    Ping,
    /// Show the jobs of the running agent (role and term of elected jobs).
    Status,
    /// Render the config file's template, or (`template render`) a file template from the catalog.
    Template {
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<super::template::TemplateCmd>,
    },
    /// Print the version, git commit and build date.
    Version,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: super::info::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Read the service catalog.
    Catalog {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
        #[arg(long, global = true, value_name = "URL")]
        catalog: Option<String>,
        #[command(subcommand)]
        cmd: super::catalog::CatalogCmd,
    },
    /// Read and write keys in the catalog, for hooks.
    Kv {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
        #[arg(long, global = true, value_name = "URL")]
        catalog: Option<String>,
        #[command(subcommand)]
        cmd: super::kv::KvCmd,
    },
    /// Push versions of a file or directory to the artifact store; list and show them.
    Artifact {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
        #[arg(long, global = true, value_name = "URL")]
        catalog: Option<String>,
        #[command(subcommand)]
        cmd: super::artifact::ArtifactCmd,
    },
    /// Print the current leader of an election (exit 1 if nobody leads).
    Leader {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
        #[arg(long, value_name = "URL")]
        catalog: Option<String>,
        name: String,
    },
    /// Operate an elected cluster: list its members, publish a replication position.
    Cluster {
        #[command(flatten)]
        catalog: super::cluster::CatalogArg,
        #[command(subcommand)]
        cmd: super::cluster::ClusterCmd,
    },
    /// Hand the seat of ELECTION over to a healthy member and wait for it (default --timeout 30s).
    Switchover(super::cluster::SwitchoverArgs),
    /// Force ELECTION's seat to a member when no healthy leader holds it (default --timeout 30s).
    Failover(super::cluster::FailoverArgs),
    /// Stop automatic failover of ELECTION (idempotent).
    Pause(super::cluster::ElectionArgs),
    /// Resume automatic failover of ELECTION (idempotent).
    Resume(super::cluster::ElectionArgs),
    /// Wipe a member's data and rebuild it from a snapshot or the leader (default --timeout 120s).
    Reinit(super::cluster::ReinitArgs),
    /// Roll an artifact's version out unit by unit behind health gates; show and steer rollouts.
    Deploy(super::deploy::DeployArgs),
    /// Show self-repair: nodes in repair, the budget, the repair history (exit 1: no data for SERVICE).
    Repairs(super::repairs::RepairsArgs),
    /// Serve the cockpit: a JSON API and a web page over the fleet, with tokens, TLS and live updates.
    Cockpit(super::cockpit::CockpitArgs),
    /// Serve DNS over the catalog: NAME.service, TAG.NAME.service, _NAME._tcp.service, ELECTION.leader.
    Dns(super::dns::DnsArgs),
    /// Serve a Consul-compatible HTTP API (agent, catalog, health, kv, sessions) over the catalog.
    #[command(name = "consul-api")]
    ConsulApi(super::consul::ConsulArgs),
    /// Run a command while holding a cluster-wide lock; other callers wait their turn.
    Lock {
        /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
        #[arg(long, value_name = "URL")]
        catalog: Option<String>,
        /// Give up (exit 1) if the lock is not ours within this long (default: wait for it).
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
        name: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// The flags (single- or double-dash) whose value is the next argument
/// unless written `-flag=value`.
const TAKES_VALUE: [&str; 9] = [
    "config",
    "out",
    "maintenance",
    "putenv",
    "putmetric",
    "socket",
    "timeout",
    "output",
    "o",
];

/// Rewrites ContainerPilot's single-dash flags (`-config`) to clap's
/// `--config`, but only before the first positional argument (a subcommand)
/// or `--`: what follows belongs to the subcommand or to a command run by
/// `autopilot lock`, and is passed as written.
pub fn rewrite_single_dash(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut value_next = false;
    for a in args.by_ref() {
        if value_next {
            value_next = false;
            out.push(a);
            continue;
        }
        let s = a.to_string_lossy().into_owned();
        if s == "--" || !s.starts_with('-') || s == "-" {
            out.push(a);
            break;
        }
        let name = s.trim_start_matches('-');
        let (name, inline) = match name.split_once('=') {
            Some((n, _)) => (n, true),
            None => (name, false),
        };
        value_next = !inline && TAKES_VALUE.contains(&name);
        if !s.starts_with("--") && SINGLE_DASH.contains(&name) {
            out.push(format!("-{s}").into());
        } else {
            out.push(a);
        }
    }
    out.extend(args);
    out
}

impl Cli {
    /// Whether this invocation runs the agent, holds a lock or serves the cockpit.
    pub fn runs_long(&self) -> bool {
        if self.version || self.template || self.reload || self.ping {
            return false;
        }
        if self.maintenance.is_some() || !self.putenv.is_empty() || !self.putmetric.is_empty() {
            return false;
        }
        matches!(
            self.cmd,
            None | Some(Cmd::Run)
                | Some(Cmd::Lock { .. })
                | Some(Cmd::Cockpit(_))
                | Some(Cmd::Dns(_))
                | Some(Cmd::ConsulApi(_))
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_dash_flags_are_rewritten_only_before_the_subcommand() {
        let rw = |args: &[&str]| -> Vec<String> {
            super::rewrite_single_dash(args.iter().map(|a| a.into()))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            rw(&["ap", "-config", "-x.json5", "-reload"]),
            ["ap", "--config", "-x.json5", "--reload"],
            "a flag's value is not a flag"
        );
        assert_eq!(
            rw(&["ap", "-putenv=A=1", "-version"]),
            ["ap", "--putenv=A=1", "--version"]
        );
        assert_eq!(
            rw(&["ap", "lock", "l", "--", "echo", "-version"]),
            ["ap", "lock", "l", "--", "echo", "-version"],
            "a locked command's arguments are its own"
        );
        assert_eq!(
            rw(&["ap", "-config", "c.json5", "kv", "put", "k", "-help"]),
            ["ap", "--config", "c.json5", "kv", "put", "k", "-help"]
        );
        assert_eq!(rw(&["ap", "--", "-help"]), ["ap", "--", "-help"]);
        assert_eq!(
            rw(&[
                "ap",
                "--timeout",
                "2s",
                "-o",
                "json",
                "-config",
                "c",
                "ping"
            ]),
            [
                "ap",
                "--timeout",
                "2s",
                "-o",
                "json",
                "--config",
                "c",
                "ping"
            ],
            "the global flags' values are values"
        );
    }

    #[test]
    fn cli_definition_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
