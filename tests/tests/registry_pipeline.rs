//! `peergraph simulate` and `peergraph run` with a schema registry on the real Kafka broker: flows
//! published in the Confluent wire format with an id from the registry are decoded by the
//! pipeline, and its alerts and service-graph edges go out Confluent-framed with registered ids.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use peergraph::metrics::Metrics;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::codec::{Decoder, Record, SchemaRegistry, WireFormat};
use peergraph_schemas::{Alert, AlertEvent, Flow, GraphEdge};
use peergraph_tests::registry::LocalRegistry;

#[test]
fn run_decodes_registry_framed_flows_and_writes_registry_framed_alerts() {
    let local = LocalRegistry::start();
    let mut config = peergraph_tests::config("registry");
    config.schema_registry.url = local.url().to_owned();
    config.simulate.format = WireFormat::AvroConfluent;
    config.run.alert_format = WireFormat::AvroConfluent;
    config.run.stop_at_end = true;
    config.run.idle_timeout = Duration::from_secs(2);
    config.time.window = Duration::from_secs(60);
    config.simulate.seed = 11;
    config.simulate.start_ms = Some(1_767_225_600_000);
    config.simulate.duration = Duration::from_secs(5 * 60);
    config.simulate.swap =
        Some(SwapConfig { at: Duration::from_secs(60), lasting: Duration::from_secs(60), ..SwapConfig::default() });

    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let subjects = local.subjects();
    let flow_ids = subjects.get(&format!("{}-value", config.topics.flows)).expect("the simulator registered Flow");
    assert_eq!(flow_ids.len(), 1);
    assert_eq!(local.schema_text(flow_ids[0]).as_deref(), Some(Flow::SCHEMA_JSON));

    let metrics = Metrics::new();
    let ran = peergraph::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone()).expect("run");
    assert_eq!(ran.messages, simulated.flows);
    assert_eq!(metrics.flows_accepted.get(), simulated.flows, "every Confluent-framed flow decoded");
    assert_eq!(metrics.rejected("unknown_schema_id") + metrics.rejected("schema_lookup_failed"), 0);
    let lookups = local.requests().into_iter().filter(|r| r.path == format!("/schemas/ids/{}", flow_ids[0])).count();
    assert_eq!(lookups, 1, "the pipeline fetched the flow schema once");

    // Alerts and graph edges are Confluent-framed with the ids registered under their topics' subjects.
    let subjects = local.subjects();
    let alert_id = subjects[&format!("{}-value", config.topics.alerts)][0];
    let edge_id = subjects[&format!("{}-value", config.topics.service_graph)][0];
    assert_eq!(local.schema_text(alert_id).as_deref(), Some(Alert::SCHEMA_JSON));
    assert_eq!(local.schema_text(edge_id).as_deref(), Some(GraphEdge::SCHEMA_JSON));
    let reader = Arc::new(SchemaRegistry::new(&config.schema_registry).expect("client"));
    let alerts: Vec<Alert> =
        peergraph_tests::read_topic_with(&config, &config.topics.alerts, Decoder::new(reader.clone()));
    let label = &simulated.labels[0];
    assert!(
        alerts.iter().any(|a| a.entity == label.entity
            && a.detector == "peer_unique_destination"
            && a.event == AlertEvent::Raised),
        "the swapped replica is alerted: {alerts:#?}"
    );
    let edges: Vec<GraphEdge> =
        peergraph_tests::read_topic_with(&config, &config.topics.service_graph, Decoder::new(reader.clone()));
    assert!(!edges.is_empty());
    assert_eq!(reader.requests(), 2, "one schema fetch per id: alerts and edges");
}
