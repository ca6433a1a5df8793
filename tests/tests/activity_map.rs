//! The activity map end to end on a real Kafka broker: `peergraph run` over a simulated topic
//! with a swapped replica serves the page, `GET /graph/diff` and `GET /alerts` on its one HTTP
//! server (`api.listen`, with `/metrics` and `/health`), and the page, driven in the
//! distribution's headless Chromium (tests/browser/map.test.mjs, puppeteer-core), shows the
//! workloads, the swapped replica's alert on the map and in the panel, the graph without the
//! malicious edge before the swap, and exactly that edge as new when two times are compared.
//! Screenshots go to `target/browser-artifacts/`.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and `npm ci` in tests/browser:
//! scripts/test installs both.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peergraph::api::{DiffAnswer, GraphAnswer};
use peergraph::metrics::Metrics;
use peergraph::simulate::SwapConfig;
use peergraph_schemas::EdgeLevel;

/// 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
const WINDOW_MS: i64 = 60_000;
const WORKLOAD: &str = "workload:shop/Deployment/web";

fn get(runtime: &tokio::runtime::Runtime, url: &str) -> (u16, String) {
    peergraph_tests::http_get(runtime, url).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_activity_map_shows_the_swapped_replica_its_alert_and_what_changed() {
    let mut config = peergraph_tests::config("map");
    config.time.window = Duration::from_millis(WINDOW_MS as u64);
    config.time.graph_retention = Duration::from_secs(8 * 60);
    config.run.workers = 2;
    config.run.idle_timeout = Duration::from_secs(2);
    config.simulate.seed = 21;
    config.simulate.start_ms = Some(START_MS);
    config.simulate.duration = Duration::from_secs(6 * 60);
    config.simulate.web_replicas = 4;
    let swap = SwapConfig { at: Duration::from_secs(120), lasting: Duration::from_secs(180), ..SwapConfig::default() };
    config.simulate.swap = Some(swap);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    config.api.listen = format!("127.0.0.1:{port}");
    let base = format!("http://127.0.0.1:{port}");

    let simulated = peergraph::simulate::simulate(&config, &AtomicBool::new(false)).expect("simulate");
    let label = simulated.labels[0].clone();
    assert_eq!(label.attack, "swapped_image", "{label:?}");
    let before = START_MS + 90_000;
    let during = START_MS + 240_000;
    assert!(label.start_ms > before && label.start_ms < during && during < label.end_ms, "{label:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let (config, stop) = (config.clone(), stop.clone());
        std::thread::spawn(move || peergraph::run::run(&config, stop, Metrics::new()))
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(!pipeline.is_finished(), "the pipeline stopped early");
        if let Ok((200, body)) = peergraph_tests::http_get(&runtime, &format!("{base}/graph")) {
            let answer: GraphAnswer = serde_json::from_str(&body).expect("a graph answer");
            if answer.latest_ms as i64 >= START_MS + 330_000 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the graph API never reached the end of the simulated traffic");
        std::thread::sleep(Duration::from_millis(500));
    }

    // One server: the page, its code, metrics and health beside the API.
    let (status, page) = get(&runtime, &format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"app.js\">"), "{page}");
    let (status, app) = get(&runtime, &format!("{base}/app.js"));
    assert!(status == 200 && app.len() > 50_000, "the bundled page code: {status}, {} bytes", app.len());
    let (status, metrics) = get(&runtime, &format!("{base}/metrics"));
    assert!(status == 200 && metrics.contains("peergraph_graph_queries_total"), "{status}: {metrics}");
    assert_eq!(get(&runtime, &format!("{base}/health")), (200, "ok\n".to_owned()));

    // The entity directory: the workload's replicas as the sensors labelled them.
    let (status, body) = get(&runtime, &format!("{base}/entities?workload={WORKLOAD}"));
    assert_eq!(status, 200, "{body}");
    let entities: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let replicas = entities["entities"].as_array().expect("entities");
    assert_eq!(replicas.len(), 4, "the four web replicas: {body}");
    assert!(replicas.iter().all(|e| e["labels"]["app"] == "web"), "{body}");
    assert!(replicas.iter().any(|e| e["entity"] == label.entity.as_str()), "{body}");

    // The diff from before the swap to during it, at entity level around the replica: the edge
    // to the C2 address is new, and it is the replica's only new edge.
    let (status, body) =
        get(&runtime, &format!("{base}/graph/diff?from={before}&to={during}&level=entity&entity={}", label.entity));
    assert_eq!(status, 200, "{body}");
    let diff: DiffAnswer = serde_json::from_str(&body).expect("a diff answer");
    assert_eq!((diff.from_ms as i64, diff.to_ms as i64, diff.level), (before, during, EdgeLevel::Entity));
    let new_from_replica: Vec<&str> =
        diff.added.iter().filter(|e| e.src == label.entity).map(|e| e.dst.as_str()).collect();
    assert_eq!(new_from_replica, vec![label.destination.as_str()], "{diff:#?}");
    assert!(diff.removed.iter().all(|e| e.event_time_ms as i64 == before), "removed edges are as they were then");
    let (status, body) = get(&runtime, &format!("{base}/graph/diff?to={during}"));
    assert_eq!(status, 400, "from= is required: {body}");

    // The alerts open during the swap include the swapped replica's; before it, none on it.
    let alerts_at = |at: i64| -> serde_json::Value {
        let (status, body) = get(&runtime, &format!("{base}/alerts?at={at}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    };
    let on_replica = |answer: &serde_json::Value| -> Vec<serde_json::Value> {
        let alerts = answer["alerts"].as_array().expect("alerts").clone();
        alerts.into_iter().filter(|a| a["entity"] == label.entity.as_str()).collect()
    };
    let open = on_replica(&alerts_at(during));
    assert!(
        open.iter().any(|a| a["detector"] == "peer_unique_destination" && a["open"] == true),
        "an open peer-unique alert on the replica during the swap: {open:#?}"
    );
    assert!(open.iter().all(|a| !a["events"].as_array().expect("events").is_empty()));
    assert!(on_replica(&alerts_at(before)).is_empty(), "no alert on the replica before the swap");
    // A time is closed for the API only once its alerts are on the board: /graph's latest
    // epoch is one /alerts answers, and a later one is refused until then.
    let (_, body) = get(&runtime, &format!("{base}/graph"));
    let latest = serde_json::from_str::<GraphAnswer>(&body).expect("a graph answer").latest_ms;
    assert_eq!(alerts_at(latest as i64)["at_ms"], latest, "the graph's latest time is final for the alerts");
    let (status, body) = get(&runtime, &format!("{base}/alerts?at={}", latest + 3_600_000));
    assert_eq!(status, 400, "an hour past the latest closed epoch is not final: {body}");

    // The page in the browser.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("target/browser-artifacts");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists() && root.join("tests/browser/node_modules/puppeteer-core").exists(),
        "the browser test needs Chromium ({chromium}) and `npm ci` in tests/browser: run it through scripts/test"
    );
    let output = Command::new("node")
        .arg(root.join("tests/browser/map.test.mjs"))
        .env("PEERGRAPH_MAP_URL", format!("{base}/"))
        .env("PEERGRAPH_MAP_ENTITY", &label.entity)
        .env("PEERGRAPH_MAP_DESTINATION", &label.destination)
        .env("PEERGRAPH_MAP_WORKLOAD", WORKLOAD)
        .env("PEERGRAPH_MAP_BEFORE", before.to_string())
        .env("PEERGRAPH_MAP_DURING", during.to_string())
        .env("PEERGRAPH_MAP_ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    assert!(artifacts.join("swapped-replica-alert.png").exists());

    stop.store(true, Ordering::Relaxed);
    pipeline.join().expect("the pipeline thread").expect("the pipeline run");
}
