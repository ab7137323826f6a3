//! MongoDB write throughput: rampart's batch writer path (`MongoChat::commit_batch`: one
//! unordered `insert_many` of the batch with a journaled majority write concern, then the
//! batch's delivery records and conversations' latest message) against one `insert_one` per
//! message (what the Go system did), into the same collection with the same write concern. The
//! baseline writes only the message document, so the comparison flatters it.
//!
//! Run: `scripts/services.sh up mongodb && cargo bench -p rampart-bench --bench storage`
//! (BENCH_MONGODB_URI, default `mongodb://127.0.0.1:27017/?directConnection=true`; BENCH_MESSAGES,
//! default 20000, in batches of BENCH_BATCH, default 500 = `pipeline.batch_max_messages`; the
//! one-per-message runs write BENCH_SINGLE_MESSAGES, default 1000). Target: batch ≥ 20× single.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use rampart::storage::mongodb::{MongoChat, MongoConfig};
use rampart::storage::{ConversationStore as _, MessageStore as _, NewMessage, UserStore as _};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn messages(prefix: &str, from: usize, count: usize) -> Vec<NewMessage> {
    (from..from + count)
        .map(|n| {
            let sender = format!("user{}", n % 50);
            let client_msg_id = format!("{prefix}-{n}");
            NewMessage {
                id: rampart::chat::message_id(&sender, &client_msg_id),
                conversation: format!("conversation-{}", n % 50),
                sender,
                client_msg_id,
                body: format!("benchmark message {n} with a little text, like a chat line would have"),
                created_at_ms: None,
            }
        })
        .collect()
}

/// Every call gets this long: a wedged server fails the bench instead of hanging it.
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call).await.unwrap_or_else(|_| panic!("{what}: no answer in 30 s"))
}

fn report(label: &str, messages: usize, took: Duration) -> f64 {
    let rate = messages as f64 / took.as_secs_f64();
    println!("{label:<60} {messages:>6} msgs in {:>7.2} s: {rate:>9.0} msgs/s", took.as_secs_f64());
    rate
}

fn main() {
    let uri = std::env::var("BENCH_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    let total = env_number("BENCH_MESSAGES", 20_000);
    let batch = env_number("BENCH_BATCH", 500).max(1);
    let single = env_number("BENCH_SINGLE_MESSAGES", 1_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let database = format!("rampart_bench_storage_{}", std::process::id());
        let config = MongoConfig { uri: uri.clone(), database: database.clone(), ..Default::default() };
        let store = match MongoChat::open(&config, false).await {
            Ok(store) => store,
            Err(error) => {
                println!("storage bench skipped: no MongoDB at {uri} ({error}); start one with scripts/services.sh up mongodb");
                return;
            }
        };
        let info = store.build_info().await.unwrap_or_default();
        let server = match info.get("ferretdbVersion") {
            Some(_) => format!("FerretDB (MongoDB {} wire protocol)", info["version"]),
            None => format!("MongoDB {}", info["version"]),
        };
        println!("MongoDB writes, {server} at {uri}, write concern majority + journal, loopback");
        // 50 conversations with two members each: every message also writes one delivery.
        for n in 0..50 {
            let (user, conversation) = (format!("user{n}"), format!("conversation-{n}"));
            store.create_user(user.clone(), user.clone(), 0).await.expect("user");
            store.create_user(format!("peer{n}"), "peer".into(), 0).await.expect("peer");
            store
                .create_conversation(conversation, "bench".into(), user.clone(), vec![user, format!("peer{n}")], 0)
                .await
                .expect("conversation")
                .expect("members exist");
        }

        let started = Instant::now();
        let mut written = 0;
        while written < total {
            let count = batch.min(total - written);
            let commit =
                store.commit_batch_inspected(Arc::from(messages("batched", written, count)), rampart::storage::now_ms(), Box::new(|_| {}));
            let outcomes = bounded("commit_batch", commit).await.expect("commit");
            assert_eq!(outcomes.len(), count);
            written += count;
        }
        let batched = report(&format!("commit_batch, {batch} per insert_many (+ deliveries)"), total, started.elapsed());

        let started = Instant::now();
        for message in messages("one-by-one", 0, single) {
            let commit = store.commit_batch_inspected(Arc::from(vec![message]), rampart::storage::now_ms(), Box::new(|_| {}));
            bounded("commit_batch", commit).await.expect("commit");
        }
        let one_batch = report("commit_batch, 1 message per call (+ deliveries)", single, started.elapsed());

        // The baseline: one insert_one per message into the same collection (same indexes, same
        // document shape), same write concern, no deliveries.
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let concern = WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build();
        let raw = client
            .database(&database)
            .collection_with_options::<mongodb::bson::Document>(
                "messages",
                CollectionOptions::builder().write_concern(concern).build(),
            );
        let started = Instant::now();
        for (n, message) in messages("insert-one", 0, single).into_iter().enumerate() {
            let document = doc! {
                "_id": message.id, "seq": n as i64 + 1, "conversation": message.conversation, "sender": message.sender,
                "client_msg_id": message.client_msg_id, "body": message.body,
                "created_at": mongodb::bson::DateTime::now(),
            };
            bounded("insert_one", raw.insert_one(document).into_future()).await.expect("insert_one");
        }
        let insert_one = report("insert_one per message (message only, same collection)", single, started.elapsed());
        // The write mechanics alone: insert_many of the same documents, same collection.
        let started = Instant::now();
        let mut written = 0;
        while written < total {
            let count = batch.min(total - written);
            let documents: Vec<mongodb::bson::Document> = messages("insert-many", written, count)
                .into_iter()
                .enumerate()
                .map(|(n, message)| {
                    doc! {
                        "_id": message.id, "seq": (single + written + n) as i64 + 1,
                        "conversation": message.conversation, "sender": message.sender,
                        "client_msg_id": message.client_msg_id, "body": message.body,
                        "created_at": mongodb::bson::DateTime::now(),
                    }
                })
                .collect();
            bounded("insert_many", raw.insert_many(documents).ordered(false).into_future()).await.expect("insert_many");
            written += count;
        }
        let insert_many =
            report(&format!("insert_many, {batch} per call (message only, same collection)"), total, started.elapsed());
        println!(
            "batch writer vs insert_one per message: {:.1}x (target >= 20x); vs commit_batch of 1: {:.1}x; \
             insert_many vs insert_one alone: {:.1}x",
            batched / insert_one.max(1.0),
            batched / one_batch.max(1.0),
            insert_many / insert_one.max(1.0)
        );
        let _ = client.database(&database).drop().await;
    });
}
