//! The HTTP edge: routes, the shared application state, and the server builder.
//!
//! Architecture Invariant: only this module (and, later, the WebSocket session code) knows
//! actix-web types. Actors never build an `HttpResponse`; handlers talk to them through
//! `ActorHandle`s and map `CallError`s to `ApiError`s.

mod admin;
mod auth;
mod boundary;
mod chaos;
mod chat;
mod error;
mod health;
mod json_integer;
mod messages;
mod openapi;
mod signaling;
mod socket;
mod upgrade;
mod web_client;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::HttpService;
use actix_server::Server;
use actix_service::{map_config, IntoServiceFactory, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse};

pub use boundary::{RequestId, REQUEST_ID_HEADER};
pub use error::ApiError;
pub use openapi::document as openapi_document;

use crate::config::Config;
use crate::crash::CrashStore;
use crate::resilience::CircuitBreakers;
use crate::supervision::{ActorHandle, QuarantineStore, Registry, RestartJournal};
use crate::system_monitor::SystemMonitor;

/// What every handler may reach. Built once by `app::run`, shared by all workers.
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub journal: Arc<RestartJournal>,
    pub quarantine: Arc<QuarantineStore>,
    /// Crash records, newest last (`/admin/crashes`).
    pub crashes: Arc<CrashStore>,
    pub system_monitor: ActorHandle<SystemMonitor>,
    /// Every circuit breaker; `/ready` warns while one is open.
    pub circuit_breakers: Arc<CircuitBreakers>,
    /// Set by `app::run` the moment shutdown begins; `/ready` fails from then on.
    pub shutting_down: Arc<AtomicBool>,
    /// When this process started (`/admin/info`).
    pub started_at: std::time::SystemTime,
    /// The chat components (pipeline, delivery, sessions, stores).
    pub chat: Arc<crate::chat::Chat>,
    /// The keys that verify clients' tokens.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The Kafka transport, when `transport.kind = "kafka"` (`/ready` asks its brokers).
    #[cfg(feature = "kafka")]
    pub kafka: Option<Arc<crate::transport::kafka::Kafka>>,
    /// The SFU (`/rtc`, `/admin/rooms`); `None` when `sfu.enabled` is off.
    #[cfg(feature = "sfu")]
    pub sfu: Option<Arc<crate::sfu::Sfu>>,
}

/// The application: every route, behind the boundary middleware.
fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(web::JsonConfig::default().error_handler(|error, _| ApiError::BadRequest(error.to_string()).into()))
        .app_data(web::QueryConfig::default().error_handler(|error, _| ApiError::BadRequest(error.to_string()).into()))
        .service(web::resource("/health").get(health::live))
        .service(web::resource("/ready").get(health::ready))
        .service(web::resource("/metrics").get(metrics))
        .service(web::resource("/openapi.json").get(openapi::openapi_json))
        .service(web::resource("/ws").get(ws::upgrade))
        .service(web::resource("/rtc").get(signaling::upgrade))
        .service(web::resource("/rtc/relay").get(signaling::relay))
        .configure(web_client::routes)
        .configure(chat::routes)
        .configure(messages::routes)
        .service(
            web::scope("/admin")
                .wrap(actix_web::middleware::from_fn(auth::require_admin_token))
                .configure(admin::admin_routes)
                .configure(chaos::admin_routes)
                .configure(chat::admin_routes)
                .configure(signaling::admin_routes),
        )
        .default_service(web::to(not_found))
        // Outermost (registered last): sees every request, every error and every panic.
        .wrap(actix_web::middleware::from_fn(boundary::boundary))
}

/// Pending connections the listener queues (as actix-web's default).
const LISTEN_BACKLOG: i32 = 1024;
/// Idle keep-alive connections and request heads are given this long (as actix-web's defaults).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the listener and returns the (not yet polled) server and the bound address. Built on
/// actix-server and actix-http directly rather than actix-web's `HttpServer`, for the upgrade
/// path WebSockets are served on (`upgrade`).
pub fn bind(config: &Config, state: AppState, drain_timeout: Duration) -> std::io::Result<(Server, SocketAddr)> {
    let state = web::Data::new(state);
    let listener = listener(config.http.bind)?;
    let address = listener.local_addr()?;
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(drain_timeout.as_secs().max(1))
        .backlog(LISTEN_BACKLOG as u32);
    if config.http.workers > 0 {
        builder = builder.workers(config.http.workers);
    }
    // Idle keep-alive connections close when draining starts, instead of holding the drain.
    let draining = builder.graceful_shutdown_signal();
    let disconnect_timeout = config.http.disconnect_timeout;
    let server = builder
        .listen("rampart-http", listener, move || {
            let (app_state, upgrade_state, draining) = (state.clone(), state.clone(), draining.clone());
            HttpService::build()
                .keep_alive(KEEP_ALIVE)
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(disconnect_timeout)
                .local_addr(address)
                .graceful_shutdown_signal(move || {
                    let draining = draining.clone();
                    async move { draining.notified().await }
                })
                .upgrade(upgrade::factory(move || app(upgrade_state.clone()).into_factory()))
                .finish(map_config(app(app_state), |_| AppConfig::default()))
                .tcp()
        })?
        .run();
    Ok((server, address))
}

/// A listening socket on `address` (port 0: any free one), with the backlog above.
fn listener(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Prometheus scrape endpoint (no auth: it carries no secrets, and scrapers rarely do bearer auth).
/// OpenMetrics when the `Accept` header asks for it (Prometheus does), else the classic text
/// format 0.0.4 that every scraper and `promtool check metrics` reads.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric rampart exports", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text"),
    )))
)]
async fn metrics(request: actix_web::HttpRequest) -> HttpResponse {
    use crate::telemetry::exposition;
    let accept = request.headers().get(actix_web::http::header::ACCEPT).and_then(|value| value.to_str().ok());
    let openmetrics = crate::telemetry::metrics().render();
    if accept.is_some_and(exposition::wants_openmetrics) {
        HttpResponse::Ok().content_type(exposition::OPENMETRICS_CONTENT_TYPE).body(openmetrics)
    } else {
        HttpResponse::Ok().content_type(exposition::CLASSIC_CONTENT_TYPE).body(exposition::to_classic(&openmetrics))
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}
