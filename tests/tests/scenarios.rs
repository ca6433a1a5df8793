//! Scenarios on a real broker: a simulated benign day with every attack class injected at its own
//! time, by its own office client. Each attack is alerted on the right entity by the detector made
//! for it, while it happens; the benign traffic raises no alert at all.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::metrics::Metrics;
use peergraph::simulate::{AttackConfig, AttackKind, SwapConfig};
use peergraph_schemas::codec::{Encoder, WireFormat};
use peergraph_schemas::{AlertEvent, Indicator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const START_MS: i64 = 1_767_225_600_000;
const HOUR: u64 = 3600;

#[test]
fn a_benign_day_with_every_attack_class() {
    let mut config = peergraph_tests::config("scenarios");
    config.time.window = Duration::from_secs(300);
    config.run.workers = 2;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    // A one-hour learning period for what needs history, and an upload floor for hosts without peers
    // that a 75 MB burst in five minutes crosses.
    config.detectors.lateral_movement.learning_period = Duration::from_secs(HOUR);
    config.detectors.new_edge.learning_period = Duration::from_secs(HOUR);
    // After only an hour of history every edge is "rare"; judge newness alone here.
    config.detectors.new_edge.rare_max_epochs = 0;
    config.detectors.exfiltration.ungrouped_min_bytes = 50_000_000;
    config.simulate.seed = 3;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(24 * HOUR);
    config.simulate.step = Duration::from_secs(20);
    config.simulate.clients = 10;
    config.simulate.web_replicas = 4;
    config.simulate.swap = Some(SwapConfig {
        at: Duration::from_secs(14 * HOUR),
        lasting: Duration::from_secs(600),
        ..SwapConfig::default()
    });
    let kinds = [
        AttackKind::PortScan,
        AttackKind::Sweep,
        AttackKind::Beacon,
        AttackKind::Exfiltration,
        AttackKind::LateralMovement,
        AttackKind::IntelHit,
    ];
    config.simulate.attacks = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| AttackConfig {
            kind: *kind,
            at: Duration::from_secs((2 + 2 * i as u64) * HOUR),
            lasting: Duration::from_secs(600),
            client: i,
            target: None,
            attacker: None,
        })
        .collect();

    // Threat intel lists the intel-hit target (and a network nobody talks to).
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    let encoder = Encoder::<Indicator>::new(WireFormat::Json).unwrap();
    for (network, description) in [("203.0.113.200", "test C2"), ("192.0.2.128/25", "unused")] {
        let indicator =
            Indicator { network: network.into(), source: "test-feed".into(), description: Some(description.into()) };
        let payload = encoder.encode_to_vec(&indicator).unwrap();
        producer.send(BaseRecord::to(&config.topics.indicators).key(network).payload(&payload)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), Metrics::new()).expect("run");
    assert_eq!(ran.messages, simulated.flows);
    let alerts = peergraph_tests::collect_alerts(&config, Duration::from_secs(5));
    let raised: Vec<_> = alerts.iter().filter(|a| a.event == AlertEvent::Raised).collect();

    let expected: BTreeMap<&str, &str> = [
        ("swapped_image", "peer_unique_destination"),
        ("port_scan", "scan"),
        ("sweep", "scan"),
        ("beacon", "beaconing"),
        ("exfiltration", "exfiltration"),
        ("lateral_movement", "lateral_movement"),
        ("intel_hit", "threat_intel"),
    ]
    .into_iter()
    .collect();
    let window_ms = 300_000;
    let mut missed = Vec::new();
    for label in &simulated.labels {
        let detector = expected[label.attack.as_str()];
        let hit = raised.iter().find(|a| {
            a.entity == label.entity
                && a.detector == detector
                // A flow ends up to one simulation step before the round that emits it.
                && a.event_time_ms >= label.start_ms - 20_000
                && a.event_time_ms <= label.end_ms + window_ms
        });
        if hit.is_none() {
            missed.push(format!(
                "{} by {} (+{}s..+{}s) was not alerted by {detector}",
                label.attack,
                label.entity,
                (label.start_ms - START_MS) / 1000,
                (label.end_ms - START_MS) / 1000,
            ));
        }
    }
    let attackers: Vec<&str> = simulated.labels.iter().map(|l| l.entity.as_str()).collect();
    let benign: Vec<_> = raised
        .iter()
        .filter(|a| !attackers.contains(&a.entity.as_str()))
        .map(|a| format!("{} {} +{}s: {}", a.detector, a.entity, (a.event_time_ms - START_MS) / 1000, a.summary))
        .collect();
    let about_attackers: Vec<_> = raised
        .iter()
        .filter(|a| attackers.contains(&a.entity.as_str()) && a.entity.starts_with("pod:"))
        .map(|a| format!("{} {} +{}s", a.detector, a.entity, (a.event_time_ms - START_MS) / 1000))
        .collect();
    assert!(
        missed.is_empty() && benign.is_empty(),
        "missed: {missed:#?}\nbenign traffic raised {} alerts: {:#?}\nalerts about attackers: {about_attackers:#?}",
        benign.len(),
        &benign[..benign.len().min(15)]
    );
}
