//! The PagerDuty sink against a local receiver that checks the Events API v2 request format and
//! keeps incidents the way PagerDuty does: one open incident per `dedup_key`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};

use super::*;
use crate::test_support::{alert, deliver_all, every_fault, fast_retry, Receiver};

const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";

#[derive(Default)]
struct Incident {
    open: bool,
    triggers: u32,
}

#[derive(Default)]
struct PagerDuty {
    incidents: BTreeMap<String, Incident>,
    /// Incidents opened, per dedup_key, over time (a re-trigger after a resolve opens another).
    opened: BTreeMap<String, u32>,
}

fn invalid(errors: Vec<String>) -> (StatusCode, Json<Value>) {
    let body = json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors});
    (StatusCode::BAD_REQUEST, Json(body))
}

/// `POST /v2/enqueue` as documented: JSON, `routing_key`, `event_action`, `dedup_key`, and for a
/// trigger `payload.summary`, `payload.source`, `payload.severity`; answers 202.
async fn enqueue(
    State(state): State<Arc<Mutex<PagerDuty>>>,
    headers: HeaderMap,
    Json(event): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut errors = Vec::new();
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        errors.push("Content-Type must be application/json".to_string());
    }
    if event["routing_key"] != ROUTING_KEY {
        errors.push("'routing_key' is invalid".into());
    }
    let action = event["event_action"].as_str().unwrap_or_default().to_owned();
    let dedup_key = event["dedup_key"].as_str().unwrap_or_default().to_owned();
    if dedup_key.is_empty() || dedup_key.len() > 255 {
        errors.push("'dedup_key' is missing or longer than 255".into());
    }
    match action.as_str() {
        "trigger" => {
            let payload = &event["payload"];
            let summary = payload["summary"].as_str().unwrap_or_default();
            if summary.is_empty() || summary.chars().count() > 1024 {
                errors.push("'payload.summary' is missing or too long".into());
            }
            if payload["source"].as_str().unwrap_or_default().is_empty() {
                errors.push("'payload.source' is missing".into());
            }
            if !["critical", "error", "warning", "info"].contains(&payload["severity"].as_str().unwrap_or_default()) {
                errors.push("'payload.severity' is invalid".into());
            }
            if payload["timestamp"].as_str().is_some_and(|t| humantime::parse_rfc3339(t).is_err()) {
                errors.push("'payload.timestamp' is not ISO 8601".into());
            }
        }
        "resolve" | "acknowledge" => {}
        _ => errors.push("'event_action' is invalid".into()),
    }
    if !errors.is_empty() {
        return invalid(errors);
    }
    let mut state = state.lock().expect("state");
    let state = &mut *state;
    let incident = state.incidents.entry(dedup_key.clone()).or_default();
    match action.as_str() {
        "trigger" => {
            if !incident.open {
                incident.open = true;
                *state.opened.entry(dedup_key.clone()).or_default() += 1;
            }
            incident.triggers += 1;
        }
        _ => incident.open = false,
    }
    (StatusCode::ACCEPTED, Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})))
}

async fn receiver() -> (Receiver, Arc<Mutex<PagerDuty>>) {
    let state = Arc::new(Mutex::new(PagerDuty::default()));
    let router = Router::new().route("/v2/enqueue", post(enqueue)).with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

fn sink_config(url: &str, dir: &tempfile::TempDir) -> PagerDutySinkConfig {
    let key_file = dir.path().join("routing_key");
    std::fs::write(&key_file, format!("{ROUTING_KEY}\n")).expect("key file");
    PagerDutySinkConfig {
        url: url.into(),
        routing_key_file: Some(key_file),
        timeout: Duration::from_secs(1),
        ..PagerDutySinkConfig::default()
    }
}

#[tokio::test]
async fn every_alert_opens_exactly_one_incident_and_clears_resolve_it_despite_injected_faults() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, &dir).build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject(every_fault());
    let batches = vec![
        vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised), alert("c", AlertEvent::Raised)],
        vec![alert("a", AlertEvent::Updated), alert("a", AlertEvent::Cleared)],
        vec![alert("b", AlertEvent::Cleared)],
    ];
    let retries = deliver_all(&mut sink, &batches, &fast_retry(10)).await;
    // And a replay of the first batch (a restart before the commit) changes nothing.
    deliver_all(&mut sink, &batches[..1], &fast_retry(10)).await;

    assert_eq!(receiver.faults_left(), 0, "every fault was hit");
    assert!(retries >= 7, "{retries}");
    let state = state.lock().expect("state");
    assert_eq!(state.opened, BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]));
    let open: Vec<&str> =
        state.incidents.iter().filter(|(_, incident)| incident.open).map(|(key, _)| key.as_str()).collect();
    assert_eq!(open, ["c"]);
    for request in receiver.requests() {
        assert_eq!(request.uri, "/v2/enqueue");
        assert!(request.header("authorization").is_none(), "the key travels in the body only");
    }
}

#[tokio::test]
async fn a_rejected_event_is_a_permanent_error_that_does_not_show_the_routing_key() {
    let (receiver, _state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong_key");
    std::fs::write(&wrong, "not-the-key").expect("write");
    let config = PagerDutySinkConfig { routing_key_file: Some(wrong), ..sink_config(&receiver.url, &dir) };
    let mut sink = config.build().expect("builds");
    let error = sink.deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("400");
    assert!(!error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("400") && error.to_string().contains("routing_key"), "{error}");
    assert!(!error.to_string().contains("not-the-key"), "{error}");
}

#[test]
fn a_missing_routing_key_is_a_configuration_error() {
    let error = PagerDutySinkConfig::default().validate().expect_err("no key");
    assert!(error.contains("routing_key_env"), "{error}");
    let config = PagerDutySinkConfig { routing_key_env: Some("PEERGRAPH_TEST_PD_UNSET".into()), ..Default::default() };
    let error = config.build().err().expect("unset variable");
    assert!(error.to_string().contains("PEERGRAPH_TEST_PD_UNSET"), "{error}");
}
