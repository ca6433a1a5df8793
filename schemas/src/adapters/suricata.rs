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

    /// Suricata's user guide, "Eve JSON Format" (OISF/suricata doc/userguide/output/eve/
    /// eve-json-format.rst): its alert, anomaly and flow examples, one per line.
    const DOCS_EVE: &str = include_str!("../../../tests/data/suricata/eve-json-format.json");

    fn decode(text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        Adapter::new(EVE).decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn documentation_flow_event_is_the_only_flow() {
        let flows = decode(DOCS_EVE).expect("decode");
        assert_eq!(flows.len(), 1, "alert and anomaly events are skipped");
        let flow = &flows[0];
        assert_eq!(flow.sensor_id, "suricata-eve");
        assert_eq!((flow.src_addr.as_str(), flow.src_port), ("192.168.100.237", 49175));
        assert_eq!((flow.dst_addr.as_str(), flow.dst_port), ("142.11.240.191", 35361));
        assert_eq!(flow.protocol, proto::TCP);
        // start 2023-09-18T06:13:33.324862+0000, end 2023-09-18T06:14:13.752399+0000.
        assert_eq!((flow.start_ms, flow.end_ms), (1_695_017_613_324, 1_695_017_653_752));
        assert_eq!((flow.bytes_out, flow.bytes_in), (3_536_402, 94_102));
        assert_eq!((flow.packets_out, flow.packets_in), (3869, 1523));
        assert_eq!(flow.tcp_flags, 0x1e);
        // Both sides sent SYN, the originator a RST (ts flags 1e = SYN RST PSH ACK).
        assert_eq!(flow.conn_state, ConnState::RSTO);
        assert_eq!(flow.app_protocol.as_deref(), Some("http"));
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
            let mut bytes = DOCS_EVE.as_bytes().to_vec();
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
