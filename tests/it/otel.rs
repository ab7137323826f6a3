//! OpenTelemetry export (built with `--features otel`): with OTEL_EXPORTER_OTLP_ENDPOINT set, HTTP
//! request and actor handling spans reach a local OTLP/HTTP receiver, and the trace id shows up
//! in log lines and crash records. CI runs: `cargo test --features otel --test it otel`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use parking_lot::Mutex;
use serde_json::json;

use crate::support::{eventually, Http, RampartProcess};

const TOKEN: &str = "test-admin-token";

/// Request path and body of every export request.
type Exports = Vec<(String, Vec<u8>)>;

#[derive(Clone, Default)]
struct Collected {
    bodies: Arc<Mutex<Exports>>,
}

impl Collected {
    fn traces_contain(&self, needle: &str) -> bool {
        self.bodies.lock().iter().any(|(path, body)| {
            path == "/v1/traces" && body.windows(needle.len()).any(|window| window == needle.as_bytes())
        })
    }
}

async fn collect(request: actix_web::HttpRequest, body: web::Bytes, state: web::Data<Collected>) -> HttpResponse {
    state.bodies.lock().push((request.path().to_owned(), body.to_vec()));
    HttpResponse::Ok().content_type("application/x-protobuf").body(Vec::new())
}

#[actix_rt::test]
async fn spans_reach_the_collector_and_trace_ids_reach_logs_and_crash_records() {
    let collected = Collected::default();
    let data = web::Data::new(collected.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::post().to(collect)))
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind collector");
    let endpoint = format!("http://{}", server.addrs()[0]);
    let _collector = rampart::tasks::spawn_owned("test.otlp_collector", server.run());

    let rampart = RampartProcess::start(&[
        ("RAMPART__ADMIN__TOKEN", TOKEN),
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let http = Http::new();
    let (status, _) =
        http.post(&rampart.url("/admin/chaos/panic"), Some(TOKEN), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202);
    let (status, _) = http.get(&rampart.url("/admin/chaos/http-panic"), Some(TOKEN)).await;
    assert_eq!(status, 500);

    eventually("request and actor spans are exported", Duration::from_secs(20), || {
        let done = collected.traces_contain("http.request") && collected.traces_contain("actor.handle");
        async move { done }
    })
    .await;
    assert!(collected.traces_contain("rampart"), "service name");

    let crashes_url = rampart.url("/admin/crashes");
    let id = std::cell::RefCell::new(String::new());
    eventually("the HTTP panic's crash record", Duration::from_secs(10), || async {
        let (_, crashes) = Http::new().get(&crashes_url, Some(TOKEN)).await;
        let found = crashes["crashes"].as_array().and_then(|list| list.iter().find(|c| c["source"] == "http").cloned());
        found.map(|crash| *id.borrow_mut() = crash["id"].as_str().unwrap_or_default().to_owned()).is_some()
    })
    .await;
    let (_, crash) = http.get(&rampart.url(&format!("/admin/crashes/{}", id.borrow())), Some(TOKEN)).await;
    let trace_id = crash["trace_id"].as_str().expect("crash record has a trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    // The same trace was exported: trace ids travel as 16 raw bytes in OTLP protobuf.
    let raw: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex")).collect();
    eventually("the crash's trace is among the exported spans", Duration::from_secs(10), || {
        let exported = collected.bodies.lock().iter().any(|(_, body)| body.windows(16).any(|w| w == raw.as_slice()));
        async move { exported }
    })
    .await;
    eventually("the panic's log line carries the trace id", Duration::from_secs(10), || {
        let logged =
            rampart.output().lines().any(|line| line.contains("HTTP handler panicked") && line.contains(&trace_id));
        async move { logged }
    })
    .await;
}
