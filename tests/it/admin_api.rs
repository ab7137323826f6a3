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

#[actix_rt::test]
async fn without_a_configured_token_the_admin_api_is_503_and_says_how_to_enable_it() {
    let server = RampartProcess::start(&[("RAMPART__CHAOS__ENABLED", "true")]);
    let (status, body) = Http::new().get(&server.url("/admin/actors"), Some("")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "admin_disabled");
    assert!(body["message"].as_str().unwrap().contains("RAMPART__ADMIN__TOKEN"));
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
