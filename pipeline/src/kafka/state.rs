//! What a restart needs, kept on Kafka. The compacted state topic holds the long-horizon history
//! of workload edges (one record per (workload edge, coarse epoch), a tombstone when its time to
//! live runs out), the volume history (one record per (entity, coarse epoch) with the bytes the
//! entity sent to external addresses in that coarse tick, a tombstone likewise) and the last event
//! of every open alert (a tombstone when it is cleared). A
//! [`Checkpoint`] is stored as the metadata of every committed flow offset: where to replay
//! from, the partition's watermark there, and where emission resumes.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peergraph_schemas::{Alert, AlertEvent};
use peergraph_topology::{Epoch, Name, WorkloadEdge};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::outbox::Outbox;
use super::KafkaError;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// One sighting in the long-horizon history: `edge` was seen in the coarse tick ending at
/// `coarse`. Its state-topic key is [`SIGHTING_PREFIX`] and its JSON, so compaction keeps one
/// record per sighting and its tombstone removes exactly it; the value is the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub edge: WorkloadEdge,
    pub coarse: Epoch,
}

/// One coarse tick of the volume history: `entity` sent `bytes` to external addresses in the
/// coarse tick ending at `coarse`. Its state-topic key is [`VOLUME_PREFIX`] and the JSON of
/// `(entity, coarse)`; the value is the JSON of the whole entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub entity: Name,
    pub coarse: Epoch,
    pub bytes: i64,
}

impl VolumeEntry {
    fn key(&self) -> String {
        let tick = serde_json::to_string(&(&self.entity, self.coarse)).expect("a volume tick serializes");
        format!("{VOLUME_PREFIX}{tick}")
    }
}

/// State-topic key prefix of history sightings.
pub const SIGHTING_PREFIX: &str = "sighting ";
/// State-topic key prefix of volume-history ticks.
pub const VOLUME_PREFIX: &str = "volume ";
/// State-topic key prefix of open alerts (followed by the alert id; the value is the alert's
/// last event as JSON).
pub const ALERT_PREFIX: &str = "alert ";

impl HistoryEntry {
    fn key(&self) -> String {
        format!("{SIGHTING_PREFIX}{}", serde_json::to_string(self).expect("a history entry serializes"))
    }
}

/// The state-topic record that keeps `alert` as the last event of its alert: its JSON, or a
/// tombstone (`None`) once the alert is cleared.
pub fn open_alert_record(alert: &Alert) -> (String, Option<Vec<u8>>) {
    let key = format!("{ALERT_PREFIX}{}", alert.alert_id);
    let value = (alert.event != AlertEvent::Cleared).then(|| serde_json::to_vec(alert).expect("an alert serializes"));
    (key, value)
}

/// What a worker reads back from the state topic at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// This worker's share of the history (the sightings on its partitions of the state topic).
    pub history: Vec<HistoryEntry>,
    /// This worker's share of the volume history (likewise).
    pub volumes: Vec<VolumeEntry>,
    /// Every alert open before the restart, by id, as last announced.
    pub open_alerts: BTreeMap<String, Alert>,
}

/// What a worker stores with each committed offset of a flow partition (as the commit's
/// metadata), so that a restart can rebuild the window and resume emission where it stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The committing worker's output frontier: its alerts and graph changes for every epoch
    /// below it are durable. A restart emits nothing for those epochs.
    pub resume_at: Epoch,
    /// First offset to read again on restart: the first record that may still be in a window
    /// (or lifecycle timer) at or after `resume_at`.
    pub replay_from: i64,
    /// The greatest epoch of the partition's records before `replay_from`: the replay starts
    /// with the partition watermark the first run had there, so it decides lateness alike.
    pub max_epoch: Option<Epoch>,
    /// The earliest epoch the committing worker has observed (the lifecycle's learning period
    /// counts from the earliest over all partitions).
    pub observed_since: Option<Epoch>,
    /// Workers in the cluster at the commit. Alerts are routed to workers by id, so a worker's
    /// own resume point is used only when the cluster has the same size again.
    pub workers: usize,
}

/// The metadata prefix that marks a checkpoint (and its format version).
const CHECKPOINT_PREFIX: &str = "peergraph.checkpoint.v1 ";

impl Checkpoint {
    pub fn encode(&self) -> String {
        format!("{CHECKPOINT_PREFIX}{}", serde_json::to_string(self).expect("a checkpoint serializes"))
    }

    /// The checkpoint in commit metadata; `None` for metadata written by something else.
    pub fn decode(metadata: &str) -> Option<Checkpoint> {
        serde_json::from_str(metadata.strip_prefix(CHECKPOINT_PREFIX)?).ok()
    }
}

/// Where a restarted worker resumes: nothing is emitted for epochs below `resume_at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    pub resume_at: Epoch,
    /// The earliest epoch any worker observed before the restart.
    pub observed_since: Option<Epoch>,
    /// The newest epoch of any partition's records before its replay point: every flow of a later
    /// epoch is read again (the volume history derives the coarse ticks that start there).
    pub complete_from: Epoch,
}

impl Resume {
    /// The resume point of worker `worker` of `workers` from the checkpoints of every partition
    /// (`None` where a partition has none) and the partitions this worker reads.
    pub fn of(checkpoints: &BTreeMap<i32, Option<Checkpoint>>, mine: &[i32], workers: usize) -> Resume {
        let all: Vec<&Checkpoint> = checkpoints.values().flatten().collect();
        let observed_since = all.iter().filter_map(|c| c.observed_since).min();
        // A partition never committed holds no output: nothing to hold back for it.
        let least = all.iter().map(|c| c.resume_at).min().unwrap_or(0);
        let own: Vec<&Checkpoint> = mine.iter().filter_map(|p| checkpoints.get(p)).flatten().collect();
        let same_cluster = !own.is_empty() && all.iter().all(|c| c.workers == workers);
        let resume_at = if same_cluster { own.iter().map(|c| c.resume_at).min().unwrap_or(least) } else { least };
        let complete_from = all.iter().filter_map(|c| c.max_epoch).max().unwrap_or(0);
        Resume { resume_at, observed_since, complete_from }
    }
}

/// One worker's writer of the long-horizon histories: a record when the worker first puts a
/// sighting into the history or its dataflow derives a volume tick, a tombstone when the record's
/// time to live has run out. Records go out through the worker's [`Outbox`], batched by its
/// producer, which flushes them before the offsets of the flows that caused them are committed.
pub struct HistoryStore {
    outbox: Rc<Outbox>,
    topic: String,
    ttl_ms: u64,
    /// Keys of the sightings this worker wrote or loaded, by the epoch their tombstone is due.
    expiring: BTreeMap<Epoch, Vec<String>>,
    metrics: Arc<Metrics>,
}

impl HistoryStore {
    pub fn new(outbox: Rc<Outbox>, topic: &str, ttl_ms: u64, metrics: Arc<Metrics>) -> HistoryStore {
        HistoryStore { outbox, topic: topic.to_owned(), ttl_ms, expiring: BTreeMap::new(), metrics }
    }

    /// Persists a sighting this worker just put into the history.
    pub fn remember(&mut self, entry: &HistoryEntry) -> Result<(), KafkaError> {
        let value = serde_json::to_vec(entry).expect("a history entry serializes");
        self.write(entry.key(), &value, entry.coarse.saturating_add(self.ttl_ms))
    }

    /// Persists a volume tick this worker's dataflow derived; `expires` is when it leaves the
    /// volume history.
    pub fn remember_volume(&mut self, entry: &VolumeEntry, expires: Epoch) -> Result<(), KafkaError> {
        let value = serde_json::to_vec(entry).expect("a volume entry serializes");
        self.write(entry.key(), &value, expires)
    }

    fn write(&mut self, key: String, value: &[u8], expires: Epoch) -> Result<(), KafkaError> {
        self.send(&key, Some(value))?;
        self.metrics.state_records_written.inc();
        self.expiring.entry(expires).or_default().push(key);
        Ok(())
    }

    /// Takes over the tombstone of a sighting loaded from the state topic.
    pub fn adopt_loaded(&mut self, entry: &HistoryEntry) {
        self.expiring.entry(entry.coarse.saturating_add(self.ttl_ms)).or_default().push(entry.key());
    }

    /// Takes over the tombstone of a volume tick loaded from the state topic.
    pub fn adopt_loaded_volume(&mut self, entry: &VolumeEntry, expires: Epoch) {
        self.expiring.entry(expires).or_default().push(entry.key());
    }

    /// Writes the tombstones of every sighting whose time to live ends at or before `time` (the
    /// worker's input time: the dataflow retracts the sighting at that epoch too).
    pub fn expire(&mut self, time: Epoch) -> Result<(), KafkaError> {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > time {
                break;
            }
            for key in entry.remove() {
                self.send(&key, None)?;
                self.metrics.state_tombstones_written.inc();
            }
        }
        Ok(())
    }

    fn send(&mut self, key: &str, payload: Option<&[u8]>) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).key(key.as_bytes());
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.outbox.send(record)
    }
}

/// Reads the state topic from the beginning to its end as of now and returns what is live (the
/// latest record of every key that no tombstone removed): the sightings and volume ticks of this
/// worker's share of the partitions (`p % workers == worker`) and every open alert.
pub fn load(
    kafka: &KafkaConfig,
    client: &ClientConfig,
    topic: &str,
    worker: usize,
    workers: usize,
    metrics: &Metrics,
) -> Result<Restored, KafkaError> {
    let partitions = super::partition_count(kafka, topic)?;
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", format!("peergraph-state-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| KafkaError::Client { context: format!("creating the {topic} reader"), source })?;
    let timeout = Duration::from_secs(10);
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (low, high) = super::retry_transient(kafka, "reading state topic watermarks", || {
            consumer.fetch_watermarks(topic, p, timeout)
        })?;
        if high > low {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|source| KafkaError::Client { context: format!("assigning {topic}"), source })?;
        }
    }
    let started = Instant::now();
    let mut sightings: HashMap<Vec<u8>, HistoryEntry> = HashMap::new();
    let mut volumes: HashMap<Vec<u8>, VolumeEntry> = HashMap::new();
    let mut open_alerts: BTreeMap<String, Alert> = BTreeMap::new();
    let mut read = 0u64;
    if !ends.is_empty() {
        consumer
            .assign(&assignment)
            .map_err(|source| KafkaError::Client { context: format!("assigning {topic}"), source })?;
    }
    while !ends.is_empty() {
        if started.elapsed() > kafka.connect_timeout.max(Duration::from_secs(60)) {
            let reason = format!("partitions {:?} not read to their end in time", ends.keys());
            return Err(KafkaError::State { topic: topic.to_owned(), reason });
        }
        super::drop_read_to_end(&consumer, topic, &mut ends);
        if ends.is_empty() {
            break;
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::warn!(%error, topic, "error reading the state topic");
                continue;
            }
        };
        read += 1;
        let partition = message.partition();
        let key = message.key().unwrap_or_default();
        let unreadable = |error: serde_json::Error| tracing::warn!(%error, topic, partition, offset = message.offset(), "skipped an unreadable state record");
        if let Some(id) = key.strip_prefix(ALERT_PREFIX.as_bytes()) {
            let id = String::from_utf8_lossy(id).into_owned();
            match message.payload().map(serde_json::from_slice::<Alert>) {
                None => {
                    open_alerts.remove(&id);
                }
                Some(Ok(alert)) => {
                    open_alerts.insert(id, alert);
                }
                Some(Err(error)) => unreadable(error),
            }
        } else if partition as usize % workers != worker {
            // Another worker's share.
        } else if key.starts_with(SIGHTING_PREFIX.as_bytes()) {
            keep_latest(&mut sightings, key, message.payload(), unreadable);
        } else if key.starts_with(VOLUME_PREFIX.as_bytes()) {
            keep_latest(&mut volumes, key, message.payload(), unreadable);
        }
    }
    metrics.state_records_loaded.inc_by(read);
    tracing::info!(
        topic,
        worker,
        records = read,
        sightings = sightings.len(),
        volume_ticks = volumes.len(),
        open_alerts = open_alerts.len(),
        took = ?started.elapsed(),
        "loaded the pipeline state"
    );
    Ok(Restored { history: sightings.into_values().collect(), volumes: volumes.into_values().collect(), open_alerts })
}

/// Applies one record of a compacted key to what was read so far: its value replaces the key's,
/// a tombstone removes it.
fn keep_latest<T: serde::de::DeserializeOwned>(
    latest: &mut HashMap<Vec<u8>, T>,
    key: &[u8],
    payload: Option<&[u8]>,
    unreadable: impl FnOnce(serde_json::Error),
) {
    match payload.map(serde_json::from_slice::<T>) {
        None => {
            latest.remove(key);
        }
        Some(Ok(entry)) => {
            latest.insert(key.to_vec(), entry);
        }
        Some(Err(error)) => unreadable(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(resume_at: Epoch, workers: usize, observed: Epoch) -> Option<Checkpoint> {
        Some(Checkpoint { resume_at, replay_from: 0, max_epoch: None, observed_since: Some(observed), workers })
    }

    #[test]
    fn a_checkpoint_round_trips_through_commit_metadata_and_foreign_metadata_is_ignored() {
        let c = checkpoint(5000, 2, 1000).unwrap();
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(""), None);
        assert_eq!(Checkpoint::decode("{\"resume_at\": 1}"), None);
    }

    #[test]
    fn a_worker_resumes_at_its_own_frontier_only_in_a_cluster_of_the_same_size() {
        let all: BTreeMap<i32, Option<Checkpoint>> =
            [(0, checkpoint(9000, 2, 3000)), (1, checkpoint(7000, 2, 1000)), (2, None)].into();
        assert_eq!(Resume::of(&all, &[0], 2), Resume { resume_at: 9000, observed_since: Some(1000), complete_from: 0 });
        assert_eq!(Resume::of(&all, &[1], 2).resume_at, 7000);
        assert_eq!(Resume::of(&all, &[], 2).resume_at, 7000, "no partitions: the least");
        assert_eq!(Resume::of(&all, &[0], 3).resume_at, 7000, "another cluster size: the least");
        assert_eq!(Resume::of(&BTreeMap::new(), &[0], 1), Resume::default());
    }

    #[test]
    fn the_volume_history_is_complete_after_the_newest_epoch_any_partition_read_before_its_replay() {
        let with_max = |resume_at, max_epoch| {
            checkpoint(resume_at, 2, 1000).map(|c| Checkpoint { max_epoch: Some(max_epoch), ..c })
        };
        let all: BTreeMap<i32, Option<Checkpoint>> =
            [(0, with_max(9000, 4000)), (1, with_max(7000, 6000)), (2, checkpoint(7000, 2, 1000)), (3, None)].into();
        for mine in [&[0][..], &[1], &[2, 3]] {
            assert_eq!(Resume::of(&all, mine, 2).complete_from, 6000);
        }
    }
}
