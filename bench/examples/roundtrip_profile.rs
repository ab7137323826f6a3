//! Profiling aid: the same round trips as the benchmark, for `valgrind --tool=callgrind`.
//!
//! ```sh
//! cargo build -p rampart-bench --release --example roundtrip_profile
//! valgrind --tool=callgrind target/release/examples/roundtrip_profile bare        # or: supervised
//! target/release/examples/roundtrip_profile timed   # wall clock: bare, runner-only, full handle
//! ```

use std::hint::black_box;

use actix::prelude::*;
use rampart::supervision::{ChildSpec, QuarantineStore, SupervisionConfig, SupervisionContext, SupervisionTree};
use rampart_bench::{Echo, Ping};

const ROUNDS: u64 = 100_000;

#[inline(never)]
async fn supervised_rounds(echo: &rampart::supervision::ActorHandle<Echo>) {
    for i in 0..ROUNDS {
        black_box(echo.send(Ping(i)).await.unwrap());
    }
}

#[inline(never)]
async fn bare_rounds(echo: &Addr<Echo>) {
    for i in 0..ROUNDS {
        black_box(echo.send(Ping(i)).await.unwrap());
    }
}

fn main() {
    let system = actix_rt::System::new();
    system.block_on(async {
        let tree =
            SupervisionTree::start(&SupervisionConfig::default(), SupervisionContext::new(QuarantineStore::new(1)))
                .unwrap();
        let supervised = tree.root().spawn(ChildSpec::new("echo", || Echo)).unwrap();
        let bare = Echo.start();
        match std::env::args().nth(1).as_deref() {
            Some("bare") => bare_rounds(&bare).await,
            Some("none") => {}
            Some("runner-raw") => bare_rounds(supervised.addr()).await,
            Some("timed") => {
                for _ in 0..3 {
                    for (name, run) in [("bare", 0), ("runner-raw", 1), ("supervised", 2)] {
                        let start = std::time::Instant::now();
                        match run {
                            0 => bare_rounds(&bare).await,
                            1 => bare_rounds(supervised.addr()).await,
                            _ => supervised_rounds(&supervised).await,
                        }
                        println!("{name:>12}: {:?}/round trip", start.elapsed() / ROUNDS as u32);
                    }
                }
            }
            _ => supervised_rounds(&supervised).await,
        }
        tree.shutdown().await;
    });
}
