//! Search indexing throughput: the Elasticsearch/OpenSearch backend's `_bulk` steps (what the
//! indexer does, `search.index_batch` = 1000 documents per step) against one request per
//! document, on the same engine, with the embedded FTS5 index beside them.
//!
//! Run: `scripts/services.sh up opensearch && cargo bench -p rampart-bench --bench search`
//! (BENCH_ELASTICSEARCH_URL, default http://127.0.0.1:9200; BENCH_DOCS, default 20000, in
//! steps of BENCH_BULK_DOCS, default 1000; the one-per-document run indexes BENCH_SINGLE_DOCS,
//! default 1000). Target: bulk ≥ 50× single.

use std::time::{Duration, Instant};

use rampart::storage::elasticsearch::{ElasticsearchConfig, ElasticsearchSearch};
use rampart::storage::{SqliteSearch, StoredMessage, WalPolicy};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn messages(from: i64, count: usize) -> Vec<StoredMessage> {
    (0..count as i64)
        .map(|n| {
            let seq = from + n;
            StoredMessage {
                seq,
                id: format!("bench-{seq}"),
                conversation: format!("conversation-{}", seq % 50),
                sender: format!("user{}", seq % 50),
                client_msg_id: seq.to_string(),
                body: format!("benchmark message {seq} with a little text to index, like a chat line would have"),
                created_at_ms: 1_700_000_000_000 + seq,
            }
        })
        .collect()
}

fn report(label: &str, docs: usize, took: Duration) -> f64 {
    let rate = docs as f64 / took.as_secs_f64();
    println!("{label:<52} {docs:>6} docs in {:>7.2} s: {rate:>9.0} docs/s", took.as_secs_f64());
    rate
}

fn main() {
    let url = std::env::var("BENCH_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let docs = env_number("BENCH_DOCS", 20_000);
    let single_docs = env_number("BENCH_SINGLE_DOCS", 1_000);
    // Documents per `_bulk` step (the indexer's `search.index_batch`).
    let step = env_number("BENCH_BULK_DOCS", 1_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let prefix = format!("rampart-bench-{}-", std::process::id());
        let config = ElasticsearchConfig { url: url.clone(), index_prefix: prefix.clone(), ..Default::default() };
        let engine = ElasticsearchSearch::new(&config).expect("client");
        if let Err(error) = engine.index(&messages(0, 1)).await {
            println!(
                "search bench skipped: no engine at {url} ({error}); start one with scripts/services.sh up opensearch"
            );
            return;
        }
        println!("search indexing, engine at {url}, loopback");
        let started = Instant::now();
        for chunk in messages(1, docs).chunks(step) {
            let outcome = engine.index(chunk).await.expect("bulk");
            assert!(outcome.incomplete.is_none() && outcome.rejected.is_empty(), "{outcome:?}");
        }
        let bulk = report(&format!("1. _bulk, {step} documents per request"), docs, started.elapsed());
        let started = Instant::now();
        for message in messages(1 + docs as i64, single_docs) {
            let outcome = engine.index(std::slice::from_ref(&message)).await.expect("single");
            assert!(outcome.incomplete.is_none(), "{outcome:?}");
        }
        let single = report("2. one request per document", single_docs, started.elapsed());
        println!("_bulk vs one request per document: {:.1}x (target >= 50x)", bulk / single);

        let dir = tempfile::tempdir().expect("temp dir");
        let fts = SqliteSearch::open(dir.path(), 1, WalPolicy::default()).expect("fts");
        let started = Instant::now();
        for chunk in messages(1, docs).chunks(1000) {
            fts.index(chunk.to_vec()).await.expect("fts index");
        }
        report("embedded FTS5 (search.db), 1000 per transaction", docs, started.elapsed());

        let client = reqwest::Client::new();
        let _ = client.delete(format!("{url}/{prefix}messages")).send().await;
        let _ = client.delete(format!("{url}/_index_template/{prefix}messages")).send().await;
    });
}
