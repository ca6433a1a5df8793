//! Cilium Hubble flows → flows, with the Kubernetes metadata Hubble attaches to both endpoints.
//! A Hubble "flow" is one observed packet (a trace or drop event), not a summary: each becomes a
//! one-packet flow (byte counts are not in Hubble's record). A reply packet (`is_reply`) is mapped
//! back onto the connection's direction: the originator is Hubble's destination, the packet
//! counts in. The state is what that one packet shows (see `docs/inputs.md`). Policy-verdict
//! events are skipped: they restate the verdict on a packet that Hubble also reports as a trace or
//! drop event, so counting them would count a connection's first packet twice.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::fields;
use super::time::{civil_to_micros, micros_to_millis};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{proto, tcp_flag, ConnState, EndpointMeta, Flow};

const HUBBLE: InputFormat = InputFormat::Hubble;

/// `hubble observe -o json` and the Hubble exporter write a `GetFlowsResponse` (`{"flow": {...},
/// "node_name": ..., "time": ...}`); the flow API and some pipelines hand over the bare `Flow`.
/// Responses that carry no flow (`node_status`, `lost_events`, agent or debug events) are skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct HubbleRecord {
    flow: Option<HubbleFlow>,
    node_name: Option<String>,
    #[serde(flatten)]
    bare: HubbleFlow,
}

#[derive(Debug, Default, Deserialize)]
struct HubbleFlow {
    time: Option<String>,
    #[serde(rename = "IP")]
    ip: Option<HubbleIp>,
    l4: Option<HubbleL4>,
    source: Option<HubbleEndpoint>,
    destination: Option<HubbleEndpoint>,
    #[serde(rename = "Type")]
    flow_type: Option<String>,
    event_type: Option<HubbleEventType>,
    node_name: Option<String>,
    is_reply: Option<bool>,
    /// Deprecated in Hubble for `is_reply`, still written by older agents.
    reply: Option<bool>,
    #[serde(rename = "l7")]
    l7: Option<serde_json::Value>,
}

/// The Cilium monitor event a flow was built from (`pkg/monitor/api`: 1 drop, 4 trace,
/// 5 policy verdict, 129 L7 access log, ...).
#[derive(Debug, Deserialize)]
struct HubbleEventType {
    #[serde(rename = "type")]
    kind: Option<i64>,
}

/// Cilium's `MessageTypePolicyVerdict`.
const POLICY_VERDICT_EVENT: i64 = 5;

#[derive(Debug, Deserialize)]
struct HubbleIp {
    source: Option<String>,
    destination: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
struct HubbleL4 {
    #[serde(rename = "TCP")]
    tcp: Option<HubblePorts>,
    #[serde(rename = "UDP")]
    udp: Option<HubblePorts>,
    #[serde(rename = "SCTP")]
    sctp: Option<HubblePorts>,
    #[serde(rename = "ICMPv4")]
    icmpv4: Option<HubbleIcmp>,
    #[serde(rename = "ICMPv6")]
    icmpv6: Option<HubbleIcmp>,
}

#[derive(Debug, Deserialize)]
struct HubblePorts {
    source_port: Option<u64>,
    destination_port: Option<u64>,
    flags: Option<BTreeMap<String, bool>>,
}

#[derive(Debug, Deserialize)]
struct HubbleIcmp {
    #[serde(rename = "type")]
    icmp_type: Option<u64>,
    code: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct HubbleEndpoint {
    namespace: Option<String>,
    pod_name: Option<String>,
    labels: Option<Vec<String>>,
    workloads: Option<Vec<HubbleWorkload>>,
    node_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HubbleWorkload {
    name: Option<String>,
    kind: Option<String>,
}

pub(crate) fn hubble_flow(context: &Context<'_>, record: HubbleRecord) -> Result<Option<Flow>, AdapterError> {
    let response_node = record.node_name;
    let flow = match record.flow {
        Some(flow) => flow,
        // A bare Flow has its packet headers at the top level; anything else is not a flow.
        None if record.bare.ip.is_some() => record.bare,
        None => return Ok(None),
    };
    // L7 records repeat a request/response already counted by its L3/L4 trace, a policy verdict the
    // packet that its trace or drop event counts; socket and debug events are not packets.
    let policy_verdict = flow.event_type.as_ref().and_then(|event| event.kind) == Some(POLICY_VERDICT_EVENT);
    if flow.l7.is_some() || policy_verdict || flow.flow_type.as_deref().is_some_and(|kind| kind != "L3_L4") {
        return Ok(None);
    }
    let Some(ip) = flow.ip else {
        // Non-IP traffic (ARP): nothing to put in a flow.
        return Ok(None);
    };
    let time = fields::required(HUBBLE, "time", flow.time)?;
    let micros =
        civil_to_micros(&time).ok_or_else(|| AdapterError::bad_field(HUBBLE, "time", &time, "is not a time"))?;
    let source = fields::address(HUBBLE, "IP.source", &fields::required(HUBBLE, "IP.source", ip.source)?)?;
    let destination =
        fields::address(HUBBLE, "IP.destination", &fields::required(HUBBLE, "IP.destination", ip.destination)?)?;
    let (protocol, source_port, destination_port, flags) = layer4(flow.l4)?;
    let reply = flow.is_reply.or(flow.reply).unwrap_or(false);
    let conn_state = if protocol == proto::TCP { packet_state(flags, reply) } else { ConnState::OTH };
    let source_meta = flow.source.and_then(endpoint_meta);
    let destination_meta = flow.destination.and_then(endpoint_meta);
    // A reply travels from the connection's responder back to its originator.
    let (src_addr, src_port, src_meta, dst_addr, dst_port, dst_meta) = if reply {
        (destination, destination_port, destination_meta, source, source_port, source_meta)
    } else {
        (source, source_port, source_meta, destination, destination_port, destination_meta)
    };
    let node = flow.node_name.or(response_node);
    Ok(Some(Flow {
        sensor_id: context.sensor_id(node.as_deref()),
        start_ms: micros_to_millis(micros),
        end_ms: micros_to_millis(micros),
        src_addr,
        src_port,
        dst_addr,
        dst_port,
        protocol,
        bytes_out: 0,
        bytes_in: 0,
        packets_out: i64::from(!reply),
        packets_in: i64::from(reply),
        tcp_flags: flags,
        conn_state,
        app_protocol: None,
        src_meta,
        dst_meta,
    }))
}

/// Protocol, source port, destination port (ICMP: type and code) and TCP flags.
fn layer4(l4: Option<HubbleL4>) -> Result<(i32, i32, i32, i32), AdapterError> {
    let Some(l4) = l4 else {
        return Ok((0, 0, 0, 0));
    };
    let ports = |protocol: i32, ports: HubblePorts| -> Result<(i32, i32, i32, i32), AdapterError> {
        let flags = ports
            .flags
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, set)| *set)
            .fold(0, |flags, (name, _)| flags | fields::tcp_flag_bit(&name).unwrap_or(0));
        Ok((
            protocol,
            fields::port(HUBBLE, "l4.source_port", ports.source_port.unwrap_or(0))?,
            fields::port(HUBBLE, "l4.destination_port", ports.destination_port.unwrap_or(0))?,
            if protocol == proto::TCP { flags & 0xff } else { 0 },
        ))
    };
    let icmp = |protocol: i32, icmp: HubbleIcmp| -> Result<(i32, i32, i32, i32), AdapterError> {
        Ok((
            protocol,
            fields::port(HUBBLE, "l4.type", icmp.icmp_type.unwrap_or(0))?,
            fields::port(HUBBLE, "l4.code", icmp.code.unwrap_or(0))?,
            0,
        ))
    };
    match l4 {
        HubbleL4 { tcp: Some(tcp), .. } => ports(proto::TCP, tcp),
        HubbleL4 { udp: Some(udp), .. } => ports(proto::UDP, udp),
        HubbleL4 { sctp: Some(sctp), .. } => ports(132, sctp),
        HubbleL4 { icmpv4: Some(icmpv4), .. } => icmp(proto::ICMP, icmpv4),
        HubbleL4 { icmpv6: Some(icmpv6), .. } => icmp(proto::ICMPV6, icmpv6),
        _ => Ok((0, 0, 0, 0)),
    }
}

/// What a single TCP packet says about its connection, in Zeek's terms: an originator's bare SYN is
/// an attempt (S0), a responder's SYN-ACK an establishment (S1), a RST an abort (RSTO/RSTR), a FIN
/// a close attempt (S2/S3); any other segment is midstream (OTH).
fn packet_state(flags: i32, reply: bool) -> ConnState {
    let has = |bit| fields::has(flags, bit);
    match (reply, has(tcp_flag::SYN), has(tcp_flag::ACK), has(tcp_flag::RST), has(tcp_flag::FIN)) {
        (_, _, _, true, _) if reply => ConnState::RSTR,
        (_, _, _, true, _) => ConnState::RSTO,
        (false, true, false, _, _) => ConnState::S0,
        (true, true, true, _, _) => ConnState::S1,
        (false, _, _, _, true) => ConnState::S2,
        (true, _, _, _, true) => ConnState::S3,
        _ => ConnState::OTH,
    }
}

/// Hubble's endpoint → endpoint metadata; `None` when Hubble knew nothing (an empty `{}`).
fn endpoint_meta(endpoint: HubbleEndpoint) -> Option<EndpointMeta> {
    let (workload, workload_kind) = match endpoint.workloads.unwrap_or_default().into_iter().next() {
        Some(first) => (first.name.filter(|name| !name.is_empty()), first.kind.filter(|kind| !kind.is_empty())),
        None => (None, None),
    };
    let meta = EndpointMeta {
        namespace: endpoint.namespace.filter(|namespace| !namespace.is_empty()),
        workload,
        workload_kind,
        pod: endpoint.pod_name.filter(|pod| !pod.is_empty()),
        node: endpoint.node_name.filter(|node| !node.is_empty()),
        image: None,
        image_digest: None,
        labels: endpoint.labels.unwrap_or_default().iter().filter_map(|label| pod_label(label)).collect(),
    };
    (meta != EndpointMeta::default()).then_some(meta)
}

/// A Cilium label (`source:key=value`) as a pod label. Kubernetes-sourced labels lose their `k8s:`
/// prefix (`k8s:app=web` → `app` = `web`); Cilium's bookkeeping labels that restate other fields
/// (the namespace, the cluster, the service account, the namespace's own labels) are dropped;
/// labels of other sources keep their source in the key (`reserved:world` → `reserved:world` = ``)
/// so the entity resolver can still tell the world, the host and the cluster apart.
fn pod_label(label: &str) -> Option<(String, String)> {
    let (key, value) = label.split_once('=').unwrap_or((label, ""));
    match key.split_once(':') {
        Some(("k8s", name)) => {
            let restates = name == "io.kubernetes.pod.namespace"
                || name.starts_with("io.cilium.k8s.policy.")
                || name.starts_with("io.cilium.k8s.namespace.labels.");
            (!restates && !name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        }
        _ if key.is_empty() => None,
        _ => Some((key.to_owned(), value.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::adapters::Adapter;

    /// Cilium's documentation, "Configuring Hubble exporter" (cilium/cilium Documentation/
    /// observability/hubble/configuration/export.rst): the exporter's output for two dropped packets.
    const DOCS_EXPORT: &str = include_str!("../../../tests/data/hubble/exporter.json");

    /// Flows Cilium's hubble-otel project captured from real clusters (GKE with Istio, kind with
    /// Cilium 1.10.5) running the bookinfo demo, with full Kubernetes metadata; see the README there.
    const OTEL_BOOKINFO: &str = include_str!("../../../tests/data/hubble/otel-bookinfo.json");

    fn decode(text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        Adapter::new(HUBBLE).decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn documentation_exporter_output() {
        let flows = decode(DOCS_EXPORT).expect("decode");
        assert_eq!(flows.len(), 2);
        let router_solicitation = &flows[0];
        assert_eq!(router_solicitation.sensor_id, "kind-kind/kind-worker");
        assert_eq!(
            (router_solicitation.src_addr.as_str(), router_solicitation.dst_addr.as_str()),
            ("fe80::64d8:8aff:fe72:fc14", "ff02::2")
        );
        assert_eq!(
            (router_solicitation.protocol, router_solicitation.src_port, router_solicitation.dst_port),
            (proto::ICMPV6, 133, 0)
        );
        assert_eq!(router_solicitation.end_ms, 1_692_619_933_517);
        assert_eq!((router_solicitation.src_meta.as_ref(), router_solicitation.dst_meta.as_ref()), (None, None));
        assert_eq!(router_solicitation.conn_state, ConnState::OTH);

        let xwing = &flows[1];
        assert_eq!((xwing.src_addr.as_str(), xwing.src_port), ("10.244.1.60", 44916));
        assert_eq!((xwing.dst_addr.as_str(), xwing.dst_port), ("10.244.1.5", 80));
        assert_eq!((xwing.start_ms, xwing.end_ms), (1_692_619_938_510, 1_692_619_938_510));
        assert_eq!((xwing.packets_out, xwing.packets_in, xwing.bytes_out), (1, 0, 0));
        // A lone SYN that policy dropped: an unanswered attempt.
        assert_eq!((xwing.tcp_flags, xwing.conn_state), (tcp_flag::SYN, ConnState::S0));
        let src = xwing.src_meta.as_ref().expect("source metadata");
        assert_eq!((src.namespace.as_deref(), src.pod.as_deref()), (Some("default"), Some("xwing")));
        let dst = xwing.dst_meta.as_ref().expect("destination metadata");
        assert_eq!(dst.pod.as_deref(), Some("deathstar-7848d6c4d5-th9v2"));
    }

    fn labels(meta: &EndpointMeta) -> Vec<(&str, &str)> {
        meta.labels.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect()
    }

    #[test]
    fn captured_bookinfo_flows_keep_kubernetes_metadata_and_connection_direction() {
        let flows = decode(OTEL_BOOKINFO).expect("decode");
        // Ten records: the L7 HTTP request and the policy verdict on the first SYN (which the SYN's
        // own trace event counts) are not flows.
        assert_eq!(flows.len(), 8);

        // GKE, Cilium before `is_reply`: only the deprecated `reply` marks the reviews pod's FIN as
        // a reply, so the host that opened the connection is the originator.
        let fin = &flows[0];
        assert_eq!(fin.sensor_id, "gke-ilya-otel-demo-1-ilya-otel-demo-1-6114bb84-zr1l");
        assert_eq!(
            (fin.src_addr.as_str(), fin.src_port, fin.dst_addr.as_str(), fin.dst_port),
            ("10.0.2.1", 42044, "10.0.2.16", 15020)
        );
        assert_eq!((fin.start_ms, fin.end_ms), (1_623_862_333_136, 1_623_862_333_136));
        assert_eq!(
            (fin.protocol, fin.packets_out, fin.packets_in, fin.bytes_out, fin.bytes_in),
            (proto::TCP, 0, 1, 0, 0)
        );
        assert_eq!((fin.tcp_flags, fin.conn_state), (tcp_flag::FIN | tcp_flag::ACK, ConnState::S3));
        let host = fin.src_meta.as_ref().expect("host");
        assert_eq!((host.namespace.as_deref(), host.pod.as_deref()), (None, None));
        assert_eq!(labels(host), [("reserved:host", "")]);
        let reviews = fin.dst_meta.as_ref().expect("reviews");
        assert_eq!(
            (reviews.namespace.as_deref(), reviews.pod.as_deref()),
            (Some("bookinfo"), Some("reviews-v1-545db77b95-s6jb8"))
        );
        // Cilium's bookkeeping labels (namespace labels, cluster, service account) are dropped.
        assert_eq!(labels(reviews), [("app", "reviews"), ("security.istio.io/tlsMode", "istio"), ("version", "v1")]);
        assert_eq!((reviews.workload.as_deref(), reviews.node.as_deref()), (None, None));

        // kind: one connection from ratings to productpage:9080, both directions and its close.
        let connection = &flows[1..6];
        for flow in connection {
            assert_eq!(flow.sensor_id, "kind-control-plane");
            assert_eq!(
                (flow.src_addr.as_str(), flow.src_port, flow.dst_addr.as_str(), flow.dst_port, flow.protocol),
                ("10.244.0.206", 59736, "10.244.0.177", 9080, proto::TCP),
                "every packet of the connection, replies included, keeps the originator as src"
            );
            let ratings = flow.src_meta.as_ref().expect("ratings");
            assert_eq!(
                (ratings.namespace.as_deref(), ratings.pod.as_deref()),
                (Some("bookinfo"), Some("ratings-v1-b6994bb9-jgqxb"))
            );
            assert_eq!(
                labels(ratings),
                [
                    ("app", "ratings"),
                    ("sidecar.opentelemetry.io/injected", "bookinfo.otelcol-bookinfo"),
                    ("version", "v1")
                ]
            );
            let productpage = flow.dst_meta.as_ref().expect("productpage");
            assert_eq!(productpage.pod.as_deref(), Some("productpage-v1-6b746f74dc-9rcxx"));
            assert_eq!(productpage.labels.get("app").map(String::as_str), Some("productpage"));
        }
        let shape: Vec<(i64, i64, i32, ConnState, i64)> = connection
            .iter()
            .map(|flow| (flow.packets_out, flow.packets_in, flow.tcp_flags, flow.conn_state, flow.end_ms))
            .collect();
        use tcp_flag::{ACK, FIN, SYN};
        assert_eq!(
            shape,
            [
                (1, 0, SYN, ConnState::S0, 1_636_540_856_886),
                (0, 1, SYN | ACK, ConnState::S1, 1_636_540_856_886),
                (1, 0, ACK, ConnState::OTH, 1_636_540_856_886),
                (0, 1, FIN | ACK, ConnState::S3, 1_636_540_856_955),
                (1, 0, FIN | ACK, ConnState::S2, 1_636_540_856_955),
            ]
        );

        // UDP to kube-dns on the other node, from a pod and from the remote node itself.
        let query = &flows[6];
        assert_eq!(
            (query.src_addr.as_str(), query.src_port, query.dst_addr.as_str(), query.dst_port, query.protocol),
            ("10.244.0.206", 54314, "10.244.1.227", 53, proto::UDP)
        );
        assert_eq!((query.packets_out, query.packets_in, query.tcp_flags, query.conn_state), (1, 0, 0, ConnState::OTH));
        let coredns = query.dst_meta.as_ref().expect("coredns");
        assert_eq!(
            (coredns.namespace.as_deref(), coredns.pod.as_deref()),
            (Some("kube-system"), Some("coredns-558bd4d5db-w2m67"))
        );
        assert_eq!(labels(coredns), [("k8s-app", "kube-dns")]);
        let from_node = &flows[7];
        assert_eq!((from_node.src_addr.as_str(), from_node.src_port), ("10.244.0.148", 33960));
        assert_eq!(from_node.end_ms, 1_636_540_856_872);
        assert_eq!(labels(from_node.src_meta.as_ref().expect("remote node")), [("reserved:remote-node", "")]);
    }

    #[test]
    fn a_policy_verdict_is_not_a_second_packet() {
        // The capture's policy verdict and trace event for the same SYN: one packet.
        let syn: String = OTEL_BOOKINFO.lines().skip(1).take(2).collect::<Vec<_>>().join("\n");
        assert!(syn.contains(r#""event_type":{"type":5}"#), "the sample's policy verdict");
        let flows = decode(&syn).expect("decode");
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].packets_out, flows[0].conn_state), (1, ConnState::S0));
        // A drop event (type 1) is the only record of a dropped packet and stays a flow.
        let drop = OTEL_BOOKINFO
            .lines()
            .nth(2)
            .expect("line")
            .replace(r#""type":4,"sub_type":1"#, r#""type":1,"sub_type":133"#);
        assert_eq!(decode(&drop).expect("drop").len(), 1);
    }

    #[test]
    fn a_reply_is_mapped_back_to_the_connection_direction_with_its_kubernetes_metadata() {
        // The documentation's second flow as the full (unmasked) record of the deathstar's SYN-ACK,
        // with the labels and workloads a full Hubble record carries. Written here: the captured
        // samples from the Cilium project predate Hubble's `workloads` field.
        let reply = r#"{"flow":{"time":"2023-08-21T12:12:18.510175415Z","verdict":"FORWARDED",
            "IP":{"source":"10.244.1.5","destination":"10.244.1.60","ipVersion":"IPv4"},
            "l4":{"TCP":{"source_port":80,"destination_port":44916,"flags":{"SYN":true,"ACK":true}}},
            "source":{"ID":1,"identity":2,"namespace":"default","labels":["k8s:app.kubernetes.io/name=deathstar",
              "k8s:class=deathstar","k8s:io.cilium.k8s.policy.cluster=kind-kind","k8s:io.kubernetes.pod.namespace=default",
              "k8s:org=empire"],"pod_name":"deathstar-7848d6c4d5-th9v2","workloads":[{"name":"deathstar","kind":"Deployment"}]},
            "destination":{"identity":3,"labels":["reserved:world"]},
            "Type":"L3_L4","node_name":"kind-kind/kind-worker","is_reply":true,"traffic_direction":"INGRESS"}}"#;
        let flows = decode(reply).expect("decode");
        let flow = &flows[0];
        assert_eq!(
            (flow.src_addr.as_str(), flow.src_port, flow.dst_addr.as_str(), flow.dst_port),
            ("10.244.1.60", 44916, "10.244.1.5", 80)
        );
        assert_eq!((flow.packets_out, flow.packets_in, flow.conn_state), (0, 1, ConnState::S1));
        let server = flow.dst_meta.as_ref().expect("server");
        assert_eq!(
            (server.workload.as_deref(), server.workload_kind.as_deref()),
            (Some("deathstar"), Some("Deployment"))
        );
        let labels: Vec<(&str, &str)> = server.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("app.kubernetes.io/name", "deathstar"), ("class", "deathstar"), ("org", "empire")]);
        let client = flow.src_meta.as_ref().expect("client");
        assert_eq!(client.labels.get("reserved:world").map(String::as_str), Some(""));
    }

    #[test]
    fn non_flow_responses_and_l7_records_are_skipped() {
        assert_eq!(
            decode(r#"{"node_status":{"state_change":"NODE_CONNECTED"},"time":"2023-08-21T12:12:13Z"}"#)
                .expect("status")
                .len(),
            0
        );
        let l7 = DOCS_EXPORT.lines().nth(1).expect("line").replace(r#""verdict""#, r#""Type":"L7","verdict""#);
        assert_eq!(decode(&l7).expect("l7").len(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut flows = Vec::new();
            let _ = Adapter::new(HUBBLE).decode(&bytes, &mut flows);
        }

        #[test]
        fn mutated_sample_never_panics(position in 0usize..16384, byte in any::<u8>()) {
            let mut bytes = OTEL_BOOKINFO.as_bytes().to_vec();
            let len = bytes.len();
            bytes[position % len] = byte;
            let mut flows = Vec::new();
            let _ = Adapter::new(HUBBLE).decode(&bytes, &mut flows);
        }

        #[test]
        fn any_label_text_is_handled(label in ".{0,40}") {
            let _ = pod_label(&label);
        }
    }
}
