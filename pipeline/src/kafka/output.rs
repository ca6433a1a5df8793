//! The output sinks: a timely operator on every worker that produces its worker's records (alert
//! events keyed by alert id, service-graph changes keyed by edge) to a topic and flushes them
//! before it lets the epoch's progress through, so an offset commit never overtakes an output it
//! caused.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peergraph_schemas::codec::{Encoder, Record, SchemaRegistry, WireFormat};
use peergraph_schemas::{Alert, GraphEdge};
use peergraph_topology::Epoch;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::KafkaError;
use crate::kafka::{send_waiting, DeliveryFailures};
use crate::metrics::Metrics;

/// The encoder for records of type `T` produced to `topic` in `format`. `avro-confluent` takes
/// its schema id from `registry` (registering `T`'s schema under the configured subject when
/// `auto_register` is on, looking it up otherwise); the id is cached by the registry client.
pub fn record_encoder<T: Record>(
    format: WireFormat,
    topic: &str,
    registry: Option<&SchemaRegistry>,
) -> anyhow::Result<Encoder<T>> {
    match (format, registry) {
        (WireFormat::AvroConfluent, Some(registry)) => registry
            .encoder::<T>(topic)
            .map_err(|error| anyhow::anyhow!("cannot get the schema id of {} for topic {topic}: {error}", T::NAME)),
        (WireFormat::AvroConfluent, None) => Err(anyhow::anyhow!(
            "the avro-confluent format (topic {topic}) needs a schema registry: set schema_registry.url"
        )),
        (format, _) => Ok(Encoder::new(format)?),
    }
}

/// What the sink needs to know of a record it produces.
pub trait Output: Record {
    /// The Kafka message key.
    fn key(&self) -> String;
    /// The message timestamp: the event time (ms) of the epoch that produced the record.
    fn event_time_ms(&self) -> i64;
    /// Counts one produced record.
    fn count(&self, metrics: &Metrics);
    /// The state-topic record that remembers this output across a restart, if any: (key,
    /// value or tombstone).
    fn state_record(&self) -> Option<(String, Option<Vec<u8>>)> {
        None
    }
}

impl Output for Alert {
    fn key(&self) -> String {
        self.alert_id.clone()
    }
    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }
    fn count(&self, metrics: &Metrics) {
        metrics.alert_produced(&format!("{:?}", self.event).to_lowercase());
    }
    fn state_record(&self) -> Option<(String, Option<Vec<u8>>)> {
        Some(super::state::open_alert_record(self))
    }
}

impl Output for GraphEdge {
    fn key(&self) -> String {
        format!("{}|{}|{}|{}|{}", self.level.as_str(), self.src, self.dst, self.dst_port, self.protocol)
    }
    fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }
    fn count(&self, metrics: &Metrics) {
        metrics.graph_changes.inc();
    }
}

/// One worker's connection to an output topic.
pub struct RecordSink<T: Output> {
    producer: ThreadedProducer<DeliveryFailures>,
    failed: Arc<AtomicU64>,
    topic: String,
    encoder: Encoder<T>,
    metrics: Arc<Metrics>,
    /// Set when the worker is stopping: what the dataflow still emits then (the window's
    /// retractions beyond the last input) is not news and is dropped.
    pub stopping: Rc<Cell<bool>>,
    /// The first error the sink met; the worker loop stops on it.
    pub error: Rc<RefCell<Option<KafkaError>>>,
    /// After a restart: records for epochs below this were produced before it, and the replay
    /// that recomputes them does not produce them again.
    pub resume_at: Epoch,
    /// The state topic, where the records' [`Output::state_record`]s go (empty: nowhere). They
    /// are produced and flushed with the records themselves.
    pub state_topic: String,
}

impl<T: Output> RecordSink<T> {
    /// A sink whose `stopping` flag and error slot are shared with other sinks of the worker.
    pub fn new(
        client: &ClientConfig,
        topic: &str,
        encoder: Encoder<T>,
        metrics: Arc<Metrics>,
        stopping: Rc<Cell<bool>>,
        error: Rc<RefCell<Option<KafkaError>>>,
    ) -> Result<RecordSink<T>, KafkaError> {
        let context = DeliveryFailures::new("alert or graph edge");
        let failed = context.counter();
        let producer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { context: format!("creating the producer for {topic}"), source })?;
        Ok(RecordSink {
            producer,
            failed,
            topic: topic.to_owned(),
            encoder,
            metrics,
            stopping,
            error,
            resume_at: 0,
            state_topic: String::new(),
        })
    }

    fn produce(&self, output: &T, buffer: &mut Vec<u8>) -> Result<(), KafkaError> {
        buffer.clear();
        self.encoder
            .encode(output, buffer)
            .map_err(|e| KafkaError::Encode { topic: self.topic.clone(), reason: e.to_string() })?;
        let key = output.key();
        let record = BaseRecord::to(&self.topic)
            .key(key.as_bytes())
            .payload(buffer.as_slice())
            .timestamp(output.event_time_ms());
        self.send(record)?;
        if let Some((key, value)) = output.state_record().filter(|_| !self.state_topic.is_empty()) {
            let mut record = BaseRecord::to(&self.state_topic).key(key.as_bytes());
            if let Some(value) = &value {
                record = record.payload(value.as_slice());
            }
            self.send(record)?;
        }
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
        let topic = record.topic.to_owned();
        send_waiting(&self.producer, record)
            .map_err(|source| KafkaError::Client { context: format!("producing to {topic}"), source })
    }

    fn flush(&self) -> Result<(), KafkaError> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|source| KafkaError::Client { context: format!("flushing alerts to {}", self.topic), source })?;
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(KafkaError::Delivery { topic: self.topic.clone(), failed });
        }
        Ok(())
    }
}

/// Produces `records` to Kafka. The returned (empty) stream's frontier passes an epoch only after
/// that epoch's records are acknowledged by the brokers: probe it to know what is durable.
pub fn produce<'s, T: Output>(records: Stream<'s, Epoch, Vec<T>>, sink: RecordSink<T>) -> Stream<'s, Epoch, Vec<()>> {
    let name = format!("Produce {}", sink.topic);
    records.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, &name, move |_, _| {
        let mut buffer = Vec::new();
        move |input, _output| {
            let mut produced = 0;
            input.for_each(|_cap, batch| {
                if sink.stopping.get() || sink.error.borrow().is_some() {
                    batch.clear();
                    return;
                }
                for record in batch.drain(..) {
                    // Each record carries the epoch that produced it as its event time.
                    if (record.event_time_ms().max(0) as Epoch) < sink.resume_at {
                        sink.metrics.outputs_suppressed.inc();
                        continue;
                    }
                    match sink.produce(&record, &mut buffer) {
                        Ok(()) => {
                            produced += 1;
                            record.count(&sink.metrics);
                        }
                        Err(error) => {
                            *sink.error.borrow_mut() = Some(error);
                            return;
                        }
                    }
                }
            });
            // The input's progress is reported only after this returns: flushing here keeps the
            // frontier from passing an epoch before its alerts are durable.
            if produced > 0 {
                if let Err(error) = sink.flush() {
                    *sink.error.borrow_mut() = Some(error);
                }
            }
        }
    })
}
