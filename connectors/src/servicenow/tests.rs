//! The ServiceNow sink against a local Table API receiver: basic auth, `sysparm_query` by
//! `correlation_id`, insert, PATCH by `sys_id`; and injected faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch};
use axum::{Json, Router};
use base64::Engine as _;
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};

use super::*;
use crate::test_support::{alert, deliver_all, every_fault, fast_retry, Receiver};

pub(crate) const USER: &str = "peergraph.integration";
pub(crate) const PASSWORD: &str = "Tr0ub4dor&3";
/// Users the receiver accepts with `PASSWORD` (one per connector instance in the group test).
pub(crate) const USERS: [&str; 3] = [USER, "instance-a", "instance-b"];

#[derive(Clone, Debug, Default)]
pub(crate) struct Record {
    pub fields: serde_json::Map<String, Value>,
    pub work_notes: Vec<String>,
    /// The user who inserted it.
    pub inserted_by: String,
}

#[derive(Default)]
pub(crate) struct ServiceNow {
    /// sys_id → record, in insertion order of sys_ids.
    pub records: BTreeMap<String, Record>,
    /// Hold every insert's answer this long after storing it (a slow instance).
    pub slow_inserts: Option<Duration>,
    /// Hold the answers to inserts by these users this long after storing them.
    pub slow_users: BTreeMap<String, Duration>,
    /// Inserts stored, per user.
    pub inserts_by_user: BTreeMap<String, u32>,
}

impl ServiceNow {
    /// correlation_id → how many incidents carry it.
    pub fn incidents_per_alert(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for record in self.records.values() {
            let id = record.fields["correlation_id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    pub fn state_of(&self, alert_id: &str) -> Option<String> {
        self.records
            .values()
            .find(|record| record.fields["correlation_id"] == alert_id)
            .map(|record| record.fields["state"].as_str().unwrap_or_default().to_owned())
    }
}

type Shared = Arc<Mutex<ServiceNow>>;

/// The user of a valid basic authorization.
fn user(headers: &HeaderMap) -> Option<&'static str> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok())?;
    USERS.into_iter().find(|user| {
        given == format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}")))
    })
}

fn authorized(headers: &HeaderMap) -> bool {
    user(headers).is_some()
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"error": {"message": message, "detail": null}, "status": "failure"})))
}

async fn query(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "User Not Authenticated");
    }
    let state = state.lock().expect("state");
    let limit: usize = params.get("sysparm_limit").and_then(|l| l.parse().ok()).unwrap_or(10_000);
    let wanted = params.get("sysparm_query").and_then(|q| q.strip_prefix("correlation_id=")).map(str::to_owned);
    let fields: Option<Vec<&str>> = params.get("sysparm_fields").map(|f| f.split(',').collect());
    let result: Vec<Value> = state
        .records
        .values()
        .filter(|record| wanted.as_ref().is_none_or(|id| record.fields["correlation_id"] == *id.as_str()))
        .take(limit)
        .map(|record| {
            let shown = record
                .fields
                .iter()
                .filter(|(key, _)| fields.as_ref().is_none_or(|fields| fields.contains(&key.as_str())))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            Value::Object(shown)
        })
        .collect();
    (StatusCode::OK, Json(json!({ "result": result })))
}

async fn insert(State(state): State<Shared>, headers: HeaderMap, body: String) -> (StatusCode, Json<Value>) {
    let Some(user) = user(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "User Not Authenticated");
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Exception while reading request");
    };
    if fields.get("short_description").and_then(Value::as_str).is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "short_description is mandatory");
    }
    let (result, slow) = {
        let mut state = state.lock().expect("state");
        let sys_id = format!("{:032x}", state.records.len() + 1);
        let number = format!("INC{:07}", state.records.len() + 10_001);
        fields.insert("sys_id".into(), sys_id.clone().into());
        fields.insert("number".into(), number.into());
        fields.insert("state".into(), "1".into());
        state
            .records
            .insert(sys_id, Record { fields: fields.clone(), work_notes: Vec::new(), inserted_by: user.to_owned() });
        *state.inserts_by_user.entry(user.to_owned()).or_default() += 1;
        (Value::Object(fields), state.slow_users.get(user).copied().or(state.slow_inserts))
    };
    if let Some(slow) = slow {
        tokio::time::sleep(slow).await;
    }
    (StatusCode::CREATED, Json(json!({ "result": result })))
}

async fn update(
    State(state): State<Shared>,
    Path(sys_id): Path<String>,
    headers: HeaderMap,
    Json(fields): Json<serde_json::Map<String, Value>>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "User Not Authenticated");
    }
    let mut state = state.lock().expect("state");
    let Some(record) = state.records.get_mut(&sys_id) else {
        return error(StatusCode::NOT_FOUND, "No Record found");
    };
    if fields.get("state").and_then(Value::as_str) == Some("6")
        && fields.get("close_code").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        return error(StatusCode::FORBIDDEN, "Operation against file 'incident' was aborted by Business Rule");
    }
    for (key, value) in fields {
        if key == "work_notes" {
            record.work_notes.push(value.as_str().unwrap_or_default().to_owned());
        } else {
            record.fields.insert(key, value);
        }
    }
    (StatusCode::OK, Json(json!({ "result": Value::Object(record.fields.clone()) })))
}

pub(crate) async fn receiver() -> (Receiver, Shared) {
    let state = Shared::default();
    let router = Router::new()
        .route("/api/now/table/incident", get(query).post(insert))
        .route("/api/now/table/incident/{sys_id}", patch(update))
        .with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

pub(crate) fn sink_config(url: &str, dir: &std::path::Path) -> ServiceNowSinkConfig {
    let password_file = dir.join("servicenow_password");
    std::fs::write(&password_file, PASSWORD).expect("password file");
    ServiceNowSinkConfig {
        instance_url: url.into(),
        username: Some(USER.into()),
        password_file: Some(password_file),
        timeout: Duration::from_secs(1),
        ..ServiceNowSinkConfig::default()
    }
}

#[tokio::test]
async fn one_incident_per_alert_noted_on_update_and_resolved_on_clear_despite_injected_faults() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path()).build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject(every_fault());
    let batches = vec![
        vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)],
        vec![alert("a", AlertEvent::Updated), alert("c", AlertEvent::Raised), alert("a", AlertEvent::Cleared)],
    ];
    deliver_all(&mut sink, &batches, &fast_retry(12)).await;
    assert_eq!(receiver.faults_left(), 0, "every fault was hit");
    // A restart replays everything: nothing new may appear.
    let mut restarted = sink_config(&receiver.url, dir.path()).build().expect("builds");
    deliver_all(&mut restarted, &batches, &fast_retry(3)).await;

    let state = state.lock().expect("state");
    assert_eq!(state.incidents_per_alert(), BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]));
    assert_eq!(state.state_of("a").as_deref(), Some("6"));
    assert_eq!(state.state_of("b").as_deref(), Some("1"));
    let a = state.records.values().find(|record| record.fields["correlation_id"] == "a").expect("a");
    assert!(!a.work_notes.is_empty() && a.work_notes.iter().all(|note| note.contains("a:updated")), "{a:?}");
    assert_eq!(a.fields["close_code"], "Resolved by caller");
}

#[tokio::test]
async fn wrong_credentials_are_a_permanent_error_without_the_password_in_it() {
    let (receiver, _state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "hunter2").expect("write");
    let config = ServiceNowSinkConfig { password_file: Some(wrong), ..sink_config(&receiver.url, dir.path()) };
    let mut sink = config.build().expect("builds");
    let error = sink.health_check().await.expect_err("401");
    assert!(!error.is_retryable() && error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn credentials_must_be_one_kind() {
    let both = ServiceNowSinkConfig {
        instance_url: "https://x.service-now.com".into(),
        username: Some("u".into()),
        password_env: Some("P".into()),
        token_env: Some("T".into()),
        ..Default::default()
    };
    assert!(both.validate().unwrap_err().contains("either"));
    let none = ServiceNowSinkConfig { instance_url: "https://x.service-now.com".into(), ..Default::default() };
    assert!(none.validate().unwrap_err().contains("no credentials"));
}
