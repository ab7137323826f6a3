//! Durable acked messages through the whole chat stack: N WebSocket clients on loopback send
//! protocol-v1 `send` frames to the real app (JWT auth, session actors, validator, batch writer,
//! SQLite WAL with synchronous=FULL, delivery records, search indexing behind it), and count
//! `ack` frames — each one a message committed to disk.
//!
//! Three runs, each on a fresh data directory:
//! 1. throughput: every client keeps `WINDOW` messages in flight; acked msgs/s and ack latency;
//! 2. latency at a fixed offered load (`BENCH_RATE`, default 10,000 msgs/s, open loop);
//! 3. the same as 1 with `pipeline.batch_max_messages = 1`: one transaction per message
//!    (admission control off: `max_queue_delay` 1 h);
//! 4. overload: `BENCH_OVERLOAD_CLIENTS` (default 200) connections offer 3× run 1's acked rate,
//!    open loop, for `BENCH_OVERLOAD_SECONDS` (default 30); counts answers by code (every send
//!    must be answered: `unanswered` must be 0), the accepted messages' latency, the process's
//!    resident memory, and how fast a probe is served once the load stops.
//!
//! With `BENCH_MONGODB_URI` (e.g. `mongodb://127.0.0.1:27017/?directConnection=true` from
//! `scripts/services.sh up mongodb`) chat is stored in MongoDB instead, a fresh database per run.
//! Adding `BENCH_KAFKA_BROKERS` (e.g. `127.0.0.1:9092`, `scripts/services.sh up kafka`; build with
//! `--features kafka`) sends messages through the Kafka transport, a fresh topic per run: an ack
//! then means the brokers have the message.
//!
//! Run: `cargo bench -p rampart-bench --bench chat` (BENCH_SECONDS per run, default 5;
//! BENCH_CLIENTS, default 50; BENCH_RUNS, default `1,2,3,4`, a subset; BENCH_WAL_CHECKPOINT_BYTES
//! overrides `storage.wal_checkpoint_bytes`, a huge value measuring the old unbounded WAL). Targets: run 1 ≥ 30,000 acked msgs/s; run 2 p99 ≤ 50 ms;
//! run 1 / run 3 ≥ 20×; run 4: nothing unanswered, accepted p99 ≤ 1 s, probe p99 ≤ 50 ms.

use std::collections::{BTreeMap, HashMap};
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
    if batch_max_messages == 1 {
        // Run 3 measures what one transaction per message can do under the same closed-loop
        // load as run 1 (3,200 in flight, ~2 s of queue): admission control would refuse most
        // of it and measure something else.
        config.pipeline.max_queue_delay = Duration::from_secs(3600);
    }
    config.shutdown.readiness_delay = Duration::ZERO;
    // The cost of the bounded WAL: a huge threshold leaves only passive checkpoints (the old,
    // unbounded behaviour).
    if let Ok(bytes) = std::env::var("BENCH_WAL_CHECKPOINT_BYTES") {
        config.storage.wal_checkpoint_bytes = bytes.parse().expect("BENCH_WAL_CHECKPOINT_BYTES is a number");
    }
    // The same runs on MongoDB (a fresh database per run, left for inspection: drop
    // rampart_bench_* when done).
    if let Ok(uri) = std::env::var("BENCH_MONGODB_URI") {
        config.storage.kind = rampart::storage::StorageKind::Mongodb;
        config.mongodb.uri = uri;
        config.mongodb.database = format!("rampart_bench_{}_{}", std::process::id(), address.port());
    }
    if let Ok(brokers) = std::env::var("BENCH_KAFKA_BROKERS") {
        if !cfg!(feature = "kafka") {
            panic!("BENCH_KAFKA_BROKERS needs `--features kafka`");
        }
        config.transport.kind = rampart::transport::TransportKind::Kafka;
        config.kafka.brokers = brokers;
        config.kafka.topic = format!("rampart.bench.{}.{}", std::process::id(), address.port());
        config.kafka.group_prefix = format!("rampart-bench-{}-{}-", std::process::id(), address.port());
    }
    (address, rampart_bench::spawn_app(config).stop)
}

struct Setup {
    base: String,
    /// (token, conversation) per client.
    clients: Vec<(String, String)>,
}

async fn setup(address: SocketAddr, clients: usize) -> Setup {
    let base = format!("http://{address}");
    rampart_bench::wait_healthy(&base, Duration::from_secs(30)).await;
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
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
    /// Error frames by code.
    refused: BTreeMap<String, u64>,
    /// Sends that got no answer before the client gave up (10 s after its last frame).
    unanswered: u64,
    latencies: Vec<Duration>,
    /// How long each refusal took to arrive: refusing must be early and cheap.
    refusal_latencies: Vec<Duration>,
    /// When the last answer arrived.
    last_answer: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acked += other.acked;
        for (code, count) in other.refused {
            *self.refused.entry(code).or_default() += count;
        }
        self.unanswered += other.unanswered;
        self.latencies.extend(other.latencies);
        self.refusal_latencies.extend(other.refusal_latencies);
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    fn errors(&self) -> u64 {
        self.refused.values().sum::<u64>() + self.unanswered
    }
}

/// The `q` quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples.get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
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
    tally.unanswered += sent_at.len() as u64;
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
    tally.last_answer = Some(Instant::now());
    if value["type"] == "ack" {
        tally.acked += 1;
        tally.latencies.push(started.elapsed());
    } else {
        let code = value["code"].as_str().unwrap_or("?").to_owned();
        *tally.refused.entry(code).or_default() += 1;
        tally.refusal_latencies.push(started.elapsed());
    }
    true
}

struct Outcome {
    per_second: f64,
    tally: Tally,
}

/// Resident memory of this process (server and load generator), from /proc.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Samples `rss_mib` every 50 ms until dropped; returns the peak.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("bench-rss".into()).spawn(move || {
            let mut peak = 0.0f64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        Self { stop, thread: thread.expect("rss sampler thread") }
    }

    fn peak(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

/// What an overload run measures besides the tally.
struct Overload {
    offered_per_second: f64,
    rss_before: f64,
    rss_peak: f64,
    /// From the end of the load to the last answer.
    drained_in: Duration,
    /// A probe client at 200 msgs/s for 2 s after the load.
    probe: Tally,
}

fn run_clients(
    setup: &Setup,
    clients: usize,
    seconds: f64,
    pace: Option<Duration>,
) -> impl std::future::Future<Output = (Tally, Instant, Instant)> {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = setup
        .clients
        .iter()
        .take(clients)
        .enumerate()
        .map(|(id, (token, conversation))| {
            rampart::tasks::spawn_owned(
                "bench.client",
                client(setup.base.clone(), token.clone(), conversation.clone(), id, until, pace),
            )
        })
        .collect();
    async move {
        let mut tally = Tally::default();
        for task in tasks {
            tally.merge(task.await.expect("client task"));
        }
        (tally, started, until)
    }
}

fn run(label: &str, batch_max_messages: usize, clients: usize, seconds: f64, pace: Option<Duration>) -> Outcome {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (address, stop) = start_app(data_dir.path(), batch_max_messages);
    let outcome = actix_rt::System::new().block_on(async move {
        let setup = setup(address, clients).await;
        let (tally, started, _) = run_clients(&setup, clients, seconds, pace).await;
        let elapsed = started.elapsed().as_secs_f64();
        Outcome { per_second: tally.acked as f64 / elapsed, tally }
    });
    let _ = stop.send(());
    let mut latencies = outcome.tally.latencies.clone();
    println!(
        "{label:<44} {:>9.0} acked msgs/s  ({} acked, {} errors)  ack latency p50 {:>6.2} ms  p99 {:>6.2} ms  p999 {:>6.2} ms",
        outcome.per_second,
        outcome.tally.acked,
        outcome.tally.errors(),
        ms(quantile(&mut latencies, 0.50)),
        ms(quantile(&mut latencies, 0.99)),
        ms(quantile(&mut latencies, 0.999)),
    );
    outcome
}

/// Run 4: open-loop load at `rate` msgs/s from `clients` connections for `seconds`.
fn overload(label: &str, clients: usize, seconds: f64, rate: f64) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (address, stop) = start_app(data_dir.path(), 500);
    let (tally, overload) = actix_rt::System::new().block_on(async move {
        let setup = setup(address, clients + 1).await;
        let rss_before = rss_mib();
        let sampler = RssSampler::start();
        let period = Duration::from_secs_f64(clients as f64 / rate);
        let (tally, started, until) = run_clients(&setup, clients, seconds, Some(period)).await;
        let rss_peak = sampler.peak();
        let sent = tally.acked + tally.errors();
        let offered_per_second = sent as f64 / (until - started).as_secs_f64();
        let drained_in = tally.last_answer.map(|last| last.saturating_duration_since(until)).unwrap_or_default();
        // The probe uses the last prepared client, idle until now.
        let probe_setup = Setup { base: setup.base.clone(), clients: vec![setup.clients[clients].clone()] };
        let (probe, _, _) = run_clients(&probe_setup, 1, 2.0, Some(Duration::from_millis(5))).await;
        (tally, Overload { offered_per_second, rss_before, rss_peak, drained_in, probe })
    });
    let _ = stop.send(());
    let Overload { offered_per_second, rss_before, rss_peak, drained_in, mut probe } = overload;
    let mut latencies = tally.latencies.clone();
    let mut refusals = tally.refusal_latencies.clone();
    let elapsed = seconds + drained_in.as_secs_f64();
    println!(
        "{label:<44} offered {offered_per_second:.0} msgs/s; {:.0} acked msgs/s ({} acked); refused {:?} (p99 answer {:.2} ms); unanswered {}",
        tally.acked as f64 / elapsed,
        tally.acked,
        tally.refused,
        ms(quantile(&mut refusals, 0.99)),
        tally.unanswered,
    );
    println!(
        "{:<44} accepted p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; RSS {rss_before:.0} MiB before, peak {rss_peak:.0} MiB; drained {:.2} s after the load; probe: {} acked, {} errors, p99 {:.2} ms",
        "",
        ms(quantile(&mut latencies, 0.50)),
        ms(quantile(&mut latencies, 0.99)),
        ms(quantile(&mut latencies, 1.0)),
        drained_in.as_secs_f64(),
        probe.acked,
        probe.errors(),
        ms(quantile(&mut probe.latencies, 0.99)),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let seconds = env_number("BENCH_SECONDS", 5.0);
    let clients = env_number("BENCH_CLIENTS", 50.0) as usize;
    let rate = env_number("BENCH_RATE", 10_000.0);
    let overload_seconds = env_number("BENCH_OVERLOAD_SECONDS", 30.0);
    let overload_clients = env_number("BENCH_OVERLOAD_CLIENTS", 200.0) as usize;
    // BENCH_RUNS=1,4 runs a subset (run 4 needs run 1's rate).
    let runs = std::env::var("BENCH_RUNS").unwrap_or_else(|_| "1,2,3,4".into());
    let selected = |run: &str| runs.split(',').any(|selected| selected.trim() == run);
    let mut store = match std::env::var("BENCH_MONGODB_URI") {
        Ok(uri) => format!("MongoDB at {uri}"),
        Err(_) => "embedded SQLite".to_owned(),
    };
    if let Ok(brokers) = std::env::var("BENCH_KAFKA_BROKERS") {
        store = format!("Kafka at {brokers} and {store}");
    }
    println!("chat pipeline on {store}, {clients} WebSocket clients, {seconds} s per run, loopback");
    let batched = run("1. throughput (batch writer, 500/1MiB/5ms)", 500, clients, seconds, None);
    if selected("2") {
        let period = Duration::from_secs_f64(clients as f64 / rate);
        run(&format!("2. latency at {rate:.0} msgs/s offered"), 500, clients, seconds, Some(period));
    }
    if selected("3") {
        let single = run("3. throughput, one transaction per message", 1, clients, seconds, None);
        println!(
            "batch writer vs one transaction per message: {:.1}x (target >= 20x); throughput target >= 30000 msgs/s",
            batched.per_second / single.per_second.max(1.0)
        );
    }
    if !selected("4") {
        return;
    }
    let offered = 3.0 * batched.per_second;
    overload(
        &format!("4. overload: 3x run 1 ({offered:.0} msgs/s), {overload_clients} connections, {overload_seconds} s"),
        overload_clients,
        overload_seconds,
        offered,
    );
}
