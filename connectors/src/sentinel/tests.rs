//! The Sentinel sink against a local Entra ID token endpoint (client credentials form, as
//! documented) and a Logs Ingestion endpoint (bearer token, `api-version`, JSON array of records
//! with `TimeGenerated`, 204), with injected faults and revoked tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Json, Router};
use peergraph_schemas::AlertEvent;
use serde_json::{json, Value};

use super::*;
use crate::test_support::{alert, deliver_all, fast_retry, Fault, Receiver};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0b3a5c2e-1d4f-4e6a-9b8c-7d6e5f4a3b2c";
const CLIENT_SECRET: &str = "Qx8Q~client.secret~value";
const DCR: &str = "dcr-00000000000000000000000000000000";
const STREAM: &str = "Custom-PeergraphAlerts_CL";

#[derive(Default)]
struct Azure {
    issued: BTreeSet<String>,
    tokens_requested: u32,
    /// EventKey → times ingested.
    ingested: BTreeMap<String, u32>,
}

type Shared = Arc<Mutex<Azure>>;

async fn token(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let field = |name: &str| form.get(name).map(String::as_str);
    if tenant != TENANT {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_tenant"})));
    }
    if field("grant_type") != Some("client_credentials")
        || field("scope") != Some("https://monitor.azure.com//.default")
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request"})));
    }
    if field("client_id") != Some(CLIENT_ID) || field("client_secret") != Some(CLIENT_SECRET) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            ),
        );
    }
    let mut state = state.lock().expect("state");
    state.tokens_requested += 1;
    let token = format!("eyJ0eXAiOiJKV1Qi.token-{}", state.tokens_requested);
    state.issued.insert(token.clone());
    (
        StatusCode::OK,
        Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})),
    )
}

async fn ingest(
    State(state): State<Shared>,
    Path((dcr, stream)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let error = |status: StatusCode, code: &str| (status, Json(json!({"error": {"code": code, "message": code}})));
    let mut state = state.lock().expect("state");
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| state.issued.contains(token)) {
        return error(StatusCode::UNAUTHORIZED, "InvalidToken");
    }
    if query.get("api-version").map(String::as_str) != Some("2023-01-01") {
        return error(StatusCode::BAD_REQUEST, "InvalidApiVersion");
    }
    if dcr != DCR || stream != STREAM {
        return error(StatusCode::NOT_FOUND, "InvalidDataFlow");
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType");
    }
    if body.len() > 1_000_000 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "ContentLengthLimitExceeded");
    }
    let Ok(Value::Array(records)) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "InvalidContent");
    };
    if records
        .iter()
        .any(|record| record["TimeGenerated"].as_str().is_none_or(|t| humantime::parse_rfc3339(t).is_err()))
    {
        return error(StatusCode::BAD_REQUEST, "InvalidContent");
    }
    for record in records {
        *state.ingested.entry(record["EventKey"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    (StatusCode::NO_CONTENT, Json(Value::Null))
}

async fn receiver() -> (Receiver, Shared) {
    let state = Shared::default();
    let router = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/dataCollectionRules/{dcr}/streams/{stream}", post(ingest))
        .with_state(Arc::clone(&state));
    (Receiver::start(router).await, state)
}

fn sink_config(url: &str, dir: &std::path::Path) -> SentinelSinkConfig {
    let secret_file = dir.join("client_secret");
    std::fs::write(&secret_file, CLIENT_SECRET).expect("secret file");
    SentinelSinkConfig {
        endpoint: url.into(),
        dcr_immutable_id: DCR.into(),
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret_file: Some(secret_file),
        token_url: format!("{url}/{{tenant_id}}/oauth2/v2.0/token"),
        max_bytes: 4096,
        timeout: Duration::from_secs(1),
        ..SentinelSinkConfig::default()
    }
}

#[tokio::test]
async fn records_arrive_once_each_with_a_cached_token_renewed_after_revocation_and_faults() {
    let (receiver, state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink_config(&receiver.url, dir.path()).build().expect("builds");
    sink.health_check().await.expect("healthy");
    receiver.inject([
        Fault::Status(503),
        Fault::TooManyRequests { retry_after_secs: 1 },
        Fault::Reset,
        Fault::Stall(Duration::from_secs(3)),
    ]);
    let batches: Vec<Vec<Alert>> =
        (0..3).map(|b| (0..10).map(|n| alert(&format!("a-{b}-{n}"), AlertEvent::Raised)).collect()).collect();
    deliver_all(&mut sink, &batches[..2], &fast_retry(10)).await;
    assert_eq!(state.lock().expect("state").tokens_requested, 1, "the token is cached");
    // The token is revoked: the next upload gets a 401, and the retry a new token.
    state.lock().expect("state").issued.clear();
    deliver_all(&mut sink, &batches[2..], &fast_retry(10)).await;

    assert_eq!(receiver.faults_left(), 0);
    let state = state.lock().expect("state");
    assert_eq!(state.tokens_requested, 2);
    assert_eq!(state.ingested.len(), 30);
    assert!(state.ingested.values().all(|&n| n == 1), "{:?}", state.ingested);
}

#[tokio::test]
async fn a_wrong_client_secret_is_permanent_and_not_shown() {
    let (receiver, _state) = receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret").expect("write");
    let config = SentinelSinkConfig { client_secret_file: Some(wrong), ..sink_config(&receiver.url, dir.path()) };
    let error = config.build().expect("builds").health_check().await.expect_err("401");
    assert!(!error.is_retryable(), "{error}");
    assert!(!error.to_string().contains("not-the-secret"), "{error}");
}
