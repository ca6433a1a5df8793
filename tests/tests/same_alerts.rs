//! The engine's changes change nothing but its cost: the alert events of a fixed simulated stream
//! (every attack class, the swapped replica, an inventory asset and a threat-intel indicator) are
//! exactly those recorded in `tests/data/golden/alerts.txt` before the change: the same ids,
//! events, scores, summaries, evidence and times. The file holds one line per event (its time,
//! detector, event and id, and a digest of the event's whole JSON), so that it stays small.
//!
//! No Kafka: the flows are resolved and windowed into the dataflow as the pipeline's source and
//! `Feeds::window` do (future retractions held by a `ScheduledInput`), epoch by epoch, on one and
//! on two timely workers. The file was recorded before names were interned and retractions held by
//! the feeder, with every retraction handed to differential at once.
//!
//! After a change that is *meant* to change alerts, record the file again with
//! `PEERGRAPH_BLESS=1 cargo test -p peergraph-tests --test same_alerts` and say why in the commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::input::Input;
use peergraph::config::Config;
use peergraph::simulate::{AttackConfig, AttackKind, Environment, Generated, SwapConfig};
use peergraph_schemas::Alert;
use peergraph_topology::{
    build, AssetRecord, Edge, EntityResolver, Epoch, Indicator, Inputs, ScheduledInput, Volume, WorkloadEdge,
};
use timely::dataflow::operators::{Inspect, Probe};

/// 2026-01-05 08:00 UTC.
const START_MS: i64 = 1_767_600_000_000;
const MINUTES: u64 = 20;

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/golden/alerts.txt")
}

fn attack(kind: AttackKind, minute: u64, target: Option<&str>) -> AttackConfig {
    AttackConfig {
        kind,
        at: Duration::from_secs(minute * 60),
        lasting: Duration::from_secs(240),
        client: 0,
        target: target.map(str::to_owned),
        attacker: None,
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.time.tick = Duration::from_secs(1);
    config.time.window = Duration::from_secs(60);
    config.time.history_tick = Duration::from_secs(60);
    config.detectors.beaconing.min_score = 90;
    config.detectors.new_edge.learning_period = Duration::from_secs(180);
    config.detectors.lateral_movement.learning_period = Duration::from_secs(180);
    config.detectors.exfiltration.ungrouped_min_bytes = 20_000_000;
    config.simulate.seed = 11;
    config.simulate.clients = 12;
    config.simulate.web_replicas = 4;
    config.simulate.swap = Some(SwapConfig { at: Duration::from_secs(240), ..SwapConfig::default() });
    config.simulate.attacks = vec![
        attack(AttackKind::PortScan, 5, None),
        attack(AttackKind::Beacon, 4, None),
        attack(AttackKind::Exfiltration, 9, None),
        attack(AttackKind::LateralMovement, 11, None),
        attack(AttackKind::IntelHit, 13, Some("198.51.100.66")),
    ];
    config
}

/// The simulated flows of the whole run, in the order the simulator makes them.
fn flows(config: &Config) -> Vec<peergraph_schemas::Flow> {
    let mut env = Environment::new(&config.simulate, START_MS);
    let step_ms = config.simulate.step.as_millis() as i64;
    let mut out: Vec<Generated> = Vec::new();
    let mut now = START_MS;
    while now < START_MS + (MINUTES * 60_000) as i64 {
        now += step_ms;
        env.round(now, step_ms, &mut out);
    }
    out.into_iter().map(|generated| generated.flow).collect()
}

/// An alert event as the golden file records it: `time detector event id digest`, the digest
/// being the first 64 bits of the SHA-256 of the event's JSON.
fn line(alert: &Alert) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_string(alert).expect("an alert serialises");
    let digest = hex::encode(&Sha256::digest(json.as_bytes())[..8]);
    format!("{} {} {:?} {} {digest}", alert.event_time_ms, alert.detector, alert.event, alert.alert_id)
}

/// Every alert event the dataflow emits over `flows` on `workers` workers, sorted.
fn alert_events(config: &Config, flows: Vec<peergraph_schemas::Flow>, workers: usize) -> Vec<Alert> {
    let topology = config.topology();
    let time = topology.time.clone();
    let flows = Arc::new(flows);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let resolver = EntityResolver::new(&topology.entities);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = sink.clone();
        let topology = topology.clone();
        let (mut contacts, mut assets, mut indicators, mut history, probe) =
            worker.dataflow::<Epoch, _, _>(move |scope| {
                let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let (assets_in, assets) = scope.new_collection::<AssetRecord, isize>();
                let (indicators_in, indicators) = scope.new_collection::<Indicator, isize>();
                let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
                // Nothing restored: the volume history is derived from the flows alone.
                let (_, volumes) = scope.new_collection();
                let outputs = build(&topology, Inputs { contacts, assets, indicators, history, volumes });
                let (probe, _) =
                    outputs.alerts.inspect(move |alert: &Alert| sink.lock().unwrap().push(alert.clone())).probe();
                (ScheduledInput::new(contacts_in), assets_in, indicators_in, ScheduledInput::new(history_in), probe)
            });
        if index == 0 {
            assets.insert(AssetRecord {
                network: "10.20.0.0/24".parse().unwrap(),
                id: "db-primary".into(),
                role: Some("database".into()),
                criticality: 4,
            });
            indicators.insert(Indicator {
                network: "198.51.100.0/24".parse().unwrap(),
                source: "golden-feed".into(),
                description: "C2".into(),
            });
        }
        // Each worker reads its share of the flows, pre-aggregated per (edge, epoch).
        let mut batches: BTreeMap<Epoch, HashMap<Edge, Volume>> = BTreeMap::new();
        for (_, flow) in flows.iter().enumerate().filter(|(n, _)| n % peers == index) {
            let edge = Edge {
                src: resolver.resolve(&flow.src_addr, flow.src_meta.as_ref()),
                dst: resolver.resolve(&flow.dst_addr, flow.dst_meta.as_ref()),
                dst_port: flow.dst_port as u16,
                protocol: flow.protocol as u8,
            };
            batches
                .entry(time.epoch_of(flow.end_ms))
                .or_default()
                .entry(edge)
                .or_default()
                .plus_equals(&Volume::of_flow(flow));
        }
        let first = time.epoch_of(START_MS);
        let last = time.epoch_of(START_MS + (MINUTES * 60_000) as i64);
        let mut remembered: HashSet<(WorkloadEdge, Epoch)> = HashSet::new();
        // Every worker steps through every epoch, so their inputs advance together.
        for epoch in (first..=last).step_by(time.tick_ms() as usize) {
            contacts.advance_to(epoch);
            assets.advance_to(epoch);
            indicators.advance_to(epoch);
            history.advance_to(epoch);
            for (edge, volume) in batches.remove(&epoch).unwrap_or_default() {
                let coarse = time.history_epoch_of(epoch);
                let workload_edge = WorkloadEdge::from(&edge);
                if remembered.insert((workload_edge.clone(), coarse)) {
                    history.update_at((workload_edge.clone(), coarse), coarse, 1);
                    history.update_at((workload_edge, coarse), coarse + time.history_ttl_ms(), -1);
                }
                contacts.update_at((edge.clone(), epoch), epoch + time.window_ms(), volume.negated());
                contacts.update_at((edge, epoch), epoch, volume);
            }
            contacts.flush();
            assets.flush();
            indicators.flush();
            history.flush();
            worker.step_while(|| probe.less_than(&epoch));
        }
        // Let the last window slide out and the lifecycle clear what it held.
        let end = last + 2 * time.window_ms() + time.tick_ms();
        assert!(batches.is_empty(), "every flow ends within the run");
        contacts.advance_to(end);
        contacts.flush();
        drop((assets, indicators, history));
        worker.step_while(|| probe.less_than(&end));
    })
    .expect("timely runs");
    let mut events = Arc::try_unwrap(events).expect("workers are done").into_inner().unwrap();
    events.sort_by_cached_key(line);
    events
}

#[test]
fn the_alerts_of_a_fixed_stream_are_the_recorded_ones_on_one_and_two_workers() {
    let config = config();
    let flows = flows(&config);
    let one = alert_events(&config, flows.clone(), 1);
    if std::env::var_os("PEERGRAPH_BLESS").is_some() {
        std::fs::create_dir_all(golden().parent().unwrap()).unwrap();
        let lines: Vec<String> = one.iter().map(line).collect();
        std::fs::write(golden(), lines.join("\n") + "\n").unwrap();
    }
    let recorded: Vec<String> = std::fs::read_to_string(golden())
        .expect("tests/data/golden/alerts.txt (record it with PEERGRAPH_BLESS=1)")
        .lines()
        .map(str::to_owned)
        .collect();
    let detectors: std::collections::BTreeSet<&str> =
        recorded.iter().filter_map(|line| line.split(' ').nth(1)).collect();
    assert!(detectors.len() >= 5, "the stream exercises most detectors: {detectors:?}");
    assert_same(&one, &recorded, "1 worker");
    let two = alert_events(&config, flows, 2);
    assert_same(&two, &recorded, "2 workers");
}

/// Fails with the first differing events (the unexpected ones in full), not thousands of lines.
fn assert_same(got: &[Alert], recorded: &[String], run: &str) {
    let lines: Vec<String> = got.iter().map(line).collect();
    if lines == recorded {
        return;
    }
    let got_set: HashSet<&String> = lines.iter().collect();
    let recorded_set: HashSet<&String> = recorded.iter().collect();
    let missing: Vec<&String> = recorded.iter().filter(|l| !got_set.contains(l)).take(3).collect();
    let extra: Vec<&Alert> = got.iter().filter(|a| !recorded_set.contains(&line(a))).take(3).collect();
    panic!(
        "{run}: {} alert events, {} recorded; first missing: {missing:#?}\nfirst unexpected: {extra:#?}",
        got.len(),
        recorded.len()
    );
}
