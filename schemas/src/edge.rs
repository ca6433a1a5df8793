//! `GraphEdge`: one change of the service graph, published on the service-graph changelog topic
//! (keyed by the edge, so a compacted topic keeps each edge's latest state).

use serde::{Deserialize, Serialize};

/// The traffic of one service-graph edge (source, destination, port, protocol) over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// Whether the ends are entities or workloads.
    pub level: EdgeLevel,
    /// Source entity or workload id.
    pub src: String,
    /// Destination entity or workload id.
    pub dst: String,
    /// Destination port.
    pub dst_port: i32,
    /// IANA protocol number.
    pub protocol: i32,
    /// Length of the window the counts cover, ms.
    pub window_ms: i64,
    /// Flows counted in the window.
    pub flows: i64,
    /// Bytes sent by the source in the window.
    pub bytes_out: i64,
    /// Bytes sent by the destination in the window.
    pub bytes_in: i64,
    /// Packets sent by the source in the window.
    pub packets_out: i64,
    /// Packets sent by the destination in the window.
    pub packets_in: i64,
    /// Event time this edge was first seen in the window, ms since the Unix epoch.
    pub first_seen_ms: i64,
    /// Event time this edge was last seen, ms since the Unix epoch.
    pub last_seen_ms: i64,
    /// Event time of this change.
    pub event_time_ms: i64,
    /// False when the edge left the window (a tombstone for compaction consumers).
    pub present: bool,
}

/// What the ends of a service-graph edge are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeLevel {
    /// Between entities (pods, hosts, addresses).
    Entity,
    /// Between workloads (entities grouped by what runs them).
    Workload,
}

impl EdgeLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeLevel::Entity => "entity",
            EdgeLevel::Workload => "workload",
        }
    }
}
