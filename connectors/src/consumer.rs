//! The Kafka side of the connector: a consumer group on the alerts topic feeding
//! [`deliver_batches`], with offsets committed by hand only after every sink has the batch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Alert;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::ConnectConfig;
use crate::delivery::{
    check_sinks, deliver_batches, AlertSource, ConnectReport, OffsetCommitter, SourceEvent, SourceMessage,
};
use crate::error::ConnectError;

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
    let span = tracing::info_span!("connect", topic, group_id = %config.group_id);
    async move {
        let mut sinks = config.build_sinks().await?;
        if let Err(error) = check_sinks(&mut sinks, &config.retry).await {
            for sink in sinks.iter_mut() {
                let _ = sink.close().await;
            }
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
        let sink_names: Vec<&str> = sinks.iter().map(|sink| sink.name()).collect();
        tracing::info!(sinks = ?sink_names, "consuming alerts");

        let consumer = Arc::new(consumer);
        let mut source = KafkaSource { consumer: Arc::clone(&consumer), assignments };
        let mut committer = KafkaCommitter { consumer, topic: topic.to_owned() };
        let decoder = Decoder::<Alert>::default();
        deliver_batches(&mut source, &mut committer, &mut sinks, &decoder, config, shutdown).await
    }
    .instrument(span)
    .await
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use peergraph_schemas::{AlertEvent, Severity};
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;

    #[test]
    fn run_can_be_spawned_onto_a_multi_threaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let config = ConnectConfig::default();
        let running = run(ClientConfig::new(), "peergraph.alerts", &config, std::future::pending());
        assert_send(&running);
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
