//! peergraph's wire types: the records on the flows, alerts and service-graph topics, their Avro
//! schemas (`schemas/avro/*.avsc`, the source of truth) and the codecs that read and write them.

pub mod adapters;
pub mod alert;
pub mod asset;
pub mod codec;
pub mod edge;
pub mod flow;
pub mod secret;

pub use alert::{Alert, AlertEvent, Severity};
pub use asset::{Asset, Indicator};
pub use edge::{EdgeLevel, GraphEdge};
pub use flow::{ConnState, EndpointMeta, Flow, InvalidFlow};
