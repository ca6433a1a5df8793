//! The Kafka side of the connector: a consumer group on the alerts topic feeding
//! [`deliver_batches`], with offsets committed by hand only after every sink has the batch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Alert;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::Instrument;

use crate::config::ConnectConfig;
use crate::delivery::{check_sinks, deliver_batches, AlertSource, ConnectReport, OffsetCommitter, SourceMessage};
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
        let consumer: StreamConsumer = client
            .create()
            .map_err(|source| ConnectError::Kafka { context: "create the alerts consumer".into(), source })?;
        consumer
            .subscribe(&[topic])
            .map_err(|source| ConnectError::Kafka { context: format!("subscribe to topic {topic}"), source })?;
        tracing::info!(sinks = ?sinks.iter().map(|sink| sink.name().to_owned()).collect::<Vec<_>>(), "consuming alerts");

        let consumer = Arc::new(consumer);
        let mut source = KafkaSource { consumer: Arc::clone(&consumer) };
        let mut committer = KafkaCommitter { consumer, topic: topic.to_owned() };
        let decoder = Decoder::<Alert>::default();
        deliver_batches(&mut source, &mut committer, &mut sinks, &decoder, config, shutdown).await
    }
    .instrument(span)
    .await
}

struct KafkaSource {
    consumer: Arc<StreamConsumer>,
}

#[async_trait]
impl AlertSource for KafkaSource {
    async fn next_message(&mut self) -> Option<SourceMessage> {
        loop {
            // `StreamConsumer::recv` is cancellation safe.
            match self.consumer.recv().await {
                Ok(message) => {
                    return Some(SourceMessage {
                        partition: message.partition(),
                        offset: message.offset(),
                        payload: message.payload().map(<[u8]>::to_vec),
                    })
                }
                // librdkafka reconnects and retries by itself; its errors here are reports, not the end.
                Err(error) => tracing::warn!(%error, "the alerts consumer reported an error"),
            }
        }
    }
}

struct KafkaCommitter {
    consumer: Arc<StreamConsumer>,
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
