//! `Flow`: one bidirectional network conversation as a sensor reports it. This is the record on the
//! flows topic; everything downstream (entities, the service graph, peer groups, detectors) is
//! derived from it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// IANA protocol numbers used throughout.
pub mod proto {
    pub const ICMP: i32 = 1;
    pub const TCP: i32 = 6;
    pub const UDP: i32 = 17;
    pub const ICMPV6: i32 = 58;
}

/// TCP flag bits, as in the TCP header (`tcp_flags` is the OR over both directions).
pub mod tcp_flag {
    pub const FIN: i32 = 0x01;
    pub const SYN: i32 = 0x02;
    pub const RST: i32 = 0x04;
    pub const PSH: i32 = 0x08;
    pub const ACK: i32 = 0x10;
    pub const URG: i32 = 0x20;
}

/// A flow record. "out" is the originator's (src) direction, "in" the responder's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Which sensor observed the flow.
    pub sensor_id: String,
    /// First packet, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Last packet, milliseconds since the Unix epoch. The flow's event time.
    pub end_ms: i64,
    /// Originator address, IPv4 dotted or IPv6 textual form.
    pub src_addr: String,
    /// Originator port; 0 when the protocol has no ports.
    pub src_port: i32,
    /// Responder address.
    pub dst_addr: String,
    /// Responder port; 0 when the protocol has no ports.
    pub dst_port: i32,
    /// IANA protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub protocol: i32,
    /// Bytes sent by the originator.
    pub bytes_out: i64,
    /// Bytes sent by the responder.
    pub bytes_in: i64,
    /// Packets sent by the originator.
    pub packets_out: i64,
    /// Packets sent by the responder.
    pub packets_in: i64,
    /// OR of the TCP flags seen in both directions (0 for non-TCP).
    pub tcp_flags: i32,
    /// Zeek-style connection state.
    pub conn_state: ConnState,
    /// Application protocol, when the sensor identified one ("dns", "http", "tls", ...).
    #[serde(default)]
    pub app_protocol: Option<String>,
    /// What the sensor knows of the originator (Kubernetes metadata from Hubble-style sensors).
    #[serde(default)]
    pub src_meta: Option<EndpointMeta>,
    /// What the sensor knows of the responder.
    #[serde(default)]
    pub dst_meta: Option<EndpointMeta>,
}

/// Zeek `conn.log` connection states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConnState {
    /// Connection attempt seen, no reply.
    S0,
    /// Established, not terminated.
    S1,
    /// Normal establishment and termination.
    SF,
    /// Connection attempt rejected.
    REJ,
    /// Established, close attempt by originator seen (no reply).
    S2,
    /// Established, close attempt by responder seen (no reply).
    S3,
    /// Established, originator aborted (sent a RST).
    RSTO,
    /// Responder sent a RST.
    RSTR,
    /// Originator sent a SYN followed by a RST, no SYN-ACK from the responder.
    RSTOS0,
    /// Responder sent a SYN ACK followed by a RST, no SYN from the originator.
    RSTRH,
    /// Originator sent a SYN followed by a FIN, no SYN ACK from the responder.
    SH,
    /// Responder sent a SYN ACK followed by a FIN, no SYN from the originator.
    SHR,
    /// No SYN seen, just midstream traffic; also every non-TCP flow.
    OTH,
}

impl ConnState {
    /// The connection never carried data in both directions: a probe, a refusal, a half-open.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            ConnState::S0 | ConnState::REJ | ConnState::RSTOS0 | ConnState::RSTRH | ConnState::SH | ConnState::SHR
        )
    }
}

/// What a sensor knows about one endpoint. Every field is optional: a bare pcap sensor knows none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointMeta {
    /// Kubernetes namespace of the pod.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The workload (Deployment, StatefulSet, DaemonSet, ...) name the pod belongs to.
    #[serde(default)]
    pub workload: Option<String>,
    /// "Deployment", "StatefulSet", "DaemonSet", "Job", ...
    #[serde(default)]
    pub workload_kind: Option<String>,
    /// Pod name.
    #[serde(default)]
    pub pod: Option<String>,
    /// Node the pod runs on.
    #[serde(default)]
    pub node: Option<String>,
    /// Container image reference ("registry/repository:tag").
    #[serde(default)]
    pub image: Option<String>,
    /// Content digest of the container image ("sha256:...").
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why a decoded flow was refused before it reached the dataflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFlow {
    #[error("end_ms {end_ms} is before start_ms {start_ms}")]
    EndBeforeStart { start_ms: i64, end_ms: i64 },
    #[error("{field} is negative ({value})")]
    Negative { field: &'static str, value: i64 },
    #[error("{field} {value} is not a port (0..=65535)")]
    Port { field: &'static str, value: i32 },
    #[error("{field} {value:?} is not an IP address")]
    Address { field: &'static str, value: String },
    #[error("protocol {0} is not an IANA protocol number (0..=255)")]
    Protocol(i32),
}

impl InvalidFlow {
    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            InvalidFlow::EndBeforeStart { .. } => "end_before_start",
            InvalidFlow::Negative { .. } => "negative_count",
            InvalidFlow::Port { .. } => "bad_port",
            InvalidFlow::Address { .. } => "bad_address",
            InvalidFlow::Protocol(_) => "bad_protocol",
        }
    }
}

impl Flow {
    /// Checks what every consumer of a flow relies on. Cheap enough for the decode path.
    pub fn validate(&self) -> Result<(), InvalidFlow> {
        if self.end_ms < self.start_ms {
            return Err(InvalidFlow::EndBeforeStart { start_ms: self.start_ms, end_ms: self.end_ms });
        }
        for (field, value) in [
            ("bytes_out", self.bytes_out),
            ("bytes_in", self.bytes_in),
            ("packets_out", self.packets_out),
            ("packets_in", self.packets_in),
        ] {
            if value < 0 {
                return Err(InvalidFlow::Negative { field, value });
            }
        }
        for (field, value) in [("src_port", self.src_port), ("dst_port", self.dst_port)] {
            if !(0..=65535).contains(&value) {
                return Err(InvalidFlow::Port { field, value });
            }
        }
        if !(0..=255).contains(&self.protocol) {
            return Err(InvalidFlow::Protocol(self.protocol));
        }
        for (field, value) in [("src_addr", &self.src_addr), ("dst_addr", &self.dst_addr)] {
            if value.parse::<IpAddr>().is_err() {
                return Err(InvalidFlow::Address { field, value: value.clone() });
            }
        }
        Ok(())
    }
}
