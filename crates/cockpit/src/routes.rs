//! The route table (method, path, who may call it, handler) the router is built from, the routes that need no fleet data (whoami, the OpenAPI document, events, the page), and the check that the OpenAPI document lists exactly these routes.

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::json;

use crate::app::{self, Access, AppState};
use crate::auth::Caller;

/// The event stream's path (the request timeout leaves it alone).
pub const EVENTS: &str = "/api/v1/events";

/// The OpenAPI 3.0 document, hand-written (see `openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// One route: its method, path, who may call it, and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<AppState>,
}

pub fn get<H, T>(path: &'static str, access: Access, h: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        method: Method::GET,
        path,
        access,
        handler: axum::routing::get(h),
    }
}

pub fn post<H, T>(path: &'static str, access: Access, h: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        method: Method::POST,
        path,
        access,
        handler: axum::routing::post(h),
    }
}

/// Every `/api/v1` route.
pub fn table() -> Vec<Route> {
    let mut t = vec![
        get("/api/v1/whoami", Access::Read, whoami),
        get("/api/v1/openapi.json", Access::Open, openapi),
        get(EVENTS, Access::Read, crate::sse::events),
    ];
    t.extend(crate::api::routes());
    t
}

/// The whole application: the API, the page, the fallback, and the layers
/// (security headers, body cap, request timeout).
pub fn router(state: AppState) -> Router {
    let mut r: Router<AppState> = Router::new();
    for route in table() {
        let access = route.access;
        let s = state.clone();
        let handler = route
            .handler
            .route_layer(middleware::from_fn(move |req, next| {
                app::authorize(s.clone(), access, req, next)
            }));
        r = r.route(route.path, handler);
    }
    r.route("/", axum::routing::get(crate::assets::index))
        .route("/assets/app.js", axum::routing::get(crate::assets::app_js))
        .route(
            "/assets/app.css",
            axum::routing::get(crate::assets::app_css),
        )
        .fallback(app::not_found)
        .layer(DefaultBodyLimit::max(app::MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), app::timeout))
        .layer(middleware::from_fn(app::headers))
        .with_state(state)
}

/// `GET /api/v1/whoami`: the caller's name and role, and whether actions are possible.
async fn whoami(
    axum::extract::State(s): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<serde_json::Value> {
    Json(match caller {
        Caller::Anonymous => json!({ "role": "anonymous", "actions": false }),
        Caller::Token { name, role } => json!({
            "name": name,
            "role": role.as_str(),
            "actions": role == crate::auth::Role::Admin && !s.inner().tokens.is_empty(),
        }),
    })
}

/// `GET /api/v1/openapi.json`.
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                if method == "parameters" {
                    continue;
                }
                assert!(op["responses"].is_object(), "{method} {path} has responses");
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = table()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(table().len(), routed.len(), "a route is given twice");
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json documents unknown routes: {extra:?}"
        );
        // Actions and only actions need an admin token; and the document says
        // which routes need no token.
        for r in table() {
            assert_eq!(
                r.method == Method::POST,
                r.access == Access::Admin,
                "{} {}",
                r.method,
                r.path
            );
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            let open_in_doc = op["security"].as_array().is_some_and(|s| s.is_empty());
            assert_eq!(
                open_in_doc,
                r.access == Access::Open,
                "{} {}: security in openapi.json",
                r.method,
                r.path
            );
            // Every path parameter is declared.
            for seg in r.path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                let params = op["parameters"]
                    .as_array()
                    .into_iter()
                    .chain(doc["paths"][r.path]["parameters"].as_array())
                    .flatten()
                    .any(|p| {
                        p["name"] == name
                            || p["$ref"]
                                .as_str()
                                .is_some_and(|s| s.ends_with(&format!("/{name}")))
                    });
                assert!(params, "{} {}: parameter {name}", r.method, r.path);
            }
        }
    }
}
