//! The hostile-input probes, as tests on the real broker (docs/reliability.md has the table).
//!
//! Row 1: a valid flow stamped ten minutes ahead of the stream, first on its partition, and more
//! of them among the honest flows, used to push the partition's watermark ahead and make every
//! honest flow after it late (here 34 alert events became 0). Now the alerts are exactly the
//! reference run's, and the forged flows are counted under their sensor.
//!
//! Row 2: one message over 1 MB stopped the run for good (its dead letter was too large).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::config::Config;
use peergraph::metrics::Metrics;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::codec::{Encoder, WireFormat};
use peergraph_schemas::flow::proto;
use peergraph_schemas::{Alert, ConnState, Flow};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// 2026-01-01T00:00:00Z: a fixed start keeps the run deterministic.
const START_MS: i64 = 1_767_225_600_000;
const TEN_MINUTES_MS: i64 = 600_000;

fn simulated(test: &str) -> Config {
    let mut config = peergraph_tests::config(test);
    config.time.window = Duration::from_secs(60);
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    config.simulate.seed = 7;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(6 * 60);
    config.simulate.web_replicas = 4;
    let swap = SwapConfig { at: Duration::from_secs(90), lasting: Duration::from_secs(120), ..SwapConfig::default() };
    config.simulate.swap = Some(swap);
    config
}

/// A valid flow from a host that is part of no scenario, ending at `end_ms`.
fn forged(end_ms: i64) -> Flow {
    Flow {
        sensor_id: "forger".into(),
        start_ms: end_ms - 500,
        end_ms,
        src_addr: "10.66.0.1".into(),
        src_port: 40000,
        dst_addr: "10.66.0.2".into(),
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

fn produce_to_every_partition(config: &Config, flows: &[Flow]) {
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().expect("producer");
    let encoder = Encoder::<Flow>::new(WireFormat::AvroSingleObject).expect("encoder");
    for partition in 0..config.topics.partitions {
        for flow in flows {
            let payload = encoder.encode_to_vec(flow).expect("encode");
            producer
                .send(BaseRecord::<[u8], [u8]>::to(&config.topics.flows).partition(partition).payload(&payload))
                .map_err(|(e, _)| e)
                .expect("send");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// What identifies an alert event and what it says, for comparing two runs.
fn summary(alerts: &[Alert]) -> Vec<String> {
    let mut lines: Vec<String> = alerts
        .iter()
        .map(|a| format!("{} {:?} {} {} {:?}", a.alert_id, a.event, a.event_time_ms, a.entity, a.evidence))
        .collect();
    lines.sort();
    lines
}

#[test]
fn flows_stamped_ahead_of_their_partition_change_no_alert() {
    let reference = simulated("ahead-reference");
    let stream = peergraph::simulate::simulate(&reference, &AtomicBool::new(false)).expect("simulate");
    let reference_metrics = Metrics::new();
    peergraph::run::run(&reference, Arc::new(AtomicBool::new(false)), reference_metrics.clone()).expect("run");
    let expected = summary(&peergraph_tests::collect_alerts(&reference, Duration::from_secs(5)));
    assert!(expected.len() >= 2, "the reference run alerts on the swapped replica: {expected:#?}");

    // The same stream, with a flow ten minutes ahead first on every partition, and one more on
    // each after the honest flows (alone, so never corroborated). With `input.max_skew = "0s"`
    // (the old behaviour) this run has no alert at all.
    let probed = simulated("ahead-probed");
    peergraph::kafka::ensure_topics(&probed.kafka, &probed.topics).expect("topics");
    produce_to_every_partition(&probed, &[forged(START_MS + TEN_MINUTES_MS)]);
    let again = peergraph::simulate::simulate(&probed, &AtomicBool::new(false)).expect("simulate");
    assert_eq!(again.flows, stream.flows, "the same simulated stream");
    let end = START_MS + 6 * 60_000;
    produce_to_every_partition(&probed, &[forged(end + TEN_MINUTES_MS)]);
    let metrics = Metrics::new();
    let ran = peergraph::run::run(&probed, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    let partitions = probed.topics.partitions as u64;
    assert_eq!(ran.messages, stream.flows + 2 * partitions);
    let alerts = summary(&peergraph_tests::collect_alerts(&probed, Duration::from_secs(5)));
    assert_eq!(alerts, expected, "the forged flows changed the alerts");

    // The trailing forged flows were refused as ahead of their partition, under their sensor; the
    // leading ones, first on their partitions, could not be judged and were held at their own
    // epoch, which never closed.
    assert_eq!(metrics.rejected("ahead_of_partition"), partitions);
    assert_eq!(ran.summary.rejected.get("ahead_of_partition"), Some(&partitions), "the exit summary counts them");
    assert_eq!(metrics.rejected("late"), reference_metrics.rejected("late"), "no honest flow was made late");
    let exported = {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encode");
        text
    };
    assert!(
        exported.contains(&format!("peergraph_flows_ahead_of_partition_total{{sensor=\"forger\"}} {partitions}")),
        "{exported}"
    );
}

/// Row 2: a message over 1 MB was refused as oversized, its dead letter then refused by the
/// producer's own `message.max.bytes`, and `run` exited (and read it again on every restart).
/// Now its dead letter is a summary and the run goes on past it.
#[test]
fn a_message_too_large_for_the_dead_letter_topic_is_summarised_and_the_run_goes_on() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut config = peergraph_tests::config("poison-pill");
    config.topics.dead_letter = format!("{}.dead", config.topics.flows);
    config.topics.partitions = 1;
    config.run.stop_at_end = true;
    // The flows topic takes messages up to 3 MB (as a user's may); the dead-letter topic keeps
    // the broker's default (about 1 MB).
    peergraph_tests::create_topic_with(&config, &config.topics.flows, 1, &[("max.message.bytes", "3000000")]);
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    let encoder = Encoder::<Flow>::new(WireFormat::AvroSingleObject).unwrap();
    let pill: Vec<u8> = (0..1_200_000u32).map(|i| (i % 251) as u8).collect();
    let producer: BaseProducer =
        peergraph::kafka::client_config(&config.kafka).set("message.max.bytes", "3000000").create().unwrap();
    let honest =
        |i: i64| encoder.encode_to_vec(&Flow { sensor_id: "s".into(), ..forged(START_MS + i * 1000) }).unwrap();
    for payload in [honest(0), pill.clone(), honest(1)] {
        producer
            .send(BaseRecord::<[u8], [u8]>::to(&config.topics.flows).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let metrics = Metrics::new();
    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone())
        .expect("an oversized message does not stop the run");
    assert_eq!(ran.messages, 3);
    assert_eq!(metrics.rejected("oversized"), 1);
    assert_eq!(metrics.flows_accepted.get(), 2, "the flows around the pill went through");
    assert_eq!((metrics.dead_lettered.get(), metrics.dead_letters_summarised.get()), (1, 1));
    assert_eq!(metrics.dead_letters_lost.get(), 0);
    // The exit summary `run` prints says the same.
    assert_eq!(ran.summary.rejected.get("oversized"), Some(&1), "{:?}", ran.summary);
    assert_eq!((ran.summary.flows_accepted, ran.summary.dead_letters_summarised), (2, 1));

    let dead = peergraph_tests::read_messages(&config, &config.topics.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, pill[..256], "the summary carries the message's first bytes");

    // Committed past the pill: a restart does not read it again.
    let consumer: BaseConsumer =
        peergraph::kafka::client_config(&config.kafka).set("group.id", &config.input.group_id).create().unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(&config.topics.flows, 0);
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    let offset = committed.find_partition(&config.topics.flows, 0).map(|p| p.offset());
    assert_eq!(offset, Some(rdkafka::Offset::Offset(3)));
}

/// Row 3: flows from 100,000 spoofed sources took 2.35 GB (~19 KB per source), a million passed
/// 17 GB. Beyond `input.max_sources` distinct address-based sources in the window a worker folds
/// further sources into `overflow:sources`: the flood is counted, alerted at its target, and the
/// swapped replica (a pod: never capped) is still found.
#[test]
fn a_flood_of_spoofed_sources_is_folded_alerted_at_its_target_and_blinds_nothing() {
    let mut config = simulated("spoofed");
    config.input.max_sources = 1_000;
    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let swap = simulated.labels[0].clone();
    // 4,000 sources from a benchmarking range, one flow each per partition, in the stream's last
    // second (not late), all to one exposed host.
    let end_ms = START_MS + 6 * 60_000 - 1_000;
    let flood: Vec<Flow> = (0..4_000u32)
        .map(|i| Flow {
            sensor_id: "edge".into(),
            src_addr: format!("198.18.{}.{}", i / 250, 1 + i % 250),
            dst_addr: "10.77.0.1".into(),
            conn_state: ConnState::S0,
            tcp_flags: 0x02,
            bytes_in: 0,
            packets_in: 0,
            ..forged(end_ms + i64::from(i % 1_000))
        })
        .collect();
    produce_to_every_partition(&config, &flood);

    let metrics = Metrics::new();
    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    let flooded = 4_000 * config.topics.partitions as u64;
    assert_eq!(ran.messages, simulated.flows + flooded);
    // At most 1,000 sources kept as themselves: at least 3,000 of the flood's sources folded, on
    // every partition.
    let capped = metrics.sources_capped.get();
    assert!(capped >= 3_000 * config.topics.partitions as u64, "{capped} flows folded");
    assert_eq!(ran.summary.sources_capped, capped, "in the exit summary");

    let alerts = peergraph_tests::collect_alerts(&config, Duration::from_secs(5));
    assert!(
        alerts.iter().any(|a| a.detector == "entity_cap"
            && a.entity == "host:10.77.0.1"
            && a.alert_id == peergraph_topology::detectors::alert_id("entity_cap", "host:10.77.0.1", "sources")),
        "the flood is alerted at its target: {:#?}",
        alerts.iter().map(|a| (&a.detector, &a.entity)).collect::<Vec<_>>()
    );
    assert!(
        alerts.iter().any(|a| a.detector == "peer_unique_destination" && a.entity == swap.entity),
        "the swapped replica is still found"
    );
    assert!(alerts.iter().all(|a| !a.entity.starts_with("ext:198.18.")), "no alert per spoofed source");
}

/// Row 6: a backlog read at start went through the dataflow all at once: the output frontier
/// stayed at 0 and one offset commit was made at the end, so a crash at any point restarted
/// from offset 0. With `run.max_lag` the backlog enters one event-time slice at a time: the
/// output frontier and the commits advance while it is read, and the alerts are those of the
/// run that took it all at once.
#[test]
fn a_backlog_is_read_in_event_time_slices_and_committed_as_it_goes() {
    let mut whole = simulated("backlog-whole");
    whole.run.max_lag = Duration::ZERO;
    let stream = peergraph::simulate::simulate(&whole, &AtomicBool::new(false)).expect("simulate");
    let whole_metrics = Metrics::new();
    let at_once = peergraph::run::run(&whole, Arc::new(AtomicBool::new(false)), whole_metrics.clone()).expect("run");
    let expected = summary(&peergraph_tests::collect_alerts(&whole, Duration::from_secs(5)));
    assert!(expected.len() >= 2, "the swapped replica is alerted: {expected:#?}");

    let mut sliced = simulated("backlog-sliced");
    sliced.run.max_lag = Duration::from_secs(30);
    // Offsets are committed per poll batch, and the first batch is read before any record says
    // where the stream starts: batches far smaller than the stream, as a real backlog's are
    // against the default 20,000.
    sliced.input.max_batch = 1_000;
    let again = peergraph::simulate::simulate(&sliced, &AtomicBool::new(false)).expect("simulate");
    assert_eq!(again.flows, stream.flows, "the same simulated stream");
    let metrics = Metrics::new();
    let ran = peergraph::run::run(&sliced, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    assert_eq!(ran.messages, stream.flows);
    assert_eq!(ran.summary.flows_accepted, at_once.summary.flows_accepted, "every flow read once");
    assert_eq!(ran.summary.rejected, at_once.summary.rejected, "the same refusals (none late for the slicing)");
    let alerts = summary(&peergraph_tests::collect_alerts(&sliced, Duration::from_secs(5)));
    assert_eq!(alerts, expected, "slicing changed the alerts");

    // Six minutes of event time in 30-second slices: the frontier moved with each slice, and the
    // offsets were committed behind it as the read-ahead (three slices) was passed, not only at
    // the end. (Taken at once, the debug build's frontier moves as it likes: no bound to check.)
    assert!(
        ran.frontier_moves >= 12,
        "frontier moved {} times (at once: {})",
        ran.frontier_moves,
        at_once.frontier_moves
    );
    let commits = metrics.offset_commits.get();
    assert!(commits >= 4, "{commits} commits (at once: {})", whole_metrics.offset_commits.get());
    assert!(metrics.partitions_paused.get() > 0, "partitions waited for the output");
    assert_eq!(metrics.partitions_waiting.get(), 0, "none waits once the run is over");
}
