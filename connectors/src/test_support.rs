//! Test fixtures shared by the sinks' tests: alerts, and local HTTP receivers that stand in for the
//! vendors' APIs and inject failures (5xx, 429 with Retry-After, timeouts, connection resets, and
//! "processed, then too slow to answer" — the case idempotency keys exist for).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use peergraph_schemas::{Alert, AlertEvent, Severity};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// An alert with every field set.
pub fn alert(id: &str, event: AlertEvent) -> Alert {
    Alert {
        alert_id: id.into(),
        event,
        detector: "peer_unique_destination".into(),
        severity: Severity::High,
        score: 82.5,
        entity: "pod:shop/web-7d9f-x2".into(),
        peer_group: Some("workload:shop/Deployment/web".into()),
        summary: "talks to 203.0.113.9:443, which no other web replica does".into(),
        evidence: BTreeMap::from([("destination".to_string(), "203.0.113.9:443".to_string())]),
        techniques: vec!["T1071".into(), "T1195.002".into()],
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_060_000,
        event_time_ms: match event {
            AlertEvent::Raised => 1_700_000_000_000,
            AlertEvent::Updated => 1_700_000_030_000,
            AlertEvent::Cleared => 1_700_000_060_000,
        },
    }
}

/// A failure the receiver injects instead of (or around) handling the next request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status without handling the request.
    Status(u16),
    /// Answer 429 with `Retry-After: <seconds>` without handling the request.
    TooManyRequests { retry_after_secs: u64 },
    /// Hold the request this long, then answer 504 without handling it (the client times out first).
    Stall(Duration),
    /// Handle the request, then hold the answer this long: the target has it, the client never hears.
    ProcessedThenStall(Duration),
    /// Reset the connection after reading the request's first bytes.
    Reset,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The fault injected on it, if any.
    pub fault: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

#[derive(Clone, Default)]
struct Shared {
    faults: Arc<Mutex<VecDeque<Fault>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A local HTTP server running `router` behind fault injection; stops when dropped.
pub struct Receiver {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(router: Router) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Shared::default();
        let app = router.layer(axum::middleware::from_fn_with_state(shared.clone(), inject));
        let faults = Arc::clone(&shared.faults);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let reset = {
                    let mut faults = faults.lock().expect("faults");
                    matches!(faults.front(), Some(Fault::Reset)) && faults.pop_front().is_some()
                };
                if reset {
                    tokio::spawn(async move {
                        let mut start = [0u8; 16];
                        let _ = stream.read(&mut start).await;
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    });
                    continue;
                }
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, shared, task }
    }

    /// Queues faults for the next requests (and connections, for `Reset`), in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.faults.lock().expect("faults").extend(faults);
    }

    /// Faults not used yet.
    pub fn faults_left(&self) -> usize {
        self.shared.faults.lock().expect("faults").len()
    }

    /// Every request that reached the HTTP layer, faulted ones included.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// The requests that were handled (no fault, or processed-then-stalled).
    pub fn handled(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.fault.as_deref().is_none_or(|fault| fault.starts_with("ProcessedThenStall")))
            .collect()
    }
}

async fn inject(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    let fault = {
        let mut faults = shared.faults.lock().expect("faults");
        match faults.front() {
            Some(Fault::Reset) | None => None,
            Some(_) => faults.pop_front(),
        }
    };
    shared.requests.lock().expect("requests").push(Recorded {
        uri: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.to_vec(),
        fault: fault.as_ref().map(|fault| format!("{fault:?}")),
    });
    let mut response = match fault {
        Some(Fault::Status(code)) => {
            (StatusCode::from_u16(code).expect("status"), format!("injected {code}")).into_response()
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, retry_after_secs.to_string())], "injected 429")
                .into_response()
        }
        Some(Fault::Stall(duration)) => {
            tokio::time::sleep(duration).await;
            (StatusCode::GATEWAY_TIMEOUT, "injected stall").into_response()
        }
        Some(Fault::ProcessedThenStall(duration)) => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            tokio::time::sleep(duration).await;
            response
        }
        Some(Fault::Reset) | None => next.run(Request::from_parts(parts, Body::from(body))).await,
    };
    // One request per connection, so a connection-level fault hits exactly the next request.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Every kind of fault, once each, with a stall longer than a 1 s client timeout.
pub fn every_fault() -> Vec<Fault> {
    vec![
        Fault::Status(503),
        Fault::TooManyRequests { retry_after_secs: 1 },
        Fault::Reset,
        Fault::Status(502),
        Fault::Stall(Duration::from_secs(3)),
        Fault::ProcessedThenStall(Duration::from_secs(3)),
        Fault::Status(500),
    ]
}

/// A fast retry policy for tests against receivers (real time).
pub fn fast_retry(max_attempts: u32) -> crate::retry::RetryConfig {
    crate::retry::RetryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

/// Delivers `batches` to `sink` the way the connector does: every batch retried under `retry` until
/// it succeeds (the test fails if one gives up).
pub async fn deliver_all(
    sink: &mut dyn crate::sink::Sink,
    batches: &[Vec<Alert>],
    retry: &crate::retry::RetryConfig,
) -> u32 {
    let mut retries = 0;
    for batch in batches {
        let mut attempts = crate::retry::Attempts::new(retry, "test", "deliver");
        loop {
            match sink.deliver(batch).await {
                Ok(()) => break,
                Err(error) => {
                    if let Err(gave_up) = attempts.failed(error).await {
                        panic!("gave up after {} attempts: {}", gave_up.attempts, gave_up.error);
                    }
                    retries += 1;
                }
            }
        }
    }
    retries
}
