//! The HTTP server of `peergraph run` (one, on `api.listen`): the activity map page (`/`), the
//! graph query API, the alerts, `/metrics` and `/health`.
//!
//! `GET /graph` answers with the service graph as it is now (the latest closed epoch) or as it
//! was at a past time within `time.graph_retention`; `GET /graph/diff` with what changed between
//! two such times; `GET /alerts` with the alerts open (or cleared) at a time. Trace handles live on
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
use peergraph_schemas::{Alert, EdgeLevel, GraphEdge};
use peergraph_topology::graph::graph_edge;
use peergraph_topology::{AsOfError, EdgeState, Epoch, GraphDiff, GraphFilter, GraphHistory, GraphKey, GraphTrace};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::alert_board::{AlertBoard, AlertView};
use crate::config::Config;
use crate::directory::{EntitiesAnswer, EntityDirectory};
use crate::metrics::Metrics;

/// One worker's answer: its shard's edges at the time asked, or its shard's diff.
type ShardAnswer<T> = Result<T, AsOfError>;

/// A query for one worker's shard.
enum ShardQuery {
    /// The edges at `at`.
    Read { at: Epoch, filter: GraphFilter, reply: oneshot::Sender<ShardAnswer<Vec<(GraphKey, EdgeState)>>> },
    /// How the edges changed from `from` to `to`.
    Diff { from: Epoch, to: Epoch, filter: GraphFilter, reply: oneshot::Sender<ShardAnswer<GraphDiff>> },
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
    /// The alerts of this process's workers, within the retention.
    alerts: Mutex<AlertBoard>,
    /// The labelled entities this process's workers have seen.
    directory: Arc<EntityDirectory>,
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
            alerts: Mutex::new(AlertBoard::new(
                config.api.max_alerts,
                config.time.graph_retention_ms(),
                config.run.workers,
            )),
            directory: Arc::new(EntityDirectory::new(config.api.max_entities)),
            metrics,
        })
    }

    /// The entity directory the workers' sources fill.
    pub fn directory(&self) -> Arc<EntityDirectory> {
        Arc::clone(&self.directory)
    }

    /// Worker `worker`'s alert stream has passed `frontier` (`None`: it has ended): its alerts
    /// before it are all on the board.
    pub fn alerts_progress(&self, worker: usize, frontier: Option<Epoch>) {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner()).advance(worker, frontier);
    }

    /// Every alert event before this epoch is on the board.
    fn alerts_closed_before(&self) -> Epoch {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner()).closed_before()
    }

    /// Adds alert events a worker emitted to the board `GET /alerts` reads.
    pub fn record_alerts(&self, alerts: &[Alert]) {
        let mut board = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for alert in alerts {
            board.record(alert, &self.metrics);
        }
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

    /// The shards and the times they can answer for: `(shards, latest closed, oldest readable)`.
    fn readable(&self) -> Result<(Vec<mpsc::Sender<ShardQuery>>, Epoch, Epoch), ApiError> {
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
        // the furthest any of them has compacted to, and after a restart not before the resume
        // point (the replay had not refilled the window before it).
        // The alerts too: a time is answered once its alert events are all on the board, so the
        // graph and the alerts the page shows for one time belong together.
        let latest = shards.iter().map(|(_, p)| p.latest_plus_one.load(Ordering::Acquire)).min().unwrap_or(0);
        let latest = latest.min(self.alerts_closed_before());
        let Some(latest) = latest.checked_sub(1) else {
            return Err(ApiError::Unavailable("no epoch has closed yet: the graph is not final for any time".into()));
        };
        let oldest = shards.iter().map(|(_, p)| p.oldest.load(Ordering::Acquire)).max().unwrap_or(0);
        let resumed_at = shards.iter().map(|(_, p)| p.resumed_at).max().unwrap_or(0);
        Ok((shards.into_iter().map(|(q, _)| q).collect(), latest, oldest.max(resumed_at)))
    }

    /// The epoch `at=` names (absent or "now": the latest), if it can be read.
    fn epoch(&self, at: Option<&str>, latest: Epoch, oldest: Epoch) -> Result<Epoch, ApiError> {
        let at = match at {
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
        Ok(at)
    }

    /// Sends one query to every shard and waits (up to `api.timeout`) for all their answers.
    async fn ask<T>(
        &self,
        shards: &[mpsc::Sender<ShardQuery>],
        query: impl Fn(oneshot::Sender<ShardAnswer<T>>) -> ShardQuery,
    ) -> Result<Vec<T>, ApiError> {
        let mut replies = Vec::with_capacity(shards.len());
        for queries in shards {
            let (reply, answer) = oneshot::channel();
            queries.send(query(reply)).map_err(|_| ApiError::Unavailable("the pipeline has stopped".into()))?;
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
        let mut shard_answers = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                Ok(Ok(shard)) => shard_answers.push(shard),
                Ok(Err(AsOfError::Expired { at, oldest, .. })) => return Err(self.expired(at, oldest)),
                Ok(Err(error @ AsOfError::NotClosed { .. })) => return Err(ApiError::NotClosed(error.to_string())),
                Err(_) => return Err(ApiError::Unavailable("the pipeline is stopping".into())),
            }
        }
        Ok(shard_answers)
    }

    /// Answers one `GET /graph`.
    async fn query(&self, params: GraphParams) -> Result<GraphAnswer, ApiError> {
        let filter = params.filter()?;
        let (shards, latest, oldest) = self.readable()?;
        let at = self.epoch(params.at.as_deref(), latest, oldest)?;
        let answers = self.ask(&shards, |reply| ShardQuery::Read { at, filter: filter.clone(), reply }).await?;
        let mut edges: Vec<(GraphKey, EdgeState)> = answers.into_iter().flatten().collect();
        edges.sort();
        Ok(GraphAnswer {
            at_ms: at,
            at: rfc3339(at),
            level: filter.level,
            latest_ms: latest,
            oldest_ms: oldest,
            retention_ms: self.retention.as_millis() as u64,
            window_ms: self.window_ms,
            workers: shards.len(),
            peers: self.peers,
            edges: edges.into_iter().map(|(key, state)| graph_edge(key, state, self.window_ms, at)).collect(),
        })
    }

    /// Answers one `GET /graph/diff`: computed on each shard from its held-back trace in one
    /// walk, so only the differences travel.
    async fn diff(&self, params: DiffParams) -> Result<DiffAnswer, ApiError> {
        let filter = params.graph.filter()?;
        let (shards, latest, oldest) = self.readable()?;
        let Some(from) = params.from.as_deref() else {
            return Err(ApiError::BadRequest("from= is required (ms since the Unix epoch or RFC 3339)".into()));
        };
        let from = self.epoch(Some(from), latest, oldest)?;
        let to = self.epoch(params.graph.at.as_deref().or(params.to.as_deref()), latest, oldest)?;
        if from > to {
            return Err(ApiError::BadRequest(format!("from={} is after to={}", rfc3339(from), rfc3339(to))));
        }
        let answers = self.ask(&shards, |reply| ShardQuery::Diff { from, to, filter: filter.clone(), reply }).await?;
        let mut diff = GraphDiff::default();
        for shard in answers {
            diff.merge(shard);
        }
        let window_ms = self.window_ms;
        let record = |(key, state): (GraphKey, EdgeState), at: Epoch| graph_edge(key, state, window_ms, at);
        Ok(DiffAnswer {
            from_ms: from,
            to_ms: to,
            level: filter.level,
            latest_ms: latest,
            oldest_ms: oldest,
            added: diff.added.into_iter().map(|edge| record(edge, to)).collect(),
            removed: diff.removed.into_iter().map(|edge| record(edge, from)).collect(),
            changed: diff
                .changed
                .into_iter()
                .map(|(key, then, now)| Changed { from: record((key.clone(), then), from), to: record((key, now), to) })
                .collect(),
        })
    }

    /// Answers one `GET /alerts`.
    fn alerts(&self, params: AlertParams) -> Result<AlertsAnswer, ApiError> {
        let board = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        // The latest time whose alert events are all on the board.
        let Some(latest) = board.closed_before().checked_sub(1) else {
            return Err(ApiError::Unavailable("no epoch has closed yet: the alerts are not final for any time".into()));
        };
        let at = match params.at.as_deref() {
            None | Some("") | Some("now") => latest,
            Some(text) => parse_time(text)?,
        };
        if at > latest {
            return Err(ApiError::NotClosed(format!(
                "at={} is after the latest closed epoch ({}): the alerts there are not final yet",
                rfc3339(at),
                rfc3339(latest)
            )));
        }
        let cleared = match params.state.as_deref() {
            None | Some("open") => false,
            Some("all") => true,
            Some(other) => return Err(ApiError::BadRequest(format!("state={other:?}: expected \"open\" or \"all\""))),
        };
        Ok(AlertsAnswer {
            at_ms: at,
            latest_ms: latest,
            retention_ms: self.retention.as_millis() as u64,
            alerts: board.at(at as i64, cleared),
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
        // The asker may have given up (timeout); then nobody needs the answer.
        while let Ok(query) = self.queries.try_recv() {
            match query {
                ShardQuery::Read { at, filter, reply } => {
                    let _ = reply.send(self.history.read(at, &filter));
                }
                ShardQuery::Diff { from, to, filter, reply } => {
                    let _ = reply.send(self.history.diff(from, to, &filter));
                }
            }
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

/// `GET /graph/diff`'s parameters: `from=` and `to=` (default now), and the graph filters.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DiffParams {
    /// The earlier time: ms since the Unix epoch, or RFC 3339 in UTC.
    pub from: Option<String>,
    /// The later time; absent or "now": the latest closed epoch.
    pub to: Option<String>,
    /// `level=`, `node=`, `entity=`, `workload=`, `namespace=` as for `GET /graph` (`at=` is `to=`).
    #[serde(flatten)]
    pub graph: GraphParams,
}

/// `GET /alerts`' parameters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertParams {
    /// ms since the Unix epoch or RFC 3339; absent or "now": the latest closed epoch.
    pub at: Option<String>,
    /// "open" (default): the alerts open at `at`; "all": also those cleared by then.
    pub state: Option<String>,
}

/// `GET /entities`' parameters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityParams {
    /// Part of a name, a workload or a `key=value` label, any case; absent: every entity.
    pub q: Option<String>,
    /// Only the replicas of this workload.
    pub workload: Option<String>,
    /// At most this many (default 1,000, at most 10,000).
    pub limit: Option<usize>,
}

/// What changed between two times, as `GET /graph/diff` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffAnswer {
    pub from_ms: Epoch,
    pub to_ms: Epoch,
    pub level: EdgeLevel,
    pub latest_ms: Epoch,
    pub oldest_ms: Epoch,
    /// Edges present at `to_ms` and not at `from_ms`, as they were at `to_ms`.
    pub added: Vec<GraphEdge>,
    /// Edges present at `from_ms` and gone at `to_ms`, as they were at `from_ms`.
    pub removed: Vec<GraphEdge>,
    /// Edges present at both whose windowed volume changed.
    pub changed: Vec<Changed>,
}

/// One edge whose volume changed: its record at each time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub from: GraphEdge,
    pub to: GraphEdge,
}

/// The alerts at one time, as `GET /alerts` returns them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertsAnswer {
    pub at_ms: Epoch,
    /// The latest closed epoch: every alert event up to it is on the board.
    pub latest_ms: Epoch,
    pub retention_ms: u64,
    /// Open first, then by severity and time.
    pub alerts: Vec<AlertView>,
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

/// Answers a query: its JSON, or the error with its status; counted by outcome and timed.
fn respond<T: Serialize>(api: &GraphApi, started: Instant, result: Result<T, ApiError>) -> Response {
    let outcome = result.as_ref().map_or_else(ApiError::outcome, |_| "ok");
    api.metrics.graph_query(outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => {
            tracing::debug!(%error, "query refused");
            (error.status(), Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    }
}

/// The parameters, or a 400 that says what is wrong with them.
fn params<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params.map(|Query(p)| p).map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

async fn get_graph(State(api): State<Arc<GraphApi>>, query: Result<Query<GraphParams>, QueryRejection>) -> Response {
    let started = Instant::now();
    let result = match params(query) {
        Ok(params) => api.query(params).await,
        Err(error) => Err(error),
    };
    respond(&api, started, result)
}

async fn get_diff(State(api): State<Arc<GraphApi>>, query: Result<Query<DiffParams>, QueryRejection>) -> Response {
    let started = Instant::now();
    let result = match params(query) {
        Ok(params) => api.diff(params).await,
        Err(error) => Err(error),
    };
    respond(&api, started, result)
}

async fn get_entities(
    State(api): State<Arc<GraphApi>>,
    query: Result<Query<EntityParams>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let result = params(query).map(|params| -> EntitiesAnswer {
        let limit = params.limit.unwrap_or(1_000).min(10_000);
        api.directory.search(params.q.as_deref().unwrap_or(""), params.workload.as_deref(), limit)
    });
    respond(&api, started, result)
}

async fn get_alerts(State(api): State<Arc<GraphApi>>, query: Result<Query<AlertParams>, QueryRejection>) -> Response {
    let started = Instant::now();
    let result = params(query).and_then(|params| api.alerts(params));
    respond(&api, started, result)
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

/// Serves the page, the API, `/metrics` and `/health` on `listen` (`api.listen`) from a small
/// tokio runtime on its own thread, so the timely workers are never blocked by it.
pub fn serve(listen: &str, api: Arc<GraphApi>) -> anyhow::Result<ApiServer> {
    use axum::routing::get;
    let addr: SocketAddr =
        listen.parse().map_err(|e| anyhow::anyhow!("api.listen {listen:?} is not an address: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| anyhow::anyhow!("cannot listen on api.listen {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = crate::page::routes()
        .merge(crate::metrics::metrics_routes(api.metrics.registry()))
        .route("/graph", get(get_graph))
        .route("/graph/diff", get(get_diff))
        .route("/alerts", get(get_alerts))
        .route("/entities", get(get_entities))
        .with_state(api);
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(error) = runtime.block_on(async move { server.await }) {
            tracing::error!(%error, "HTTP server stopped");
        }
    })?;
    tracing::info!(%addr, "serving the activity map on http://{addr}/ (and /graph, /graph/diff, /alerts, /entities, /metrics, /health)");
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
