//! `/admin/chaos/*`: how operators exercise the supervision tree and the safety layer live —
//! a panic in an actor, a handler, a task or a plain thread, a log flood, storage faults.
//!
//! Only with `chaos.enabled = true`: otherwise every route here answers 404, as an unknown route
//! does. Behind the admin token like the rest of `/admin`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::storage::{FaultPlan, FaultState, IoFault};

/// The chaos routes, inside the `/admin` scope.
pub fn admin_routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/chaos/panic").post(chaos_panic))
        .service(web::resource("/chaos/http-panic").get(chaos_http_panic))
        .service(web::resource("/chaos/log-flood").post(chaos_log_flood))
        .service(web::resource("/chaos/task-panic").post(chaos_task_panic))
        .service(web::resource("/chaos/thread-panic").post(chaos_thread_panic))
        .service(
            web::resource("/chaos/storage")
                .get(chaos_storage_state)
                .post(chaos_storage_inject)
                .delete(chaos_storage_clear),
        )
        .route("/chaos/{rest:.*}", web::route().to(chaos_unknown));
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ChaosPanicRequest {
    /// An actor path from `/admin/actors`.
    actor: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ChaosPanicAccepted {
    actor: String,
    /// Always `panic`.
    requested: String,
}

/// Makes an actor panic inside its own handler (`chaos.enabled` only; `404` otherwise).
#[utoipa::path(
    post, path = "/admin/chaos/panic", tag = "chaos",
    security(("admin_token" = [])),
    request_body = ChaosPanicRequest,
    responses(
        (status = 202, description = "The panic was requested", body = ChaosPanicAccepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled, or no actor at that path", body = ErrorBody),
        (status = 409, description = "The actor is stopped", body = ErrorBody),
    )
)]
pub(super) async fn chaos_panic(
    state: web::Data<AppState>,
    body: web::Json<ChaosPanicRequest>,
) -> Result<HttpResponse, ApiError> {
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
    Ok(HttpResponse::Accepted().json(ChaosPanicAccepted { actor: path, requested: "panic".into() }))
}

/// Storage faults to inject (replaces what was injected before).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ChaosStorageRequest {
    /// Fail message batches halfway with this error.
    #[serde(default)]
    error: Option<IoFault>,
    /// How many batches fail; absent: every batch until cleared. Ignored without `error`.
    #[serde(default, deserialize_with = "super::json_integer::opt_u32")]
    writes: Option<u32>,
    /// Delay before every write, in milliseconds (a slow disk).
    #[serde(default, deserialize_with = "super::json_integer::u32")]
    #[schema(maximum = 60000)]
    delay_ms: u32,
}

/// The storage faults injected now, and how many batches they failed so far.
#[utoipa::path(
    get, path = "/admin/chaos/storage", tag = "chaos",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The injected faults", body = FaultState),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
        (status = 409, description = "The chat store is not the embedded one", body = ErrorBody),
    )
)]
pub(super) async fn chaos_storage_state(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    Ok(HttpResponse::Ok().json(storage_faults(&state)?.state()))
}

/// Injects storage faults into the embedded chat database: an I/O error (`eio`) or a full disk
/// (`enospc`) halfway through the next `writes` message batches (or every batch until cleared),
/// and/or a slow disk (`delay_ms` before every write). Replaces what was injected before.
#[utoipa::path(
    post, path = "/admin/chaos/storage", tag = "chaos",
    security(("admin_token" = [])),
    request_body = ChaosStorageRequest,
    responses(
        (status = 200, description = "Injected", body = FaultState),
        (status = 400, description = "Malformed or out-of-range plan", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
        (status = 409, description = "The chat store is not the embedded one", body = ErrorBody),
    )
)]
pub(super) async fn chaos_storage_inject(
    state: web::Data<AppState>,
    body: web::Json<ChaosStorageRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    let ChaosStorageRequest { error, writes, delay_ms } = body.into_inner();
    let plan = FaultPlan { error, writes, delay_ms: u64::from(delay_ms) };
    crate::action!("admin", "chaos storage faults injected", plan = format!("{plan:?}"));
    let injected = storage_faults(&state)?.set(plan.clone()).map_err(ApiError::BadRequest)?;
    tracing::warn!(?plan, "chaos: storage faults injected through the admin API");
    Ok(HttpResponse::Ok().json(injected))
}

/// Clears injected storage faults.
#[utoipa::path(
    delete, path = "/admin/chaos/storage", tag = "chaos",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Cleared; `injected` still counts what they did", body = FaultState),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
        (status = 409, description = "The chat store is not the embedded one", body = ErrorBody),
    )
)]
pub(super) async fn chaos_storage_clear(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    crate::action!("admin", "chaos storage faults cleared");
    tracing::info!("chaos: storage faults cleared through the admin API");
    Ok(HttpResponse::Ok().json(storage_faults(&state)?.clear()))
}

/// The embedded store's fault injection; other stores are faulted by stopping their server.
fn storage_faults(state: &AppState) -> Result<&std::sync::Arc<crate::storage::Faults>, ApiError> {
    state.chat.store.faults().ok_or_else(|| {
        ApiError::Conflict(
            "storage fault injection works on the embedded store (storage.kind = \"sqlite\"); \
             to fault MongoDB, stop or slow its server"
                .into(),
        )
    })
}

/// Panics inside the handler: how operators check the HTTP panic boundary live.
#[utoipa::path(
    get, path = "/admin/chaos/http-panic", tag = "chaos",
    security(("admin_token" = [])),
    responses(
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
        (status = 500, description = "The handler panicked, by design (error `internal`)", body = ErrorBody),
    )
)]
pub(super) async fn chaos_http_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    panic!("chaos: HTTP handler panic requested by an operator or a test");
}

#[derive(Serialize, ToSchema)]
pub(super) struct TaskPanicOutcome {
    task: String,
    /// How the task ended, as its owner saw it.
    outcome: String,
}

/// Panics inside an owned task: checks task panic capture live.
#[utoipa::path(
    post, path = "/admin/chaos/task-panic", tag = "chaos",
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "The task panicked and was recorded", body = TaskPanicOutcome),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
    )
)]
pub(super) async fn chaos_task_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.chaos.enabled {
        return Err(chaos_disabled());
    }
    crate::action!("admin", "chaos task panic requested");
    let task = crate::tasks::spawn_owned("chaos.task_panic", async {
        panic!("chaos: owned task panic requested by an operator or a test");
    });
    let outcome: Result<(), _> = task.await;
    let outcome = outcome.err().map(|failed| failed.to_string()).unwrap_or_default();
    Ok(HttpResponse::Accepted().json(TaskPanicOutcome { task: "chaos.task_panic".into(), outcome }))
}

#[derive(Serialize, ToSchema)]
pub(super) struct ThreadPanicOutcome {
    thread: String,
    panicked: bool,
}

/// Panics on a plain thread that no boundary covers: checks that the panic hook records it.
#[utoipa::path(
    post, path = "/admin/chaos/thread-panic", tag = "chaos",
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "The thread panicked and was recorded", body = ThreadPanicOutcome),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
        (status = 503, description = "No thread could be started", body = ErrorBody),
    )
)]
pub(super) async fn chaos_thread_panic(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
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
    Ok(HttpResponse::Accepted().json(ThreadPanicOutcome { thread: "chaos-thread".into(), panicked: joined }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LogFloodRequest {
    #[schema(maximum = 1_000_000)]
    #[serde(deserialize_with = "super::json_integer::u32")]
    count: u32,
    #[serde(default = "default_flood_message")]
    message: String,
}

fn default_flood_message() -> String {
    "chaos: log flood".into()
}

#[derive(Serialize, ToSchema)]
pub(super) struct LogFloodOutcome {
    logged: u32,
    dropped: u64,
    elapsed_ms: f64,
}

/// Logs `count` events from this HTTP worker as fast as it can: how operators (and tests) check
/// that logging never blocks request handling, whatever state the log writer is in.
#[utoipa::path(
    post, path = "/admin/chaos/log-flood", tag = "chaos",
    security(("admin_token" = [])),
    request_body = LogFloodRequest,
    responses(
        (status = 200, description = "Logged", body = LogFloodOutcome),
        (status = 400, description = "`count` too large, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Chaos is disabled", body = ErrorBody),
    )
)]
pub(super) async fn chaos_log_flood(
    state: web::Data<AppState>,
    body: web::Json<LogFloodRequest>,
) -> Result<web::Json<LogFloodOutcome>, ApiError> {
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
    Ok(web::Json(LogFloodOutcome { logged: count, dropped, elapsed_ms: elapsed.as_secs_f64() * 1000.0 }))
}

async fn chaos_unknown() -> Result<HttpResponse, ApiError> {
    Err(chaos_disabled())
}

fn chaos_disabled() -> ApiError {
    ApiError::NotFound("no such route (chaos routes exist only with chaos.enabled = true)".into())
}
