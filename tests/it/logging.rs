//! The log writer on the real binary: logging never blocks requests, a stalled or closed stdout
//! and a full disk are survived, the writer restarts after a panic, files rotate.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, metric_value, scrape, Http, RampartProcess, Stdout};

const TOKEN: &str = "test-admin-token";

fn env_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("RAMPART__ADMIN__TOKEN", TOKEN), ("RAMPART__CHAOS__ENABLED", "true")];
    env.extend_from_slice(extra);
    env
}

async fn flood(server: &RampartProcess, count: u32, message: &str) -> Value {
    let (status, body) = Http::new()
        .post(&server.url("/admin/chaos/log-flood"), Some(TOKEN), json!({"count": count, "message": message}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn file_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[actix_rt::test]
async fn a_stalled_stdout_delays_no_request_and_drops_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rampart.log");
    let log_path = log.to_str().unwrap();
    let env = env_with(&[
        ("RAMPART__LOG__FILE", log_path),
        ("RAMPART__HTTP__WORKERS", "2"),
        ("RAMPART__LOG__DROP_REPORT_INTERVAL", "200ms"),
    ]);
    // Nobody reads stdout: the pipe (64 KiB) fills within the first few hundred events and the
    // writer blocks in write(2) on its own thread.
    let mut server = RampartProcess::start_with(&env, Stdout::Hold);
    let http = Http::new();

    let (flooded, health) =
        futures_util::future::join(flood(&server, 100_000, "stalled flood"), http.get(&server.url("/health"), None))
            .await;
    assert_eq!(health.0, 200, "a request completes while 100k events are logged into a stalled pipe");
    assert!(flooded["dropped"].as_u64().unwrap() > 0, "a full queue drops instead of blocking: {flooded}");
    let (status, _) = http.get(&server.url("/health"), None).await;
    assert_eq!(status, 200);
    let text = scrape(&server).await;
    assert!(metric_value(&text, "rampart_log_dropped_total").unwrap() > 0.0, "{text}");

    // Unblock the pipe: the drops are reported in the log itself, and logging resumes. A marker
    // logged while the queue is still full of the flood is dropped by design, so keep logging it.
    server.release_stdout();
    eventually("the drops are reported", Duration::from_secs(20), || {
        let output = server.output();
        async move { output.contains("events dropped") }
    })
    .await;
    eventually("logging resumes after the pipe drains", Duration::from_secs(20), || async {
        flood(&server, 1, "after the stall").await;
        server.output().contains("after the stall")
    })
    .await;
}

#[actix_rt::test]
async fn the_writer_restarts_after_a_panic_mid_stream_and_logging_resumes() {
    let server = RampartProcess::start(&env_with(&[]));
    let http = Http::new();
    let panic_url = server.url("/admin/chaos/panic");
    let panic = http.post(&panic_url, Some(TOKEN), json!({"actor": "/root/log_writer"}));
    let (flooded, (status, _)) = futures_util::future::join(flood(&server, 50_000, "mid-stream"), panic).await;
    assert_eq!(status, 202);
    assert_eq!(flooded["logged"], 50_000, "callers never block, whatever the writer is doing");

    eventually("the log writer's restart is journaled", Duration::from_secs(10), || async {
        let (_, journal) = Http::new().get(&server.url("/admin/journal?actor=/root/log_writer"), Some(TOKEN)).await;
        journal["failures"].as_array().is_some_and(|entries| !entries.is_empty())
    })
    .await;
    flood(&server, 1, "after the writer restarted").await;
    eventually("logging resumes", Duration::from_secs(10), || {
        let output = server.output();
        async move { output.contains("after the writer restarted") }
    })
    .await;
    let text = scrape(&server).await;
    assert!(metric_value(&text, "rampart_log_dropped_total").is_some(), "drops are counted: {text}");
    assert_eq!(metric_value(&text, "rampart_actor_restarts_total{actor=\"/root/log_writer\"}"), Some(1.0));
}

#[actix_rt::test]
async fn a_closed_stdout_does_not_stop_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rampart.log");
    let mut server =
        RampartProcess::start_with(&env_with(&[("RAMPART__LOG__FILE", log.to_str().unwrap())]), Stdout::Hold);
    server.close_stdout();
    flood(&server, 3, "after stdout closed").await;
    eventually("the file still gets every line", Duration::from_secs(10), || {
        let text = file_text(&log);
        async move { text.matches("after stdout closed").count() == 3 }
    })
    .await;
    let text = scrape(&server).await;
    assert!(metric_value(&text, "rampart_log_sink_errors_total{sink=\"stdout\"}").unwrap() >= 1.0, "{text}");
    let (status, _) = Http::new().get(&server.url("/health"), None).await;
    assert_eq!(status, 200, "the server is unaffected");
}

#[actix_rt::test]
async fn a_full_disk_does_not_stop_stdout() {
    // /dev/full fails every write with ENOSPC, like a full disk.
    let server = RampartProcess::start(&env_with(&[("RAMPART__LOG__FILE", "/dev/full")]));
    flood(&server, 1, "disk is full").await;
    eventually("stdout still gets the line", Duration::from_secs(10), || {
        let output = server.output();
        async move { output.contains("disk is full") }
    })
    .await;
    let text = scrape(&server).await;
    assert!(metric_value(&text, "rampart_log_sink_errors_total{sink=\"file\"}").unwrap() >= 1.0, "{text}");
    assert!(server.output().contains("rampart: log file failed"), "reported once on stderr");
}

#[actix_rt::test]
async fn the_log_file_rotates_by_size_and_keeps_the_configured_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rampart.log");
    let server = RampartProcess::start(&env_with(&[
        ("RAMPART__LOG__FILE", log.to_str().unwrap()),
        ("RAMPART__LOG__MAX_BYTES", "20000"),
        ("RAMPART__LOG__KEEP", "2"),
    ]));
    flood(&server, 2_000, "rotation").await;
    let rotated = |n: u32| dir.path().join(format!("rampart.log.{n}"));
    eventually("two rotated files exist", Duration::from_secs(10), || {
        let both = rotated(1).exists() && rotated(2).exists();
        async move { both }
    })
    .await;
    assert!(!rotated(3).exists(), "only log.keep rotated files are kept");
    for path in [log.clone(), rotated(1), rotated(2)] {
        let text = file_text(&path);
        assert!(text.len() <= 20_000, "{} is {} bytes", path.display(), text.len());
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("whole JSON lines only: {line}"));
        }
    }
}

/// The first line rampart prints that mentions `listening on`, run with stdout on a terminal
/// (a pseudo-terminal from util-linux `script`).
fn listening_line_on_a_terminal(extra: &[(&str, &str)]) -> String {
    use std::io::{BufRead as _, BufReader};
    let data_dir = tempfile::tempdir().unwrap();
    let inner = crate::support::rampart_command(data_dir.path(), extra, &[]);
    let mut command = std::process::Command::new("script");
    command.args(["-qfec", env!("CARGO_BIN_EXE_rampart"), "/dev/null"]);
    crate::support::copy_env(&inner, &mut command);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("listening on"))
        .expect("rampart logs where it listens");
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn logs_are_pretty_at_a_terminal_unless_a_format_is_set() {
    let pretty = listening_line_on_a_terminal(&[]);
    assert!(!pretty.trim_start().starts_with('{') && pretty.contains("INFO"), "{pretty}");
    let json = listening_line_on_a_terminal(&[("RAMPART__LOG__FORMAT", "json")]);
    let json = &json[json.find('{').expect("a JSON object")..];
    let parsed: Value = serde_json::from_str(json.trim()).expect("JSON when log.format = json");
    assert_eq!(parsed["level"], "INFO");
    // And with stdout a pipe (every other test), `auto` means JSON.
}
