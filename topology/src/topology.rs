//! The whole dataflow, wired once: edges in, alerts (and the graph, for whoever wants it) out.
//! It reads like ARCHITECTURE's picture: service graph → peer groups → detectors → lifecycle.

use differential_dataflow::VecCollection;
use peergraph_schemas::{Alert, GraphEdge};
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;

use crate::assets::{asset_matches, resolve_assets, resolve_history, weigh_by_criticality, AssetRecord};
use crate::detectors::{findings, DetectorInputs, DetectorsConfig, Finding, Indicator};
use crate::entity::ResolverConfig;
use crate::graph::{
    arrange_edges, first_contacts, graph_changes, graph_state, graph_window, live_edges, Edge, WorkloadEdge,
};
use crate::graph_history::{arrange_graph, GraphArrangement};
use crate::lifecycle::{alert_lifecycle, observation_start, LifecycleConfig, Timings};
use crate::peers::{membership, PeerGroupsConfig};
use crate::time::{Epoch, TimeConfig};
use crate::volume::Volume;
#[cfg(doc)]
use crate::volume_history::{expires_at, settles_at};
use crate::volume_history::{volume_history, VolumeHistory};

/// Everything the dataflow is parameterised by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    pub time: TimeConfig,
    pub entities: ResolverConfig,
    pub peer_groups: PeerGroupsConfig,
    pub detectors: DetectorsConfig,
    pub lifecycle: LifecycleConfig,
    /// Set by the pipeline on a restart: the newest epoch read before the replay point (coarse
    /// ticks that start before it are not derived again; see [`crate::volume_history`]).
    #[serde(skip)]
    pub complete_from: Epoch,
}

/// The dataflow's inputs, fed by the pipeline (or a test).
pub struct Inputs<'s> {
    /// Each flow's resolved edge with its epoch: +volume at the epoch, −volume at epoch + window.
    /// Flows of one poll batch with the same edge and epoch arrive as one update.
    pub contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    /// The inventory: +1 when an asset is listed, −1 when it is withdrawn or changed.
    pub assets: VecCollection<'s, Epoch, AssetRecord>,
    /// Threat-intel indicators, +1 when listed and −1 when withdrawn.
    pub indicators: VecCollection<'s, Epoch, Indicator>,
    /// Workload edges at coarse epochs, +1 when first seen in a coarse tick and −1 when the history
    /// forgets them.
    pub history: VecCollection<'s, Epoch, (WorkloadEdge, Epoch)>,
    /// The volume history a previous run persisted: `(entity, coarse epoch)` with its bytes, from
    /// the tick's [`settles_at`] until its [`expires_at`].
    pub volumes: VolumeHistory<'s>,
}

/// The dataflow's outputs.
pub struct Outputs<'s> {
    /// The windowed service graph at entity and workload level, with first / last seen, arranged
    /// by edge: join against it, or keep a handle on its trace to read it as of a past time.
    pub graph: GraphArrangement<'s>,
    /// The graph's changes, for the service-graph changelog topic.
    pub graph_changes: Stream<'s, Epoch, Vec<GraphEdge>>,
    /// Every detector's findings.
    pub findings: VecCollection<'s, Epoch, Finding>,
    /// Alert lifecycle events, each at the epoch that produced it.
    pub alerts: Stream<'s, Epoch, Vec<Alert>>,
    /// The volume history's records this run derived, consolidated (each enters at its tick's
    /// [`settles_at`] and leaves at its [`expires_at`]): what the pipeline persists.
    pub volume_records: VolumeHistory<'s>,
}

/// Builds the dataflow. The caller does the windowing of `contacts` (see `time`).
pub fn build<'s>(config: &TopologyConfig, inputs: Inputs<'s>) -> Outputs<'s> {
    let timings = Timings::new(&config.lifecycle, config.time.window);
    let matches = asset_matches(inputs.contacts.clone(), inputs.assets);
    let contacts = resolve_assets(inputs.contacts, matches.clone());
    let edges = contacts.clone().map(|(edge, _epoch)| edge);
    let by_edge = arrange_edges(edges.clone());
    let live = live_edges(by_edge.clone());
    let window = graph_window(contacts.clone());
    let service = graph_state(window.clone());
    let (volumes, volume_records) =
        volume_history(contacts.clone(), inputs.volumes, &config.time, config.complete_from);
    let detector_inputs = DetectorInputs {
        first_contacts: first_contacts(service.clone()),
        members: membership(edges.clone(), live.clone(), &config.peer_groups),
        edges: edges.clone(),
        live,
        by_edge,
        contacts,
        indicators: inputs.indicators,
        history: resolve_history(inputs.history, matches.clone()),
        volumes,
        time: config.time.clone(),
    };
    let findings = weigh_by_criticality(findings(&config.detectors, &detector_inputs), matches);
    let observed = observation_start(edges.clone());
    // The changelog reads the graph's changes as they are made (each key's, per closed epoch, on
    // the worker that owns it), not back out of the arrangement.
    let changes = graph_changes(window, config.time.window_ms());
    let graph = arrange_graph(service);
    Outputs {
        graph_changes: changes,
        graph,
        alerts: alert_lifecycle(findings.clone(), observed, timings, config.lifecycle.resumed.clone()),
        findings,
        volume_records,
    }
}
