//! pmacct JSON (print and kafka plugins of pmacctd, nfacctd, sfacctd, uacctd) → flows. pmacct
//! aggregates unidirectionally: a record counts the packets from `ip_src` to `ip_dst`, and the
//! reverse direction is a separate record. Each record becomes an out-only flow (`bytes_in =
//! packets_in = 0`, `conn_state = OTH`); peergraph does not pair the two directions.
//!
//! The flow's times need the `timestamp_start`/`timestamp_end` primitives in pmacct's `aggregate`
//! (or `stamp_inserted`/`stamp_updated` from historical accounting); a record with none is an error.

use serde::Deserialize;

use super::fields::{self, NumberOrText};
use super::time::{civil_to_micros, decimal_seconds_to_micros, micros_to_millis};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{proto, ConnState, Flow};

const PMACCT: InputFormat = InputFormat::PmacctJson;

#[derive(Debug, Deserialize)]
pub(crate) struct PmacctRecord {
    event_type: Option<String>,
    peer_ip_src: Option<String>,
    ip_src: Option<String>,
    ip_dst: Option<String>,
    port_src: Option<u64>,
    port_dst: Option<u64>,
    ip_proto: Option<NumberOrText>,
    tcp_flags: Option<TcpFlags>,
    packets: Option<u64>,
    bytes: Option<u64>,
    timestamp_start: Option<NumberOrText>,
    timestamp_end: Option<NumberOrText>,
    timestamp_arrival: Option<NumberOrText>,
    stamp_inserted: Option<String>,
    stamp_updated: Option<String>,
}

/// pmacct ≥ 1.7.8 writes TCP flags as names (`["ACK", "FIN"]`), older versions as a decimal string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TcpFlags {
    Names(Vec<String>),
    Value(NumberOrText),
}

pub(crate) fn json_flow(context: &Context<'_>, record: PmacctRecord) -> Result<Option<Flow>, AdapterError> {
    // Markers around each purge ("purge_init", "purge_close") and log start/stop carry no traffic.
    if record.event_type.as_deref().is_some_and(|kind| kind != "purge" && kind != "log" && kind != "trigger") {
        return Ok(None);
    }
    let time = |field: &'static str, value: Option<&NumberOrText>| -> Result<Option<i64>, AdapterError> {
        match value {
            None => Ok(None),
            // "0000-00-00 00:00:00.000000" (and an epoch of 0) is pmacct's "not set".
            Some(NumberOrText::Text(text)) if text.starts_with("0000-00-00") => Ok(None),
            Some(NumberOrText::Text(text)) => match civil_to_micros(text).or_else(|| decimal_seconds_to_micros(text)) {
                Some(0) => Ok(None),
                Some(micros) => Ok(Some(micros)),
                None => Err(AdapterError::bad_field(PMACCT, field, text, "is not a time")),
            },
            Some(other) => match other.as_u64() {
                Some(0) => Ok(None),
                Some(seconds) => Ok(i64::try_from(seconds).ok().and_then(|seconds| seconds.checked_mul(1_000_000))),
                None => Err(AdapterError::bad_field(PMACCT, field, other.describe(), "is not a time")),
            },
        }
    };
    let stamp = |field: &'static str, value: Option<&String>| -> Result<Option<i64>, AdapterError> {
        match value {
            Some(text) => civil_to_micros(text)
                .map(Some)
                .ok_or_else(|| AdapterError::bad_field(PMACCT, field, text, "is not a time")),
            None => Ok(None),
        }
    };
    let start = time("timestamp_start", record.timestamp_start.as_ref())?;
    let end = time("timestamp_end", record.timestamp_end.as_ref())?
        .or(time("timestamp_arrival", record.timestamp_arrival.as_ref())?)
        .or(stamp("stamp_updated", record.stamp_updated.as_ref())?);
    let start = start.or(stamp("stamp_inserted", record.stamp_inserted.as_ref())?);
    let (start, end) = match (start, end) {
        (Some(start), Some(end)) => (start.min(end), end),
        // pmacctd leaves timestamp_end unset for packets it saw once: the flow is an instant.
        (Some(only), None) | (None, Some(only)) => (only, only),
        (None, None) => return Err(AdapterError::MissingField { format: PMACCT, field: "timestamp_start" }),
    };
    let protocol = match &record.ip_proto {
        Some(value) => fields::protocol(PMACCT, "ip_proto", value)?,
        None => 0,
    };
    let tcp_flags = match &record.tcp_flags {
        Some(TcpFlags::Names(names)) => {
            names.iter().fold(0, |flags, name| flags | fields::tcp_flag_bit(name).unwrap_or(0))
        }
        Some(TcpFlags::Value(value)) => value
            .as_u64()
            .and_then(|flags| i32::try_from(flags & 0x1ff).ok())
            .ok_or_else(|| AdapterError::bad_field(PMACCT, "tcp_flags", value.describe(), "is not a TCP flag set"))?,
        None => 0,
    };
    let src_addr = fields::required(PMACCT, "ip_src", record.ip_src)?;
    let dst_addr = fields::required(PMACCT, "ip_dst", record.ip_dst)?;
    Ok(Some(Flow {
        sensor_id: context.sensor_id(record.peer_ip_src.as_deref()),
        start_ms: micros_to_millis(start),
        end_ms: micros_to_millis(end),
        src_addr: fields::address(PMACCT, "ip_src", &src_addr)?,
        src_port: fields::port(PMACCT, "port_src", record.port_src.unwrap_or(0))?,
        dst_addr: fields::address(PMACCT, "ip_dst", &dst_addr)?,
        dst_port: fields::port(PMACCT, "port_dst", record.port_dst.unwrap_or(0))?,
        protocol,
        bytes_out: fields::count(PMACCT, "bytes", record.bytes.unwrap_or(0))?,
        bytes_in: 0,
        packets_out: fields::count(PMACCT, "packets", record.packets.unwrap_or(0))?,
        packets_in: 0,
        tcp_flags: if protocol == proto::TCP { tcp_flags } else { 0 },
        conn_state: ConnState::OTH,
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
    use crate::flow::tcp_flag;

    /// pmacct's own test suite (pmacct/pmacct tests/103-IPFIXv10-CISCO-pretag-JSON_encoding):
    /// nfacctd's Kafka output for a Cisco ASR9k IPFIX capture, epoch timestamps.
    const NFACCTD_IPFIX: &str = include_str!("../../../tests/data/pmacct/nfacctd-kafka-ipfix.json");
    /// pmacct tests/101-NFv9-CISCO-cust_primitives: TCP records with flags as names.
    const NFACCTD_NFV9: &str = include_str!("../../../tests/data/pmacct/nfacctd-kafka-nfv9-tcp.json");
    /// Debian's pmacctd 1.7.7 print plugin on a Zeek test capture (http-to-ssh.pcap), default
    /// date-time timestamps and decimal TCP flags.
    const PMACCTD_PRINT: &str = include_str!("../../../tests/data/pmacct/pmacctd-print-http-to-ssh.json");

    fn decode(adapter: &Adapter, text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        adapter.decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn nfacctd_kafka_records_are_out_only_flows() {
        let flows = decode(&Adapter::new(PMACCT), NFACCTD_IPFIX).expect("decode");
        assert_eq!(flows.len(), 12);
        let first = &flows[0];
        assert_eq!(first.sensor_id, "172.21.1.101");
        assert_eq!(
            (first.src_addr.as_str(), first.src_port, first.dst_addr.as_str(), first.dst_port),
            ("10.231.65.56", 17000, "10.192.12.213", 17000)
        );
        assert_eq!((first.protocol, first.packets_out, first.bytes_out), (proto::UDP, 2, 220));
        assert_eq!((first.packets_in, first.bytes_in, first.conn_state), (0, 0, ConnState::OTH));
        assert_eq!((first.start_ms, first.end_ms), (1_677_577_561_000, 1_677_577_572_000));
        let v6 = &flows[4];
        assert_eq!(
            (v6.src_addr.as_str(), v6.dst_addr.as_str(), v6.dst_port),
            ("2001:1700:f101:2000::1", "2001:918:ffff:f9fc::3", 80)
        );
        assert_eq!((v6.packets_out, v6.bytes_out), (4, 5512));
    }

    #[test]
    fn flag_names_become_bits() {
        let flows = decode(&Adapter::new(PMACCT), NFACCTD_NFV9).expect("decode");
        assert_eq!(flows.len(), 3);
        assert_eq!((flows[0].protocol, flows[0].tcp_flags), (proto::TCP, tcp_flag::ACK));
        assert_eq!(flows[1].tcp_flags, tcp_flag::ACK | tcp_flag::FIN);
        assert_eq!(flows[2].tcp_flags, tcp_flag::ACK | tcp_flag::SYN);
        assert_eq!((flows[2].src_addr.as_str(), flows[2].src_port, flows[2].bytes_out), ("138.187.57.3", 179, 72));
    }

    #[test]
    fn pmacctd_print_output_with_date_times_and_unset_end() {
        let flows = decode(&Adapter::new(PMACCT).with_sensor_id("tap-1"), PMACCTD_PRINT).expect("decode");
        assert_eq!(flows.len(), 13);
        let syn = &flows[0];
        assert_eq!(syn.sensor_id, "tap-1");
        assert_eq!(
            (syn.src_addr.as_str(), syn.src_port, syn.dst_addr.as_str(), syn.dst_port),
            ("127.0.0.1", 40896, "127.0.0.1", 22)
        );
        // 2025-02-27 09:47:26.782032 UTC; timestamp_end unset ("0000-00-00 ...").
        assert_eq!((syn.start_ms, syn.end_ms), (1_740_649_646_782, 1_740_649_646_782));
        assert_eq!((syn.tcp_flags, syn.packets_out, syn.bytes_out), (tcp_flag::SYN, 2, 120));
        assert_eq!(flows[1].tcp_flags, tcp_flag::SYN | tcp_flag::ACK);
        assert_eq!(flows[12].tcp_flags, tcp_flag::RST | tcp_flag::ACK);
    }

    #[test]
    fn a_record_without_any_time_is_refused() {
        let error =
            decode(&Adapter::new(PMACCT), r#"{"ip_src":"10.0.0.1","ip_dst":"10.0.0.2","packets":1,"bytes":60}"#)
                .expect_err("no time");
        assert_eq!(error.kind(), "missing_field");
        let marker = r#"{"event_type":"purge_init","writer_id":"default_kafka/1","pid":1}"#;
        assert_eq!(decode(&Adapter::new(PMACCT), marker).expect("marker").len(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut flows = Vec::new();
            let _ = Adapter::new(PMACCT).decode(&bytes, &mut flows);
        }

        #[test]
        fn mutated_samples_never_panic(position in 0usize..8192, byte in any::<u8>()) {
            for sample in [NFACCTD_IPFIX, NFACCTD_NFV9, PMACCTD_PRINT] {
                let mut bytes = sample.as_bytes().to_vec();
                let len = bytes.len();
                bytes[position % len] = byte;
                let mut flows = Vec::new();
                let _ = Adapter::new(PMACCT).decode(&bytes, &mut flows);
            }
        }
    }
}
