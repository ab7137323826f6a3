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
