//! Cost of one log event on the caller's thread: rampart's subscriber (format in memory, one
//! `try_send` into the log writer's queue, drained by another thread as the writer actor does)
//! vs tracing-subscriber's fmt layer writing the same JSON straight to a sink (`io::sink`, so the
//! baseline pays no I/O at all — the most favourable case for it).
//!
//! A third line shows the fmt layer writing to a real file descriptor (/dev/null), the cost a
//! caller pays when it writes its own logs.
//!
//! Run: `cargo bench -p rampart-bench --bench logging` (see README "Benchmarks").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use rampart::logging::LogConfig;
use rampart::logging::LogPipe;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

fn log_one(seq: u64) {
    tracing::info!(seq, user = "alice", conversation = "c-42", "message committed");
}

/// Times `log_one` with `subscriber` as this thread's default.
fn bench_with(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, subscriber: impl Subscriber + Send + Sync) {
    tracing::subscriber::with_default(subscriber, || {
        let mut seq = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                seq += 1;
                log_one(seq);
            })
        });
    });
}

/// The fmt layer writing on the caller's thread, in the binary's JSON format (same constructor).
fn direct<W>(writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(rampart::logging::json_layer(writer, false))
}

fn bench_log_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_event");
    bench_with(&mut group, "fmt layer -> io::sink (caller writes)", direct(std::io::sink));

    // The realistic direct case: one write(2) per event, here to /dev/null (a pipe or a terminal
    // costs more, and blocks the caller when the reader stalls).
    let dev_null = Arc::new(std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null"));
    bench_with(&mut group, "fmt layer -> /dev/null (caller writes, one syscall)", direct(dev_null));

    let config = LogConfig { queue_capacity: 65536, ..LogConfig::default() };
    let pipe: &'static LogPipe = Box::leak(Box::new(LogPipe::new(config.queue_capacity)));
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-log-drain".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // Like the writer under load: drain in batches, rest when empty (without
                    // spinning on the second of two cores, which would tax the caller instead).
                    if pipe.drain_into(&mut batch, 1024) == 0 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    batch.clear();
                }
            })
            .expect("drain thread")
    };
    let subscriber = rampart::logging::subscriber(&config, pipe).expect("subscriber");
    bench_with(&mut group, "rampart queue -> log writer (caller enqueues)", subscriber);
    stop.store(true, Ordering::Relaxed);
    drainer.join().expect("drain thread");
    println!("events dropped during the rampart run (queue full): {}", pipe.dropped());
    group.finish();
}

criterion_group!(benches, bench_log_event);
criterion_main!(benches);
