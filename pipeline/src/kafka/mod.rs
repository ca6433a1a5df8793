//! The Kafka edges of the pipeline: client configuration, topic provisioning, the flow source
//! that feeds the timely workers and the output sinks (alerts, service graph) that write their output.

pub mod clock;
pub mod outbox;
pub mod output;
pub mod reference;
pub mod source;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use crate::config::{KafkaConfig, TopicsConfig};

/// A producer's context that counts the records the broker refused after librdkafka's own
/// retries, and logs each refusal naming what was refused ("alert", "flow", "state record").
pub struct DeliveryFailures {
    what: &'static str,
    failed: Arc<AtomicU64>,
    /// The topics refused records were for.
    topics: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl DeliveryFailures {
    pub fn new(what: &'static str) -> DeliveryFailures {
        DeliveryFailures { what, failed: Arc::default(), topics: Arc::default() }
    }

    /// The count, shared with whoever checks it before committing progress.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.failed.clone()
    }

    /// The topics of the refused records, shared likewise.
    pub fn topics(&self) -> Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> {
        self.topics.clone()
    }
}

impl ClientContext for DeliveryFailures {}

/// Queues `record`, waiting (5 ms at a time) while librdkafka's local queue is full:
/// back-pressure, never a dropped record. Any other error is returned as it came.
#[allow(clippy::result_large_err)]
pub fn send_waiting<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), rdkafka::error::KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()> + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

impl ProducerContext for DeliveryFailures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            use rdkafka::message::Message as _;
            self.failed.fetch_add(1, Ordering::Relaxed);
            let topic = message.topic();
            tracing::error!(%error, record = self.what, topic, "delivery failed");
            self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(topic.to_owned());
        }
    }
}

/// Errors at the Kafka edge, with what a user needs to act on them.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach Kafka at {brokers} after {waited:?}: {source}")]
    Unreachable { brokers: String, waited: Duration, source: rdkafka::error::KafkaError },
    #[error("topic {topic:?} does not exist on {brokers} (create it, or set topics.create = true)")]
    MissingTopic { topic: String, brokers: String },
    #[error("cannot create topic {topic:?}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("cannot delete topic {topic:?}: {reason}")]
    DeleteTopic { topic: String, reason: String },
    #[error("cannot encode an alert for {topic}: {reason}")]
    Encode { topic: String, reason: String },
    #[error("{failed} deliveries to {topic} failed; stopping so that their flows are replayed")]
    Delivery { topic: String, failed: u64 },
    #[error("cannot load the pipeline state from {topic}: {reason}")]
    State { topic: String, reason: String },
    #[error("Kafka client error ({context}): {source}")]
    Client { context: String, source: rdkafka::error::KafkaError },
}

/// The base client configuration every client shares: brokers plus the pass-through properties.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// How long a missing topic is looked for again before it is an error.
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(5);

/// Number of partitions of `topic`, retrying while the brokers are unreachable (up to
/// `kafka.connect_timeout`), so a pipeline started before its broker waits instead of failing.
pub fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka)
        .create()
        .map_err(|source| KafkaError::Client { context: "creating metadata client".into(), source })?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                let found = metadata.topics().iter().find(|t| t.name() == topic);
                match found {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        return Ok(t.partitions().len() as i32)
                    }
                    // A topic created a moment ago may not be in every broker's metadata yet.
                    _ if started.elapsed() < MISSING_TOPIC_GRACE => std::thread::sleep(Duration::from_millis(200)),
                    _ => return Err(KafkaError::MissingTopic { topic: topic.into(), brokers: kafka.brokers.clone() }),
                }
            }
            Err(source) if started.elapsed() >= kafka.connect_timeout => {
                return Err(KafkaError::Unreachable {
                    brokers: kafka.brokers.clone(),
                    waited: started.elapsed(),
                    source,
                })
            }
            Err(error) => {
                tracing::warn!(brokers = %kafka.brokers, %error, retry_in = ?delay, "Kafka not reachable yet");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Retries `call` while it fails with an error that goes away by itself (a group coordinator
/// still loading, a leader election, a timeout), up to `kafka.connect_timeout`.
pub fn retry_transient<T>(
    kafka: &KafkaConfig,
    context: &str,
    mut call: impl FnMut() -> Result<T, rdkafka::error::KafkaError>,
) -> Result<T, KafkaError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(source) if is_transient(&source) && started.elapsed() < kafka.connect_timeout => {
                tracing::debug!(%source, context, retry_in = ?delay, "transient Kafka error");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(source) => return Err(KafkaError::Client { context: context.to_owned(), source }),
        }
    }
}

fn is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotCoordinator
                | CoordinatorLoadInProgress
                | CoordinatorNotAvailable
                | LeaderNotAvailable
                | NotLeaderForPartition
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | UnknownTopicOrPartition
        )
    )
}

/// Removes from `ends` (partition → end offset to read up to) every partition of `topic` that
/// `consumer` has read to its end: its position is at or past the end. The position moves past
/// transaction markers and aborted records too, which a reader counting delivered messages
/// would wait for forever.
pub fn drop_read_to_end(consumer: &BaseConsumer, topic: &str, ends: &mut std::collections::HashMap<i32, i64>) {
    if ends.is_empty() {
        return;
    }
    let Ok(positions) = consumer.position() else { return };
    ends.retain(|partition, end| {
        let position = positions.find_partition(topic, *partition).map(|p| p.offset());
        !matches!(position, Some(rdkafka::Offset::Offset(at)) if at >= *end)
    });
}

/// An admin client and the one-thread runtime its futures are driven on; `runtime_error` says
/// what failed when the runtime cannot start.
fn admin_session(
    kafka: &KafkaConfig,
    runtime_error: impl FnOnce(String) -> KafkaError,
) -> Result<(AdminClient<DefaultClientContext>, tokio::runtime::Runtime), KafkaError> {
    let admin = client_config(kafka)
        .create()
        .map_err(|source| KafkaError::Client { context: "creating admin client".into(), source })?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| runtime_error(e.to_string()))?;
    Ok((admin, runtime))
}

/// Deletes `names` (a topic that does not exist is not an error): for tools that create topics of
/// their own, such as `bench`.
pub fn delete_topics(kafka: &KafkaConfig, names: &[&str]) -> Result<(), KafkaError> {
    let (admin, runtime) = admin_session(kafka, |reason| KafkaError::DeleteTopic { topic: names.join(","), reason })?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.delete_topics(names, &options))
        .map_err(|source| KafkaError::Client { context: format!("deleting topics {}", names.join(",")), source })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "deleted topic"),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(KafkaError::DeleteTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// How often a repeated client error (a broker away, a commit refused) is logged: once per this
/// interval, with how many times it happened since, instead of once per poll.
pub const REPEATED_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a condition that repeats every poll be logged once per interval.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> LogEvery {
        LogEvery { every, last: None, since: 0 }
    }

    /// The condition happened at `now`: `Some(n)` when it is to be logged, `n` being how many
    /// times it happened since the last line (this one included); `None` to stay quiet.
    pub fn occurred(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|last| now.duration_since(last) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl Default for LogEvery {
    fn default() -> Self {
        LogEvery::new(REPEATED_ERROR_LOG_INTERVAL)
    }
}

/// librdkafka's default `message.max.bytes`: the largest message a client produces unless told.
pub const CLIENT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest message `client` will produce (its `message.max.bytes`).
pub fn client_max_message_bytes(client: &ClientConfig) -> usize {
    client.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(CLIENT_MESSAGE_MAX_BYTES)
}

/// The largest message the brokers accept on `topic` (its `max.message.bytes`), or `None` when
/// the brokers do not say (the topic is missing, or describing configs is not allowed).
pub fn topic_max_message_bytes(kafka: &KafkaConfig, topic: &str) -> Result<Option<usize>, KafkaError> {
    use rdkafka::admin::ResourceSpecifier;
    let (admin, runtime) = admin_session(kafka, |reason| KafkaError::Client {
        context: format!("reading the configuration of {topic}: {reason}"),
        source: rdkafka::error::KafkaError::AdminOpCreation(reason),
    })?;
    let options = AdminOptions::new().request_timeout(Some(kafka.connect_timeout));
    let described = runtime.block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options));
    let limit = match described {
        Ok(results) => results.into_iter().flatten().find_map(|resource| {
            resource.get("max.message.bytes").and_then(|entry| entry.value.as_deref()?.parse().ok())
        }),
        Err(error) => {
            tracing::warn!(topic, %error, "cannot read the topic's max.message.bytes; assuming the client's limit");
            None
        }
    };
    Ok(limit)
}

#[cfg(test)]
mod log_every_tests {
    use super::*;

    #[test]
    fn a_repeated_condition_is_logged_once_per_interval_with_its_count() {
        let mut log = LogEvery::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(log.occurred(at(0)), Some(1), "the first occurrence is logged");
        // One per 20 ms poll for 30 s: three lines, not 1,500.
        let lines: Vec<u64> = (1..1500).filter_map(|i| log.occurred(at(i * 20))).collect();
        assert_eq!(lines, vec![500, 500], "{lines:?}");
        assert_eq!(log.occurred(at(60_000)), Some(500));
    }
}

/// Creates the flows, alerts, dead-letter, reference and state topics if they are missing.
pub fn ensure_topics(kafka: &KafkaConfig, topics: &TopicsConfig) -> Result<(), KafkaError> {
    if !topics.create {
        return Ok(());
    }
    let names: Vec<&str> = [
        &topics.flows,
        &topics.alerts,
        &topics.service_graph,
        &topics.assets,
        &topics.indicators,
        &topics.dead_letter,
        &topics.state,
    ]
    .into_iter()
    .map(String::as_str)
    .filter(|t| !t.is_empty())
    .collect();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, topics.partitions, TopicReplication::Fixed(topics.replication_factor));
            // Changelogs and reference topics keep each key's latest record; so does the state
            // topic, whose records live until their tombstones. Its segments roll hourly (not
            // weekly), so compaction soon drops what the history's time to live has let go.
            let compacted = [&topics.service_graph, &topics.assets, &topics.indicators, &topics.state];
            if *name == topics.state {
                topic.set("cleanup.policy", "compact").set("segment.ms", "3600000")
            } else if compacted.iter().any(|c| c.as_str() == *name) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let (admin, runtime) = admin_session(kafka, |reason| KafkaError::CreateTopic { topic: names.join(","), reason })?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    let results = loop {
        match runtime.block_on(admin.create_topics(&new, &options)) {
            Ok(results) => break results,
            Err(source) if started.elapsed() >= kafka.connect_timeout => {
                return Err(KafkaError::Unreachable {
                    brokers: kafka.brokers.clone(),
                    waited: started.elapsed(),
                    source,
                })
            }
            Err(error) => {
                tracing::warn!(brokers = %kafka.brokers, %error, retry_in = ?delay, "Kafka not reachable yet");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions = topics.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}
