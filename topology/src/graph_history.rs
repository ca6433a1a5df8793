//! The service graph as it was at a past time. The graph is arranged once (shared by whoever
//! joins against it and by the changelog); a [`GraphHistory`] keeps a handle on that trace and
//! holds its logical compaction back by a retention period, so the graph at any closed epoch
//! within the retention can be read exactly: the sum of every update at a time up to T.

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::VecCollection;
use peergraph_schemas::EdgeLevel;
use timely::progress::Antichain;

use crate::graph::{EdgeState, GraphKey};
use crate::name::Name;
use crate::time::Epoch;

/// The trace of the arranged service graph: `GraphKey → EdgeState`, one shard per worker.
pub type GraphTrace = TraceAgent<ValSpine<GraphKey, EdgeState, Epoch, isize>>;

/// The service graph arranged by edge, for sharing between dataflows and for reads as of a time.
pub type GraphArrangement<'s> = Arranged<'s, GraphTrace>;

/// Arranges the graph by edge key, once, for everyone who reads it. `service_graph`'s reduce keeps
/// an output trace of the same shape, but holding *that* trace's compaction back would make the
/// reduce re-read every retained change of an edge each time the edge changes; this separate
/// arrangement keeps the history away from the reduce, at the cost of one more copy of the
/// current graph.
pub fn arrange_graph<'s>(graph: VecCollection<'s, Epoch, (GraphKey, EdgeState)>) -> GraphArrangement<'s> {
    graph.arrange_by_key_named("ServiceGraph")
}

/// The arranged graph as a plain collection of `(edge, state)` updates.
pub fn graph_updates<'s>(graph: GraphArrangement<'s>) -> VecCollection<'s, Epoch, (GraphKey, EdgeState)> {
    graph.as_collection(|key, state| (key.clone(), state.clone()))
}

/// Which edges of the graph a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphFilter {
    /// Entity-level or workload-level edges.
    pub level: EdgeLevel,
    /// Only edges with this entity or workload id at either end.
    pub node: Option<String>,
    /// Only edges with an end in this Kubernetes namespace (pods and workloads carry one).
    pub namespace: Option<String>,
}

impl GraphFilter {
    /// Every edge at `level`.
    pub fn level(level: EdgeLevel) -> Self {
        GraphFilter { level, node: None, namespace: None }
    }

    pub fn matches(&self, key: &GraphKey) -> bool {
        let (level, src, dst, _, _) = key;
        *level == self.level
            && self.node.as_ref().is_none_or(|node| src == node || dst == node)
            && self.namespace.as_deref().is_none_or(|ns| namespace_of(src) == Some(ns) || namespace_of(dst) == Some(ns))
    }
}

/// The namespace of a pod (`pod:<ns>/<pod>`) or workload (`workload:<ns>/...`) id; hosts and
/// external addresses have none.
pub fn namespace_of(node: &str) -> Option<&str> {
    let rest = node.strip_prefix("pod:").or_else(|| node.strip_prefix("workload:"))?;
    rest.split_once('/').map(|(ns, _)| ns)
}

/// Why the graph cannot be read at a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsOfError {
    /// The time is not closed yet: updates for it may still arrive.
    #[error("the graph at {at} ms is not final yet: the latest closed epoch is {}", latest.map_or("none (no epoch closed yet)".to_owned(), |l| format!("{l} ms")))]
    NotClosed { at: Epoch, latest: Option<Epoch> },
    /// The time is older than the retention: the trace has compacted it away.
    #[error("the graph at {at} ms is older than the retention (time.graph_retention = {retention_ms} ms): the oldest time held is {oldest} ms")]
    Expired { at: Epoch, oldest: Epoch, retention_ms: u64 },
}

/// A worker's handle on its shard of the arranged graph. It holds the trace's logical compaction
/// at (latest closed epoch − retention), so reads at any closed time within the retention are
/// exact, and lets physical compaction (batch merging) follow the trace's upper frontier.
///
/// Memory: the trace keeps every change of every edge within the retention (an edge whose volume
/// changes every tick keeps two updates per tick), instead of one update per live edge.
pub struct GraphHistory {
    trace: GraphTrace,
    retention_ms: u64,
    tick_ms: u64,
    upper: Antichain<Epoch>,
    latest: Option<Epoch>,
}

impl GraphHistory {
    /// Takes `trace` (a clone of the arrangement's handle), keeping `retention_ms` of history in
    /// epochs of `tick_ms`.
    pub fn new(trace: GraphTrace, retention_ms: u64, tick_ms: u64) -> Self {
        GraphHistory { trace, retention_ms, tick_ms: tick_ms.max(1), upper: Antichain::new(), latest: None }
    }

    /// Follows the trace's progress: the latest closed epoch moves up with the upper frontier and
    /// compaction is allowed up to the retention behind it. Call between worker steps.
    pub fn maintain(&mut self) {
        self.trace.read_upper(&mut self.upper);
        // An empty upper means the input has ended; the last finite one stays the latest.
        let Some(&upper) = self.upper.as_option() else { return };
        if upper == 0 {
            return;
        }
        let latest = (upper - 1) / self.tick_ms * self.tick_ms;
        if self.latest == Some(latest) {
            return;
        }
        self.latest = Some(latest);
        self.trace.set_physical_compaction(self.upper.borrow());
        let since = Antichain::from_elem(latest.saturating_sub(self.retention_ms));
        self.trace.set_logical_compaction(since.borrow());
    }

    /// The latest epoch whose graph is final on this shard, if any.
    pub fn latest(&self) -> Option<Epoch> {
        self.latest
    }

    /// The oldest time whose graph can still be read exactly.
    pub fn oldest(&mut self) -> Epoch {
        self.trace.get_logical_compaction().first().copied().unwrap_or(0)
    }

    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
    }

    /// The epoch a read at `at` ms answers for: `at` rounded down to the tick.
    pub fn epoch_at(&self, at: u64) -> Epoch {
        at / self.tick_ms * self.tick_ms
    }

    /// This shard's edges as they were at `at` (ms, rounded down to the tick), filtered. Refused
    /// for a time not yet closed or older than the retention.
    pub fn read(&mut self, at: u64, filter: &GraphFilter) -> Result<Vec<(GraphKey, EdgeState)>, AsOfError> {
        let at = self.readable(at)?;
        Ok(read_at(&mut self.trace, at, filter))
    }

    /// How this shard's edges changed from `from` to `to` (ms, each rounded down to the tick),
    /// filtered, in one walk of the trace. Refused as [`GraphHistory::read`] refuses either time.
    pub fn diff(&mut self, from: u64, to: u64, filter: &GraphFilter) -> Result<GraphDiff, AsOfError> {
        let (from, to) = (self.readable(from)?, self.readable(to)?);
        Ok(diff_between(&mut self.trace, from, to, filter))
    }

    /// The epoch a read at `at` answers for, if it is closed and within the retention.
    fn readable(&mut self, at: u64) -> Result<Epoch, AsOfError> {
        let at = self.epoch_at(at);
        match self.latest {
            Some(latest) if at <= latest => {}
            latest => return Err(AsOfError::NotClosed { at, latest }),
        }
        let oldest = self.oldest();
        if at < oldest {
            return Err(AsOfError::Expired { at, oldest, retention_ms: self.retention_ms });
        }
        Ok(at)
    }

    /// The updates this shard's trace holds: one per live edge, plus every change of every edge
    /// within the retention. Walks the whole trace; for measurements, not for hot paths.
    pub fn held_updates(&mut self) -> usize {
        let Some(batches) = self.trace.batches_through(Antichain::new().borrow()) else { return 0 };
        let (mut cursor, storage) = cursor_list(batches);
        let mut held = 0;
        while cursor.key_valid(&storage) {
            while cursor.val_valid(&storage) {
                cursor.map_times(&storage, |_, _| held += 1);
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        held
    }
}

/// Accumulates the trace's updates at times up to `at` into the edges present then. Exact only
/// for `at` at or beyond the trace's logical compaction frontier and before its upper.
pub fn read_at(trace: &mut GraphTrace, at: Epoch, filter: &GraphFilter) -> Vec<(GraphKey, EdgeState)> {
    let mut edges = Vec::new();
    for_each_state(trace, filter, [at], |key, state, [count]| {
        if count > 0 {
            edges.push((key.clone(), state.clone()));
        }
    });
    edges
}

/// How the graph changed between two closed times: what the page's comparison shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphDiff {
    /// Edges present at `to` and not at `from`, with their state at `to`.
    pub added: Vec<(GraphKey, EdgeState)>,
    /// Edges present at `from` and gone at `to`, with their state at `from`.
    pub removed: Vec<(GraphKey, EdgeState)>,
    /// Edges present at both whose windowed volume differs: `(key, state at from, state at to)`.
    pub changed: Vec<(GraphKey, EdgeState, EdgeState)>,
}

impl GraphDiff {
    /// Adds another shard's diff (shards hold disjoint edges) and keeps each list sorted.
    pub fn merge(&mut self, other: GraphDiff) {
        self.added.extend(other.added);
        self.removed.extend(other.removed);
        self.changed.extend(other.changed);
        self.added.sort();
        self.removed.sort();
        self.changed.sort();
    }
}

/// The graph's changes from `from` to `to`, read in one walk of the trace (each edge's states
/// accumulated at both times at once). Exact under the same conditions as [`read_at`].
pub fn diff_between(trace: &mut GraphTrace, from: Epoch, to: Epoch, filter: &GraphFilter) -> GraphDiff {
    let mut diff = GraphDiff::default();
    // An edge has one state at each time: its states come in value order, so hold the key's two.
    let mut current: Option<(GraphKey, Option<EdgeState>, Option<EdgeState>)> = None;
    fn settle(held: Option<(GraphKey, Option<EdgeState>, Option<EdgeState>)>, diff: &mut GraphDiff) {
        match held {
            Some((key, None, Some(now))) => diff.added.push((key, now)),
            Some((key, Some(then), None)) => diff.removed.push((key, then)),
            Some((key, Some(then), Some(now))) if then.volume != now.volume => diff.changed.push((key, then, now)),
            _ => {}
        }
    }
    for_each_state(trace, filter, [from, to], |key, state, [then, now]| {
        if current.as_ref().is_none_or(|(held, _, _)| held != key) {
            settle(current.replace((key.clone(), None, None)), &mut diff);
        }
        let (_, at_from, at_to) = current.as_mut().expect("set above");
        if then > 0 {
            *at_from = Some(state.clone());
        }
        if now > 0 {
            *at_to = Some(state.clone());
        }
    });
    settle(current, &mut diff);
    diff
}

/// Calls `f` with every `(edge, state)` of the filtered level and its accumulated count at each
/// of `times` (updates at times up to it), in key order.
fn for_each_state<const N: usize>(
    trace: &mut GraphTrace,
    filter: &GraphFilter,
    times: [Epoch; N],
    mut f: impl FnMut(&GraphKey, &EdgeState, [isize; N]),
) {
    let Some(batches) = trace.batches_through(Antichain::new().borrow()) else { return };
    let (mut cursor, storage) = cursor_list(batches);
    // Keys sort by level first: start at the level's first key and stop after its last.
    let first: GraphKey = (filter.level, Name::least(), Name::least(), 0, 0);
    cursor.seek_key(&storage, &first);
    while let Some(key) = cursor.get_key(&storage) {
        if key.0 != filter.level {
            break;
        }
        if filter.matches(key) {
            while let Some(state) = cursor.get_val(&storage) {
                let mut counts = [0isize; N];
                cursor.map_times(&storage, |time, diff| {
                    for (count, at) in counts.iter_mut().zip(times) {
                        if *time <= at {
                            *count += *diff;
                        }
                    }
                });
                f(key, state, counts);
                cursor.step_val(&storage);
            }
        }
        cursor.step_key(&storage);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use differential_dataflow::difference::Semigroup;
    use differential_dataflow::input::Input;
    use proptest::prelude::*;
    use timely::dataflow::operators::Probe;

    use super::*;
    use crate::graph::{service_graph, Edge, WorkloadEdge};
    use crate::testing::{edge, vol, Scenario};
    use crate::volume::Volume;

    /// The plain version: the window ending at `at`, recomputed from the scenario's contacts.
    fn oracle(scenario: &Scenario, at: Epoch, filter: &GraphFilter) -> Vec<(GraphKey, EdgeState)> {
        let mut graph: BTreeMap<GraphKey, EdgeState> = BTreeMap::new();
        for ((edge, epoch), volume) in scenario.contacts_at(at) {
            let workload = WorkloadEdge::from(&edge);
            let keys = [
                (EdgeLevel::Entity, edge.src.entity, edge.dst.entity, edge.dst_port, edge.protocol),
                (EdgeLevel::Workload, workload.src, workload.dst, workload.dst_port, workload.protocol),
            ];
            for key in keys {
                let state = graph.entry(key).or_insert(EdgeState {
                    volume: Volume::default(),
                    first_seen: epoch,
                    last_seen: epoch,
                });
                state.volume.plus_equals(&volume);
                state.first_seen = state.first_seen.min(epoch);
                state.last_seen = state.last_seen.max(epoch);
            }
        }
        graph.into_iter().filter(|(key, _)| filter.matches(key)).collect()
    }

    /// What a query saw: `(at, filter, answer)`.
    type Read = (Epoch, GraphFilter, Result<Vec<(GraphKey, EdgeState)>, AsOfError>);

    /// Runs the graph over the scenario epoch by epoch, as the pipeline does, on `workers` workers,
    /// with a [`GraphHistory`] of `retention` epochs per worker. After the epoch `asked_at`, each
    /// query `(asked_at, q)` is answered on every worker by `answer`: one list of answers per worker.
    fn run_queries<Q, A>(
        scenario: &Scenario,
        until: Epoch,
        retention: Epoch,
        workers: usize,
        queries: Vec<(Epoch, Q)>,
        answer: fn(&mut GraphHistory, &Q) -> A,
    ) -> Vec<Vec<A>>
    where
        Q: Clone + Send + Sync + 'static,
        A: Send + 'static,
    {
        let scenario = scenario.clone();
        let per_worker = timely::execute(timely::Config::process(workers), move |worker| {
            let (mut contacts, probe, trace) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let graph = arrange_graph(service_graph(contacts));
                let (probe, _) = graph.stream.clone().probe();
                (input, probe, graph.trace)
            });
            let mut history = GraphHistory::new(trace, retention, 1);
            let mut answers = Vec::new();
            for time in 1..=until {
                contacts.advance_to(time);
                if worker.index() == 0 {
                    for (edge, epoch, volume) in scenario.contacts.iter().filter(|(_, epoch, _)| *epoch == time) {
                        contacts.update_at((edge.clone(), *epoch), epoch + scenario.window, volume.negated());
                        contacts.update_at((edge.clone(), *epoch), *epoch, *volume);
                    }
                }
                contacts.advance_to(time + 1);
                contacts.flush();
                worker.step_while(|| probe.less_than(&(time + 1)));
                history.maintain();
                for (_, query) in queries.iter().filter(|(asked_at, _)| *asked_at == time) {
                    answers.push(answer(&mut history, query));
                }
            }
            answers
        })
        .expect("timely runs")
        .join();
        per_worker.into_iter().map(|r| r.expect("worker finishes")).collect()
    }

    /// Each query `(asked_at, at, filter)` read on every worker, the shards' answers merged.
    fn run(
        scenario: &Scenario,
        until: Epoch,
        retention: Epoch,
        workers: usize,
        queries: Vec<(Epoch, Epoch, GraphFilter)>,
    ) -> Vec<Read> {
        let queries = queries.into_iter().map(|(asked_at, at, filter)| (asked_at, (at, filter))).collect();
        let read: fn(&mut GraphHistory, &(Epoch, GraphFilter)) -> Read =
            |history, (at, filter)| (*at, filter.clone(), history.read(*at, filter));
        let mut shards = run_queries(scenario, until, retention, workers, queries, read).into_iter();
        let mut merged = shards.next().unwrap_or_default();
        for shard in shards {
            for (read, other) in merged.iter_mut().zip(shard) {
                match (&mut read.2, other.2) {
                    (Ok(edges), Ok(more)) => edges.extend(more),
                    (Ok(_), Err(e)) => read.2 = Err(e),
                    (Err(_), _) => {}
                }
            }
        }
        for read in &mut merged {
            if let Ok(edges) = &mut read.2 {
                edges.sort();
            }
        }
        merged
    }

    /// The diff from two plain recounts of the window.
    fn diff_oracle(scenario: &Scenario, from: Epoch, to: Epoch, filter: &GraphFilter) -> GraphDiff {
        let then: BTreeMap<GraphKey, EdgeState> = oracle(scenario, from, filter).into_iter().collect();
        let now: BTreeMap<GraphKey, EdgeState> = oracle(scenario, to, filter).into_iter().collect();
        let mut diff = GraphDiff::default();
        for (key, state) in &now {
            match then.get(key) {
                None => diff.added.push((key.clone(), state.clone())),
                Some(old) if old.volume != state.volume => diff.changed.push((key.clone(), old.clone(), state.clone())),
                Some(_) => {}
            }
        }
        diff.removed = then.into_iter().filter(|(key, _)| !now.contains_key(key)).collect();
        diff
    }

    fn contact() -> impl Strategy<Value = (Edge, Epoch, Volume)> {
        (0..4usize, 0..3usize, prop::sample::select(vec![80u16, 443, 5432]), 1..40u64, 1..4i64, 0..500i64).prop_map(
            |(src, dst, port, epoch, flows, bytes)| {
                let workload = format!("workload:ns{}/Deployment/web", src % 2);
                let src = format!("pod:ns{}/web-{src}", src % 2);
                let dst = format!("host:10.0.1.{dst}");
                (edge(&src, Some(&workload), &dst, None, port), epoch, vol(flows, 0, bytes, bytes / 2))
            },
        )
    }

    fn filters() -> impl Strategy<Value = GraphFilter> {
        (
            prop::sample::select(vec![EdgeLevel::Entity, EdgeLevel::Workload]),
            prop::option::of(prop::sample::select(vec![
                "pod:ns0/web-0".to_owned(),
                "host:10.0.1.1".to_owned(),
                "workload:ns1/Deployment/web".to_owned(),
            ])),
            prop::option::of(prop::sample::select(vec!["ns0".to_owned(), "ns1".to_owned()])),
        )
            .prop_map(|(level, node, namespace)| GraphFilter { level, node, namespace })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn reads_within_the_retention_match_a_recount_of_the_window_then(
            contacts in prop::collection::vec(contact(), 0..80),
            asked in prop::collection::vec((12..48u64, 0..=10u64, filters()), 1..12),
            workers in 1..3usize,
        ) {
            let mut scenario = Scenario::new(5);
            scenario.contacts = contacts;
            let retention = 10;
            // Each query is asked after epoch `asked_at`, about a time up to `retention` before it.
            let queries: Vec<_> = asked.into_iter().map(|(asked_at, back, filter)| (asked_at, asked_at - back, filter)).collect();
            let reads = run(&scenario, 48, retention, workers, queries);
            for (at, filter, read) in reads {
                let read = read.map_err(|e| e.to_string());
                prop_assert_eq!(read, Ok(oracle(&scenario, at, &filter)), "at epoch {} with {:?}", at, filter);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn a_diff_between_two_times_matches_two_recounts(
            contacts in prop::collection::vec(contact(), 0..80),
            asked in prop::collection::vec((12..48u64, 0..=10u64, 0..=10u64, filters()), 1..8),
            workers in 1..3usize,
        ) {
            let mut scenario = Scenario::new(5);
            scenario.contacts = contacts;
            let mut queries: Vec<_> = asked
                .into_iter()
                .map(|(asked_at, a, b, filter)| (asked_at, (asked_at - a.max(b), asked_at - a.min(b), filter)))
                .collect();
            // Answered as the epochs pass: in the order they are asked.
            queries.sort_by_key(|(asked_at, _)| *asked_at);
            let diff: fn(&mut GraphHistory, &(Epoch, Epoch, GraphFilter)) -> Result<GraphDiff, AsOfError> =
                |history, (from, to, filter)| history.diff(*from, *to, filter);
            let shards = run_queries(&scenario, 48, 10, workers, queries.clone(), diff);
            for (i, (_, (from, to, filter))) in queries.iter().enumerate() {
                let mut merged = GraphDiff::default();
                for shard in &shards {
                    merged.merge(shard[i].clone().expect("within the retention"));
                }
                prop_assert_eq!(&merged, &diff_oracle(&scenario, *from, *to, filter), "{} → {} with {:?}", from, to, filter);
            }
        }
    }

    #[test]
    fn reads_older_than_the_retention_or_not_yet_closed_are_refused() {
        let mut scenario = Scenario::new(5);
        for epoch in 1..30 {
            let e = edge("pod:shop/web-1", Some("workload:shop/Deployment/web"), "host:10.0.0.9", None, 5432);
            scenario.contacts.push((e, epoch, vol(1, 0, 100, 10)));
        }
        let all = GraphFilter::level(EdgeLevel::Entity);
        let queries = vec![(30, 19, all.clone()), (30, 20, all.clone()), (30, 31, all.clone())];
        let reads = run(&scenario, 30, 10, 1, queries);
        assert_eq!(reads[0].2, Err(AsOfError::Expired { at: 19, oldest: 20, retention_ms: 10 }));
        let message = reads[0].2.as_ref().unwrap_err().to_string();
        assert!(message.contains("older than the retention (time.graph_retention = 10 ms)"), "{message}");
        assert_eq!(reads[1].2, Ok(oracle(&scenario, 20, &all)));
        assert_eq!(reads[1].2.as_ref().map(Vec::len), Ok(1));
        assert_eq!(reads[2].2, Err(AsOfError::NotClosed { at: 31, latest: Some(30) }));
    }

    #[test]
    fn filters_pick_a_level_a_node_and_a_namespace() {
        let key = |src: &str, dst: &str| (EdgeLevel::Entity, Name::new(src), Name::new(dst), 443, 6);
        let filter = GraphFilter {
            level: EdgeLevel::Entity,
            node: Some("host:10.0.0.9".into()),
            namespace: Some("shop".into()),
        };
        assert!(filter.matches(&key("pod:shop/web-1", "host:10.0.0.9")));
        assert!(!filter.matches(&key("pod:bank/web-1", "host:10.0.0.9")));
        assert!(!filter.matches(&key("pod:shop/web-1", "host:10.0.0.8")));
        assert!(!GraphFilter::level(EdgeLevel::Workload).matches(&key("a", "b")));
        assert_eq!(namespace_of("workload:shop/Deployment/web"), Some("shop"));
        assert_eq!(namespace_of("host:10.0.0.9"), None);
    }
}
