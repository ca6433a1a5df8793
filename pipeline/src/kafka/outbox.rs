//! One worker's way out to Kafka: a single producer for everything the worker writes (alert
//! events, service-graph changes, state records, dead letters), and the commit of the offsets it
//! consumed, made only once everything written before it is acknowledged. After a clean stop a
//! restart repeats nothing; after a crash, what was produced after the last commit is produced
//! again (at-least-once, with the same alert ids).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;

use super::{send_waiting, DeliveryFailures, KafkaError};

/// How long a flush may take before the worker gives up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The worker's producer and how its offsets are committed.
pub struct Outbox {
    producer: ThreadedProducer<DeliveryFailures>,
    failed: Arc<AtomicU64>,
    refused_topics: Arc<Mutex<BTreeSet<String>>>,
    /// The producer's `message.max.bytes`.
    max_message_bytes: usize,
    /// Refused commits (a broker away) are logged once per interval, not once per commit.
    commit_errors: std::cell::RefCell<super::LogEvery>,
}

impl Outbox {
    pub fn new(client: &ClientConfig) -> Result<Outbox, KafkaError> {
        let context = DeliveryFailures::new("output record");
        let (failed, refused_topics) = (context.counter(), context.topics());
        let producer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { context: "creating the worker's producer".into(), source })?;
        Ok(Outbox {
            producer,
            failed,
            refused_topics,
            max_message_bytes: super::client_max_message_bytes(client),
            commit_errors: Default::default(),
        })
    }

    /// The largest message this producer sends (its `message.max.bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Queues `record`, waiting while librdkafka's queue is full.
    pub fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        let topic = record.topic.to_owned();
        send_waiting(&self.producer, record)
            .map_err(|source| KafkaError::Client { context: format!("producing to {topic}"), source })
    }

    /// Waits until everything queued is acknowledged (`what` names it in errors); fails, naming
    /// the topics, if any record was refused after librdkafka's retries.
    pub fn flush(&self, what: &str) -> Result<(), KafkaError> {
        self.producer
            .flush(FLUSH_TIMEOUT)
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

    /// Commits `offsets` (with their checkpoints as metadata) for `consumer`'s group once
    /// everything written so far is acknowledged. A refused commit is logged and left to the next
    /// one: the records are read again after a restart, nothing is lost.
    pub fn commit(
        &self,
        consumer: &BaseConsumer,
        offsets: &TopicPartitionList,
        mode: CommitMode,
    ) -> Result<(), KafkaError> {
        self.flush("output records")?;
        if let Err(error) = consumer.commit(offsets, mode) {
            if let Some(repeated) = self.commit_errors.borrow_mut().occurred(std::time::Instant::now()) {
                tracing::warn!(%error, repeated, "offset commit failed; will retry with the next one");
            }
        }
        Ok(())
    }
}
