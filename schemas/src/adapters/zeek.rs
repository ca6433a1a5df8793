//! Zeek `conn.log` → flows, from the JSON writer (one object per record) and from the default
//! tab-separated writer (a `#fields` header, then one record per line; a message may hold a whole
//! log file or single lines). Zeek's originator is the flow's source: `orig_*` counters go out,
//! `resp_*` counters come in, and Zeek's `conn_state` is kept as is.

use serde::Deserialize;

use super::fields;
use super::time::{civil_to_micros, decimal_seconds_to_micros, float_seconds_to_micros, micros_to_millis};
use super::{AdapterError, Context, InputFormat};
use crate::flow::{proto, tcp_flag, ConnState, Flow};

const JSON: InputFormat = InputFormat::ZeekConnJson;
const TSV: InputFormat = InputFormat::ZeekConnTsv;

/// `conn.log`'s columns in Zeek's default order, for TSV lines that arrive without a header.
pub(crate) const DEFAULT_FIELDS: [&str; 21] = [
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
];

/// The columns a field list must name for a line to become a flow.
const REQUIRED: [&str; 5] = ["ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"];

/// A record of either writer, with Zeek's types already read.
#[derive(Default)]
struct Conn {
    ts_micros: Option<i64>,
    duration_micros: Option<i64>,
    orig_h: Option<String>,
    orig_p: Option<u64>,
    resp_h: Option<String>,
    resp_p: Option<u64>,
    proto: Option<String>,
    ip_proto: Option<u64>,
    service: Option<String>,
    conn_state: Option<String>,
    history: Option<String>,
    orig_bytes: Option<u64>,
    resp_bytes: Option<u64>,
    orig_pkts: Option<u64>,
    resp_pkts: Option<u64>,
    orig_ip_bytes: Option<u64>,
    resp_ip_bytes: Option<u64>,
}

/// Zeek's JSON writer: flat dotted names (`id.orig_h`) by default; a nested `id` object is also read.
#[derive(Debug, Deserialize)]
pub(crate) struct JsonConn {
    ts: Option<JsonTime>,
    #[serde(rename = "id.orig_h")]
    orig_h: Option<String>,
    #[serde(rename = "id.orig_p")]
    orig_p: Option<u64>,
    #[serde(rename = "id.resp_h")]
    resp_h: Option<String>,
    #[serde(rename = "id.resp_p")]
    resp_p: Option<u64>,
    id: Option<JsonId>,
    proto: Option<String>,
    ip_proto: Option<u64>,
    service: Option<String>,
    duration: Option<f64>,
    orig_bytes: Option<u64>,
    resp_bytes: Option<u64>,
    conn_state: Option<String>,
    history: Option<String>,
    orig_pkts: Option<u64>,
    resp_pkts: Option<u64>,
    orig_ip_bytes: Option<u64>,
    resp_ip_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct JsonId {
    orig_h: Option<String>,
    orig_p: Option<u64>,
    resp_h: Option<String>,
    resp_p: Option<u64>,
}

/// `ts` as epoch seconds (the default) or ISO 8601 text (`LogAscii::json_timestamps`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonTime {
    Seconds(f64),
    Text(String),
}

pub(crate) fn json_flow(context: &Context<'_>, record: JsonConn) -> Result<Option<Flow>, AdapterError> {
    let ts_micros = match &record.ts {
        Some(JsonTime::Seconds(seconds)) => Some(
            float_seconds_to_micros(*seconds)
                .ok_or_else(|| AdapterError::bad_field(JSON, "ts", seconds, "is not a time"))?,
        ),
        Some(JsonTime::Text(text)) => Some(
            civil_to_micros(text)
                .or_else(|| decimal_seconds_to_micros(text))
                .ok_or_else(|| AdapterError::bad_field(JSON, "ts", text, "is not a time"))?,
        ),
        None => None,
    };
    let duration_micros = match record.duration {
        Some(duration) => Some(
            float_seconds_to_micros(duration)
                .ok_or_else(|| AdapterError::bad_field(JSON, "duration", duration, "is not a duration"))?,
        ),
        None => None,
    };
    let (id_orig_h, id_orig_p, id_resp_h, id_resp_p) = match record.id {
        Some(id) => (id.orig_h, id.orig_p, id.resp_h, id.resp_p),
        None => (None, None, None, None),
    };
    let conn = Conn {
        ts_micros,
        duration_micros,
        orig_h: record.orig_h.or(id_orig_h),
        orig_p: record.orig_p.or(id_orig_p),
        resp_h: record.resp_h.or(id_resp_h),
        resp_p: record.resp_p.or(id_resp_p),
        proto: record.proto,
        ip_proto: record.ip_proto,
        service: record.service,
        conn_state: record.conn_state,
        history: record.history,
        orig_bytes: record.orig_bytes,
        resp_bytes: record.resp_bytes,
        orig_pkts: record.orig_pkts,
        resp_pkts: record.resp_pkts,
        orig_ip_bytes: record.orig_ip_bytes,
        resp_ip_bytes: record.resp_ip_bytes,
    };
    conn_flow(context, conn).map(Some)
}

/// Checks a configured field list: it must name the columns a flow needs.
pub(crate) fn check_fields(names: Vec<String>) -> Result<Vec<String>, AdapterError> {
    for required in REQUIRED {
        if !names.iter().any(|name| name == required) {
            return Err(AdapterError::BadHeader { format: TSV, reason: format!("the field list has no {required}") });
        }
    }
    Ok(names)
}

/// The TSV writer's header state, as far as one message has told it.
struct Header<'f> {
    separator: String,
    empty: String,
    unset: String,
    fields: Vec<&'f str>,
}

pub(crate) fn decode_tsv(
    context: &Context<'_>,
    default_fields: &[String],
    text: &str,
    out: &mut Vec<Flow>,
) -> Result<(), AdapterError> {
    let mut header = Header {
        separator: "\t".to_owned(),
        empty: "(empty)".to_owned(),
        unset: "-".to_owned(),
        fields: default_fields.iter().map(String::as_str).collect(),
    };
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(directive) = line.strip_prefix('#') {
            read_directive(&mut header, directive).map_err(|error| error.in_record(TSV, line_number))?;
            continue;
        }
        let conn = tsv_conn(&header, line).map_err(|error| error.in_record(TSV, line_number))?;
        let flow = conn_flow(context, conn).map_err(|error| error.in_record(TSV, line_number))?;
        context.push(flow, out).map_err(|error| error.in_record(TSV, line_number))?;
    }
    Ok(())
}

fn read_directive<'t>(header: &mut Header<'t>, directive: &'t str) -> Result<(), AdapterError> {
    // `#separator \x09` is itself space-separated; the others use the separator it names.
    if let Some(value) = directive.strip_prefix("separator ") {
        header.separator = unescape(value.trim());
        if header.separator.is_empty() {
            return Err(AdapterError::BadHeader { format: TSV, reason: "the separator is empty".to_owned() });
        }
        return Ok(());
    }
    let mut parts = directive.split(header.separator.as_str());
    let name = parts.next().unwrap_or_default();
    match name {
        "fields" => {
            let fields: Vec<&str> = parts.collect();
            for required in REQUIRED {
                if !fields.contains(&required) {
                    return Err(AdapterError::BadHeader { format: TSV, reason: format!("#fields has no {required}") });
                }
            }
            header.fields = fields;
        }
        "empty_field" => header.empty = parts.next().unwrap_or_default().to_owned(),
        "unset_field" => header.unset = parts.next().unwrap_or_default().to_owned(),
        "path" => {
            let path = parts.next().unwrap_or_default();
            if !path.starts_with("conn") {
                return Err(AdapterError::BadHeader { format: TSV, reason: format!("#path is {path:?}, not conn") });
            }
        }
        // #set_separator, #open, #close, #types, comments: nothing to keep.
        _ => {}
    }
    Ok(())
}

/// `\x09` → a tab, as Zeek escapes the separator in its header.
fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(position) = rest.find("\\x") {
        out.push_str(&rest[..position]);
        let hex = rest.get(position + 2..position + 4).and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match hex {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[position + 4..];
            }
            None => {
                out.push_str("\\x");
                rest = &rest[position + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn tsv_conn(header: &Header<'_>, line: &str) -> Result<Conn, AdapterError> {
    let mut conn = Conn::default();
    let mut columns = 0;
    for (name, value) in header.fields.iter().zip(line.split(header.separator.as_str())) {
        columns += 1;
        if value == header.unset {
            continue;
        }
        let value = if value == header.empty { "" } else { value };
        let number = |field: &'static str| {
            value.parse::<u64>().map_err(|_| AdapterError::bad_field(TSV, field, value, "is not a count"))
        };
        let seconds = |field: &'static str| {
            decimal_seconds_to_micros(value).ok_or_else(|| AdapterError::bad_field(TSV, field, value, "is not a time"))
        };
        match *name {
            "ts" => conn.ts_micros = Some(seconds("ts")?),
            "duration" => conn.duration_micros = Some(seconds("duration")?),
            "id.orig_h" => conn.orig_h = Some(value.to_owned()),
            "id.orig_p" => conn.orig_p = Some(number("id.orig_p")?),
            "id.resp_h" => conn.resp_h = Some(value.to_owned()),
            "id.resp_p" => conn.resp_p = Some(number("id.resp_p")?),
            "proto" => conn.proto = Some(value.to_owned()),
            "ip_proto" => conn.ip_proto = Some(number("ip_proto")?),
            "service" => conn.service = Some(value.to_owned()),
            "conn_state" => conn.conn_state = Some(value.to_owned()),
            "history" => conn.history = Some(value.to_owned()),
            "orig_bytes" => conn.orig_bytes = Some(number("orig_bytes")?),
            "resp_bytes" => conn.resp_bytes = Some(number("resp_bytes")?),
            "orig_pkts" => conn.orig_pkts = Some(number("orig_pkts")?),
            "resp_pkts" => conn.resp_pkts = Some(number("resp_pkts")?),
            "orig_ip_bytes" => conn.orig_ip_bytes = Some(number("orig_ip_bytes")?),
            "resp_ip_bytes" => conn.resp_ip_bytes = Some(number("resp_ip_bytes")?),
            _ => {}
        }
    }
    if columns < header.fields.len() {
        return Err(AdapterError::bad_field(
            TSV,
            "line",
            format!("{columns} columns"),
            "has fewer columns than the header names",
        ));
    }
    Ok(conn)
}

fn conn_flow(context: &Context<'_>, conn: Conn) -> Result<Flow, AdapterError> {
    let format = context.format;
    let start = fields::required(format, "ts", conn.ts_micros)?;
    let end = start.saturating_add(conn.duration_micros.unwrap_or(0).max(0));
    let src_addr = fields::address(format, "id.orig_h", &fields::required(format, "id.orig_h", conn.orig_h)?)?;
    let dst_addr = fields::address(format, "id.resp_h", &fields::required(format, "id.resp_h", conn.resp_h)?)?;
    let protocol = match (conn.ip_proto, conn.proto.as_deref()) {
        (Some(number), _) => u8::try_from(number)
            .map(i32::from)
            .map_err(|_| AdapterError::bad_field(format, "ip_proto", number, "is not an IP protocol"))?,
        // Zeek calls ICMPv6 "icmp" too; the address family tells them apart.
        (None, Some("icmp")) if dst_addr.contains(':') => proto::ICMPV6,
        (None, Some(name)) => fields::protocol_number(name).unwrap_or(0),
        (None, None) => 0,
    };
    let conn_state = match conn.conn_state.as_deref() {
        Some(state) => parse_state(state)
            .ok_or_else(|| AdapterError::bad_field(format, "conn_state", state, "is not a Zeek connection state"))?,
        None => ConnState::OTH,
    };
    let counter = |field: &'static str, value: Option<u64>| fields::count(format, field, value.unwrap_or(0));
    Ok(Flow {
        sensor_id: context.sensor_id(None),
        start_ms: micros_to_millis(start),
        end_ms: micros_to_millis(end),
        src_addr,
        src_port: fields::port(format, "id.orig_p", fields::required(format, "id.orig_p", conn.orig_p)?)?,
        dst_addr,
        dst_port: fields::port(format, "id.resp_p", fields::required(format, "id.resp_p", conn.resp_p)?)?,
        protocol,
        // IP-level bytes (what a packet sensor counts) when Zeek logged them, else payload bytes.
        bytes_out: counter("orig_ip_bytes", conn.orig_ip_bytes.or(conn.orig_bytes))?,
        bytes_in: counter("resp_ip_bytes", conn.resp_ip_bytes.or(conn.resp_bytes))?,
        packets_out: counter("orig_pkts", conn.orig_pkts)?,
        packets_in: counter("resp_pkts", conn.resp_pkts)?,
        tcp_flags: if protocol == proto::TCP { history_flags(conn.history.as_deref().unwrap_or("")) } else { 0 },
        conn_state,
        app_protocol: conn.service.filter(|service| !service.is_empty()),
        src_meta: None,
        dst_meta: None,
    })
}

fn parse_state(state: &str) -> Option<ConnState> {
    let state = match state {
        "S0" => ConnState::S0,
        "S1" => ConnState::S1,
        "SF" => ConnState::SF,
        "REJ" => ConnState::REJ,
        "S2" => ConnState::S2,
        "S3" => ConnState::S3,
        "RSTO" => ConnState::RSTO,
        "RSTR" => ConnState::RSTR,
        "RSTOS0" => ConnState::RSTOS0,
        "RSTRH" => ConnState::RSTRH,
        "SH" => ConnState::SH,
        "SHR" => ConnState::SHR,
        "OTH" => ConnState::OTH,
        _ => return None,
    };
    Some(state)
}

/// The TCP flags Zeek's `history` letters imply (either case: either direction).
fn history_flags(history: &str) -> i32 {
    history.chars().fold(0, |flags, letter| {
        flags
            | match letter.to_ascii_lowercase() {
                's' => tcp_flag::SYN,
                'h' => tcp_flag::SYN | tcp_flag::ACK,
                'a' => tcp_flag::ACK,
                'f' => tcp_flag::FIN,
                'r' => tcp_flag::RST,
                _ => 0,
            }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::adapters::Adapter;

    /// docs.zeek.org "conn.log" (zeek/zeek-docs logs/conn.rst): a DNS and an HTTP connection.
    const DOCS_JSON: &str = include_str!("../../../tests/data/zeek/conn.json");
    /// zeek/zeek-docs frameworks/tls-decryption.rst: one TLS connection, TSV with header.
    const DOCS_TSV: &str = include_str!("../../../tests/data/zeek/tls-decryption.conn.log");
    /// zeek/zeek's conn.log (2021): one DNS connection, TSV without the ip_proto column.
    const REPO_TSV: &str = include_str!("../../../tests/data/zeek/zeek-repo.conn.log");

    fn decode(adapter: &Adapter, text: &str) -> Result<Vec<Flow>, AdapterError> {
        let mut flows = Vec::new();
        adapter.decode(text.as_bytes(), &mut flows)?;
        Ok(flows)
    }

    #[test]
    fn documentation_json_maps_orig_to_out_and_resp_to_in() {
        let flows = decode(&Adapter::new(JSON).with_sensor_id("zeek-1"), DOCS_JSON).expect("decode");
        assert_eq!(flows.len(), 2);
        let dns = &flows[0];
        assert_eq!(dns.sensor_id, "zeek-1");
        assert_eq!(
            (dns.src_addr.as_str(), dns.src_port, dns.dst_addr.as_str(), dns.dst_port),
            ("192.168.4.76", 36844, "192.168.4.1", 53)
        );
        assert_eq!(dns.protocol, proto::UDP);
        // ts 1591367999.305988 + duration 0.06685185432434082 s.
        assert_eq!((dns.start_ms, dns.end_ms), (1_591_367_999_305, 1_591_367_999_372));
        assert_eq!((dns.bytes_out, dns.bytes_in, dns.packets_out, dns.packets_in), (118, 197, 2, 2));
        assert_eq!((dns.conn_state, dns.app_protocol.as_deref(), dns.tcp_flags), (ConnState::SF, Some("dns"), 0));
        let http = &flows[1];
        assert_eq!(
            (http.src_addr.as_str(), http.src_port, http.dst_addr.as_str(), http.dst_port),
            ("192.168.4.76", 46378, "31.3.245.133", 80)
        );
        assert_eq!((http.start_ms, http.end_ms), (1_591_367_999_430, 1_591_367_999_684));
        assert_eq!((http.bytes_out, http.bytes_in, http.packets_out, http.packets_in), (397, 511, 6, 4));
        assert_eq!((http.conn_state, http.app_protocol.as_deref()), (ConnState::SF, Some("http")));
        // History ShADadFf: SYN, SYN-ACK, ACK, FIN.
        assert_eq!(http.tcp_flags, tcp_flag::SYN | tcp_flag::ACK | tcp_flag::FIN);
    }

    #[test]
    fn each_json_line_is_its_own_message_too() {
        let adapter = Adapter::new(JSON);
        let whole = decode(&adapter, DOCS_JSON).expect("whole");
        let lines: Vec<Flow> = DOCS_JSON.lines().flat_map(|line| decode(&adapter, line).expect("line")).collect();
        assert_eq!(lines, whole);
        assert_eq!(whole[0].sensor_id, "zeek-conn-json");
    }

    #[test]
    fn documentation_tsv_with_header() {
        let flows = decode(&Adapter::new(TSV), DOCS_TSV).expect("decode");
        assert_eq!(flows.len(), 1);
        let tls = &flows[0];
        assert_eq!(
            (tls.src_addr.as_str(), tls.src_port, tls.dst_addr.as_str(), tls.dst_port),
            ("192.168.20.12", 60679, "193.99.144.85", 443)
        );
        assert_eq!((tls.start_ms, tls.end_ms), (1_646_150_638_631, 1_646_150_645_878));
        assert_eq!((tls.bytes_out, tls.bytes_in, tls.packets_out, tls.packets_in), (15961, 158_931, 98, 139));
        assert_eq!(
            (tls.protocol, tls.conn_state, tls.app_protocol.as_deref()),
            (proto::TCP, ConnState::SF, Some("http,ssl"))
        );
    }

    #[test]
    fn repository_tsv_and_its_header_less_lines() {
        let adapter = Adapter::new(TSV);
        let flows = decode(&adapter, REPO_TSV).expect("decode");
        assert_eq!(flows.len(), 1);
        let dns = &flows[0];
        assert_eq!(
            (dns.src_addr.as_str(), dns.src_port, dns.dst_addr.as_str(), dns.dst_port),
            ("192.168.1.99", 62978, "192.168.1.1", 53)
        );
        assert_eq!((dns.start_ms, dns.end_ms), (1_632_928_690_500, 1_632_928_690_528));
        assert_eq!((dns.bytes_out, dns.bytes_in, dns.packets_out, dns.packets_in), (83, 162, 1, 1));
        assert_eq!((dns.protocol, dns.conn_state), (proto::UDP, ConnState::SF));
        // The data line alone, read with the default column order, is the same flow.
        let data_line = REPO_TSV.lines().find(|line| !line.starts_with('#')).expect("data line");
        assert_eq!(decode(&adapter, data_line).expect("line"), flows);
    }

    #[test]
    fn a_header_from_another_log_or_a_short_line_is_refused() {
        let adapter = Adapter::new(TSV);
        let dns_log = "#separator \\x09\n#path\tdns\n";
        assert_eq!(decode(&adapter, dns_log).expect_err("dns").kind(), "bad_header");
        let short = REPO_TSV.replace("\t-\t-\t0\tDd\t1\t83\t1\t162\t-", "");
        let error = decode(&adapter, &short).expect_err("short");
        assert!(error.to_string().contains("record 9"), "{error}");
        assert_eq!(error.kind(), "bad_field");
        // Test-suite baselines mask the time; that is not a time.
        let masked = REPO_TSV.replace("1632928690.500620", "XXXXXXXXXX.XXXXXX");
        assert_eq!(decode(&adapter, &masked).expect_err("masked").kind(), "bad_field");
    }

    #[test]
    fn configured_fields_must_name_the_connection() {
        assert!(Adapter::new(TSV).with_fields("ts uid").is_err());
        let adapter =
            Adapter::new(TSV).with_fields("ts,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto").expect("fields");
        let flows = decode(&adapter, "1.5\t10.0.0.1\t1\t10.0.0.2\t2\ttcp").expect("decode");
        assert_eq!((flows[0].start_ms, flows[0].protocol, flows[0].conn_state), (1500, proto::TCP, ConnState::OTH));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(#?[a-z._]{0,8}[\t \\-]{0,2}[0-9.:]{0,12}\n?){0,12}") {
            let _ = decode(&Adapter::new(TSV), &text);
            let _ = decode(&Adapter::new(JSON), &text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut flows = Vec::new();
            let _ = Adapter::new(TSV).decode(&bytes, &mut flows);
            let _ = Adapter::new(JSON).decode(&bytes, &mut flows);
        }

        #[test]
        fn mutated_samples_never_panic(position in 0usize..700, byte in any::<u8>()) {
            for sample in [DOCS_JSON, DOCS_TSV, REPO_TSV] {
                let mut bytes = sample.as_bytes().to_vec();
                if let Some(slot) = bytes.get_mut(position % sample.len().max(1)) {
                    *slot = byte;
                }
                let mut flows = Vec::new();
                let _ = Adapter::new(TSV).decode(&bytes, &mut flows);
                let _ = Adapter::new(JSON).decode(&bytes, &mut flows);
            }
        }
    }
}
