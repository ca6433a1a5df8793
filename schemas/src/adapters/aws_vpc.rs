//! AWS VPC Flow Logs → flows. Records are space-separated lines in the flow log's format: the
//! default (version 2) one, or a custom one that a header line names (S3 delivery starts each file
//! with it) or that is configured. Each record is one direction of traffic on one network
//! interface over an aggregation interval: an out-only flow. NODATA and SKIPDATA records carry no
//! traffic and are skipped.

use super::fields;
use super::time::{decimal_seconds_to_micros, micros_to_millis};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{ConnState, Flow};

const AWS: InputFormat = InputFormat::AwsVpc;

/// The default format (version 2): what a flow log without a custom format writes.
pub(crate) const DEFAULT_FIELDS: [&str; 14] = [
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
];

/// Every field name of versions 2 to 5 (and the later ECS and reject-reason fields), which is what
/// tells a header line from a record.
const KNOWN_FIELDS: [&str; 37] = [
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
    "vpc-id",
    "subnet-id",
    "instance-id",
    "tcp-flags",
    "type",
    "pkt-srcaddr",
    "pkt-dstaddr",
    "region",
    "az-id",
    "sublocation-type",
    "sublocation-id",
    "pkt-src-aws-service",
    "pkt-dst-aws-service",
    "flow-direction",
    "traffic-path",
    "ecs-cluster-arn",
    "ecs-cluster-name",
    "ecs-container-instance-arn",
    "ecs-container-instance-id",
    "ecs-container-id",
    "ecs-second-container-id",
    "ecs-service-name",
    "reject-reason",
];

/// The columns a format must have for its records to become flows.
const REQUIRED: [&str; 4] = ["srcaddr", "dstaddr", "start", "end"];

/// Field names as AWS documents them (`log-status`); Athena's and CloudWatch's `log_status` too.
fn canonical(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

pub(crate) fn check_fields(names: Vec<String>) -> Result<Vec<String>, AdapterError> {
    let names: Vec<String> = names.iter().map(|name| canonical(name)).collect();
    for required in REQUIRED {
        if !names.iter().any(|name| name == required) {
            return Err(AdapterError::BadHeader { format: AWS, reason: format!("the format has no {required}") });
        }
    }
    Ok(names)
}

/// A header: every token is a field name and at least one is a known one (records always hold an
/// address, a number or an upper-case action).
fn header(line: &str) -> Option<Vec<String>> {
    let tokens: Vec<String> = line.split_whitespace().map(canonical).collect();
    let identifier = |token: &String| token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let is_header = tokens.iter().all(identifier)
        && tokens.iter().any(|token| KNOWN_FIELDS.contains(&token.as_str()))
        && line.split_whitespace().all(|token| !token.bytes().any(|b| b.is_ascii_uppercase()));
    is_header.then_some(tokens)
}

pub(crate) fn decode(
    context: &Context<'_>,
    default_fields: &[String],
    text: &str,
    out: &mut Vec<Flow>,
) -> Result<(), AdapterError> {
    let mut columns: Vec<String> = default_fields.to_vec();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(names) = header(line) {
            columns = check_fields(names).map_err(|error| error.in_record(AWS, line_number))?;
            continue;
        }
        let located = |error: AdapterError| error.in_record(AWS, line_number);
        if let Some(flow) = record_flow(context, &columns, line).map_err(located)? {
            context.push(flow, out).map_err(located)?;
        }
    }
    Ok(())
}

fn record_flow(context: &Context<'_>, columns: &[String], line: &str) -> Result<Option<Flow>, AdapterError> {
    let values: Vec<&str> = line.split_whitespace().collect();
    if values.len() != columns.len() {
        return Err(AdapterError::bad_field(
            AWS,
            "record",
            format!("{} values for {} fields", values.len(), columns.len()),
            "does not match the format",
        ));
    }
    // "-" is AWS's "no value" in every field.
    let get = |name: &str| {
        columns
            .iter()
            .position(|column| column == name)
            .and_then(|at| values.get(at).copied())
            .filter(|value| *value != "-")
    };
    if matches!(get("log-status"), Some("NODATA" | "SKIPDATA")) {
        return Ok(None);
    }
    let number = |name: &'static str| -> Result<Option<u64>, AdapterError> {
        match get(name) {
            Some(value) => {
                value.parse().map(Some).map_err(|_| AdapterError::bad_field(AWS, name, value, "is not a number"))
            }
            None => Ok(None),
        }
    };
    let seconds = |name: &'static str| -> Result<i64, AdapterError> {
        let value = fields::required(AWS, name, get(name))?;
        decimal_seconds_to_micros(value).ok_or_else(|| AdapterError::bad_field(AWS, name, value, "is not a time"))
    };
    // pkt-srcaddr/pkt-dstaddr are the packet's own addresses where srcaddr/dstaddr are a NAT or
    // transit gateway interface's: the endpoints peergraph resolves.
    let address = |packet: &'static str, interface: &'static str| -> Result<String, AdapterError> {
        match get(packet) {
            Some(value) => fields::address(AWS, packet, value),
            None => fields::address(AWS, interface, fields::required(AWS, interface, get(interface))?),
        }
    };
    let src_addr = address("pkt-srcaddr", "srcaddr")?;
    let dst_addr = address("pkt-dstaddr", "dstaddr")?;
    let (start, end) = (seconds("start")?, seconds("end")?);
    let protocol = match number("protocol")? {
        Some(number) => u8::try_from(number)
            .map(i32::from)
            .map_err(|_| AdapterError::bad_field(AWS, "protocol", number, "is not an IP protocol"))?,
        None => 0,
    };
    let tcp_flags = match number("tcp-flags")? {
        Some(flags) if protocol == crate::flow::proto::TCP => i32::try_from(flags & 0x1ff).unwrap_or(0),
        _ => 0,
    };
    // A rejected record is traffic a security group or network ACL blocked: a failed attempt.
    let conn_state = if get("action") == Some("REJECT") { ConnState::REJ } else { ConnState::OTH };
    Ok(Some(Flow {
        sensor_id: context.sensor_id(get("interface-id")),
        start_ms: micros_to_millis(start),
        end_ms: micros_to_millis(end.max(start)),
        src_addr,
        src_port: fields::port(AWS, "srcport", number("srcport")?.unwrap_or(0))?,
        dst_addr,
        dst_port: fields::port(AWS, "dstport", number("dstport")?.unwrap_or(0))?,
        protocol,
        bytes_out: fields::count(AWS, "bytes", number("bytes")?.unwrap_or(0))?,
        bytes_in: 0,
        packets_out: fields::count(AWS, "packets", number("packets")?.unwrap_or(0))?,
        packets_in: 0,
        tcp_flags,
        conn_state,
        app_protocol: None,
        src_meta: None,
        dst_meta: None,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::adapters::Adapter;
    use crate::flow::proto;

    // All from the Amazon VPC User Guide, "Flow log record examples" (awsdocs/amazon-vpc-user-guide
    // doc_source/flow-logs-records-examples.md).
    const V2_DEFAULT: &str = include_str!("../../../tests/data/aws-vpc/v2-default.log");
    const V3_TCP_FLAGS: &str = include_str!("../../../tests/data/aws-vpc/v3-tcp-flags.log");
    const V3_TRANSIT_GATEWAY: &str = include_str!("../../../tests/data/aws-vpc/v3-transit-gateway.log");
    const V5_TRAFFIC_PATH: &str = include_str!("../../../tests/data/aws-vpc/v5-traffic-path.log");

    fn decode(adapter: &Adapter, text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        adapter.decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn version_2_default_format_skips_nodata_and_skipdata() {
        let flows = decode(&Adapter::new(AWS), V2_DEFAULT).expect("decode");
        assert_eq!(flows.len(), 5, "7 records, of which one NODATA and one SKIPDATA");
        let ssh = &flows[0];
        assert_eq!(ssh.sensor_id, "eni-1235b8ca123456789");
        assert_eq!(
            (ssh.src_addr.as_str(), ssh.src_port, ssh.dst_addr.as_str(), ssh.dst_port),
            ("172.31.16.139", 20641, "172.31.16.21", 22)
        );
        assert_eq!(
            (ssh.protocol, ssh.packets_out, ssh.bytes_out, ssh.packets_in, ssh.bytes_in),
            (proto::TCP, 20, 4249, 0, 0)
        );
        assert_eq!((ssh.start_ms, ssh.end_ms, ssh.conn_state), (1_418_530_010_000, 1_418_530_070_000, ConnState::OTH));
        let rdp = &flows[1];
        assert_eq!((rdp.dst_port, rdp.conn_state), (3389, ConnState::REJ));
        let ping = &flows[2];
        assert_eq!(
            (ping.src_addr.as_str(), ping.protocol, ping.packets_out, ping.bytes_out),
            ("203.0.113.12", proto::ICMP, 4, 336)
        );
        let v6 = &flows[4];
        assert_eq!(v6.src_addr, "2001:db8:1234:a100:8d6e:3477:df66:f105");
        assert_eq!(
            (v6.packets_out, v6.bytes_out, v6.start_ms, v6.end_ms),
            (54, 8855, 1_477_913_708_000, 1_477_913_820_000)
        );
    }

    #[test]
    fn version_3_header_defines_the_columns() {
        let flows = decode(&Adapter::new(AWS).with_sensor_id("vpc-a"), V3_TCP_FLAGS).expect("decode");
        assert_eq!(flows.len(), 8);
        let syn = &flows[0];
        assert_eq!(syn.sensor_id, "vpc-a");
        assert_eq!(
            (syn.src_addr.as_str(), syn.src_port, syn.dst_addr.as_str(), syn.dst_port),
            ("52.213.180.42", 43416, "10.0.0.62", 5001)
        );
        assert_eq!((syn.bytes_out, syn.packets_out, syn.tcp_flags), (568, 8, 2));
        let syn_ack = &flows[1];
        assert_eq!((syn_ack.src_port, syn_ack.tcp_flags, syn_ack.bytes_out), (5001, 18, 376));
        let big = &flows[5];
        assert_eq!(
            (big.bytes_out, big.packets_out, big.tcp_flags, big.end_ms),
            (23_294_588, 15_774, 1, 1_566_849_113_000)
        );
        // The documentation's last record has two spaces between two fields.
        assert_eq!((flows[7].dst_port, flows[7].tcp_flags), (43638, 19));
    }

    #[test]
    fn a_format_without_times_is_refused_and_packet_addresses_win() {
        // The documentation's transit-gateway format has no start/end: no event time, no flow.
        let error = decode(&Adapter::new(AWS), V3_TRANSIT_GATEWAY).expect_err("no times");
        assert_eq!(error.kind(), "bad_header");
        assert!(error.to_string().contains("start") && error.to_string().contains("record 1"), "{error}");
        // The same records with the interval appended: srcaddr is the gateway interface 10.40.1.175,
        // the client is pkt-srcaddr 10.20.33.164.
        let mut lines = V3_TRANSIT_GATEWAY.lines();
        let header = format!("{} start end", lines.next().expect("header"));
        let records: Vec<String> = lines.map(|line| format!("{line} 1566848875 1566848933")).collect();
        let text = format!("{header}\n{}\n", records.join("\n"));
        let flows = decode(&Adapter::new(AWS), &text).expect("decode");
        assert_eq!((flows[1].src_addr.as_str(), flows[1].dst_addr.as_str()), ("10.20.33.164", "10.40.2.236"));
        assert_eq!((flows[1].sensor_id.as_str(), flows[1].tcp_flags), ("eni-11111111111111111", 3));
    }

    #[test]
    fn version_5_fields_are_read_by_name() {
        let flows = decode(&Adapter::new(AWS), V5_TRAFFIC_PATH).expect("decode");
        assert_eq!(flows.len(), 2);
        let ingress = &flows[0];
        assert_eq!(
            (ingress.src_addr.as_str(), ingress.src_port, ingress.dst_addr.as_str(), ingress.dst_port),
            ("52.95.128.179", 80, "10.0.0.71", 34210)
        );
        assert_eq!((ingress.packets_out, ingress.bytes_out, ingress.tcp_flags), (14, 15044, 19));
        assert_eq!((ingress.start_ms, ingress.end_ms), (1_616_729_292_000, 1_616_729_349_000));
        let egress = &flows[1];
        assert_eq!(
            (egress.src_addr.as_str(), egress.packets_out, egress.bytes_out, egress.tcp_flags),
            ("10.0.0.71", 7, 471, 3)
        );
    }

    #[test]
    fn records_without_their_header_need_the_configured_format() {
        let record = V5_TRAFFIC_PATH.lines().nth(1).expect("record");
        assert_eq!(decode(&Adapter::new(AWS), record).expect_err("default format").kind(), "bad_field");
        let header = V5_TRAFFIC_PATH.lines().next().expect("header");
        let configured = Adapter::new(AWS).with_fields(header).expect("fields");
        assert_eq!(decode(&configured, record).expect("configured")[0].bytes_out, 15044);
        let console = header.split(' ').map(|field| format!("${{{field}}}")).collect::<Vec<_>>().join(" ");
        assert!(Adapter::new(AWS).with_fields(&console).is_ok(), "{console}");
        assert_eq!(Adapter::new(AWS).with_fields("version srcaddr").expect_err("no dstaddr").kind(), "bad_header");
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(text in "([0-9a-z.:-]{0,12}[ \n]){0,40}") {
            let _ = decode(&Adapter::new(AWS), &text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut flows = Vec::new();
            let _ = Adapter::new(AWS).decode(&bytes, &mut flows);
        }

        #[test]
        fn mutated_samples_never_panic(position in 0usize..4096, byte in any::<u8>()) {
            for sample in [V2_DEFAULT, V3_TCP_FLAGS, V5_TRAFFIC_PATH] {
                let mut bytes = sample.as_bytes().to_vec();
                let len = bytes.len();
                bytes[position % len] = byte;
                let mut flows = Vec::new();
                let _ = Adapter::new(AWS).decode(&bytes, &mut flows);
            }
        }
    }
}
