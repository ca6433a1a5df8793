//! The graph query API on a real Kafka broker: the pipeline runs over a simulated topic with a
//! swapped replica, and `GET /graph` at two past times answers exactly the edges the service-graph
//! changelog had published by then: the edge to the C2 address is there during the swap and gone
//! a window after it. Times older than the retention and times not closed yet are refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peergraph::api::GraphAnswer;
use peergraph::metrics::Metrics;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::{EdgeLevel, GraphEdge};

/// 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
const WINDOW_MS: i64 = 60_000;

/// An edge's identity and numbers, without the time of the record that carried them.
type EdgeRow = ((EdgeLevel, String, String, i32, i32), [i64; 7]);

fn row(edge: &GraphEdge) -> EdgeRow {
    let numbers = [
        edge.flows,
        edge.bytes_out,
        edge.bytes_in,
        edge.packets_out,
        edge.packets_in,
        edge.first_seen_ms,
        edge.last_seen_ms,
    ];
    ((edge.level, edge.src.clone(), edge.dst.clone(), edge.dst_port, edge.protocol), numbers)
}

/// The graph at `at` by the changelog: each edge's latest record at or before `at`, if present.
fn published_at(changes: &[GraphEdge], level: EdgeLevel, at: i64) -> Vec<EdgeRow> {
    let mut latest: BTreeMap<(EdgeLevel, String, String, i32, i32), &GraphEdge> = BTreeMap::new();
    for change in changes.iter().filter(|c| c.level == level && c.event_time_ms <= at) {
        let key = row(change).0;
        if latest.get(&key).is_none_or(|seen| seen.event_time_ms <= change.event_time_ms) {
            latest.insert(key, change);
        }
    }
    latest.values().filter(|c| c.present).map(|c| row(c)).collect()
}

struct Client {
    runtime: tokio::runtime::Runtime,
    base: String,
}

impl Client {
    /// `GET /graph?query`: the status and the JSON body, or why there was none.
    fn try_get(&self, query: &str) -> Result<(u16, serde_json::Value), String> {
        let url = format!("{}/graph?{query}", self.base);
        let (status, body) = peergraph_tests::http_get(&self.runtime, &url)?;
        let body = serde_json::from_str(&body).map_err(|e| format!("GET {url}: body is not JSON: {e}"))?;
        Ok((status, body))
    }

    fn get(&self, query: &str) -> (u16, serde_json::Value) {
        self.try_get(query).unwrap_or_else(|e| panic!("{e}"))
    }

    fn graph(&self, query: &str) -> GraphAnswer {
        let (status, body) = self.get(query);
        assert_eq!(status, 200, "GET /graph?{query}: {body}");
        serde_json::from_value(body).expect("a graph answer")
    }
}

#[test]
fn the_graph_as_of_two_past_times_matches_what_was_published_then() {
    let mut config = peergraph_tests::config("asof");
    config.time.window = Duration::from_millis(WINDOW_MS as u64);
    config.time.graph_retention = Duration::from_secs(6 * 60);
    config.run.workers = 2;
    config.run.idle_timeout = Duration::from_secs(2);
    config.simulate.seed = 11;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(8 * 60);
    config.simulate.web_replicas = 4;
    let swap = SwapConfig { at: Duration::from_secs(120), lasting: Duration::from_secs(120), ..SwapConfig::default() };
    config.simulate.swap = Some(swap);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    config.api.listen = format!("127.0.0.1:{port}");

    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let label = simulated.labels[0].clone();
    // During the swap, and one window plus a minute after its last flow.
    let t1 = START_MS + 150_000;
    let t2 = label.end_ms + WINDOW_MS + 60_000;
    assert!(label.start_ms < t1 && t1 < label.end_ms, "{label:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new();
    let pipeline = {
        let (config, stop, metrics) = (config.clone(), stop.clone(), metrics.clone());
        std::thread::spawn(move || peergraph::run::run(&config, stop, metrics))
    };
    let client = Client {
        runtime: tokio::runtime::Runtime::new().expect("tokio runtime"),
        base: format!("http://127.0.0.1:{port}"),
    };

    // Wait until the pipeline has closed the epochs past the second time (the simulated traffic
    // goes on to START + 8 min; idle partitions let the frontier reach its end).
    let deadline = Instant::now() + Duration::from_secs(300);
    let now = loop {
        assert!(!pipeline.is_finished(), "the pipeline stopped early");
        if let Ok((200, body)) = client.try_get("") {
            let answer: GraphAnswer = serde_json::from_value(body).expect("a graph answer");
            if answer.latest_ms as i64 >= START_MS + 420_000 {
                break answer;
            }
        }
        assert!(Instant::now() < deadline, "the graph API never reached the end of the simulated traffic");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!((now.at_ms, now.workers, now.peers), (now.latest_ms, 2, 2));
    assert_eq!(now.oldest_ms, now.latest_ms - 360_000, "the retention is held behind the latest epoch");

    let entity_t1 = client.graph("at=2026-01-01T00:02:30Z");
    let entity_t2 = client.graph(&format!("at={t2}&level=entity"));
    let workload_t1 = client.graph(&format!("at={t1}&level=workload"));
    let workload_t2 = client.graph(&format!("at={t2}&level=workload"));
    assert_eq!(entity_t1.at_ms as i64, t1);
    let c2 = |answer: &GraphAnswer| {
        answer.edges.iter().any(|e| e.src == label.entity && e.dst == label.destination && e.level == EdgeLevel::Entity)
    };
    assert!(c2(&entity_t1), "the edge to the C2 address is in the graph during the swap: {:#?}", entity_t1.edges);
    assert!(!c2(&entity_t2), "and gone a window after it: {:#?}", entity_t2.edges);

    // Filtered: only the edges of the swapped replica.
    let replica = client.graph(&format!("at={t1}&entity={}", label.entity));
    assert!(!replica.edges.is_empty() && c2(&replica));
    assert!(replica.edges.iter().all(|e| e.src == label.entity || e.dst == label.entity), "{:#?}", replica.edges);
    let shop = client.graph(&format!("at={t1}&level=workload&namespace=shop"));
    assert!(shop.edges.iter().all(|e| e.src.starts_with("workload:shop/") || e.dst.starts_with("workload:shop/")));
    assert!(!shop.edges.is_empty() && shop.edges.len() < workload_t1.edges.len(), "{:#?}", shop.edges);

    // Older than the retention, or not closed yet: refused, saying why.
    let (status, body) = client.get(&format!("at={}", START_MS + 60_000));
    assert_eq!(status, 410, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("time.graph_retention = 6m")), "{body}");
    let (status, body) = client.get(&format!("at={}", now.latest_ms + 60_000));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("not final yet")), "{body}");
    assert_eq!(metrics.graph_queries("expired"), 1);
    assert_eq!(metrics.graph_queries("not_closed"), 1);
    assert!(metrics.graph_queries("ok") >= 7);

    stop.store(true, Ordering::Relaxed);
    let ran = pipeline.join().expect("pipeline thread").expect("run");
    assert_eq!(ran.messages, simulated.flows);

    // Exactly what the changelog had published at each time.
    let changes: Vec<GraphEdge> = peergraph_tests::read_topic(&config, &config.topics.service_graph);
    for (answer, level, at) in [
        (&entity_t1, EdgeLevel::Entity, t1),
        (&entity_t2, EdgeLevel::Entity, t2),
        (&workload_t1, EdgeLevel::Workload, t1),
        (&workload_t2, EdgeLevel::Workload, t2),
    ] {
        let expected = published_at(&changes, level, at);
        assert!(!expected.is_empty(), "the changelog has {level:?} edges at {at}");
        let answered: Vec<EdgeRow> = answer.edges.iter().map(row).collect();
        let missing: Vec<&EdgeRow> = expected.iter().filter(|r| !answered.contains(r)).collect();
        let extra: Vec<&EdgeRow> = answered.iter().filter(|r| !expected.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{level:?} graph at {at}: published but not answered {missing:#?}, answered but not published {extra:#?}"
        );
        assert!(answer.edges.iter().all(|e| e.present && e.event_time_ms == at && e.window_ms == WINDOW_MS));
    }
}
