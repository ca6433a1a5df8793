//! Efficacy on a realistic day: the organisation profile (office subnets, admins, servers,
//! Kubernetes namespaces with churn and rolling deploys, SaaS, diurnal load, noise) with attacks
//! by office clients, servers, admins and pods, through the real pipeline on a real broker,
//! measured against the labels file the simulator wrote. Every attack is detected on its entity
//! by the detector made for it, and the benign day raises at most a stated number of alerts.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::evaluate::evaluate;
use peergraph::metrics::Metrics;
use peergraph::simulate::{AttackConfig, AttackKind, OrganisationConfig, Profile, SwapConfig};
use peergraph_schemas::codec::{Encoder, WireFormat};
use peergraph_schemas::Indicator;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Monday 2026-01-05 08:00 UTC; the run ends at 14:30. The morning is the learning period, the
/// attacks come after it.
const START_MS: i64 = 1_767_600_000_000;
const HOUR: u64 = 3600;
/// At most this many raised alerts on benign entities over the run, from every detector
/// (measured: 6 — three benign external API calls scored 90–93 as beacons at five-second ticks,
/// two Poisson connection counts of one web replica at 20 against peers at 8, one worker pod the
/// only one of three to reach the queue in a window). Before peer-group deviation took counting
/// noise into account and left out small groups and ratios of few connections, it alone raised
/// 122 here.
const MAX_FALSE_POSITIVES: usize = 8;

fn attack(kind: AttackKind, hours: f64, attacker: &str, target: Option<&str>) -> AttackConfig {
    AttackConfig {
        kind,
        at: Duration::from_secs_f64(hours * HOUR as f64),
        lasting: Duration::from_secs(600),
        client: 0,
        target: target.map(str::to_owned),
        attacker: Some(attacker.to_owned()),
    }
}

#[test]
fn an_organisations_working_day_every_attack_detected_false_positives_bounded() {
    let mut config = peergraph_tests::config("efficacy");
    config.time.window = Duration::from_secs(300);
    // Five-second ticks: a fifth of the epochs of the default, so the day replays in time; the
    // injected beacon (every 30 s ± 3 s) is still resolved.
    config.time.tick = Duration::from_secs(5);
    config.run.workers = 2;
    config.run.stop_at_end = true;
    // A replay as fast as Kafka delivers: a partition the consumer has not served for a couple of
    // seconds is behind, not idle (with 2 s, flows of a starved partition were dropped as late).
    config.run.idle_timeout = Duration::from_secs(60);
    // A compressed working day: three hours of learning (08:00–11:00, the working morning) stand
    // for the default day; with hours of history instead of weeks, "rare" means nothing, so only
    // new edges are judged.
    config.detectors.lateral_movement.learning_period = Duration::from_secs(3 * HOUR);
    config.detectors.new_edge.learning_period = Duration::from_secs(3 * HOUR);
    config.detectors.new_edge.rare_max_epochs = 0;
    // The injected exfiltration sends ~80 MB in a window from an ungrouped server; the default
    // floor for entities without peers is 1 GB per window.
    config.detectors.exfiltration.ungrouped_min_bytes = 50_000_000;
    let sim = &mut config.simulate;
    sim.seed = 5;
    sim.environment = Profile::Organisation;
    sim.start_ms = Some(START_MS);
    sim.duration = Duration::from_secs(13 * HOUR / 2);
    sim.step = Duration::from_secs(20);
    sim.organisation = OrganisationConfig {
        office_clients: 20,
        admins: 2,
        rate_scale: 0.25,
        // A busy release day: rolling deploys (every replica changes image) must not alert.
        deploys_per_day: 8.0,
        ..OrganisationConfig::default()
    };
    sim.swap = Some(SwapConfig {
        at: Duration::from_secs_f64(5.25 * HOUR as f64),
        lasting: Duration::from_secs(600),
        ..SwapConfig::default()
    });
    sim.attacks = vec![
        attack(AttackKind::PortScan, 3.25, "office[5]", Some("10.10.0.20")),
        attack(AttackKind::Sweep, 3.65, "shop/api[1]", Some("10.20.1.0")),
        attack(AttackKind::Beacon, 4.05, "office[12]", None),
        attack(AttackKind::LateralMovement, 4.45, "office[17]", Some("10.10.0.0")),
        attack(AttackKind::IntelHit, 4.85, "shop/worker[0]", None),
        attack(AttackKind::Exfiltration, 5.65, "file", None),
        attack(AttackKind::LateralMovement, 6.05, "admins[0]", Some("10.20.1.0")),
    ];
    let labels_dir = tempfile::tempdir().unwrap();
    sim.labels = Some(labels_dir.path().join("labels.jsonl"));

    // Threat intel lists the intel-hit target.
    peergraph::kafka::ensure_topics(&config.kafka, &config.topics).expect("topics");
    let producer: BaseProducer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    let indicator = Indicator {
        network: AttackKind::IntelHit.default_target().into(),
        source: "test-feed".into(),
        description: Some("test C2".into()),
    };
    let payload = Encoder::<Indicator>::new(WireFormat::Json).unwrap().encode_to_vec(&indicator).unwrap();
    producer.send(BaseRecord::to(&config.topics.indicators).key(&indicator.network).payload(&payload)).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    let started = std::time::Instant::now();
    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), Metrics::new()).expect("run");
    assert_eq!(ran.messages, simulated.flows);
    let alerts = peergraph_tests::collect_alerts(&config, Duration::from_secs(5));
    eprintln!(
        "{} flows, {} pods started, {} rolling deploys, {} alert events, {:.0}s",
        simulated.flows,
        simulated.pods_started,
        simulated.deploys,
        alerts.len(),
        started.elapsed().as_secs_f64()
    );

    // The labels file on disk is what the run reports.
    let labels = peergraph::simulate::labels::read(config.simulate.labels.as_ref().unwrap()).expect("labels file");
    assert_eq!(labels, simulated.labels);
    assert_eq!(labels.len(), 8);
    assert!(labels.iter().all(|l| l.flows > 0), "{labels:#?}");
    assert!(simulated.deploys >= 1 && simulated.pods_started > 0, "churn: {simulated:?}");

    let efficacy = evaluate(&labels, &alerts, config.time.window.as_millis() as i64);
    let table = efficacy.table(START_MS);
    eprintln!("{table}");
    assert_eq!(efficacy.detected(), labels.len(), "every attack detected:\n{table}");
    let false_positives = efficacy.false_positives.len();
    assert!(false_positives <= MAX_FALSE_POSITIVES, "{false_positives} false positives:\n{table}");
}
