//! `peergraph run`: the timely cluster. Each worker reads its share of the flow partitions,
//! feeds the windowed edge updates into the dataflow, advances event time by the partition
//! watermarks, produces alerts, and commits offsets behind the output frontier. On restart it
//! loads the history from the state topic and replays the window silently (see `kafka::state`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use differential_dataflow::input::InputSession;
use peergraph_schemas::codec::SchemaRegistry;
use peergraph_schemas::{Alert, GraphEdge};
use peergraph_topology::volume_history::{expires_at, settles_at};
use peergraph_topology::{
    build, AssetRecord, Edge, Epoch, Indicator, Inputs, Name, ResumedAlerts, ScheduledInput, TimeConfig, Volume,
    WorkloadEdge,
};
use rdkafka::consumer::CommitMode;
use serde::{Deserialize, Serialize};
use timely::communication::Config as CommunicationConfig;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Input as _;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect as _, Probe as _};

use crate::api::{GraphApi, GraphShard};
use crate::config::Config;
use crate::kafka::outbox::Outbox;
use crate::kafka::output::{produce, record_encoder, RecordSink, Sinks};
use crate::kafka::reference::{self, ReferenceReader};
use crate::kafka::source::{EdgeBatch, FlowSource, ReadLimit, Share};
use crate::kafka::state::{self, HistoryEntry, HistoryStore, Restored, VolumeEntry};
use crate::kafka::{self, client_config};
use crate::metrics::Metrics;

/// How many slices of `run.max_lag` the source may read ahead of the output before it pauses a
/// partition: the dataflow works on one while Kafka refills the next (a resumed partition
/// fetches again from its next offset).
const READ_AHEAD_SLICES: u64 = 3;

/// What one worker did, summed over the cluster by [`run`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub messages: u64,
    pub edge_updates: u64,
    /// Greatest epoch the output frontier passed.
    pub output_frontier: Epoch,
    /// Earliest epoch of an accepted flow (or, after a restart, of the checkpoints); `None` when
    /// no flow was accepted. With `output_frontier`, the span of event time the run went through.
    pub first_epoch: Option<Epoch>,
    /// How many times the output frontier moved (on the worker whose frontier moved most): a run
    /// that streams moves it once per few ticks, a batch of old times only once or twice.
    pub frontier_moves: u64,
    /// What the process accepted, refused (by reason) and produced: the exit summary.
    #[serde(flatten)]
    pub summary: crate::metrics::ExitSummary,
    /// After a restart: the epoch from which output was produced again (earlier epochs were
    /// replayed silently); 0 on a first start.
    pub resumed_at: Epoch,
}

/// A worker's event-time announcement to its peers: its input frontier, and once it has read
/// everything (`stop_at_end`), the epoch after its last record.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Announcement {
    worker: usize,
    watermark: Epoch,
    finished_at: Option<Epoch>,
}

/// The worker's handles on the dataflow's inputs, advanced together. The inputs whose records
/// leave later (contacts after the window, history sightings after the TTL, volume ticks when
/// they expire) hold those retractions until their epoch (see [`ScheduledInput`]).
struct Feeds {
    contacts: ScheduledInput<(Edge, Epoch), Volume>,
    assets: InputSession<Epoch, AssetRecord, isize>,
    indicators: InputSession<Epoch, Indicator, isize>,
    history: ScheduledInput<(WorkloadEdge, Epoch), isize>,
    /// The volume history a previous run persisted.
    volumes: ScheduledInput<(Name, Epoch), isize>,
    /// Workload edges this worker already put into the history for a coarse epoch; only the
    /// current and the previous coarse epochs are kept.
    remembered: BTreeMap<Epoch, HashSet<WorkloadEdge>>,
    /// Sightings put into the history and not yet in the state topic, each with the epoch of
    /// the flow that made it: a sighting is written once the output frontier has passed that
    /// epoch, with the offsets of its flow, never for a flow whose offset is not committed.
    learned: VecDeque<(Epoch, HistoryEntry)>,
}

impl Feeds {
    fn time(&self) -> Epoch {
        *self.contacts.time()
    }

    /// Hands one pre-aggregated batch to the dataflow: each (edge, epoch) enters at its epoch and
    /// leaves one window later; each workload edge enters the history once per coarse epoch.
    /// Returns the number of contact updates.
    fn window(&mut self, batch: &mut EdgeBatch, time: &TimeConfig) -> u64 {
        let window = time.window_ms();
        let updates = batch.len() as u64 * 2;
        for ((edge, epoch), volume) in batch.drain() {
            let coarse = time.history_epoch_of(epoch);
            let workload_edge = WorkloadEdge::from(&edge);
            if self.remembered.entry(coarse).or_default().insert(workload_edge.clone()) {
                self.history.update_at((workload_edge.clone(), coarse), coarse, 1);
                self.history.update_at((workload_edge.clone(), coarse), coarse + time.history_ttl_ms(), -1);
                self.learned.push_back((epoch, HistoryEntry { edge: workload_edge, coarse }));
            }
            self.contacts.update_at((edge.clone(), epoch), epoch + window, volume.negated());
            self.contacts.update_at((edge, epoch), epoch, volume);
        }
        if let Some(&newest) = self.remembered.keys().next_back() {
            let keep_from = newest.saturating_sub(time.history_tick.as_millis() as u64);
            self.remembered.retain(|coarse, _| *coarse >= keep_from);
        }
        updates
    }

    /// Puts the sightings a previous run persisted back into the history, at their own epochs
    /// (the inputs have not advanced yet). The latest two coarse epochs are remembered, so the
    /// replay does not add them again.
    fn restore(&mut self, entries: &[HistoryEntry], time: &TimeConfig) {
        let newest = entries.iter().map(|e| e.coarse).max().unwrap_or(0);
        let keep_from = newest.saturating_sub(time.history_tick.as_millis() as u64);
        for entry in entries {
            let sighting = (entry.edge.clone(), entry.coarse);
            self.history.update_at(sighting.clone(), entry.coarse, 1);
            self.history.update_at(sighting, entry.coarse + time.history_ttl_ms(), -1);
            if entry.coarse >= keep_from {
                self.remembered.entry(entry.coarse).or_default().insert(entry.edge.clone());
            }
        }
    }

    /// Puts the volume ticks a previous run persisted back into the volume history, from when
    /// they settled until they expire (the inputs have not advanced yet).
    fn restore_volumes(&mut self, entries: &[VolumeEntry], time: &TimeConfig) {
        for entry in entries {
            let tick = (entry.entity.clone(), entry.coarse);
            self.volumes.update_at(tick.clone(), settles_at(time, entry.coarse), entry.bytes as isize);
            self.volumes.update_at(tick, expires_at(time, entry.coarse), -(entry.bytes as isize));
        }
    }

    /// Where the dataflow's next slice of event time starts (`run.max_lag`): at the output
    /// frontier while the dataflow works on its input; once it has caught up, at the first held
    /// update when that is later (the time between holds no update, so it costs nothing to
    /// pass). `None`: no slice applies (the output is complete, or it has caught up and nothing
    /// is held: the input may follow the watermark).
    fn slice_start(&self, output: Option<Epoch>) -> Option<Epoch> {
        let output = output?;
        if output < self.time() {
            return Some(output);
        }
        let next_due = [self.contacts.next_due(), self.history.next_due(), self.volumes.next_due()];
        next_due.into_iter().flatten().min().map(|due| due.max(output))
    }

    /// Updates held for later epochs.
    fn scheduled(&self) -> usize {
        self.contacts.held() + self.history.held() + self.volumes.held()
    }

    fn advance_to(&mut self, time: Epoch) {
        self.contacts.advance_to(time);
        self.assets.advance_to(time);
        self.indicators.advance_to(time);
        self.history.advance_to(time);
        self.volumes.advance_to(time);
    }

    fn flush(&mut self) {
        self.contacts.flush();
        self.assets.flush();
        self.indicators.flush();
        self.history.flush();
        self.volumes.flush();
    }
}

/// Runs the pipeline until `shutdown` is set (or, with `run.stop_at_end`, until every partition
/// has been read to its end as of the start and the output has caught up).
pub fn run(config: &Config, shutdown: Arc<AtomicBool>, metrics: Arc<Metrics>) -> anyhow::Result<RunReport> {
    config.validate()?;
    kafka::ensure_topics(&config.kafka, &config.topics)?;
    let partitions = kafka::partition_count(&config.kafka, &config.topics.flows)?;
    let timely_config = timely_config(config)?;
    let registry = config.schema_registry()?;
    if let Some(registry) = &registry {
        // Register (or look up) the output schemas now, so a registry problem stops the start
        // here; the workers then find the ids in the client's cache.
        let alert_format = config.run.alert_format;
        record_encoder::<Alert>(alert_format, &config.topics.alerts, Some(registry))?;
        if !config.topics.service_graph.is_empty() {
            record_encoder::<GraphEdge>(alert_format, &config.topics.service_graph, Some(registry))?;
        }
        tracing::info!(url = registry.url(), "using the schema registry");
    }
    // The graph query API, when enabled; it lives until the cluster has stopped.
    let api = (!config.api.listen.is_empty()).then(|| GraphApi::new(config, metrics.clone()));
    let _api_server = api.clone().map(|api| crate::api::serve(&config.api.listen, api)).transpose()?;
    // The dead-letter topic's size limit, read once: every worker's producer may write dead
    // letters that large, and larger ones are summarised (see `kafka::source`).
    let dead_letter_limit = match config.topics.dead_letter.as_str() {
        "" => None,
        topic => kafka::topic_max_message_bytes(&config.kafka, topic)?,
    };
    let found = Found { partitions, dead_letter_limit };
    let shared = Arc::new((config.clone(), found, metrics.clone(), shutdown, registry, api));
    tracing::info!(
        topic = %config.topics.flows,
        partitions,
        workers = config.run.workers,
        processes = config.run.processes,
        window = ?config.time.window,
        "starting the pipeline"
    );
    let guards = timely::execute(timely_config, move |worker| {
        let (config, found, metrics, shutdown, registry, api) = &*shared;
        run_worker(worker, config, *found, metrics.clone(), shutdown, registry.as_ref(), api.as_ref()).map_err(|e| {
            // A timely cluster is a gang: the other workers of this process stop too, instead of
            // waiting forever for this one's progress.
            shutdown.store(true, Ordering::Relaxed);
            format!("{e:#}")
        })
    })
    .map_err(|e| anyhow::anyhow!("cannot start the timely cluster: {e}"))?;
    let mut total = RunReport::default();
    for result in guards.join() {
        let report = result.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?.map_err(|e| anyhow::anyhow!(e))?;
        total.messages += report.messages;
        total.edge_updates += report.edge_updates;
        total.output_frontier = total.output_frontier.max(report.output_frontier);
        total.first_epoch = match (total.first_epoch, report.first_epoch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.frontier_moves = total.frontier_moves.max(report.frontier_moves);
        total.resumed_at = total.resumed_at.max(report.resumed_at);
    }
    total.summary = metrics.summary();
    let late = total.summary.rejected.get("late").copied().unwrap_or(0);
    let refused: u64 = total.summary.rejected.values().sum();
    tracing::info!(
        messages = total.messages,
        flows_accepted = total.summary.flows_accepted,
        refused,
        late,
        rejected = ?total.summary.rejected,
        dead_lettered = total.summary.dead_lettered,
        alerts = ?total.summary.alerts,
        "pipeline stopped"
    );
    Ok(total)
}

/// Hands the sightings of the flows the output frontier has passed (every one once the output is
/// complete) to the state store; they are learnt in epoch order per poll batch, not across, so
/// the whole queue is looked at.
fn persist_learned(
    store: &mut HistoryStore,
    learned: &mut VecDeque<(Epoch, HistoryEntry)>,
    frontier: Option<Epoch>,
) -> Result<(), crate::kafka::KafkaError> {
    let passed = |epoch: Epoch| frontier.is_none_or(|f| epoch < f);
    if !learned.iter().any(|(epoch, _)| passed(*epoch)) {
        return Ok(());
    }
    let mut waiting = VecDeque::with_capacity(learned.len());
    for (epoch, entry) in learned.drain(..) {
        if passed(epoch) {
            store.remember(&entry)?;
        } else {
            waiting.push_back((epoch, entry));
        }
    }
    *learned = waiting;
    Ok(())
}

/// Hands the volume ticks the dataflow derived since the last call to the state store.
fn persist_volumes(
    store: &mut HistoryStore,
    derived: &RefCell<Vec<VolumeEntry>>,
    time: &TimeConfig,
) -> Result<(), crate::kafka::KafkaError> {
    for entry in derived.borrow_mut().drain(..) {
        store.remember_volume(&entry, expires_at(time, entry.coarse))?;
    }
    Ok(())
}

fn timely_config(config: &Config) -> anyhow::Result<timely::Config> {
    let run = &config.run;
    let communication = if run.processes > 1 {
        let hostfile = run.hostfile.as_ref().context("run.hostfile is required with several processes")?;
        let text =
            std::fs::read_to_string(hostfile).with_context(|| format!("reading hostfile {}", hostfile.display()))?;
        let addresses: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        anyhow::ensure!(
            addresses.len() == run.processes,
            "hostfile {} lists {} addresses for {} processes",
            hostfile.display(),
            addresses.len(),
            run.processes
        );
        CommunicationConfig::Cluster {
            threads: run.workers,
            process: run.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if run.workers > 1 {
        CommunicationConfig::Process(run.workers)
    } else {
        CommunicationConfig::Thread
    };
    Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
}

/// What the process learnt of the brokers at start, once for all its workers.
#[derive(Clone, Copy, Debug)]
struct Found {
    /// Partitions of the flows topic.
    partitions: i32,
    /// The dead-letter topic's `max.message.bytes`, when the brokers say.
    dead_letter_limit: Option<usize>,
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    config: &Config,
    found: Found,
    metrics: Arc<Metrics>,
    shutdown: &AtomicBool,
    registry: Option<&Arc<SchemaRegistry>>,
    api: Option<&Arc<GraphApi>>,
) -> anyhow::Result<RunReport> {
    let index = worker.index();
    let peers = worker.peers();
    let client = client_config(&config.kafka);
    // One producer for everything the worker writes, allowed to write dead letters as large as the
    // dead-letter topic takes (unless `kafka.properties` sets its own limit).
    let Found { partitions, dead_letter_limit } = found;
    let mut producer_client = client.clone();
    if let Some(limit) = dead_letter_limit.filter(|l| *l > kafka::CLIENT_MESSAGE_MAX_BYTES) {
        if client.get("message.max.bytes").is_none() {
            producer_client.set("message.max.bytes", limit.to_string());
        }
    }
    let outbox = Rc::new(Outbox::new(&producer_client)?);
    let adapter = config.adapter(registry)?;
    let share = Share { index, workers: peers, all_partitions: partitions };
    // With the HTTP server, the source reports labelled entities to the page's directory.
    let directory = api.map(|api| api.directory());
    let mut source = FlowSource::open(
        config,
        &client,
        share,
        adapter,
        outbox.clone(),
        metrics.clone(),
        dead_letter_limit,
        directory,
    )?;
    let resume = source.resume();
    // What a previous run persisted (this worker's share of the history, the open alerts), read
    // before any flow.
    let (restored, mut history_store) = if config.topics.state.is_empty() {
        (Restored::default(), None)
    } else {
        let topic = &config.topics.state;
        let restored = state::load(&config.kafka, &client, topic, index, peers, &metrics)?;
        let store = HistoryStore::new(outbox.clone(), topic, config.time.history_ttl_ms(), metrics.clone());
        (restored, Some(store))
    };
    let stopping = Rc::new(Cell::new(false));
    let sink_error = Rc::new(RefCell::new(None));
    let mut alert_sink = RecordSink::new(
        outbox.clone(),
        &config.topics.alerts,
        record_encoder::<Alert>(config.run.alert_format, &config.topics.alerts, registry.map(|r| &**r))?,
        metrics.clone(),
        stopping.clone(),
        sink_error.clone(),
    )?;
    alert_sink.resume_at = resume.resume_at;
    alert_sink.state_topic = config.topics.state.clone();
    let graph_sink = if config.topics.service_graph.is_empty() {
        None
    } else {
        let mut sink = RecordSink::new(
            outbox.clone(),
            &config.topics.service_graph,
            record_encoder::<GraphEdge>(config.run.alert_format, &config.topics.service_graph, registry.map(|r| &**r))?,
            metrics.clone(),
            stopping.clone(),
            sink_error.clone(),
        )?;
        sink.resume_at = resume.resume_at;
        Some(sink)
    };

    // What the other workers announced: the furthest watermark, and who has finished where.
    let announced = Rc::new(Cell::new(0 as Epoch));
    let finished: Rc<RefCell<BTreeMap<usize, Epoch>>> = Rc::new(RefCell::new(BTreeMap::new()));

    let mut topology = config.topology();
    topology.lifecycle.observed_since = resume.observed_since;
    topology.complete_from = resume.complete_from;
    if resume.resume_at > 0 && !config.topics.state.is_empty() {
        let open = Arc::new(restored.open_alerts);
        topology.lifecycle.resumed = Some(ResumedAlerts { at: resume.resume_at, open });
    }
    let derived_volumes: Rc<RefCell<Vec<VolumeEntry>>> = Rc::new(RefCell::new(Vec::new()));
    let dataflow_index = worker.next_dataflow_index();
    let (mut feeds, mut announce_in, probe, graph_trace) = worker.dataflow::<Epoch, _, _>(|scope| {
        use differential_dataflow::input::Input as _;
        let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
        let (assets_in, assets) = scope.new_collection::<AssetRecord, isize>();
        let (indicators_in, indicators) = scope.new_collection::<Indicator, isize>();
        let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
        let (volumes_in, volumes) = scope.new_collection::<(Name, Epoch), isize>();
        let outputs = build(&topology, Inputs { contacts, assets, indicators, history, volumes });
        let graph_trace = outputs.graph.trace.clone();
        // The page's alert board sees every event this worker emits (before the sinks, which
        // hold back the replay of a restart; the board is new with the process and wants it).
        let alerts = match api {
            Some(api) => {
                use timely::dataflow::operators::Inspect as _;
                let api = Arc::clone(api);
                outputs.alerts.inspect_core(move |event| match event {
                    Ok((_, batch)) => api.record_alerts(batch),
                    Err(frontier) => api.alerts_progress(index, frontier.first().copied()),
                })
            }
            None => outputs.alerts,
        };
        let produced = produce(alerts, outputs.graph_changes, Sinks { alerts: alert_sink, graph: graph_sink });
        let (probe, _) = produced.probe();
        // The volume ticks the dataflow derives, for the state topic: the probe covers them, so a
        // commit never passes a tick that has not been handed to the store.
        let derived = derived_volumes.clone();
        outputs
            .volume_records
            .inner
            .inspect(move |((entity, coarse), _, bytes)| {
                if *bytes > 0 {
                    let entry = VolumeEntry { entity: entity.clone(), coarse: *coarse, bytes: *bytes as i64 };
                    derived.borrow_mut().push(entry);
                }
            })
            .probe_with(&probe);

        let (announce_in, announcements) = scope.new_input::<Vec<Announcement>>();
        let (announced, finished) = (announced.clone(), finished.clone());
        announcements.broadcast().sink(Pipeline, "Announcements", move |(input, _)| {
            input.for_each(|_, batch| {
                for a in batch.drain(..) {
                    announced.set(announced.get().max(a.watermark));
                    if let Some(end) = a.finished_at {
                        finished.borrow_mut().insert(a.worker, end);
                    }
                }
            });
        });
        let feeds = Feeds {
            contacts: ScheduledInput::new(contacts_in),
            assets: assets_in,
            indicators: indicators_in,
            history: ScheduledInput::new(history_in),
            volumes: ScheduledInput::new(volumes_in),
            remembered: BTreeMap::new(),
            learned: VecDeque::new(),
        };
        (feeds, announce_in, probe, graph_trace)
    });
    // Only the API keeps a handle on the graph's trace (and so its history within the retention).
    let mut graph_shard: Option<GraphShard> = api.map(|api| api.attach(index, graph_trace, resume.resume_at));

    feeds.restore(&restored.history, &config.time);
    feeds.restore_volumes(&restored.volumes, &config.time);
    if let Some(store) = history_store.as_mut() {
        restored.history.iter().for_each(|entry| store.adopt_loaded(entry));
        for entry in &restored.volumes {
            store.adopt_loaded_volume(entry, expires_at(&config.time, entry.coarse));
        }
    }
    drop((restored.history, restored.volumes));
    let started = Instant::now();
    let mut replaying = resume.resume_at > 0;

    let tick = config.time.tick_ms();
    // The reference topics are read whole by worker 0; the dataflow spreads them by key.
    let mut asset_reader = None;
    let mut indicator_reader = None;
    if index == 0 {
        if !config.topics.assets.is_empty() {
            asset_reader = Some(ReferenceReader::open(
                &config.kafka,
                &client,
                &config.topics.assets,
                reference::asset_record,
                metrics.clone(),
            )?);
        }
        if !config.topics.indicators.is_empty() {
            indicator_reader = Some(ReferenceReader::open(
                &config.kafka,
                &client,
                &config.topics.indicators,
                reference::indicator_record,
                metrics.clone(),
            )?);
        }
    }
    // The inventory and the intel already published apply from the first flow on.
    let within = config.kafka.connect_timeout;
    if let Some(reader) = asset_reader.as_mut() {
        reader.catch_up(within, |asset, diff| feeds.assets.update(asset, diff));
    }
    if let Some(reader) = indicator_reader.as_mut() {
        reader.catch_up(within, |indicator, diff| feeds.indicators.update(indicator, diff));
    }
    let mut batch = EdgeBatch::new();
    let mut report = RunReport { resumed_at: resume.resume_at, ..RunReport::default() };
    let mut announced_finish = false;
    let mut last_frontier = None;
    let max_lag = config.run.max_lag.as_millis() as u64;
    // Whether the input was last advanced less far than the watermark allowed (`run.max_lag`).
    let mut held_back = false;
    // This worker's share of the process's `scheduled_updates` gauge.
    let mut scheduled = 0i64;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            tracing::info!(worker = index, "shutting down");
            break;
        }
        if let Some(error) = sink_error.borrow_mut().take() {
            return Err(error.into());
        }

        let floor = feeds.time();
        // With `run.max_lag`, a backlog is handed to the dataflow one event-time slice at a time:
        // its input runs at most `max_lag` ahead of its output, and the source reads at most
        // `READ_AHEAD_SLICES` slices ahead (a partition further ahead waits), so the output
        // frontier and the commits behind it advance while a backlog is read, and what is held
        // in memory is a few slices, not the backlog.
        let slice_start = feeds.slice_start(probe.with_frontier(|f| f.first().copied()));
        let caught_up = !held_back && !probe.less_than(&floor);
        let limit = ReadLimit::of(slice_start, max_lag.saturating_mul(READ_AHEAD_SLICES), caught_up);
        let mut read = source.poll(&mut batch, floor, limit)?;
        if let Some(reader) = asset_reader.as_mut() {
            read += reader.poll(|asset, diff| feeds.assets.update(asset, diff));
        }
        if let Some(reader) = indicator_reader.as_mut() {
            read += reader.poll(|indicator, diff| feeds.indicators.update(indicator, diff));
        }
        report.messages = source.messages();
        let updates = feeds.window(&mut batch, &config.time);
        report.edge_updates += updates;
        metrics.edge_updates.inc_by(updates);
        if history_store.is_none() {
            feeds.learned.clear();
        }

        // The slice is decided after the batch is held, so a first batch is sliced too.
        let slice_start = feeds.slice_start(probe.with_frontier(|f| f.first().copied()));
        let slice_end = slice_start.filter(|_| max_lag > 0).map_or(Epoch::MAX, |s| s.saturating_add(max_lag));
        let watermark = source.watermark(Instant::now(), announced.get());
        let until = watermark.min(slice_end);
        held_back = until < watermark;
        if until > floor {
            feeds.advance_to(until);
            announce_in.send(Announcement { worker: index, watermark: until, finished_at: None });
            announce_in.advance_to(until);
        }
        feeds.flush();
        let now_scheduled = feeds.scheduled() as i64;
        metrics.scheduled_updates.inc_by(now_scheduled - scheduled);
        scheduled = now_scheduled;
        if let Some(store) = history_store.as_mut() {
            store.expire(feeds.time())?;
        }

        if config.run.stop_at_end && !announced_finish && source.at_end() {
            let end = source.max_epoch().map_or(0, |e| e + tick);
            announce_in.send(Announcement { worker: index, watermark: feeds.time(), finished_at: Some(end) });
            announce_in.flush();
            announced_finish = true;
        }

        if read == 0 {
            worker.step_or_park(Some(Duration::from_millis(20)));
        } else {
            worker.step();
        }

        let frontier = probe.with_frontier(|f| f.first().copied());
        if frontier != last_frontier {
            if let Some(f) = frontier {
                metrics.output_frontier_ms.set(f as i64);
                report.output_frontier = f;
                report.frontier_moves += 1;
            }
            if replaying && frontier.is_none_or(|f| f >= resume.resume_at) {
                replaying = false;
                let took = started.elapsed();
                metrics.restart_replay_ms.set(took.as_millis() as i64);
                tracing::info!(worker = index, resume_at = resume.resume_at, ?took, "replay done: output resumes");
            }
            // The state records of the committed flows are durable with (or before) their offsets.
            if let Some(store) = history_store.as_mut() {
                persist_learned(store, &mut feeds.learned, frontier)?;
                persist_volumes(store, &derived_volumes, &config.time)?;
            }
            source.commit_passed(frontier, CommitMode::Async)?;
            last_frontier = frontier;
        }
        if let Some(shard) = graph_shard.as_mut() {
            shard.serve();
        }

        if config.run.stop_at_end && finished.borrow().len() == peers {
            // Everyone has read everything: close the epochs up to the last record anywhere,
            // then stop without processing the window's retractions beyond it.
            let end = finished.borrow().values().copied().max().unwrap_or(0);
            let slice_start = feeds.slice_start(probe.with_frontier(|f| f.first().copied()));
            let until = slice_start.filter(|_| max_lag > 0).map_or(end, |s| end.min(s.saturating_add(max_lag)));
            if feeds.time() < until {
                feeds.advance_to(until);
                feeds.flush();
                announce_in.advance_to(until);
            }
            if !probe.less_than(&end) {
                break;
            }
        }
    }

    if !config.run.stop_at_end {
        // Let the output catch up with what was read, so that the final checkpoint covers what
        // the sinks produced and a clean restart emits none of it again.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = probe.with_frontier(|f| f.first().copied());
        let mut steady = 0;
        while steady < 10 && Instant::now() < deadline {
            worker.step_or_park(Some(Duration::from_millis(20)));
            let now = probe.with_frontier(|f| f.first().copied());
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
        }
    }
    let frontier = probe.with_frontier(|f| f.first().copied());
    if let Some(store) = history_store.as_mut() {
        persist_learned(store, &mut feeds.learned, frontier)?;
        persist_volumes(store, &derived_volumes, &config.time)?;
    }
    source.commit_passed(frontier, CommitMode::Sync)?;
    if let Some(error) = sink_error.borrow_mut().take() {
        return Err(error.into());
    }
    stopping.set(true);
    drop(graph_shard);
    worker.drop_dataflow(dataflow_index);
    metrics.scheduled_updates.dec_by(scheduled);
    report.first_epoch = source.observed_since();
    tracing::info!(worker = index, messages = report.messages, edge_updates = report.edge_updates, "worker stopped");
    Ok(report)
}
