//! The Kafka side of the connector: a consumer group on the alerts topic feeding
//! [`deliver_batches`], with offsets committed by hand only after every sink has the batch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Alert;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::ConnectConfig;
use crate::delivery::{
    check_sinks, close_sinks, deliver_batches, AlertSource, ConnectReport, DeadLetter, DeadLetterQueue,
    OffsetCommitter, RoutedSinks, SourceEvent, SourceMessage,
};
use crate::error::ConnectError;
use crate::sinks::CustomSinks;

/// Delivers the alerts on `topic` to the sinks `config` names until `shutdown` completes (or
/// `config.idle_exit` passes without a message), at least once.
///
/// `client` carries the brokers and any security settings; `group.id` is set from `config.group_id`,
/// `enable.auto.commit` is forced off, and a new group starts from the earliest offset unless
/// `auto.offset.reset` says otherwise. The sinks are built and health-checked before the consumer joins
/// the group. Each message is decoded as JSON, Avro single-object or Confluent-framed (without a schema
/// registry); one that is not an alert is counted in [`ConnectReport::skipped`] and skipped.
pub async fn run(
    client: ClientConfig,
    topic: &str,
    config: &ConnectConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectReport, ConnectError> {
    run_with(client, topic, config, &CustomSinks::new(), shutdown).await
}

/// [`run`], with sink types of your own (`type = "custom"` instances) built by `custom`.
pub async fn run_with(
    client: ClientConfig,
    topic: &str,
    config: &ConnectConfig,
    custom: &CustomSinks,
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectReport, ConnectError> {
    let span = tracing::info_span!("connect", topic, group_id = %config.group_id);
    async move {
        let (mut slots, router) = config.build_slots(custom).await?;
        if let Err(error) = check_sinks(&mut slots).await {
            close_sinks(&mut slots).await;
            return Err(error);
        }

        let mut client = client;
        client.set("group.id", &config.group_id).set("enable.auto.commit", "false");
        if client.get("auto.offset.reset").is_none() {
            // A new group must not silently skip the alerts already on the topic.
            client.set("auto.offset.reset", "earliest");
        }
        let (assigned, assignments) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<GroupContext> = client
            .create_with_context(GroupContext { assigned })
            .map_err(|source| ConnectError::Kafka { context: "create the alerts consumer".into(), source })?;
        consumer
            .subscribe(&[topic])
            .map_err(|source| ConnectError::Kafka { context: format!("subscribe to topic {topic}"), source })?;
        let dead_letters: Option<Arc<dyn DeadLetterQueue>> = match &config.dead_letter_topic {
            Some(dead_letter_topic) => {
                ensure_dead_letter_topic(&client, topic, dead_letter_topic).await?;
                let producer: FutureProducer = client.create().map_err(|source| ConnectError::Kafka {
                    context: "create the dead-letter producer".into(),
                    source,
                })?;
                Some(Arc::new(KafkaDeadLetters { producer, topic: dead_letter_topic.clone() }))
            }
            None => None,
        };
        let sink_names: Vec<&str> = slots.iter().map(|slot| slot.name.as_str()).collect();
        tracing::info!(sinks = ?sink_names, dead_letter_topic = ?config.dead_letter_topic, "consuming alerts");

        let consumer = Arc::new(consumer);
        let mut source = KafkaSource { consumer: Arc::clone(&consumer), assignments };
        let mut committer = KafkaCommitter { consumer, topic: topic.to_owned() };
        let decoder = Decoder::<Alert>::default();
        let sinks = RoutedSinks { slots, router, dead_letters };
        deliver_batches(&mut source, &mut committer, sinks, &decoder, config, shutdown).await
    }
    .instrument(span)
    .await
}

/// Creates the dead-letter topic when it is missing (the default broker does not auto-create
/// topics, and a dead letter that cannot be written stops delivery for every sink), laid out like
/// the alerts topic (its partition count and replication factor).
async fn ensure_dead_letter_topic(client: &ClientConfig, alerts: &str, dead_letters: &str) -> Result<(), ConnectError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|source| ConnectError::Kafka { context: "create the admin client".into(), source })?;
    let admin = Arc::new(admin);
    let (reader, alerts_topic, dead_letter_topic) = (Arc::clone(&admin), alerts.to_owned(), dead_letters.to_owned());
    // The metadata request blocks: off the runtime's threads.
    let layout = tokio::task::spawn_blocking(move || {
        let metadata = reader.inner().fetch_metadata(None, Duration::from_secs(30))?;
        let find = |name: &str| metadata.topics().iter().find(|t| t.name() == name && t.error().is_none());
        if find(&dead_letter_topic).is_some() {
            return Ok(None);
        }
        let alerts = find(&alerts_topic);
        let partitions = alerts.map_or(1, |t| t.partitions().len().max(1) as i32);
        let replication = alerts.and_then(|t| t.partitions().first()).map_or(1, |p| p.replicas().len().max(1) as i32);
        Ok(Some((partitions, replication)))
    })
    .await
    .map_err(|error| ConnectError::Config { reason: format!("reading the topics' metadata: {error}") })?
    .map_err(|source| ConnectError::Kafka { context: "read the topics' metadata".into(), source })?;
    let Some((partitions, replication)) = layout else {
        return Ok(());
    };
    let new = NewTopic::new(dead_letters, partitions, TopicReplication::Fixed(replication));
    let created = admin
        .create_topics(&[new], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .map_err(|source| ConnectError::Kafka {
            context: format!("create the dead-letter topic {dead_letters}"),
            source,
        })?;
    for result in created {
        match result {
            Ok(_) => tracing::info!(topic = dead_letters, partitions, replication, "created the dead-letter topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(ConnectError::Config {
                    reason: format!(
                        "connect.dead_letter_topic {dead_letters} does not exist and cannot be created ({code}); \
                         create it, or unset connect.dead_letter_topic"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// `peergraph connect --check`: builds every configured sink (reading its secrets) and runs its
/// health check (with its retry policy), without touching Kafka; returns the sink instances' names.
pub async fn check(config: &ConnectConfig, custom: &CustomSinks) -> Result<Vec<String>, ConnectError> {
    let (mut slots, _router) = config.build_slots(custom).await?;
    let checked = check_sinks(&mut slots).await;
    close_sinks(&mut slots).await;
    checked.map(|()| slots.iter().map(|slot| slot.name.clone()).collect())
}

/// Logs rebalances and tells the source when partitions were assigned.
struct GroupContext {
    assigned: mpsc::UnboundedSender<()>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                // The receiver lives as long as the consumer; a send can only fail during teardown.
                let _ = self.assigned.send(());
            }
            // A batch still in flight for a revoked partition is delivered and its commit may be
            // refused: the partition's new owner then delivers it again (at least once).
            Rebalance::Revoke(partitions) => tracing::info!(partitions = partitions.count(), "partitions revoked"),
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

struct KafkaSource {
    consumer: Arc<StreamConsumer<GroupContext>>,
    assignments: mpsc::UnboundedReceiver<()>,
}

#[async_trait]
impl AlertSource for KafkaSource {
    async fn next_event(&mut self) -> Option<SourceEvent> {
        loop {
            // Both receivers are cancellation safe.
            tokio::select! {
                biased;
                Some(()) = self.assignments.recv() => return Some(SourceEvent::Assigned),
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        return Some(SourceEvent::Message(SourceMessage {
                            partition: message.partition(),
                            offset: message.offset(),
                            payload: message.payload().map(<[u8]>::to_vec),
                        }))
                    }
                    // librdkafka reconnects and retries by itself; its errors here are reports, not the end.
                    Err(error) => tracing::warn!(%error, "the alerts consumer reported an error"),
                },
            }
        }
    }
}

struct KafkaCommitter {
    consumer: Arc<StreamConsumer<GroupContext>>,
    topic: String,
}

#[async_trait]
impl OffsetCommitter for KafkaCommitter {
    async fn commit(&mut self, positions: &BTreeMap<i32, i64>) -> Result<(), String> {
        let mut offsets = TopicPartitionList::with_capacity(positions.len());
        for (&partition, &next) in positions {
            offsets
                .add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(|error| format!("offset {next} for partition {partition}: {error}"))?;
        }
        // A synchronous commit blocks on the broker's answer: keep it off the async workers.
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|error| format!("the commit task failed: {error}"))?
            .map_err(|error| format!("commit to topic {}: {error}", self.topic))
    }
}

/// The dead-letter topic: one JSON [`DeadLetter`] per alert event, keyed by alert id, with the sink,
/// the error and the attempt count also as headers for tools that only read headers.
struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

#[async_trait]
impl DeadLetterQueue for KafkaDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), String> {
        let payload = serde_json::to_vec(letter).map_err(|error| format!("encode the dead letter: {error}"))?;
        let attempts = letter.attempts.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "peergraph.sink", value: Some(letter.sink.as_str()) })
            .insert(Header { key: "peergraph.error", value: Some(letter.error.as_str()) })
            .insert(Header { key: "peergraph.attempts", value: Some(attempts.as_str()) });
        let record = FutureRecord::to(&self.topic).key(&letter.alert.alert_id).payload(&payload).headers(headers);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(error, _)| format!("produce to {}: {error}", self.topic))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use peergraph_schemas::{AlertEvent, Severity};
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[test]
    fn run_can_be_spawned_onto_a_multi_threaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let config = ConnectConfig::default();
        let running = run(ClientConfig::new(), "peergraph.alerts", &config, std::future::pending());
        assert_send(&running);
    }

    #[tokio::test]
    async fn check_health_checks_every_sink_and_names_the_failing_one() {
        let dir = tempfile::tempdir().expect("dir");
        let config = ConnectConfig { file: Some(dir.path().join("alerts.jsonl")), ..ConnectConfig::default() };
        assert_eq!(check(&config, &CustomSinks::new()).await.expect("healthy"), ["console", "file"]);
        let mut broken = config.clone();
        broken.sinks.push(crate::sinks::SinkConfig::new(
            "hook",
            crate::sinks::SinkKind::Exec(crate::exec::ExecSinkConfig {
                command: "/nonexistent/hook".into(),
                ..Default::default()
            }),
        ));
        let error = check(&broken, &CustomSinks::new()).await.expect_err("the hook is missing");
        assert!(matches!(&error, ConnectError::HealthCheck { sink, .. } if sink == "hook"), "{error}");
    }

    #[test]
    fn errors_and_reports_cross_threads_and_convert_to_boxed_errors() {
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_error::<ConnectError>();
        assert_send_sync::<ConnectReport>();
    }

    fn alert(id: &str, event: AlertEvent) -> Alert {
        Alert {
            alert_id: id.into(),
            event,
            detector: "scan".into(),
            severity: Severity::Medium,
            score: 55.0,
            entity: format!("ip:10.0.0.{}", id.len()),
            peer_group: None,
            summary: "swept 200 ports".into(),
            evidence: BTreeMap::new(),
            techniques: vec!["T1046".into()],
            first_seen_ms: 1,
            last_seen_ms: 2,
            event_time_ms: 2,
        }
    }

    /// Against librdkafka's in-process mock cluster (the real broker tests live in `tests/`): the
    /// consumer-group wiring, decoding, the file sink and the offsets committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_writes_the_topic_to_the_file_sink_and_commits_what_it_delivered() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("alerts", 2, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("producer");
        let alerts = [alert("a", AlertEvent::Raised), alert("bb", AlertEvent::Raised), alert("a", AlertEvent::Cleared)];
        let mut payloads: Vec<(String, Vec<u8>)> =
            alerts.iter().map(|alert| (alert.alert_id.clone(), serde_json::to_vec(alert).expect("json"))).collect();
        payloads.push(("junk".into(), b"not an alert".to_vec()));
        for (key, payload) in &payloads {
            producer
                .send(FutureRecord::to("alerts").key(key).payload(payload), Duration::from_secs(5))
                .await
                .expect("produced");
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alerts.jsonl");
        let config = ConnectConfig {
            group_id: "connect-test".into(),
            console: false,
            file: Some(path.clone()),
            batch_timeout: Duration::from_millis(100),
            // Counted from the partition assignment, however long the group takes to form.
            idle_exit: Some(Duration::from_secs(1)),
            ..ConnectConfig::default()
        };
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &brokers);
        let report = run(client, "alerts", &config, std::future::pending()).await.expect("runs to idle exit");

        assert_eq!((report.raised, report.cleared, report.skipped), (2, 1, 1), "{report:?}");
        let written: Vec<Alert> = std::fs::read_to_string(&path)
            .expect("file written")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an alert per line"))
            .collect();
        // One alert's events share a key, hence a partition, hence their order.
        let of_a: Vec<&Alert> = written.iter().filter(|alert| alert.alert_id == "a").collect();
        assert_eq!(of_a, [&alerts[0], &alerts[2]]);
        assert_eq!(written.len(), 3);

        let group: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "connect-test")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition("alerts", 0);
        partitions.add_partition("alerts", 1);
        let committed = group.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
        let total: i64 = committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum();
        assert_eq!(total, payloads.len() as i64, "every message, the skipped one too, is committed: {committed:?}");
    }
}
