//! The Elasticsearch sink against a local `_bulk` endpoint that parses NDJSON as documented,
//! enforces `create` semantics (409 for an existing `_id`), answers per-item results, and injects
//! faults, including item-level 429s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};

use super::*;
use crate::test_support::{alert, deliver_all, every_fault, fast_retry, Receiver};

const API_KEY: &str = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";

#[derive(Default)]
struct Cluster {
    /// _id → document.
    documents: BTreeMap<String, Value>,
    /// Creates attempted per _id (409s included).
    attempts: BTreeMap<String, u32>,
    /// Answer 429 for this many items (after the first) of the next bulk request.
    reject_items: usize,
}

type Shared = Arc<Mutex<Cluster>>;

async fn bulk(State(state): State<Shared>, headers: HeaderMap, body: String) -> (StatusCode, Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("ApiKey {API_KEY}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"type": "security_exception"}, "status": 401})));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-ndjson") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            Json(json!({"error": "Content-Type header is not supported", "status": 406})),
        );
    }
    if !body.ends_with('\n') {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"type": "illegal_argument_exception", "reason": "The bulk request must be terminated by a newline [\\n]"}, "status": 400}),
            ),
        );
    }
    let lines: Vec<&str> = body.split_terminator('\n').collect();
    let mut state = state.lock().expect("state");
    let mut reject = std::mem::take(&mut state.reject_items);
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let (Ok(action), Some(Ok(source))) =
            (serde_json::from_str::<Value>(pair[0]), pair.get(1).map(|line| serde_json::from_str::<Value>(line)))
        else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"type": "x_content_parse_exception"}, "status": 400})),
            );
        };
        let Some(create) = action.get("create") else {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": {"type": "illegal_argument_exception", "reason": "expected create"}, "status": 400}),
                ),
            );
        };
        let id = create["_id"].as_str().unwrap_or_default().to_owned();
        let index = create["_index"].as_str().unwrap_or_default().to_owned();
        if source["@timestamp"].as_str().is_none() || source["event"]["kind"] != "alert" {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"type": "document_parsing_exception"}, "status": 400})),
            );
        }
        let status = if !items.is_empty() && reject > 0 {
            reject -= 1;
            errors = true;
            json!({"_index": index, "_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}})
        } else {
            *state.attempts.entry(id.clone()).or_default() += 1;
            if state.documents.contains_key(&id) {
                errors = true;
                json!({"_index": index, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists")}})
            } else {
                state.documents.insert(id.clone(), source);
                json!({"_index": index, "_id": id, "_version": 1, "result": "created", "status": 201})
            }
        };
        items.push(json!({"create": status}));
    }
    (StatusCode::OK, Json(json!({"took": 3, "errors": errors, "items": items})))
}

async fn receiver() -> (Receiver, Shared) {
    let state = Shared::default();
    let router = Router::new()
        .route("/", get(|| async { Json(json!({"name": "node-1", "cluster_name": "test", "version": {"number": "8.11.0"}, "tagline": "You Know, for Search"})) }))
        .route("/_bulk", post(bulk))
        .with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

fn sink_config(url: &str, dir: &std::path::Path) -> ElasticsearchSinkConfig {
    let key_file = dir.join("api_key");
    std::fs::write(&key_file, API_KEY).expect("key file");
    ElasticsearchSinkConfig {
        endpoint: url.into(),
        api_key_file: Some(key_file),
        max_bytes: 8 * 1024,
        timeout: Duration::from_secs(1),
        ..ElasticsearchSinkConfig::default()
    }
}

#[tokio::test]
async fn every_alert_event_is_one_document_despite_faults_partial_rejections_and_replays() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path()).build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject(every_fault());
    state.lock().expect("state").reject_items = 3;
    let batches: Vec<Vec<Alert>> = (0..3)
        .map(|batch| {
            (0..8)
                .flat_map(|n| {
                    let id = format!("alert-{batch}-{n}");
                    [alert(&id, AlertEvent::Raised), alert(&id, AlertEvent::Cleared)]
                })
                .collect()
        })
        .collect();
    deliver_all(&mut sink, &batches, &fast_retry(12)).await;
    // A restart replays a batch: every item answers 409, which is success.
    deliver_all(&mut sink, &batches[..1], &fast_retry(1)).await;

    assert_eq!(receiver.faults_left(), 0);
    let state = state.lock().expect("state");
    assert_eq!(state.documents.len(), 48);
    assert!(state.attempts.values().any(|&n| n > 1), "some creates were retried and answered 409");
    let document = &state.documents["alert-0-0-cleared-1700000060000"];
    assert_eq!(document["peergraph"]["alert_id"], "alert-0-0");
    assert_eq!(document["event"]["action"], "cleared");
}

#[tokio::test]
async fn a_rejected_mapping_is_permanent_and_credentials_stay_out_of_errors() {
    let (receiver, _state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, base64::engine::general_purpose::STANDARD.encode("id:wrong-key")).expect("write");
    let config = ElasticsearchSinkConfig { api_key_file: Some(wrong), ..sink_config(&receiver.url, dir.path()) };
    let error = config.build().expect("builds").deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("401");
    assert!(!error.is_retryable() && error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains("wrong-key") && !error.to_string().contains("aWQ6"), "{error}");
}
