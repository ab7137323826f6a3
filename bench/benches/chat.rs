//! Durable acked messages through the whole chat stack: N WebSocket clients on loopback send
//! protocol-v1 `send` frames to the real app (JWT auth, session actors, validator, batch writer,
//! SQLite WAL with synchronous=FULL, delivery records, search indexing behind it), and count
//! `ack` frames — each one a message committed to disk.
//!
//! Three runs, each on a fresh data directory:
//! 1. throughput: every client keeps `WINDOW` messages in flight; acked msgs/s and ack latency;
//! 2. latency at a fixed offered load (`BENCH_RATE`, default 10,000 msgs/s, open loop);
//! 3. the same as 1 with `pipeline.batch_max_messages = 1`: one transaction per message.
//!
//! Run: `cargo bench -p rampart-bench --bench chat` (BENCH_SECONDS per run, default 5;
//! BENCH_CLIENTS, default 50). Targets: run 1 ≥ 30,000 acked msgs/s; run 2 p99 ≤ 50 ms;
//! run 1 / run 3 ≥ 20×.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt as _, StreamExt as _};
use rampart::auth::Tokens;
use rampart::config::Config;
use serde_json::json;

const ADMIN_TOKEN: &str = "bench-admin";
const JWT_SECRET: &str = "bench-secret";
/// Messages each client keeps in flight in the throughput runs.
const WINDOW: usize = 64;

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port")
}

/// Starts the real app on its own thread; returns its address and a stop switch.
fn start_app(data_dir: &std::path::Path, batch_max_messages: usize) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let address = free_port();
    let mut config = Config::default();
    config.http.bind = address;
    config.storage.data_dir = data_dir.to_owned();
    config.admin.token = ADMIN_TOKEN.into();
    config.auth.jwt_secret = JWT_SECRET.into();
    config.ws.rate_limit_per_sec = 1_000_000;
    config.ws.burst = 1_000_000;
    config.pipeline.batch_max_messages = batch_max_messages;
    config.shutdown.readiness_delay = Duration::ZERO;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("rampart-app".into())
        .spawn(move || {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = actix_rt::System::new().block_on(rampart::app::run(config, shutdown)) {
                eprintln!("rampart app failed: {error:#}");
            }
        })
        .expect("app thread");
    (address, stop)
}

struct Setup {
    base: String,
    /// (token, conversation) per client.
    clients: Vec<(String, String)>,
}

async fn setup(address: SocketAddr, clients: usize) -> Setup {
    let base = format!("http://{address}");
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let started = Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "app did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tokens = Tokens::from_secret(JWT_SECRET.as_bytes());
    let admin = format!("Bearer {ADMIN_TOKEN}");
    // Every conversation has an offline second member: each message also writes a delivery row.
    let response = http.post(format!("{base}/api/users")).insert_header(("Authorization", admin.as_str()));
    let status = response.send_json(&json!({"id": "offline"})).await.expect("create user").status();
    assert_eq!(status.as_u16(), 201);
    let mut prepared = Vec::new();
    for n in 0..clients {
        let user = format!("user{n}");
        let request = http.post(format!("{base}/api/users")).insert_header(("Authorization", admin.as_str()));
        assert_eq!(request.send_json(&json!({"id": user})).await.expect("user").status().as_u16(), 201);
        let token = tokens.issue(&user, Duration::from_secs(3600)).expect("token");
        let mut response = http
            .post(format!("{base}/api/conversations"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send_json(&json!({"members": ["offline"]}))
            .await
            .expect("conversation");
        let body: serde_json::Value = response.json().await.expect("conversation body");
        prepared.push((token, body["id"].as_str().expect("id").to_owned()));
    }
    Setup { base, clients: prepared }
}

#[derive(Default)]
struct Tally {
    acked: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acked += other.acked;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }
}

/// One client. `pace`: None keeps `WINDOW` in flight; Some(period) sends one every period.
async fn client(
    base: String,
    token: String,
    conversation: String,
    id: usize,
    until: Instant,
    pace: Option<Duration>,
) -> Tally {
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    let (_, framed) = awc::Client::new().ws(url).bearer_auth(token).connect().await.expect("ws connect");
    let (mut sink, mut stream) = framed.split();
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut tally = Tally::default();
    let mut next = 0u64;
    let mut ticker = pace.map(|period| tokio::time::interval(period));
    let frame = |n: u64| {
        let text = json!({"type": "send", "conversation": conversation, "client_msg_id": format!("c{id}-{n}"), "body": format!("benchmark message {n} from client {id} with a little text to index")}).to_string();
        Message::Text(text.into())
    };
    loop {
        let sending = Instant::now() < until;
        if !sending && sent_at.is_empty() {
            break;
        }
        match &mut ticker {
            None => {
                if sending && sent_at.len() <= WINDOW / 2 {
                    while sent_at.len() < WINDOW {
                        sent_at.insert(next, Instant::now());
                        sink.feed(frame(next)).await.expect("feed");
                        next += 1;
                    }
                    sink.flush().await.expect("flush");
                }
            }
            Some(ticker) => {
                if sending {
                    tokio::select! {
                        _ = ticker.tick() => {
                            sent_at.insert(next, Instant::now());
                            sink.send(frame(next)).await.expect("send");
                            next += 1;
                            continue;
                        }
                        frame = stream.next() => {
                            if !record(frame, &mut sent_at, &mut tally) { break; }
                            continue;
                        }
                    }
                }
            }
        }
        let frame = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(frame) => frame,
            Err(_) => break,
        };
        if !record(frame, &mut sent_at, &mut tally) {
            break;
        }
    }
    tally.errors += sent_at.len() as u64; // never answered
    tally
}

/// Counts one server frame; `false` when the stream ended.
fn record(
    frame: Option<Result<Frame, awc::error::WsProtocolError>>,
    sent_at: &mut HashMap<u64, Instant>,
    tally: &mut Tally,
) -> bool {
    let Some(Ok(frame)) = frame else { return false };
    let Frame::Text(bytes) = frame else { return true };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return true };
    let number = value["client_msg_id"].as_str().and_then(|id| id.rsplit('-').next()).and_then(|n| n.parse().ok());
    let Some(started) = number.and_then(|n| sent_at.remove(&n)) else { return true };
    if value["type"] == "ack" {
        tally.acked += 1;
        tally.latencies.push(started.elapsed());
    } else {
        tally.errors += 1;
    }
    true
}

struct Outcome {
    per_second: f64,
    tally: Tally,
}

fn run(label: &str, batch_max_messages: usize, clients: usize, seconds: f64, pace: Option<Duration>) -> Outcome {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (address, stop) = start_app(data_dir.path(), batch_max_messages);
    let outcome = actix_rt::System::new().block_on(async move {
        let setup = setup(address, clients).await;
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = setup
            .clients
            .iter()
            .enumerate()
            .map(|(id, (token, conversation))| {
                rampart::tasks::spawn_owned(
                    "bench.client",
                    client(setup.base.clone(), token.clone(), conversation.clone(), id, until, pace),
                )
            })
            .collect();
        let mut tally = Tally::default();
        for task in tasks {
            tally.merge(task.await.expect("client task"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        Outcome { per_second: tally.acked as f64 / elapsed, tally }
    });
    let _ = stop.send(());
    let mut latencies = outcome.tally.latencies.clone();
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{label:<44} {:>9.0} acked msgs/s  ({} acked, {} errors)  ack latency p50 {:>6.2} ms  p99 {:>6.2} ms  p999 {:>6.2} ms",
        outcome.per_second,
        outcome.tally.acked,
        outcome.tally.errors,
        quantile(0.50).as_secs_f64() * 1000.0,
        quantile(0.99).as_secs_f64() * 1000.0,
        quantile(0.999).as_secs_f64() * 1000.0,
    );
    outcome
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let seconds = env_number("BENCH_SECONDS", 5.0);
    let clients = env_number("BENCH_CLIENTS", 50.0) as usize;
    let rate = env_number("BENCH_RATE", 10_000.0);
    println!("chat pipeline, {clients} WebSocket clients, {seconds} s per run, loopback");
    let batched = run("1. throughput (batch writer, 500/1MiB/5ms)", 500, clients, seconds, None);
    let period = Duration::from_secs_f64(clients as f64 / rate);
    run(&format!("2. latency at {rate:.0} msgs/s offered"), 500, clients, seconds, Some(period));
    let single = run("3. throughput, one transaction per message", 1, clients, seconds, None);
    println!(
        "batch writer vs one transaction per message: {:.1}x (target >= 20x); throughput target >= 30000 msgs/s",
        batched.per_second / single.per_second.max(1.0)
    );
}
