//! Requests/s through rampart's full HTTP stack (the real app: boundary middleware with request
//! ids, metrics, panic containment, action log; the whole supervision tree behind it) vs a bare
//! actix-web app serving the same `/health` handler. Same process, one server worker each,
//! loopback only, a closed-loop load generator with 32 requests in flight on the main thread.
//! Rounds alternate bare/rampart so drift hits both; the best round of each is reported.
//!
//! Run: `cargo bench -p rampart-bench --bench http` (BENCH_SECONDS=N per round, default 5).
//! Target: rampart ≥ 0.9× bare.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use rampart::config::Config;

const IN_FLIGHT: usize = 32;
const ROUNDS: usize = 3;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn start_rampart(address: SocketAddr, data_dir: std::path::PathBuf) {
    let mut config = Config::default();
    config.http.bind = address;
    config.http.workers = 1;
    config.storage.data_dir = data_dir;
    std::thread::Builder::new()
        .name("rampart-app".into())
        .spawn(move || {
            let outcome = actix_rt::System::new().block_on(rampart::app::run(config, std::future::pending()));
            eprintln!("rampart app ended: {outcome:?}");
        })
        .expect("rampart thread");
}

async fn bare_health() -> HttpResponse {
    HttpResponse::Ok().content_type("application/health+json").json(serde_json::json!({ "status": "pass" }))
}

fn start_bare(address: SocketAddr) {
    std::thread::Builder::new()
        .name("bare-app".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                HttpServer::new(|| App::new().route("/health", web::get().to(bare_health)))
                    .workers(1)
                    .disable_signals()
                    .bind(address)
                    .expect("bind bare")
                    .run()
                    .await
            })
        })
        .expect("bare thread");
}

/// CPU time (user + system) the whole process used so far, in seconds (Linux; 0 elsewhere).
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesized command name; utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0 // USER_HZ
}

struct Round {
    requests_per_second: f64,
    /// Process CPU (server + load generator) per request, in microseconds: when both servers
    /// saturate the load generator, this is where a costlier stack still shows.
    cpu_us_per_request: f64,
}

/// Requests per second over `seconds` with `IN_FLIGHT` concurrent keep-alive requests.
fn load(url: &str, seconds: f64) -> Round {
    actix_rt::System::new().block_on(async {
        let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        // Warm-up and readiness: retry until the server answers.
        let ready = Instant::now();
        loop {
            if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(ready.elapsed() < Duration::from_secs(30), "{url} never answered");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let cpu_started = process_cpu_seconds();
        let workers = (0..IN_FLIGHT).map(|_| async {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let mut response = client.get(url).send().await.expect("request");
                assert!(response.status().is_success());
                response.body().await.expect("body");
                done += 1;
            }
            done
        });
        let total: u64 = futures_util::future::join_all(workers).await.into_iter().sum();
        let cpu = process_cpu_seconds() - cpu_started;
        Round {
            requests_per_second: total as f64 / started.elapsed().as_secs_f64(),
            cpu_us_per_request: cpu * 1e6 / total.max(1) as f64,
        }
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful to us.
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let data_dir = tempfile::tempdir().expect("temp dir");
    let rampart_address = free_port();
    let bare_address = free_port();
    start_rampart(rampart_address, data_dir.path().to_path_buf());
    start_bare(bare_address);
    let rampart_url = format!("http://{rampart_address}/health");
    let bare_url = format!("http://{bare_address}/health");

    let (mut best_bare, mut best_rampart) = (0f64, 0f64);
    let (mut cpu_bare, mut cpu_rampart) = (f64::MAX, f64::MAX);
    for round in 1..=ROUNDS {
        let bare = load(&bare_url, seconds);
        let rampart = load(&rampart_url, seconds);
        println!(
            "round {round}: bare actix-web {:>8.0} req/s ({:.1} us CPU/req)   rampart full stack {:>8.0} req/s ({:.1} us CPU/req)   ratio {:.3}",
            bare.requests_per_second,
            bare.cpu_us_per_request,
            rampart.requests_per_second,
            rampart.cpu_us_per_request,
            rampart.requests_per_second / bare.requests_per_second
        );
        best_bare = best_bare.max(bare.requests_per_second);
        best_rampart = best_rampart.max(rampart.requests_per_second);
        cpu_bare = cpu_bare.min(bare.cpu_us_per_request);
        cpu_rampart = cpu_rampart.min(rampart.cpu_us_per_request);
    }
    println!(
        "best: bare {best_bare:.0} req/s, rampart {best_rampart:.0} req/s, rampart/bare = {:.3} (target >= 0.9); \
         CPU per request (server + client): bare {cpu_bare:.1} us, rampart {cpu_rampart:.1} us",
        best_rampart / best_bare
    );
}
