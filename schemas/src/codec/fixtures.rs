//! Records for the codec tests: every optional field populated, labels, IPv6, and generators for
//! property tests.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::{Alert, AlertEvent, ConnState, EdgeLevel, EndpointMeta, Flow, GraphEdge, Severity};

pub fn endpoint_meta() -> EndpointMeta {
    EndpointMeta {
        namespace: Some("shop".into()),
        workload: Some("web".into()),
        workload_kind: Some("Deployment".into()),
        pod: Some("web-7d9f-abcde".into()),
        node: Some("node-3".into()),
        image: Some("registry.example/shop/web:1.4.2".into()),
        image_digest: Some("sha256:0f9e8d7c".into()),
        labels: BTreeMap::from([
            ("app".into(), "web".into()),
            ("pod-template-hash".into(), "7d9f".into()),
            ("tier".into(), "frontend ünïcode ✓".into()),
        ]),
    }
}

/// A TCP flow over IPv6 with both endpoints' metadata.
pub fn flow() -> Flow {
    Flow {
        sensor_id: "hubble-node-3".into(),
        start_ms: 1_764_000_000_000,
        end_ms: 1_764_000_000_250,
        src_addr: "fd00:10:244::1a".into(),
        src_port: 51_234,
        dst_addr: "2001:db8::53".into(),
        dst_port: 443,
        protocol: crate::flow::proto::TCP,
        bytes_out: 1_532,
        bytes_in: 48_211,
        packets_out: 14,
        packets_in: 40,
        tcp_flags: 0x1b,
        conn_state: ConnState::SF,
        app_protocol: Some("tls".into()),
        src_meta: Some(endpoint_meta()),
        dst_meta: Some(EndpointMeta { namespace: Some("payments".into()), ..EndpointMeta::default() }),
    }
}

/// A bare pcap sensor's UDP flow: no optional field set.
pub fn bare_flow() -> Flow {
    Flow {
        sensor_id: "pcap-0".into(),
        start_ms: 0,
        end_ms: 0,
        src_addr: "10.0.0.5".into(),
        src_port: 5353,
        dst_addr: "224.0.0.251".into(),
        dst_port: 5353,
        protocol: crate::flow::proto::UDP,
        bytes_out: 0,
        bytes_in: 0,
        packets_out: 1,
        packets_in: 0,
        tcp_flags: 0,
        conn_state: ConnState::OTH,
        app_protocol: None,
        src_meta: None,
        dst_meta: None,
    }
}

pub fn alert() -> Alert {
    Alert {
        alert_id: "a1b2c3d4e5f60718".into(),
        event: AlertEvent::Updated,
        detector: "peer_unique_destination".into(),
        severity: Severity::High,
        score: 73.25,
        entity: "pod:shop/web-7d9f-abcde".into(),
        peer_group: Some("workload:shop/Deployment/web".into()),
        summary: "web-7d9f-abcde talks to 2001:db8::dead, which none of its 11 peers do".into(),
        evidence: BTreeMap::from([
            ("destination".into(), "[2001:db8::dead]:8443".into()),
            ("peers".into(), "11".into()),
        ]),
        techniques: vec!["T1071".into(), "T1195.002".into()],
        first_seen_ms: 1_764_000_000_000,
        last_seen_ms: 1_764_000_060_000,
        event_time_ms: 1_764_000_060_000,
    }
}

pub fn edge() -> GraphEdge {
    GraphEdge {
        level: EdgeLevel::Workload,
        src: "workload:shop/Deployment/web".into(),
        dst: "workload:payments/StatefulSet/db".into(),
        dst_port: 5432,
        protocol: crate::flow::proto::TCP,
        window_ms: 300_000,
        flows: 1_204,
        bytes_out: 9_800_000,
        bytes_in: 120_000_000,
        packets_out: 80_000,
        packets_in: 95_000,
        first_seen_ms: 1_764_000_000_000,
        last_seen_ms: 1_764_000_290_000,
        event_time_ms: 1_764_000_300_000,
        present: false,
    }
}

fn conn_state() -> impl Strategy<Value = ConnState> {
    use ConnState::*;
    prop::sample::select(vec![S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH])
}

fn endpoint_meta_strategy() -> impl Strategy<Value = EndpointMeta> {
    let text = || prop::option::of(any::<String>());
    (
        (text(), text(), text(), text()),
        (text(), text(), text()),
        prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
    )
        .prop_map(|((namespace, workload, workload_kind, pod), (node, image, image_digest), labels)| {
            EndpointMeta { namespace, workload, workload_kind, pod, node, image, image_digest, labels }
        })
}

/// Arbitrary flows: any strings (not only addresses), any integers; the codec must not care.
pub fn flow_strategy() -> impl Strategy<Value = Flow> {
    (
        (any::<String>(), any::<i64>(), any::<i64>(), any::<String>(), any::<i32>(), any::<String>(), any::<i32>()),
        (any::<i32>(), any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>(), any::<i32>(), conn_state()),
        (
            prop::option::of(any::<String>()),
            prop::option::of(endpoint_meta_strategy()),
            prop::option::of(endpoint_meta_strategy()),
        ),
    )
        .prop_map(
            |(
                (sensor_id, start_ms, end_ms, src_addr, src_port, dst_addr, dst_port),
                (protocol, bytes_out, bytes_in, packets_out, packets_in, tcp_flags, conn_state),
                (app_protocol, src_meta, dst_meta),
            )| Flow {
                sensor_id,
                start_ms,
                end_ms,
                src_addr,
                src_port,
                dst_addr,
                dst_port,
                protocol,
                bytes_out,
                bytes_in,
                packets_out,
                packets_in,
                tcp_flags,
                conn_state,
                app_protocol,
                src_meta,
                dst_meta,
            },
        )
}
