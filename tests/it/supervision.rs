//! Supervision scenarios against the library: panics of every kind, strategies, intensity,
//! backoff, quarantine, stalls.

use std::time::Duration;

use actix::prelude::*;
use rampart::supervision::*;

use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(10);

fn tree() -> SupervisionTree {
    let context = SupervisionContext::new(QuarantineStore::new(100));
    SupervisionTree::start(&SupervisionConfig::default(), context).expect("tree starts")
}

/// A counter whose handlers panic in every way actix lets code run.
#[derive(Default)]
struct Counter {
    count: u64,
}

impl Actor for Counter {
    type Context = Context<Self>;
}
rampart::supervised!(Counter);

#[derive(Debug, Message)]
#[rtype(result = "u64")]
struct Increment;
impl SupervisedMessage for Increment {}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct PanicNow;
impl SupervisedMessage for PanicNow {}

impl Handler<Increment> for Counter {
    type Result = u64;
    fn handle(&mut self, _: Increment, _: &mut Context<Self>) -> u64 {
        self.count += 1;
        self.count
    }
}

impl Handler<PanicNow> for Counter {
    type Result = ();
    fn handle(&mut self, _: PanicNow, _: &mut Context<Self>) {
        panic!("sync handler panic");
    }
}

#[actix_rt::test]
async fn sync_handler_panic_restarts_with_fresh_state_behind_the_same_handle() {
    let tree = tree();
    let counter = tree.root().spawn(ChildSpec::new("counter", Counter::default)).unwrap();
    assert_eq!(counter.send(Increment).await, Ok(1));
    assert_eq!(counter.send(Increment).await, Ok(2));
    // Queue the panic and two more requests behind it before the actor runs again.
    let in_flight = counter.send(PanicNow);
    let queued_a = counter.send(Increment);
    let queued_b = counter.send(Increment);
    assert!(matches!(in_flight.await, Err(CallError::Failed { .. })));
    assert_eq!(queued_a.await, Ok(1), "queued message served by the fresh incarnation");
    assert_eq!(queued_b.await, Ok(2));
    assert_eq!(counter.record().restarts(), 1);
    let failure = counter.record().last_failure().expect("failure recorded");
    assert_eq!(failure.message, "sync handler panic");
    assert_eq!(failure.handling.as_deref(), Some("PanicNow"));
    assert!(failure.location.unwrap().starts_with("tests/it/supervision.rs:"));
    tree.shutdown().await;
}
