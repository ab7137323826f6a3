//! `/admin/*`: what operators use to see and exercise the supervision tree.
//!
//! Every route here sits behind `require_admin_token`; with no token configured they answer 503.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::rfc3339;
use crate::supervision::{short_type_name, ActorRecord, JournalEntry, ListingRow};
use crate::system_monitor::GetSample;

/// A dynamic group (sessions, peers) with more children than this is listed as one summary row.
const DYNAMIC_GROUP_LIST_LIMIT: usize = 50;

pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/admin")
            .wrap(actix_web::middleware::from_fn(require_admin_token))
            .route("/dead-letters", web::get().to(super::chat::list_dead_letters))
            .route("/dead-letters/{id}/retry", web::post().to(super::chat::retry_dead_letter))
            .route("/actors", web::get().to(list_actors))
            .route("/journal", web::get().to(journal))
            .route("/quarantine", web::get().to(quarantine))
            .route("/system", web::get().to(system))
            .route("/crashes", web::get().to(list_crashes))
            .route("/crashes/{id}", web::get().to(crash_detail))
            .route("/chaos/panic", web::post().to(chaos_panic))
            .route("/chaos/http-panic", web::get().to(chaos_http_panic))
            .route("/chaos/log-flood", web::post().to(chaos_log_flood))
            .route("/chaos/task-panic", web::post().to(chaos_task_panic))
            .route("/chaos/thread-panic", web::post().to(chaos_thread_panic))
            .route("/chaos/{rest:.*}", web::route().to(chaos_unknown)),
    );
}

async fn require_admin_token(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let Some(state) = state else {
        return Err(ApiError::Unavailable("application state missing".into()).into());
    };
    check_admin_token(request.headers(), &state.config.admin.token)?;
    next.call(request).await
}

/// `Ok` when the request carries the configured admin bearer token.
pub(super) fn check_admin_token(headers: &header::HeaderMap, token: &str) -> Result<(), ApiError> {
    let expected = token.as_bytes();
    if expected.is_empty() {
        return Err(ApiError::AdminDisabled);
    }
    let presented = bearer_token(headers).unwrap_or("");
    // Constant time in the token's content; a length mismatch is rejected by ct_eq too.
    if !bool::from(presented.as_bytes().ct_eq(expected)) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// The token of an `Authorization: Bearer …` header.
pub(super) fn bearer_token(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

fn actor_json(record: &ActorRecord) -> Value {
    json!({
        "path": record.path,
        "kind": record.kind,
        "status": record.status().as_str(),
        "restart": record.restart,
        "restarts": record.restarts(),
        "started_at": rfc3339::format(record.started_at()),
        "last_failure": record.last_failure().map(|failure| json!({
            "at": rfc3339::format(failure.at),
            "message": failure.message,
            "location": failure.location,
            "handling": failure.handling,
        })),
        "stalled": record.is_stalled(),
        "stalls": record.stalls(),
        "backlog": record.backlog(),
        "quarantined_keys": record.quarantined_keys(),
    })
}

async fn list_actors(state: web::Data<AppState>) -> HttpResponse {
    let actors: Vec<Value> = state
        .registry
        .listing(DYNAMIC_GROUP_LIST_LIMIT)
        .into_iter()
        .map(|row| match row {
            ListingRow::Actor(record) => actor_json(&record),
            ListingRow::Group(summary) => {
                let mut value = serde_json::to_value(summary).unwrap_or(Value::Null);
                value["summary"] = Value::Bool(true);
                value
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({ "actors": actors }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    actor: Option<String>,
    #[serde(default)]
    backtrace: bool,
}

fn journal_json(entry: &JournalEntry, with_backtrace: bool) -> Value {
    let mut value = json!({
        "id": entry.id,
        "actor": entry.actor,
        "at": rfc3339::format(entry.at),
        "cause": entry.cause,
        "message": entry.message,
        "location": entry.location,
        "thread": entry.thread,
        "handling": entry.handling.map(short_type_name),
        "message_key": entry.message_key,
        "restart_count": entry.restart_count,
        "decision": entry.decision,
    });
    if with_backtrace {
        value["backtrace"] = Value::String(entry.backtrace.to_string());
    }
    value
}

async fn journal(state: web::Data<AppState>, query: web::Query<JournalQuery>) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let entries = state.journal.entries(query.actor.as_deref());
    // Symbolizing backtraces reads debug info from disk: keep it off the worker thread.
    let failures =
        web::block(move || entries.iter().map(|entry| journal_json(entry, query.backtrace)).collect::<Vec<_>>())
            .await
            .map_err(|_| ApiError::Unavailable("could not render the journal".into()))?;
    Ok(HttpResponse::Ok().json(json!({ "failures": failures })))
}

async fn quarantine(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "total": state.quarantine.total(),
        "records": state.quarantine.records(),
    }))
}

async fn list_crashes(state: web::Data<AppState>) -> HttpResponse {
    let crashes: Vec<Value> = state.crashes.list().iter().map(|crash| crash.summary()).collect();
    HttpResponse::Ok().json(json!({ "crashes": crashes }))
}

async fn crash_detail(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let crash = state.crashes.get(&id).ok_or_else(|| ApiError::NotFound(format!("no crash record with id {id}")))?;
    Ok(HttpResponse::Ok().json(&*crash))
}

async fn system(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let sample = state
        .system_monitor
        .send_timeout(GetSample, std::time::Duration::from_secs(2))
        .await
        .map_err(|error| ApiError::Unavailable(error.to_string()))?;
    Ok(HttpResponse::Ok().json(sample))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosPanicRequest {
    actor: String,
}

async fn chaos_panic(state: web::Data<AppState>, body: web::Json<ChaosPanicRequest>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    let path = body.into_inner().actor;
    let record = state.registry.get(&path).ok_or_else(|| ApiError::NotFound(format!("no actor at path {path}")))?;
    // Recorded before the panic is triggered, so the crash record's recent actions contain it.
    crate::action!("admin", "chaos panic requested", actor = path);
    if !record.trigger_chaos_panic() {
        return Err(ApiError::Conflict(format!("actor {path} is stopped")));
    }
    tracing::warn!(actor = %path, "chaos: panic requested through the admin API");
    Ok(HttpResponse::Accepted().json(json!({ "actor": path, "requested": "panic" })))
}

/// Panics inside the handler: how operators check the HTTP panic boundary live.
async fn chaos_http_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    panic!("chaos: HTTP handler panic requested by an operator or a test");
}

/// Panics inside an owned task: checks task panic capture live.
async fn chaos_task_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    crate::action!("admin", "chaos task panic requested");
    let task = crate::tasks::spawn_owned("chaos.task_panic", async {
        panic!("chaos: owned task panic requested by an operator or a test");
    });
    let outcome: Result<(), _> = task.await;
    let outcome = outcome.err().map(|failed| failed.to_string()).unwrap_or_default();
    Ok(HttpResponse::Accepted().json(json!({ "task": "chaos.task_panic", "outcome": outcome })))
}

/// Panics on a plain thread that no boundary covers: checks that the panic hook records it.
async fn chaos_thread_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    crate::action!("admin", "chaos thread panic requested");
    let spawned = std::thread::Builder::new().name("chaos-thread".into()).spawn(|| {
        panic!("chaos: thread panic requested by an operator or a test");
    });
    let thread = spawned.map_err(|error| ApiError::Unavailable(format!("cannot start a thread: {error}")))?;
    // Joining blocks (briefly): off the worker thread.
    let joined = web::block(move || thread.join().is_err())
        .await
        .map_err(|_| ApiError::Unavailable("could not join the chaos thread".into()))?;
    Ok(HttpResponse::Accepted().json(json!({ "thread": "chaos-thread", "panicked": joined })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFloodRequest {
    count: u32,
    #[serde(default = "default_flood_message")]
    message: String,
}

fn default_flood_message() -> String {
    "chaos: log flood".into()
}

/// Logs `count` events from this HTTP worker as fast as it can: how operators (and tests) check
/// that logging never blocks request handling, whatever state the log writer is in.
async fn chaos_log_flood(
    state: web::Data<AppState>,
    body: web::Json<LogFloodRequest>,
) -> Result<HttpResponse, ApiError> {
    const MAX_FLOOD: u32 = 1_000_000;
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    let LogFloodRequest { count, message } = body.into_inner();
    if count > MAX_FLOOD {
        return Err(ApiError::BadRequest(format!("count must be at most {MAX_FLOOD}")));
    }
    let dropped_before = crate::logging::pipe().map_or(0, |pipe| pipe.dropped());
    let started = std::time::Instant::now();
    for seq in 0..count {
        tracing::info!(target: "rampart::chaos", seq, "{message}");
    }
    let elapsed = started.elapsed();
    let dropped = crate::logging::pipe().map_or(0, |pipe| pipe.dropped()) - dropped_before;
    Ok(HttpResponse::Ok().json(json!({
        "logged": count,
        "dropped": dropped,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
    })))
}

async fn chaos_unknown() -> Result<HttpResponse, ApiError> {
    Err(chaos_disabled())
}

fn chaos_disabled() -> ApiError {
    ApiError::NotFound("no such route (chaos routes exist only with chaos.enabled = true)".into())
}
