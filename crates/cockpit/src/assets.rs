//! The page: `index.html`, `app.js` and `app.css` from `crates/cockpit/assets/`, embedded in the binary and served with validators (ETag, `no-cache`).

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: String,
}

fn asset(body: &'static [u8], content_type: &'static str) -> Asset {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Asset {
        body,
        content_type,
        etag: format!("\"{hex}\""),
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        include_bytes!("../assets/index.html"),
        "text/html; charset=utf-8",
    )
});
static APP_JS: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        include_bytes!("../assets/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static APP_CSS: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        include_bytes!("../assets/app.css"),
        "text/css; charset=utf-8",
    )
});

/// Sends an asset, or 304 when the browser's copy is current. `no-cache`
/// makes the browser revalidate, so a new binary's page is used at once.
fn send(a: &Asset, req: &HeaderMap) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag));
    let etag = HeaderValue::from_str(&a.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cache = HeaderValue::from_static("no-cache");
    if fresh {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        a.body,
    )
        .into_response()
}

pub async fn index(h: HeaderMap) -> Response {
    send(&INDEX, &h)
}

pub async fn app_js(h: HeaderMap) -> Response {
    send(&APP_JS, &h)
}

pub async fn app_css(h: HeaderMap) -> Response {
    send(&APP_CSS, &h)
}
