//! peergraph's dataflow: everything the product knows about a network, kept as differential
//! collections that update incrementally as flows arrive and windows slide. No Kafka in here: the
//! pipeline feeds [`Edge`] updates in and reads [`Alert`](peergraph_schemas::Alert)s out.

pub mod assets;
pub mod detectors;
pub mod entity;
pub mod graph;
pub mod graph_history;
pub mod lifecycle;
pub mod name;
pub mod peers;
pub mod schedule;
pub mod stats;
pub mod time;
pub mod topology;
pub mod volume;
pub mod volume_history;

#[cfg(test)]
mod testing;

pub use assets::AssetRecord;
pub use detectors::{DetectorInputs, DetectorsConfig, Finding, Indicator};
pub use entity::{Endpoint, EntityResolver, ResolverConfig};
pub use graph::{Edge, EdgeState, GraphKey, WorkloadEdge};
pub use graph_history::{AsOfError, GraphArrangement, GraphDiff, GraphFilter, GraphHistory, GraphTrace};
pub use lifecycle::{LifecycleConfig, ResumedAlerts};
pub use name::{ByText, Name};
pub use peers::PeerGroupsConfig;
pub use schedule::ScheduledInput;
pub use time::{Epoch, TimeConfig};
pub use topology::{build, Inputs, Outputs, TopologyConfig};
pub use volume::Volume;
