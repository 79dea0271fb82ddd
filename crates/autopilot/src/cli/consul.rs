//! `autopilot consul-api`: serves the Consul-compatible HTTP API over the catalog until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use autopilot_cockpit::{Limits, Server, Tokens};

use super::{Access, CatalogOpts, SetupError, open_catalog};

#[derive(clap::Args, Debug)]
pub struct ConsulArgs {
    /// Address to listen on; other than loopback only with --token-file or --insecure-listen.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8500")]
    pub listen: String,
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
    /// File of `ROLE NAME TOKEN` lines (ROLE admin or read), mode 0600 (repeatable): clients
    /// send a token as X-Consul-Token or ?token=; read tokens may only GET.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_files: Vec<PathBuf>,
    /// The node name this server answers as (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The datacenter name answered.
    #[arg(long, value_name = "NAME", default_value = "dc1")]
    pub datacenter: String,
    /// Serve a non-loopback address without tokens (anyone who reaches it may write).
    #[arg(long)]
    pub insecure_listen: bool,
    /// Connections served at once (each blocking query holds one).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
}

fn setup(flag: &str, message: String) -> anyhow::Error {
    SetupError {
        origin: flag.into(),
        field: String::new(),
        message,
    }
    .into()
}

pub fn run(o: CatalogOpts, a: &ConsulArgs) -> anyhow::Result<i32> {
    let addr: SocketAddr = a.listen.parse().map_err(|e| {
        setup(
            "--listen",
            format!("{}: {e} (expected ADDR:PORT)", super::quote(&a.listen)),
        )
    })?;
    let tokens = Tokens::load(&a.token_files).map_err(|e| setup("--token-file", e.to_string()))?;
    autopilot_consul_api::check_listen(addr, &tokens, a.insecure_listen)
        .map_err(|e| setup("--listen", format!("{e} (or --insecure-listen)")))?;
    let node = match &a.node {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "autopilot".into()),
    };
    if node.is_empty() || node.len() > 128 || node.contains('/') {
        return Err(setup("--node", "1-128 characters, no '/'".into()));
    }
    if a.max_connections == 0 {
        return Err(setup("--max-connections", "must be more than 0".into()));
    }
    let _ = autopilot_runtime::logging::init(&autopilot_config::LoggingConfig {
        output: autopilot_config::LogOutput::Stderr,
        ..Default::default()
    });
    // Each blocking query holds a descriptor: use all the hard limit allows.
    let _ = autopilot_runtime::listen::raise_nofile_limit();
    super::block_on(async move {
        let opened = open_catalog(&o, &format!("consul-api-{node}"), Access::Write).await?;
        let limits = Limits {
            max_connections: a.max_connections,
            catalog_deadline: o.timeout,
            ..Limits::default()
        };
        let server = Server::bind(addr, None, limits)
            .await
            .map_err(|e| setup("--listen", e.to_string()))?;
        let mut cfg = autopilot_consul_api::Config::new(&node, server.local_addr());
        cfg.datacenter = a.datacenter.clone();
        cfg.catalog_deadline = o.timeout;
        let n = tokens.len();
        let api = autopilot_consul_api::ConsulApi::start(opened.cat, tokens, cfg)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the consul api: {e}"))?;
        eprintln!("consul-api listening on {}", server.url());
        eprintln!("consul-api: catalog {}, node {node}, {n} token(s)", o.url);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server.run(api.router(), stop).await;
        eprintln!("consul-api stopped");
        Ok::<i32, anyhow::Error>(super::exit::OK)
    })?
}
