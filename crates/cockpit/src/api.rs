//! The `/api/v1` handlers over `autopilot_fleet`: the reads, and the actions, each audited with who and when.

use autopilot_fleet as fleet;
use autopilot_fleet::FleetError;
use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{Access, AppState, JsonBody};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::{Route, get, post};

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The whole chain: a catalog error says which catalog and why.
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        ApiError::new(status, message)
    }
}

type Reply = Result<Json<Value>, ApiError>;

fn reply<T: Serialize>(v: T) -> Reply {
    serde_json::to_value(v).map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        )
    })
}

/// The API's routes over the fleet (the others are in `routes`).
pub fn routes() -> Vec<Route> {
    use Access::{Admin, Read};
    vec![
        get("/api/v1/overview", Read, overview),
        get("/api/v1/services", Read, services),
        get("/api/v1/services/{name}", Read, service),
        get("/api/v1/nodes", Read, nodes),
        get("/api/v1/nodes/{node}", Read, node),
        get("/api/v1/elections", Read, elections),
        get("/api/v1/elections/{name}", Read, election),
        get("/api/v1/rollouts", Read, rollouts),
        get("/api/v1/rollouts/{artifact}", Read, rollout),
        get("/api/v1/rollouts/{artifact}/history", Read, rollout_history),
        get("/api/v1/repairs", Read, repairs),
        get("/api/v1/repairs/{service}", Read, repair),
        get("/api/v1/snapshots", Read, snapshots),
        get("/api/v1/artifacts", Read, artifacts),
        get("/api/v1/artifacts/{name}", Read, artifact),
        get("/api/v1/watchdogs", Read, watchdogs),
        get("/api/v1/kv", Read, kv),
        get("/api/v1/audit", Read, audit),
        post("/api/v1/nodes/{node}/maintenance", Admin, maintenance),
        post("/api/v1/elections/{name}/switchover", Admin, switchover),
        post("/api/v1/elections/{name}/pause", Admin, pause),
        post("/api/v1/elections/{name}/resume", Admin, resume),
        post("/api/v1/rollouts", Admin, start_rollout),
        post("/api/v1/rollouts/{artifact}/pause", Admin, rollout_steer),
        post("/api/v1/rollouts/{artifact}/resume", Admin, rollout_steer),
        post("/api/v1/rollouts/{artifact}/abort", Admin, rollout_steer),
        post("/api/v1/rollouts/{artifact}/rollback", Admin, rollout_steer),
    ]
}

// ---- reads -------------------------------------------------------------

async fn overview(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::overview::read(s.cat())).await?)
}

async fn services(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::services::list(s.cat())).await?)
}

async fn service(State(s): State<AppState>, Path(name): Path<String>) -> Reply {
    reply(s.call(fleet::services::detail(s.cat(), &name)).await?)
}

async fn nodes(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::nodes::list(s.cat())).await?)
}

async fn node(State(s): State<AppState>, Path(node): Path<String>) -> Reply {
    reply(s.call(fleet::nodes::detail(s.cat(), &node)).await?)
}

async fn elections(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::clusters::list(s.cat())).await?)
}

async fn election(State(s): State<AppState>, Path(name): Path<String>) -> Reply {
    reply(s.call(fleet::clusters::view(s.cat(), &name)).await?)
}

async fn rollouts(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::rollouts::list(s.cat())).await?)
}

async fn rollout(State(s): State<AppState>, Path(artifact): Path<String>) -> Reply {
    reply(s.call(fleet::rollouts::status(s.cat(), &artifact)).await?)
}

async fn rollout_history(State(s): State<AppState>, Path(artifact): Path<String>) -> Reply {
    reply(s.call(fleet::rollouts::history(s.cat(), &artifact)).await?)
}

/// History records per service in a repairs answer (as `repairs list`'s default).
const REPAIR_HISTORY: usize = 20;

async fn repairs(State(s): State<AppState>) -> Reply {
    reply(
        s.call(fleet::repairs::list(s.cat(), REPAIR_HISTORY))
            .await?,
    )
}

async fn repair(State(s): State<AppState>, Path(service): Path<String>) -> Reply {
    reply(
        s.call(fleet::repairs::service(s.cat(), &service, REPAIR_HISTORY))
            .await?,
    )
}

async fn snapshots(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::snapshots::list(s.cat())).await?)
}

async fn artifacts(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::artifacts::list(s.cat())).await?)
}

async fn artifact(State(s): State<AppState>, Path(name): Path<String>) -> Reply {
    reply(s.call(fleet::artifacts::versions(s.cat(), &name)).await?)
}

async fn watchdogs(State(s): State<AppState>) -> Reply {
    reply(s.call(fleet::watchdogs::list(s.cat())).await?)
}

/// The most entries a list query may ask for.
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
struct KvQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

fn limit(asked: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n}: must be from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// A query string, or 400 with a JSON error.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

async fn kv(State(s): State<AppState>, q: Result<Query<KvQuery>, QueryRejection>) -> Reply {
    let q = query(q)?;
    let n = limit(q.limit, 200)?;
    reply(s.call(fleet::kv::list(s.cat(), &q.prefix, n)).await?)
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn audit(State(s): State<AppState>, q: Result<Query<LimitQuery>, QueryRejection>) -> Reply {
    let q = query(q)?;
    let n = limit(q.limit, 100)?;
    reply(s.call(fleet::audit::list(s.cat(), n)).await?)
}

// ---- actions -------------------------------------------------------------

type Accepted = Result<(StatusCode, Json<Value>), ApiError>;

/// Carries out an action under the deadline and records it in the audit
/// log (accepted or refused) with who asked; 202 with the intent written.
async fn act<T: Serialize>(
    s: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    params: Value,
    f: impl std::future::Future<Output = Result<T, FleetError>>,
) -> Accepted {
    let result = s.call(f).await;
    let outcome = match &result {
        Ok(_) => "accepted".to_string(),
        // The catalog did not answer (or not in time): the write may or may
        // not have landed.
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => format!("unknown: {}", e.message),
        Err(e) => format!("refused: {}", e.message),
    };
    let entry = fleet::audit::AuditEntry::new(caller.who(), action, target, params, &outcome);
    let recorded = s.call(fleet::audit::record(s.cat(), &entry)).await;
    tracing::info!(
        who = caller.who(),
        action,
        target,
        outcome = entry.outcome.as_str(),
        "cockpit action"
    );
    let intent = result?;
    let audit = match recorded {
        Ok(key) => Value::from(key),
        Err(e) => {
            // The intent is written: the caller must not retry it. Say the
            // audit entry is missing, in the log and in the answer.
            tracing::warn!(
                who = caller.who(),
                action,
                target,
                "cockpit: the audit entry could not be written: {}",
                e.message
            );
            Value::Null
        }
    };
    let intent = serde_json::to_value(intent).unwrap_or(Value::Null);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": true, "intent": intent, "audit": audit })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
}

async fn maintenance(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    JsonBody(b): JsonBody<MaintenanceBody>,
) -> Accepted {
    let f = fleet::nodes::request_maintenance(s.cat(), &node, b.on, caller.who());
    act(&s, &caller, "maintenance", &node, json!({ "on": b.on }), f).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    #[serde(default)]
    to: Option<String>,
}

async fn switchover(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<SwitchoverBody>,
) -> Accepted {
    let req = fleet::clusters::SwitchoverRequest {
        to: b.to.clone(),
        ..Default::default()
    };
    let f = fleet::clusters::request_switchover(s.cat(), &name, &req);
    act(&s, &caller, "switchover", &name, json!({ "to": b.to }), f).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn pause(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Accepted {
    let f = fleet::clusters::pause(s.cat(), &name, caller.who());
    act(&s, &caller, "pause", &name, json!({}), f).await
}

async fn resume(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Accepted {
    let f = fleet::clusters::resume(s.cat(), &name, caller.who());
    act(&s, &caller, "resume", &name, json!({}), f).await
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    artifact: String,
    version: String,
    /// Cumulative scale units as the CLI takes them (`1,10%,50%,100%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    units: Option<String>,
    /// A duration as the CLI takes it (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_failures: Option<u32>,
}

async fn start_rollout(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(b): JsonBody<RolloutBody>,
) -> Accepted {
    let params = serde_json::to_value(&b).unwrap_or(Value::Null);
    let opts = match fleet::rollouts::StartOptions::parse(
        b.units.as_deref(),
        b.probation.as_deref(),
        b.max_failures,
    ) {
        Ok(o) => o,
        Err(e) => {
            let f = async { Err::<(), FleetError>(e) };
            return act(&s, &caller, "rollout.start", &b.artifact, params, f).await;
        }
    };
    let f = fleet::rollouts::start(s.cat(), &b.artifact, &b.version, &opts, caller.who());
    act(&s, &caller, "rollout.start", &b.artifact, params, f).await
}

/// `POST /rollouts/{artifact}/<verb>`: the verb is the matched route's last
/// segment (pause, resume, abort, rollback).
async fn rollout_steer(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    matched: MatchedPath,
    Path(artifact): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Accepted {
    use fleet::rollouts::Transition;
    let (t, action) = match matched.as_str().rsplit('/').next() {
        Some("pause") => (Transition::Pause, "rollout.pause"),
        Some("resume") => (Transition::Resume, "rollout.resume"),
        Some("abort") => (Transition::Abort, "rollout.abort"),
        Some("rollback") => (Transition::Rollback, "rollout.rollback"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no rollout action at {}", matched.as_str()),
            ));
        }
    };
    let f = fleet::rollouts::transition(s.cat(), &artifact, t, caller.who());
    act(&s, &caller, action, &artifact, json!({}), f).await
}
