//! The Jira sink against a local receiver implementing the documented REST endpoints it uses (v2
//! and v3): search by JQL label, create issue, comment, transitions; basic auth; injected faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::*;
use crate::test_support::{alert, deliver_all, every_fault, fast_retry, Receiver};

const EMAIL: &str = "soc-bot@example.com";
const API_TOKEN: &str = "ATATT3xFfGF0-secret";

#[derive(Debug)]
struct StoredIssue {
    key: String,
    labels: Vec<String>,
    done: bool,
    comments: Vec<Value>,
    created: Instant,
}

#[derive(Default)]
struct Jira {
    issues: Vec<StoredIssue>,
    /// A new issue shows up in searches only this long after its creation (Jira's index lag).
    index_lag: Duration,
}

type Shared = Arc<Mutex<Jira>>;

fn authorized(headers: &HeaderMap) -> bool {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{EMAIL}:{API_TOKEN}")));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn errors(status: StatusCode, messages: &[&str]) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"errorMessages": messages, "errors": {}})))
}

/// A description or comment body in the version's documented shape.
fn valid_body(version: &str, body: &Value) -> bool {
    match version {
        "2" => body.is_string(),
        _ => body["type"] == "doc" && body["version"] == 1 && body["content"].is_array(),
    }
}

async fn project(Path((_version, key)): Path<(String, String)>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return errors(StatusCode::UNAUTHORIZED, &["Client must be authenticated to access this resource."]);
    }
    if key != "SEC" {
        return errors(StatusCode::NOT_FOUND, &["No project could be found with key"]);
    }
    (StatusCode::OK, Json(json!({"key": key, "name": "Security"})))
}

async fn search(
    State(state): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return errors(StatusCode::UNAUTHORIZED, &["Client must be authenticated to access this resource."]);
    }
    let jql = params.get("jql").cloned().unwrap_or_default();
    let Some(label) = jql.split("labels = \"").nth(1).and_then(|rest| rest.split('"').next()) else {
        return errors(StatusCode::BAD_REQUEST, &["Error in the JQL Query"]);
    };
    let state = state.lock().expect("state");
    let issues: Vec<Value> = state
        .issues
        .iter()
        .filter(|issue| issue.labels.iter().any(|l| l == label) && issue.created.elapsed() >= state.index_lag)
        .map(|issue| {
            let category = if issue.done { "done" } else { "new" };
            json!({"id": "1", "key": issue.key, "fields": {"status": {"statusCategory": {"key": category}}}})
        })
        .collect();
    let answer = if version == "2" {
        json!({"startAt": 0, "maxResults": 1, "total": issues.len(), "issues": issues})
    } else {
        json!({"issues": issues, "isLast": true})
    };
    (StatusCode::OK, Json(answer))
}

async fn create(
    State(state): State<Shared>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return errors(StatusCode::UNAUTHORIZED, &["Client must be authenticated to access this resource."]);
    }
    let fields = &request["fields"];
    let summary = fields["summary"].as_str().unwrap_or_default();
    let labels: Vec<String> =
        fields["labels"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect();
    if fields["project"]["key"] != "SEC"
        || fields["issuetype"]["name"].as_str().is_none()
        || summary.is_empty()
        || summary.chars().count() > 255
        || summary.contains('\n')
        || !valid_body(&version, &fields["description"])
        || labels.iter().any(|l| l.contains(' '))
    {
        return errors(StatusCode::BAD_REQUEST, &["Field validation failed"]);
    }
    let mut state = state.lock().expect("state");
    let key = format!("SEC-{}", state.issues.len() + 1);
    state.issues.push(StoredIssue {
        key: key.clone(),
        labels,
        done: false,
        comments: Vec::new(),
        created: Instant::now(),
    });
    (StatusCode::CREATED, Json(json!({"id": "10000", "key": key, "self": format!("/rest/api/{version}/issue/{key}")})))
}

async fn add_comment(
    State(state): State<Shared>,
    Path((version, key)): Path<(String, String)>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return errors(StatusCode::UNAUTHORIZED, &["Client must be authenticated to access this resource."]);
    }
    if !valid_body(&version, &request["body"]) {
        return errors(StatusCode::BAD_REQUEST, &["Comment body is not valid"]);
    }
    let mut state = state.lock().expect("state");
    let Some(issue) = state.issues.iter_mut().find(|issue| issue.key == key) else {
        return errors(StatusCode::NOT_FOUND, &["Issue does not exist"]);
    };
    issue.comments.push(request["body"].clone());
    (StatusCode::CREATED, Json(json!({"id": issue.comments.len().to_string()})))
}

async fn list_transitions(headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return errors(StatusCode::UNAUTHORIZED, &["Client must be authenticated to access this resource."]);
    }
    let transitions = json!({"transitions": [
        {"id": "11", "name": "To Do", "to": {"statusCategory": {"key": "new"}}},
        {"id": "21", "name": "In Progress", "to": {"statusCategory": {"key": "indeterminate"}}},
        {"id": "31", "name": "Done", "to": {"statusCategory": {"key": "done"}}},
    ]});
    (StatusCode::OK, Json(transitions))
}

async fn do_transition(
    State(state): State<Shared>,
    Path((_version, key)): Path<(String, String)>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> StatusCode {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED;
    }
    let mut state = state.lock().expect("state");
    let Some(issue) = state.issues.iter_mut().find(|issue| issue.key == key) else {
        return StatusCode::NOT_FOUND;
    };
    if request["transition"]["id"] == "31" {
        issue.done = true;
    }
    StatusCode::NO_CONTENT
}

async fn receiver(index_lag: Duration) -> (Receiver, Shared) {
    let state = Arc::new(Mutex::new(Jira { issues: Vec::new(), index_lag }));
    let router = Router::new()
        .route("/rest/api/{version}/project/{key}", get(project))
        .route("/rest/api/3/search/jql", get(|s, h, q| search(s, Path("3".to_string()), h, q)))
        .route("/rest/api/2/search", get(|s, h, q| search(s, Path("2".to_string()), h, q)))
        .route("/rest/api/{version}/issue", axum::routing::post(create))
        .route("/rest/api/{version}/issue/{key}/comment", axum::routing::post(add_comment))
        .route("/rest/api/{version}/issue/{key}/transitions", get(list_transitions).post(do_transition))
        .with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

fn sink_config(url: &str, dir: &std::path::Path, api_version: u8) -> JiraSinkConfig {
    let token_file = dir.join("jira_token");
    std::fs::write(&token_file, API_TOKEN).expect("token file");
    JiraSinkConfig {
        url: url.into(),
        api_version,
        project_key: "SEC".into(),
        email: Some(EMAIL.into()),
        api_token_file: Some(token_file),
        timeout: Duration::from_secs(1),
        ..JiraSinkConfig::default()
    }
}

fn batches() -> Vec<Vec<Alert>> {
    vec![
        vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)],
        vec![alert("a", AlertEvent::Updated), alert("a", AlertEvent::Cleared), alert("c", AlertEvent::Raised)],
    ]
}

#[tokio::test]
async fn v3_one_issue_per_alert_commented_and_transitioned_despite_faults_and_index_lag() {
    let (receiver, state) = receiver(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path(), 3).build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject(every_fault());
    deliver_all(&mut sink, &batches(), &fast_retry(12)).await;
    assert_eq!(receiver.faults_left(), 0, "every fault was hit");
    // A restart replays everything once the index caught up: nothing new may appear.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut restarted = sink_config(&receiver.url, dir.path(), 3).build().expect("builds");
    deliver_all(&mut restarted, &batches(), &fast_retry(3)).await;

    let state = state.lock().expect("state");
    let mut per_alert: BTreeMap<String, usize> = BTreeMap::new();
    for issue in &state.issues {
        let label = issue.labels.iter().find(|l| l.starts_with("peergraph-")).expect("alert label");
        *per_alert.entry(label.clone()).or_default() += 1;
    }
    assert_eq!(
        per_alert,
        BTreeMap::from([("peergraph-a".into(), 1), ("peergraph-b".into(), 1), ("peergraph-c".into(), 1)]),
        "{:?}",
        state.issues
    );
    let a = state.issues.iter().find(|issue| issue.labels.contains(&"peergraph-a".to_string())).expect("a");
    assert!(a.done, "{a:?}");
    assert!(!a.comments.is_empty());
    let b = state.issues.iter().find(|issue| issue.labels.contains(&"peergraph-b".to_string())).expect("b");
    assert!(!b.done && b.comments.is_empty(), "{b:?}");
}

#[tokio::test]
async fn v2_uses_plain_text_bodies_and_the_v2_search() {
    let (receiver, state) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path(), 2).build().expect("builds");
    deliver_all(&mut sink, &batches(), &fast_retry(2)).await;
    let state = state.lock().expect("state");
    assert_eq!(state.issues.len(), 3);
    assert!(state.issues[0].comments.iter().all(Value::is_string));
    assert!(receiver.requests().iter().any(|r| r.uri.starts_with("/rest/api/2/search?jql=")));
}

#[test]
fn a_missing_api_token_is_named_by_its_variable_and_the_api_version_is_checked() {
    let config = JiraSinkConfig {
        url: "https://example.atlassian.net".into(),
        project_key: "SEC".into(),
        email: Some(EMAIL.into()),
        api_token_env: Some("PEERGRAPH_TEST_JIRA_TOKEN_UNSET".into()),
        ..Default::default()
    };
    let error = config.build().err().expect("unset");
    assert!(error.to_string().contains("PEERGRAPH_TEST_JIRA_TOKEN_UNSET"), "{error}");
    assert!(JiraSinkConfig { api_version: 4, ..config }.validate().unwrap_err().contains("api_version"));
}
