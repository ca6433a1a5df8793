//! Helpers for the tests beside each dataflow: build edges tersely and run a collection function
//! over a list of timed updates on one worker, returning the consolidated result.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;

use crate::detectors::{DetectorInputs, Indicator};
use crate::entity::Endpoint;
use crate::graph::{Edge, WorkloadEdge};
use crate::schedule::ScheduledInput;
use crate::time::Epoch;
use crate::volume::Volume;

pub fn edge(src: &str, src_workload: Option<&str>, dst: &str, dst_workload: Option<&str>, port: u16) -> Edge {
    Edge { src: Endpoint::new(src, src_workload), dst: Endpoint::new(dst, dst_workload), dst_port: port, protocol: 6 }
}

/// Detector inputs derived from `contacts` alone (no indicators, no history).
pub fn detector_inputs<'s>(contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> DetectorInputs<'s> {
    let edges = contacts.clone().map(|(edge, _)| edge);
    let by_edge = crate::graph::arrange_edges(edges.clone());
    let live = crate::graph::live_edges(by_edge.clone());
    let scope = contacts.scope();
    DetectorInputs {
        first_contacts: crate::graph::first_contacts(crate::graph::service_graph(contacts.clone())),
        members: crate::peers::membership(
            edges.clone(),
            live.clone(),
            &crate::peers::PeerGroupsConfig::labelled_only(),
        ),
        edges,
        live,
        by_edge,
        contacts,
        indicators: differential_dataflow::collection::concatenate(scope, Vec::new()),
        history: differential_dataflow::collection::concatenate(scope, Vec::new()),
        volumes: differential_dataflow::collection::concatenate(scope, Vec::new()),
        time: crate::time::TimeConfig::default(),
    }
}

/// Feeds `updates` (edge, time, flows) as contacts at their time into `logic` and returns the
/// output collection as it is at `until`, consolidated.
pub fn run_collection<D, R, F>(updates: Vec<(Edge, Epoch, isize)>, until: Epoch, logic: F) -> Vec<(D, R)>
where
    D: differential_dataflow::ExchangeData + Send,
    R: differential_dataflow::ExchangeData + Semigroup + Send,
    F: for<'s> FnOnce(VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> VecCollection<'s, Epoch, D, R>
        + Send
        + Sync
        + 'static,
{
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, edges) = scope.new_collection::<(Edge, Epoch), Volume>();
            let (probe, _) = logic(edges).inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
            (input, probe)
        });
        let mut updates = updates;
        updates.sort_by_key(|(_, time, _)| *time);
        for (edge, time, flows) in updates {
            let volume = Volume { flows: flows as i64, bytes_out: 100 * flows as i64, ..Volume::default() };
            input.update_at((edge, time), time, volume);
        }
        input.advance_to(until);
        input.flush();
        worker.step_while(|| probe.less_than(&until));
        let mut state: BTreeMap<D, R> = BTreeMap::new();
        for (datum, time, diff) in seen.borrow().iter() {
            if *time < until {
                match state.get_mut(datum) {
                    Some(acc) => acc.plus_equals(diff),
                    None => {
                        state.insert(datum.clone(), diff.clone());
                    }
                }
            }
        }
        state.into_iter().filter(|(_, r)| !r.is_zero()).collect()
    })
}

/// Feeds `updates` (edge, time, flows) as windowed contacts — in at their time, out `window`
/// later — into `logic`, and returns the output collection as it is at each of `times`.
pub fn run_collection_at<D, R, F>(
    updates: Vec<(Edge, Epoch, isize)>,
    window: Epoch,
    times: Vec<Epoch>,
    logic: F,
) -> Vec<Vec<(D, R)>>
where
    D: differential_dataflow::ExchangeData + Send,
    R: differential_dataflow::ExchangeData + Semigroup + Send,
    F: for<'s> FnOnce(VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> VecCollection<'s, Epoch, D, R>
        + Send
        + Sync
        + 'static,
{
    let until = times.iter().copied().max().unwrap_or(0) + 1;
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let (input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
            let (probe, _) = logic(contacts).inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
            (input, probe)
        });
        let mut input = ScheduledInput::new(input);
        for (edge, time, flows) in updates {
            let volume = Volume { flows: flows as i64, bytes_out: 100 * flows as i64, ..Volume::default() };
            input.update_at((edge.clone(), time), time, volume);
            input.update_at((edge, time), time + window, volume.negated());
        }
        input.advance_to(until);
        input.flush();
        worker.step_while(|| probe.less_than(&until));
        let seen = seen.borrow();
        times
            .iter()
            .map(|&at| {
                let mut state: BTreeMap<D, R> = BTreeMap::new();
                for (datum, time, diff) in seen.iter().filter(|(_, time, _)| *time <= at) {
                    let _ = time;
                    match state.get_mut(datum) {
                        Some(acc) => acc.plus_equals(diff),
                        None => {
                            state.insert(datum.clone(), diff.clone());
                        }
                    }
                }
                state.into_iter().filter(|(_, r)| !r.is_zero()).collect()
            })
            .collect()
    })
}
/// A stream of inputs for a detector, fed the way the pipeline feeds them: each contact enters at
/// its epoch and leaves one window later; each workload edge enters the history once per coarse
/// epoch (its epoch rounded up to `history_tick`) and leaves `history_ttl` later.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    /// Window length, in epochs (tests use a tick of 1).
    pub window: Epoch,
    pub history_tick: Epoch,
    pub history_ttl: Epoch,
    /// `(edge, epoch, volume)`: the flows of one edge in one epoch, pre-aggregated.
    pub contacts: Vec<(Edge, Epoch, Volume)>,
    /// `(indicator, time, ±1)`.
    pub indicators: Vec<(Indicator, Epoch, isize)>,
    /// Whether to derive the history from the contacts (otherwise it stays empty).
    pub with_history: bool,
}

impl Scenario {
    pub fn new(window: Epoch) -> Self {
        Scenario { window, history_tick: 1, history_ttl: Epoch::MAX / 4, ..Scenario::default() }
    }

    /// The time configuration the scenario stands for (a tick of 1 ms).
    pub fn time(&self) -> crate::time::TimeConfig {
        use std::time::Duration;
        crate::time::TimeConfig {
            tick: Duration::from_millis(1),
            window: Duration::from_millis(self.window),
            history_tick: Duration::from_millis(self.history_tick.max(1)),
            history_ttl: Duration::from_millis(self.history_ttl),
            ..crate::time::TimeConfig::default()
        }
    }

    pub fn coarse(&self, epoch: Epoch) -> Epoch {
        epoch.div_ceil(self.history_tick.max(1)) * self.history_tick.max(1)
    }

    /// The history updates the pipeline would feed: `((workload edge, coarse), time, ±1)`.
    pub fn history_updates(&self) -> Vec<((WorkloadEdge, Epoch), Epoch, isize)> {
        let mut seen = std::collections::BTreeSet::new();
        let mut updates = Vec::new();
        for (edge, epoch, _) in &self.contacts {
            let coarse = self.coarse(*epoch);
            if seen.insert((WorkloadEdge::from(edge), coarse)) {
                updates.push(((WorkloadEdge::from(edge), coarse), coarse, 1));
                updates.push(((WorkloadEdge::from(edge), coarse), coarse.saturating_add(self.history_ttl), -1));
            }
        }
        updates
    }

    /// The oracle's view of the window at `at`: every `(edge, epoch)` with its summed volume.
    pub fn contacts_at(&self, at: Epoch) -> BTreeMap<(Edge, Epoch), Volume> {
        let mut window: BTreeMap<(Edge, Epoch), Volume> = BTreeMap::new();
        for (edge, epoch, volume) in &self.contacts {
            if *epoch <= at && at < epoch + self.window {
                window.entry((edge.clone(), *epoch)).or_default().plus_equals(volume);
            }
        }
        window.retain(|_, v| !v.is_zero());
        window
    }

    /// The oracle's view of the windowed entity-level graph at `at`.
    pub fn edges_at(&self, at: Epoch) -> BTreeMap<Edge, Volume> {
        let mut edges: BTreeMap<Edge, Volume> = BTreeMap::new();
        for ((edge, _), volume) in self.contacts_at(at) {
            edges.entry(edge).or_default().plus_equals(&volume);
        }
        edges.retain(|_, v| !v.is_zero());
        edges
    }

    /// The oracle's view of peer groups at `at`: `entity → groups`.
    pub fn members_at(&self, at: Epoch) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut members: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for edge in self.edges_at(at).keys() {
            for end in [&edge.src, &edge.dst] {
                if let Some(group) = end.peer_group() {
                    members.entry(end.entity.to_string()).or_default().insert(group.to_string());
                }
            }
        }
        members
    }

    /// The oracle's view of the history at `at`: every `(workload edge, coarse epoch)` present.
    pub fn history_at(&self, at: Epoch) -> std::collections::BTreeSet<(WorkloadEdge, Epoch)> {
        if !self.with_history {
            return Default::default();
        }
        let mut history: BTreeMap<(WorkloadEdge, Epoch), isize> = BTreeMap::new();
        for (record, time, diff) in self.history_updates() {
            if time <= at {
                *history.entry(record).or_default() += diff;
            }
        }
        history.into_iter().filter(|(_, n)| *n > 0).map(|(record, _)| record).collect()
    }

    /// The oracle's view of the indicators listed at `at`.
    pub fn indicators_at(&self, at: Epoch) -> Vec<Indicator> {
        let mut listed: BTreeMap<Indicator, isize> = BTreeMap::new();
        for (indicator, time, diff) in &self.indicators {
            if *time <= at {
                *listed.entry(indicator.clone()).or_default() += diff;
            }
        }
        listed.into_iter().filter(|(_, n)| *n > 0).map(|(indicator, _)| indicator).collect()
    }
}

/// Runs `logic` over the scenario's inputs, one epoch at a time as the pipeline does, and returns
/// the output collection as it is at every epoch in `1..=until`, consolidated (records with a
/// non-zero multiplicity, sorted).
pub fn run_scenario<D, F>(scenario: &Scenario, until: Epoch, logic: F) -> BTreeMap<Epoch, Vec<(D, isize)>>
where
    D: differential_dataflow::ExchangeData + Send,
    F: for<'s> FnOnce(DetectorInputs<'s>) -> VecCollection<'s, Epoch, D> + Send + Sync + 'static,
{
    let scenario = scenario.clone();
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let (mut contacts, mut indicators, mut history, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
            let (indicators_in, indicators) = scope.new_collection::<Indicator, isize>();
            let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
            let edges = contacts.clone().map(|(edge, _)| edge);
            let by_edge = crate::graph::arrange_edges(edges.clone());
            let live = crate::graph::live_edges(by_edge.clone());
            let time = scenario.time();
            let volumes = if scenario.with_history {
                crate::volume_history::volume_history(contacts.clone(), history.scope().new_collection().1, &time, 0).0
            } else {
                differential_dataflow::collection::concatenate(scope, Vec::new())
            };
            let inputs = DetectorInputs {
                first_contacts: crate::graph::first_contacts(crate::graph::service_graph(contacts.clone())),
                members: crate::peers::membership(
                    edges.clone(),
                    live.clone(),
                    &crate::peers::PeerGroupsConfig::labelled_only(),
                ),
                edges,
                live,
                by_edge,
                contacts,
                indicators,
                history,
                volumes,
                time,
            };
            let (probe, _) = logic(inputs).inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
            (ScheduledInput::new(contacts_in), indicators_in, ScheduledInput::new(history_in), probe)
        });
        // Every update with the time it is fed at (its own time: the future retractions are
        // scheduled, as the pipeline schedules them, when their record enters).
        type Fed = (Vec<(Edge, Epoch, Volume)>, Vec<(Indicator, isize)>);
        let mut by_time: BTreeMap<Epoch, Fed> = BTreeMap::new();
        for (edge, epoch, volume) in &scenario.contacts {
            by_time.entry(*epoch).or_default().0.push((edge.clone(), *epoch, *volume));
        }
        for (indicator, time, diff) in &scenario.indicators {
            by_time.entry(*time).or_default().1.push((indicator.clone(), *diff));
        }
        let history_updates = if scenario.with_history { scenario.history_updates() } else { Vec::new() };
        type HistoryUpdate = ((WorkloadEdge, Epoch), Epoch, isize);
        let mut history_by_time: BTreeMap<Epoch, Vec<HistoryUpdate>> = BTreeMap::new();
        for (record, time, diff) in history_updates {
            // The pipeline feeds a history record when its first contact arrives.
            let fed_at = scenario
                .contacts
                .iter()
                .filter(|(edge, epoch, _)| WorkloadEdge::from(edge) == record.0 && scenario.coarse(*epoch) == record.1)
                .map(|(_, epoch, _)| *epoch)
                .min()
                .unwrap_or(time);
            history_by_time.entry(fed_at).or_default().push((record, time, diff));
        }
        let times: std::collections::BTreeSet<Epoch> =
            by_time.keys().chain(history_by_time.keys()).copied().filter(|t| *t <= until).collect();
        for time in times {
            contacts.advance_to(time);
            indicators.advance_to(time);
            history.advance_to(time);
            if let Some((new_contacts, new_indicators)) = by_time.remove(&time) {
                for (edge, epoch, volume) in new_contacts {
                    contacts.update_at((edge.clone(), epoch), epoch + scenario.window, volume.negated());
                    contacts.update_at((edge, epoch), epoch, volume);
                }
                for (indicator, diff) in new_indicators {
                    indicators.update_at(indicator, time, diff);
                }
            }
            for (record, at, diff) in history_by_time.remove(&time).unwrap_or_default() {
                history.update_at(record, at, diff);
            }
            contacts.flush();
            indicators.flush();
            history.flush();
            worker.step_while(|| probe.less_than(&time));
        }
        contacts.advance_to(until + 1);
        indicators.advance_to(until + 1);
        history.advance_to(until + 1);
        contacts.flush();
        indicators.flush();
        history.flush();
        worker.step_while(|| probe.less_than(&(until + 1)));
        let updates = seen.borrow();
        let mut snapshots = BTreeMap::new();
        let mut state: BTreeMap<D, isize> = BTreeMap::new();
        let mut sorted: Vec<_> = updates.iter().cloned().collect();
        sorted.sort_by_key(|(_, time, _)| *time);
        let mut next = sorted.into_iter().peekable();
        for at in 1..=until {
            while let Some((datum, _, diff)) = next.next_if(|(_, time, _)| *time <= at) {
                *state.entry(datum).or_default() += diff;
            }
            state.retain(|_, n| *n != 0);
            snapshots.insert(at, state.iter().map(|(d, n)| (d.clone(), *n)).collect());
        }
        snapshots
    })
}

/// A pre-aggregated volume: `flows` flows of which `failed` failed, with bytes each way.
pub fn vol(flows: i64, failed: i64, bytes_out: i64, bytes_in: i64) -> Volume {
    Volume { flows, failed, bytes_out, bytes_in, packets_out: flows, packets_in: flows - failed }
}

/// The findings of a snapshot, checked to be a set (every multiplicity 1).
pub fn as_set<D: Clone + Ord + std::fmt::Debug>(snapshot: &[(D, isize)]) -> Vec<D> {
    assert!(snapshot.iter().all(|(_, n)| *n == 1), "multiplicities other than 1: {snapshot:?}");
    snapshot.iter().map(|(d, _)| d.clone()).collect()
}
