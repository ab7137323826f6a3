//! Process lifecycle of the real binary: configuration errors, signals, fatal escalation.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, run_to_exit, Http, RampartProcess};

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let (status, output) = run_to_exit(&[("RAMPART__HTTP__BINDD", "127.0.0.1:0")], &[]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("bindd"), "{output}");
}

#[test]
fn bad_config_value_exits_2_naming_the_key() {
    let (status, output) = run_to_exit(&[("RAMPART__SUPERVISOR__WITHIN", "soon")], &[]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("supervisor.within"), "{output}");
    let (status, output) = run_to_exit(&[("RAMPART__SUPERVISOR__MAX_RESTARTS", "0")], &[]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("supervisor.max_restarts"), "{output}");
}

#[test]
fn missing_or_invalid_config_file_exits_2() {
    let (status, output) = run_to_exit(&[], &["--config", "/nonexistent/rampart.toml"]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("/nonexistent/rampart.toml"), "{output}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    std::fs::write(&file, "[http]\nbind = \"127.0.0.1:0\"\n[chaos]\nenable = true\n").unwrap();
    let (status, output) = run_to_exit(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("enable"), "{output}");
}

#[test]
fn check_config_prints_effective_values_with_secrets_redacted() {
    let env = [
        ("RAMPART__ADMIN__TOKEN", "s3cret"),
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__ELASTICSEARCH__USERNAME", "elastic"),
        ("RAMPART__ELASTICSEARCH__PASSWORD", "es-s3cret"),
        ("RAMPART__STORAGE__KIND", "mongodb"),
        ("RAMPART__MONGODB__URI", "mongodb://app:mongo-s3cret@db1:27017,db2:27017/?replicaSet=rs0"),
        ("RAMPART__SFU__ICE_LOOPBACK_ONLY", "true"),
        ("RAMPART__SFU__TURN__ENABLED", "true"),
        ("RAMPART__SFU__TURN__SECRET", "turn-s3cret-of-enough-length"),
        ("RAMPART__SFU__CLUSTER__ENABLED", "true"),
        ("RAMPART__SFU__CLUSTER__SECRET", "cluster-s3cret-of-enough-length"),
    ];
    let (status, output) = run_to_exit(&env, &["check-config"]);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(!output.contains("s3cret"), "{output}");
    let config: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(config["chaos"]["enabled"], true);
    assert_eq!(config["admin"]["token"], "<redacted>");
    // Regression: the search engine's password was printed in clear.
    assert_eq!(config["elasticsearch"]["password"], "<redacted>");
    assert_eq!(config["elasticsearch"]["username"], "elastic");
    // The MongoDB URI's password too, keeping the rest readable.
    assert_eq!(config["mongodb"]["uri"], "mongodb://app:<redacted>@db1:27017,db2:27017/?replicaSet=rs0");
    // The SFU's shared secrets (TURN credentials, the instances' relay).
    assert_eq!(config["sfu"]["turn"]["secret"], "<redacted>");
    assert_eq!(config["sfu"]["cluster"]["secret"], "<redacted>");
}

#[test]
fn a_bad_mongodb_setting_is_refused_at_start_with_its_key() {
    let env = [("RAMPART__STORAGE__KIND", "mongodb"), ("RAMPART__MONGODB__URI", "http://db:27017")];
    let (status, output) = run_to_exit(&env, &["check-config"]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("mongodb.uri"), "{output}");
}

#[test]
fn an_unreachable_mongodb_fails_start_up_naming_it() {
    // Nothing listens on port 9 of loopback: refused at once, so start-up gives up after
    // 4 × operation_timeout.
    let env = [
        ("RAMPART__STORAGE__KIND", "mongodb"),
        ("RAMPART__MONGODB__URI", "mongodb://127.0.0.1:9/?directConnection=true"),
        ("RAMPART__MONGODB__OPERATION_TIMEOUT", "250ms"),
    ];
    let (status, output) = run_to_exit(&env, &[]);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("opening the MongoDB chat store") && output.contains("127.0.0.1:9"), "{output}");
}

#[test]
fn kafka_settings_are_checked_and_a_build_without_kafka_says_how_to_get_it() {
    let kafka = [
        ("RAMPART__STORAGE__KIND", "mongodb"),
        ("RAMPART__MONGODB__URI", "mongodb://127.0.0.1:9/?directConnection=true"),
        ("RAMPART__TRANSPORT__KIND", "kafka"),
        ("RAMPART__KAFKA__BROKERS", "kafka-0:9092,kafka-1:9092"),
    ];
    let (status, output) = run_to_exit(&kafka, &["check-config"]);
    assert_eq!(status.code(), Some(0), "{output}");
    let (status, output) = run_to_exit(&[("RAMPART__TRANSPORT__KIND", "kafka")], &["check-config"]);
    assert_eq!(status.code(), Some(2), "every process must share one store: {output}");
    assert!(output.contains("storage.kind"), "{output}");
    let (status, output) =
        run_to_exit(&[kafka[0], kafka[1], kafka[2], ("RAMPART__KAFKA__TOPIC", "no spaces")], &["check-config"]);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("kafka.topic"), "{output}");
    if !cfg!(feature = "kafka") {
        let (status, output) = run_to_exit(&kafka, &[]);
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(output.contains("--features kafka"), "{output}");
    }
}

#[test]
fn unknown_command_line_flag_exits_2() {
    let (status, _) = run_to_exit(&[], &["--no-such-flag"]);
    assert_eq!(status.code(), Some(2));
}

#[test]
fn sigterm_shuts_down_in_order_and_exits_0() {
    let mut server = RampartProcess::start(&[]);
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.output());
    let output = server.output();
    let requested = output.find("shutdown requested").expect("shutdown logged");
    let stopped = output.find("\"stopped\"").expect("stop logged");
    assert!(requested < stopped);
}

#[actix_rt::test]
async fn root_escalation_exits_non_zero_without_hanging() {
    let token = "t";
    let mut server = RampartProcess::start(&[
        ("RAMPART__ADMIN__TOKEN", token),
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__SUPERVISOR__MAX_RESTARTS", "1"),
    ]);
    let http = Http::new();
    let panic_url = server.url("/admin/chaos/panic");
    let (status, _) = http.post(&panic_url, Some(token), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202);
    let listing_url = server.url("/admin/actors");
    eventually("first restart", Duration::from_secs(10), || async {
        let (_, listing) = Http::new().get(&listing_url, Some(token)).await;
        listing["actors"]
            .as_array()
            .and_then(|actors| actors.iter().find(|actor| actor["path"] == "/root/system_monitor"))
            .is_some_and(|actor| actor["restarts"] == 1)
    })
    .await;
    // The second failure within the window exceeds max_restarts = 1 at the root.
    let (status, _) = http.post(&panic_url, Some(token), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202);
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(70), "{}", server.output());
    assert!(server.output().contains("FATAL"), "{}", server.output());
}

#[test]
fn no_profile_aborts_on_panic() {
    // Supervision depends on unwinding; `panic = "abort"` anywhere would silently disable it.
    for manifest in ["Cargo.toml", "bench/Cargo.toml"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest)).unwrap();
        let offending: Vec<&str> = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|line| line.replace(' ', "").contains("panic=\"abort\""))
            .collect();
        assert!(offending.is_empty(), "{manifest} sets {offending:?}");
    }
}

async fn ready(server: &RampartProcess) -> (u16, String, serde_json::Value) {
    let mut response = awc::Client::new().get(server.url("/ready")).send().await.expect("ready");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = serde_json::from_slice(&response.body().await.expect("body")).expect("json");
    (response.status().as_u16(), content_type, body)
}

#[actix_rt::test]
async fn ready_passes_with_component_checks_in_health_json() {
    let server = RampartProcess::start(&[]);
    let (status, content_type, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/health+json");
    assert_eq!(body["status"], "pass", "{body}");
    assert_eq!(body["checks"]["supervision:root"][0]["status"], "pass");
    assert_eq!(body["checks"]["actor:system_monitor"][0]["status"], "pass");
    assert_eq!(body["checks"]["supervision:restarting"][0]["observedValue"], 0);
}

#[actix_rt::test]
async fn readiness_fails_at_once_on_sigterm_while_requests_are_still_served() {
    let mut server = RampartProcess::start(&[("RAMPART__SHUTDOWN__READINESS_DELAY", "3s")]);
    assert_eq!(ready(&server).await.0, 200);
    server.terminate();
    // The signal is handled asynchronously: poll, within the readiness delay.
    eventually("readiness fails after SIGTERM", Duration::from_secs(2), || async { ready(&server).await.0 == 503 })
        .await;
    let (status, _, body) = ready(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["shutdown"][0]["status"], "fail");
    let (status, _) = Http::new().get(&server.url("/health"), None).await;
    assert_eq!(status, 200, "still serving during the readiness delay");
    assert_eq!(server.wait_exit(Duration::from_secs(30)).code(), Some(0), "{}", server.output());
}
