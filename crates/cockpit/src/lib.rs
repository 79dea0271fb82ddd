//! The cockpit: a JSON API (`/api/v1`) and a web page over the fleet's catalog, with bearer tokens, TLS, live updates and an audit log of actions.
//!
//! Every read and action goes through `autopilot_fleet`, the one source of
//! truth the CLI uses too; this crate only adds HTTP: the route table
//! (`routes`), authentication and request bounds (`app`, `auth`), serving
//! (`server`, `tls`), Server-Sent Events (`sse`), the embedded page
//! (`assets`) and the hand-written OpenAPI document (`openapi.json`).

mod api;
pub mod app;
mod assets;
pub mod auth;
pub mod error;
pub mod routes;
pub mod server;
pub mod sse;
pub mod tls;

use std::net::SocketAddr;

pub use app::AppState;
pub use auth::Tokens;
pub use error::{ApiError, CockpitError};
pub use routes::router;
pub use server::{Limits, Server};

/// Refuses a listen address other than loopback when no tokens are
/// configured: an open cockpit is for this machine only.
pub fn check_listen(addr: SocketAddr, tokens: &Tokens) -> Result<(), CockpitError> {
    if tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(CockpitError::NotLoopback { addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_open_without_tokens() {
        let none = Tokens::default();
        assert!(check_listen("127.0.0.1:8800".parse().unwrap(), &none).is_ok());
        assert!(check_listen("[::1]:8800".parse().unwrap(), &none).is_ok());
        let e = check_listen("0.0.0.0:8800".parse().unwrap(), &none).unwrap_err();
        assert!(e.to_string().contains("0.0.0.0:8800"), "{e}");
        assert!(check_listen("10.1.2.3:80".parse().unwrap(), &none).is_err());
    }
}
