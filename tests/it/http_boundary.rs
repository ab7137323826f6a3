//! The HTTP boundary on the real binary: request ids, panic containment, request metrics.

use std::time::Duration;

use crate::support::{eventually, scrape, RampartProcess};

const TOKEN: &str = "t";

fn chaos_server() -> RampartProcess {
    RampartProcess::start(&[("RAMPART__ADMIN__TOKEN", TOKEN), ("RAMPART__CHAOS__ENABLED", "true")])
}

/// GET with optional request id; returns status, echoed request id and JSON body.
async fn get(url: &str, request_id: Option<&str>) -> (u16, String, serde_json::Value) {
    let mut request = awc::Client::builder().timeout(Duration::from_secs(10)).finish().get(url);
    request = request.insert_header(("Authorization", format!("Bearer {TOKEN}")));
    if let Some(id) = request_id {
        request = request.insert_header(("X-Request-Id", id));
    }
    let mut response = request.send().await.expect("response");
    let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = response.body().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (response.status().as_u16(), id, json)
}

#[actix_rt::test]
async fn every_response_carries_a_request_id() {
    let server = chaos_server();
    let (status, id, _) = get(&server.url("/health"), None).await;
    assert_eq!(status, 200);
    let parsed = uuid::Uuid::parse_str(&id).expect("generated ids are UUIDs");
    assert_eq!(parsed.get_version_num(), 7);

    let (_, id, _) = get(&server.url("/health"), Some("client-abc_123")).await;
    assert_eq!(id, "client-abc_123", "a sane incoming id is echoed");

    for insane in ["has space", &"x".repeat(200), "semi;colon"] {
        let (_, id, _) = get(&server.url("/health"), Some(insane)).await;
        assert_ne!(id, insane);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "replaced by a fresh id: {id}");
    }
    // Errors too: 404 and 401 carry it.
    let (status, id, _) = get(&server.url("/nope"), Some("req-404")).await;
    assert_eq!((status, id.as_str()), (404, "req-404"));
    let response =
        awc::Client::new().get(server.url("/admin/actors")).insert_header(("X-Request-Id", "req-401")).send().await;
    let response = response.expect("response");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers().get("x-request-id").unwrap(), "req-401");
}

#[actix_rt::test]
async fn a_handler_panic_is_a_json_500_and_the_worker_keeps_serving() {
    // One HTTP worker (RampartProcess sets http.workers = 1): every request below shares it.
    let server = chaos_server();
    let panic_url = server.url("/admin/chaos/http-panic");
    let health_url = server.url("/health");
    let (panicked, concurrent) = tokio::join!(get(&panic_url, Some("boom-1")), get(&health_url, None));
    let (status, id, body) = panicked;
    assert_eq!(status, 500);
    assert_eq!(id, "boom-1");
    assert_eq!(
        body,
        serde_json::json!({
            "error": "internal_server_error",
            "message": "An unexpected error occurred.",
            "request_id": "boom-1",
        })
    );
    assert_eq!(concurrent.0, 200, "a concurrent request on the same worker succeeds");
    for _ in 0..3 {
        assert_eq!(get(&health_url, None).await.0, 200, "the worker keeps serving");
    }
    let output = server.output();
    assert!(output.contains("HTTP handler panicked"), "{output}");
    assert!(output.contains("src/http/chaos.rs:"), "location logged: {output}");
    assert!(output.contains("boom-1"));
    let text = scrape(&server).await;
    assert!(text.contains("rampart_panics_total{source=\"http\",route=\"/admin/chaos/http-panic\"} 1"), "{text}");
    assert!(
        text.contains("rampart_http_requests_total{method=\"GET\",route=\"/admin/chaos/http-panic\",status=\"500\"} 1")
    );
}

#[actix_rt::test]
async fn http_panic_route_is_404_unless_chaos_is_enabled() {
    let server = RampartProcess::start(&[("RAMPART__ADMIN__TOKEN", TOKEN)]);
    let (status, _, body) = get(&server.url("/admin/chaos/http-panic"), None).await;
    assert_eq!(status, 404, "{body}");
}

#[actix_rt::test]
async fn requests_are_counted_by_route_template_not_raw_path() {
    let server = chaos_server();
    assert_eq!(get(&server.url("/admin/actors"), None).await.0, 200);
    assert_eq!(get(&server.url("/no/such/path/123"), None).await.0, 404);
    eventually("request metrics recorded", Duration::from_secs(10), || async {
        let text = scrape(&server).await;
        text.contains("rampart_http_requests_total{method=\"GET\",route=\"/admin/actors\",status=\"200\"} 1")
            && text.contains("rampart_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1")
            && text.contains("rampart_http_request_duration_seconds_bucket{")
    })
    .await;
    assert!(!scrape(&server).await.contains("/no/such/path/123"), "raw paths never become labels");
}
