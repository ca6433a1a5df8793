//! One worker's way out to Kafka: a single producer for everything the worker writes (alert
//! events, service-graph changes, state records, dead letters), and the commit of the offsets
//! it consumed. With `run.exactly_once` the producer is transactional: everything written
//! between two commits and the consumed offsets (with their checkpoint) are committed together
//! in one Kafka transaction, so after a crash a read-committed consumer sees each output once;
//! without it, offsets are committed by the consumer after the outputs are flushed
//! (at-least-once after a crash, exactly-once after a clean stop).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;

use super::{send_waiting, DeliveryFailures, KafkaError};

/// How long a transaction may stay open before the broker aborts it: a crashed worker's open
/// transaction blocks read-committed readers (the restart's state load among them) at most this
/// long, when no new incarnation with the same transactional id aborts it first.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two transaction commits (each costs a few broker round trips), unless the
/// worker is stopping.
const MIN_TRANSACTION: Duration = Duration::from_millis(200);
/// How long a flush or a transaction operation may take before the worker gives up.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The worker's producer and how its offsets are committed.
pub struct Outbox {
    producer: ThreadedProducer<DeliveryFailures>,
    failed: Arc<AtomicU64>,
    refused_topics: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Transactional: the transactional id's incarnation has been initialised.
    transactional: bool,
    /// A transaction is open (begun at the first record or commit after the last commit).
    open: Cell<bool>,
    last_commit: Cell<Option<Instant>>,
}

impl Outbox {
    /// A producer for the worker; with `transactional_id`, a transactional one whose earlier
    /// incarnations (a crashed run of the same worker) are fenced and their open transaction
    /// aborted.
    pub fn new(client: &ClientConfig, transactional_id: Option<&str>) -> Result<Outbox, KafkaError> {
        let context = DeliveryFailures::new("output record");
        let (failed, refused_topics) = (context.counter(), context.topics());
        let mut config = client.clone();
        config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        if let Some(id) = transactional_id {
            config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis().to_string());
        }
        let producer: ThreadedProducer<DeliveryFailures> = config
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { context: "creating the worker's producer".into(), source })?;
        if let Some(id) = transactional_id {
            producer.init_transactions(OPERATION_TIMEOUT).map_err(|source| KafkaError::Client {
                context: format!("initialising transactions for {id} (the broker needs transactions enabled)"),
                source,
            })?;
            tracing::info!(transactional_id = id, "exactly-once output: transactions initialised");
        }
        Ok(Outbox {
            producer,
            failed,
            refused_topics,
            transactional: transactional_id.is_some(),
            open: Cell::new(false),
            last_commit: Cell::new(None),
        })
    }

    pub fn transactional(&self) -> bool {
        self.transactional
    }

    /// Queues `record` (in the open transaction, begun if need be), waiting while librdkafka's
    /// queue is full.
    pub fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        self.begin()?;
        let topic = record.topic.to_owned();
        send_waiting(&self.producer, record)
            .map_err(|source| KafkaError::Client { context: format!("producing to {topic}"), source })
    }

    /// Waits until everything queued is acknowledged (`what` names it in errors); fails, naming
    /// the topics, if any record was refused after librdkafka's retries. Inside a transaction, acknowledged is not
    /// yet visible to read-committed readers: that takes [`Outbox::commit`].
    pub fn flush(&self, what: &str) -> Result<(), KafkaError> {
        self.producer
            .flush(OPERATION_TIMEOUT)
            .map_err(|source| KafkaError::Client { context: format!("flushing {what}"), source })?;
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => {
                let topics = self.refused_topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let topic = topics.iter().cloned().collect::<Vec<_>>().join(", ");
                Err(KafkaError::Delivery { topic, failed })
            }
        }
    }

    /// Whether a commit now would be one too many (transactional, not stopping, and the last one
    /// was less than [`MIN_TRANSACTION`] ago): the caller keeps its offsets for the next call.
    pub fn too_soon(&self, mode: CommitMode) -> bool {
        self.transactional
            && matches!(mode, CommitMode::Async)
            && self.last_commit.get().is_some_and(|at| at.elapsed() < MIN_TRANSACTION)
    }

    /// Commits `offsets` (with their checkpoints as metadata) for `consumer`'s group: in the open
    /// transaction, which is then committed with everything written since the last commit; or,
    /// not transactional, by the consumer after a flush.
    pub fn commit(
        &self,
        consumer: &BaseConsumer,
        offsets: &TopicPartitionList,
        mode: CommitMode,
    ) -> Result<(), KafkaError> {
        self.last_commit.set(Some(Instant::now()));
        if !self.transactional {
            self.flush("output records")?;
            if let Err(error) = consumer.commit(offsets, mode) {
                // Not data loss: the records are read again after a restart.
                tracing::warn!(%error, "offset commit failed; will retry with the next one");
            }
            return Ok(());
        }
        self.begin()?;
        let group = consumer.group_metadata().ok_or_else(|| KafkaError::Transaction {
            reason: "the flow consumer has no group metadata to commit its offsets with".into(),
        })?;
        let failing = |context: &str| {
            let context = context.to_owned();
            move |source| KafkaError::Client { context, source }
        };
        self.producer
            .send_offsets_to_transaction(offsets, &group, OPERATION_TIMEOUT)
            .map_err(failing("adding the consumed offsets to the transaction"))?;
        self.producer.commit_transaction(OPERATION_TIMEOUT).map_err(failing("committing the transaction"))?;
        self.open.set(false);
        // A record refused inside the committed transaction would have failed the commit.
        self.flush("output records")
    }

    fn begin(&self) -> Result<(), KafkaError> {
        if self.transactional && !self.open.get() {
            self.producer
                .begin_transaction()
                .map_err(|source| KafkaError::Client { context: "beginning a transaction".into(), source })?;
            self.open.set(true);
        }
        Ok(())
    }
}
