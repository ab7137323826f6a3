//! Kafka transport: how fast the writer group works through a backlog.
//!
//! Per run: a fresh MongoDB database gets 50 users with a conversation each (through an
//! embedded-transport instance); `BENCH_BACKLOG` (default 1,000,000) message records, 50 per
//! conversation one after another, are written straight to a fresh topic of 6 partitions with rdkafka; then
//! `n` rampart instances (`BENCH_INSTANCES`, default `1,2`: one run each) start on that topic with
//! a fresh writer group and the clock runs until every record is stored
//! (`rampart_messages_stored_total`, counted once per new message: replays are not counted).
//! Instances run in this process, each with its own actix system, sharing the 2 cores with
//! Kafka, FerretDB/PostgreSQL and the producer.
//!
//! Run: `scripts/services.sh up mongodb opensearch kafka`, then
//! `cargo bench -p rampart-bench --features kafka --bench kafka` (BENCH_KAFKA_BROKERS, default
//! 127.0.0.1:9092; BENCH_MONGODB_URI, default the FerretDB of scripts/services.sh;
//! BENCH_ELASTICSEARCH_URL, default its OpenSearch: search is indexed meanwhile).

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rampart::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use serde_json::json;

const ADMIN_TOKEN: &str = "bench-admin";
const JWT_SECRET: &str = "bench-secret";
const CONVERSATIONS: usize = 50;
const PARTITIONS: i32 = 6;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port")
}

struct Target {
    brokers: String,
    mongodb: String,
    engine: String,
    database: String,
    topic: String,
}

/// Starts rampart on its own thread; the returned sender stops it, the handle waits for it.
fn start_app(
    target: &Target,
    kafka: bool,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let address = free_port();
    let mut config = Config::default();
    config.http.bind = address;
    config.storage.data_dir = std::env::temp_dir().join(format!("rampart-bench-kafka-{}", address.port()));
    config.admin.token = ADMIN_TOKEN.into();
    config.auth.jwt_secret = JWT_SECRET.into();
    config.shutdown.readiness_delay = Duration::ZERO;
    config.storage.kind = rampart::storage::StorageKind::Mongodb;
    config.mongodb.uri = target.mongodb.clone();
    config.mongodb.database = target.database.clone();
    // Search on the engine, as a scale-out deployment runs it: the indexer finds new messages by
    // their flag instead of scanning by seq.
    config.search.kind = rampart::storage::SearchKind::Elasticsearch;
    config.elasticsearch.url = target.engine.clone();
    config.elasticsearch.index_prefix = format!("{}-", target.topic.replace('.', "-"));
    if kafka {
        config.transport.kind = rampart::transport::TransportKind::Kafka;
        config.kafka.brokers = target.brokers.clone();
        config.kafka.topic = target.topic.clone();
        config.kafka.partitions = PARTITIONS;
        config.kafka.group_prefix = format!("{}-", target.topic);
    }
    let app = rampart_bench::spawn_app(config);
    (address, app.stop, app.thread)
}

/// Users `user0..` with one conversation each (with an offline second member); returns the
/// conversation ids.
async fn prepare(address: SocketAddr) -> Vec<(String, String)> {
    let base = format!("http://{address}");
    rampart_bench::wait_healthy(&base, Duration::from_secs(60)).await;
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let tokens = rampart::auth::Tokens::from_secret(JWT_SECRET.as_bytes());
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut conversations = Vec::new();
    for user in std::iter::once("offline".to_owned()).chain((0..CONVERSATIONS).map(|n| format!("user{n}"))) {
        let request = http.post(format!("{base}/api/users")).insert_header(("Authorization", admin.as_str()));
        assert_eq!(request.send_json(&json!({"id": user})).await.expect("user").status().as_u16(), 201);
        if user == "offline" {
            continue;
        }
        let token = tokens.issue(&user, Duration::from_secs(3600)).expect("token");
        let mut response = http
            .post(format!("{base}/api/conversations"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send_json(&json!({"members": ["offline"]}))
            .await
            .expect("conversation");
        let body: serde_json::Value = response.json().await.expect("conversation body");
        conversations.push((user, body["id"].as_str().expect("id").to_owned()));
    }
    conversations
}

/// Creates the topic and writes `count` message records to it; returns the produce rate.
fn produce_backlog(target: &Target, conversations: &[(String, String)], count: usize) -> f64 {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &target.brokers);
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin client");
    let topic = NewTopic::new(&target.topic, PARTITIONS, TopicReplication::Fixed(1));
    let created = actix_rt::System::new().block_on(admin.create_topics([&topic], &AdminOptions::new()));
    created.expect("create topic").into_iter().for_each(|result| {
        result.expect("topic created");
    });
    let producer: BaseProducer = client
        .clone()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let now = rampart::storage::now_ms();
    for n in 0..count {
        let (sender, conversation) = &conversations[n % conversations.len()];
        let client_msg_id = format!("backlog-{n}");
        let message = rampart::storage::NewMessage {
            id: rampart::chat::message_id(sender, &client_msg_id),
            conversation: conversation.clone(),
            sender: sender.clone(),
            client_msg_id,
            body: format!("backlog message {n} with a little text, like a chat line would have"),
            created_at_ms: Some(now),
        };
        let payload = serde_json::to_vec(&message).expect("json");
        let mut record = BaseRecord::to(&target.topic).key(conversation.as_str()).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, unsent)) => {
                    record = unsent;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
        if n % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("backlog flushed");
    count as f64 / started.elapsed().as_secs_f64()
}

fn catch_up(instances: usize, backlog: usize) {
    let nonce = format!("{}-{instances}-{}", std::process::id(), rampart::storage::now_ms());
    let target = Target {
        brokers: env_or("BENCH_KAFKA_BROKERS", "127.0.0.1:9092"),
        mongodb: env_or("BENCH_MONGODB_URI", "mongodb://127.0.0.1:27017/?directConnection=true"),
        engine: env_or("BENCH_ELASTICSEARCH_URL", "http://127.0.0.1:9200"),
        database: format!("rampart_bench_catchup_{}", nonce.replace('-', "_")),
        topic: format!("rampart.catchup.{nonce}"),
    };
    // Users and conversations, through an instance that does not read the topic.
    let (address, stop, thread) = start_app(&target, false);
    let conversations = actix_rt::System::new().block_on(prepare(address));
    let _ = stop.send(());
    let _ = thread.join();
    let produced = produce_backlog(&target, &conversations, backlog);

    let before = rampart::telemetry::metrics().messages_stored.get();
    let started = Instant::now();
    let apps: Vec<_> = (0..instances).map(|_| start_app(&target, true)).collect();
    let mut last_report = Instant::now();
    loop {
        let stored = rampart::telemetry::metrics().messages_stored.get() - before;
        if stored >= backlog as u64 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!("  … {stored} stored after {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "caught up within an hour");
        std::thread::sleep(Duration::from_millis(100)); // poll the counter
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (_, stop, thread) in apps {
        let _ = stop.send(());
        let _ = thread.join();
    }
    println!(
        "catch-up, {instances} instance(s): {backlog} records in {elapsed:.1} s = {:>7.0} stored msgs/s (backlog produced at {produced:.0} records/s; start-up and group join included)",
        backlog as f64 / elapsed
    );
}

fn main() {
    let backlog: usize = env_or("BENCH_BACKLOG", "1000000").parse().expect("BENCH_BACKLOG is a number");
    let runs = env_or("BENCH_INSTANCES", "1,2");
    println!(
        "Kafka writer catch-up on a {backlog}-record backlog ({PARTITIONS} partitions), MongoDB at {}",
        env_or("BENCH_MONGODB_URI", "scripts/services.sh's FerretDB")
    );
    for instances in runs.split(',').filter_map(|n| n.trim().parse().ok()) {
        catch_up(instances, backlog);
    }
}
