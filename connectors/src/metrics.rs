//! Counters per sink instance: what was delivered, retried, dead-lettered and what failed. They live
//! for the whole process (every `run` adds to them), and the binary exposes them by calling
//! [`register_metrics`] on its Prometheus registry.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label every connector metric carries: the sink instance's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// `[[connect.sinks]] name`, or "console" / "file".
    pub sink: String,
}

/// The connector's metrics; clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct ConnectMetrics {
    /// Alert events the sink acknowledged.
    pub delivered: Family<SinkLabels, Counter>,
    /// Calls tried again after a retryable failure.
    pub retried: Family<SinkLabels, Counter>,
    /// Alert events sent to the dead-letter topic after the sink gave up on them.
    pub dead_lettered: Family<SinkLabels, Counter>,
    /// Calls that failed (each failed attempt).
    pub failed: Family<SinkLabels, Counter>,
    /// 1 while the sink's circuit breaker is open, else 0.
    pub circuit_open: Family<SinkLabels, Gauge>,
}

impl ConnectMetrics {
    pub(crate) fn labels(sink: &str) -> SinkLabels {
        SinkLabels { sink: sink.to_owned() }
    }
}

static METRICS: LazyLock<ConnectMetrics> = LazyLock::new(ConnectMetrics::default);

/// The process-wide connector metrics.
pub fn metrics() -> &'static ConnectMetrics {
    &METRICS
}

/// Registers the connector metrics (prefix `peergraph_connect_`) on `registry`.
pub fn register_metrics(registry: &mut Registry) {
    let metrics = metrics().clone();
    let registry = registry.sub_registry_with_prefix("peergraph_connect");
    registry.register("delivered", "Alert events a sink acknowledged", metrics.delivered);
    registry.register("retried", "Sink calls tried again after a retryable failure", metrics.retried);
    registry.register(
        "dead_lettered",
        "Alert events sent to the dead-letter topic after a sink gave up on them",
        metrics.dead_lettered,
    );
    registry.register("failed", "Sink calls that failed", metrics.failed);
    registry.register("circuit_open", "1 while the sink's circuit breaker is open", metrics.circuit_open);
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn counters_are_exposed_per_sink_with_the_connect_prefix() {
        metrics().delivered.get_or_create(&ConnectMetrics::labels("metrics-test-sink")).inc_by(3);
        let mut registry = Registry::default();
        register_metrics(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(text.contains(r#"peergraph_connect_delivered_total{sink="metrics-test-sink"} 3"#), "{text}");
        assert!(text.contains("peergraph_connect_dead_lettered_total"), "{text}");
    }
}
