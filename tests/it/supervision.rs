//! Supervision scenarios against the library: panics of every kind, strategies, intensity,
//! backoff, quarantine, stalls, restart types and shutdown order.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use rampart::supervision::*;

use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(10);

fn start_tree(config: SupervisionConfig) -> (SupervisionTree, Arc<QuarantineStore>) {
    let store = QuarantineStore::new(100);
    let context = SupervisionContext::new(store.clone());
    (SupervisionTree::start(&config, context).expect("tree starts"), store)
}

fn tree() -> SupervisionTree {
    start_tree(SupervisionConfig::default()).0
}

/// Waits until `handle`'s actor has been restarted `n` times and is running again.
async fn restarted<A: SupervisedActor>(handle: &ActorHandle<A>, n: u64) {
    let record = handle.record().clone();
    eventually(&format!("{} restarted {n} times", record.path), WAIT, || {
        let record = record.clone();
        async move { record.restarts() >= n && record.status() == ActorStatus::Running }
    })
    .await;
}

/// The newest journal entry for `path`.
fn last_entry(tree: &SupervisionTree, path: &str) -> JournalEntry {
    tree.context().journal.entries(Some(path)).pop().expect("journal entry")
}

fn assert_located_here(entry: &JournalEntry) {
    let location = entry.location.as_deref().unwrap_or("");
    assert!(location.starts_with("tests/it/supervision.rs:"), "location {location:?}");
    let line: u32 = location.rsplit(':').next().unwrap().parse().unwrap();
    assert!(line > 0);
}

// ---------------------------------------------------------------------------------------------
// The probe: a counter that can panic everywhere actix runs actor code.

#[derive(Default)]
struct Probe {
    count: u64,
}

impl Actor for Probe {
    type Context = Context<Self>;
}
rampart::supervised!(Probe);

macro_rules! message {
    ($name:ident -> $result:literal) => {
        #[derive(Debug, Message)]
        #[rtype(result = $result)]
        struct $name;
        impl SupervisedMessage for $name {}
    };
}

message!(Increment -> "u64");
message!(PanicSync -> "()");
message!(PanicInResponseFuture -> "u64");
message!(PanicInSpawned -> "()");
message!(PanicInWait -> "u64");
message!(PanicInStream -> "()");
message!(PanicInInterval -> "()");
message!(PanicInRunLater -> "()");
message!(PanicInNotify -> "()");
message!(StopSelf -> "()");

/// Sent to itself by `PanicInNotify`; not tracked (ctx.notify bypasses handles).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct NotifiedPanic;

impl Handler<Increment> for Probe {
    type Result = u64;
    fn handle(&mut self, _: Increment, _: &mut Context<Self>) -> u64 {
        self.count += 1;
        self.count
    }
}

impl Handler<PanicSync> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicSync, _: &mut Context<Self>) {
        panic!("sync handler panic");
    }
}

/// Yields once so the panic happens in a later poll than the handler call.
async fn yield_once() {
    tokio::task::yield_now().await;
}

impl Handler<PanicInResponseFuture> for Probe {
    type Result = ResponseActFuture<Self, u64>;
    fn handle(&mut self, _: PanicInResponseFuture, _: &mut Context<Self>) -> Self::Result {
        Box::pin(fut::wrap_future::<_, Self>(yield_once()).map(|(), _, _| -> u64 { panic!("response future panic") }))
    }
}

impl Handler<PanicInSpawned> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicInSpawned, ctx: &mut Context<Self>) {
        ctx.spawn(fut::wrap_future::<_, Self>(yield_once()).map(|(), _, _| panic!("spawned future panic")));
    }
}

impl Handler<PanicInWait> for Probe {
    type Result = AtomicResponse<Self, u64>;
    fn handle(&mut self, _: PanicInWait, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            fut::wrap_future::<_, Self>(yield_once()).map(|(), _, _| -> u64 { panic!("wait future panic") }),
        ))
    }
}

impl Handler<PanicInStream> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicInStream, ctx: &mut Context<Self>) {
        ctx.add_stream(futures_util::stream::iter(vec![1u32, 2, 3]));
    }
}

impl StreamHandler<u32> for Probe {
    fn handle(&mut self, item: u32, _: &mut Context<Self>) {
        if item == 2 {
            panic!("stream item panic");
        }
    }
}

impl Handler<PanicInInterval> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicInInterval, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(5), |_, _| panic!("interval panic"));
    }
}

impl Handler<PanicInRunLater> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicInRunLater, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::from_millis(5), |_, _| panic!("run_later panic"));
    }
}

impl Handler<PanicInNotify> for Probe {
    type Result = ();
    fn handle(&mut self, _: PanicInNotify, ctx: &mut Context<Self>) {
        ctx.notify(NotifiedPanic);
    }
}

impl Handler<NotifiedPanic> for Probe {
    type Result = ();
    fn handle(&mut self, _: NotifiedPanic, _: &mut Context<Self>) {
        panic!("notify panic");
    }
}

impl Handler<StopSelf> for Probe {
    type Result = ();
    fn handle(&mut self, _: StopSelf, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Counts to 3 so a reset is visible, returns the probe.
async fn counted_probe(tree: &SupervisionTree, name: &str) -> ActorHandle<Probe> {
    let probe = tree.root().spawn(ChildSpec::new(name, Probe::default)).unwrap();
    for expected in 1..=3 {
        assert_eq!(probe.send(Increment).await, Ok(expected));
    }
    probe
}

// (a) synchronous handler ----------------------------------------------------------------------

#[actix_rt::test]
async fn sync_handler_panic_restarts_with_fresh_state_behind_the_same_handle() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    // Queue the panic and two requests behind it before the actor runs again.
    let in_flight = probe.send(PanicSync);
    let queued_a = probe.send(Increment);
    let queued_b = probe.send(Increment);
    assert!(matches!(in_flight.await, Err(CallError::Failed { .. })));
    assert_eq!(queued_a.await, Ok(1), "queued message served by the fresh incarnation");
    assert_eq!(queued_b.await, Ok(2));
    assert_eq!(probe.record().restarts(), 1);

    let failure = probe.record().last_failure().expect("failure recorded");
    assert_eq!(failure.message, "sync handler panic");
    assert_eq!(failure.handling.as_deref(), Some("PanicSync"));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "sync handler panic");
    assert_eq!(entry.cause, FailureCause::Panic);
    assert!(entry.handling.is_some_and(|t| t.ends_with("PanicSync")));
    assert_eq!(entry.restart_count, 1);
    assert_located_here(&entry);
    tree.shutdown().await;
}

// (b) async handler futures ----------------------------------------------------------------------

#[actix_rt::test]
async fn response_future_panic_fails_the_caller_and_resets_state() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert!(matches!(probe.send(PanicInResponseFuture).await, Err(CallError::Failed { .. })));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1), "same handle, fresh state");
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "response future panic");
    assert_located_here(&entry);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn spawned_future_panic_restarts_the_actor() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert_eq!(probe.send(PanicInSpawned).await, Ok(()), "the handler itself completed");
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "spawned future panic");
    assert_located_here(&entry);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn wait_future_panic_fails_the_caller_and_queued_messages_reach_the_new_incarnation() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    // ctx.wait blocks the mailbox: the increments stay queued until the future ends.
    let in_flight = probe.send(PanicInWait);
    let queued_a = probe.send(Increment);
    let queued_b = probe.send(Increment);
    assert!(matches!(in_flight.await, Err(CallError::Failed { .. })));
    assert_eq!(queued_a.await, Ok(1));
    assert_eq!(queued_b.await, Ok(2));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "wait future panic");
    assert_located_here(&entry);
    tree.shutdown().await;
}

// (c) stream items ----------------------------------------------------------------------------

#[actix_rt::test]
async fn stream_item_panic_restarts_the_actor() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert_eq!(probe.send(PanicInStream).await, Ok(()));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "stream item panic");
    assert_located_here(&entry);
    tree.shutdown().await;
}

// (d) timers and notify --------------------------------------------------------------------------

#[actix_rt::test]
async fn interval_panic_restarts_and_cancels_the_old_interval() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert_eq!(probe.send(PanicInInterval).await, Ok(()));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "interval panic");
    assert_located_here(&entry);
    // The interval belonged to the old incarnation: it must not keep crashing the new one.
    let restarts = probe.record().restarts();
    for _ in 0..5 {
        assert_eq!(probe.send(Increment).await.map(|_| ()), Ok(()));
        // Not a wait for a condition: time must pass for a leftover interval (5 ms) to fire.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(probe.record().restarts(), restarts);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn run_later_panic_restarts_the_actor() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert_eq!(probe.send(PanicInRunLater).await, Ok(()));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "run_later panic");
    assert_located_here(&entry);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn notify_panic_restarts_the_actor() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert_eq!(probe.send(PanicInNotify).await, Ok(()));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message, "notify panic");
    assert_eq!(entry.handling, None, "ctx.notify messages are not tracked");
    assert_located_here(&entry);
    tree.shutdown().await;
}

// (e) started() -------------------------------------------------------------------------------

/// Panics in `started()` for the first `failures` incarnations.
struct Fragile {
    count: u64,
    attempt: u32,
    failures: u32,
}

impl Actor for Fragile {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        if self.attempt < self.failures {
            panic!("started panic on attempt {}", self.attempt);
        }
    }
}
rampart::supervised!(Fragile);

impl Handler<Increment> for Fragile {
    type Result = u64;
    fn handle(&mut self, _: Increment, _: &mut Context<Self>) -> u64 {
        self.count += 1;
        self.count
    }
}

fn fragile_spec(name: &str, failures: u32) -> ChildSpec<Fragile> {
    let attempts = Arc::new(AtomicU32::new(0));
    ChildSpec::new(name, move || Fragile { count: 0, attempt: attempts.fetch_add(1, Ordering::SeqCst), failures })
        .backoff(BackoffPolicy::IMMEDIATE)
}

#[actix_rt::test]
async fn started_panic_is_retried_and_queued_messages_wait_for_a_good_start() {
    let tree = tree();
    let fragile = tree.root().spawn(fragile_spec("fragile", 2)).unwrap();
    assert_eq!(fragile.send(Increment).await, Ok(1), "served once started() succeeds");
    assert_eq!(fragile.record().restarts(), 2);
    let entry = last_entry(&tree, fragile.path());
    assert_eq!(entry.message, "started panic on attempt 1");
    assert_located_here(&entry);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn started_panic_loop_counts_toward_intensity_and_escalates_to_a_fatal_root() {
    let config =
        SupervisionConfig { max_restarts: 2, backoff: BackoffPolicy::IMMEDIATE, ..SupervisionConfig::default() };
    let (tree, _) = start_tree(config);
    let group =
        tree.root().spawn_supervisor(SupervisorSpec::new("group").intensity(3, Duration::from_secs(60))).unwrap();
    let doomed = group.spawn(fragile_spec("doomed", u32::MAX)).unwrap();
    let reason = tokio::time::timeout(WAIT, tree.fatal()).await.expect("tree gives up instead of spinning");
    assert!(reason.contains("restart intensity exceeded in /root"), "{reason}");

    let journal = tree.context().journal.entries(None);
    let escalations = journal.iter().filter(|e| e.decision == JournalDecision::Escalate).count();
    assert!(escalations >= 2, "group and then root escalated: {escalations}");
    assert!(journal.iter().any(|e| e.actor == "/root/group" && e.cause == FailureCause::Escalation));
    // Bounded: the group escalated after 4 failed starts each time, the root after 3 group
    // restarts — no unbounded spinning.
    let doomed_failures = journal.iter().filter(|e| e.actor == doomed.path()).count();
    assert!(doomed_failures <= 4 * 3, "{doomed_failures} failures");
    tree.shutdown().await;
}

// Strategies ------------------------------------------------------------------------------------

async fn three_probes(group: &SupervisorHandle) -> Vec<ActorHandle<Probe>> {
    let mut probes = Vec::new();
    for name in ["a", "b", "c"] {
        let probe = group.spawn(ChildSpec::new(name, Probe::default)).unwrap();
        for _ in 0..3 {
            probe.send(Increment).await.unwrap();
        }
        probes.push(probe);
    }
    probes
}

#[actix_rt::test]
async fn one_for_all_restarts_every_sibling() {
    let tree = tree();
    let group = tree.root().spawn_supervisor(SupervisorSpec::new("all").strategy(Strategy::OneForAll)).unwrap();
    let probes = three_probes(&group).await;
    assert!(probes[0].send(PanicSync).await.is_err());
    for probe in &probes {
        restarted(probe, 1).await;
        assert_eq!(probe.send(Increment).await, Ok(1), "{} reset", probe.path());
    }
    tree.shutdown().await;
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    let tree = tree();
    let group = tree.root().spawn_supervisor(SupervisorSpec::new("rest").strategy(Strategy::RestForOne)).unwrap();
    let probes = three_probes(&group).await;
    assert!(probes[1].send(PanicSync).await.is_err());
    restarted(&probes[1], 1).await;
    restarted(&probes[2], 1).await;
    assert_eq!(probes[1].send(Increment).await, Ok(1));
    assert_eq!(probes[2].send(Increment).await, Ok(1));
    assert_eq!(probes[0].send(Increment).await, Ok(4), "started before the failed child: untouched");
    assert_eq!(probes[0].record().restarts(), 0);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn one_for_one_leaves_siblings_alone() {
    let tree = tree();
    let group = tree.root().spawn_supervisor(SupervisorSpec::new("one")).unwrap();
    let probes = three_probes(&group).await;
    assert!(probes[1].send(PanicSync).await.is_err());
    restarted(&probes[1], 1).await;
    assert_eq!(probes[0].send(Increment).await, Ok(4));
    assert_eq!(probes[2].send(Increment).await, Ok(4));
    tree.shutdown().await;
}

// Intensity and escalation ---------------------------------------------------------------------

#[actix_rt::test]
async fn intensity_exceeded_escalates_and_the_parent_restarts_the_whole_subtree() {
    let config = SupervisionConfig { backoff: BackoffPolicy::IMMEDIATE, ..SupervisionConfig::default() };
    let (tree, _) = start_tree(config);
    let group =
        tree.root().spawn_supervisor(SupervisorSpec::new("group").intensity(2, Duration::from_secs(60))).unwrap();
    let probes = three_probes(&group).await;
    let failing = &probes[0];
    // Two restarts fit the intensity; the third failure exceeds it.
    for n in 1..=2 {
        assert!(failing.send(PanicSync).await.is_err());
        restarted(failing, n).await;
    }
    assert_eq!(probes[1].send(Increment).await, Ok(4), "one_for_one so far: sibling untouched");
    assert!(failing.send(PanicSync).await.is_err());

    // The group gave up, the root restarted it, and a restarted supervisor restarts its subtree.
    let group_record = group.actor().record().clone();
    eventually("group restarted by the root", WAIT, || {
        let record = group_record.clone();
        async move { record.restarts() == 1 && record.status() == ActorStatus::Running }
    })
    .await;
    for probe in &probes[1..] {
        restarted(probe, 1).await;
        assert_eq!(probe.send(Increment).await, Ok(1), "{} restarted with the subtree", probe.path());
    }
    restarted(failing, 3).await;
    assert_eq!(failing.send(Increment).await, Ok(1));

    let group_entry = last_entry(&tree, "/root/group");
    assert_eq!(group_entry.cause, FailureCause::Escalation);
    assert!(group_entry.message.contains("restart intensity exceeded in /root/group"), "{}", group_entry.message);
    let escalated = tree.context().journal.entries(Some(failing.path()));
    assert!(escalated.iter().any(|e| e.decision == JournalDecision::Escalate));
    tree.shutdown().await;
}

#[actix_rt::test]
async fn root_escalation_is_fatal_not_a_hang() {
    let config =
        SupervisionConfig { max_restarts: 1, backoff: BackoffPolicy::IMMEDIATE, ..SupervisionConfig::default() };
    let (tree, _) = start_tree(config);
    let probe = tree.root().spawn(ChildSpec::new("probe", Probe::default)).unwrap();
    assert!(probe.send(PanicSync).await.is_err());
    restarted(&probe, 1).await;
    assert!(probe.send(PanicSync).await.is_err());
    let reason = tokio::time::timeout(WAIT, tree.fatal()).await.expect("fatal reported");
    assert!(reason.contains("restart intensity exceeded in /root"), "{reason}");
    tokio::time::timeout(WAIT, tree.shutdown()).await.expect("shutdown completes after a fatal error");
    assert_eq!(probe.record().status(), ActorStatus::Stopped);
}

#[actix_rt::test]
async fn root_panic_restarts_the_root_and_its_children() {
    let tree = tree();
    let probe = counted_probe(&tree, "probe").await;
    assert!(tree.root().actor().record().trigger_chaos_panic());
    let root = tree.root().actor().record().clone();
    eventually("root restarted", WAIT, || {
        let root = root.clone();
        async move { root.restarts() == 1 }
    })
    .await;
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    tree.shutdown().await;
}

// Backoff ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn backoff_ceiling_doubles_between_consecutive_restarts() {
    let tree = tree();
    let policy = BackoffPolicy {
        base: Duration::from_millis(40),
        max: Duration::from_secs(1),
        reset_after: Duration::from_secs(60),
    };
    let probe = tree.root().spawn(ChildSpec::new("probe", Probe::default).backoff(policy)).unwrap();
    let mut waited = Vec::new();
    for n in 1..=4u64 {
        let panicked_at = Instant::now();
        assert!(probe.send(PanicSync).await.is_err());
        restarted(&probe, n).await;
        waited.push(panicked_at.elapsed());
    }
    let entries = tree.context().journal.entries(Some(probe.path()));
    let decisions: Vec<(u64, u64)> = entries
        .iter()
        .map(|entry| match entry.decision {
            JournalDecision::Restart { delay_ms, ceiling_ms } => (delay_ms, ceiling_ms),
            ref other => panic!("unexpected decision {other:?}"),
        })
        .collect();
    let ceilings: Vec<u64> = decisions.iter().map(|(_, ceiling)| *ceiling).collect();
    assert_eq!(ceilings, vec![0, 40, 80, 160], "first restart immediate, then doubling");
    for ((delay_ms, ceiling_ms), waited) in decisions.iter().zip(&waited) {
        assert!(delay_ms <= ceiling_ms);
        assert!(waited.as_millis() as u64 + 1 >= *delay_ms, "restart waited {waited:?} < {delay_ms}ms");
    }
    tree.shutdown().await;
}

// Quarantine ------------------------------------------------------------------------------------

#[derive(Debug, Message)]
#[rtype(result = "String")]
struct Deliver {
    id: String,
}

impl SupervisedMessage for Deliver {
    fn key(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

impl Handler<Deliver> for Probe {
    type Result = String;
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> String {
        if msg.id == "poison" {
            panic!("cannot deliver {}", msg.id);
        }
        "delivered".to_owned()
    }
}

#[actix_rt::test]
async fn a_message_that_keeps_crashing_its_actor_is_quarantined() {
    let config = SupervisionConfig { backoff: BackoffPolicy::IMMEDIATE, ..SupervisionConfig::default() };
    let (tree, store) = start_tree(config);
    let probe = tree.root().spawn(ChildSpec::new("probe", Probe::default)).unwrap();
    for n in 1..=3 {
        let result = probe.send(Deliver { id: "poison".into() }).await;
        assert!(matches!(result, Err(CallError::Failed { .. })), "crash {n}: {result:?}");
        restarted(&probe, n).await;
    }
    let result = probe.send(Deliver { id: "poison".into() }).await;
    assert_eq!(result, Err(CallError::Quarantined { actor: "/root/probe".into(), key: "poison".into() }));
    assert_eq!(probe.record().restarts(), 3, "the quarantined delivery did not crash the actor");
    assert_eq!(probe.send(Deliver { id: "fine".into() }).await, Ok("delivered".to_owned()), "other keys unaffected");

    let records = store.records();
    assert!(
        matches!(&records[0].event, QuarantineEvent::Quarantined { crashes: 3, last_panic, .. } if last_panic == "cannot deliver poison")
    );
    assert_eq!(records[0].message_type, "Deliver");
    assert!(matches!(&records[1].event, QuarantineEvent::Diverted { payload } if payload.contains("poison")));
    assert_eq!(probe.record().quarantined_keys(), 1);
    let entry = last_entry(&tree, probe.path());
    assert_eq!(entry.message_key.as_deref(), Some("poison"));
    tree.shutdown().await;
}

// Stalls ----------------------------------------------------------------------------------------

struct Sleeper;

impl Actor for Sleeper {
    type Context = Context<Self>;
}
rampart::supervised!(Sleeper);

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct BlockFor(Duration);
impl SupervisedMessage for BlockFor {}

impl Handler<BlockFor> for Sleeper {
    type Result = ();
    fn handle(&mut self, msg: BlockFor, _: &mut Context<Self>) {
        // Deliberately blocks its arbiter thread: that is what a stall looks like.
        std::thread::sleep(msg.0);
    }
}

#[actix_rt::test]
async fn a_handler_blocking_past_the_threshold_is_reported_as_stalled() {
    let tree = tree();
    let arbiter = Arbiter::new();
    let sleeper = tree
        .root()
        .spawn(
            ChildSpec::new("sleeper", || Sleeper)
                .stall_threshold(Duration::from_millis(100))
                .on_arbiter(arbiter.handle()),
        )
        .unwrap();
    let reply = sleeper.send(BlockFor(Duration::from_millis(600)));
    let record = sleeper.record().clone();
    let watched = record.clone();
    eventually("stall flagged while the handler blocks", WAIT, || {
        let record = watched.clone();
        async move { record.is_stalled() }
    })
    .await;
    assert_eq!(record.stalls(), 1);
    assert_eq!(reply.await, Ok(()), "a stall is reported, not killed");
    let watched = record.clone();
    eventually("stall flag cleared", WAIT, || {
        let record = watched.clone();
        async move { !record.is_stalled() }
    })
    .await;
    assert_eq!(sleeper.send(BlockFor(Duration::ZERO)).await, Ok(()));
    assert_eq!(record.stalls(), 1);
    tree.shutdown().await;
    arbiter.stop();
}

// Actors on other arbiters ---------------------------------------------------------------------

#[actix_rt::test]
async fn children_on_another_arbiter_are_supervised_the_same_way() {
    let tree = tree();
    let arbiter = Arbiter::new();
    let probe = tree.root().spawn(ChildSpec::new("remote", Probe::default).on_arbiter(arbiter.handle())).unwrap();
    assert_eq!(probe.send(Increment).await, Ok(1));
    assert!(matches!(probe.send(PanicSync).await, Err(CallError::Failed { .. })));
    assert_eq!(probe.send(Increment).await, Ok(1));
    let entry = last_entry(&tree, probe.path());
    assert_ne!(entry.thread.as_deref(), std::thread::current().name());
    tree.shutdown().await;
    arbiter.stop();
}

// Restart types ---------------------------------------------------------------------------------

#[actix_rt::test]
async fn temporary_children_are_not_restarted_and_leave_the_tree() {
    let tree = tree();
    let probe = tree.root().spawn(ChildSpec::new("session", Probe::default).restart(RestartType::Temporary)).unwrap();
    assert!(probe.send(PanicSync).await.is_err());
    let record = probe.record().clone();
    eventually("temporary child stopped", WAIT, || {
        let record = record.clone();
        async move { record.status() == ActorStatus::Stopped }
    })
    .await;
    assert!(tree.context().registry.get("/root/session").is_none());
    assert!(matches!(probe.send(Increment).await, Err(CallError::Stopped { .. })));
    assert_eq!(record.restarts(), 0);
    // The name is free again for a new session.
    let again = tree.root().spawn(ChildSpec::new("session", Probe::default).restart(RestartType::Temporary)).unwrap();
    assert_eq!(again.send(Increment).await, Ok(1));
    tree.shutdown().await;
}

#[actix_rt::test]
async fn transient_children_stay_stopped_after_a_normal_stop_but_restart_after_a_panic() {
    let tree = tree();
    let probe = tree.root().spawn(ChildSpec::new("transient", Probe::default).restart(RestartType::Transient)).unwrap();
    assert!(probe.send(PanicSync).await.is_err());
    assert_eq!(probe.send(Increment).await, Ok(1), "restarted after a panic");
    assert_eq!(probe.send(StopSelf).await, Ok(()));
    let record = probe.record().clone();
    eventually("transient child stopped", WAIT, || {
        let record = record.clone();
        async move { record.status() == ActorStatus::Stopped }
    })
    .await;
    assert!(matches!(probe.send(Increment).await, Err(CallError::Stopped { .. })));
    tree.shutdown().await;
}

#[actix_rt::test]
async fn permanent_children_are_restarted_even_after_a_normal_stop() {
    let tree = tree();
    let probe = counted_probe(&tree, "permanent").await;
    assert_eq!(probe.send(StopSelf).await, Ok(()));
    restarted(&probe, 1).await;
    assert_eq!(probe.send(Increment).await, Ok(1));
    assert_eq!(last_entry(&tree, probe.path()).cause, FailureCause::Exit);
    tree.shutdown().await;
}

// Shutdown --------------------------------------------------------------------------------------

struct Recorder {
    name: &'static str,
    stopped: Arc<Mutex<Vec<&'static str>>>,
    refuse_to_stop: bool,
}

impl Actor for Recorder {
    type Context = Context<Self>;
    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.refuse_to_stop {
            Running::Continue
        } else {
            Running::Stop
        }
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.stopped.lock().push(self.name);
    }
}
rampart::supervised!(Recorder);

#[actix_rt::test]
async fn shutdown_stops_children_in_reverse_start_order_and_drops_stragglers() {
    let tree = tree();
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (name, refuse_to_stop) in [("first", false), ("stubborn", true), ("last", false)] {
        let stopped = stopped.clone();
        let spec = ChildSpec::new(name, move || Recorder { name, stopped: stopped.clone(), refuse_to_stop })
            .shutdown_timeout(Duration::from_millis(200));
        handles.push(tree.root().spawn(spec).unwrap());
    }
    for handle in &handles {
        let record = handle.record().clone();
        eventually("child running", WAIT, || {
            let record = record.clone();
            async move { record.status() == ActorStatus::Running }
        })
        .await;
    }
    let started = Instant::now();
    tokio::time::timeout(WAIT, tree.shutdown()).await.expect("shutdown completes");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(*stopped.lock(), vec!["last", "first"], "reverse order; the stubborn one was dropped");
    for handle in &handles {
        assert_eq!(handle.record().status(), ActorStatus::Stopped);
    }
}

// Handle semantics ------------------------------------------------------------------------------

#[actix_rt::test]
async fn send_queues_the_message_when_called_not_when_awaited() {
    // Regression: a lazily-sending `send` reordered requests awaited out of order and made the
    // "queued behind a panic" scenarios vacuous.
    let tree = tree();
    let probe = tree.root().spawn(ChildSpec::new("probe", Probe::default)).unwrap();
    let first = probe.send(Increment);
    let second = probe.send(Increment);
    assert_eq!(second.await, Ok(2));
    assert_eq!(first.await, Ok(1));
    tree.shutdown().await;
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct WaitFor(Duration);
impl SupervisedMessage for WaitFor {}

impl Handler<WaitFor> for Sleeper {
    type Result = ();
    fn handle(&mut self, msg: WaitFor, ctx: &mut Context<Self>) {
        // Does not block the thread, but blocks this actor's mailbox for the whole duration.
        ctx.wait(fut::wrap_future::<_, Self>(tokio::time::sleep(msg.0)));
    }
}

#[actix_rt::test]
async fn a_mailbox_held_by_a_ctx_wait_future_past_the_threshold_is_reported_as_stalled() {
    let tree = tree();
    let sleeper =
        tree.root().spawn(ChildSpec::new("waiter", || Sleeper).stall_threshold(Duration::from_millis(100))).unwrap();
    assert_eq!(sleeper.send(WaitFor(Duration::from_millis(600))).await, Ok(()));
    // A message now waits behind the ctx.wait future.
    let queued = sleeper.send(BlockFor(Duration::ZERO));
    let record = sleeper.record().clone();
    let watched = record.clone();
    eventually("stall flagged while ctx.wait blocks the mailbox", WAIT, || {
        let record = watched.clone();
        async move { record.is_stalled() }
    })
    .await;
    // Served once the wait ends; the flag clears.
    assert_eq!(queued.await, Ok(()));
    let watched = record.clone();
    eventually("stall flag cleared", WAIT, || {
        let record = watched.clone();
        async move { !record.is_stalled() }
    })
    .await;
    assert_eq!(record.stalls(), 1);
    tree.shutdown().await;
}

// Dynamic children ------------------------------------------------------------------------------

#[actix_rt::test]
async fn dynamic_children_come_and_go_and_large_groups_are_summarized() {
    let tree = tree();
    let sessions = tree.root().spawn_supervisor(SupervisorSpec::new("sessions").dynamic()).unwrap();
    let mut handles = Vec::new();
    for i in 0..60 {
        let spec = ChildSpec::new(format!("s{i}"), Probe::default).restart(RestartType::Temporary);
        handles.push(sessions.spawn(spec).unwrap());
    }
    assert_eq!(handles[7].send(Increment).await, Ok(1));
    let registry = &tree.context().registry;
    let rows = registry.listing(50);
    let summary = rows
        .iter()
        .find_map(|row| match row {
            ListingRow::Group(summary) => Some(summary.clone()),
            ListingRow::Actor(_) => None,
        })
        .expect("large dynamic group summarized");
    assert_eq!(summary.path, "/root/sessions/*");
    assert_eq!(summary.count, 60);
    assert!(rows.iter().all(|row| !matches!(row, ListingRow::Actor(r) if r.path.starts_with("/root/sessions/"))));
    assert!(rows.iter().any(|row| matches!(row, ListingRow::Actor(r) if r.path == "/root/sessions")));

    // A temporary child that ends leaves the tree; the group shrinks below the limit and is
    // listed child by child again.
    for handle in handles.drain(..15) {
        assert!(handle.send(PanicSync).await.is_err());
    }
    let watched = sessions.clone();
    eventually("ended sessions removed", WAIT, || {
        let sessions = watched.clone();
        async move { sessions.child_count() == 45 }
    })
    .await;
    let rows = registry.listing(50);
    assert!(rows.iter().all(|row| matches!(row, ListingRow::Actor(_))));
    assert_eq!(
        rows.iter().filter(|row| matches!(row, ListingRow::Actor(r) if r.path.starts_with("/root/sessions/"))).count(),
        45
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn an_ended_child_frees_its_record_and_mailbox() {
    // Regression: the chaos trigger stored in each record held the record itself (and the
    // actor's address), so every actor ever spawned stayed in memory after it ended: ~1 KiB per
    // WebSocket session or SFU peer, found with heaptrack over the SFU's join/leave cycles.
    let tree = tree();
    let sessions = tree.root().spawn_supervisor(SupervisorSpec::new("sessions").dynamic()).unwrap();
    let handle = sessions.spawn(ChildSpec::new("s0", Probe::default).restart(RestartType::Transient)).unwrap();
    assert_eq!(handle.send(Increment).await, Ok(1));
    let record = Arc::downgrade(handle.record());
    assert_eq!(handle.send(StopSelf).await, Ok(()));
    let watched = sessions.clone();
    eventually("the ended child leaves the tree", WAIT, || {
        let sessions = watched.clone();
        async move { sessions.child_count() == 0 }
    })
    .await;
    drop(handle);
    eventually("the ended child's record is freed", WAIT, || {
        let record = record.clone();
        async move { record.upgrade().is_none() }
    })
    .await;
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_child_nobody_holds_a_handle_to_is_restarted_after_a_chaos_panic() {
    // Regression: with the record's chaos trigger no longer holding the actor's address, a
    // timer-driven job whose handle nobody kept (the cleanup job) had no sender left; after a
    // chaos panic its new incarnation stopped at once instead of running on. The tree holds
    // every child's address while it is in the tree.
    let tree = tree();
    let handle = tree.root().spawn(ChildSpec::new("job", Probe::default)).unwrap();
    assert_eq!(handle.send(Increment).await, Ok(1));
    let record = handle.record().clone();
    drop(handle);
    assert!(record.trigger_chaos_panic(), "the chaos trigger reaches a child nobody holds");
    let watched = record.clone();
    eventually("the job restarted and running", WAIT, || {
        let record = watched.clone();
        async move { record.restarts() == 1 && record.status() == ActorStatus::Running }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // A quiet window: it must stay up.
    assert_eq!(record.status(), ActorStatus::Running);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_child_on_another_arbiter_failing_at_once_is_still_restarted() {
    // Regression: the slot was registered after the runner started, so a child on another
    // thread could fail before its supervisor knew it and was stopped instead of restarted.
    let (tree, _) = start_tree(SupervisionConfig { max_restarts: 100, ..SupervisionConfig::default() });
    let arbiter = Arbiter::new();
    for round in 0..20 {
        let fragile =
            tree.root().spawn(fragile_spec(&format!("remote{round}"), 1).on_arbiter(arbiter.handle())).unwrap();
        assert_eq!(fragile.send(Increment).await, Ok(1), "round {round}");
        assert_eq!(fragile.record().restarts(), 1);
    }
    tree.shutdown().await;
    arbiter.stop();
}
