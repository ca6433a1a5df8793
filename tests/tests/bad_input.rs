//! Bad input on a real broker: undecodable messages, invalid flows, unknown schema ids,
//! oversized messages and impossible event times (before 1970, in seconds, in the future) are
//! counted by reason, dead-lettered with the reason and their origin, and
//! the pipeline keeps going; a dead letter the broker refuses stops the run before its message's
//! offset is committed; a broker that is not there is a clear error, not a panic.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::metrics::Metrics;
use peergraph_schemas::codec::{Encoder, WireFormat};
use peergraph_schemas::flow::proto;
use peergraph_schemas::{ConnState, Flow};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn flow(i: i64) -> Flow {
    Flow {
        sensor_id: "test".into(),
        start_ms: 1_767_225_600_000 + i * 1000,
        end_ms: 1_767_225_600_500 + i * 1000,
        src_addr: "10.0.0.1".into(),
        src_port: 40000,
        dst_addr: "10.0.0.2".into(),
        dst_port: 443,
        protocol: proto::TCP,
        bytes_out: 100,
        bytes_in: 200,
        packets_out: 1,
        packets_in: 1,
        tcp_flags: 0x1b,
        conn_state: ConnState::SF,
        app_protocol: None,
        src_meta: None,
        dst_meta: None,
    }
}

#[test]
fn bad_messages_are_counted_dead_lettered_and_skipped() {
    let mut config = peergraph_tests::config("bad-input");
    config.topics.dead_letter = format!("{}.dead", config.topics.flows);
    config.topics.partitions = 1;
    config.input.max_message_bytes = 4_096;
    config.run.stop_at_end = true;
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    let avro = Encoder::<Flow>::new(WireFormat::AvroSingleObject).unwrap();
    let json = Encoder::<Flow>::new(WireFormat::Json).unwrap();
    let confluent = Encoder::<Flow>::confluent(999);
    let mut backwards = flow(3);
    backwards.end_ms = backwards.start_ms - 1;
    let mut future = flow(5);
    future.end_ms = peergraph::simulate::now_ms() + 2 * 3600 * 1000;
    let mut absurd = flow(6);
    absurd.bytes_out = 1 << 50;
    // Before 1970: used to be clamped into epoch 0 silently.
    let mut before_1970 = flow(7);
    (before_1970.start_ms, before_1970.end_ms) = (-3_600_000, -3_599_000);
    // A sensor exporting seconds where milliseconds are due: January 1970.
    let mut in_seconds = flow(8);
    (in_seconds.start_ms, in_seconds.end_ms) = (in_seconds.start_ms / 1000, in_seconds.end_ms / 1000);
    let messages: Vec<(Vec<u8>, &str)> = vec![
        (avro.encode_to_vec(&flow(0)).unwrap(), "ok"),
        (b"\x07 not a flow".to_vec(), "unknown_framing"),
        (json.encode_to_vec(&flow(1)).unwrap(), "ok"),
        (b"{\"sensor_id\": 5}".to_vec(), "malformed_json"),
        (json.encode_to_vec(&backwards).unwrap(), "end_before_start"),
        (confluent.encode_to_vec(&flow(2)).unwrap(), "unknown_schema_id"),
        (vec![b' '; 5_000], "oversized"),
        (avro.encode_to_vec(&future).unwrap(), "future_timestamp"),
        (json.encode_to_vec(&absurd).unwrap(), "absurd_volume"),
        (avro.encode_to_vec(&before_1970).unwrap(), "ancient_timestamp"),
        (json.encode_to_vec(&in_seconds).unwrap(), "ancient_timestamp"),
        (avro.encode_to_vec(&flow(4)).unwrap(), "ok"),
    ];
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    for (payload, _) in &messages {
        producer.send(BaseRecord::<[u8], [u8]>::to(&config.topics.flows).payload(payload)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let metrics = Metrics::new();
    let report =
        peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run keeps going");
    assert_eq!(report.messages, messages.len() as u64);
    assert_eq!(metrics.flows_accepted.get(), 3);
    let refused = messages.iter().filter(|(_, r)| *r != "ok").count();
    for (_, reason) in messages.iter().filter(|(_, r)| *r != "ok") {
        let expected = messages.iter().filter(|(_, r)| r == reason).count() as u64;
        assert_eq!(metrics.rejected(reason), expected, "rejected for {reason}");
    }
    assert_eq!(metrics.dead_lettered.get(), refused as u64);

    // The dead-letter topic holds the refused messages, unchanged, with reason and origin.
    let consumer: BaseConsumer = peergraph::kafka::client_config(&config.kafka)
        .set("group.id", format!("{}.reader", config.input.group_id))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[config.topics.dead_letter.as_str()]).unwrap();
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dead.len() < refused && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let headers = message.headers().expect("dead letters carry headers");
            let header = |key: &str| {
                headers
                    .iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            dead.push((
                header("peergraph.reason"),
                header("peergraph.source.offset"),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    let expected: Vec<(String, String, Vec<u8>)> = messages
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| *r != "ok")
        .map(|(offset, (payload, reason))| (reason.to_string(), offset.to_string(), payload.clone()))
        .collect();
    assert_eq!(dead, expected);
}

/// A dead letter the broker refuses (here: larger than the dead-letter topic accepts) must not
/// be lost: the worker stops with the delivery failure before the offset of its message is
/// committed, so a restart reads the message again.
#[test]
fn a_dead_letter_the_broker_refuses_stops_the_run_before_its_offset_is_committed() {
    use rdkafka::{Offset, TopicPartitionList};

    let mut config = peergraph_tests::config("dead-letter-refused");
    config.topics.dead_letter = format!("{}.dead", config.topics.flows);
    config.topics.partitions = 1;
    config.run.stop_at_end = true;
    peergraph_tests::create_topic_with(&config, &config.topics.dead_letter, 1, &[("max.message.bytes", "200")]);
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    let avro = Encoder::<Flow>::new(WireFormat::AvroSingleObject).unwrap();
    let mut junk = b"\x07".to_vec();
    junk.resize(1_000, b' ');
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    for payload in [avro.encode_to_vec(&flow(0)).unwrap(), junk, avro.encode_to_vec(&flow(1)).unwrap()] {
        producer.send(BaseRecord::<[u8], [u8]>::to(&config.topics.flows).payload(&payload)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let metrics = Metrics::new();
    let error = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone())
        .expect_err("a refused dead letter stops the run");
    assert!(format!("{error:#}").contains(&config.topics.dead_letter), "{error:#}");
    assert_eq!(metrics.dead_lettered.get(), 1, "handed to the producer, then refused by the broker");

    let consumer: BaseConsumer =
        peergraph::kafka::client_config(&config.kafka).set("group.id", &config.input.group_id).create().unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&config.topics.flows, 0);
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    let offset = committed.find_partition(&config.topics.flows, 0).map(|p| p.offset());
    assert!(
        matches!(offset, Some(Offset::Invalid) | Some(Offset::Offset(0 | 1))),
        "the refused message (offset 1) must be read again: committed {offset:?}"
    );
}

#[test]
fn a_source_with_too_many_destinations_is_capped_and_alerted() {
    let mut config = peergraph_tests::config("cap");
    config.topics.partitions = 1;
    config.input.max_destinations_per_source = 5;
    config.time.window = Duration::from_secs(60);
    config.lifecycle.learning_period = Some(Duration::ZERO);
    config.run.stop_at_end = true;
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");
    let avro = Encoder::<Flow>::new(WireFormat::AvroSingleObject).unwrap();
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    for i in 0..30 {
        let mut f = flow(i / 10);
        f.dst_addr = format!("198.51.100.{}", i + 1);
        f.conn_state = ConnState::S0;
        producer
            .send(BaseRecord::<[u8], [u8]>::to(&config.topics.flows).payload(&avro.encode_to_vec(&f).unwrap()))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let metrics = Metrics::new();
    peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    assert_eq!(metrics.destinations_capped.get(), 25, "5 destinations kept, 25 folded");
    let alerts = peergraph_tests::collect_alerts(&config, Duration::from_secs(4));
    let capped: Vec<_> = alerts.iter().filter(|a| a.detector == "entity_cap").collect();
    assert_eq!(capped.len(), 1, "{alerts:#?}");
    assert_eq!(capped[0].entity, "host:10.0.0.1");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let mut config = peergraph::config::Config::default();
    config.kafka.brokers = "127.0.0.1:1".into();
    config.kafka.connect_timeout = Duration::from_secs(2);
    config.topics.create = false;
    let error = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), Metrics::new()).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("cannot reach Kafka at 127.0.0.1:1"), "{text}");
}
