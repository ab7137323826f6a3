//! `GET /metrics` on the real binary: every series present from start, restarts visible.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, scrape, Http, RampartProcess};

#[actix_rt::test]
async fn metrics_are_served_without_auth_with_every_series_from_start() {
    let server = RampartProcess::start(&[]);
    let text = scrape(&server).await;
    for line in [
        "rampart_actor_restarts_total{actor=\"/root\"} 0",
        "rampart_actor_restarts_total{actor=\"/root/system_monitor\"} 0",
        "rampart_actor_stalls_total{actor=\"/root/system_monitor\"} 0",
        "rampart_panics_total{source=\"actor\",route=\"\"} 0",
        "rampart_panics_total{source=\"http\",route=\"\"} 0",
        "rampart_actor_quarantined_total 0",
        "rampart_log_dropped_total 0",
        "rampart_log_sink_errors_total{sink=\"stdout\"} 0",
        "rampart_crash_records_total 0",
        "rampart_panics_total{source=\"task\",route=\"\"} 0",
        "rampart_panics_total{source=\"thread\",route=\"\"} 0",
        "rampart_build_info{version=",
        // The storage and search circuit breakers exist from start, closed.
        "rampart_circuit_state{name=\"storage\"} 0",
        "rampart_circuit_state{name=\"search\"} 0",
        "rampart_messages_stored_total 0",
        "rampart_dead_letters_total{kind=\"message\"} 0",
        "rampart_ws_connections 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The system monitor samples at start: the gauges are real values, not placeholders.
    // /root, its four services, /root/chat and its seven children (sessions supervisor included).
    assert!(text.contains("rampart_actors_live 13"), "{text}");
}

#[actix_rt::test]
async fn an_actor_restart_is_counted() {
    let server = RampartProcess::start(&[("RAMPART__ADMIN__TOKEN", "t"), ("RAMPART__CHAOS__ENABLED", "true")]);
    let (status, _) =
        Http::new().post(&server.url("/admin/chaos/panic"), Some("t"), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202);
    eventually("restart counted", Duration::from_secs(10), || async {
        let text = scrape(&server).await;
        text.contains("rampart_actor_restarts_total{actor=\"/root/system_monitor\"} 1")
            && text.contains("rampart_panics_total{source=\"actor\",route=\"\"} 1")
    })
    .await;
}
