//! The SQLite write-ahead logs stay bounded under sustained load and shrink back when idle.
//! Measured before the fix: 20 s of HTTP POST load grew rampart.db-wal to 2,022 MiB and
//! search.db-wal to 113 MiB, and neither shrank after the load stopped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chat_client::{chat_env, ChatServer};
use crate::support::{eventually, RampartProcess};

/// Each WAL stays below this (the default `storage.wal_size_limit_bytes`).
const WAL_BOUND: u64 = 64 << 20;
/// Load duration; `RAMPART_WAL_LOAD_SECS` overrides (the issue asks for 3 minutes).
const DEFAULT_LOAD_SECS: u64 = 180;
const SENDERS: usize = 6;

fn wal_size(data_dir: &Path, db: &str) -> u64 {
    std::fs::metadata(data_dir.join(format!("{db}-wal"))).map_or(0, |metadata| metadata.len())
}

#[actix_rt::test]
async fn sustained_load_keeps_each_wal_bounded_and_idle_shrinks_it() {
    let load = Duration::from_secs(
        std::env::var("RAMPART_WAL_LOAD_SECS").ok().and_then(|secs| secs.parse().ok()).unwrap_or(DEFAULT_LOAD_SECS),
    );
    let data_dir = tempfile::tempdir().unwrap();
    let mut extra = vec![("RAMPART__WS__RATE_LIMIT_PER_SEC", "1000000"), ("RAMPART__WS__BURST", "1000000")];
    // Only to show what the test catches: passive checkpoints alone, as before the fix.
    let passive_only = std::env::var("RAMPART_WAL_PASSIVE_ONLY").is_ok_and(|v| v == "1");
    if passive_only {
        extra.push(("RAMPART__STORAGE__WAL_CHECKPOINT_BYTES", "1099511627776"));
        extra.push(("RAMPART__STORAGE__WAL_SIZE_LIMIT_BYTES", "1099511627776"));
    }
    let env = chat_env(&extra);
    let chat = ChatServer::wrap(RampartProcess::start_on(data_dir.path(), &env));
    chat.create_user("writer").await;
    chat.create_user("reader").await;
    let conversation = chat.conversation("writer", &["reader"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let worst_ack_us = Arc::new(AtomicU64::new(0));
    let body = "w".repeat(1000);
    // Senders: 64 sends in flight each, as fast as acks come back.
    let senders = (0..SENDERS).map(|n| {
        let (chat, conversation, body, stop, acked, worst) =
            (&chat, &conversation, &body, stop.clone(), acked.clone(), worst_ack_us.clone());
        async move {
            let mut ws = chat.ws("writer").await;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                for _ in 0..64 {
                    seq += 1;
                    ws.send_message(conversation, &format!("s{n}-{seq}"), body).await;
                }
                for _ in 0..64 {
                    let ack = ws.next_json().await;
                    assert_eq!(ack["type"], "ack", "{ack}");
                }
                acked.fetch_add(64, Ordering::Relaxed);
                worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
    });
    // Readers keep read snapshots coming, as real history and search traffic does.
    let readers = (0..2).map(|_| {
        let (chat, conversation, stop) = (&chat, &conversation, stop.clone());
        async move {
            let history = chat.url(&format!("/api/conversations/{conversation}/messages?limit=200"));
            let search = chat.url("/api/search?q=www&limit=50");
            let token = chat.token("reader");
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(chat.http.get(&history, Some(&token)).await.0, 200);
                assert_eq!(chat.http.get(&search, Some(&token)).await.0, 200);
            }
        }
    });
    let watcher = {
        let (stop, dir) = (stop.clone(), data_dir.path().to_owned());
        async move {
            let started = Instant::now();
            let (mut storage, mut search) = (0, 0);
            while started.elapsed() < load {
                storage = storage.max(wal_size(&dir, "rampart.db"));
                search = search.max(wal_size(&dir, "search.db"));
                tokio::time::sleep(Duration::from_millis(100)).await; // sampling period
            }
            stop.store(true, Ordering::Relaxed);
            (storage, search)
        }
    };
    let ((storage_max, search_max), _, _) = futures_util::future::join3(
        watcher,
        futures_util::future::join_all(senders),
        futures_util::future::join_all(readers),
    )
    .await;
    let acked = acked.load(Ordering::Relaxed);
    eprintln!(
        "{acked} messages acked in {load:?}; WAL peaks: rampart.db {:.1} MiB, search.db {:.1} MiB; slowest 64-message round trip {} ms",
        storage_max as f64 / 1048576.0,
        search_max as f64 / 1048576.0,
        worst_ack_us.load(Ordering::Relaxed) / 1000
    );
    assert!(acked > 10_000, "the load was real: {acked} messages");
    assert!(storage_max < WAL_BOUND, "rampart.db-wal reached {storage_max} bytes");
    assert!(search_max < WAL_BOUND, "search.db-wal reached {search_max} bytes");

    // Idle: both logs are truncated.
    let dir = data_dir.path().to_owned();
    eventually("both WALs shrink when idle", Duration::from_secs(60), || {
        let sizes = (wal_size(&dir, "rampart.db"), wal_size(&dir, "search.db"));
        async move { sizes.0 < 1 << 20 && sizes.1 < 1 << 20 }
    })
    .await;
    let metrics = crate::support::scrape(&chat.process).await;
    assert!(metrics.contains("rampart_sqlite_wal_bytes{db=\"storage\"}"), "the WAL size is exported");
    // How long writers waited in blocking checkpoints: the smallest bucket holding all of them.
    for db in ["storage", "search"] {
        let count =
            crate::support::metric_value(&metrics, &format!("rampart_sqlite_checkpoint_seconds_count{{db=\"{db}\"}}"));
        let worst = metrics
            .lines()
            .filter(|line| line.starts_with("rampart_sqlite_checkpoint_seconds_bucket{"))
            .filter(|line| line.contains(&format!("db=\"{db}\"")))
            .filter_map(|line| {
                let le = line.split("le=\"").nth(1)?.split('"').next()?.to_owned();
                let value = line.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((le, value))
            })
            .find(|(_, value)| Some(*value) == count)
            .map(|(le, _)| le);
        eprintln!("{db}: {count:?} blocking checkpoints, each at most {worst:?} s");
    }
}
