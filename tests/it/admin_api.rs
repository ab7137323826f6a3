//! The admin API over HTTP against the real binary: auth matrix, actor listing, chaos.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Http, RampartProcess};

const TOKEN: &str = "test-admin-token";

fn chaos_server() -> RampartProcess {
    RampartProcess::start(&[("RAMPART__ADMIN__TOKEN", TOKEN), ("RAMPART__CHAOS__ENABLED", "true")])
}

fn actor<'a>(listing: &'a Value, path: &str) -> &'a Value {
    listing["actors"]
        .as_array()
        .expect("actors array")
        .iter()
        .find(|actor| actor["path"] == path)
        .unwrap_or_else(|| panic!("{path} not listed in {listing}"))
}

#[actix_rt::test]
async fn actors_lists_the_tree_with_status_and_restarts() {
    let server = chaos_server();
    let http = Http::new();
    let (status, listing) = http.get(&server.url("/admin/actors"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{listing}");
    for path in ["/root", "/root/system_monitor"] {
        let entry = actor(&listing, path);
        assert_eq!(entry["status"], "running");
        assert_eq!(entry["restarts"], 0);
        assert_eq!(entry["last_failure"], Value::Null);
        assert!(humantime::parse_rfc3339(entry["started_at"].as_str().unwrap()).is_ok(), "{entry}");
    }
    assert_eq!(actor(&listing, "/root")["kind"], "supervisor");
}

#[actix_rt::test]
async fn chaos_panic_restarts_the_actor_and_the_restart_is_visible() {
    let server = chaos_server();
    let http = Http::new();
    let (status, body) =
        http.post(&server.url("/admin/chaos/panic"), Some(TOKEN), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 202, "{body}");

    let listing_url = server.url("/admin/actors");
    eventually("system monitor restarted", Duration::from_secs(10), || async {
        let (_, listing) = Http::new().get(&listing_url, Some(TOKEN)).await;
        actor(&listing, "/root/system_monitor")["restarts"] == 1
    })
    .await;
    let (_, listing) = http.get(&listing_url, Some(TOKEN)).await;
    let monitor = actor(&listing, "/root/system_monitor");
    assert_eq!(monitor["status"], "running");
    let failure = &monitor["last_failure"];
    assert_eq!(failure["handling"], "ChaosPanic");
    assert!(failure["message"].as_str().unwrap().contains("chaos"), "{failure}");
    assert!(failure["location"].as_str().unwrap().starts_with("src/system_monitor/mod.rs:"), "{failure}");
    assert!(humantime::parse_rfc3339(failure["at"].as_str().unwrap()).is_ok());

    // The same handle keeps serving: the admin system view goes through the monitor's handle.
    let (status, sample) = http.get(&server.url("/admin/system"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{sample}");
    assert!(sample["live_actors"].as_u64().unwrap() >= 2);

    let (status, journal) = http.get(&server.url("/admin/journal?backtrace=true"), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let entry = &journal["failures"][0];
    assert_eq!(entry["actor"], "/root/system_monitor");
    assert_eq!(entry["decision"]["action"], "restart");
    assert!(entry["backtrace"].as_str().is_some_and(|b| !b.is_empty()));
}

#[actix_rt::test]
async fn chaos_panic_on_an_unknown_actor_is_404() {
    let server = chaos_server();
    let (status, body) =
        Http::new().post(&server.url("/admin/chaos/panic"), Some(TOKEN), json!({"actor": "/root/nope"})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].as_str().unwrap().contains("/root/nope"));
}

#[actix_rt::test]
async fn chaos_panic_with_a_malformed_body_is_400() {
    let server = chaos_server();
    let (status, body) = Http::new().post(&server.url("/admin/chaos/panic"), Some(TOKEN), json!({"who": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request");
}

#[actix_rt::test]
async fn admin_routes_require_the_bearer_token() {
    let server = chaos_server();
    let http = Http::new();
    for token in [None, Some("wrong"), Some("test-admin-token-but-longer")] {
        let (status, body) = http.get(&server.url("/admin/actors"), token).await;
        assert_eq!(status, 401, "token {token:?}");
        assert_eq!(body["error"], "unauthorized");
        let (status, _) = http.post(&server.url("/admin/chaos/panic"), token, json!({"actor": "/root"})).await;
        assert_eq!(status, 401, "chaos with token {token:?}");
    }
}

#[actix_rt::test]
async fn chaos_routes_are_404_unless_enabled() {
    let server = RampartProcess::start(&[("RAMPART__ADMIN__TOKEN", TOKEN)]);
    let http = Http::new();
    let (status, body) =
        http.post(&server.url("/admin/chaos/panic"), Some(TOKEN), json!({"actor": "/root/system_monitor"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http.get(&server.url("/admin/chaos/anything"), Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (_, listing) = http.get(&server.url("/admin/actors"), Some(TOKEN)).await;
    assert_eq!(actor(&listing, "/root/system_monitor")["restarts"], 0, "nothing panicked");
}

/// A first run needs no invented token: one is generated into `<data_dir>/admin_token` (0600),
/// logged as a path (never the token), reused by the next start, and a configured one wins.
#[actix_rt::test]
async fn without_a_configured_token_one_is_generated_once_and_a_configured_one_wins() {
    let data_dir = tempfile::tempdir().unwrap();
    let path = data_dir.path().join("admin_token");
    let server = RampartProcess::start_on(data_dir.path(), &[]);
    let token = std::fs::read_to_string(&path).expect("admin_token written");
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let http = Http::new();
    assert_eq!(http.get(&server.url("/admin/actors"), Some(&token)).await.0, 200);
    assert_eq!(http.get(&server.url("/admin/actors"), None).await.0, 401);
    eventually("the console line is logged", Duration::from_secs(10), || {
        let logged = server.output().contains("/console");
        async move { logged }
    })
    .await;
    let output = server.output();
    let line = output.lines().find(|line| line.contains("/console")).expect("a log line names the console");
    assert!(line.contains(&format!("{}/console", server.base_url)) && line.contains("admin_token"), "{line}");
    assert!(!output.contains(&token), "the token itself is never logged");
    drop(server);

    let again = RampartProcess::start_on(data_dir.path(), &[]);
    assert_eq!(http.get(&again.url("/admin/actors"), Some(&token)).await.0, 200, "reused");
    drop(again);

    let configured = RampartProcess::start_on(data_dir.path(), &[("RAMPART__ADMIN__TOKEN", TOKEN)]);
    assert_eq!(http.get(&configured.url("/admin/actors"), Some(TOKEN)).await.0, 200);
    assert_eq!(http.get(&configured.url("/admin/actors"), Some(&token)).await.0, 401);
    assert!(!configured.output().contains("/console (admin token in"), "nothing generated to announce");
}

#[actix_rt::test]
async fn unknown_routes_are_json_404() {
    let server = chaos_server();
    let (status, body) = Http::new().get(&server.url("/nope"), None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, body) = Http::new().get(&server.url("/health"), None).await;
    assert_eq!((status, body), (200, json!({"status": "pass"})));
}
