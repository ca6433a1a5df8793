//! The pipeline's counters, in Prometheus form: everything dropped, rejected or retried is
//! counted here, and served on `/metrics` by [`serve`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabel {
    pub sensor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Seconds a graph query took, from 0.5 ms to about 16 s.
#[derive(Clone, Debug)]
pub struct QuerySeconds(pub Histogram);

impl Default for QuerySeconds {
    fn default() -> Self {
        QuerySeconds(Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
    }
}

/// Shared by every worker of the process.
#[derive(Default)]
pub struct Metrics {
    /// Flow messages read from Kafka.
    pub messages_consumed: Counter,
    /// Bytes of flow messages read from Kafka.
    pub bytes_consumed: Counter,
    /// Flows that entered the dataflow.
    pub flows_accepted: Counter,
    /// Messages refused before the dataflow, by reason (decode error kind, invalid flow kind,
    /// "oversized", "late").
    pub flows_rejected: Family<ReasonLabel, Counter>,
    /// Messages refused, whatever the reason (the sum of `flows_rejected`, for self-checks such
    /// as `bench`'s; not exported, Prometheus sums the family itself).
    pub rejected_total: Counter,
    /// Rejected messages written to the dead-letter topic.
    pub dead_lettered: Counter,
    /// Dead letters written as a summary (reason, origin, size and the first bytes) because the
    /// refused message was too large for the dead-letter topic or the producer refused it.
    pub dead_letters_summarised: Counter,
    /// Dead letters the producer refused even as a summary (the message is still at its offset
    /// in the flows topic; the log names it). The run goes on.
    pub dead_letters_lost: Counter,
    /// Flows refused for running further than `input.max_skew` ahead of their partition's event
    /// time, by sensor id (the first 100 ids; later ones as "other"): a sensor whose clock is
    /// ahead shows up here.
    pub flows_ahead: Family<SensorLabel, Counter>,
    /// Edge updates handed to the dataflow after per-batch pre-aggregation (one per distinct
    /// edge and epoch, twice with the window retraction).
    pub edge_updates: Counter,
    /// Flows whose destination was folded into the overflow destination because their source
    /// hit `input.max_destinations_per_source`.
    pub destinations_capped: Counter,
    /// Flows whose source was folded into the overflow source because the worker held
    /// `input.max_sources` sources in the window.
    pub sources_capped: Counter,
    /// Alert events produced to the alerts topic, by lifecycle event.
    pub alerts_produced: Family<EventLabel, Counter>,
    /// Service-graph changes produced to the service-graph topic.
    pub graph_changes: Counter,
    /// Offset commits made after the output frontier passed the records' epochs.
    pub offset_commits: Counter,
    /// Times a flow partition was paused because its watermark ran `run.max_lag` ahead of the
    /// output frontier (a backlog read in event-time slices).
    pub partitions_paused: Counter,
    /// Flow partitions paused right now, waiting for the output to catch up with them.
    pub partitions_waiting: Gauge,
    /// The event-time frontier of the dataflow output (ms since the Unix epoch), per process.
    pub output_frontier_ms: Gauge,
    /// Updates the workers of this process hold for a later epoch (window retractions, history
    /// and volume expiries) until event time reaches it: about one per (edge, tick) in the window.
    pub scheduled_updates: Gauge,
    /// Flow messages read again after a restart (offsets below the committed ones): the replay
    /// that refills the window.
    pub replayed_messages: Counter,
    /// Alerts and graph changes the replay recomputed for epochs already emitted before the
    /// restart, and therefore did not produce again.
    pub outputs_suppressed: Counter,
    /// State-topic records read at start (history sightings and tombstones).
    pub state_records_loaded: Counter,
    /// History sightings written to the state topic.
    pub state_records_written: Counter,
    /// Tombstones written to the state topic for sightings whose time to live ran out.
    pub state_tombstones_written: Counter,
    /// Wall-clock milliseconds from the start of `run` until the output frontier passed the
    /// resume point (the restart's silent replay), per worker, the slowest wins.
    pub restart_replay_ms: Gauge,
    /// Event time (ms since the Unix epoch) at which emission resumed after the restart.
    pub resume_epoch_ms: Gauge,
    /// Graph queries answered by the query API, by outcome ("ok", "bad_request", "not_closed",
    /// "expired", "unavailable").
    pub graph_queries: Family<OutcomeLabel, Counter>,
    /// How long graph queries took to answer.
    pub graph_query_seconds: QuerySeconds,
    /// Alerts the API's alert board (`GET /alerts`, the page's panel) could not hold: a new alert
    /// id while `api.max_alerts` ids were held and none of them was cleared. The alerts topic has
    /// every event regardless.
    pub api_alerts_dropped: Counter,
    /// Alert ids the API's alert board holds (open, or cleared within the retention).
    pub api_alerts_held: Gauge,
    /// Labelled entities the entity directory (`GET /entities`, the page's search by label)
    /// refused: new ones while `api.max_entities` were held.
    pub api_entities_dropped: Counter,
    /// Labelled entities the entity directory holds.
    pub api_entities_held: Gauge,
    /// The counts of the exit summary by label (prometheus-client's families cannot be read
    /// back as a whole): refusals by reason, alert events by lifecycle event.
    tallies: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    rejected: BTreeMap<String, u64>,
    alerts: BTreeMap<String, u64>,
}

/// What a run read, accepted, refused and produced, for its exit summary (`run` prints it, the
/// log's last line carries it).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitSummary {
    pub flows_accepted: u64,
    /// Refused flow messages (or flows within one), by reason: decode and validation kinds,
    /// `oversized`, `late`, `ahead_of_partition`, `future_timestamp`, `ancient_timestamp`, ...
    pub rejected: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub dead_letters_summarised: u64,
    pub dead_letters_lost: u64,
    /// Flows whose destination was folded into the overflow destination.
    pub destinations_capped: u64,
    /// Flows whose source was folded into the overflow source.
    pub sources_capped: u64,
    /// Alert events produced, by lifecycle event.
    pub alerts: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn reject(&self, reason: &str) {
        self.flows_rejected.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
        self.rejected_total.inc();
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *tallies.rejected.entry(reason.to_owned()).or_default() += 1;
    }

    /// The exit summary of what was counted so far.
    pub fn summary(&self) -> ExitSummary {
        let tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ExitSummary {
            flows_accepted: self.flows_accepted.get(),
            rejected: tallies.rejected.clone(),
            dead_lettered: self.dead_lettered.get(),
            dead_letters_summarised: self.dead_letters_summarised.get(),
            dead_letters_lost: self.dead_letters_lost.get(),
            destinations_capped: self.destinations_capped.get(),
            sources_capped: self.sources_capped.get(),
            alerts: tallies.alerts.clone(),
        }
    }

    pub fn flow_ahead(&self, sensor: &str) {
        self.flows_ahead.get_or_create(&SensorLabel { sensor: sensor.to_owned() }).inc();
    }

    pub fn rejected(&self, reason: &str) -> u64 {
        self.flows_rejected.get_or_create(&ReasonLabel { reason: reason.to_owned() }).get()
    }

    pub fn alert_produced(&self, event: &str) {
        self.alerts_produced.get_or_create(&EventLabel { event: event.to_owned() }).inc();
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *tallies.alerts.entry(event.to_owned()).or_default() += 1;
    }

    pub fn graph_query(&self, outcome: &str, seconds: f64) {
        self.graph_queries.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
        self.graph_query_seconds.0.observe(seconds);
    }

    pub fn graph_queries(&self, outcome: &str) -> u64 {
        self.graph_queries.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).get()
    }

    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::with_prefix("peergraph");
        registry.register("messages_consumed", "Flow messages read from Kafka", self.messages_consumed.clone());
        registry.register(
            "message_bytes_consumed",
            "Bytes of flow messages read from Kafka",
            self.bytes_consumed.clone(),
        );
        registry.register("flows_accepted", "Flows that entered the dataflow", self.flows_accepted.clone());
        registry.register(
            "flows_rejected",
            "Flow messages refused before the dataflow, by reason",
            self.flows_rejected.clone(),
        );
        registry.register(
            "dead_letters_summarised",
            "Dead letters written as a summary (reason, origin, size, first bytes): the message was too large for the dead-letter topic or refused",
            self.dead_letters_summarised.clone(),
        );
        registry.register(
            "dead_letters_lost",
            "Dead letters refused by the producer even as a summary; the message stays at its offset in the flows topic",
            self.dead_letters_lost.clone(),
        );
        registry.register(
            "flows_ahead_of_partition",
            "Flows refused for running further than input.max_skew ahead of their partition's event time, by sensor id",
            self.flows_ahead.clone(),
        );
        registry.register(
            "dead_lettered",
            "Rejected messages written to the dead-letter topic",
            self.dead_lettered.clone(),
        );
        registry.register(
            "edge_updates",
            "Pre-aggregated edge updates handed to the dataflow",
            self.edge_updates.clone(),
        );
        registry.register(
            "destinations_capped",
            "Flows folded into the overflow destination by the per-source cap",
            self.destinations_capped.clone(),
        );
        registry.register(
            "sources_capped",
            "Flows folded into the overflow source by the per-worker source cap (input.max_sources)",
            self.sources_capped.clone(),
        );
        registry.register("alerts_produced", "Alert events produced, by lifecycle event", self.alerts_produced.clone());
        registry.register(
            "offset_commits",
            "Offset commits after the output frontier passed",
            self.offset_commits.clone(),
        );
        registry.register(
            "partitions_paused",
            "Times a flow partition was paused for running run.max_lag ahead of the output frontier",
            self.partitions_paused.clone(),
        );
        registry.register(
            "partitions_waiting",
            "Flow partitions paused until the output frontier catches up with them",
            self.partitions_waiting.clone(),
        );
        registry.register(
            "output_frontier_ms",
            "Event-time frontier of the dataflow output",
            self.output_frontier_ms.clone(),
        );
        registry.register(
            "scheduled_updates",
            "Window retractions and history expiries held until their epoch",
            self.scheduled_updates.clone(),
        );
        registry.register(
            "replayed_messages",
            "Flow messages read again after a restart to rebuild the window",
            self.replayed_messages.clone(),
        );
        registry.register(
            "outputs_suppressed",
            "Alerts and graph changes recomputed by the restart replay for epochs already emitted",
            self.outputs_suppressed.clone(),
        );
        registry.register(
            "state_records_loaded",
            "State-topic records read at start",
            self.state_records_loaded.clone(),
        );
        registry.register(
            "state_records_written",
            "History sightings written to the state topic",
            self.state_records_written.clone(),
        );
        registry.register(
            "state_tombstones_written",
            "Tombstones written to the state topic for expired sightings",
            self.state_tombstones_written.clone(),
        );
        registry.register(
            "restart_replay_ms",
            "Wall-clock ms from start until the output passed the resume point",
            self.restart_replay_ms.clone(),
        );
        registry.register(
            "resume_epoch_ms",
            "Event time at which emission resumed after the restart",
            self.resume_epoch_ms.clone(),
        );
        registry.register(
            "graph_queries",
            "Graph queries answered by the query API, by outcome",
            self.graph_queries.clone(),
        );
        registry.register("graph_query_seconds", "Time to answer a graph query", self.graph_query_seconds.0.clone());
        registry.register(
            "api_alerts_dropped",
            "Alert events the API's alert board refused (api.max_alerts ids held, none cleared)",
            self.api_alerts_dropped.clone(),
        );
        registry.register(
            "api_alerts_held",
            "Alert ids the API's alert board holds (open, or cleared within time.graph_retention)",
            self.api_alerts_held.clone(),
        );
        registry.register(
            "api_entities_dropped",
            "Labelled entities the entity directory refused (api.max_entities held)",
            self.api_entities_dropped.clone(),
        );
        registry.register(
            "api_entities_held",
            "Labelled entities the entity directory holds",
            self.api_entities_held.clone(),
        );
        registry
    }
}

/// `/metrics` (Prometheus text of `registry`) and `/health`: part of every process's one HTTP
/// server (`api.listen`): `peergraph run`'s beside the page and the graph API, `connect`'s alone.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>(registry: Registry) -> axum::Router<S> {
    use axum::routing::get;
    let registry = Arc::new(registry);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => body,
                        Err(e) => format!("# cannot encode metrics: {e}\n"),
                    }
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
}

/// Serves `registry` on `/metrics` (and `/health`) at `listen` (`api.listen`) until the process
/// ends, from its own thread with a small tokio runtime: `connect`'s HTTP server.
pub fn serve_registry(listen: &str, registry: Registry) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr =
        listen.parse().map_err(|e| anyhow::anyhow!("api.listen {listen:?} is not an address: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| anyhow::anyhow!("cannot listen on api.listen {addr}: {e}"))?;
    let app: axum::Router = metrics_routes(registry);
    std::thread::Builder::new().name("http".into()).spawn(move || {
        if let Err(error) = runtime.block_on(async move { axum::serve(listener, app).await }) {
            tracing::error!(%error, "HTTP server stopped");
        }
    })?;
    tracing::info!(%addr, "serving /metrics and /health");
    Ok(())
}
