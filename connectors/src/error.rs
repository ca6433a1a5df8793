//! `ConnectError`: why the connector stopped, with what a user needs to act on it. Every variant that
//! stops consuming leaves the in-flight batch uncommitted, so a restart delivers it again.

use peergraph_schemas::codec::DecodeError;
use rdkafka::error::KafkaError;

use crate::sink::SinkError;

/// Why [`run`](crate::run) could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is invalid.
    #[error("invalid connector configuration: {reason}")]
    Config {
        /// Which setting is wrong and why.
        reason: String,
    },
    /// A sink could not be built (e.g. its file could not be created).
    #[error("cannot build the {sink} sink: {source}")]
    Build {
        /// The sink's name.
        sink: String,
        /// What the sink reported.
        source: SinkError,
    },
    /// A sink failed its health check before consuming started.
    #[error("the {sink} sink failed its health check after {attempts} attempt(s): {source}")]
    HealthCheck {
        /// The sink's name.
        sink: String,
        /// How many times the check was tried.
        attempts: u32,
        /// The last failure.
        source: SinkError,
    },
    /// A sink kept failing (or failed permanently) on a batch; the batch was not committed.
    #[error(
        "the {sink} sink could not take a batch of {alerts} alert event(s) after {attempts} attempt(s), \
         so the batch was not committed and will be delivered again on restart: {source}"
    )]
    Delivery {
        /// The sink's name.
        sink: String,
        /// How many times delivery was tried.
        attempts: u32,
        /// Alert events in the batch.
        alerts: usize,
        /// The last failure.
        source: SinkError,
    },
    /// A sink gave up on an alert event and the dead-letter topic could not take it either.
    #[error(
        "the {sink} sink gave up on alert {alert_id} and the dead-letter topic refused it, so it was not \
         committed and will be delivered again on restart: {reason}"
    )]
    DeadLetter {
        /// The sink's name.
        sink: String,
        /// The alert that could not be dead-lettered.
        alert_id: String,
        /// What the dead-letter producer reported.
        reason: String,
    },
    /// A sink worker crashed (a bug in a sink); what it held was not committed.
    #[error("a sink worker crashed: {reason}")]
    Worker {
        /// The panic or cancellation.
        reason: String,
    },
    /// The writer schema of a Confluent-framed alert could not be looked up (registry unreachable).
    /// Skipping would lose alerts that are merely not readable yet, so consuming stops instead.
    #[error("cannot decode the alert at partition {partition} offset {offset}: {source}")]
    SchemaLookup {
        /// The message's partition.
        partition: i32,
        /// The message's offset.
        offset: i64,
        /// What the lookup reported.
        source: DecodeError,
    },
    /// The Kafka consumer could not be created or subscribed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done ("subscribe to topic peergraph.alerts").
        context: String,
        /// What librdkafka reported.
        source: KafkaError,
    },
}
