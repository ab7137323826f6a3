//! Request-reply round trips through one actor, side by side in one run:
//! a supervised rampart actor, a bare actix actor, kameo 0.22 and ractor 0.16 — same message
//! shape (`Ping(u64)` answered with `u64`), each runtime on one current-thread executor so the
//! caller and the actor share a thread in every case.
//!
//! Then rampart's restart latency: panic → the next reply served, p50/p99/p999.
//!
//! Run: `cargo bench -p rampart-bench` (see README "Benchmarks").

use std::hint::black_box;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, Criterion};
use rampart::supervision::{
    BackoffPolicy, CallError, ChildSpec, QuarantineStore, SupervisionConfig, SupervisionContext, SupervisionTree,
};
use rampart_bench::{Crash, Echo, Ping};

fn bench_tree() -> SupervisionTree {
    // Restart-latency runs panic tens of thousands of times: no intensity limit to hit, no backoff.
    let config = SupervisionConfig {
        max_restarts: u32::MAX,
        within: Duration::from_millis(100),
        backoff: BackoffPolicy::IMMEDIATE,
        ..SupervisionConfig::default()
    };
    SupervisionTree::start(&config, SupervisionContext::new(QuarantineStore::new(16))).expect("tree")
}

// ---------------------------------------------------------------------------------------------
// kameo

mod kameo_echo {
    use kameo::message::{Context, Message};
    use kameo::Actor;

    #[derive(Actor)]
    pub struct Echo;

    pub struct Ping(pub u64);

    impl Message<Ping> for Echo {
        type Reply = u64;
        async fn handle(&mut self, msg: Ping, _: &mut Context<Self, Self::Reply>) -> u64 {
            msg.0 + 1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ractor

mod ractor_echo {
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    pub struct Echo;

    pub enum Msg {
        Ping(u64, RpcReplyPort<u64>),
    }

    impl Actor for Echo {
        type Msg = Msg;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(&self, _: ActorRef<Msg>, msg: Msg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            let Msg::Ping(n, reply) = msg;
            let _ = reply.send(n + 1);
            Ok(())
        }
    }
}

// Each runtime's loop is its own out-of-line function, so every contender is compiled the same
// way (inlining a loop into criterion's closure changed results by ~10% for some of them).

#[inline(never)]
async fn rampart_rounds(echo: &rampart::supervision::ActorHandle<Echo>, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        black_box(echo.send(Ping(black_box(i))).await.expect("reply"));
    }
    start.elapsed()
}

#[inline(never)]
async fn actix_rounds(echo: &Addr<Echo>, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        black_box(echo.send(Ping(black_box(i))).await.expect("reply"));
    }
    start.elapsed()
}

#[inline(never)]
async fn kameo_rounds(echo: &kameo::actor::ActorRef<kameo_echo::Echo>, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        black_box(echo.ask(kameo_echo::Ping(black_box(i))).await.expect("reply"));
    }
    start.elapsed()
}

#[inline(never)]
async fn ractor_rounds(echo: &ractor::ActorRef<ractor_echo::Msg>, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let reply = echo.call(|port| ractor_echo::Msg::Ping(black_box(i), port), None).await.expect("call");
        black_box(reply.expect("reply"));
    }
    start.elapsed()
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_reply");
    group.measurement_time(Duration::from_secs(5));

    let system = actix_rt::System::new();
    let (tree, supervised) = system.block_on(async {
        let tree = bench_tree();
        let echo = tree.root().spawn(ChildSpec::new("echo", || Echo)).expect("spawn");
        (tree, echo)
    });
    let bare = system.block_on(async { Echo.start() });
    group.bench_function("actix_bare", |b| b.iter_custom(|iters| system.block_on(actix_rounds(&bare, iters))));
    group.bench_function("rampart_supervised", |b| {
        b.iter_custom(|iters| system.block_on(rampart_rounds(&supervised, iters)))
    });
    system.block_on(tree.shutdown());

    let runtime = current_thread_runtime();
    let kameo_ref = runtime.block_on(async {
        use kameo::actor::Spawn;
        kameo_echo::Echo::spawn(kameo_echo::Echo)
    });
    group.bench_function("kameo_0.22", |b| b.iter_custom(|iters| runtime.block_on(kameo_rounds(&kameo_ref, iters))));

    let (ractor_ref, _ractor_task) =
        runtime.block_on(ractor::Actor::spawn(None, ractor_echo::Echo, ())).expect("ractor spawn");
    group.bench_function("ractor_0.16", |b| b.iter_custom(|iters| runtime.block_on(ractor_rounds(&ractor_ref, iters))));
    group.finish();
    ractor_ref.stop(None);
}

/// Panic → next reply served, measured end to end from the caller's side.
fn restart_latency() {
    const SAMPLES: usize = 20_000;
    const WARMUP: usize = 500;
    let system = actix_rt::System::new();
    let mut latencies = system.block_on(async {
        let tree = bench_tree();
        let echo = tree.root().spawn(ChildSpec::new("echo", || Echo)).expect("spawn");
        let mut latencies = Vec::with_capacity(SAMPLES);
        for round in 0..WARMUP + SAMPLES {
            let start = Instant::now();
            let failed = echo.send(Crash).await;
            assert!(matches!(failed, Err(CallError::Failed { .. })), "{failed:?}");
            black_box(echo.send(Ping(1)).await.expect("served after restart"));
            if round >= WARMUP {
                latencies.push(start.elapsed());
            }
        }
        assert_eq!(echo.record().restarts(), (WARMUP + SAMPLES) as u64);
        tree.shutdown().await;
        latencies
    });
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "restart_latency (panic -> next reply served, {SAMPLES} samples): p50 {:?}  p99 {:?}  p999 {:?}  max {:?}",
        percentile(0.50),
        percentile(0.99),
        percentile(0.999),
        latencies[latencies.len() - 1],
    );
}

criterion_group!(benches, round_trip);

fn main() {
    // Contained panics are reported by the supervisor, not printed; keep the output readable.
    rampart::supervision::install_panic_hook();
    benches();
    restart_latency();
    Criterion::default().configure_from_args().final_summary();
}
