//! The output sinks: a timely operator on every worker that produces its worker's records (alert
//! events keyed by alert id, service-graph changes keyed by edge) once their epoch is closed,
//! through the worker's [`Outbox`], and flushes them before it lets the epoch's progress through,
//! so an offset commit never overtakes an output it caused. An offset commit at output frontier
//! `F` therefore covers exactly the records of the epochs before `F`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use peergraph_schemas::codec::{Encoder, Record, SchemaRegistry, WireFormat};
use peergraph_schemas::{Alert, GraphEdge};
use peergraph_topology::Epoch;
use rdkafka::producer::BaseRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::outbox::Outbox;
use super::KafkaError;
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
    outbox: Rc<Outbox>,
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
    /// A sink writing through the worker's `outbox`, whose `stopping` flag and error slot are
    /// shared with other sinks of the worker.
    pub fn new(
        outbox: Rc<Outbox>,
        topic: &str,
        encoder: Encoder<T>,
        metrics: Arc<Metrics>,
        stopping: Rc<Cell<bool>>,
        error: Rc<RefCell<Option<KafkaError>>>,
    ) -> Result<RecordSink<T>, KafkaError> {
        Ok(RecordSink {
            outbox,
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
        self.outbox.send(record)
    }

    /// Makes what was produced (through the worker's outbox, by any sink) durable before the
    /// epoch's progress goes on.
    fn flush(&self) -> Result<(), KafkaError> {
        self.outbox.flush("output records")
    }
}

/// What a worker produces: alert events and service-graph changes.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Alert(Alert),
    Graph(GraphEdge),
}

impl Outgoing {
    /// The epoch that produced the record (its event time).
    fn epoch(&self) -> Epoch {
        let ms = match self {
            Outgoing::Alert(alert) => alert.event_time_ms(),
            Outgoing::Graph(edge) => edge.event_time_ms(),
        };
        ms.max(0) as Epoch
    }
}

/// The worker's sinks: alerts, and the service graph when it has a topic.
pub struct Sinks {
    pub alerts: RecordSink<Alert>,
    pub graph: Option<RecordSink<GraphEdge>>,
}

/// Produces the worker's alert events and graph changes to Kafka, each epoch's once the epoch is
/// closed for **both** (one operator over both streams: an epoch is produced whole or not at all,
/// so the output frontier after it, which the checkpoints record as the resume point, splits the
/// output exactly). The returned (empty) stream's frontier passes an epoch only after that
/// epoch's records are acknowledged by the brokers: probe it to know what a commit covers.
pub fn produce<'s>(
    alerts: Stream<'s, Epoch, Vec<Alert>>,
    graph: Stream<'s, Epoch, Vec<GraphEdge>>,
    sinks: Sinks,
) -> Stream<'s, Epoch, Vec<()>> {
    use timely::dataflow::operators::vec::Map as _;
    use timely::dataflow::operators::Concat as _;
    let records = alerts.map(Outgoing::Alert).concat(graph.map(Outgoing::Graph));
    let Sinks { alerts, graph } = sinks;
    records.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Produce", move |_, _| {
        let mut buffer = Vec::new();
        // Records of epochs not yet closed, by epoch.
        let mut open: BTreeMap<Epoch, Vec<Outgoing>> = BTreeMap::new();
        move |(input, frontier), _output| {
            let halted = || alerts.stopping.get() || alerts.error.borrow().is_some();
            input.for_each(|_, batch| {
                for record in batch.drain(..) {
                    if !halted() {
                        open.entry(record.epoch()).or_default().push(record);
                    }
                }
            });
            let mut produced = 0;
            while let Some(entry) = open.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                if halted() {
                    open.clear();
                    break;
                }
                let epoch = *entry.key();
                for record in entry.remove() {
                    if epoch < alerts.resume_at {
                        alerts.metrics.outputs_suppressed.inc();
                        continue;
                    }
                    let result = match &record {
                        Outgoing::Alert(alert) => alerts.produce(alert, &mut buffer),
                        Outgoing::Graph(edge) => match &graph {
                            Some(sink) => sink.produce(edge, &mut buffer),
                            None => Ok(()),
                        },
                    };
                    match result {
                        Ok(()) => {
                            produced += 1;
                            match &record {
                                Outgoing::Alert(alert) => alert.count(&alerts.metrics),
                                Outgoing::Graph(edge) => edge.count(&alerts.metrics),
                            }
                        }
                        Err(error) => {
                            *alerts.error.borrow_mut() = Some(error);
                            break;
                        }
                    }
                }
            }
            // The input's progress is reported only after this returns: flushing here keeps the
            // frontier from passing an epoch before its records are durable.
            if produced > 0 {
                if let Err(error) = alerts.flush() {
                    *alerts.error.borrow_mut() = Some(error);
                }
            }
        }
    })
}
