//! `autopilot dns`: serves DNS over the catalog (services, tags, election leaders) until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::args::Cmd;
use super::{Access, CatalogOpts, SetupError, open_catalog};

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    /// Address to listen on, UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = autopilot_config::DEFAULT_DNS_LISTEN)]
    pub listen: String,
    /// The domain answered (names outside it are refused).
    #[arg(long, value_name = "DOMAIN", default_value = autopilot_config::DEFAULT_DNS_DOMAIN)]
    pub domain: String,
    /// The TTL of every answer (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub ttl: String,
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
}

fn setup(flag: &str, message: String) -> anyhow::Error {
    SetupError {
        origin: flag.into(),
        field: String::new(),
        message,
    }
    .into()
}

/// The long-running servers (`cockpit`, `dns`, `consul-api`): one dispatch line in main.
pub fn serve(
    cmd: &Cmd,
    catalog: impl Fn(&Option<String>) -> anyhow::Result<CatalogOpts>,
) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Cockpit(a) => super::cockpit::run(catalog(&a.catalog)?, a),
        Cmd::Dns(a) => run(catalog(&a.catalog)?, a),
        Cmd::ConsulApi(a) => super::consul::run(catalog(&a.catalog)?, a),
        _ => Err(anyhow::anyhow!("not a server command")),
    }
}

pub fn run(o: CatalogOpts, a: &DnsArgs) -> anyhow::Result<i32> {
    let listen: SocketAddr = a.listen.parse().map_err(|e| {
        setup(
            "--listen",
            format!("{}: {e} (expected ADDR:PORT)", super::quote(&a.listen)),
        )
    })?;
    let domain = autopilot_config::dns_domain(&a.domain)
        .map_err(|e| setup("--domain", format!("{}: {e}", super::quote(&a.domain))))?;
    let ttl = autopilot_config::parse_duration(&a.ttl)
        .map_err(|e| setup("--ttl", format!("{}: {e}", super::quote(&a.ttl))))?;
    if ttl > Duration::from_secs(u64::from(u32::MAX)) {
        return Err(setup("--ttl", "must be at most 4294967295s".into()));
    }
    let _ = autopilot_runtime::logging::init(&autopilot_config::LoggingConfig {
        output: autopilot_config::LogOutput::Stderr,
        ..Default::default()
    });
    super::block_on(async move {
        let opened =
            open_catalog(&o, &format!("dns-{}", std::process::id()), Access::Await).await?;
        let cfg = autopilot_dns::DnsConfig {
            listen,
            domain,
            ttl,
        };
        let server = autopilot_dns::DnsServer::bind(&cfg, opened.cat)
            .await
            .map_err(|e| setup("--listen", e.to_string()))?;
        eprintln!(
            "dns listening on {} (udp, tcp) for {}",
            server.local_addr(),
            cfg.domain
        );
        eprintln!("dns: catalog {}", o.url);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server.run(stop).await.context("dns")?;
        eprintln!("dns stopped");
        Ok::<i32, anyhow::Error>(super::exit::OK)
    })?
}
