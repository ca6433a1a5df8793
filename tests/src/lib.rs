//! Shared harness for the end-to-end tests: where the real broker is, unique topic names, and
//! reading back what the pipeline produced.

pub mod registry;

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
    config.topics.service_graph = format!("{prefix}.service-graph");
    config.topics.assets = format!("{prefix}.assets");
    config.topics.indicators = format!("{prefix}.indicators");
    config.topics.state = format!("{prefix}.state");
    config.input.group_id = format!("{prefix}.pipeline");
    config.connect.group_id = format!("{prefix}.connect");
    config.api.listen = String::new();
    config
}

/// Creates `topic` with `partitions` and the topic-level `settings` (e.g. `max.message.bytes`),
/// before the pipeline's own `ensure_topics` would create it with the broker's defaults.
pub fn create_topic_with(config: &Config, topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        peergraph::kafka::client_config(&config.kafka).create().expect("admin client");
    let new = settings
        .iter()
        .fold(NewTopic::new(topic, partitions, TopicReplication::Fixed(1)), |new, (key, value)| new.set(key, value));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let created = runtime.block_on(admin.create_topics(&[new], &AdminOptions::new())).expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// Reads a JSON-lines alerts file written by the file sink.
pub fn read_alerts(path: &std::path::Path) -> Vec<peergraph_schemas::Alert> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alerts file line {l:?} is not an alert: {e}")))
        .collect()
}

/// Everything on the config's alerts topic, read by `peergraph connect` into a JSON-lines file
/// (it stops after `idle` without a new alert).
pub fn collect_alerts(config: &Config, idle: std::time::Duration) -> Vec<peergraph_schemas::Alert> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("alerts.jsonl");
    let mut connect = config.connect.clone();
    connect.console = false;
    connect.file = Some(file.clone());
    connect.idle_exit = Some(idle);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let client = peergraph::kafka::client_config(&config.kafka);
    runtime
        .block_on(peergraph_connectors::run(client, &config.topics.alerts, &connect, std::future::pending()))
        .expect("connect");
    read_alerts(&file)
}

/// Every record of `topic`, from the beginning to its end as of now, decoded as `T`.
pub fn read_topic<T: peergraph_schemas::codec::Record>(config: &Config, topic: &str) -> Vec<T> {
    read_topic_with(config, topic, peergraph_schemas::codec::Decoder::<T>::default())
}

/// Like [`read_topic`], decoding with `decoder` (e.g. one backed by a schema registry).
pub fn read_topic_with<T: peergraph_schemas::codec::Record>(
    config: &Config,
    topic: &str,
    decoder: peergraph_schemas::codec::Decoder<T>,
) -> Vec<T> {
    read_messages(config, topic)
        .into_iter()
        .filter(|message| !message.payload.is_empty())
        .map(|message| decoder.decode(&message.payload).expect("a record peergraph wrote decodes"))
        .collect()
}

/// One message of a topic as it was read.
#[derive(Clone, Debug)]
pub struct RawMessage {
    pub partition: i32,
    pub key: Vec<u8>,
    /// Empty for a tombstone.
    pub payload: Vec<u8>,
    /// The message's timestamp, ms.
    pub timestamp: Option<i64>,
}

/// Every message of `topic`, from the beginning to its end as of now, in partition order.
pub fn read_messages(config: &Config, topic: &str) -> Vec<RawMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = peergraph::kafka::client_config(&config.kafka)
        .set("group.id", format!("{}.reader", config.input.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let partitions = peergraph::kafka::partition_count(&config.kafka, topic).expect("topic exists");
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, std::time::Duration::from_secs(10)).expect("watermarks");
        if high > low {
            ends.insert(p, high);
        }
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut messages = Vec::new();
    // Read to the end as the positions say (they move past transaction markers too).
    loop {
        peergraph::kafka::drop_read_to_end(&consumer, topic, &mut ends);
        if ends.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        if let Some(message) = consumer.poll(std::time::Duration::from_millis(200)) {
            let message = message.expect("consume");
            messages.push(RawMessage {
                partition: message.partition(),
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
                timestamp: message.timestamp().to_millis(),
            });
        }
    }
    assert!(ends.is_empty(), "read all of {topic} in time: {ends:?} left");
    messages
}

/// `GET url` on `runtime`: the status and the body, or why there was none (the server may not be
/// up yet).
pub fn http_get(runtime: &tokio::runtime::Runtime, url: &str) -> Result<(u16, String), String> {
    runtime.block_on(async {
        let response = reqwest::get(url).await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        Ok((status, body))
    })
}
