//! `/admin/*`: what operators use to see and exercise the supervision tree.
//!
//! Every route here sits behind `require_admin_token` (the token is generated on a first run when
//! none is configured; an empty one would answer 503, never open the API). Bodies are the typed
//! structs below, documented from the same types by `openapi.rs`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::crash::StoredCrash;
use crate::rfc3339;
use crate::storage::{FaultPlan, FaultState, IoFault};
use crate::supervision::{short_type_name, ActorRecord, GroupSummary, JournalEntry, ListingRow, QuarantineRecord};
use crate::system_monitor::{GetSample, Sample};

/// A dynamic group (sessions, peers) with more children than this is listed as one summary row.
const DYNAMIC_GROUP_LIST_LIMIT: usize = 50;

/// The operator routes of this file, inside the `/admin` scope (which checks the admin token).
pub fn admin_routes(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/info").get(info))
        .service(web::resource("/actors").get(list_actors))
        .service(web::resource("/journal").get(journal))
        .service(web::resource("/quarantine").get(quarantine))
        .service(web::resource("/system").get(system))
        .service(web::resource("/crashes").get(list_crashes))
        .service(web::resource("/crashes/{id}").get(crash_detail))
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

/// What the console needs to know about this server.
#[derive(Serialize, ToSchema)]
pub(super) struct InfoBody {
    version: String,
    /// RFC 3339: when this process started.
    started_at: String,
    /// Whether `/admin/chaos/*` is enabled.
    chaos_enabled: bool,
}

/// This server: version, start time, whether chaos is enabled.
#[utoipa::path(
    get, path = "/admin/info", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "About this server", body = InfoBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn info(state: web::Data<AppState>) -> web::Json<InfoBody> {
    web::Json(InfoBody {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: rfc3339::format(state.started_at),
        chaos_enabled: state.config.chaos.enabled,
    })
}

/// One actor in the tree.
#[derive(Serialize, ToSchema)]
pub(super) struct ActorBody {
    path: String,
    /// `worker` or `supervisor`.
    kind: String,
    /// `running`, `restarting` or `stopped`.
    status: String,
    /// `permanent`, `transient` or `temporary`.
    restart: String,
    restarts: u64,
    /// RFC 3339.
    started_at: String,
    last_failure: Option<FailureBody>,
    stalled: bool,
    stalls: u64,
    backlog: u64,
    quarantined_keys: usize,
}

/// An actor's latest failure.
#[derive(Serialize, ToSchema)]
pub(super) struct FailureBody {
    /// RFC 3339.
    at: String,
    message: String,
    location: Option<String>,
    /// The message type being handled, when the failure happened inside a handler.
    handling: Option<String>,
}

/// A dynamic group of more than 50 children (sessions, peers), summarized.
#[derive(Serialize, ToSchema)]
pub(super) struct GroupBody {
    /// `<supervisor path>/*`
    path: String,
    /// Always `true`.
    summary: bool,
    count: usize,
    running: usize,
    restarting: usize,
    stopped: usize,
    restarts: u64,
}

/// An actor, or a summary of a large dynamic group.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum ActorRow {
    Actor(ActorBody),
    Group(GroupBody),
}

#[derive(Serialize, ToSchema)]
pub(super) struct ActorList {
    actors: Vec<ActorRow>,
}

fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|value| value.as_str().map(str::to_owned)).unwrap_or_default()
}

fn actor_body(record: &ActorRecord) -> ActorBody {
    ActorBody {
        path: record.path.clone(),
        kind: label(&record.kind),
        status: record.status().as_str().to_owned(),
        restart: label(&record.restart),
        restarts: record.restarts(),
        started_at: rfc3339::format(record.started_at()),
        last_failure: record.last_failure().map(|failure| FailureBody {
            at: rfc3339::format(failure.at),
            message: failure.message,
            location: failure.location,
            handling: failure.handling,
        }),
        stalled: record.is_stalled(),
        stalls: record.stalls(),
        backlog: record.backlog(),
        quarantined_keys: record.quarantined_keys(),
    }
}

fn group_body(summary: GroupSummary) -> GroupBody {
    GroupBody {
        path: summary.path,
        summary: true,
        count: summary.count,
        running: summary.running,
        restarting: summary.restarting,
        stopped: summary.stopped,
        restarts: summary.restarts,
    }
}

/// Every actor, supervisors included.
#[utoipa::path(
    get, path = "/admin/actors", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tree, parents before children", body = ActorList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list_actors(state: web::Data<AppState>) -> web::Json<ActorList> {
    let actors = state
        .registry
        .listing(DYNAMIC_GROUP_LIST_LIMIT)
        .into_iter()
        .map(|row| match row {
            ListingRow::Actor(record) => ActorRow::Actor(actor_body(&record)),
            ListingRow::Group(summary) => ActorRow::Group(group_body(summary)),
        })
        .collect();
    web::Json(ActorList { actors })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct JournalQuery {
    /// Only this actor's failures.
    actor: Option<String>,
    /// Include symbolized backtraces.
    #[serde(default)]
    backtrace: bool,
}

/// One failure and what its supervisor decided.
#[derive(Serialize, ToSchema)]
pub(super) struct JournalEntryBody {
    id: u64,
    actor: String,
    /// RFC 3339.
    at: String,
    /// `{"kind": "panic" | "escalation" | "exit"}`.
    cause: Value,
    message: String,
    location: Option<String>,
    thread: Option<String>,
    handling: Option<String>,
    message_key: Option<String>,
    restart_count: u64,
    /// `{"action": "restart", "delay_ms", "ceiling_ms"}`, or `stop`, `escalate`, `ignore`.
    decision: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    backtrace: Option<String>,
}

fn journal_body(entry: &JournalEntry, with_backtrace: bool) -> JournalEntryBody {
    JournalEntryBody {
        id: entry.id,
        actor: entry.actor.clone(),
        at: rfc3339::format(entry.at),
        cause: serde_json::to_value(&entry.cause).unwrap_or(Value::Null),
        message: entry.message.clone(),
        location: entry.location.clone(),
        thread: entry.thread.clone(),
        handling: entry.handling.map(|name| short_type_name(name).to_owned()),
        message_key: entry.message_key.clone(),
        restart_count: entry.restart_count,
        decision: serde_json::to_value(&entry.decision).unwrap_or(Value::Null),
        backtrace: with_backtrace.then(|| entry.backtrace.to_string()),
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct JournalBody {
    failures: Vec<JournalEntryBody>,
}

/// Every failure, oldest first (bounded to 512).
#[utoipa::path(
    get, path = "/admin/journal", tag = "admin",
    security(("admin_token" = [])),
    params(JournalQuery),
    responses(
        (status = 200, description = "Failures, oldest first", body = JournalBody),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Could not render the journal", body = ErrorBody),
    )
)]
pub(super) async fn journal(
    state: web::Data<AppState>,
    query: web::Query<JournalQuery>,
) -> Result<web::Json<JournalBody>, ApiError> {
    let query = query.into_inner();
    let entries = state.journal.entries(query.actor.as_deref());
    // Symbolizing backtraces reads debug info from disk: keep it off the worker thread.
    let failures =
        web::block(move || entries.iter().map(|entry| journal_body(entry, query.backtrace)).collect::<Vec<_>>())
            .await
            .map_err(|_| ApiError::Unavailable("could not render the journal".into()))?;
    Ok(web::Json(JournalBody { failures }))
}

#[derive(Serialize, ToSchema)]
pub(super) struct QuarantineBody {
    /// Records ever added (the list keeps the newest).
    total: u64,
    records: Vec<QuarantineRecord>,
}

/// Quarantined keys and the messages diverted because of them.
#[utoipa::path(
    get, path = "/admin/quarantine", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Quarantine records", body = QuarantineBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn quarantine(state: web::Data<AppState>) -> web::Json<QuarantineBody> {
    web::Json(QuarantineBody { total: state.quarantine.total(), records: state.quarantine.records() })
}

/// A crash record without its backtrace and actions.
#[derive(Serialize, ToSchema)]
pub(super) struct CrashSummary {
    id: String,
    /// RFC 3339.
    at: String,
    /// `actor`, `http`, `task` or `thread`.
    source: String,
    message: String,
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CrashList {
    crashes: Vec<CrashSummary>,
}

/// Crash records, newest first.
#[utoipa::path(
    get, path = "/admin/crashes", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Newest first", body = CrashList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list_crashes(state: web::Data<AppState>) -> web::Json<CrashList> {
    let crashes = state
        .crashes
        .list()
        .iter()
        .map(|crash| CrashSummary {
            id: crash.id.clone(),
            at: crash.at.clone(),
            source: crash.source.clone(),
            message: crash.message.clone(),
            location: crash.location.clone(),
            actor: crash.actor.clone(),
            route: crash.route.clone(),
            task: crash.task.clone(),
        })
        .collect();
    web::Json(CrashList { crashes })
}

/// One crash record with its backtrace and the actions that led to it.
#[utoipa::path(
    get, path = "/admin/crashes/{id}", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "Crash record id")),
    responses(
        (status = 200, description = "The record", body = StoredCrash),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such record", body = ErrorBody),
    )
)]
pub(super) async fn crash_detail(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<StoredCrash>, ApiError> {
    let crash = state.crashes.get(&id).ok_or_else(|| ApiError::NotFound(format!("no crash record with id {id}")))?;
    Ok(web::Json(StoredCrash::clone(&crash)))
}

/// The system monitor's latest sample.
#[utoipa::path(
    get, path = "/admin/system", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Latest sample", body = Sample),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "The system monitor did not answer (restarting)", body = ErrorBody),
    )
)]
pub(super) async fn system(state: web::Data<AppState>) -> Result<web::Json<Sample>, ApiError> {
    let sample = state
        .system_monitor
        .send_timeout(GetSample, std::time::Duration::from_secs(2))
        .await
        .map_err(|error| ApiError::Unavailable(error.to_string()))?;
    Ok(web::Json(sample))
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
