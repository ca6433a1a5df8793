//! The alert sink: a timely operator on every worker that produces the alert events of its
//! worker to the alerts topic, keyed by alert id, and flushes them before it lets the epoch's
//! progress through, so an offset commit never overtakes an alert it caused.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peergraph_schemas::codec::Encoder;
use peergraph_schemas::Alert;
use peergraph_topology::Epoch;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::KafkaError;
use crate::metrics::Metrics;

/// Counts deliveries the broker refused after librdkafka's own retries.
#[derive(Default)]
pub struct DeliveryWatch {
    failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "alert delivery failed");
        }
    }
}

/// One worker's connection to the alerts topic.
pub struct AlertSink {
    producer: ThreadedProducer<DeliveryWatch>,
    failed: Arc<AtomicU64>,
    topic: String,
    encoder: Encoder<Alert>,
    metrics: Arc<Metrics>,
    /// Set when the worker is stopping: what the dataflow still emits then (the window's
    /// retractions beyond the last input) is not news and is dropped.
    pub stopping: Rc<Cell<bool>>,
    /// The first error the sink met; the worker loop stops on it.
    pub error: Rc<RefCell<Option<KafkaError>>>,
}

impl AlertSink {
    pub fn new(
        client: &ClientConfig,
        topic: &str,
        encoder: Encoder<Alert>,
        metrics: Arc<Metrics>,
    ) -> Result<AlertSink, KafkaError> {
        let context = DeliveryWatch::default();
        let failed = context.failed.clone();
        let producer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { context: "creating alert producer".into(), source })?;
        Ok(AlertSink {
            producer,
            failed,
            topic: topic.to_owned(),
            encoder,
            metrics,
            stopping: Rc::new(Cell::new(false)),
            error: Rc::new(RefCell::new(None)),
        })
    }

    fn produce(&self, alert: &Alert, buffer: &mut Vec<u8>) -> Result<(), KafkaError> {
        buffer.clear();
        self.encoder
            .encode(alert, buffer)
            .map_err(|e| KafkaError::Encode { topic: self.topic.clone(), reason: e.to_string() })?;
        let mut record = BaseRecord::to(&self.topic)
            .key(alert.alert_id.as_bytes())
            .payload(buffer.as_slice())
            .timestamp(alert.event_time_ms);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(KafkaError::Client { context: format!("producing to {}", self.topic), source })
                }
            }
        }
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

/// Produces `alerts` to Kafka. The returned (empty) stream's frontier passes an epoch only after
/// that epoch's alerts are acknowledged by the brokers: probe it to know what is durable.
pub fn produce_alerts<'s>(alerts: Stream<'s, Epoch, Vec<Alert>>, sink: AlertSink) -> Stream<'s, Epoch, Vec<()>> {
    alerts.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "ProduceAlerts", move |_, _| {
        let mut buffer = Vec::new();
        move |input, _output| {
            let mut produced = 0;
            input.for_each(|_cap, batch| {
                if sink.stopping.get() || sink.error.borrow().is_some() {
                    batch.clear();
                    return;
                }
                for alert in batch.drain(..) {
                    match sink.produce(&alert, &mut buffer) {
                        Ok(()) => {
                            produced += 1;
                            sink.metrics.alert_produced(&format!("{:?}", alert.event).to_lowercase());
                            tracing::debug!(
                                alert_id = %alert.alert_id,
                                event = ?alert.event,
                                detector = %alert.detector,
                                entity = %alert.entity,
                                event_time_ms = alert.event_time_ms,
                                "alert"
                            );
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
