//! Shared harness for the end-to-end tests: where the real broker is, unique topic names, and
//! reading back what the pipeline produced.

use std::time::{SystemTime, UNIX_EPOCH};

use peergraph::config::Config;

/// The broker `scripts/test` started. These tests claim Kafka behaviour, so they need a real one.
pub fn brokers() -> String {
    std::env::var("PEERGRAPH_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "PEERGRAPH_KAFKA_BROKERS is not set: run the tests with scripts/test, which starts a real Kafka broker \
             (or start one with deploy/kafka/kafka.sh start and export the address it prints)"
        )
    })
}

/// A configuration against the test broker with topics and groups no other test uses.
pub fn config(test: &str) -> Config {
    peergraph::init_tracing("info", false);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let prefix = format!("test.{test}.{nanos}");
    let mut config = Config::default();
    config.kafka.brokers = brokers();
    config.kafka.connect_timeout = std::time::Duration::from_secs(30);
    config.topics.flows = format!("{prefix}.flows");
    config.topics.alerts = format!("{prefix}.alerts");
    config.input.group_id = format!("{prefix}.pipeline");
    config.connect.group_id = format!("{prefix}.connect");
    config.metrics.listen = String::new();
    config
}

/// Reads a JSON-lines alerts file written by the file sink.
pub fn read_alerts(path: &std::path::Path) -> Vec<peergraph_schemas::Alert> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alerts file line {l:?} is not an alert: {e}")))
        .collect()
}
