//! The graph query API: `GET /graph` answers with the service graph as it is now (the latest
//! closed epoch) or as it was at a past time within `time.graph_retention`. Trace handles live on
//! the timely workers and are not `Send`, so the HTTP thread sends each query to every worker of
//! this process over a channel; each worker answers from its shard between steps of its loop, and
//! the HTTP side merges the shards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use peergraph_schemas::{EdgeLevel, GraphEdge};
use peergraph_topology::graph::graph_edge;
use peergraph_topology::{AsOfError, EdgeState, Epoch, GraphFilter, GraphHistory, GraphKey, GraphTrace};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::metrics::Metrics;

/// One worker's answer: its shard's edges at the time asked.
type ShardAnswer = Result<Vec<(GraphKey, EdgeState)>, AsOfError>;

/// A query for one worker's shard.
struct ShardQuery {
    at: Epoch,
    filter: GraphFilter,
    reply: oneshot::Sender<ShardAnswer>,
}

/// What a worker publishes about its shard after each step.
#[derive(Default)]
struct ShardProgress {
    /// The latest closed epoch, plus one (0: none closed yet).
    latest_plus_one: AtomicU64,
    /// The oldest time still readable.
    oldest: AtomicU64,
    /// Where this run resumed after a restart: before it, the replay had not refilled the window.
    resumed_at: Epoch,
}

/// The HTTP side's line to one worker.
struct Shard {
    queries: mpsc::Sender<ShardQuery>,
    progress: Arc<ShardProgress>,
}

/// Shared by the HTTP thread and this process's workers: where each worker takes queries.
pub struct GraphApi {
    local_workers: usize,
    peers: usize,
    tick_ms: u64,
    window_ms: u64,
    retention: Duration,
    timeout: Duration,
    shards: Mutex<BTreeMap<usize, Shard>>,
    metrics: Arc<Metrics>,
}

impl GraphApi {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<GraphApi> {
        Arc::new(GraphApi {
            local_workers: config.run.workers,
            peers: config.run.workers * config.run.processes,
            tick_ms: config.time.tick_ms().max(1),
            window_ms: config.time.window_ms(),
            retention: config.time.graph_retention,
            timeout: config.api.timeout,
            shards: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    /// Gives worker `worker` its side of the API: the returned shard keeps `trace` (a handle on the
    /// worker's part of the arranged graph), holds its compaction back by the retention, and
    /// answers queries when [`GraphShard::serve`] is called. After a restart, `resumed_at` is the
    /// worker's resume point: the graph before it is incomplete (the replay starts one window
    /// earlier) and is not answered.
    pub fn attach(&self, worker: usize, trace: GraphTrace, resumed_at: Epoch) -> GraphShard {
        let (queries, receiver) = mpsc::channel();
        let progress = Arc::new(ShardProgress { resumed_at, ..ShardProgress::default() });
        let shard = Shard { queries, progress: progress.clone() };
        self.shards.lock().unwrap_or_else(|e| e.into_inner()).insert(worker, shard);
        let history = GraphHistory::new(trace, self.retention.as_millis() as u64, self.tick_ms);
        GraphShard { history, queries: receiver, progress }
    }

    /// Answers one `GET /graph`.
    async fn query(&self, params: GraphParams) -> Result<GraphAnswer, ApiError> {
        let filter = params.filter()?;
        let shards: Vec<(mpsc::Sender<ShardQuery>, Arc<ShardProgress>)> = self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| (s.queries.clone(), s.progress.clone()))
            .collect();
        if shards.len() < self.local_workers {
            return Err(ApiError::Unavailable("the workers are still starting".into()));
        }
        // Every shard can answer for a time all of them have closed; the oldest readable time is
        // the furthest any of them has compacted to.
        let latest = shards.iter().map(|(_, p)| p.latest_plus_one.load(Ordering::Acquire)).min().unwrap_or(0);
        let Some(latest) = latest.checked_sub(1) else {
            return Err(ApiError::Unavailable("no epoch has closed yet: the graph is not final for any time".into()));
        };
        let oldest = shards.iter().map(|(_, p)| p.oldest.load(Ordering::Acquire)).max().unwrap_or(0);
        let resumed_at = shards.iter().map(|(_, p)| p.resumed_at).max().unwrap_or(0);
        let at = match params.at.as_deref() {
            None | Some("") | Some("now") => latest,
            Some(text) => parse_time(text)? / self.tick_ms * self.tick_ms,
        };
        if at > latest {
            return Err(ApiError::NotClosed(format!(
                "at={} is after the latest closed epoch ({}): the graph there is not final yet",
                rfc3339(at),
                rfc3339(latest)
            )));
        }
        if at < oldest {
            return Err(self.expired(at, oldest));
        }
        if at < resumed_at {
            return Err(ApiError::Expired(format!(
                "at={} is before this run's resume point after a restart ({}): the graph is complete only from there on",
                rfc3339(at),
                rfc3339(resumed_at)
            )));
        }
        let mut replies = Vec::with_capacity(shards.len());
        for (queries, _) in &shards {
            let (reply, answer) = oneshot::channel();
            queries
                .send(ShardQuery { at, filter: filter.clone(), reply })
                .map_err(|_| ApiError::Unavailable("the pipeline has stopped".into()))?;
            replies.push(answer);
        }
        let answers = tokio::time::timeout(self.timeout, async move {
            let mut answers = Vec::with_capacity(replies.len());
            for reply in replies {
                answers.push(reply.await);
            }
            answers
        })
        .await
        .map_err(|_| ApiError::Timeout(self.timeout))?;
        let mut edges = Vec::new();
        for answer in answers {
            match answer {
                Ok(Ok(shard)) => edges.extend(shard),
                Ok(Err(AsOfError::Expired { at, oldest, .. })) => return Err(self.expired(at, oldest)),
                Ok(Err(error @ AsOfError::NotClosed { .. })) => return Err(ApiError::NotClosed(error.to_string())),
                Err(_) => return Err(ApiError::Unavailable("the pipeline is stopping".into())),
            }
        }
        edges.sort();
        Ok(GraphAnswer {
            at_ms: at,
            at: rfc3339(at),
            level: filter.level,
            latest_ms: latest,
            oldest_ms: oldest.max(resumed_at),
            retention_ms: self.retention.as_millis() as u64,
            window_ms: self.window_ms,
            workers: shards.len(),
            peers: self.peers,
            edges: edges.into_iter().map(|(key, state)| graph_edge(key, state, self.window_ms, at)).collect(),
        })
    }

    fn expired(&self, at: Epoch, oldest: Epoch) -> ApiError {
        ApiError::Expired(format!(
            "at={} is older than the retention: time.graph_retention = {} keeps the graph from {} on",
            rfc3339(at),
            humantime::format_duration(self.retention),
            rfc3339(oldest)
        ))
    }
}

/// A worker's side of the API: its handle on the graph trace and its query channel.
pub struct GraphShard {
    history: GraphHistory,
    queries: mpsc::Receiver<ShardQuery>,
    progress: Arc<ShardProgress>,
}

impl GraphShard {
    /// Follows the trace's progress (moving the retention along) and answers waiting queries.
    /// Call between worker steps.
    pub fn serve(&mut self) {
        self.history.maintain();
        self.progress.latest_plus_one.store(self.history.latest().map_or(0, |l| l + 1), Ordering::Release);
        self.progress.oldest.store(self.history.oldest(), Ordering::Release);
        while let Ok(query) = self.queries.try_recv() {
            // The asker may have given up (timeout); then nobody needs the answer.
            let _ = query.reply.send(self.history.read(query.at, &query.filter));
        }
    }
}

/// `GET /graph`'s parameters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphParams {
    /// ms since the Unix epoch, or an RFC 3339 time in UTC; absent or "now": the latest closed epoch.
    pub at: Option<String>,
    /// "entity" or "workload"; defaults to "workload" with `workload=`, else "entity".
    pub level: Option<String>,
    /// Only edges with this entity or workload id at either end.
    pub node: Option<String>,
    /// Only edges with this entity at either end (entity level).
    pub entity: Option<String>,
    /// Only edges with this workload at either end (workload level).
    pub workload: Option<String>,
    /// Only edges with an end in this namespace.
    pub namespace: Option<String>,
}

impl GraphParams {
    fn filter(&self) -> Result<GraphFilter, ApiError> {
        let named = [&self.node, &self.entity, &self.workload].into_iter().flatten().count();
        if named > 1 {
            return Err(ApiError::BadRequest("give at most one of node=, entity= and workload=".into()));
        }
        let level = match self.level.as_deref() {
            Some("entity") => EdgeLevel::Entity,
            Some("workload") => EdgeLevel::Workload,
            Some(other) => {
                return Err(ApiError::BadRequest(format!("level={other:?}: expected \"entity\" or \"workload\"")))
            }
            None if self.workload.is_some() => EdgeLevel::Workload,
            None => EdgeLevel::Entity,
        };
        let node = self.node.clone().or_else(|| self.entity.clone()).or_else(|| self.workload.clone());
        Ok(GraphFilter { level, node, namespace: self.namespace.clone() })
    }
}

/// The graph at one time, as `GET /graph` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphAnswer {
    /// The epoch answered: the time asked, rounded down to the tick (ms since the Unix epoch).
    pub at_ms: Epoch,
    /// The same, in RFC 3339.
    pub at: String,
    pub level: EdgeLevel,
    /// The latest closed epoch: the newest time that could have been asked.
    pub latest_ms: Epoch,
    /// The oldest time that could have been asked: the latest minus the retention, and after a
    /// restart not before the resume point.
    pub oldest_ms: Epoch,
    pub retention_ms: u64,
    /// The window every edge's counts cover, ending at `at_ms`.
    pub window_ms: u64,
    /// Workers of this process that answered; with several processes, each answers for the
    /// edges its own workers hold.
    pub workers: usize,
    /// Workers in the whole cluster.
    pub peers: usize,
    /// The edges present at `at_ms`, sorted by (level, src, dst, port, protocol).
    pub edges: Vec<GraphEdge>,
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotClosed(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the workers did not answer within api.timeout ({})", humantime::format_duration(*.0))]
    Timeout(Duration),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::NotClosed(_) => StatusCode::BAD_REQUEST,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotClosed(_) => "not_closed",
            ApiError::Expired(_) => "expired",
            ApiError::Unavailable(_) | ApiError::Timeout(_) => "unavailable",
        }
    }
}

/// `at=`: ms since the Unix epoch, or RFC 3339 in UTC ("2026-01-01T00:02:30Z").
fn parse_time(text: &str) -> Result<Epoch, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as Epoch)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "at={text:?}: expected ms since the Unix epoch or an RFC 3339 time in UTC (2026-01-01T00:02:30Z)"
            ))
        })
}

fn rfc3339(ms: Epoch) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

async fn get_graph(State(api): State<Arc<GraphApi>>, params: Result<Query<GraphParams>, QueryRejection>) -> Response {
    let started = Instant::now();
    let result = match params {
        Ok(Query(params)) => api.query(params).await,
        Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
    };
    let outcome = result.as_ref().map_or_else(ApiError::outcome, |_| "ok");
    api.metrics.graph_query(outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => {
            tracing::debug!(%error, "graph query refused");
            (error.status(), Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    }
}

/// The API's HTTP server, on its own thread; stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// The address it listens on (the port is the bound one when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `GET /graph` on `listen` from a small tokio runtime on its own thread, so the timely
/// workers are never blocked by it.
pub fn serve(listen: &str, api: Arc<GraphApi>) -> anyhow::Result<ApiServer> {
    use axum::routing::get;
    let addr: SocketAddr =
        listen.parse().map_err(|e| anyhow::anyhow!("api.listen {listen:?} is not an address: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| anyhow::anyhow!("cannot listen for the graph API on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/graph", get(get_graph)).with_state(api);
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("graph-api-http".into()).spawn(move || {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(error) = runtime.block_on(async move { server.await }) {
            tracing::error!(%error, "graph API stopped");
        }
    })?;
    tracing::info!(%addr, "serving the graph API on /graph");
    Ok(ApiServer { addr, stop: Some(stop), thread: Some(thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_ms_or_rfc3339_in_utc() {
        assert_eq!(parse_time("1767225750000").unwrap(), 1_767_225_750_000);
        assert_eq!(parse_time("2026-01-01T00:02:30Z").unwrap(), 1_767_225_750_000);
        assert_eq!(parse_time("2026-01-01T00:02:30.250Z").unwrap(), 1_767_225_750_250);
        let error = parse_time("yesterday").unwrap_err().to_string();
        assert!(error.contains("RFC 3339"), "{error}");
        assert_eq!(rfc3339(1_767_225_750_000), "2026-01-01T00:02:30.000Z");
    }

    #[test]
    fn parameters_make_a_filter() {
        let params = GraphParams { workload: Some("workload:shop/Deployment/web".into()), ..GraphParams::default() };
        let filter = params.filter().unwrap();
        assert_eq!(filter.level, EdgeLevel::Workload);
        assert_eq!(filter.node.as_deref(), Some("workload:shop/Deployment/web"));
        let params = GraphParams { entity: Some("a".into()), node: Some("b".into()), ..GraphParams::default() };
        assert!(params.filter().unwrap_err().to_string().contains("at most one"));
        let params = GraphParams { level: Some("pod".into()), ..GraphParams::default() };
        assert_eq!(params.filter().unwrap_err().status(), StatusCode::BAD_REQUEST);
        assert_eq!(GraphParams::default().filter().unwrap(), GraphFilter::level(EdgeLevel::Entity));
    }
}
