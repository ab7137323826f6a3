//! A Kafka consumer on a thread of its own, owned by an actor.
//!
//! Owns: one `BaseConsumer`, and every blocking librdkafka call made on it: `poll`, the rebalance
//! callbacks (a revoke commits the stored offsets synchronously before the partitions go), the
//! final commit and `close`. The owning actor receives `Event`s (records in batches, assignments,
//! revocations) on a channel and answers with `Command`s (offsets to store). Dropping the
//! `ConsumerThread` tells the thread to commit and close; nobody waits for it, so a close that
//! hangs while the brokers are down (a known librdkafka behaviour) hangs only that thread.
//!
//! Flow control: `outstanding` counts records handed to the actor and not finished yet. Above
//! `high` the thread pauses its whole assignment, at `high / 2` it resumes it; it keeps polling
//! either way, so the group never sees it as stuck (`max.poll.interval.ms`).
//!
//! Offsets: the actor stores only offsets below which every record is finished; librdkafka
//! commits stored offsets every second (`enable.auto.offset.store=false`), on revoke and on close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::record::Record;

/// What the consumer thread tells its actor.
#[derive(Debug)]
pub enum Event {
    /// Records in partition order (each partition's records in offset order).
    Records(Vec<Record>),
    /// Partitions this consumer now owns, under a new generation: records of an earlier
    /// generation of a partition must not store offsets any more.
    Assigned { partitions: Vec<i32>, generation: u64 },
    /// Partitions taken away; their stored offsets were committed first.
    Revoked(Vec<i32>),
}

/// What the actor tells the thread.
enum Command {
    /// Store these next offsets (partition → first offset not finished) for the next commit.
    Store(Vec<(i32, i64)>),
    /// Stop fetching (shutdown drain); stored offsets are still committed.
    Pause,
}

/// How a consumer gets its partitions.
pub enum Mode {
    /// Subscribed in a consumer group that shares the partitions out and commits the offsets
    /// the actor stores (the writer).
    Group,
    /// Every partition, assigned directly (no group, no rebalances, nothing committed), each
    /// from the position in `positions` or else from its end. The actor keeps `positions`
    /// current, so a restarted consumer resumes where the last one stopped (the feed).
    Assign { positions: Arc<parking_lot::Mutex<HashMap<i32, i64>>> },
}

/// The settings of one consumer.
pub struct ConsumerSpec {
    pub name: &'static str,
    pub client: ClientConfig,
    pub topic: String,
    pub group: String,
    pub mode: Mode,
    pub session_timeout: Duration,
    /// Pause above this many outstanding records.
    pub high: usize,
    /// Per-partition lag gauges are set from librdkafka statistics under this label.
    pub lag_label: Option<&'static str>,
}

/// The owning actor's handle to the thread.
pub struct ConsumerThread {
    commands: crossbeam_channel::Sender<Command>,
    pub outstanding: Arc<AtomicUsize>,
    /// Fires when the thread has committed and closed the consumer.
    closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl ConsumerThread {
    /// Starts the thread; events arrive on the returned receiver.
    pub fn start(spec: ConsumerSpec) -> Result<(Self, mpsc::UnboundedReceiver<Event>), KafkaError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let (commands, inbox) = crossbeam_channel::unbounded();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let commits = matches!(spec.mode, Mode::Group);
        let context = Callbacks {
            events: events.clone(),
            generation: AtomicU64::new(0),
            topic: spec.topic.clone(),
            commits,
            lag_label: spec.lag_label,
        };
        let mut client = spec.client;
        client
            .set("group.id", &spec.group)
            .set("session.timeout.ms", spec.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (spec.session_timeout.as_millis() / 5).max(500).to_string())
            .set("enable.auto.commit", if commits { "true" } else { "false" })
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", if commits { "earliest" } else { "latest" })
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", if spec.lag_label.is_some() { "5000" } else { "0" });
        let consumer: BaseConsumer<Callbacks> = client.create_with_context(context)?;
        if commits {
            consumer.subscribe(&[spec.topic.as_str()])?;
        }
        let thread_outstanding = outstanding.clone();
        let high = spec.high.max(2);
        let name = spec.name;
        let spawned = std::thread::Builder::new().name(format!("kafka.{name}")).spawn(move || {
            // A panic here is contained like any owned task's: recorded, and the actor (whose
            // channel closes) fails and restarts with a new consumer.
            let ran = crate::supervision::contain(|| {
                if let Mode::Assign { positions } = &spec.mode {
                    if !assign_all(&consumer, &spec.topic, positions, &inbox, &events) {
                        return;
                    }
                }
                run(&consumer, &inbox, &events, &thread_outstanding, high)
            });
            if let Err(panic) = ran {
                crate::tasks::task_panicked("kafka.consumer", &panic);
            }
            if commits {
                commit_stored(&consumer);
            }
            drop(consumer);
            let _ = closed_tx.send(());
        });
        if let Err(error) = spawned {
            return Err(KafkaError::ClientCreation(format!("spawning the consumer thread: {error}")));
        }
        Ok((Self { commands, outstanding, closed: Some(closed) }, receiver))
    }

    pub fn store(&self, offsets: Vec<(i32, i64)>) {
        let _ = self.commands.send(Command::Store(offsets));
    }

    pub fn pause(&self) {
        let _ = self.commands.send(Command::Pause);
    }

    /// Asks the thread to commit and close; resolves when it has, or after `timeout`.
    pub async fn close(mut self, timeout: Duration) {
        let closed = self.closed.take();
        drop(self);
        if let Some(closed) = closed {
            let _ = tokio::time::timeout(timeout, closed).await;
        }
    }
}

impl Drop for ConsumerThread {
    fn drop(&mut self) {
        // The thread sees its command channel disconnected and closes (not waited for).
        let (dead, _) = crossbeam_channel::bounded(0);
        self.commands = dead;
    }
}

/// The thread's loop: commands, flow control, one poll; until the actor's handle is gone.
fn run(
    consumer: &BaseConsumer<Callbacks>,
    inbox: &crossbeam_channel::Receiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
    outstanding: &AtomicUsize,
    high: usize,
) {
    const MAX_BATCH: usize = 500;
    let mut paused = false;
    let mut draining = false;
    let mut paused_generation = 0;
    loop {
        loop {
            match inbox.try_recv() {
                Ok(Command::Store(offsets)) => store(consumer, &offsets),
                Ok(Command::Pause) => draining = true,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
        if events.is_closed() {
            return;
        }
        let generation = consumer.context().generation.load(Ordering::Acquire);
        let busy = outstanding.load(Ordering::Acquire);
        let want_paused = draining || busy >= high || (paused && busy > high / 2);
        // A rebalance hands out partitions unpaused: pause those again.
        if want_paused && (!paused || paused_generation != generation) {
            if let Ok(assignment) = consumer.assignment() {
                if consumer.pause(&assignment).is_ok() {
                    paused = true;
                    paused_generation = generation;
                }
            }
        } else if !want_paused && paused {
            if let Ok(assignment) = consumer.assignment() {
                if consumer.resume(&assignment).is_ok() {
                    paused = false;
                }
            }
        }
        let mut batch = Vec::new();
        let mut wait = Duration::from_millis(100);
        while batch.len() < MAX_BATCH {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(message)) => {
                    let generation = consumer.context().generation.load(Ordering::Acquire);
                    batch.push(Record::from_message(&message.detach(), generation));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer error");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !batch.is_empty() {
            outstanding.fetch_add(batch.len(), Ordering::AcqRel);
            if events.send(Event::Records(batch)).is_err() {
                return;
            }
        }
    }
}

/// Assigns every partition of `topic` from its position in `positions` or its end; retries
/// until the brokers answer or the actor is gone (`false`). Then reports `Assigned`.
fn assign_all(
    consumer: &BaseConsumer<Callbacks>,
    topic: &str,
    positions: &parking_lot::Mutex<HashMap<i32, i64>>,
    inbox: &crossbeam_channel::Receiver<Command>,
    events: &mpsc::UnboundedSender<Event>,
) -> bool {
    const TIMEOUT: Duration = Duration::from_secs(5);
    loop {
        if events.is_closed() || matches!(inbox.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)) {
            return false;
        }
        let attempt = || -> Result<Vec<i32>, KafkaError> {
            let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|found| found.name() == topic)
                .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
                .collect();
            let mut list = TopicPartitionList::with_capacity(partitions.len());
            for partition in &partitions {
                let known = positions.lock().get(partition).copied();
                let start = match known {
                    Some(next) => next,
                    None => consumer.fetch_watermarks(topic, *partition, TIMEOUT)?.1,
                };
                list.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            }
            consumer.assign(&list)?;
            Ok(partitions)
        };
        match attempt() {
            Ok(partitions) if !partitions.is_empty() => {
                let generation = consumer.context().generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(topic, ?partitions, "kafka partitions assigned");
                return events.send(Event::Assigned { partitions, generation }).is_ok();
            }
            Ok(_) => tracing::warn!(topic, "the topic has no partitions yet; retrying"),
            Err(error) => tracing::warn!(%error, topic, "could not assign the topic's partitions; retrying"),
        }
        std::thread::sleep(Duration::from_millis(500)); // paced retry on this consumer's own thread
    }
}

fn store(consumer: &BaseConsumer<Callbacks>, offsets: &[(i32, i64)]) {
    let topic = consumer.context().topic.clone();
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (partition, next) in offsets {
        if list.add_partition_offset(&topic, *partition, Offset::Offset(*next)).is_err() {
            return;
        }
    }
    // Fails for partitions no longer assigned: the new owner reads them again (idempotently).
    if let Err(error) = consumer.store_offsets(&list) {
        tracing::debug!(%error, "offsets not stored (partition revoked)");
    }
}

fn commit_stored(consumer: &BaseConsumer<Callbacks>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "committing stored offsets failed; uncommitted records are read again"),
    }
}

struct Callbacks {
    events: mpsc::UnboundedSender<Event>,
    /// Bumped on every assignment.
    generation: AtomicU64,
    topic: String,
    commits: bool,
    lag_label: Option<&'static str>,
}

impl ClientContext for Callbacks {
    fn stats(&self, statistics: Statistics) {
        let Some(group) = self.lag_label else { return };
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let lags: HashMap<i32, i64> = topic
            .partitions
            .values()
            .filter(|partition| partition.partition >= 0 && partition.desired)
            .map(|partition| {
                // Before anything was stored on a partition librdkafka reports -1: fall back to
                // the committed lag, then to everything the partition holds.
                let lag = if partition.consumer_lag_stored >= 0 {
                    partition.consumer_lag_stored
                } else if partition.consumer_lag >= 0 {
                    partition.consumer_lag
                } else {
                    (partition.hi_offset - partition.lo_offset.max(0)).max(0)
                };
                (partition.partition, lag)
            })
            .collect();
        kafka_lag(group, &lags);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Runs on the consumer thread inside poll: finished records' offsets are committed
            // before the partitions go, so the next owner starts right after them.
            if self.commits {
                commit_stored(consumer);
            }
            let partitions: Vec<i32> = list.elements().iter().map(|element| element.partition()).collect();
            tracing::info!(?partitions, "kafka partitions revoked");
            let _ = self.events.send(Event::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            let partitions: Vec<i32> = list.elements().iter().map(|element| element.partition()).collect();
            tracing::info!(?partitions, generation, "kafka partitions assigned");
            let _ = self.events.send(Event::Assigned { partitions, generation });
        }
    }
}

/// The consumer lag of `group` per partition it owns (from librdkafka statistics); series of
/// partitions it no longer owns are removed.
fn kafka_lag(group: &str, lags: &std::collections::HashMap<i32, i64>) {
    use std::collections::{HashMap, HashSet};
    static OWNED: std::sync::LazyLock<parking_lot::Mutex<HashMap<String, HashSet<i32>>>> =
        std::sync::LazyLock::new(Default::default);
    let family = &crate::telemetry::metrics().kafka_consumer_lag;
    let labels = |partition: i32| crate::telemetry::PartitionLabels {
        group: group.to_owned(),
        partition: partition.to_string(),
    };
    let mut owned = OWNED.lock();
    let previous = owned.entry(group.to_owned()).or_default();
    for gone in previous.iter().filter(|partition| !lags.contains_key(partition)) {
        family.remove(&labels(*gone));
    }
    *previous = lags.keys().copied().collect();
    for (partition, lag) in lags {
        family.get_or_create(&labels(*partition)).set(*lag);
    }
    if group == "writer" {
        crate::telemetry::metrics().kafka_writer_lag.set(lags.values().sum());
    }
}
