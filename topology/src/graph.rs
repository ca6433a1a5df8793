//! The service graph. Flows enter the dataflow as updates to entity-level edges: a flow adds its
//! [`Volume`] to its edge at its epoch and takes it away at epoch + window, so the collection of
//! edges, consolidated, *is* the windowed entity-level graph. The workload-level graph is a map.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::entity::Endpoint;
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
    pub src: String,
    pub dst: String,
    pub dst_port: u16,
    pub protocol: u8,
}

impl From<&Edge> for WorkloadEdge {
    fn from(edge: &Edge) -> WorkloadEdge {
        WorkloadEdge {
            src: edge.src.node().to_owned(),
            dst: edge.dst.node().to_owned(),
            dst_port: edge.dst_port,
            protocol: edge.protocol,
        }
    }
}

/// The windowed service graph at workload level, with the summed volume of its entity edges.
pub fn workload_graph<'s>(
    edges: VecCollection<'s, Epoch, Edge, Volume>,
) -> VecCollection<'s, Epoch, WorkloadEdge, Volume> {
    edges.map(|edge| WorkloadEdge::from(&edge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{edge, run_collection};

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
