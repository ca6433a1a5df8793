//! The first end-to-end slice on a real Kafka broker: simulate → run → connect. Exactly the
//! swapped replica is alerted, with evidence naming its new destination, and the alert clears once
//! the malicious traffic has stopped and the window has passed.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::metrics::Metrics;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::{AlertEvent, EdgeLevel, GraphEdge};

/// 2026-01-01T00:00:00Z: a fixed start keeps the run deterministic.
const START_MS: i64 = 1_767_225_600_000;

#[test]
fn swapped_replica_is_alerted_and_cleared() {
    let mut config = peergraph_tests::config("swap");
    config.time.window = Duration::from_secs(60);
    config.run.workers = 2;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    config.simulate.seed = 11;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(8 * 60);
    config.simulate.web_replicas = 4;
    let swap = SwapConfig { at: Duration::from_secs(120), lasting: Duration::from_secs(120), ..SwapConfig::default() };
    config.simulate.swap = Some(swap.clone());

    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    assert_eq!(simulated.labels.len(), 1);
    let label = &simulated.labels[0];

    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), Metrics::new()).expect("run");
    assert_eq!(ran.messages, simulated.flows, "the pipeline read every simulated flow");

    let alerts = peergraph_tests::collect_alerts(&config, Duration::from_secs(5));
    let entities: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a.entity.as_str()).collect();
    assert_eq!(
        entities.into_iter().collect::<Vec<_>>(),
        vec![label.entity.as_str()],
        "only the swapped replica is alerted: {alerts:#?}"
    );

    // The swapped replica also sends far more than its peers: peer-group deviation may join in, on
    // the same entity. The peer-unique alert is the one that names the new destination.
    let unique: Vec<&peergraph_schemas::Alert> =
        alerts.iter().filter(|a| a.detector == "peer_unique_destination").collect();
    let events: Vec<AlertEvent> = unique.iter().map(|a| a.event).collect();
    assert_eq!(events, vec![AlertEvent::Raised, AlertEvent::Cleared], "{alerts:#?}");
    let (raised, cleared) = (unique[0], unique[1]);
    assert_eq!(raised.alert_id, cleared.alert_id);
    assert_eq!(raised.evidence.get("destination").map(String::as_str), Some(label.destination.as_str()));
    assert_eq!(raised.peer_group.as_deref(), Some("workload:shop/Deployment/web"));
    assert!(raised.techniques.iter().any(|t| t == "T1071"));

    // Raised within a couple of ticks of the swap; cleared one window after the last malicious
    // flow (when the finding goes) plus the lifecycle's hysteresis (`clear_after`).
    let window = 60_000 + config.lifecycle.clear_after.as_millis() as i64;
    assert!(
        raised.event_time_ms >= label.start_ms && raised.event_time_ms <= label.start_ms + 2_000,
        "raised at {} for a swap at {}",
        raised.event_time_ms,
        label.start_ms
    );
    assert!(
        cleared.event_time_ms >= label.end_ms + window - 1_000
            && cleared.event_time_ms <= label.end_ms + window + 2_000,
        "cleared at {} for a swap ending at {}",
        cleared.event_time_ms,
        label.end_ms
    );

    // The service-graph changelog shows the new edge appear and, one window after its last flow,
    // leave (a tombstone).
    let changes: Vec<GraphEdge> = peergraph_tests::read_topic(&config, &config.topics.service_graph);
    let to_c2: Vec<&GraphEdge> = changes
        .iter()
        .filter(|c| c.level == EdgeLevel::Entity && c.src == label.entity && c.dst == label.destination)
        .collect();
    let first = to_c2.first().expect("the edge to the C2 address is in the changelog");
    assert!(first.present && first.first_seen_ms == label.start_ms, "{first:?}");
    // The edge leaves with the finding; the alert clears `clear_after` later.
    let last = to_c2.last().unwrap();
    let finding_gone = cleared.event_time_ms - config.lifecycle.clear_after.as_millis() as i64;
    assert!(!last.present && last.event_time_ms == finding_gone, "{last:?}");
    assert!(changes
        .iter()
        .any(|c| c.level == EdgeLevel::Workload && c.src == "workload:shop/Deployment/web" && c.present));
}
