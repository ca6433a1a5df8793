//! Flows → the flows topic: one encoded message per flow, keyed by the originator's address (so
//! one host's flows stay ordered in one partition), stamped with the flow's end time (its event
//! time). Shared by the pcap sensor and the simulator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peergraph_schemas::codec::{EncodeError, Encoder};
use peergraph_schemas::Flow;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::kafka::{send_waiting, DeliveryFailures};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("creating the flow producer: {0}")]
    Create(#[source] KafkaError),
    #[error("encoding a flow: {0}")]
    Encode(#[from] EncodeError),
    #[error("publishing a flow: {0}")]
    Send(#[source] KafkaError),
    #[error("flushing the flow producer: {0}")]
    Flush(#[source] KafkaError),
}

/// A batching producer of flows to one topic.
pub struct FlowPublisher {
    producer: ThreadedProducer<DeliveryFailures>,
    failed: Arc<AtomicU64>,
    encoder: Encoder<Flow>,
    topic: String,
    payload: Vec<u8>,
    published: u64,
}

impl FlowPublisher {
    /// A producer tuned for throughput: 20 ms linger, large lz4 batches, a deep local queue.
    pub fn new(kafka: &KafkaConfig, topic: &str, encoder: Encoder<Flow>) -> Result<FlowPublisher, PublishError> {
        let context = DeliveryFailures::new("flow");
        let failed = context.counter();
        let producer = client_config(kafka)
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "500000")
            .create_with_context(context)
            .map_err(PublishError::Create)?;
        Ok(FlowPublisher { producer, failed, encoder, topic: topic.to_owned(), payload: Vec::new(), published: 0 })
    }

    /// Queues one flow. When librdkafka's queue is full this waits (5 ms at a time) for room:
    /// back-pressure, never a dropped flow.
    pub fn publish(&mut self, flow: &Flow) -> Result<(), PublishError> {
        self.payload.clear();
        self.encoder.encode(flow, &mut self.payload)?;
        let record =
            BaseRecord::to(&self.topic).key(flow.src_addr.as_bytes()).payload(&self.payload).timestamp(flow.end_ms);
        send_waiting(&self.producer, record).map_err(PublishError::Send)?;
        self.published += 1;
        Ok(())
    }

    /// Waits until everything queued was delivered (or refused), up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer.flush(timeout).map_err(PublishError::Flush)
    }

    /// Flows handed to the producer so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Flows the broker refused (known once their delivery reports came back).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}
