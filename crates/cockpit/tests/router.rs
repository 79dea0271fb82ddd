//! The router over a real embedded catalog: authorization by route access, the body cap, JSON errors, security headers, the page's validators and the event stream cap.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use autopilot_cockpit::{AppState, Limits, Tokens, router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "read-token-abcdefghijkl";

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
}

fn fixture(tokens: bool, limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cat = autopilot_catalog_local::LocalCatalog::open(&dir.path().join("cat"), "cockpit-test")
        .unwrap();
    let tokens = if tokens {
        let p = dir.path().join("tokens");
        std::fs::write(&p, format!("admin alice {ADMIN}\nread bob {READER}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Tokens::load(&[p]).unwrap()
    } else {
        Tokens::default()
    };
    Fixture {
        app: router(AppState::new(Arc::new(cat), tokens, limits)),
        _dir: dir,
    }
}

async fn send(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    send_to(f, "127.0.0.1:8500", method, path, token, body).await
}

async fn send_to(
    f: &Fixture,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = f
        .app
        .clone()
        .oneshot(r.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn without_tokens_reads_are_open_and_actions_refused() {
    let f = fixture(false, Limits::default());
    let (code, h, body) = send(&f, "GET", "/api/v1/whoami", None, "").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("anonymous"), "{body}");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (code, _, body) = send(&f, "POST", "/api/v1/elections/db/pause", None, "{}").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("--token-file"), "{body}");
    let (code, _, body) = send(&f, "GET", "/api/v1/nosuch", None, "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.starts_with("{\"error\":"), "{body}");
    let (code, h, body) = send(&f, "GET", "/api/v1/openapi.json", None, "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert!(body.contains("\"openapi\""));
}

#[tokio::test]
async fn without_tokens_only_loopback_hosts_are_answered() {
    // A page whose name was rebound to 127.0.0.1 sends its own Host.
    let f = fixture(false, Limits::default());
    for host in [
        "localhost:8500",
        "127.0.0.1",
        "[::1]:8500",
        "app.localhost",
        "127.1.2.3:1",
    ] {
        let (code, _, body) = send_to(&f, host, "GET", "/api/v1/whoami", None, "").await;
        assert_eq!(code, StatusCode::OK, "{host}: {body}");
    }
    for host in [
        "evil.example:8500",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::1]x",
        "",
    ] {
        let (code, _, body) = send_to(&f, host, "GET", "/api/v1/services", None, "").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{host}: {body}");
        assert!(body.contains("Host header"), "{body}");
    }
    // With tokens the Host is not what guards the API.
    let f = fixture(true, Limits::default());
    let (code, _, body) = send_to(
        &f,
        "cockpit.example:443",
        "GET",
        "/api/v1/whoami",
        Some(READER),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn tokens_decide_who_reads_and_who_acts() {
    let f = fixture(true, Limits::default());
    let (code, h, _) = send(&f, "GET", "/api/v1/whoami", None, "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key(header::WWW_AUTHENTICATE));
    let (code, _, _) = send(
        &f,
        "GET",
        "/api/v1/whoami",
        Some("wrong-token-0123456789"),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, body) = send(&f, "GET", "/api/v1/whoami", Some(READER), "").await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "bob");
    assert_eq!(v["role"], "read");
    assert_eq!(v["actions"], false);
    let (code, _, body) = send(&f, "GET", "/api/v1/openapi.json", None, "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _, body) = send(&f, "POST", "/api/v1/elections/db/pause", Some(READER), "{}").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (code, _, _) = send(&f, "POST", "/api/v1/elections/db/pause", None, "{}").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let big = format!("{{\"on\": true, \"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let (code, _, body) = send(
        &f,
        "POST",
        "/api/v1/nodes/n1/maintenance",
        Some(ADMIN),
        &big,
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (code, _, body) = send(
        &f,
        "POST",
        "/api/v1/nodes/n1/maintenance",
        Some(ADMIN),
        "{on",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, _, body) = send(
        &f,
        "POST",
        "/api/v1/nodes/n1/maintenance",
        Some(ADMIN),
        r#"{"on": true, "extra": 1}"#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "unknown fields: {body}");
    for q in ["limit=0", "limit=1001", "limit=many"] {
        let (code, _, body) =
            send(&f, "GET", &format!("/api/v1/audit?{q}"), Some(READER), "").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert!(body.starts_with("{\"error\":"), "{q}: {body}");
    }
}

#[tokio::test]
async fn the_page_is_served_with_validators() {
    let f = fixture(true, Limits::default());
    for (path, ty) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (code, h, body) = send(&f, "GET", path, None, "").await;
        assert_eq!(code, StatusCode::OK, "{path}: the page needs no token");
        assert!(
            h[header::CONTENT_TYPE].to_str().unwrap().starts_with(ty),
            "{path}"
        );
        assert!(!body.is_empty());
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let resp = f
            .app
            .clone()
            .oneshot(
                Request::builder()
                    .uri(path)
                    .header(header::HOST, "localhost")
                    .header(header::IF_NONE_MATCH, &etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
}

#[tokio::test]
async fn event_streams_are_capped() {
    let f = fixture(
        false,
        Limits {
            max_event_streams: 1,
            ..Limits::default()
        },
    );
    let req = || {
        Request::builder()
            .uri("/api/v1/events")
            .header(header::HOST, "localhost")
            .body(Body::empty())
            .unwrap()
    };
    let first = f.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = first.into_body();
    let hello = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let hello = String::from_utf8_lossy(&hello);
    assert!(
        hello.starts_with("event: hello\ndata: {\"revision\":"),
        "{hello}"
    );
    let second = f.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(body);
    let third = f.app.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        third.status(),
        StatusCode::OK,
        "a closed stream frees its slot"
    );
}

#[tokio::test]
async fn each_rollout_verb_reaches_its_transition_and_is_audited() {
    let f = fixture(true, Limits::default());
    for verb in ["pause", "resume", "abort", "rollback"] {
        let path = format!("/api/v1/rollouts/web/{verb}");
        let (code, _, body) = send(&f, "POST", &path, Some(ADMIN), "{}").await;
        // No rollout of `web` exists: the transition itself answers.
        assert_eq!(code, StatusCode::NOT_FOUND, "{verb}: {body}");
        assert!(body.contains("web"), "{verb}: {body}");
    }
    let (code, _, body) = send(&f, "GET", "/api/v1/audit?limit=10", Some(READER), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "rollout.abort",
            "rollout.pause",
            "rollout.resume",
            "rollout.rollback"
        ]
    );
}
