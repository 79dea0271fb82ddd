//! `autopilot cockpit`: serves the cockpit (JSON API and page) over the catalog until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use autopilot_cockpit::{AppState, CockpitError, Limits, Server, Tokens};

use super::{Access, CatalogOpts, SetupError, open_catalog};

#[derive(clap::Args, Debug)]
pub struct CockpitArgs {
    /// Address to listen on; other than loopback only with --token-file.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8800")]
    pub listen: String,
    /// Catalog URL (default: $AUTOPILOT_CATALOG, the config's catalog, the default local catalog).
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
    /// File of `ROLE NAME TOKEN` lines (ROLE admin or read), mode 0600 (repeatable). Without
    /// one, reads are open and actions refused.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_files: Vec<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// A cockpit setup error: exit 2, naming the flag.
fn setup(flag: &str, e: CockpitError) -> anyhow::Error {
    SetupError {
        origin: flag.into(),
        field: String::new(),
        message: e.to_string(),
    }
    .into()
}

pub fn run(o: CatalogOpts, a: &CockpitArgs) -> anyhow::Result<i32> {
    let addr: SocketAddr = a.listen.parse().map_err(|e| SetupError {
        origin: "--listen".into(),
        field: String::new(),
        message: format!("{}: {e} (expected ADDR:PORT)", super::quote(&a.listen)),
    })?;
    let tokens = Tokens::load(&a.token_files).map_err(|e| setup("--token-file", e))?;
    autopilot_cockpit::check_listen(addr, &tokens).map_err(|e| setup("--listen", e))?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            Some(autopilot_cockpit::tls::acceptor(cert, key).map_err(|e| setup("--tls-cert", e))?)
        }
        _ => None,
    };
    let _ = autopilot_runtime::logging::init(&autopilot_config::LoggingConfig {
        output: autopilot_config::LogOutput::Stderr,
        ..Default::default()
    });
    super::block_on(async move {
        // Without tokens the cockpit only reads: on etcd it opens the catalog
        // read-only; an embedded catalog no agent used yet is created.
        let access = if tokens.is_empty() {
            Access::Await
        } else {
            Access::Write
        };
        let opened = open_catalog(&o, &format!("cockpit-{}", std::process::id()), access).await?;
        let limits = Limits {
            catalog_deadline: o.timeout,
            ..Limits::default()
        };
        let server = Server::bind(addr, tls, limits)
            .await
            .map_err(|e| setup("--listen", e))?;
        let (n, url) = (tokens.len(), server.url());
        let app = autopilot_cockpit::router(AppState::new(opened.cat, tokens, limits));
        eprintln!("cockpit listening on {url}");
        eprintln!("cockpit: catalog {}, {n} token(s)", o.url);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server.run(app, stop).await;
        eprintln!("cockpit stopped");
        Ok::<i32, anyhow::Error>(super::exit::OK)
    })?
}
