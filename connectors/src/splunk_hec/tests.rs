//! The Splunk HEC sink against a local collector that checks the documented request format
//! (`Authorization: Splunk <token>`, concatenated JSON events with `event` and `time`, the request
//! channel for indexer acknowledgement, the body size limit) and injects faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};

use super::*;
use crate::test_support::{alert, deliver_all, fast_retry, Fault, Receiver};

const TOKEN: &str = "B5A79AAD-D822-46CC-80D1-819F80D7BFB0";
const MAX_CONTENT_LENGTH: usize = 4096;

#[derive(Default)]
struct Collector {
    /// event_key → times indexed.
    indexed: BTreeMap<String, u32>,
    next_ack: u64,
    /// ack id → polls left before it reports indexed.
    acks: BTreeMap<u64, u32>,
}

type Shared = Arc<Mutex<Collector>>;

fn answer(status: StatusCode, text: &str, code: i64) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"text": text, "code": code})))
}

async fn event(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> (StatusCode, Json<Value>) {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => return answer(StatusCode::UNAUTHORIZED, "Token is required", 2),
        Some(value) if value != format!("Splunk {TOKEN}") => return answer(StatusCode::FORBIDDEN, "Invalid token", 4),
        Some(_) => {}
    }
    if body.is_empty() {
        return answer(StatusCode::BAD_REQUEST, "No data", 5);
    }
    if body.len() > MAX_CONTENT_LENGTH {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "Content too large", 27);
    }
    let mut keys = Vec::new();
    for (number, parsed) in serde_json::Deserializer::from_slice(&body).into_iter::<Value>().enumerate() {
        let Ok(event) = parsed else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"text": "Invalid data format", "code": 6, "invalid-event-number": number})),
            );
        };
        if event.get("event").is_none() || !event["time"].is_number() || !event["fields"].is_object() {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"text": "Invalid data format", "code": 6, "invalid-event-number": number})),
            );
        }
        keys.push(event["fields"]["event_key"].as_str().unwrap_or_default().to_owned());
    }
    let channel = headers.get("x-splunk-request-channel").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut state = state.lock().expect("state");
    for key in keys {
        *state.indexed.entry(key).or_default() += 1;
    }
    if channel.is_none() {
        return answer(StatusCode::BAD_REQUEST, "Data channel is missing", 10);
    }
    state.next_ack += 1;
    let id = state.next_ack;
    state.acks.insert(id, 2);
    (StatusCode::OK, Json(json!({"text": "Success", "code": 0, "ackId": id})))
}

async fn ack(
    State(state): State<Shared>,
    Query(params): Query<BTreeMap<String, String>>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !params.contains_key("channel") {
        return answer(StatusCode::BAD_REQUEST, "Data channel is missing", 10);
    }
    let mut state = state.lock().expect("state");
    let mut acks = serde_json::Map::new();
    for id in request["acks"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
        let polls = state.acks.entry(id).or_insert(0);
        let done = *polls == 0;
        *polls = polls.saturating_sub(1);
        acks.insert(id.to_string(), done.into());
    }
    (StatusCode::OK, Json(json!({ "acks": acks })))
}

async fn receiver() -> (Receiver, Shared) {
    let state = Shared::default();
    let router = Router::new()
        .route("/services/collector/health", get(|| async { answer(StatusCode::OK, "HEC is healthy", 17) }))
        .route("/services/collector/event", post(event))
        .route("/services/collector/ack", post(ack))
        .with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

fn sink_config(url: &str, dir: &std::path::Path) -> SplunkHecSinkConfig {
    let token_file = dir.join("hec_token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    SplunkHecSinkConfig {
        endpoint: url.into(),
        token_file: Some(token_file),
        max_bytes: MAX_CONTENT_LENGTH,
        timeout: Duration::from_secs(1),
        ..SplunkHecSinkConfig::default()
    }
}

fn batches() -> Vec<Vec<Alert>> {
    (0..3).map(|batch| (0..10).map(|n| alert(&format!("alert-{batch}-{n}"), AlertEvent::Raised)).collect()).collect()
}

#[tokio::test]
async fn every_event_is_indexed_once_in_bodies_under_the_size_limit_despite_faults() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path()).build().expect("builds");
    sink.health_check().await.expect("healthy");
    // Failures before processing; a lost answer after processing would index twice (HEC has no ids).
    receiver.inject([
        Fault::Status(503),
        Fault::TooManyRequests { retry_after_secs: 1 },
        Fault::Reset,
        Fault::Stall(Duration::from_secs(3)),
        Fault::Status(500),
    ]);
    deliver_all(&mut sink, &batches(), &fast_retry(10)).await;
    assert_eq!(receiver.faults_left(), 0);

    let state = state.lock().expect("state");
    assert_eq!(state.indexed.len(), 30);
    assert!(state.indexed.values().all(|&count| count == 1), "{:?}", state.indexed);
    // (The health check's token probe is the one empty POST.)
    let posts: Vec<_> =
        receiver.handled().into_iter().filter(|r| r.uri == "/services/collector/event" && !r.body.is_empty()).collect();
    assert!(posts.len() > 3, "batches were split: {}", posts.len());
    assert!(posts.iter().all(|post| post.body.len() <= MAX_CONTENT_LENGTH));
}

#[tokio::test]
async fn with_indexer_ack_a_batch_counts_only_once_the_indexers_acknowledge_it() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = SplunkHecSinkConfig { indexer_ack: true, ..sink_config(&receiver.url, dir.path()) };
    let mut sink = config.build().expect("builds");
    deliver_all(&mut sink, &batches()[..1], &fast_retry(3)).await;
    assert_eq!(state.lock().expect("state").indexed.len(), 10);
    let polls =
        receiver.requests().into_iter().filter(|r| r.uri.starts_with("/services/collector/ack?channel=")).count();
    assert!(polls >= 3, "polled until acknowledged: {polls}");
    let channel = receiver.requests()[0].header("x-splunk-request-channel").map(str::to_owned).expect("channel");
    assert_eq!(channel.len(), 36, "{channel}");
}

#[tokio::test]
async fn a_wrong_token_fails_the_health_check_permanently_without_showing_the_token() {
    let (receiver, _state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "00000000-0000-0000-0000-000000000000").expect("write");
    let config = SplunkHecSinkConfig { token_file: Some(wrong), ..sink_config(&receiver.url, dir.path()) };
    let error = config.build().expect("builds").health_check().await.expect_err("refused");
    assert!(!error.is_retryable(), "{error}");
    assert!(!error.to_string().contains("00000000"), "{error}");
}
