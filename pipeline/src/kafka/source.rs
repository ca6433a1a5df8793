//! The flow source, one per timely worker: it owns the Kafka partitions assigned to its worker,
//! decodes and validates each poll batch, assigns event-time epochs, decides lateness per
//! partition (so a replay of the same offsets gives the same result), pre-aggregates the batch
//! per (edge, epoch), and commits offsets only once the dataflow's output has passed them. Each
//! commit carries a [`Checkpoint`]; on restart the source replays from the checkpoint's offset
//! with the partition watermark it had there, so the window is rebuilt exactly.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::difference::Semigroup;
use peergraph_schemas::adapters::Adapter;
use peergraph_schemas::Flow;
use peergraph_topology::{Edge, Endpoint, EntityResolver, Epoch, Name, TimeConfig, Volume};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::clock::{EventClock, Judgement, SkewPolicy};
use super::outbox::Outbox;
use super::state::{Checkpoint, Resume};
use super::KafkaError;
use crate::config::{Config, LatePolicy};
use crate::directory::{DirectoryFeed, EntityDirectory};
use crate::metrics::Metrics;

/// Per-batch pre-aggregation: every flow of a poll batch with the same edge and epoch becomes one
/// update.
pub type EdgeBatch = HashMap<(Edge, Epoch), Volume>;

/// What the source knows about one of its partitions.
struct PartitionClock {
    /// The partition's event time (see [`super::clock`]): its watermark is this time minus the
    /// allowed lateness.
    clock: EventClock,
    /// When the partition last delivered a message (idle detection).
    last_message: Instant,
    /// Offset of the next message to read.
    next_offset: i64,
    /// With `stop_at_end`: the partition's end offset when the run started.
    end_offset: Option<i64>,
    /// The partition's end offset as last known: at the start, then from librdkafka's cached
    /// high watermark (every fetch response refreshes it, no request of its own).
    known_end: i64,
    /// The consumer's position for the partition as librdkafka last reported it (past control
    /// records, which are never delivered as messages).
    position: i64,
    /// The offset committed for the partition: at start, the previous run's position (messages
    /// below it are a replay); then the latest commit.
    committed: i64,
    /// The poll batches read since the oldest one whose records may still matter on a restart.
    segments: VecDeque<Segment>,
    /// Its watermark ran `run.max_lag` slices ahead of the output (see [`ReadLimit`]): it is not
    /// read until the output catches up (its records wait in librdkafka's prefetch queue, which
    /// stops fetching when full), and holds the frontier back as a partition with records
    /// waiting does.
    waits_for_output: bool,
}

/// The part of one poll batch that came from one partition.
#[derive(Clone, Copy, Debug)]
struct Segment {
    from_offset: i64,
    until_offset: i64,
    /// The partition's event time before the segment (its watermark there).
    max_before: Option<Epoch>,
    /// Greatest epoch of the segment's accepted records.
    max_accepted: Option<Epoch>,
}

impl PartitionClock {
    fn finished(&self) -> bool {
        self.end_offset.is_some_and(|end| self.next_offset >= end)
    }

    /// Whether records are known to be waiting on the partition (a replay below the committed
    /// position, anything below the end offset at the start or below the high watermark of the
    /// latest fetch): such a partition is slow to be read, not idle, and keeps holding the
    /// frontier back. A backlog read live is so decided as a replay is: a partition the consumer
    /// has not served for a while is not mistaken for an idle one and its records for late ones.
    fn waiting(&self) -> bool {
        let read_to = self.next_offset.max(self.position);
        read_to < self.committed || read_to < self.known_end || self.end_offset.is_some_and(|end| read_to < end)
    }

    /// The checkpoint to commit with the partition's position: segments whose accepted records
    /// all lie at or before `threshold` (and that are committed) are no longer needed, and the
    /// replay starts at the oldest one that is.
    fn checkpoint(
        &mut self,
        threshold: Epoch,
        resume_at: Epoch,
        observed_since: Option<Epoch>,
        workers: usize,
    ) -> Checkpoint {
        while let Some(front) = self.segments.front() {
            let stale = front.max_accepted.is_none_or(|m| m <= threshold) && front.until_offset <= self.committed;
            if !stale {
                break;
            }
            self.segments.pop_front();
        }
        let (replay_from, max_epoch) = match self.segments.front() {
            Some(front) => (front.from_offset.min(self.committed), front.max_before),
            None => (self.next_offset.min(self.committed), self.clock.time()),
        };
        Checkpoint { resume_at, replay_from, max_epoch, observed_since, workers }
    }
}

/// How far ahead of the dataflow's output the source may read (`run.max_lag`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadLimit {
    /// A partition whose watermark reaches this epoch is paused until the output frontier moves;
    /// `None`: no limit.
    pub until: Option<Epoch>,
    /// The output has caught up with the worker's input frontier: every paused partition
    /// resumes (nothing else can move the frontier).
    pub caught_up: bool,
}

impl ReadLimit {
    /// The limit for an output frontier (`None` once the output is complete) and a lag.
    pub fn of(output: Option<Epoch>, max_lag_ms: u64, caught_up: bool) -> ReadLimit {
        let until = output.filter(|_| max_lag_ms > 0).map(|f| f.saturating_add(max_lag_ms));
        ReadLimit { until, caught_up }
    }
}

/// Offsets read in one poll batch, committable once the output frontier passes `epoch`.
struct PendingCommit {
    /// Greatest epoch a record of the batch was assigned to; `None` if every record was refused.
    epoch: Option<Epoch>,
    offsets: Vec<(i32, i64)>,
}

pub struct FlowSource {
    /// Its partitions' queues come first: each holds a handle on the consumer.
    queues: BTreeMap<i32, PartitionQueue<DefaultConsumerContext>>,
    consumer: Arc<BaseConsumer>,
    /// Partitions now waiting for the output (`partitions_waiting` counts them).
    waiting: i64,
    /// The worker's producer: dead letters go through it, and it commits the offsets.
    outbox: Rc<Outbox>,
    /// The flows topic's name for librdkafka's C API (made once, not per poll).
    topic_c: std::ffi::CString,
    intake: Intake,
    pending: VecDeque<PendingCommit>,
    /// Where emission resumes after a restart (0 on a first start).
    resume: Resume,
    /// How far before the resume point a restart replays (event time, ms).
    replay_horizon_ms: u64,
    workers: usize,
    /// The resume point of the last commit, and when it was made.
    last_checkpoint: Option<(Epoch, Instant)>,
    /// Consumer errors (a broker away) are logged once per interval, not once per poll.
    consumer_errors: super::LogEvery,
}

impl Drop for FlowSource {
    fn drop(&mut self) {
        self.intake.metrics.partitions_waiting.dec_by(self.waiting);
    }
}

/// Everything but the consumer: what turns one message into an edge update.
struct Intake {
    topic: String,
    /// Turns a message into flows (the configured input format).
    adapter: Adapter,
    /// Reused buffer of one message's flows.
    decoded: Vec<Flow>,
    resolver: EntityResolver,
    time: TimeConfig,
    late: LatePolicy,
    max_batch: usize,
    max_message_bytes: usize,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, PartitionClock>,
    dead_letter: Option<DeadLetter>,
    metrics: Arc<Metrics>,
    /// Rejection kinds already logged (each is logged once, with a sample).
    logged: HashSet<&'static str>,
    /// Wall clock at the start of the current poll, ms since the Unix epoch.
    wall_ms: i64,
    /// Flow messages read.
    messages: u64,
    times: TimeBounds,
    max_flow_bytes: i64,
    destinations: DestinationCap,
    sources: SourceCap,
    /// How far a record may run ahead of its partition's time (`input.max_skew`).
    skew: SkewPolicy,
    /// Sensor ids with a label in `peergraph_flows_ahead_of_partition`.
    ahead_sensors: HashSet<String>,
    /// Earliest epoch of an accepted flow (or restored from the checkpoints).
    observed_since: Option<Epoch>,
    /// With the HTTP server: the labelled entities of accepted flows, for the page's directory.
    directory: Option<(Arc<EntityDirectory>, DirectoryFeed)>,
}

/// Most sensor ids labelled in the metric of flows ahead of their partition.
const MAX_SENSOR_LABELS: usize = 100;

/// The event times a flow may claim: none before `input.earliest_end` (never before 1970, which
/// no epoch can hold), none further than `input.max_future` ahead of the wall clock.
#[derive(Clone, Copy, Debug)]
struct TimeBounds {
    earliest_end_ms: i64,
    max_future_ms: i64,
}

impl TimeBounds {
    fn of(input: &crate::config::InputConfig) -> TimeBounds {
        TimeBounds {
            earliest_end_ms: input.earliest_end_ms(),
            max_future_ms: i64::try_from(input.max_future.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// The refusal kind and reason of a flow ending at `end_ms` read when the clock says
    /// `wall_ms`, if it is refused.
    fn refusal(&self, end_ms: i64, wall_ms: i64) -> Option<(&'static str, String)> {
        if end_ms < self.earliest_end_ms {
            let reason = format!("end_ms {end_ms} is before input.earliest_end ({} ms)", self.earliest_end_ms);
            return Some(("ancient_timestamp", reason));
        }
        if end_ms > wall_ms.saturating_add(self.max_future_ms) {
            return Some((
                "future_timestamp",
                format!("end_ms {end_ms} is more than input.max_future ahead of the clock"),
            ));
        }
        None
    }
}

/// Distinct destinations per source entity in the window, up to a cap. Entries older than the
/// window are swept once per tick, so memory follows the live (source, destination) pairs.
struct DestinationCap {
    cap: usize,
    window_ms: u64,
    tick_ms: u64,
    last_sweep: Epoch,
    seen: HashMap<Name, HashMap<Name, Epoch>>,
}

impl DestinationCap {
    /// Whether `destination` may be kept as itself for `source` at `epoch`.
    fn admit(&mut self, source: &Name, destination: &Name, epoch: Epoch) -> bool {
        if epoch >= self.last_sweep + self.tick_ms {
            let horizon = epoch.saturating_sub(self.window_ms);
            self.seen.retain(|_, destinations| {
                destinations.retain(|_, last| *last > horizon);
                !destinations.is_empty()
            });
            self.last_sweep = epoch;
        }
        let destinations = match self.seen.get_mut(source) {
            Some(destinations) => destinations,
            None => self.seen.entry(source.clone()).or_default(),
        };
        if let Some(last) = destinations.get_mut(destination) {
            *last = (*last).max(epoch);
            return true;
        }
        if destinations.len() >= self.cap {
            return false;
        }
        destinations.insert(destination.clone(), epoch);
        true
    }
}

/// The worker's cap on distinct address-based sources in the window (`input.max_sources`): the
/// sources it keeps as themselves, each with the last epoch it was seen, swept once per tick.
struct SourceCap {
    cap: usize,
    window_ms: u64,
    tick_ms: u64,
    last_sweep: Epoch,
    seen: HashMap<Name, Epoch>,
}

impl SourceCap {
    /// Whether `source` may be kept as itself at `epoch` (always, with no cap).
    fn admit(&mut self, source: &Name, epoch: Epoch) -> bool {
        if self.cap == 0 {
            return true;
        }
        if epoch >= self.last_sweep + self.tick_ms {
            let horizon = epoch.saturating_sub(self.window_ms);
            self.seen.retain(|_, last| *last > horizon);
            self.last_sweep = epoch;
        }
        if let Some(last) = self.seen.get_mut(source) {
            *last = (*last).max(epoch);
            return true;
        }
        if self.seen.len() >= self.cap {
            return false;
        }
        self.seen.insert(source.clone(), epoch);
        true
    }
}

/// Which partitions of the flows topic a worker reads: those `p` with `p % workers == index`.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub index: usize,
    pub workers: usize,
    /// Partitions of the flows topic.
    pub all_partitions: i32,
}

impl Share {
    pub fn partitions(&self) -> Vec<i32> {
        (0..self.all_partitions).filter(|p| *p as usize % self.workers == self.index).collect()
    }
}

impl FlowSource {
    /// Opens a consumer for the worker's `share` of the flows topic. It resumes from the group's
    /// committed offsets (or the earliest offset when there are none); when they carry a
    /// [`Checkpoint`], it first replays from the checkpoint's offset, and [`FlowSource::resume`]
    /// tells from which epoch output is new.
    pub fn open(
        config: &Config,
        client: &ClientConfig,
        share: Share,
        adapter: Adapter,
        outbox: Rc<Outbox>,
        metrics: Arc<Metrics>,
        dead_letter_limit: Option<usize>,
        directory: Option<Arc<EntityDirectory>>,
    ) -> Result<FlowSource, KafkaError> {
        let (partitions, all_partitions, workers) = (share.partitions(), share.all_partitions, share.workers);
        let topic = config.topics.flows.clone();
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", &config.input.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|source| KafkaError::Client { context: "creating flow consumer".into(), source })?;

        // Every partition's checkpoint: the resume point and observation start are cluster-wide.
        let mut everything = TopicPartitionList::new();
        for p in 0..all_partitions {
            everything
                .add_partition_offset(&topic, p, Offset::Stored)
                .map_err(|source| KafkaError::Client { context: format!("assigning partition {p}"), source })?;
        }
        let timeout = Duration::from_secs(10);
        let committed = super::retry_transient(&config.kafka, "reading committed offsets", || {
            consumer.committed_offsets(everything.clone(), timeout)
        })?;
        let mut checkpoints: BTreeMap<i32, Option<Checkpoint>> = BTreeMap::new();
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        for element in committed.elements_for_topic(&topic) {
            checkpoints.insert(element.partition(), Checkpoint::decode(element.metadata()));
            if let Offset::Offset(o) = element.offset() {
                positions.insert(element.partition(), o);
            }
        }
        let resume = Resume::of(&checkpoints, &partitions, workers);

        let now = Instant::now();
        let mut clocks = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, timeout).map_err(|source| KafkaError::Client {
                context: format!("reading watermarks of partition {p}"),
                source,
            })?;
            let committed = positions.get(&p).copied().unwrap_or(low).max(low);
            let checkpoint = checkpoints.get(&p).cloned().flatten();
            // Replay from the checkpoint (never past the committed position, never before the
            // log start), with the watermark the partition had there.
            let (next_offset, max_epoch) = match &checkpoint {
                Some(c) => (c.replay_from.clamp(low, committed), c.max_epoch),
                None => (committed, None),
            };
            assignment
                .add_partition_offset(&topic, p, Offset::Offset(next_offset))
                .map_err(|source| KafkaError::Client { context: format!("assigning partition {p}"), source })?;
            let end_offset = config.run.stop_at_end.then_some(high);
            clocks.insert(
                p,
                PartitionClock {
                    clock: EventClock::restored(max_epoch),
                    last_message: now,
                    next_offset,
                    end_offset,
                    known_end: high,
                    position: next_offset,
                    committed,
                    segments: VecDeque::new(),
                    waits_for_output: false,
                },
            );
            tracing::info!(
                topic,
                partition = p,
                from_offset = next_offset,
                committed_offset = committed,
                end_offset = high,
                "reading partition"
            );
        }
        consumer
            .assign(&assignment)
            .map_err(|source| KafkaError::Client { context: "assigning flow partitions".into(), source })?;
        // Each partition is read from its own queue, so one that runs ahead of the output can
        // wait (not read, its prefetch full) while the others are read.
        let consumer = Arc::new(consumer);
        let mut queues = BTreeMap::new();
        for &p in &partitions {
            let queue = consumer.split_partition_queue(&topic, p).ok_or_else(|| KafkaError::Client {
                context: format!("splitting the queue of partition {p}"),
                source: rdkafka::error::KafkaError::ClientCreation("no such partition queue".into()),
            })?;
            queues.insert(p, queue);
        }
        if resume.resume_at > 0 {
            metrics.resume_epoch_ms.set(resume.resume_at as i64);
            tracing::info!(
                resume_at = resume.resume_at,
                observed_since = ?resume.observed_since,
                "restarting: replaying silently up to the resume point"
            );
        }

        let dead_letter = if config.topics.dead_letter.is_empty() {
            None
        } else {
            Some(DeadLetter::new(outbox.clone(), &config.topics.dead_letter, &topic, dead_letter_limit))
        };

        let intake = Intake {
            topic,
            adapter,
            decoded: Vec::new(),
            resolver: EntityResolver::new(&config.entities),
            time: config.time.clone(),
            late: config.input.late,
            max_batch: config.input.max_batch,
            max_message_bytes: config.input.max_message_bytes,
            idle_timeout: config.run.idle_timeout,
            partitions: clocks,
            dead_letter,
            metrics,
            logged: HashSet::new(),
            wall_ms: 0,
            messages: 0,
            times: TimeBounds::of(&config.input),
            max_flow_bytes: config.input.max_flow_bytes,
            destinations: DestinationCap {
                cap: config.input.max_destinations_per_source,
                window_ms: config.time.window_ms(),
                tick_ms: config.time.tick_ms(),
                last_sweep: 0,
                seen: HashMap::new(),
            },
            sources: SourceCap {
                cap: config.input.max_sources,
                window_ms: config.time.window_ms(),
                tick_ms: config.time.tick_ms(),
                last_sweep: 0,
                seen: HashMap::new(),
            },
            observed_since: resume.observed_since,
            skew: SkewPolicy {
                max_skew_ms: config.input.max_skew.as_millis().min(u64::MAX as u128) as u64,
                support: config.input.skew_support,
            },
            ahead_sensors: HashSet::new(),
            directory: directory.map(|d| (d, DirectoryFeed::new(config.api.max_entities))),
        };
        let topic_c = std::ffi::CString::new(config.topics.flows.as_str()).map_err(|_| KafkaError::Client {
            context: format!("the flows topic name {:?} holds a NUL byte", config.topics.flows),
            source: rdkafka::error::KafkaError::ClientCreation("invalid topic name".into()),
        })?;
        Ok(FlowSource {
            queues,
            consumer,
            waiting: 0,
            outbox,
            topic_c,
            intake,
            pending: VecDeque::new(),
            resume,
            replay_horizon_ms: config.replay_horizon_ms(),
            workers,
            last_checkpoint: None,
            consumer_errors: super::LogEvery::default(),
        })
    }

    /// Where output resumes: nothing is to be produced for epochs below `resume_at`.
    pub fn resume(&self) -> Resume {
        self.resume
    }

    /// Reads up to one batch of messages into `batch`. `floor` is the worker's current input time:
    /// a record assigned to an earlier epoch can no longer be accepted and counts as late.
    /// `limit` is how far ahead of the output the partitions may be read (see [`ReadLimit`]).
    /// Returns the number of messages read.
    pub fn poll(&mut self, batch: &mut EdgeBatch, floor: Epoch, limit: ReadLimit) -> Result<usize, KafkaError> {
        let now = Instant::now();
        self.intake.wall_ms = crate::simulate::now_ms();
        // The main queue carries the consumer's errors and events (every partition's messages
        // come through its own queue).
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            if let Err(error) = event {
                if let Some(repeated) = self.consumer_errors.occurred(now) {
                    tracing::warn!(%error, topic = %self.intake.topic, repeated, "error from the flow consumer");
                }
                break;
            }
        }
        let mut read = 0;
        let mut max_epoch: Option<Epoch> = None;
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let lateness = self.intake.time.lateness_ms();
        let waits = |clock: &PartitionClock| {
            let ahead = |until: Epoch| clock.clock.time().is_some_and(|t| t.saturating_sub(lateness) >= until);
            !limit.caught_up && limit.until.is_some_and(ahead)
        };
        // The partitions the output has caught up with share the batch; the others wait.
        let reading: Vec<i32> = self.intake.partitions.iter().filter(|(_, c)| !waits(c)).map(|(&p, _)| p).collect();
        let share = self.intake.max_batch.div_ceil(reading.len().max(1));
        for partition in reading {
            let Some(queue) = self.queues.get(&partition) else { continue };
            let mut segment: Option<Segment> = None;
            for _ in 0..share {
                let message = match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        if let Some(repeated) = self.consumer_errors.occurred(now) {
                            tracing::warn!(%error, topic = %self.intake.topic, partition, repeated, "error from the flow consumer");
                        }
                        break;
                    }
                };
                read += 1;
                let offset = message.offset();
                offsets.insert(partition, offset + 1);
                let Some(clock) = self.intake.partitions.get(&partition) else { continue };
                if offset < clock.committed {
                    self.intake.metrics.replayed_messages.inc();
                }
                let segment = segment.get_or_insert(Segment {
                    from_offset: offset,
                    until_offset: offset,
                    max_before: clock.clock.time(),
                    max_accepted: None,
                });
                segment.until_offset = offset + 1;
                if let Some(epoch) = self.intake.accept(&message, floor, now, batch)? {
                    max_epoch = max_epoch.max(Some(epoch));
                    segment.max_accepted = segment.max_accepted.max(Some(epoch));
                }
                if self.intake.partitions.get(&partition).is_some_and(waits) {
                    break;
                }
            }
            if let (Some(segment), Some(clock)) = (segment, self.intake.partitions.get_mut(&partition)) {
                clock.segments.push_back(segment);
            }
        }
        // A partition that waits for the output holds the frontier back (it is not idle).
        let mut waiting = 0;
        for clock in self.intake.partitions.values_mut() {
            let now_waits = waits(clock);
            if now_waits && !clock.waits_for_output {
                self.intake.metrics.partitions_paused.inc();
            }
            if !now_waits && clock.waits_for_output {
                // Its silence while it waited was ours: the idle timeout starts again.
                clock.last_message = now;
            }
            clock.waits_for_output = now_waits;
            waiting += now_waits as i64;
        }
        self.intake.metrics.partitions_waiting.inc_by(waiting - self.waiting);
        self.waiting = waiting;
        self.refresh_ends();
        if let Some((directory, feed)) = self.intake.directory.as_mut() {
            feed.flush(directory, &self.intake.metrics);
        }
        if read > 0 {
            self.intake.messages += read as u64;
            self.intake.metrics.messages_consumed.inc_by(read as u64);
            self.pending.push_back(PendingCommit { epoch: max_epoch, offsets: offsets.into_iter().collect() });
        }
        Ok(read)
    }

    /// Refreshes each partition's known end and position from librdkafka's cached state (no
    /// broker request).
    fn refresh_ends(&mut self) {
        let (topic, topic_c) = (&self.intake.topic, &self.topic_c);
        let positions = self.consumer.position().ok();
        for (&partition, clock) in self.intake.partitions.iter_mut() {
            if let Some(high) = cached_high_watermark(&self.consumer, topic_c, partition) {
                clock.known_end = clock.known_end.max(high);
            }
            let position = positions.as_ref().and_then(|list| list.find_partition(topic, partition));
            if let Some(Offset::Offset(offset)) = position.map(|p| p.offset()) {
                clock.position = offset;
            }
        }
    }

    /// This worker's event-time frontier: the least watermark over its partitions that still hold
    /// it back. Idle partitions (no message for `idle_timeout`, and none known to be waiting: a
    /// busy worker must not make a partition it has not read yet look idle, or a replay would
    /// decide lateness differently) and, with `stop_at_end`, finished ones do not; when none does, the worker follows the furthest of its own partitions and of
    /// the watermarks other workers announced.
    pub fn watermark(&self, now: Instant, announced: Epoch) -> Epoch {
        let lateness = self.intake.time.lateness_ms();
        let mark = |time: Option<Epoch>| time.map_or(0, |m| m.saturating_sub(lateness));
        let holding = self
            .intake
            .partitions
            .values()
            .filter(|c| {
                !c.finished()
                    && (c.waits_for_output
                        || c.waiting()
                        || now.duration_since(c.last_message) < self.intake.idle_timeout)
            })
            .map(|c| mark(c.clock.time()))
            .min();
        match holding {
            Some(least) => least,
            None => {
                // Established partitions first: a partition that went quiet after one record
                // has not shown that record to be honest.
                let established = self.intake.partitions.values().filter_map(|c| c.clock.time()).max();
                let furthest = established.or_else(|| self.max_epoch());
                mark(furthest).max(announced)
            }
        }
    }

    /// Flow messages read so far.
    pub fn messages(&self) -> u64 {
        self.intake.messages
    }

    /// With `stop_at_end`: every partition has been read to its end offset.
    pub fn at_end(&self) -> bool {
        self.intake.partitions.values().all(PartitionClock::finished)
    }

    /// The earliest epoch of a flow this worker accepted (or its checkpoints recorded).
    pub fn observed_since(&self) -> Option<Epoch> {
        self.intake.observed_since
    }

    /// The furthest event time of this worker's partitions (a partition that saw only one record:
    /// that record's epoch).
    pub fn max_epoch(&self) -> Option<Epoch> {
        self.intake.partitions.values().filter_map(|c| c.clock.provisional()).max()
    }

    /// Commits the offsets of every batch whose records' epochs the output frontier has passed,
    /// each with the [`Checkpoint`] a restart resumes from. `frontier` is `None` once the output
    /// is complete. A commit that would only move the checkpoint is made at most once a second,
    /// except with `CommitMode::Sync` (at shutdown).
    pub fn commit_passed(&mut self, frontier: Option<Epoch>, mode: CommitMode) -> Result<(), KafkaError> {
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        while let Some(batch) = self.pending.front() {
            let passed = match (batch.epoch, frontier) {
                (None, _) | (_, None) => true,
                (Some(epoch), Some(frontier)) => epoch < frontier,
            };
            if !passed {
                break;
            }
            let batch = self.pending.pop_front().expect("front exists");
            offsets.extend(batch.offsets);
        }
        // Output below the previous resume point was emitted before the restart.
        let resume_at = frontier.unwrap_or_else(|| self.max_epoch().map_or(0, |e| e + 1)).max(self.resume.resume_at);
        let now = Instant::now();
        let moved = match self.last_checkpoint {
            None => true,
            Some((at, when)) => {
                at != resume_at
                    && (matches!(mode, CommitMode::Sync) || now.duration_since(when) >= Duration::from_secs(1))
            }
        };
        if offsets.is_empty() && !moved {
            return Ok(());
        }
        let threshold = resume_at.saturating_sub(self.replay_horizon_ms);
        let mut list = TopicPartitionList::new();
        for (&partition, clock) in self.intake.partitions.iter_mut() {
            // A replayed batch never moves the committed position back.
            if let Some(&offset) = offsets.get(&partition) {
                clock.committed = clock.committed.max(offset);
            }
            let checkpoint = clock.checkpoint(threshold, resume_at, self.intake.observed_since, self.workers);
            let mut element = list.add_partition(&self.intake.topic, partition);
            element
                .set_offset(Offset::Offset(clock.committed))
                .map_err(|source| KafkaError::Client { context: "building commit".into(), source })?;
            element.set_metadata(checkpoint.encode());
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.last_checkpoint = Some((resume_at, now));
        // Everything the worker wrote (dead letters included) is durable with, or before, these
        // offsets.
        self.outbox.commit(&self.consumer, &list, mode)?;
        self.intake.metrics.offset_commits.inc();
        Ok(())
    }
}

impl Intake {
    /// Decodes, validates and windows one message; returns its epoch if it entered `batch`.
    fn accept(
        &mut self,
        message: &BorrowedMessage<'_>,
        floor: Epoch,
        now: Instant,
        batch: &mut EdgeBatch,
    ) -> Result<Option<Epoch>, KafkaError> {
        let partition = message.partition();
        let Some(clock) = self.partitions.get_mut(&partition) else {
            return Ok(None);
        };
        clock.last_message = now;
        clock.next_offset = message.offset() + 1;
        let payload = message.payload().unwrap_or_default();
        self.metrics.bytes_consumed.inc_by(payload.len() as u64);
        if payload.len() > self.max_message_bytes {
            let reason =
                format!("{} bytes is over input.max_message_bytes ({})", payload.len(), self.max_message_bytes);
            self.reject(message, "oversized", &reason)?;
            return Ok(None);
        }
        let mut flows = std::mem::take(&mut self.decoded);
        flows.clear();
        if let Err(error) = self.adapter.decode(payload, &mut flows) {
            self.decoded = flows;
            self.reject(message, error.kind(), &error.to_string())?;
            return Ok(None);
        }
        let mut max_epoch = None;
        for flow in flows.drain(..) {
            max_epoch = max_epoch.max(self.window_flow(message, flow, floor, batch)?);
        }
        self.decoded = flows;
        Ok(max_epoch)
    }

    /// Validates, times and windows one decoded flow; returns its epoch if it entered `batch`.
    fn window_flow(
        &mut self,
        message: &BorrowedMessage<'_>,
        flow: Flow,
        floor: Epoch,
        batch: &mut EdgeBatch,
    ) -> Result<Option<Epoch>, KafkaError> {
        let partition = message.partition();
        if let Err(invalid) = flow.validate() {
            self.reject(message, invalid.kind(), &invalid.to_string())?;
            return Ok(None);
        }
        if let Some((kind, reason)) = self.times.refusal(flow.end_ms, self.wall_ms) {
            self.reject(message, kind, &reason)?;
            return Ok(None);
        }
        if flow.bytes_out.max(flow.bytes_in) > self.max_flow_bytes {
            let reason = format!("{} / {} bytes is over input.max_flow_bytes", flow.bytes_out, flow.bytes_in);
            self.reject(message, "absurd_volume", &reason)?;
            return Ok(None);
        }
        let epoch = self.time.epoch_of(flow.end_ms);
        let clock = &mut self.partitions.get_mut(&partition).expect("partition checked above").clock;
        let watermark = clock.time().map_or(0, |m| m.saturating_sub(self.time.lateness_ms()));
        if let Judgement::Ahead { time } = clock.observe(epoch, self.skew) {
            self.count_ahead(&flow.sensor_id);
            let reason = format!(
                "epoch {epoch} is more than input.max_skew ahead of its partition's event time {time}, uncorroborated"
            );
            self.reject(message, "ahead_of_partition", &reason)?;
            return Ok(None);
        }
        if epoch < watermark.max(floor) {
            let reason = format!("epoch {epoch} is behind the watermark {}", watermark.max(floor));
            match self.late {
                LatePolicy::Drop => self.count_and_log(message, "late", &reason),
                LatePolicy::DeadLetter => self.reject(message, "late", &reason)?,
            }
            return Ok(None);
        }
        let mut src = self.resolver.resolve(&flow.src_addr, flow.src_meta.as_ref());
        let mut dst = self.resolver.resolve(&flow.dst_addr, flow.dst_meta.as_ref());
        // Before the destination cap, so that spoofed sources share one entry there too.
        if src.is_address_based() && !self.sources.admit(&src.entity, epoch) {
            self.metrics.sources_capped.inc();
            src = Endpoint::overflow_sources();
        }
        if !self.destinations.admit(&src.entity, dst.node(), epoch) {
            self.metrics.destinations_capped.inc();
            dst = Endpoint::overflow();
        }
        if let Some((_, feed)) = self.directory.as_mut() {
            feed.observe(&src, flow.src_meta.as_ref());
            feed.observe(&dst, flow.dst_meta.as_ref());
        }
        let edge = Edge {
            src,
            dst,
            // validate() checked both ranges
            dst_port: flow.dst_port as u16,
            protocol: flow.protocol as u8,
        };
        batch.entry((edge, epoch)).or_default().plus_equals(&Volume::of_flow(&flow));
        self.metrics.flows_accepted.inc();
        self.observed_since = Some(self.observed_since.map_or(epoch, |o| o.min(epoch)));
        Ok(Some(epoch))
    }

    /// Counts a flow that ran ahead of its partition under its sensor's id (the first
    /// [`MAX_SENSOR_LABELS`] ids seen; later ones as "other", so a forger cannot grow the metric).
    fn count_ahead(&mut self, sensor_id: &str) {
        let known = self.ahead_sensors.contains(sensor_id);
        let label = if known || self.ahead_sensors.len() < MAX_SENSOR_LABELS {
            if !known {
                self.ahead_sensors.insert(sensor_id.to_owned());
            }
            sensor_id
        } else {
            "other"
        };
        self.metrics.flow_ahead(label);
    }

    fn count_and_log(&mut self, message: &BorrowedMessage<'_>, kind: &'static str, reason: &str) {
        self.metrics.reject(kind);
        if self.logged.insert(kind) {
            let sample: String =
                message.payload().unwrap_or_default().iter().take(48).map(|b| format!("{b:02x}")).collect();
            tracing::warn!(
                kind,
                reason,
                topic = %self.topic,
                partition = message.partition(),
                offset = message.offset(),
                sample_hex = %sample,
                "refused a flow message (logged once per kind; see peergraph_flows_rejected)"
            );
        }
    }

    fn reject(&mut self, message: &BorrowedMessage<'_>, kind: &'static str, reason: &str) -> Result<(), KafkaError> {
        self.count_and_log(message, kind, reason);
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.send(message, kind, reason, &self.metrics)?;
        }
        Ok(())
    }
}

/// librdkafka's cached high watermark of a partition: the log end reported by the latest fetch
/// response for it (`rd_kafka_get_watermark_offsets`, which rust-rdkafka does not wrap; it makes
/// no request). `None` before the first fetch response.
fn cached_high_watermark(consumer: &BaseConsumer, topic: &std::ffi::CStr, partition: i32) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; `topic` is NUL-terminated and only
    // read; librdkafka writes nothing but the two out-parameters, which outlive the call.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Refused messages, forwarded unchanged with the reason in headers, through the worker's
/// [`Outbox`]: a dead letter librdkafka gives up on (after its retries) fails the next commit, so
/// the worker stops before the offsets of its message are committed and the message is read
/// (and refused) again after a restart instead of being lost.
///
/// No refused message can stop the run by its size: one that would not fit the dead-letter
/// topic's `max.message.bytes` (or the producer's `message.max.bytes`), or that the producer
/// refuses at once, is replaced by a summary (the same headers, `peergraph.truncated`,
/// `peergraph.source.size`, and its first [`SUMMARY_PREFIX_BYTES`] bytes as the payload). A
/// summary the producer refuses too is counted in `peergraph_dead_letters_lost` and logged with
/// its origin, and the run goes on.
struct DeadLetter {
    outbox: Rc<Outbox>,
    topic: String,
    source_topic: String,
    /// The largest dead letter that can be delivered: the least of the topic's and the
    /// producer's limits.
    max_bytes: usize,
}

/// How many of a refused message's first bytes a summary dead letter carries.
const SUMMARY_PREFIX_BYTES: usize = 256;

/// What a record adds to its payload and key on the wire (record and batch overhead, and the
/// headers' names), so that a dead letter is summarised before the broker refuses it.
const DEAD_LETTER_OVERHEAD_BYTES: usize = 512;

/// The longest refusal reason a dead letter carries (a decoder's error may quote its input).
const MAX_REASON_BYTES: usize = 1024;

impl DeadLetter {
    fn new(outbox: Rc<Outbox>, topic: &str, source_topic: &str, topic_limit: Option<usize>) -> DeadLetter {
        let max_bytes = topic_limit.unwrap_or(usize::MAX).min(outbox.max_message_bytes());
        DeadLetter { outbox, topic: topic.to_owned(), source_topic: source_topic.to_owned(), max_bytes }
    }

    fn send(
        &self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
        metrics: &Metrics,
    ) -> Result<(), KafkaError> {
        let reason = truncated(reason, MAX_REASON_BYTES);
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = || {
            OwnedHeaders::new()
                .insert(Header { key: "peergraph.reason", value: Some(kind) })
                .insert(Header { key: "peergraph.error", value: Some(reason) })
                .insert(Header { key: "peergraph.source.topic", value: Some(self.source_topic.as_str()) })
                .insert(Header { key: "peergraph.source.partition", value: Some(partition.as_str()) })
                .insert(Header { key: "peergraph.source.offset", value: Some(offset.as_str()) })
        };
        let payload = message.payload().unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let size = payload.len() + key.len() + reason.len() + self.source_topic.len() + DEAD_LETTER_OVERHEAD_BYTES;
        if size <= self.max_bytes {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topic).payload(payload).headers(headers());
            if !key.is_empty() {
                record = record.key(key);
            }
            match self.outbox.send(record) {
                Ok(()) => {
                    metrics.dead_lettered.inc();
                    return Ok(());
                }
                Err(error) => tracing::warn!(
                    topic = %self.topic, %error, partition, offset,
                    "the producer refused a dead letter; writing its summary instead"
                ),
            }
        }
        let size_header = payload.len().to_string();
        let summary_headers = headers()
            .insert(Header { key: "peergraph.truncated", value: Some("true") })
            .insert(Header { key: "peergraph.source.size", value: Some(size_header.as_str()) });
        let room = self.max_bytes.saturating_sub(size - payload.len() - key.len());
        let prefix = &payload[..payload.len().min(SUMMARY_PREFIX_BYTES).min(room)];
        let summary: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).payload(prefix).headers(summary_headers);
        match self.outbox.send(summary) {
            Ok(()) => {
                metrics.dead_lettered.inc();
                metrics.dead_letters_summarised.inc();
            }
            Err(error) => {
                metrics.dead_letters_lost.inc();
                tracing::error!(
                    topic = %self.topic, %error, partition, offset, bytes = payload.len(),
                    "the producer refused a dead letter even as a summary; the message stays at its offset"
                );
            }
        }
        Ok(())
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_before_the_earliest_end_or_beyond_the_future_bound_are_refused_by_their_own_reason() {
        let bounds = TimeBounds::of(&crate::config::InputConfig::default());
        let now = 1_796_256_000_000; // 2026-12-03
        let kind = |end_ms: i64| bounds.refusal(end_ms, now).map(|(kind, _)| kind);
        assert_eq!(kind(now), None);
        assert_eq!(kind(946_684_800_000), None, "2000-01-01 itself is accepted");
        assert_eq!(kind(946_684_799_999), Some("ancient_timestamp"));
        assert_eq!(kind(0), Some("ancient_timestamp"), "a clock that never synced");
        assert_eq!(kind(-3_600_000), Some("ancient_timestamp"), "before 1970: no epoch can hold it");
        assert_eq!(kind(now / 1000), Some("ancient_timestamp"), "seconds taken for milliseconds");
        assert_eq!(kind(i64::MIN), Some("ancient_timestamp"));
        assert_eq!(kind(now + 3_600_000), None, "input.max_future ahead is still accepted");
        assert_eq!(kind(now + 3_600_001), Some("future_timestamp"));
        assert_eq!(kind(i64::MAX), Some("future_timestamp"));
    }
}
