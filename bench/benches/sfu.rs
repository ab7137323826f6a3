//! The SFU's forwarding: 1 publisher → N subscribers, webrtc-rs clients on 127.0.0.1 (the same
//! client as the tests, `tests/it/rtc_client.rs`), the server in a child process of its own (this
//! binary re-executed with `BENCH_SFU_SERVE`), so its CPU time is the server's alone. The same
//! load then runs against a bare webrtc-rs forwarder with no actors (`sfu/bare.rs`, child mode
//! `BENCH_SFU_SERVE_BARE`): the difference is the cost of rampart's actors and supervision.
//!
//! Measures, for each server: forwarded packets/s, the server's CPU seconds per second (from
//! `/proc/<pid>/stat`), so forwarded packets/s per core and CPU per packet; the latency from the
//! publisher's write to a subscriber's read (p50/p99; both ends in this process, so one clock; it
//! includes the clients' own webrtc-rs stacks on both sides, so rampart's p99 minus the bare
//! forwarder's is what rampart adds); the server's RSS per participant.
//!
//! `relayed` runs rampart with its embedded TURN relay and every subscriber allowed relay
//! candidates only: the server's CPU then includes relaying each packet (the relay is in the same
//! process), against `rampart`'s direct delivery.
//!
//! `cross` (with `RAMPART_TEST_FERRETDB_BIN`, from `scripts/services.sh env`): two rampart
//! processes on one MongoDB (FerretDB on its SQLite backend, on loopback) with `sfu.cluster`, a
//! publisher on the room's owner, and participants joining one at a time through the owner and
//! through the other instance: the time from `join` to the first media packet received, each way.
//!
//! Run: `cargo bench -p rampart-bench --features sfu --bench sfu` (BENCH_SUBSCRIBERS, default
//! 20; BENCH_PACKETS_PER_TICK, video and audio packets per 20 ms, default 10: 1,000 packets/s
//! published; BENCH_SECONDS, default 10; BENCH_SFU_SERVERS, default `rampart,bare,relayed,cross`).
//! Targets: ≥ 60,000 forwarded packets/s per core, p99 added latency ≤ 5 ms, ≤ 1.1× the bare
//! forwarder's CPU per packet; relayed ≤ 1.5× direct CPU per packet; a join through the other
//! instance ≤ 50 ms slower than through the owner.

#[path = "../../tests/it/rtc_client.rs"]
#[allow(dead_code, reason = "the tests use more of the client than the benchmark")]
mod rtc_client;

#[path = "sfu/bare.rs"]
mod bare;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rampart::auth::Tokens;
use rampart::config::Config;
use serde_json::json;

const ADMIN_TOKEN: &str = "bench-admin";
const JWT_SECRET: &str = "bench-secret";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() {
    if let Ok(address) = std::env::var("BENCH_SFU_SERVE") {
        return serve(address.parse().expect("BENCH_SFU_SERVE is an address"), false);
    }
    if let Ok(address) = std::env::var("BENCH_SFU_SERVE_RELAYED") {
        return serve(address.parse().expect("BENCH_SFU_SERVE_RELAYED is an address"), true);
    }
    if let Ok(address) = std::env::var("BENCH_SFU_SERVE_BARE") {
        return bare::serve(address.parse().expect("BENCH_SFU_SERVE_BARE is an address"));
    }
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` and friends: nothing to list.
    }
    actix_rt::System::new().block_on(bench());
}

/// The child: the real app, SFU on loopback only; with `relay`, its TURN relay on too.
fn serve(address: SocketAddr, relay: bool) {
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut config = Config::default();
    config.http.bind = address;
    config.storage.data_dir = data_dir.path().to_owned();
    config.admin.token = ADMIN_TOKEN.into();
    config.auth.jwt_secret = JWT_SECRET.into();
    config.sfu.ice_loopback_only = true;
    config.sfu.max_participants = 1000;
    config.sfu.signaling_rate_per_sec = 10_000;
    config.shutdown.readiness_delay = Duration::ZERO;
    if let Ok(uri) = std::env::var("BENCH_SFU_MONGODB") {
        config.storage.kind = rampart::storage::StorageKind::Mongodb;
        config.mongodb.uri = uri;
        config.mongodb.database = "rampart_bench_cross".into();
        config.sfu.cluster.enabled = true;
        config.sfu.cluster.secret = "the benchmark's cluster secret".into();
    }
    if relay {
        config.sfu.turn.enabled = true;
        config.sfu.turn.secret = "the benchmark's TURN secret".into();
        config.sfu.turn.udp = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.sfu.turn.tcp = None;
    }
    let never = std::future::pending::<()>();
    if let Err(error) = actix_rt::System::new().block_on(rampart::app::run(config, never)) {
        eprintln!("rampart app failed: {error:#}");
    }
}

/// Opens the operator's room `room` on `base` and provisions `users` (every user is provisioned
/// before their socket is accepted).
async fn provision(http: &awc::Client, base: &str, room: &str, users: impl Iterator<Item = String>) {
    let mut response = http
        .post(format!("{base}/admin/rooms"))
        .bearer_auth(ADMIN_TOKEN)
        .send_json(&json!({"name": room}))
        .await
        .expect("room");
    assert!(response.status().is_success(), "{:?}", response.body().await);
    for user in users {
        let mut response = http
            .post(format!("{base}/api/users"))
            .bearer_auth(ADMIN_TOKEN)
            .send_json(&json!({"id": user}))
            .await
            .expect("provision");
        assert!(response.status().is_success(), "provisioning {user}: {:?}", response.body().await);
    }
}

/// (user+system CPU seconds, RSS bytes) of `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of stat(5); utime and stime are 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(14) + ticks(15)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1e6
}

/// What one server did under the load.
struct Measurement {
    forwarded_per_sec: f64,
    cores: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Measurement {
    /// Server CPU seconds per million forwarded packets.
    fn cpu_per_million(&self) -> f64 {
        self.cores / self.forwarded_per_sec.max(1e-9) * 1e6
    }
}

async fn bench() {
    let servers = std::env::var("BENCH_SFU_SERVERS").unwrap_or_else(|_| "rampart,bare,relayed,cross".into());
    let mut results = Vec::new();
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if server == "cross" {
            cross_instance_joins().await;
            continue;
        }
        let kind = match server {
            "rampart" => Server::Rampart,
            "bare" => Server::Bare,
            "relayed" => Server::Relayed,
            other => panic!("BENCH_SFU_SERVERS: unknown server {other:?} (rampart, bare, relayed, cross)"),
        };
        results.push((server.to_owned(), measure(kind).await));
    }
    if let (Some((_, direct)), Some((_, relayed))) =
        (results.iter().find(|(s, _)| s == "rampart"), results.iter().find(|(s, _)| s == "relayed"))
    {
        println!(
            "sfu: relay cost: every subscriber through the embedded TURN relay {:.2} CPU-s per million forwarded \
             packets, direct {:.2} -> {:.2}x (target <= 1.5x); latency p99 relayed {:.2} ms, direct {:.2} ms",
            relayed.cpu_per_million(),
            direct.cpu_per_million(),
            relayed.cpu_per_million() / direct.cpu_per_million().max(1e-9),
            relayed.p99_ms,
            direct.p99_ms,
        );
    }
    if let (Some((_, rampart)), Some((_, bare))) =
        (results.iter().find(|(s, _)| s == "rampart"), results.iter().find(|(s, _)| s == "bare"))
    {
        println!(
            "sfu: supervision cost: rampart {:.2} CPU-s per million forwarded packets, bare webrtc-rs forwarder {:.2} \
             -> {:.2}x (target <= 1.1x); latency p99 rampart {:.2} ms, bare {:.2} ms -> added {:.2} ms",
            rampart.cpu_per_million(),
            bare.cpu_per_million(),
            rampart.cpu_per_million() / bare.cpu_per_million().max(1e-9),
            rampart.p99_ms,
            bare.p99_ms,
            rampart.p99_ms - bare.p99_ms,
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Rampart,
    Bare,
    /// rampart with its TURN relay, every subscriber relay-only.
    Relayed,
}

async fn measure(server: Server) -> Measurement {
    let bare = server == Server::Bare;
    let name = match server {
        Server::Rampart => "rampart",
        Server::Bare => "bare",
        Server::Relayed => "relayed",
    };
    let mode = match server {
        Server::Rampart => "BENCH_SFU_SERVE",
        Server::Bare => "BENCH_SFU_SERVE_BARE",
        Server::Relayed => "BENCH_SFU_SERVE_RELAYED",
    };
    let subscribers = env_number("BENCH_SUBSCRIBERS", 20) as usize;
    let per_tick = env_number("BENCH_PACKETS_PER_TICK", 10) as u32;
    let seconds = env_number("BENCH_SECONDS", 10);
    let address = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env(mode, address.to_string())
        .env("RAMPART__LOG__FILTER", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the server");
    let base = format!("http://{address}");
    rampart_bench::wait_healthy(&base, Duration::from_secs(30)).await;
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let (_, idle_rss) = usage(child.id());
    if !bare {
        let users = std::iter::once("publisher".to_owned()).chain((0..subscribers).map(|i| format!("subscriber-{i}")));
        provision(&http, &base, "bench", users).await;
    }
    let tokens = Tokens::from_secret(JWT_SECRET.as_bytes());
    let url = format!("ws://{address}/rtc");
    let runtime = rtc_client::media_runtime();
    let token = |user: &str| tokens.issue(user, Duration::from_secs(3600)).expect("token");
    let mut clients = Vec::new();
    for i in 0..subscribers {
        let options =
            rtc_client::Options { record_latency: true, relay_only: server == Server::Relayed, ..Default::default() };
        // One user each: a user's sockets are limited (`sfu.max_sockets_per_user`).
        let user = format!("subscriber-{i}");
        let mut client = rtc_client::RtcClient::connect(&runtime, &url, &token(&user), options).await;
        assert_eq!(client.join("bench").await["type"], "joined");
        clients.push(client);
    }
    let options = rtc_client::Options { publish: true, packets_per_tick: per_tick, ..Default::default() };
    let mut publisher = rtc_client::RtcClient::connect(&runtime, &url, &token("publisher"), options).await;
    assert_eq!(publisher.join("bench").await["type"], "joined");
    let from = publisher.participant();
    // Warm up until every subscriber receives, then measure a clean window.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !clients.iter().all(|c| c.state.received(&from, "video").intact > 100) {
        assert!(Instant::now() < deadline, "not every subscriber receives");
        tokio::time::sleep(Duration::from_millis(50)).await; // Warm-up poll.
    }
    let received = |clients: &[rtc_client::RtcClient]| -> u64 {
        clients
            .iter()
            .map(|c| c.state.received(&from, "video").packets + c.state.received(&from, "audio").packets)
            .sum()
    };
    for client in &clients {
        for kind in ["video", "audio"] {
            if let Some(entry) = client.state.received.lock().get_mut(&(from.clone(), kind.to_owned())) {
                entry.latencies.clear();
            }
        }
    }
    let (cpu_before, _) = usage(child.id());
    let packets_before = received(&clients);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await; // The measured window.
    let elapsed = window.elapsed().as_secs_f64();
    let (cpu_after, busy_rss) = usage(child.id());
    let forwarded = (received(&clients) - packets_before) as f64 / elapsed;
    let cores = (cpu_after - cpu_before) / elapsed;
    let mut latencies: Vec<u64> = Vec::new();
    for client in &clients {
        for kind in ["video", "audio"] {
            latencies.extend(client.state.received(&from, kind).latencies);
        }
    }
    latencies.sort_unstable();
    let participants = subscribers as u64 + 1;
    if !bare {
        // Packets a subscriber connection refused or fell too far behind for: should be none.
        let mut response = http.get(format!("{base}/metrics")).send().await.expect("metrics");
        let body = response.body().limit(1 << 22).await.expect("metrics body");
        let text = String::from_utf8_lossy(&body);
        let lost: Vec<&str> = text
            .lines()
            .filter(|line| {
                line.starts_with("rampart_sfu_dropped_packets_total")
                    || line.starts_with("rampart_sfu_write_errors_total")
            })
            .collect();
        println!("sfu [rampart]: {}", lost.join(", "));
    }
    let measurement = Measurement {
        forwarded_per_sec: forwarded,
        cores,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    };
    println!(
        "sfu [{name}]: 1 publisher ({} packets/s) -> {subscribers} subscribers, {seconds} s: {forwarded:.0} forwarded packets/s received; \
         server CPU {cores:.2} cores -> {:.0} packets/s per core; latency publisher->subscriber p50 {:.2} ms p99 {:.2} ms \
         ({} samples); server RSS {:.1} MiB idle, {:.1} MiB busy, {:.0} KiB per participant",
        per_tick as u64 * 2 * 50,
        forwarded / cores.max(1e-9),
        measurement.p50_ms,
        measurement.p99_ms,
        latencies.len(),
        idle_rss as f64 / 1048576.0,
        busy_rss as f64 / 1048576.0,
        busy_rss.saturating_sub(idle_rss) as f64 / 1024.0 / participants as f64,
    );
    drop(publisher);
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
    measurement
}

/// `join` → first media packet, through the room's owner and through the other instance.
async fn cross_instance_joins() {
    let Some(ferretdb) =
        std::env::var("RAMPART_TEST_FERRETDB_BIN").ok().filter(|bin| std::path::Path::new(bin).is_file())
    else {
        println!("sfu [cross]: skipped: RAMPART_TEST_FERRETDB_BIN (scripts/services.sh env) names no FerretDB");
        return;
    };
    let joins = env_number("BENCH_CROSS_JOINS", 20);
    let store = tempfile::tempdir().expect("FerretDB's directory");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let mut mongo = std::process::Command::new(ferretdb)
        .args(["-listen", &format!("127.0.0.1:{port}"), "-sqlite", &format!("file:{}/", store.path().display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start FerretDB");
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let mut instances = Vec::new();
    for _ in 0..2 {
        let address = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let child = std::process::Command::new(std::env::current_exe().expect("this binary"))
            .env("BENCH_SFU_SERVE", address.to_string())
            .env("BENCH_SFU_MONGODB", &uri)
            .env("RAMPART__LOG__FILTER", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start an instance");
        rampart_bench::wait_healthy(&format!("http://{address}"), Duration::from_secs(60)).await;
        instances.push((address, child));
    }
    let (owner, other) = (instances[0].0, instances[1].0);
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let users = std::iter::once("publisher".to_owned()).chain((0..joins * 2).map(|i| format!("joiner-{i}")));
    provision(&http, &format!("http://{owner}"), "cross", users).await;
    let tokens = Tokens::from_secret(JWT_SECRET.as_bytes());
    let token = |user: &str| tokens.issue(user, Duration::from_secs(3600)).expect("token");
    let runtime = rtc_client::media_runtime();
    let options = rtc_client::Options { publish: true, ..Default::default() };
    let mut publisher =
        rtc_client::RtcClient::connect(&runtime, &format!("ws://{owner}/rtc"), &token("publisher"), options).await;
    assert_eq!(publisher.join("cross").await["type"], "joined");
    let from = publisher.participant();
    // Alternate: through the owner, then through the other instance.
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for i in 0..joins * 2 {
        let through = if i % 2 == 0 { owner } else { other };
        let user = format!("joiner-{i}");
        let mut client = rtc_client::RtcClient::connect(
            &runtime,
            &format!("ws://{through}/rtc"),
            &token(&user),
            rtc_client::Options::default(),
        )
        .await;
        let started = Instant::now();
        assert_eq!(client.join("cross").await["type"], "joined");
        let deadline = started + Duration::from_secs(20);
        while client.state.received(&from, "video").packets == 0 {
            assert!(Instant::now() < deadline, "{user} received nothing");
            tokio::time::sleep(Duration::from_millis(1)).await; // Poll interval.
        }
        let took = started.elapsed().as_nanos() as u64;
        if i % 2 == 0 {
            direct.push(took)
        } else {
            relayed.push(took)
        }
        drop(client);
    }
    direct.sort_unstable();
    relayed.sort_unstable();
    let (direct_p50, relayed_p50) = (percentile(&direct, 0.5), percentile(&relayed, 0.5));
    println!(
        "sfu [cross]: join -> first media packet, {joins} joins each: through the owner p50 {direct_p50:.1} ms \
         (p90 {:.1}), through the other instance p50 {relayed_p50:.1} ms (p90 {:.1}) -> adds {:.1} ms (target <= 50 ms)",
        percentile(&direct, 0.9),
        percentile(&relayed, 0.9),
        relayed_p50 - direct_p50,
    );
    drop(publisher);
    for (_, mut child) in instances {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = mongo.kill();
    let _ = mongo.wait();
}
