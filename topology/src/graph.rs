//! The service graph. Flows enter the dataflow as updates to entity-level edges: a flow adds its
//! [`Volume`] to its edge at its epoch and takes it away at epoch + window, so the collection of
//! edges, consolidated, *is* the windowed entity-level graph. The workload-level graph is a map.

use std::collections::{BTreeMap, HashMap};

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::{Hashable, VecCollection};
use peergraph_schemas::{EdgeLevel, GraphEdge};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::entity::Endpoint;
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// Who talked to whom, on which service, at entity level.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
}

/// An edge between workloads (or entities that belong to none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadEdge {
    pub src: Name,
    pub dst: Name,
    pub dst_port: u16,
    pub protocol: u8,
}

impl From<&Edge> for WorkloadEdge {
    fn from(edge: &Edge) -> WorkloadEdge {
        WorkloadEdge {
            src: edge.src.node().clone(),
            dst: edge.dst.node().clone(),
            dst_port: edge.dst_port,
            protocol: edge.protocol,
        }
    }
}

/// The windowed entity-level edges arranged by edge, each with its volume in the window as the
/// difference: the one arrangement of every contact's edge, shared by [`live_edges`] and by the
/// joins that need an edge's volume (threat intel).
pub type EdgeArrangement<'s> = Arranged<'s, TraceAgent<KeySpine<Edge, Epoch, Volume>>>;

/// Arranges the windowed entity-level edges by edge, once.
pub fn arrange_edges<'s>(edges: VecCollection<'s, Epoch, Edge, Volume>) -> EdgeArrangement<'s> {
    edges.arrange_by_self_named("Edges")
}

/// The entity edges present in the window, each once: +1 when its first flow enters the window,
/// −1 when its last one leaves. It changes only when an edge appears or goes, not with every flow,
/// so the detectors that ask only who talks to whom (peer groups, peer-unique destinations,
/// distinct destinations and ports, threat-intel addresses, scan samples) do no work for traffic
/// on edges they already know.
pub fn live_edges<'s>(edges: EdgeArrangement<'s>) -> VecCollection<'s, Epoch, Edge> {
    edges.distinct_total()
}

/// The windowed service graph at workload level, with the summed volume of its entity edges.
pub fn workload_graph<'s>(
    edges: VecCollection<'s, Epoch, Edge, Volume>,
) -> VecCollection<'s, Epoch, WorkloadEdge, Volume> {
    edges.map(|edge| WorkloadEdge::from(&edge))
}

/// An edge's windowed state: its volume and the first and last epochs it was seen in the window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeState {
    pub volume: Volume,
    pub first_seen: Epoch,
    pub last_seen: Epoch,
}

/// The service graph at one level with each edge's state: `((level, src, dst, port, proto), state)`.
pub type GraphKey = (EdgeLevel, Name, Name, u16, u8);

/// The windowed service graph, at entity and at workload level, with each edge's volume and its
/// first-seen and last-seen epochs within the window.
///
/// Exactly what a `reduce` per key over its epochs in the window would give (the volume is the sum
/// of the key's consolidated updates; first and last seen the least and greatest epoch whose
/// flows still count), but kept by one operator that holds, per key, its running volume and the
/// flow count of each epoch in the window. A change of a key costs a search in its own epochs,
/// not a replay of every epoch's history as a reduce does: the reduce was a third of the
/// dataflow's time and its arrangements a third of its memory (docs/performance.md).
pub fn service_graph<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
) -> VecCollection<'s, Epoch, (GraphKey, EdgeState)> {
    graph_state(graph_window(contacts))
}

/// One key's change of state at a closed epoch: its state before and after (`None`: not in the
/// graph), made by [`graph_window`] on the worker that owns the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphChange {
    pub key: GraphKey,
    pub before: Option<EdgeState>,
    pub after: Option<EdgeState>,
    pub at: Epoch,
}

/// The windowed service graph's changes, key by key, as [`service_graph`] describes: what both
/// the graph (a collection, [`graph_state`]) and its changelog ([`graph_changes`]) are read off.
pub fn graph_window<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
) -> Stream<'s, Epoch, Vec<GraphChange>> {
    let keyed = contacts.flat_map(|(edge, epoch)| {
        let workload = WorkloadEdge::from(&edge);
        [
            ((EdgeLevel::Entity, edge.src.entity, edge.dst.entity, edge.dst_port, edge.protocol), epoch),
            ((EdgeLevel::Workload, workload.src, workload.dst, workload.dst_port, workload.protocol), epoch),
        ]
    });
    type Contact = ((GraphKey, Epoch), Epoch, Volume);
    let route = Exchange::new(|update: &Contact| update.0 .0.hashed());
    keyed.inner.unary_frontier::<CapacityContainerBuilder<Vec<GraphChange>>, _, _, _>(route, "GraphWindow", |_, _| {
        let mut windows: HashMap<GraphKey, KeyWindow> = HashMap::new();
        let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<((GraphKey, Epoch), Volume)>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, updates| {
                for (contact, time, volume) in updates.drain(..) {
                    pending
                        .entry(time)
                        .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
                        .1
                        .push((contact, volume));
                }
            });
            // Closed times in order: each key's updates of the time at once, then its change.
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontier.less_equal(&time) {
                    break;
                }
                let (cap, mut updates) = entry.remove();
                differential_dataflow::consolidation::consolidate(&mut updates);
                let mut session = output.session(&cap);
                let mut rest = &updates[..];
                while let Some(((key, _), _)) = rest.first() {
                    let same = rest.iter().take_while(|((k, _), _)| k == key).count();
                    let (own, others) = rest.split_at(same);
                    rest = others;
                    let window = windows.entry(key.clone()).or_default();
                    let before = window.state();
                    for ((_, epoch), volume) in own {
                        window.add(*epoch, volume);
                    }
                    let after = window.state();
                    if window.is_empty() {
                        windows.remove(key);
                    }
                    if before != after {
                        session.give(GraphChange { key: key.clone(), before, after, at: time });
                    }
                }
            }
        }
    })
}

/// The graph as a collection of `(edge, state)`: each change retracts the state before and adds
/// the state after.
pub fn graph_state<'s>(
    changes: Stream<'s, Epoch, Vec<GraphChange>>,
) -> VecCollection<'s, Epoch, (GraphKey, EdgeState)> {
    VecCollection::new(changes.flat_map(|GraphChange { key, before, after, at }| {
        let retracted = before.map(|state| ((key.clone(), state), at, -1));
        retracted.into_iter().chain(after.map(|state| ((key, state), at, 1)))
    }))
}

/// One graph key's contacts in the window: the sum of their volumes and, for each epoch whose
/// updates have not consolidated away, its flow count, ascending by epoch (at most window / tick
/// entries; contacts arrive in time order, so an entry is added at the end and leaves from the
/// front).
#[derive(Default)]
struct KeyWindow {
    volume: Volume,
    epochs: Vec<(Epoch, i64)>,
}

impl KeyWindow {
    fn add(&mut self, epoch: Epoch, volume: &Volume) {
        self.volume.plus_equals(volume);
        match self.epochs.binary_search_by_key(&epoch, |(e, _)| *e) {
            Ok(at) => {
                self.epochs[at].1 += volume.flows;
                if self.epochs[at].1 == 0 {
                    self.epochs.remove(at);
                }
            }
            Err(at) if volume.flows != 0 => self.epochs.insert(at, (epoch, volume.flows)),
            Err(_) => {}
        }
    }

    /// The key's state: none while no epoch in the window has flows.
    fn state(&self) -> Option<EdgeState> {
        let mut with_flows = self.epochs.iter().filter(|(_, flows)| *flows > 0).map(|(epoch, _)| *epoch);
        let first_seen = with_flows.next()?;
        let last_seen = with_flows.next_back().unwrap_or(first_seen);
        Some(EdgeState { volume: self.volume, first_seen, last_seen })
    }

    fn is_empty(&self) -> bool {
        self.epochs.is_empty() && self.volume.is_zero()
    }
}

/// `(workload edge, first seen)`: the earliest epoch in the window of every workload-level edge,
/// read off the graph (for the detectors that judge how new an edge is).
pub fn first_contacts<'s>(
    graph: VecCollection<'s, Epoch, (GraphKey, EdgeState)>,
) -> VecCollection<'s, Epoch, (WorkloadEdge, Epoch)> {
    graph.flat_map(|((level, src, dst, dst_port, protocol), state)| {
        (level == EdgeLevel::Workload).then_some((WorkloadEdge { src, dst, dst_port, protocol }, state.first_seen))
    })
}

/// The graph's changes as records for the service-graph topic: at each closed epoch, the new
/// state of every edge that changed, or a tombstone (`present: false`) for an edge that left.
pub fn graph_changes<'s>(
    changes: Stream<'s, Epoch, Vec<GraphChange>>,
    window_ms: u64,
) -> Stream<'s, Epoch, Vec<GraphEdge>> {
    changes.map(move |GraphChange { key, after, at, .. }| {
        let state = after.unwrap_or(EdgeState { volume: Volume::default(), first_seen: 0, last_seen: 0 });
        graph_edge(key, state, window_ms, at)
    })
}

/// An edge's state as a service-graph record at `time`; a zero volume makes a tombstone
/// (`present: false`).
pub fn graph_edge(key: GraphKey, state: EdgeState, window_ms: u64, time: Epoch) -> GraphEdge {
    let (level, src, dst, dst_port, protocol) = key;
    GraphEdge {
        level,
        present: state.volume.flows > 0,
        src: src.into(),
        dst: dst.into(),
        dst_port: dst_port.into(),
        protocol: protocol.into(),
        window_ms: window_ms as i64,
        flows: state.volume.flows,
        bytes_out: state.volume.bytes_out,
        bytes_in: state.volume.bytes_in,
        packets_out: state.volume.packets_out,
        packets_in: state.volume.packets_in,
        first_seen_ms: state.first_seen as i64,
        last_seen_ms: state.last_seen as i64,
        event_time_ms: time as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{edge, run_collection};

    #[test]
    fn edges_carry_their_volume_and_first_and_last_seen_within_the_window() {
        let a = edge("pod:shop/web-1", Some("web"), "host:10.0.0.9", None, 5432);
        let b = edge("pod:shop/web-2", Some("web"), "host:10.0.0.9", None, 5432);
        let updates = vec![(a.clone(), 1000, 1), (a.clone(), 3000, 2), (b, 2000, 1)];
        let at = |t| crate::testing::run_collection_at(updates.clone(), 5000, vec![t], service_graph).remove(0);
        let state_at_4000 = at(4000);
        let entity = state_at_4000
            .iter()
            .find(|((key, _), _)| key.0 == EdgeLevel::Entity && key.1 == "pod:shop/web-1")
            .expect("entity edge");
        assert_eq!((entity.0 .1.first_seen, entity.0 .1.last_seen, entity.0 .1.volume.flows), (1000, 3000, 3));
        let workload = state_at_4000.iter().find(|((key, _), _)| key.0 == EdgeLevel::Workload).expect("workload edge");
        assert_eq!((workload.0 .1.first_seen, workload.0 .1.last_seen, workload.0 .1.volume.flows), (1000, 3000, 4));
        // At 6000 the contact at 1000 has left the window: first seen moves on.
        let later = at(6000);
        let entity =
            later.iter().find(|((key, _), _)| key.0 == EdgeLevel::Entity && key.1 == "pod:shop/web-1").unwrap();
        assert_eq!((entity.0 .1.first_seen, entity.0 .1.volume.flows), (3000, 2));
        assert!(later.iter().all(|(_, n)| *n == 1));
    }

    #[test]
    fn a_key_window_forgets_epochs_whose_flows_left_and_keeps_its_volume_exact() {
        let mut window = KeyWindow::default();
        let contact = crate::testing::vol(2, 0, 100, 10);
        window.add(3000, &contact);
        window.add(1000, &contact);
        let state = window.state().unwrap();
        assert_eq!(
            (state.first_seen, state.last_seen, state.volume.flows, state.volume.bytes_out),
            (1000, 3000, 4, 200)
        );
        // The contact at 1000 leaves the window: first seen moves on, the volume drops with it.
        window.add(1000, &contact.negated());
        let state = window.state().unwrap();
        assert_eq!((state.first_seen, state.last_seen, state.volume.flows), (3000, 3000, 2));
        assert_eq!(window.epochs, vec![(3000, 2)]);
        window.add(3000, &contact.negated());
        assert_eq!(window.state(), None);
        assert!(window.is_empty());
    }

    #[test]
    fn replicas_fold_into_one_workload_edge_with_summed_volume() {
        let updates = vec![
            (edge("pod:shop/web-1", Some("web"), "host:10.0.0.9", None, 5432), 1000, 1),
            (edge("pod:shop/web-2", Some("web"), "host:10.0.0.9", None, 5432), 1000, 2),
        ];
        let out = run_collection(updates, 2000, |contacts| workload_graph(contacts.map(|(edge, _)| edge)));
        assert_eq!(out.len(), 1, "{out:?}");
        let (e, v) = &out[0];
        assert_eq!((e.src.as_str(), e.dst.as_str()), ("web", "host:10.0.0.9"));
        assert_eq!(v.flows, 3);
    }
}
