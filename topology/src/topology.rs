//! The whole dataflow, wired once: edges in, alerts (and the graph, for whoever wants it) out.
//! It reads like ARCHITECTURE's picture: service graph → peer groups → detectors → lifecycle.

use differential_dataflow::VecCollection;
use peergraph_schemas::Alert;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;

use crate::detectors::{findings, DetectorsConfig, Finding};
use crate::entity::ResolverConfig;
use crate::graph::{workload_graph, Edge, WorkloadEdge};
use crate::lifecycle::{alert_lifecycle, observation_start, LifecycleConfig};
use crate::peers::membership;
use crate::time::{Epoch, TimeConfig};
use crate::volume::Volume;

/// Everything the dataflow is parameterised by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    pub time: TimeConfig,
    pub entities: ResolverConfig,
    pub detectors: DetectorsConfig,
    pub lifecycle: LifecycleConfig,
}

/// The dataflow's outputs.
pub struct Outputs<'s> {
    /// The windowed workload-level service graph.
    pub workload_graph: VecCollection<'s, Epoch, WorkloadEdge, Volume>,
    /// Every detector's findings.
    pub findings: VecCollection<'s, Epoch, Finding>,
    /// Alert lifecycle events, each at the epoch that produced it.
    pub alerts: Stream<'s, Epoch, Vec<Alert>>,
}

/// Builds the dataflow over the windowed entity-level edges (each flow +volume at its epoch and
/// −volume at epoch + window; the caller does the windowing, see `time`).
pub fn build<'s>(config: &TopologyConfig, edges: VecCollection<'s, Epoch, Edge, Volume>) -> Outputs<'s> {
    let learning = config.lifecycle.learning_period.unwrap_or(config.time.window);
    let learning_ms = learning.as_millis() as u64;
    let members = membership(edges.clone());
    let findings = findings(&config.detectors, edges.clone(), members);
    let observed = observation_start(edges.clone());
    Outputs {
        workload_graph: workload_graph(edges),
        alerts: alert_lifecycle(findings.clone(), observed, learning_ms),
        findings,
    }
}
