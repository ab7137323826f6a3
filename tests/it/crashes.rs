//! Crash records on the real binary: every kind of panic is recorded with where it happened and
//! the recent actions, persisted as a file, and still there after a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Http, RampartProcess};

const TOKEN: &str = "test-admin-token";

fn chaos_env(data_dir: &str) -> Vec<(&str, &str)> {
    vec![
        ("RAMPART__ADMIN__TOKEN", TOKEN),
        ("RAMPART__CHAOS__ENABLED", "true"),
        ("RAMPART__STORAGE__DATA_DIR", data_dir),
    ]
}

/// Waits for a crash of `source` to be listed; returns its summary.
async fn wait_for_crash(server: &RampartProcess, source: &str) -> Value {
    let url = server.url("/admin/crashes");
    let found = std::cell::RefCell::new(Value::Null);
    eventually(&format!("a crash record with source {source}"), Duration::from_secs(15), || async {
        let (status, body) = Http::new().get(&url, Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let crash = body["crashes"].as_array().and_then(|list| list.iter().find(|c| c["source"] == source).cloned());
        crash.map(|crash| *found.borrow_mut() = crash).is_some()
    })
    .await;
    found.into_inner()
}

async fn detail(server: &RampartProcess, id: &str) -> Value {
    let (status, body) = Http::new().get(&server.url(&format!("/admin/crashes/{id}")), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[actix_rt::test]
async fn an_actor_panic_becomes_a_persisted_crash_record_with_recent_actions() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let server = RampartProcess::start(&chaos_env(data_dir));
    let http = Http::new();
    let (status, _) =
        http.post(&server.url("/admin/chaos/panic"), Some(TOKEN), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202);

    let summary = wait_for_crash(&server, "actor").await;
    assert_eq!(summary["actor"], "/root/system_monitor");
    assert!(summary["message"].as_str().unwrap().contains("chaos"), "{summary}");
    assert!(summary["location"].as_str().unwrap().contains(".rs:"), "{summary}");
    assert!(summary.get("backtrace").is_none(), "the listing is a summary");

    let id = summary["id"].as_str().unwrap();
    let crash = detail(&server, id).await;
    assert!(crash["backtrace"].as_str().is_some_and(|bt| !bt.is_empty()), "{crash}");
    let actions = crash["recent_actions"].as_array().expect("recent_actions");
    assert!(
        actions.iter().any(|a| a["component"] == "admin" && a["ids"]["actor"] == "/root/system_monitor"),
        "the chaos request is among the recent actions: {actions:?}"
    );
    assert!(actions.iter().any(|a| a["component"] == "http" && a["ids"]["request"].is_string()), "{actions:?}");

    let file = data.path().join("crashes").join(format!("{id}.json"));
    eventually("the record is a file", Duration::from_secs(5), || {
        let exists = file.exists();
        async move { exists }
    })
    .await;
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk["id"], id);

    // A new process on the same data directory still lists it.
    drop(server);
    let server = RampartProcess::start(&chaos_env(data_dir));
    let summary = wait_for_crash(&server, "actor").await;
    assert_eq!(summary["id"], id);
}

#[actix_rt::test]
async fn a_handler_panic_is_recorded_with_route_and_request_id() {
    let data = tempfile::tempdir().unwrap();
    let server = RampartProcess::start(&chaos_env(data.path().to_str().unwrap()));
    let response = awc::Client::new()
        .get(server.url("/admin/chaos/http-panic"))
        .insert_header(("Authorization", format!("Bearer {TOKEN}")))
        .insert_header(("X-Request-Id", "crash-req-42"))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 500);

    let summary = wait_for_crash(&server, "http").await;
    assert_eq!(summary["route"], "/admin/chaos/http-panic");
    let crash = detail(&server, summary["id"].as_str().unwrap()).await;
    assert_eq!(crash["request_id"], "crash-req-42");
    assert_eq!(crash["method"], "GET");
    let actions = crash["recent_actions"].as_array().unwrap();
    assert!(actions.iter().any(|a| a["ids"]["request"] == "crash-req-42"), "{actions:?}");
}

#[actix_rt::test]
async fn task_and_thread_panics_are_recorded() {
    let data = tempfile::tempdir().unwrap();
    let server = RampartProcess::start(&chaos_env(data.path().to_str().unwrap()));
    let http = Http::new();
    let (status, body) = http.post(&server.url("/admin/chaos/task-panic"), Some(TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["outcome"].as_str().unwrap().contains("panicked"), "{body}");
    let task = wait_for_crash(&server, "task").await;
    assert_eq!(task["task"], "chaos.task_panic");

    let (status, body) = http.post(&server.url("/admin/chaos/thread-panic"), Some(TOKEN), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let thread = wait_for_crash(&server, "thread").await;
    let crash = detail(&server, thread["id"].as_str().unwrap()).await;
    assert_eq!(crash["thread"], "chaos-thread");

    let (status, _) = http.get(&server.url("/health"), None).await;
    assert_eq!(status, 200, "still serving");
}

#[actix_rt::test]
async fn an_unknown_crash_id_is_a_json_404() {
    let data = tempfile::tempdir().unwrap();
    let server = RampartProcess::start(&chaos_env(data.path().to_str().unwrap()));
    let (status, body) = Http::new().get(&server.url("/admin/crashes/nope"), Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}
