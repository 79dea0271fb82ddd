//! `FleetError`: what a fleet read or operation fails with, and how the CLI (exit codes) and the cockpit (HTTP statuses) map it.

use autopilot_catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad input: HTTP 400, CLI exit 2.
    #[error("{0}")]
    Invalid(String),
    /// The thing named does not exist: HTTP 404, CLI exit 1.
    #[error("{0}")]
    NotFound(String),
    /// Cannot be carried out now: HTTP 409, CLI exit 2.
    #[error("{0}")]
    Refused(String),
    /// Every compare-and-swap lost: HTTP 409, CLI exit 1.
    #[error("lost a compare-and-swap race on {key} {attempts} times")]
    Contended { key: String, attempts: usize },
    /// The catalog failed: HTTP 503 (or as the catalog error says), CLI exit 3.
    #[error("catalog: {context}")]
    Catalog {
        context: String,
        #[source]
        source: CatalogError,
    },
}

impl FleetError {
    /// The HTTP status the cockpit answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            FleetError::Invalid(_) => 400,
            FleetError::NotFound(_) => 404,
            FleetError::Refused(_) | FleetError::Contended { .. } => 409,
            FleetError::Catalog { source, .. } => match source {
                CatalogError::Invalid { .. } => 400,
                _ => 503,
            },
        }
    }

    /// The CLI's exit code (see `autopilot`'s `cli::exit`).
    pub fn exit_code(&self) -> i32 {
        match self {
            FleetError::Invalid(_) | FleetError::Refused(_) => 2,
            FleetError::NotFound(_) | FleetError::Contended { .. } => 1,
            FleetError::Catalog { source, .. } => match source {
                CatalogError::Unavailable { .. } => 3,
                CatalogError::SeatLost { .. } => 1,
                _ => 2,
            },
        }
    }
}

/// Wraps a catalog failure with what was being done.
pub(crate) fn catalog(context: impl Into<String>) -> impl FnOnce(CatalogError) -> FleetError {
    let context = context.into();
    move |source| FleetError::Catalog { context, source }
}
