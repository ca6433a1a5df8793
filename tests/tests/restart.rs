//! Restarts on a real broker: a pipeline stopped part-way and started again over the rest of the
//! stream produces exactly what one uninterrupted run produces (the window is replayed silently
//! up to the resume point, then emission goes on), and the long-horizon history of workload
//! edges survives in the state topic, so an edge learned before the restart is not new after it,
//! as does the volume history, so an entity is still judged by its own busiest coarse tick.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::config::Config;
use peergraph::metrics::Metrics;
use peergraph::run::RunReport;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::codec::{Encoder, WireFormat};
use peergraph_schemas::flow::proto;
use peergraph_schemas::{Alert, AlertEvent, ConnState, Flow, GraphEdge};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// 2026-01-01T00:00:00Z: a fixed start keeps the runs deterministic.
const START_MS: i64 = 1_767_225_600_000;

fn run(config: &Config) -> (RunReport, Arc<Metrics>) {
    let metrics = Metrics::new();
    let report = peergraph::run::run(config, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    (report, metrics)
}

/// One flows-topic message kept aside: (partition, key, payload, timestamp).
type Kept = (i32, Vec<u8>, Vec<u8>, i64);

/// Reads every message of `topic` and splits each partition's messages by the epoch of their
/// flow: up to `cut` (inclusive) and after it, in partition order.
fn split_by_epoch(config: &Config, topic: &str, cut: u64) -> (Vec<Kept>, Vec<Kept>) {
    let decoder = peergraph_schemas::codec::Decoder::<Flow>::default();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for message in peergraph_tests::read_messages(config, topic) {
        let flow = decoder.decode(&message.payload).expect("the simulator's flows decode");
        let kept = (message.partition, message.key, message.payload, message.timestamp.unwrap_or(flow.end_ms));
        if config.time.epoch_of(flow.end_ms) <= cut {
            before.push(kept);
        } else {
            after.push(kept);
        }
    }
    (before, after)
}

/// Appends `messages` to `topic`, each to the partition it came from, in order.
fn append(config: &Config, topic: &str, messages: &[Kept]) {
    let producer: BaseProducer =
        peergraph::kafka::client_config(&config.kafka).set("enable.idempotence", "true").create().expect("producer");
    for (partition, key, payload, timestamp) in messages {
        let record = BaseRecord::to(topic).partition(*partition).key(key).payload(payload).timestamp(*timestamp);
        producer.send(record).map_err(|(e, _)| e).expect("produce");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The same configuration with its own output topics, consumer group and state topic, reading
/// the same flows topic: the uninterrupted reference run.
fn reference_of(config: &Config) -> Config {
    let mut reference = config.clone();
    let prefix = format!("{}.reference", config.input.group_id);
    reference.topics.alerts = format!("{prefix}.alerts");
    reference.topics.service_graph = format!("{prefix}.service-graph");
    reference.topics.state = format!("{prefix}.state");
    reference.input.group_id = prefix;
    reference
}

/// Alerts as comparable, sortable text (the whole record), with how often each occurs.
fn tally<T: std::fmt::Debug>(records: &[T]) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for record in records {
        *tally.entry(format!("{record:?}")).or_insert(0) += 1;
    }
    tally
}

/// How the first run ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `run.stop_at_end`: at the end of what was there, every epoch up to the last record closed.
    AtEnd,
    /// A shutdown request (SIGTERM), while running live, once the output has caught up.
    Signal,
}

#[test]
fn a_restarted_pipeline_emits_exactly_what_one_run_emits() {
    restart_matches_one_run("restart", Stop::AtEnd);
}

#[test]
fn a_pipeline_stopped_by_a_signal_resumes_without_repeating_itself() {
    restart_matches_one_run("signal", Stop::Signal);
}

/// Runs the pipeline over the first three minutes of a simulated stream, stops it as `stop` says,
/// runs it again over the rest, and compares everything it produced with one uninterrupted run.
fn restart_matches_one_run(test: &str, stop: Stop) {
    let mut config = peergraph_tests::config(test);
    config.time.window = Duration::from_secs(60);
    // A restart replays window + lateness + clear_after: keep the hysteresis short against this
    // stream's length, so that "about one window" is what the replay bound checks.
    config.lifecycle.clear_after = Duration::from_secs(5);
    config.time.history_tick = Duration::from_secs(10);
    config.time.history_ttl = Duration::from_secs(3600);
    config.detectors.new_edge.learning_period = Duration::from_secs(60);
    config.detectors.lateral_movement.learning_period = Duration::from_secs(60);
    config.run.workers = 2;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    // Small poll batches: the checkpoint's replay offset is kept per batch, so the replay starts
    // about one window (not the whole first part) before the resume point.
    config.input.max_batch = 200;
    config.simulate.seed = 23;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(8 * 60);
    config.simulate.web_replicas = 4;
    config.simulate.swap =
        Some(SwapConfig { at: Duration::from_secs(120), lasting: Duration::from_secs(120), ..SwapConfig::default() });

    // The whole stream goes to a staging topic first, to be fed to the pipeline in two parts.
    let flows = config.topics.flows.clone();
    let mut staging = config.clone();
    staging.topics.flows = format!("{flows}.staging");
    let simulated = peergraph::simulate::simulate(&staging, &AtomicBool::new(false)).expect("simulate");
    let cut = (START_MS + 180_000) as u64;
    let (first, rest) = split_by_epoch(&config, &staging.topics.flows, cut);
    assert_eq!((first.len() + rest.len()) as u64, simulated.flows);
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    append(&config, &flows, &first);
    let (before, before_metrics) = match stop {
        Stop::AtEnd => run(&config),
        Stop::Signal => run_until_caught_up(&config),
    };
    assert_eq!(before.resumed_at, 0, "a first start has nothing to resume");
    append(&config, &flows, &rest);
    let (after, metrics) = run(&config);
    assert_eq!(after.resumed_at, before.output_frontier, "output resumes where the first run's output stopped");
    if stop == Stop::AtEnd {
        assert_eq!(after.resumed_at, cut + 1000, "right after the last epoch of the first run");
    } else {
        assert!(after.resumed_at > cut - 20_000 && after.resumed_at <= cut, "{} for {cut}", after.resumed_at);
    }
    assert!(metrics.replayed_messages.get() > 0, "the window was replayed");
    assert!(metrics.outputs_suppressed.get() > 0, "the replay recomputed output that was not produced again");
    let read_once = before.messages + after.messages - metrics.replayed_messages.get();
    if stop == Stop::AtEnd {
        assert_eq!(read_once, simulated.flows, "everything the first run read was committed");
    } else {
        // The last batches, read but not yet behind the output frontier, are read again.
        assert!(read_once >= simulated.flows);
    }
    assert!(metrics.replayed_messages.get() < first.len() as u64 / 2, "the replay is about one window, not everything");
    eprintln!(
        "restart: {} of {} flows replayed, {} outputs suppressed, {} state records loaded, replay took {} ms",
        metrics.replayed_messages.get(),
        first.len(),
        metrics.outputs_suppressed.get(),
        metrics.state_records_loaded.get(),
        metrics.restart_replay_ms.get()
    );

    let reference = reference_of(&config);
    let (whole, whole_metrics) = run(&reference);
    // Lateness was decided alike: the replayed flows were not late again, nor others late instead.
    assert_eq!(before_metrics.rejected("late") + metrics.rejected("late"), whole_metrics.rejected("late"));
    assert_eq!(whole.messages, simulated.flows);

    let restarted: Vec<Alert> = peergraph_tests::read_topic(&config, &config.topics.alerts);
    let uninterrupted: Vec<Alert> = peergraph_tests::read_topic(&reference, &reference.topics.alerts);
    // The restart happens while the swapped replica's alert is open: raised before, cleared after.
    let swapped: Vec<(AlertEvent, i64)> = restarted
        .iter()
        .filter(|a| a.detector == "peer_unique_destination")
        .map(|a| (a.event, a.event_time_ms))
        .collect();
    assert!(
        matches!(swapped.as_slice(), [(AlertEvent::Raised, r), (AlertEvent::Cleared, c)] if *r < cut as i64 && *c > cut as i64),
        "{swapped:?}"
    );
    let (restarted, uninterrupted) = (tally(&restarted), tally(&uninterrupted));
    assert!(restarted.values().all(|n| *n == 1), "an alert event emitted twice: {restarted:#?}");
    assert_same(&restarted, &uninterrupted, "alerts");

    let restarted: Vec<GraphEdge> = peergraph_tests::read_topic(&config, &config.topics.service_graph);
    let uninterrupted: Vec<GraphEdge> = peergraph_tests::read_topic(&reference, &reference.topics.service_graph);
    assert_same(&tally(&restarted), &tally(&uninterrupted), "service-graph changes");
}

/// Fails with what only one side has, if the two tallies differ.
fn assert_same(restarted: &BTreeMap<String, usize>, uninterrupted: &BTreeMap<String, usize>, what: &str) {
    let only = |a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| -> Vec<String> {
        a.iter().filter(|(k, n)| b.get(*k) != Some(n)).map(|(k, n)| format!("{n}× {k}")).collect()
    };
    let (extra, missing) = (only(restarted, uninterrupted), only(uninterrupted, restarted));
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the restarted run's {what} differ from one uninterrupted run's ({} vs {} distinct)\nonly after the restart:\n{}\nonly without it:\n{}",
        restarted.len(),
        uninterrupted.len(),
        extra.join("\n"),
        missing.join("\n")
    );
}

/// Runs the pipeline live (not `stop_at_end`) until its output frontier has stood still for two
/// seconds, then asks it to stop, as SIGTERM does.
fn run_until_caught_up(config: &Config) -> (RunReport, Arc<Metrics>) {
    let mut live = config.clone();
    // Nothing is idle here: every partition holds the frontier until the records run out.
    live.run.idle_timeout = Duration::from_secs(600);
    run_live(&live)
}

/// Runs the pipeline live (not `stop_at_end`), with `config`'s idle timeout, until its output
/// frontier has stood still for two seconds, then asks it to stop.
fn run_live(config: &Config) -> (RunReport, Arc<Metrics>) {
    let mut live = config.clone();
    live.run.stop_at_end = false;
    let metrics = Metrics::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let running = {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        std::thread::spawn(move || peergraph::run::run(&live, shutdown, metrics).expect("run"))
    };
    let (mut last, mut since) = (-1, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline && !running.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let frontier = metrics.output_frontier_ms.get();
        if frontier != last {
            (last, since) = (frontier, std::time::Instant::now());
        } else if frontier > 0 && since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    (running.join().expect("the run thread"), metrics)
}

/// A backlog read live (a pipeline started after downtime) is decided as a replay is: a partition
/// the consumer has not served for a while is not idle while records are known to wait on it, so
/// however short `run.idle_timeout` is, no flow is dropped as late that reading the same topic to
/// its end would accept.
#[test]
fn a_backlog_read_live_drops_nothing_as_late() {
    let mut config = peergraph_tests::config("backlog");
    config.time.window = Duration::from_secs(60);
    config.run.workers = 1;
    config.run.idle_timeout = Duration::from_millis(1);
    config.input.max_batch = 100;
    config.simulate.seed = 5;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(4 * 60);
    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");

    let (live, metrics) = run_live(&config);
    assert_eq!(live.messages, simulated.flows, "the whole backlog was read");
    let mut to_the_end = reference_of(&config);
    to_the_end.run.stop_at_end = true;
    let (_, reference) = run(&to_the_end);
    assert_eq!(
        metrics.rejected("late"),
        reference.rejected("late"),
        "read live, the backlog loses flows as late that a read to the end accepts"
    );
    assert_eq!(metrics.flows_accepted.get(), reference.flows_accepted.get());
}

fn flow(at_s: i64, src: &str, dst: &str, dst_port: i32) -> Flow {
    Flow {
        sensor_id: "test".into(),
        start_ms: START_MS + at_s * 1000 - 400,
        end_ms: START_MS + at_s * 1000 - 200,
        src_addr: src.into(),
        src_port: 40000,
        dst_addr: dst.into(),
        dst_port,
        protocol: proto::TCP,
        bytes_out: 300,
        bytes_in: 900,
        packets_out: 3,
        packets_in: 3,
        tcp_flags: 0x1b,
        conn_state: ConnState::SF,
        app_protocol: None,
        src_meta: None,
        dst_meta: None,
    }
}

fn publish(config: &Config, flows: &[Flow]) {
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().expect("producer");
    let encoder = Encoder::<Flow>::new(WireFormat::Json).expect("encoder");
    for flow in flows {
        let mut payload = Vec::new();
        encoder.encode(flow, &mut payload).expect("encode");
        let record = BaseRecord::to(&config.topics.flows).key(flow.src_addr.as_bytes()).payload(&payload);
        producer.send(record).map_err(|(e, _)| e).expect("produce");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[test]
fn an_edge_learned_before_a_restart_is_not_new_after_it() {
    let mut config = peergraph_tests::config("history");
    config.time.window = Duration::from_secs(10);
    config.time.allowed_lateness = Duration::from_secs(1);
    // The replay is window + lateness + clear_after: a short hysteresis for a 10 s window.
    config.lifecycle.clear_after = Duration::from_secs(1);
    config.time.history_tick = Duration::from_secs(10);
    // The early sightings (coarse epoch 10 s) are remembered until 100 s: long enough for their
    // return at 80 s, and they expire before the end, so their tombstones are written.
    config.time.history_ttl = Duration::from_secs(90);
    config.detectors.new_edge.learning_period = Duration::from_secs(20);
    config.detectors.new_edge.rare_max_epochs = 0;
    config.detectors.lateral_movement.learning_period = Duration::from_secs(20);
    config.run.workers = 2;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    // Small poll batches: the restart replays about one window, not the early flows, so only the
    // state topic can remember the early edges.
    config.input.max_batch = 10;
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    let (a, b, c) = ("10.0.0.1", "10.0.0.2", "10.0.0.3");
    let (d, e, f) = ("10.0.0.4", "10.0.0.5", "10.0.0.6");
    // Before the restart: steady traffic, plus an application edge d → e:8080 and an admin edge
    // a → b:22, both seen only early (during the learning period), long out of the window when
    // the pipeline stops.
    let mut first = Vec::new();
    for t in 1..=60 {
        first.push(flow(t, a, b, 443));
        first.push(flow(t, a, c, 5432));
        first.push(flow(t, d, c, 5432));
    }
    for t in 5..=8 {
        first.push(flow(t, d, e, 8080));
        first.push(flow(t, a, b, 22));
    }
    first.sort_by_key(|flow| flow.end_ms);
    publish(&config, &first);
    let (_, metrics) = run(&config);
    assert!(metrics.state_records_written.get() > 0, "the history was persisted");

    // After it: the learned edges come back, and two edges nobody has seen appear.
    let mut rest = Vec::new();
    for t in 70..=100 {
        rest.push(flow(t, a, b, 443));
        rest.push(flow(t, a, c, 5432));
        rest.push(flow(t, d, c, 5432));
    }
    for t in 80..=84 {
        rest.push(flow(t, d, e, 8080));
        rest.push(flow(t, d, f, 9090));
        rest.push(flow(t + 2, a, b, 22));
        rest.push(flow(t + 2, a, e, 22));
    }
    rest.sort_by_key(|flow| flow.end_ms);
    publish(&config, &rest);
    let (after, metrics) = run(&config);
    assert!(after.resumed_at > 0);
    assert!(metrics.replayed_messages.get() < first.len() as u64 / 2, "the replay is about one window");
    assert!(metrics.state_records_loaded.get() > 0, "the history was read back");
    assert!(metrics.state_tombstones_written.get() > 0, "expired sightings were removed from the state topic");
    let client = peergraph::kafka::client_config(&config.kafka);
    let state = peergraph::kafka::state::load(&config.kafka, &client, &config.topics.state, 0, 1, &Metrics::default())
        .expect("the state topic reads back");
    let coarse: std::collections::BTreeSet<i64> =
        state.history.iter().map(|s| (s.coarse as i64 - START_MS) / 1000).collect();
    assert_eq!(coarse.into_iter().collect::<Vec<_>>(), vec![20, 30, 40, 50, 60, 70, 80, 90, 100]);

    let alerts: Vec<Alert> = peergraph_tests::read_topic(&config, &config.topics.alerts);
    let raised: Vec<(String, String, String)> = alerts
        .iter()
        .filter(|a| a.event == AlertEvent::Raised && (a.detector == "new_edge" || a.detector == "lateral_movement"))
        .map(|a| (a.detector.clone(), a.entity.clone(), a.evidence.get("destination").cloned().unwrap_or_default()))
        .collect();
    assert!(
        raised.iter().all(|(_, _, dst)| !dst.is_empty()),
        "every new-edge and lateral-movement alert names its destination: {alerts:#?}"
    );
    let mut found: Vec<(String, String, String)> = raised;
    found.sort();
    assert_eq!(
        found,
        vec![
            ("lateral_movement".to_owned(), format!("host:{a}"), format!("host:{e}")),
            ("new_edge".to_owned(), format!("host:{d}"), format!("host:{f}")),
        ],
        "only the edges never seen before are new after the restart: {alerts:#?}"
    );
}

#[test]
fn an_entitys_own_volume_history_survives_a_restart() {
    let mut config = peergraph_tests::config("volumes");
    config.time.window = Duration::from_secs(10);
    config.time.allowed_lateness = Duration::from_secs(1);
    // The replay is window + lateness + clear_after: a short hysteresis for a 10 s window.
    config.lifecycle.clear_after = Duration::from_secs(1);
    config.time.history_tick = Duration::from_secs(10);
    config.time.history_ttl = Duration::from_secs(3600);
    let exfil = &mut config.detectors.exfiltration;
    (exfil.min_bytes, exfil.ungrouped_min_bytes) = (10_000, 50_000);
    (exfil.min_ratio_to_own, exfil.min_history_ticks) = (2, 3);
    config.detectors.beaconing.enabled = false;
    config.run.workers = 2;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    // Small poll batches: the restart replays about one window, so only the state topic can
    // remember the early coarse ticks.
    config.input.max_batch = 10;
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");

    let (host, external) = ("10.0.0.8", "198.51.100.7");
    let upload = |t: i64, bytes: i64| Flow { bytes_out: bytes, ..flow(t, host, external, 443) };
    // Before the restart: 3,000 bytes a second, 30,000 per 10-second coarse tick.
    let first: Vec<Flow> = (1..=60).map(|t| upload(t, 3000)).collect();
    publish(&config, &first);
    run(&config);

    // After it: the same for ten seconds, then 55,000 in one window (above the ungrouped floor
    // of 50,000 but below twice its busiest tick), then 65,000 (above both).
    let mut rest: Vec<Flow> = (70..=79).map(|t| upload(t, 3000)).collect();
    rest.extend((85..=89).map(|t| upload(t, 11_000)));
    rest.extend((95..=99).map(|t| upload(t, 13_000)));
    publish(&config, &rest);
    let (after, metrics) = run(&config);
    assert!(after.resumed_at > 0);
    assert!(metrics.replayed_messages.get() < first.len() as u64 / 2, "the replay is about one window");

    let alerts: Vec<Alert> = peergraph_tests::read_topic(&config, &config.topics.alerts);
    let exfiltration: Vec<&Alert> = alerts.iter().filter(|a| a.detector == "exfiltration").collect();
    let raised: Vec<&&Alert> = exfiltration.iter().filter(|a| a.event == AlertEvent::Raised).collect();
    assert_eq!(raised.len(), 1, "{exfiltration:#?}");
    let at_s = (raised[0].event_time_ms - START_MS) / 1000;
    assert!((95..=100).contains(&at_s), "raised by the 65,000-byte window, not the 55,000 one: at {at_s} s");
    let evidence = &raised[0].evidence;
    assert_eq!(evidence["own_peak_tick_bytes"], "30000");
    let ticks: i64 = evidence["own_history_ticks"].parse().expect("a count");
    assert!(ticks >= 6, "the ticks before the restart count (at most 3 would without them): {ticks}");

    // The state topic holds the first run's ticks whole; none was recorded in part.
    let client = peergraph::kafka::client_config(&config.kafka);
    let state = peergraph::kafka::state::load(&config.kafka, &client, &config.topics.state, 0, 1, &Metrics::default())
        .expect("the state topic reads back");
    let ticks: BTreeMap<i64, i64> = state
        .volumes
        .iter()
        .filter(|v| v.entity == format!("host:{host}"))
        .map(|v| ((v.coarse as i64 - START_MS) / 1000, v.bytes))
        .collect();
    for coarse in [10, 20, 30, 40, 50] {
        assert_eq!(ticks.get(&coarse), Some(&30_000), "tick {coarse}: {ticks:?}");
    }
    assert!(ticks.range(..=60).all(|(_, bytes)| *bytes == 30_000), "{ticks:?}");
    // Derived after the restart (a flow at 70 s belongs to the tick ending at 70 s).
    assert_eq!((ticks.get(&70), ticks.get(&80)), (Some(&3000), Some(&27_000)), "{ticks:?}");
}
