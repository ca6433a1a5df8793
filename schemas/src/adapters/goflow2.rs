//! goflow2 (NetFlow v5/v9, IPFIX and sFlow collector) → flows, from its JSON output and from its
//! protobuf `FlowMessage`s. goflow2 records are unidirectional samples: each becomes an out-only
//! flow (`bytes_in = packets_in = 0`, `conn_state = OTH`), its counters scaled by the sampling rate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message;
use serde::Deserialize;

use super::fields::{self, NumberOrText};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{ConnState, Flow};

const JSON: InputFormat = InputFormat::Goflow2Json;
const PROTOBUF: InputFormat = InputFormat::Goflow2Protobuf;

/// goflow2's `FlowMessage` (`pb/flow.proto`, package `flowpb`, identical in goflow2 v2 and v3), the
/// fields peergraph reads, with goflow2's field numbers. Unknown fields are skipped by prost, so
/// the rest of goflow2's message (BGP, MPLS, layer stack, custom mapped fields) decodes fine.
#[derive(Clone, PartialEq, Message)]
pub struct FlowMessage {
    /// FlowType: 0 unknown, 1 sFlow 5, 2 NetFlow v5, 3 NetFlow v9, 4 IPFIX.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// When goflow2 received the packet, ns since the epoch.
    #[prost(uint64, tag = "110")]
    pub time_received_ns: u64,
    /// The exporter's sequence number.
    #[prost(uint32, tag = "4")]
    pub sequence_num: u32,
    /// 1 in N packets sampled.
    #[prost(uint64, tag = "3")]
    pub sampling_rate: u64,
    /// The exporter (router, switch, sFlow agent), 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "11")]
    pub sampler_address: Vec<u8>,
    /// First packet, ns since the epoch.
    #[prost(uint64, tag = "111")]
    pub time_flow_start_ns: u64,
    /// Last packet, ns since the epoch.
    #[prost(uint64, tag = "112")]
    pub time_flow_end_ns: u64,
    /// Bytes (sampled).
    #[prost(uint64, tag = "9")]
    pub bytes: u64,
    /// Packets (sampled).
    #[prost(uint64, tag = "10")]
    pub packets: u64,
    /// Source address, 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "6")]
    pub src_addr: Vec<u8>,
    /// Destination address, 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "7")]
    pub dst_addr: Vec<u8>,
    /// Ethernet type (0x800 IPv4, 0x86dd IPv6).
    #[prost(uint32, tag = "30")]
    pub etype: u32,
    /// IP protocol number.
    #[prost(uint32, tag = "20")]
    pub proto: u32,
    /// Source port.
    #[prost(uint32, tag = "21")]
    pub src_port: u32,
    /// Destination port.
    #[prost(uint32, tag = "22")]
    pub dst_port: u32,
    /// OR of the TCP flags.
    #[prost(uint32, tag = "26")]
    pub tcp_flags: u32,
    /// ICMP type.
    #[prost(uint32, tag = "31")]
    pub icmp_type: u32,
    /// ICMP code.
    #[prost(uint32, tag = "32")]
    pub icmp_code: u32,
}

/// goflow2's JSON rendering of the same message: snake-case protobuf names; addresses as text,
/// `proto` and `etype` rendered as names ("TCP", "IPv6") by default or left numeric.
#[derive(Debug, Deserialize)]
pub(crate) struct JsonFlow {
    time_received_ns: Option<u64>,
    sampling_rate: Option<u64>,
    sampler_address: Option<String>,
    time_flow_start_ns: Option<u64>,
    time_flow_end_ns: Option<u64>,
    bytes: Option<u64>,
    packets: Option<u64>,
    src_addr: Option<String>,
    dst_addr: Option<String>,
    proto: Option<NumberOrText>,
    src_port: Option<u64>,
    dst_port: Option<u64>,
    tcp_flags: Option<u64>,
    icmp_type: Option<u64>,
    icmp_code: Option<u64>,
}

/// The format-neutral record both encodings map through.
struct Sample {
    sampler: Option<String>,
    start_ns: u64,
    end_ns: u64,
    received_ns: u64,
    sampling_rate: u64,
    bytes: u64,
    packets: u64,
    src_addr: String,
    dst_addr: String,
    protocol: i32,
    src_port: u64,
    dst_port: u64,
    tcp_flags: u64,
    icmp: (u64, u64),
}

pub(crate) fn json_flow(context: &Context<'_>, record: JsonFlow) -> Result<Option<Flow>, AdapterError> {
    let protocol = match &record.proto {
        Some(value) => fields::protocol(JSON, "proto", value)?,
        None => 0,
    };
    let src_addr = fields::required(JSON, "src_addr", record.src_addr)?;
    let dst_addr = fields::required(JSON, "dst_addr", record.dst_addr)?;
    let sample = Sample {
        sampler: record.sampler_address,
        start_ns: record.time_flow_start_ns.unwrap_or(0),
        end_ns: record.time_flow_end_ns.unwrap_or(0),
        received_ns: record.time_received_ns.unwrap_or(0),
        sampling_rate: record.sampling_rate.unwrap_or(0),
        bytes: record.bytes.unwrap_or(0),
        packets: record.packets.unwrap_or(0),
        src_addr: fields::address(JSON, "src_addr", &src_addr)?,
        dst_addr: fields::address(JSON, "dst_addr", &dst_addr)?,
        protocol,
        src_port: record.src_port.unwrap_or(0),
        dst_port: record.dst_port.unwrap_or(0),
        tcp_flags: record.tcp_flags.unwrap_or(0),
        icmp: (record.icmp_type.unwrap_or(0), record.icmp_code.unwrap_or(0)),
    };
    sample_flow(context, JSON, sample).map(Some)
}

/// A `-format=bin` message: one or more varint length-delimited `FlowMessage`s (goflow2's default
/// framing), or, failing that, one bare `FlowMessage` (goflow2 with the delimiter turned off).
pub(crate) fn decode_protobuf(context: &Context<'_>, bytes: &[u8], out: &mut Vec<Flow>) -> Result<(), AdapterError> {
    let messages = match split_delimited(bytes) {
        Some(messages) => messages,
        None => vec![bytes],
    };
    let several = messages.len() > 1;
    for (index, message) in messages.into_iter().enumerate() {
        let located = |error: AdapterError| if several { error.in_record(PROTOBUF, index + 1) } else { error };
        let decoded = FlowMessage::decode(message).map_err(|source| located(AdapterError::Protobuf { source }))?;
        let flow = protobuf_flow(context, decoded).map_err(located)?;
        context.push(flow, out).map_err(located)?;
    }
    Ok(())
}

fn protobuf_flow(context: &Context<'_>, message: FlowMessage) -> Result<Flow, AdapterError> {
    let sampler = if message.sampler_address.is_empty() {
        None
    } else {
        Some(address_bytes(PROTOBUF, "sampler_address", &message.sampler_address)?)
    };
    let sample = Sample {
        sampler,
        start_ns: message.time_flow_start_ns,
        end_ns: message.time_flow_end_ns,
        received_ns: message.time_received_ns,
        sampling_rate: message.sampling_rate,
        bytes: message.bytes,
        packets: message.packets,
        src_addr: address_bytes(PROTOBUF, "src_addr", &message.src_addr)?,
        dst_addr: address_bytes(PROTOBUF, "dst_addr", &message.dst_addr)?,
        protocol: u8::try_from(message.proto)
            .map(i32::from)
            .map_err(|_| AdapterError::bad_field(PROTOBUF, "proto", message.proto, "is not an IP protocol"))?,
        src_port: u64::from(message.src_port),
        dst_port: u64::from(message.dst_port),
        tcp_flags: u64::from(message.tcp_flags),
        icmp: (u64::from(message.icmp_type), u64::from(message.icmp_code)),
    };
    sample_flow(context, PROTOBUF, sample)
}

fn sample_flow(context: &Context<'_>, format: InputFormat, sample: Sample) -> Result<Flow, AdapterError> {
    // sFlow samples carry no flow times: goflow2 sets them to the receive time, and so do we.
    let end_ns = if sample.end_ns > 0 { sample.end_ns } else { sample.received_ns };
    let start_ns = if sample.start_ns > 0 { sample.start_ns.min(end_ns) } else { end_ns };
    if end_ns == 0 {
        return Err(AdapterError::MissingField { format, field: "time_flow_end_ns" });
    }
    let (src_port, dst_port) = if fields::is_icmp(sample.protocol) && sample.src_port == 0 && sample.dst_port == 0 {
        sample.icmp
    } else {
        (sample.src_port, sample.dst_port)
    };
    let tcp_flags = i32::try_from(sample.tcp_flags & 0x1ff).unwrap_or(0);
    Ok(Flow {
        sensor_id: context.sensor_id(sample.sampler.as_deref()),
        start_ms: nanos_to_millis(start_ns),
        end_ms: nanos_to_millis(end_ns),
        src_addr: sample.src_addr,
        src_port: fields::port(format, "src_port", src_port)?,
        dst_addr: sample.dst_addr,
        dst_port: fields::port(format, "dst_port", dst_port)?,
        protocol: sample.protocol,
        bytes_out: fields::scaled_count(format, "bytes", sample.bytes, sample.sampling_rate)?,
        bytes_in: 0,
        packets_out: fields::scaled_count(format, "packets", sample.packets, sample.sampling_rate)?,
        packets_in: 0,
        tcp_flags: if sample.protocol == crate::flow::proto::TCP { tcp_flags } else { 0 },
        conn_state: ConnState::OTH,
        app_protocol: None,
        src_meta: None,
        dst_meta: None,
    })
}

fn nanos_to_millis(nanos: u64) -> i64 {
    // u64 nanoseconds / 10^6 always fits an i64.
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

fn address_bytes(format: InputFormat, field: &'static str, bytes: &[u8]) -> Result<String, AdapterError> {
    let address = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(|octets| IpAddr::V4(Ipv4Addr::from(octets))),
        16 => <[u8; 16]>::try_from(bytes).ok().map(|octets| {
            let v6 = Ipv6Addr::from(octets);
            // goflow2 writes IPv4 addresses of some exporters as IPv4-mapped IPv6.
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        }),
        0 => return Err(AdapterError::MissingField { format, field }),
        _ => None,
    };
    address
        .map(|address| address.to_string())
        .ok_or_else(|| AdapterError::bad_field(format, field, hex::encode(bytes), "is neither 4 nor 16 bytes"))
}

/// Splits `bytes` into varint length-delimited messages, if it is exactly a sequence of them.
fn split_delimited(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut messages = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (length, after) = read_varint(rest)?;
        let length = usize::try_from(length).ok()?;
        let (message, remainder) = after.split_at_checked(length)?;
        messages.push(message);
        rest = remainder;
    }
    Some(messages)
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::adapters::Adapter;
    use crate::flow::proto;

    /// The sample in goflow2's README ("By default, the samples received will be printed in JSON").
    const README_JSON: &str = include_str!("../../../tests/data/goflow2/readme-sflow.json");

    fn decode(format: InputFormat, bytes: &[u8]) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        Adapter::new(format).decode(bytes, &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn readme_sflow_sample_is_an_out_only_flow_scaled_by_the_sampling_rate() {
        let flows = decode(JSON, README_JSON.as_bytes()).expect("decode");
        assert_eq!(flows.len(), 1);
        let flow = &flows[0];
        assert_eq!(flow.sensor_id, "192.168.0.1");
        assert_eq!((flow.start_ms, flow.end_ms), (1_681_583_295_157, 1_681_583_295_157));
        assert_eq!((flow.src_addr.as_str(), flow.src_port), ("fd01::1", 443));
        assert_eq!((flow.dst_addr.as_str(), flow.dst_port), ("fd01::2", 50001));
        assert_eq!(flow.protocol, proto::TCP);
        // 1500 bytes, 1 packet, sampled 1 in 100.
        assert_eq!((flow.bytes_out, flow.packets_out), (150_000, 100));
        assert_eq!((flow.bytes_in, flow.packets_in), (0, 0));
        assert_eq!(flow.conn_state, ConnState::OTH);
    }

    /// goflow2 v2.2.6 run on the IPFIX export packets of pmacct's test capture
    /// (pmacct tests/103-IPFIXv10-CISCO-pretag-JSON_encoding/traffic-00.pcap, a Cisco ASR9k),
    /// with `-format=json` and with `-format=bin` (length-delimited FlowMessages, back to back).
    const IPFIX_JSON: &str = include_str!("../../../tests/data/goflow2/ipfix-asr9k.json");
    const IPFIX_BIN: &[u8] = include_bytes!("../../../tests/data/goflow2/ipfix-asr9k.bin");
    /// pmacct's own nfacctd output for the same capture.
    const PMACCT_IPFIX: &str = include_str!("../../../tests/data/pmacct/nfacctd-kafka-ipfix.json");

    #[test]
    fn goflow2_json_and_protobuf_output_for_a_real_ipfix_capture_agree() {
        let from_json = decode(JSON, IPFIX_JSON.as_bytes()).expect("json");
        let from_bin = decode(PROTOBUF, IPFIX_BIN).expect("bin");
        assert_eq!(from_json.len(), 12);
        assert_eq!(from_bin, from_json);
        let first = &from_bin[0];
        assert_eq!(first.sensor_id, "127.0.0.1", "the replaying host, goflow2's sampler_address");
        assert_eq!(
            (first.src_addr.as_str(), first.src_port, first.dst_addr.as_str(), first.dst_port),
            ("10.231.65.56", 17000, "10.192.12.213", 17000)
        );
        assert_eq!((first.protocol, first.bytes_out, first.packets_out), (proto::UDP, 220, 2));
        assert_eq!((first.start_ms, first.end_ms), (1_677_577_561_088, 1_677_577_572_352));
        let v6 = &from_bin[4];
        assert_eq!(
            (v6.src_addr.as_str(), v6.dst_addr.as_str(), v6.bytes_out, v6.packets_out),
            ("2001:1700:f101:2000::1", "2001:918:ffff:f9fc::3", 5512, 4)
        );
        // Each Kafka message holds one delimited FlowMessage: split the file and decode one by one.
        let mut rest = IPFIX_BIN;
        let mut one_by_one = Vec::new();
        while let Some((length, after)) = read_varint(rest) {
            let frame_length = rest.len() - after.len() + usize::try_from(length).expect("length");
            let (frame, remainder) = rest.split_at(frame_length);
            one_by_one.extend(decode(PROTOBUF, frame).expect("frame"));
            rest = remainder;
        }
        assert_eq!(one_by_one, from_bin);
    }

    #[test]
    fn goflow2_and_pmacct_report_the_same_ipfix_flows() {
        // Two collectors, one capture: the same 5-tuples and counters, the same second.
        let goflow2 = decode(PROTOBUF, IPFIX_BIN).expect("goflow2");
        let mut pmacct = Vec::new();
        crate::adapters::Adapter::new(InputFormat::PmacctJson)
            .decode(PMACCT_IPFIX.as_bytes(), &mut pmacct)
            .expect("pmacct");
        let key = |flow: &Flow| {
            (
                flow.src_addr.clone(),
                flow.src_port,
                flow.dst_addr.clone(),
                flow.dst_port,
                flow.protocol,
                flow.bytes_out,
                flow.packets_out,
                flow.start_ms / 1000,
                flow.end_ms / 1000,
            )
        };
        let mut goflow2: Vec<_> = goflow2.iter().map(key).collect();
        let mut pmacct: Vec<_> = pmacct.iter().map(key).collect();
        goflow2.sort();
        pmacct.sort();
        assert_eq!(goflow2, pmacct);
    }

    #[test]
    fn the_same_sample_as_a_delimited_protobuf_message_maps_identically() {
        // The README sample's values, encoded as goflow2 -format=bin frames them.
        let message = FlowMessage {
            r#type: 1,
            time_received_ns: 1_681_583_295_157_626_000,
            sequence_num: 2999,
            sampling_rate: 100,
            sampler_address: vec![192, 168, 0, 1],
            time_flow_start_ns: 1_681_583_295_157_626_000,
            time_flow_end_ns: 1_681_583_295_157_626_000,
            bytes: 1500,
            packets: 1,
            src_addr: "fd01::1".parse::<Ipv6Addr>().expect("v6").octets().to_vec(),
            dst_addr: "fd01::2".parse::<Ipv6Addr>().expect("v6").octets().to_vec(),
            etype: 0x86dd,
            proto: 6,
            src_port: 443,
            dst_port: 50001,
            ..FlowMessage::default()
        };
        let delimited = message.encode_length_delimited_to_vec();
        let from_json = decode(JSON, README_JSON.as_bytes()).expect("json");
        assert_eq!(decode(PROTOBUF, &delimited).expect("delimited"), from_json);
        assert_eq!(decode(PROTOBUF, &message.encode_to_vec()).expect("bare"), from_json);
        let mut two = delimited.clone();
        two.extend_from_slice(&delimited);
        assert_eq!(decode(PROTOBUF, &two).expect("two").len(), 2);
    }

    #[test]
    fn bad_protobuf_names_the_problem() {
        let error = decode(PROTOBUF, &[0x0a, 0x05, 0x01]).expect_err("truncated");
        assert_eq!(error.kind(), "protobuf");
        let no_address = FlowMessage { time_received_ns: 1, ..FlowMessage::default() }.encode_to_vec();
        assert_eq!(decode(PROTOBUF, &no_address).expect_err("no src").kind(), "missing_field");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(PROTOBUF, &bytes);
            let _ = decode(JSON, &bytes);
        }

        #[test]
        fn arbitrary_messages_never_panic(
            start in any::<u64>(), end in any::<u64>(), bytes in any::<u64>(), rate in any::<u64>(),
            proto in any::<u32>(), port in any::<u32>(), address in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let message = FlowMessage {
                time_flow_start_ns: start, time_flow_end_ns: end, bytes, packets: bytes, sampling_rate: rate,
                proto, src_port: port, dst_port: port, src_addr: address.clone(), dst_addr: address,
                ..FlowMessage::default()
            };
            if let Ok(flows) = decode(PROTOBUF, &message.encode_length_delimited_to_vec()) {
                for flow in flows {
                    prop_assert!(flow.validate().is_ok());
                }
            }
        }
    }
}
