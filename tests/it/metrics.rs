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

/// Regression: a client that did not ask for OpenMetrics got it anyway, and `promtool check
/// metrics` rejected it (`unknown metric type "info"`). Without an `Accept` for OpenMetrics the
/// answer is the classic text format, which promtool must accept (required in CI).
#[actix_rt::test]
async fn plain_scrapes_get_the_classic_text_format_that_promtool_accepts() {
    let server = RampartProcess::start(&[]);
    let mut response = awc::Client::new().get(server.url("/metrics")).send().await.expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(response.body().limit(8 << 20).await.unwrap().to_vec()).unwrap();
    assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains(" info\n"), "{text}");
    assert!(text.contains("# TYPE rampart_build_info gauge\nrampart_build_info{version="), "{text}");
    assert!(text.contains("# TYPE rampart_panics_total counter\n"), "{text}");
    // The OpenMetrics answer is still there for whoever asks (Prometheus does).
    assert!(scrape(&server).await.ends_with("# EOF\n"));

    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut promtool = match promtool {
        Ok(child) => child,
        Err(error) => return crate::support::tool_missing("PROMTOOL", &format!("promtool ({error})")),
    };
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && findings.trim().is_empty(), "promtool check metrics:\n{findings}");
}
