//! Suricata EVE JSON → flows. Only `flow` events are flows: Suricata logs one when a flow ends
//! or times out, with both directions' counters (`toserver` is the originator's side). Every other
//! event type (alert, dns, http, anomaly, stats, netflow, ...) is skipped without error.

use serde::Deserialize;

use super::fields::{self, NumberOrText};
use super::time::{civil_to_micros, micros_to_millis};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{proto, tcp_flag, ConnState, Flow};

const EVE: InputFormat = InputFormat::SuricataEve;

#[derive(Debug, Deserialize)]
pub(crate) struct EveEvent {
    event_type: Option<String>,
    timestamp: Option<String>,
    host: Option<String>,
    src_ip: Option<String>,
    src_port: Option<u64>,
    dest_ip: Option<String>,
    dest_port: Option<u64>,
    proto: Option<NumberOrText>,
    app_proto: Option<String>,
    icmp_type: Option<u64>,
    icmp_code: Option<u64>,
    flow: Option<EveFlow>,
    tcp: Option<EveTcp>,
}

#[derive(Debug, Deserialize)]
struct EveFlow {
    pkts_toserver: Option<u64>,
    pkts_toclient: Option<u64>,
    bytes_toserver: Option<u64>,
    bytes_toclient: Option<u64>,
    start: Option<String>,
    end: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EveTcp {
    tcp_flags: Option<String>,
    tcp_flags_ts: Option<String>,
    tcp_flags_tc: Option<String>,
}

pub(crate) fn eve_flow(context: &Context<'_>, event: EveEvent) -> Result<Option<Flow>, AdapterError> {
    if event.event_type.as_deref() != Some("flow") {
        return Ok(None);
    }
    let flow = fields::required(EVE, "flow", event.flow)?;
    let time = |field: &'static str, value: Option<&String>| match value {
        Some(text) => {
            civil_to_micros(text).map(Some).ok_or_else(|| AdapterError::bad_field(EVE, field, text, "is not a time"))
        }
        None => Ok(None),
    };
    let end = time("flow.end", flow.end.as_ref())?
        .or(time("timestamp", event.timestamp.as_ref())?)
        .ok_or(AdapterError::MissingField { format: EVE, field: "flow.end" })?;
    let start = time("flow.start", flow.start.as_ref())?.unwrap_or(end).min(end);
    let protocol = fields::protocol(EVE, "proto", &fields::required(EVE, "proto", event.proto)?)?;
    let (src_port, dst_port) = if fields::is_icmp(protocol) {
        (event.icmp_type.unwrap_or(0), event.icmp_code.unwrap_or(0))
    } else {
        (event.src_port.unwrap_or(0), event.dest_port.unwrap_or(0))
    };
    let (packets_out, packets_in) = (flow.pkts_toserver.unwrap_or(0), flow.pkts_toclient.unwrap_or(0));
    let (to_server, to_client, either) = match &event.tcp {
        Some(tcp) => (
            hex_flags(EVE, "tcp.tcp_flags_ts", tcp.tcp_flags_ts.as_deref())?,
            hex_flags(EVE, "tcp.tcp_flags_tc", tcp.tcp_flags_tc.as_deref())?,
            hex_flags(EVE, "tcp.tcp_flags", tcp.tcp_flags.as_deref())?,
        ),
        None => (0, 0, 0),
    };
    let conn_state = if protocol == proto::TCP { tcp_state(to_server, to_client, packets_in) } else { ConnState::OTH };
    let app_protocol = event.app_proto.filter(|name| !matches!(name.as_str(), "" | "failed" | "unknown"));
    let src_addr = fields::required(EVE, "src_ip", event.src_ip)?;
    let dst_addr = fields::required(EVE, "dest_ip", event.dest_ip)?;
    Ok(Some(Flow {
        sensor_id: context.sensor_id(event.host.as_deref()),
        start_ms: micros_to_millis(start),
        end_ms: micros_to_millis(end),
        src_addr: fields::address(EVE, "src_ip", &src_addr)?,
        src_port: fields::port(EVE, "src_port", src_port)?,
        dst_addr: fields::address(EVE, "dest_ip", &dst_addr)?,
        dst_port: fields::port(EVE, "dest_port", dst_port)?,
        protocol,
        bytes_out: fields::count(EVE, "flow.bytes_toserver", flow.bytes_toserver.unwrap_or(0))?,
        bytes_in: fields::count(EVE, "flow.bytes_toclient", flow.bytes_toclient.unwrap_or(0))?,
        packets_out: fields::count(EVE, "flow.pkts_toserver", packets_out)?,
        packets_in: fields::count(EVE, "flow.pkts_toclient", packets_in)?,
        tcp_flags: if protocol == proto::TCP { either | to_server | to_client } else { 0 },
        conn_state,
        app_protocol,
        src_meta: None,
        dst_meta: None,
    }))
}

/// Suricata writes TCP flags as hex without a prefix ("1e").
fn hex_flags(format: InputFormat, field: &'static str, text: Option<&str>) -> Result<i32, AdapterError> {
    match text {
        None | Some("") => Ok(0),
        Some(text) => u8::from_str_radix(text.trim_start_matches("0x"), 16)
            .map(i32::from)
            .map_err(|_| AdapterError::bad_field(format, field, text, "is not a hex TCP flag byte")),
    }
}

/// A Zeek state from the flags each side sent, following Zeek's definitions: who opened (SYN from
/// the originator, SYN-ACK from the responder), who reset, who closed.
fn tcp_state(to_server: i32, to_client: i32, packets_in: u64) -> ConnState {
    let has = fields::has;
    let orig_syn = has(to_server, tcp_flag::SYN);
    let resp_syn = has(to_client, tcp_flag::SYN);
    let (orig_rst, resp_rst) = (has(to_server, tcp_flag::RST), has(to_client, tcp_flag::RST));
    let (orig_fin, resp_fin) = (has(to_server, tcp_flag::FIN), has(to_client, tcp_flag::FIN));
    match (orig_syn, resp_syn) {
        (true, true) => match (orig_rst, resp_rst, orig_fin, resp_fin) {
            (true, _, _, _) => ConnState::RSTO,
            (_, true, _, _) => ConnState::RSTR,
            (_, _, true, true) => ConnState::SF,
            (_, _, true, false) => ConnState::S2,
            (_, _, false, true) => ConnState::S3,
            _ => ConnState::S1,
        },
        (true, false) if resp_rst => ConnState::REJ,
        (true, false) if orig_rst => ConnState::RSTOS0,
        (true, false) if orig_fin => ConnState::SH,
        (true, false) if packets_in == 0 => ConnState::S0,
        (false, true) if resp_rst => ConnState::RSTRH,
        (false, true) if resp_fin => ConnState::SHR,
        _ => ConnState::OTH,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::adapters::Adapter;

    /// Real EVE output that the Stratosphere Slips project ships as test data (Suricata on a
    /// honeypot's traffic, June 2021): an alert, a dns event and seven flow events, verbatim.
    const SLIPS_EVE: &str = include_str!("../../../tests/data/suricata/slips-test6.json");

    fn decode(text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        Adapter::new(EVE).decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    type Summary<'a> = (&'a str, i32, &'a str, i32, i32, Option<&'a str>);

    fn summary(flow: &Flow) -> Summary<'_> {
        (
            flow.src_addr.as_str(),
            flow.src_port,
            flow.dst_addr.as_str(),
            flow.dst_port,
            flow.protocol,
            flow.app_protocol.as_deref(),
        )
    }

    #[test]
    fn captured_flow_events_map_counters_times_and_states() {
        let flows = decode(SLIPS_EVE).expect("decode");
        assert_eq!(flows.len(), 7, "the alert and dns events are skipped, their embedded flow counters too");
        assert!(flows.iter().all(|flow| flow.sensor_id == "stratosphere.org"), "Suricata's `host` is the sensor");
        assert!(flows.iter().all(|flow| flow.src_meta.is_none() && flow.dst_meta.is_none()));

        // UDP that nobody answered; "failed" app-layer detection is no application protocol.
        let ssdp = &flows[0];
        assert_eq!(summary(ssdp), ("192.168.1.132", 1900, "192.168.1.129", 44232, proto::UDP, None));
        // start 2021-06-06T16:38:55.855844+0200, end 2021-06-06T16:38:56.963027+0200.
        assert_eq!((ssdp.start_ms, ssdp.end_ms), (1_622_990_335_855, 1_622_990_336_963));
        assert_eq!((ssdp.bytes_out, ssdp.bytes_in, ssdp.packets_out, ssdp.packets_in), (4056, 0, 12, 0));
        assert_eq!((ssdp.tcp_flags, ssdp.conn_state), (0, ConnState::OTH));

        // A SYN to 445/tcp answered by RST-ACK: rejected.
        let rejected = &flows[1];
        assert_eq!(summary(rejected), ("91.238.203.56", 48938, "192.168.1.129", 445, proto::TCP, None));
        assert_eq!((rejected.start_ms, rejected.end_ms), (1_622_993_671_140, 1_622_993_671_141));
        assert_eq!(
            (rejected.bytes_out, rejected.bytes_in, rejected.packets_out, rejected.packets_in),
            (120, 120, 2, 2)
        );
        assert_eq!((rejected.tcp_flags, rejected.conn_state), (0x16, ConnState::REJ));

        // Established, only the originator closed (Suricata: close_wait).
        let half_closed = &flows[2];
        assert_eq!(summary(half_closed), ("216.245.221.83", 48378, "192.168.1.129", 80, proto::TCP, None));
        assert_eq!((half_closed.start_ms, half_closed.end_ms), (1_623_001_959_150, 1_623_002_052_694));
        assert_eq!((half_closed.bytes_out, half_closed.bytes_in), (1072, 888));
        assert_eq!((half_closed.packets_out, half_closed.packets_in), (16, 12));
        assert_eq!((half_closed.tcp_flags, half_closed.conn_state), (0x13, ConnState::S2));

        // No flags recorded on either side: midstream.
        let midstream = &flows[3];
        assert_eq!(summary(midstream), ("198.12.66.100", 42686, "192.168.1.129", 5900, proto::TCP, None));
        assert_eq!((midstream.tcp_flags, midstream.conn_state), (0, ConnState::OTH));
        assert_eq!((midstream.packets_out, midstream.packets_in), (2, 2));

        let dns = &flows[4];
        assert_eq!(summary(dns), ("192.168.1.129", 60896, "192.168.1.1", 53, proto::UDP, Some("dns")));
        assert_eq!((dns.bytes_out, dns.bytes_in, dns.packets_out, dns.packets_in), (152, 304, 2, 2));
        assert_eq!((dns.start_ms, dns.end_ms, dns.conn_state), (1_623_025_877_968, 1_623_025_877_969, ConnState::OTH));

        // Opened and closed by both sides.
        let http = &flows[5];
        assert_eq!(summary(http), ("86.105.49.243", 60388, "192.168.1.129", 554, proto::TCP, Some("http")));
        assert_eq!((http.bytes_out, http.bytes_in, http.packets_out, http.packets_in), (1328, 914, 14, 10));
        assert_eq!((http.start_ms, http.end_ms), (1_623_062_249_750, 1_623_062_249_814));
        assert_eq!((http.tcp_flags, http.conn_state), (0x1b, ConnState::SF));

        // An ECN-setup SYN (SYN ECE CWR) rejected: the ECN bits are kept in the flags.
        let ecn = &flows[6];
        assert_eq!(summary(ecn), ("51.161.54.190", 53808, "192.168.1.129", 445, proto::TCP, None));
        assert_eq!((ecn.tcp_flags, ecn.conn_state), (0xd6, ConnState::REJ));
    }

    #[test]
    fn states_follow_zeek_definitions() {
        use tcp_flag::{ACK, FIN, RST, SYN};
        assert_eq!(tcp_state(SYN, 0, 0), ConnState::S0);
        assert_eq!(tcp_state(SYN, RST | ACK, 1), ConnState::REJ);
        assert_eq!(tcp_state(SYN | ACK | FIN, SYN | ACK | FIN, 3), ConnState::SF);
        assert_eq!(tcp_state(SYN | ACK, SYN | ACK, 3), ConnState::S1);
        assert_eq!(tcp_state(SYN | ACK, SYN | ACK | RST, 3), ConnState::RSTR);
        assert_eq!(tcp_state(ACK, ACK, 3), ConnState::OTH);
    }

    #[test]
    fn a_flow_event_without_addresses_is_an_error_not_a_skip() {
        let error = decode(r#"{"event_type":"flow","proto":"UDP","flow":{"end":"2023-09-18T06:14:13.752399+0000"}}"#)
            .expect_err("no src_ip");
        assert_eq!(error.kind(), "missing_field");
        assert!(error.to_string().contains("src_ip"), "{error}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut flows = Vec::new();
            let _ = Adapter::new(EVE).decode(&bytes, &mut flows);
        }

        #[test]
        fn mutated_sample_never_panics(position in 0usize..4096, byte in any::<u8>()) {
            let mut bytes = SLIPS_EVE.as_bytes().to_vec();
            let len = bytes.len();
            bytes[position % len] = byte;
            let mut flows = Vec::new();
            let _ = Adapter::new(EVE).decode(&bytes, &mut flows);
        }

        #[test]
        fn any_flag_combination_has_a_state(to_server in 0i32..256, to_client in 0i32..256, packets_in in 0u64..3) {
            let _ = tcp_state(to_server, to_client, packets_in);
        }
    }
}
