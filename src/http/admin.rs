//! `/admin/*`: what operators use to see the supervision tree, its failures and the process (the
//! routes that exercise it are in `chaos.rs`).
//!
//! Every route here sits behind `require_admin_token` (the token is generated on a first run when
//! none is configured; an empty one would answer 503, never open the API). Bodies are the typed
//! structs below, documented from the same types by `openapi.rs`.

use actix_web::web;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::crash::StoredCrash;
use crate::rfc3339;
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
        .service(web::resource("/crashes/{id}").get(crash_detail));
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
