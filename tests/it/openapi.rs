//! `GET /openapi.json` on the real binary: the contract is there and complete, and (with
//! schemathesis installed; CI requires it with `RAMPART_REQUIRE_SCHEMATHESIS=1`) a real fuzzer
//! finds no 5xx and no response that breaks the schema, over every operation, with a user token
//! and the admin token, against a server holding real data.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::chat_client::{ChatServer, ADMIN_TOKEN};
use crate::support::eventually;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis/schemathesis.toml");
/// Fixed, so a CI failure replays; raise `RAMPART_SCHEMATHESIS_EXAMPLES` locally to dig deeper.
const SEED: &str = "20261130";

/// Every route rampart serves, as `METHOD path` in OpenAPI form.
const ROUTES: &[&str] = &[
    "GET /",
    "GET /console",
    "GET /static/{path}",
    "GET /admin/info",
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /openapi.json",
    "GET /ws",
    "GET /rtc",
    "GET /rtc/relay",
    "GET /admin/rooms",
    "POST /admin/rooms",
    "DELETE /admin/rooms/{name}",
    "GET /api/me",
    "POST /api/users",
    "GET /api/conversations",
    "POST /api/conversations",
    "GET /api/conversations/{id}",
    "GET /api/conversations/{id}/messages",
    "POST /api/conversations/{id}/messages",
    "GET /api/search",
    "GET /admin/dead-letters",
    "POST /admin/dead-letters/{id}/retry",
    "GET /admin/actors",
    "GET /admin/journal",
    "GET /admin/quarantine",
    "GET /admin/system",
    "GET /admin/crashes",
    "GET /admin/crashes/{id}",
    "POST /admin/chaos/panic",
    "GET /admin/chaos/http-panic",
    "POST /admin/chaos/task-panic",
    "POST /admin/chaos/thread-panic",
    "POST /admin/chaos/log-flood",
    "GET /admin/chaos/storage",
    "POST /admin/chaos/storage",
    "DELETE /admin/chaos/storage",
];

#[actix_rt::test]
async fn the_openapi_document_covers_every_route_with_schemas_and_security() {
    let server = ChatServer::start(&[]);
    let (status, document) = server.http.get(&server.url("/openapi.json"), None).await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected: Vec<String> = ROUTES.iter().map(|route| (*route).to_owned()).collect();
    expected.sort();
    assert_eq!(documented, expected, "documented operations vs routes");

    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["user_jwt"]["scheme"], "bearer");
    assert_eq!(schemes["user_jwt"]["bearerFormat"], "JWT");
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    // Every operation but liveness, readiness, metrics, this document and the web client's
    // files is authenticated, and
    // every authenticated one documents its 401 with the error body.
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let public = ["/health", "/ready", "/metrics", "/openapi.json", "/", "/console", "/static/{path}"]
                .contains(&path.as_str());
            let security = operation["security"].as_array().map_or(0, Vec::len);
            assert_eq!(security == 0, public, "{method} {path}: security {}", operation["security"]);
            if !public {
                let unauthorized = &operation["responses"]["401"]["content"]["application/json"]["schema"];
                assert_eq!(unauthorized["$ref"], "#/components/schemas/ErrorBody", "{method} {path}");
            }
        }
    }
}

#[actix_rt::test]
async fn the_openapi_document_is_valid_for_an_independent_validator() {
    // Regression: `/ws` and `/rtc` both had operationId `upgrade`; openapi-spec-validator refused
    // the document and client generators choked on it.
    let server = ChatServer::start(&[]);
    let (status, document) = server.http.get(&server.url("/openapi.json"), None).await;
    assert_eq!(status, 200);
    let mut seen = std::collections::HashSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(seen.insert(id.to_owned()), "operationId {id} ({method} {path}) is not unique");
        }
    }
    let candidate = std::env::var("RAMPART_OPENAPI_SPEC_VALIDATOR").unwrap_or_else(|_| "openapi-spec-validator".into());
    if !Command::new(&candidate).arg("--version").output().is_ok_and(|output| output.status.success()) {
        return crate::support::tool_missing("OPENAPI_SPEC_VALIDATOR", "openapi-spec-validator (PyPI)");
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let file = scratch.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).expect("write the document");
    let output = Command::new(&candidate).args(["--validation-errors", "all"]).arg(&file).output().expect("run it");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && report.contains(": OK"),
        "openapi-spec-validator refused the document:\n{report}"
    );
}

/// Where schemathesis is: `RAMPART_SCHEMATHESIS` (CI points it into its venv), else on PATH.
fn schemathesis() -> Option<String> {
    let candidate = std::env::var("RAMPART_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let works = Command::new(&candidate).arg("--version").output().is_ok_and(|output| output.status.success());
    works.then_some(candidate)
}

#[actix_rt::test]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_schema() {
    let _heavy = crate::support::MEASURING.read().await;
    let Some(schemathesis) = schemathesis() else {
        return crate::support::tool_missing("SCHEMATHESIS", "schemathesis (the contract fuzzing)");
    };
    // Real data, so lists, history, search and conversation bodies are checked non-empty.
    let server = ChatServer::start(&[]);
    server.create_user("alice").await;
    server.create_user("bob").await;
    let conversation = server.conversation("alice", &["bob"]).await;
    let alice = server.token("alice");
    for n in 0..5 {
        let (status, body) = server.post_message(&alice, &conversation, &format!("seed-{n}"), "hello there").await;
        assert_eq!(status, 201, "{body}");
    }
    let search = server.url("/api/search?q=hello");
    eventually("the seed messages are searchable", Duration::from_secs(15), || {
        let (http, search, alice) = (&server.http, search.clone(), alice.clone());
        async move {
            let (_, body) = http.get(&search, Some(&alice)).await;
            body["hits"].as_array().is_some_and(|hits| hits.len() == 5)
        }
    })
    .await;

    let examples = std::env::var("RAMPART_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".into());
    // schemathesis keeps a cache in its working directory: not in the repository.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let output = Command::new(schemathesis)
        .current_dir(scratch.path())
        .args(["--no-color", "--config-file", CONFIG, "run", &server.url("/openapi.json")])
        .args(["--checks", "all", "--max-examples", &examples, "--seed", SEED, "--workers", "2"])
        .args(["--request-timeout", "10"])
        // Without the `sfu` feature the video-room routes answer 501 (not_implemented) by design.
        .args(if cfg!(feature = "sfu") {
            &[][..]
        } else {
            &["--exclude-path-regex", "^/(rtc(/relay)?|admin/rooms(/.*)?)$"][..]
        })
        .env("RAMPART_USER_TOKEN", &alice)
        .env("RAMPART_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RAMPART_CONVERSATION_ID", &conversation)
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found problems:\n{report}");
    // Every operation selected and tested (schemathesis leaves the document's own route out).
    let number_after = |label: &str| -> Option<String> {
        let rest = &report[report.find(label)? + label.len()..];
        Some(rest.trim_start().split(|c: char| !c.is_ascii_digit() && c != '/').next()?.to_owned())
    };
    let (selected, tested) = (number_after("Selected:"), number_after("Tested:"));
    let total = ROUTES.len() - 1;
    // GET /rtc, GET /rtc/relay, GET and POST /admin/rooms and DELETE /admin/rooms/{name} are
    // left out of a build without the SFU (above).
    let run = if cfg!(feature = "sfu") { total } else { total - 5 };
    let all = format!("{run}/{total}");
    assert_eq!(selected.as_deref(), Some(all.as_str()), "{report}");
    assert_eq!(tested.as_deref(), Some(run.to_string().as_str()), "{report}");
    // The server lived through it.
    let (status, health): (u16, Value) = server.http.get(&server.url("/health"), None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("pass")));
}
