//! What the benchmark and the profiling example share: one echo actor, the same message shape
//! for every runtime under comparison.

use actix::prelude::*;
use rampart::supervision::SupervisedMessage;

/// Answers `Ping(n)` with `n + 1`; panics on `Crash` (restart-latency measurements).
pub struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}
rampart::supervised!(Echo);

#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct Ping(pub u64);
impl SupervisedMessage for Ping {}

impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u64 {
        msg.0 + 1
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Crash;
impl SupervisedMessage for Crash {}

impl Handler<Crash> for Echo {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("benchmark crash");
    }
}

/// The real app on a thread of its own, as the benchmarks run it: `stop` ends it with an orderly
/// shutdown; join `thread` to wait for it.
pub struct RunningApp {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts `rampart::app::run(config)` on its own thread and actix system.
pub fn spawn_app(config: rampart::config::Config) -> RunningApp {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
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
    RunningApp { stop, thread }
}

/// Waits until `base` answers `/health`, failing after `deadline`.
pub async fn wait_healthy(base: &str, deadline: std::time::Duration) {
    let http = awc::Client::builder().timeout(std::time::Duration::from_secs(10)).finish();
    let started = std::time::Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(started.elapsed() < deadline, "rampart at {base} did not start within {deadline:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // Start-up poll.
    }
}
