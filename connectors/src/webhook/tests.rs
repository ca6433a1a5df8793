//! The webhook sink against a local receiver that verifies the signature and drops repeated
//! batches by their `Idempotency-Key`, as the documentation tells receivers to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use peergraph_schemas::AlertEvent;

use super::*;
use crate::idempotency::event_key;
use crate::test_support::{alert, deliver_all, every_fault, fast_retry, Receiver};

const SECRET: &str = "whsec_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH";

#[derive(Default)]
struct Hook {
    seen_keys: BTreeSet<String>,
    /// Event key → times processed (after dropping repeated batches).
    processed: BTreeMap<String, u32>,
}

async fn hook(State(state): State<Arc<Mutex<Hook>>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (Some(timestamp), Some(signed), Some(key)) =
        (header("x-peergraph-timestamp"), header("x-peergraph-signature"), header("idempotency-key"))
    else {
        return StatusCode::BAD_REQUEST;
    };
    let Ok(timestamp) = timestamp.parse::<u64>() else { return StatusCode::BAD_REQUEST };
    if timestamp.abs_diff(unix_now()) > 300 || signed != signature(SECRET.as_bytes(), timestamp, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    if header("x-team").as_deref() != Some("soc") {
        return StatusCode::BAD_REQUEST;
    }
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&body) else { return StatusCode::BAD_REQUEST };
    let mut state = state.lock().expect("state");
    if state.seen_keys.insert(key) {
        for alert in parsed["alerts"].as_array().into_iter().flatten() {
            let alert: Alert = serde_json::from_value(alert.clone()).expect("an alert");
            *state.processed.entry(event_key(&alert)).or_default() += 1;
        }
    }
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn signed_batches_arrive_once_each_at_a_receiver_that_drops_repeats_despite_faults() {
    let state = Arc::new(Mutex::new(Hook::default()));
    let receiver =
        Receiver::start(Router::new().route("/hooks/peergraph", post(hook)).with_state(Arc::clone(&state))).await;
    let dir = tempfile::tempdir().expect("dir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("write");
    let config = WebhookSinkConfig {
        url: format!("{}/hooks/peergraph", receiver.url),
        secret_file: Some(secret_file),
        headers: BTreeMap::from([("X-Team".to_string(), "soc".to_string())]),
        timeout: Duration::from_secs(1),
        ..WebhookSinkConfig::default()
    };
    let mut sink = config.build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject(every_fault());
    let batches = vec![
        vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)],
        vec![alert("a", AlertEvent::Cleared)],
        vec![alert("c", AlertEvent::Raised), alert("b", AlertEvent::Updated)],
    ];
    deliver_all(&mut sink, &batches, &fast_retry(12)).await;
    assert_eq!(receiver.faults_left(), 0);

    let state = state.lock().expect("state");
    let expected: BTreeMap<String, u32> = batches.iter().flatten().map(|alert| (event_key(alert), 1)).collect();
    assert_eq!(state.processed, expected);
    assert!(receiver.handled().len() > batches.len() + 1, "the processed-then-stalled batch was sent twice");
}

#[test]
fn credential_looking_headers_must_come_from_secret_settings() {
    let config = WebhookSinkConfig {
        url: "https://hooks.example.com/x".into(),
        headers: BTreeMap::from([("Authorization".to_string(), "Bearer abc".to_string())]),
        ..Default::default()
    };
    assert!(config.validate().unwrap_err().contains("secret_env"));
}
