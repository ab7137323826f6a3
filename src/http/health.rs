//! `GET /health` (liveness) and `GET /ready` (readiness), in the IETF health-check format
//! (`application/health+json`).
//!
//! Liveness checks nothing external: the process answers, so it is alive. Readiness runs each
//! component check with `health.check_timeout`, concurrently, never blocking a worker, and fails
//! (503) when a required component fails, when the breaker of a local required dependency (the
//! embedded store) is open, or once shutdown has begun. Degraded but serving (an actor
//! restarting or stalled, a shared or optional dependency's breaker open) is `warn` with 200.

use std::sync::atomic::Ordering;

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::AppState;
use crate::resilience::{CircuitState, Dependency};
use crate::supervision::ActorStatus;
use crate::system_monitor::GetSample;

const HEALTH_JSON: &str = "application/health+json";

/// A health answer (IETF health-check format): the overall status and, for readiness, one
/// entry per component check.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<BTreeMap<String, Vec<Check>>>,
}

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthBody, content_type = "application/health+json"))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().content_type(HEALTH_JSON).json(HealthBody { status: Status::Pass, checks: None })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize, ToSchema)]
struct Check {
    status: Status,
    /// A count or a state name, depending on the check.
    #[serde(rename = "observedValue", skip_serializing_if = "Option::is_none")]
    observed_value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

impl Check {
    fn new(status: Status, observed_value: impl Into<Option<Value>>, output: impl Into<Option<String>>) -> Self {
        Self { status, observed_value: observed_value.into(), output: output.into() }
    }
}

/// Readiness: `fail` (503) when a required component fails or shutdown has begun; `warn` (200)
/// while degraded but serving.
#[utoipa::path(
    get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready (`pass` or `warn`)", body = HealthBody, content_type = "application/health+json"),
        (status = 503, description = "Not ready (`fail`)", body = HealthBody, content_type = "application/health+json"),
    )
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let mut checks: Vec<(String, Check)> = Vec::new();
    if state.shutting_down.load(Ordering::Acquire) {
        checks.push(("shutdown".to_owned(), Check::new(Status::Fail, None, "shutting down".to_owned())));
        return render(checks);
    }

    let records = state.registry.snapshot();
    let root_running = records.iter().any(|r| r.parent.is_none() && r.status() == ActorStatus::Running);
    checks.push((
        "supervision:root".to_owned(),
        if root_running {
            Check::new(Status::Pass, None, None)
        } else {
            Check::new(Status::Fail, None, "the root supervisor is not running".to_owned())
        },
    ));
    let restarting: Vec<&str> =
        records.iter().filter(|r| r.status() == ActorStatus::Restarting).map(|r| r.path.as_str()).collect();
    checks.push((
        "supervision:restarting".to_owned(),
        match restarting.as_slice() {
            [] => Check::new(Status::Pass, json!(0), None),
            paths => Check::new(Status::Warn, json!(paths.len()), format!("restarting: {}", paths.join(", "))),
        },
    ));
    let stalled: Vec<&str> = records.iter().filter(|r| r.is_stalled()).map(|r| r.path.as_str()).collect();
    checks.push((
        "supervision:stalled".to_owned(),
        match stalled.as_slice() {
            [] => Check::new(Status::Pass, json!(0), None),
            paths => Check::new(Status::Warn, json!(paths.len()), format!("stalled: {}", paths.join(", "))),
        },
    ));
    for (breaker, dependency) in state.circuit_breakers.all() {
        checks.push((format!("circuit:{}", breaker.name()), circuit_check(breaker.state(), dependency)));
    }
    // The brokers are shared by the deployment: down, no process can take sends (they answer
    // `unavailable`), so readiness warns rather than moving traffic to equally blind peers.
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &state.kafka {
        let brokers = kafka.check(state.config.health.check_timeout).await;
        checks.push((
            "kafka:brokers".to_owned(),
            match brokers {
                Ok(count) => Check::new(Status::Pass, json!(count), None),
                Err(error) => Check::new(Status::Warn, None, format!("the Kafka brokers do not answer: {error}")),
            },
        ));
    }
    let monitor = state.system_monitor.send_timeout(GetSample, state.config.health.check_timeout).await;
    checks.push((
        "actor:system_monitor".to_owned(),
        match monitor {
            Ok(sample) => Check::new(Status::Pass, json!(sample.live_actors), None),
            Err(error) => Check::new(Status::Warn, None, error.to_string()),
        },
    ));
    render(checks)
}

/// An open breaker fails readiness only for a local required dependency (README, "Readiness").
fn circuit_check(state: CircuitState, dependency: Dependency) -> Check {
    match (state, dependency) {
        (CircuitState::Closed, _) => Check::new(Status::Pass, json!("closed"), None),
        (CircuitState::HalfOpen, _) => {
            Check::new(Status::Warn, json!("half_open"), "trial calls in progress".to_owned())
        }
        (CircuitState::Open, Dependency::LocalRequired) => Check::new(
            Status::Fail,
            json!("open"),
            "calls are being rejected: this instance cannot serve (a local dependency)".to_owned(),
        ),
        (CircuitState::Open, Dependency::SharedOrOptional) => {
            Check::new(Status::Warn, json!("open"), "calls are being rejected".to_owned())
        }
    }
}

fn render(checks: Vec<(String, Check)>) -> HttpResponse {
    let overall = checks.iter().map(|(_, check)| check.status).max().unwrap_or(Status::Pass);
    let mut by_component: BTreeMap<String, Vec<Check>> = BTreeMap::new();
    for (component, check) in checks {
        by_component.entry(component).or_default().push(check);
    }
    crate::telemetry::metrics().readiness.set(match overall {
        Status::Pass => 2,
        Status::Warn => 1,
        Status::Fail => 0,
    });
    let status = if overall == Status::Fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    HttpResponse::build(status)
        .content_type(HEALTH_JSON)
        .json(HealthBody { status: overall, checks: Some(by_component) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_breaker_fails_readiness_only_for_a_local_required_dependency() {
        let status = |state, dependency| circuit_check(state, dependency).status;
        assert_eq!(status(CircuitState::Open, Dependency::LocalRequired), Status::Fail);
        assert_eq!(status(CircuitState::Open, Dependency::SharedOrOptional), Status::Warn);
        assert_eq!(status(CircuitState::HalfOpen, Dependency::LocalRequired), Status::Warn);
        assert_eq!(status(CircuitState::Closed, Dependency::LocalRequired), Status::Pass);
        assert_eq!(status(CircuitState::Closed, Dependency::SharedOrOptional), Status::Pass);
    }
}
