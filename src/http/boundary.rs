//! The HTTP boundary: the outermost middleware around every request.
//!
//! Owns: the request id (a sane incoming `X-Request-Id` is kept, anything else is replaced by a
//! UUIDv7, and it is echoed on every response), the request metrics (labeled by route template,
//! never by raw path), and panic containment for handlers. A panic in a handler — its
//! synchronous part or its future — becomes a JSON 500 that carries the request id and nothing
//! of the panic; the worker keeps serving its other connections. The panic itself goes to the log
//! and to `rampart_panics_total{source="http"}`.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, ALLOW, USER_AGENT};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use serde_json::json;

use crate::crash::CrashRecord;
use crate::supervision::contain_future;
use crate::telemetry::{self, HttpLabels, HttpRouteLabels, PanicSource, SourceLabels};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longer incoming ids are replaced: they end up in logs and crash records.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Route label for requests no route matched (404s): raw paths would explode cardinality.
const UNMATCHED_ROUTE: &str = "unmatched";

/// The request's id, available to handlers through `HttpRequest::extensions()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn is_sane_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Why the boundary answered instead of the handler; rendered by actix without the request.
#[derive(Debug)]
enum BoundaryError {
    /// A middleware below (e.g. the admin token check) failed: its own response, plus the id.
    Forwarded { error: actix_web::Error, request_id: String },
    /// The handler panicked.
    Panicked { request_id: String },
}

impl std::fmt::Display for BoundaryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundaryError::Forwarded { error, .. } => error.fmt(f),
            BoundaryError::Panicked { .. } => f.write_str("An unexpected error occurred."),
        }
    }
}

impl ResponseError for BoundaryError {
    fn status_code(&self) -> StatusCode {
        match self {
            BoundaryError::Forwarded { error, .. } => error.as_response_error().status_code(),
            BoundaryError::Panicked { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (mut response, request_id) = match self {
            BoundaryError::Forwarded { error, request_id } => (error.error_response(), request_id),
            // Deliberately nothing of the panic: no message, location or backtrace.
            BoundaryError::Panicked { request_id } => (
                HttpResponse::InternalServerError().json(json!({
                    "error": "internal_server_error",
                    "message": "An unexpected error occurred.",
                    "request_id": request_id,
                })),
                request_id,
            ),
        };
        if let Ok(value) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }
}

pub async fn boundary<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| is_sane_request_id(value))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    // Everything needed after the call is copied out now: the request itself must not be kept
    // (actix's router needs to own it exclusively while it routes, scopes included).
    let route = request.match_pattern().unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = request.method().to_string();
    let peer = request.peer_addr();
    let user_agent = request.headers().get(USER_AGENT).cloned();
    crate::action!("http", format!("{method} {route}"), request = request_id);
    let metrics = telemetry::metrics();
    metrics.http_in_flight.inc();
    let started = Instant::now();
    let span = request_span(&method, &route, &request_id);
    let outcome = tracing::Instrument::instrument(contain_future(next.call(request)), span.clone()).await;
    // What is logged about the outcome belongs to the request's trace too.
    let _in_request_span = span.enter();
    metrics.http_in_flight.dec();

    let (result, status) = match outcome {
        Ok(Ok(response)) => {
            let mut response = with_json_method_error(response);
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            let status = response.status();
            (Ok(response), status)
        }
        Ok(Err(error)) => {
            let error = BoundaryError::Forwarded { error, request_id };
            let status = error.status_code();
            (Err(error.into()), status)
        }
        Err(panic) => {
            metrics.panics.get_or_create(&SourceLabels { source: PanicSource::http, route: route.clone() }).inc();
            let mut crash = CrashRecord::new(PanicSource::http, &panic);
            crash.route = Some(route.clone());
            crash.method = Some(method.clone());
            crash.request_id = Some(request_id.clone());
            crate::alerts::report_crash(crash);
            tracing::error!(
                method = %method,
                route = %route,
                request_id = %request_id,
                client_ip = %peer.map(|peer| peer.ip().to_string()).unwrap_or_else(|| "-".into()),
                user_agent = user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                location = panic.location.as_deref().unwrap_or("-"),
                panic = %panic.message,
                "HTTP handler panicked; answered 500"
            );
            (Err(BoundaryError::Panicked { request_id }.into()), StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    metrics
        .http_requests
        .get_or_create(&HttpLabels { method: method.clone(), route: route.clone(), status: status.as_u16() })
        .inc();
    metrics.http_duration.get_or_create(&HttpRouteLabels { method, route }).observe(started.elapsed().as_secs_f64());
    result
}

/// actix's router answers a known path with an unsupported method by an empty 405 (with `Allow`);
/// every error rampart sends has the JSON error body, so that one gets it too.
fn with_json_method_error<B: MessageBody>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response.map_into_left_body();
    }
    let allow = response.headers().get(ALLOW).and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
    let (request, _) = response.into_parts();
    let error = super::ApiError::MethodNotAllowed(allow);
    ServiceResponse::new(request, error.error_response()).map_into_right_body()
}

/// The request's span while spans are exported (`otel`), else a no-op span (no cost).
fn request_span(method: &str, route: &str, request_id: &str) -> tracing::Span {
    if !telemetry::tracing_exported() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{method} {route}"),
        http.request.method = method,
        http.route = route,
        request_id,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace_id) = span.in_scope(telemetry::current_trace_id) {
        span.record("trace_id", trace_id);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::is_sane_request_id;

    #[test]
    fn request_id_sanity() {
        assert!(is_sane_request_id("abc-123_x.y:z"));
        assert!(is_sane_request_id(&"a".repeat(128)));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id(&"a".repeat(129)));
        assert!(!is_sane_request_id("has space"));
        assert!(!is_sane_request_id("new\nline"));
        assert!(!is_sane_request_id("<script>"));
    }
}
