//! Sensor formats → [`Flow`]: the first step of the pipeline's per-message work when a flows topic
//! carries what an existing sensor publishes (goflow2, Zeek, Suricata, Hubble, AWS VPC Flow Logs,
//! pmacct) instead of peergraph's own records. One [`Adapter`] per topic, chosen by [`InputFormat`].
//!
//! Every adapter appends 0..n flows per message, each of which passes [`Flow::validate`]; a message
//! that cannot be read is an [`AdapterError`] and appends nothing. No adapter panics on any input
//! (each has a property test and a cargo-fuzz target). The field mappings and the direction and
//! connection-state choices are documented in `docs/inputs.md`.

mod aws_vpc;
mod fields;
mod goflow2;
mod hubble;
mod pmacct;
mod suricata;
mod time;
mod zeek;

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Decoder};
use crate::flow::{Flow, InvalidFlow};

pub use goflow2::FlowMessage as Goflow2FlowMessage;

/// What a flows topic carries. Serialized (config files, CLI) in kebab case: `peergraph`,
/// `goflow2-json`, `goflow2-protobuf`, `zeek-conn-json`, `zeek-conn-tsv`, `suricata-eve`, `hubble`,
/// `aws-vpc`, `pmacct-json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// peergraph's own `Flow` records in any wire format the codec reads (JSON, Avro single-object,
    /// Confluent-framed Avro).
    Peergraph,
    /// goflow2's JSON output (`-format=json`), one or more objects per message.
    Goflow2Json,
    /// goflow2's protobuf output (`-format=bin`): `FlowMessage`s, varint length-delimited (goflow2's
    /// default) or a single bare message.
    Goflow2Protobuf,
    /// Zeek `conn.log` written as JSON (`LogAscii::use_json`, the Kafka plugin), one or more objects.
    ZeekConnJson,
    /// Zeek `conn.log` in its tab-separated form, with or without the `#fields` header.
    ZeekConnTsv,
    /// Suricata EVE JSON; `flow` events become flows, every other event type is skipped.
    SuricataEve,
    /// Cilium Hubble flows as `hubble observe -o json` and the Hubble exporter write them.
    Hubble,
    /// AWS VPC Flow Logs records, versions 2 to 5, default or custom (header-defined) format.
    AwsVpc,
    /// pmacct's JSON output (print and kafka plugins; pmacctd, nfacctd, sfacctd).
    PmacctJson,
}

impl InputFormat {
    /// How far behind the newest record of its partition a record of this format can arrive when
    /// its sensor works as designed: the default of `time.allowed_lateness` for the format. A
    /// sensor writes a flow when the flow ends, or when its state times out (Zeek's TCP inactivity
    /// timeout is 5 min, so a connection idle until it expired is written minutes after shorter
    /// ones that ended later); exporters flush on their inactive timeout (NetFlow / IPFIX via
    /// goflow2 or pmacct: seconds to a minute); VPC flow logs aggregate over up to 10 min.
    /// peergraph's own sensor and Hubble emit as flows end.
    pub fn typical_lateness(self) -> std::time::Duration {
        use std::time::Duration;
        match self {
            InputFormat::Peergraph | InputFormat::Hubble => Duration::from_secs(5),
            InputFormat::Goflow2Json | InputFormat::Goflow2Protobuf | InputFormat::PmacctJson => {
                Duration::from_secs(60)
            }
            InputFormat::ZeekConnJson | InputFormat::ZeekConnTsv | InputFormat::SuricataEve => Duration::from_secs(300),
            InputFormat::AwsVpc => Duration::from_secs(600),
        }
    }

    /// Every format, in the order they are listed to users.
    pub const ALL: [InputFormat; 9] = [
        InputFormat::Peergraph,
        InputFormat::Goflow2Json,
        InputFormat::Goflow2Protobuf,
        InputFormat::ZeekConnJson,
        InputFormat::ZeekConnTsv,
        InputFormat::SuricataEve,
        InputFormat::Hubble,
        InputFormat::AwsVpc,
        InputFormat::PmacctJson,
    ];

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Peergraph => "peergraph",
            InputFormat::Goflow2Json => "goflow2-json",
            InputFormat::Goflow2Protobuf => "goflow2-protobuf",
            InputFormat::ZeekConnJson => "zeek-conn-json",
            InputFormat::ZeekConnTsv => "zeek-conn-tsv",
            InputFormat::SuricataEve => "suricata-eve",
            InputFormat::Hubble => "hubble",
            InputFormat::AwsVpc => "aws-vpc",
            InputFormat::PmacctJson => "pmacct-json",
        }
    }

    /// Whether the sensor reports both directions of a conversation in one record. Records of
    /// unidirectional formats become flows with `bytes_in = packets_in = 0`.
    pub fn is_bidirectional(self) -> bool {
        matches!(
            self,
            InputFormat::Peergraph
                | InputFormat::ZeekConnJson
                | InputFormat::ZeekConnTsv
                | InputFormat::SuricataEve
                | InputFormat::Hubble
        )
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is none of [`InputFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown input format {given:?}; expected one of: {}", InputFormat::ALL.map(InputFormat::as_str).join(", "))]
pub struct ParseInputFormatError {
    /// What was given.
    pub given: String,
}

impl FromStr for InputFormat {
    type Err = ParseInputFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == s)
            .ok_or_else(|| ParseInputFormatError { given: s.to_owned() })
    }
}

/// A message that could not be turned into flows. Every variant has a stable [`kind`](Self::kind)
/// for metric labels; the message names the format, the record and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The message has no bytes (a Kafka tombstone, or an empty value).
    #[error("empty message")]
    Empty,
    /// A text format's message is not UTF-8.
    #[error("{format} message is not UTF-8 text: {source}")]
    NotUtf8 {
        /// The configured format.
        format: InputFormat,
        /// Where the bytes stop being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A JSON format's message (or one of its records) is not JSON of the expected shape.
    #[error("{format} message is not the expected JSON: {source}")]
    Json {
        /// The configured format.
        format: InputFormat,
        /// What serde_json reported (line and column included).
        #[source]
        source: serde_json::Error,
    },
    /// A goflow2 protobuf message does not decode as a `FlowMessage`.
    #[error("goflow2-protobuf message does not decode as a goflow2 FlowMessage: {source}")]
    Protobuf {
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
    /// A native peergraph message could not be decoded (see [`DecodeError`]).
    #[error(transparent)]
    Native(#[from] DecodeError),
    /// A record lacks a field the mapping needs.
    #[error("{format} record has no {field}")]
    MissingField {
        /// The configured format.
        format: InputFormat,
        /// The sensor's name of the field.
        field: &'static str,
    },
    /// A record's field has a value the mapping cannot use.
    #[error("{format} field {field} = {value:?} {reason}")]
    BadField {
        /// The configured format.
        format: InputFormat,
        /// The sensor's name of the field.
        field: &'static str,
        /// The value, as written (truncated to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header (Zeek `#fields`, an AWS custom-format line, a configured field list) is unusable.
    #[error("{format} header is unusable: {reason}")]
    BadHeader {
        /// The configured format.
        format: InputFormat,
        /// What is wrong with it.
        reason: String,
    },
    /// The record maps to a flow that fails [`Flow::validate`].
    #[error("{format} record maps to an invalid flow: {source}")]
    InvalidFlow {
        /// The configured format.
        format: InputFormat,
        /// Which check failed.
        #[source]
        source: InvalidFlow,
    },
    /// The error is in the given record of a message holding several (1-based: line for text
    /// formats, object for JSON streams, message for delimited protobuf).
    #[error("{format} record {record}: {source}")]
    Record {
        /// The configured format.
        format: InputFormat,
        /// Which record, from 1.
        record: usize,
        /// What went wrong with it.
        #[source]
        source: Box<AdapterError>,
    },
}

impl AdapterError {
    /// A short stable name for metric labels. A [`Record`](Self::Record) error has its cause's kind;
    /// native decode errors and invalid flows keep the codec's and [`InvalidFlow`]'s kinds.
    pub fn kind(&self) -> &'static str {
        match self {
            AdapterError::Empty => "empty",
            AdapterError::NotUtf8 { .. } => "not_utf8",
            AdapterError::Json { .. } => "json",
            AdapterError::Protobuf { .. } => "protobuf",
            AdapterError::Native(error) => error.kind(),
            AdapterError::MissingField { .. } => "missing_field",
            AdapterError::BadField { .. } => "bad_field",
            AdapterError::BadHeader { .. } => "bad_header",
            AdapterError::InvalidFlow { source, .. } => source.kind(),
            AdapterError::Record { source, .. } => source.kind(),
        }
    }

    pub(crate) fn bad_field(
        format: InputFormat,
        field: &'static str,
        value: impl fmt::Display,
        reason: &'static str,
    ) -> AdapterError {
        let mut value = value.to_string();
        if let Some((cut, _)) = value.char_indices().nth(64) {
            value.truncate(cut);
            value.push('…');
        }
        AdapterError::BadField { format, field, value, reason }
    }

    fn in_record(self, format: InputFormat, record: usize) -> AdapterError {
        AdapterError::Record { format, record, source: Box::new(self) }
    }
}

/// Turns one sensor format's messages into flows. Build one per topic and share it (`&Adapter` is
/// enough; it is `Send + Sync`).
pub struct Adapter {
    format: InputFormat,
    sensor_id: Option<String>,
    native: Decoder<Flow>,
    zeek_fields: Vec<String>,
    aws_fields: Vec<String>,
}

impl Adapter {
    /// An adapter for `format` with the format's defaults: no configured sensor id, Zeek TSV lines
    /// without a header read in `conn.log`'s default column order, AWS records without a header
    /// read in the default (version 2) format, native Confluent-framed messages without a registry.
    pub fn new(format: InputFormat) -> Self {
        Self {
            format,
            sensor_id: None,
            native: Decoder::default(),
            zeek_fields: zeek::DEFAULT_FIELDS.iter().map(|field| (*field).to_owned()).collect(),
            aws_fields: aws_vpc::DEFAULT_FIELDS.iter().map(|field| (*field).to_owned()).collect(),
        }
    }

    /// A [`InputFormat::Peergraph`] adapter that decodes with `decoder` (e.g. one backed by the
    /// schema registry).
    pub fn native(decoder: Decoder<Flow>) -> Self {
        Self { native: decoder, ..Self::new(InputFormat::Peergraph) }
    }

    /// Sets the `sensor_id` of every flow this adapter produces, overriding what records carry
    /// (goflow2's and pmacct's exporter address, Hubble's node name, Suricata's host, the AWS
    /// interface id). Without it, a record's own identity is used, else the format's name.
    /// Ignored by [`InputFormat::Peergraph`], whose records name their sensor themselves.
    pub fn with_sensor_id(mut self, sensor_id: impl Into<String>) -> Self {
        self.sensor_id = Some(sensor_id.into());
        self
    }

    /// The column order of header-less records: Zeek TSV field names (`ts uid id.orig_h ...`) or an
    /// AWS VPC Flow Logs custom format (`version account-id interface-id srcaddr ...`, the
    /// `${field}` spelling of the AWS console is accepted). Names may be separated by spaces or
    /// commas. A header inside a message still wins for that message. Other formats ignore it.
    pub fn with_fields(mut self, fields: &str) -> Result<Self, AdapterError> {
        let names: Vec<String> = fields
            .split(|c: char| c.is_whitespace() || c == ',')
            .map(|name| name.trim_start_matches("${").trim_end_matches('}'))
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        match self.format {
            InputFormat::ZeekConnTsv => self.zeek_fields = zeek::check_fields(names)?,
            InputFormat::AwsVpc => self.aws_fields = aws_vpc::check_fields(names)?,
            _ => {}
        }
        Ok(self)
    }

    /// The format this adapter reads.
    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// Appends the flows in one message to `out` and returns how many. On error nothing is
    /// appended (`out` is left as it was). Never panics.
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<Flow>) -> Result<usize, AdapterError> {
        if bytes.is_empty() {
            return Err(AdapterError::Empty);
        }
        let before = out.len();
        match self.decode_into(bytes, out) {
            Ok(()) => Ok(out.len() - before),
            Err(error) => {
                out.truncate(before);
                Err(error)
            }
        }
    }

    fn decode_into(&self, bytes: &[u8], out: &mut Vec<Flow>) -> Result<(), AdapterError> {
        let context = Context { format: self.format, sensor_id: self.sensor_id.as_deref() };
        match self.format {
            InputFormat::Peergraph => {
                let flow = self.native.decode(bytes)?;
                context.push(flow, out)
            }
            InputFormat::Goflow2Json => json_stream(&context, bytes, out, goflow2::json_flow),
            InputFormat::Goflow2Protobuf => goflow2::decode_protobuf(&context, bytes, out),
            InputFormat::ZeekConnJson => json_stream(&context, bytes, out, zeek::json_flow),
            InputFormat::ZeekConnTsv => zeek::decode_tsv(&context, &self.zeek_fields, text(&context, bytes)?, out),
            InputFormat::SuricataEve => json_stream(&context, bytes, out, suricata::eve_flow),
            InputFormat::Hubble => json_stream(&context, bytes, out, hubble::hubble_flow),
            InputFormat::AwsVpc => aws_vpc::decode(&context, &self.aws_fields, text(&context, bytes)?, out),
            InputFormat::PmacctJson => json_stream(&context, bytes, out, pmacct::json_flow),
        }
    }
}

impl fmt::Debug for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter")
            .field("format", &self.format)
            .field("sensor_id", &self.sensor_id)
            .finish_non_exhaustive()
    }
}

/// What every mapping needs to know besides the record.
pub(crate) struct Context<'a> {
    pub(crate) format: InputFormat,
    sensor_id: Option<&'a str>,
}

impl Context<'_> {
    /// The flow's sensor id: the configured one, else the record's own, else the format's name.
    pub(crate) fn sensor_id(&self, from_record: Option<&str>) -> String {
        match (self.sensor_id, from_record.map(str::trim).filter(|id| !id.is_empty())) {
            (Some(configured), _) => configured.to_owned(),
            (None, Some(record)) => record.to_owned(),
            (None, None) => self.format.as_str().to_owned(),
        }
    }

    /// Validates and appends one flow.
    pub(crate) fn push(&self, flow: Flow, out: &mut Vec<Flow>) -> Result<(), AdapterError> {
        flow.validate().map_err(|source| AdapterError::InvalidFlow { format: self.format, source })?;
        out.push(flow);
        Ok(())
    }
}

fn text<'b>(context: &Context<'_>, bytes: &'b [u8]) -> Result<&'b str, AdapterError> {
    std::str::from_utf8(bytes).map_err(|source| AdapterError::NotUtf8 { format: context.format, source })
}

/// Reads a stream of JSON values (one object, NDJSON, or pretty-printed objects back to back) and
/// maps each; a mapping returns `None` for a record that is not a flow (skipped, not an error).
fn json_stream<T: DeserializeOwned>(
    context: &Context<'_>,
    bytes: &[u8],
    out: &mut Vec<Flow>,
    map: fn(&Context<'_>, T) -> Result<Option<Flow>, AdapterError>,
) -> Result<(), AdapterError> {
    let format = context.format;
    let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    for (index, value) in stream.enumerate() {
        let record = index + 1;
        let value = value.map_err(|source| AdapterError::Json { format, source }.in_record(format, record))?;
        if let Some(flow) = map(context, value).map_err(|error| error.in_record(format, record))? {
            context.push(flow, out).map_err(|error| error.in_record(format, record))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{Encoder, WireFormat};

    fn native_flow() -> Flow {
        Flow {
            sensor_id: "tap-1".into(),
            start_ms: 1_000,
            end_ms: 2_000,
            src_addr: "10.0.0.1".into(),
            src_port: 40_000,
            dst_addr: "10.0.0.2".into(),
            dst_port: 443,
            protocol: 6,
            bytes_out: 1,
            bytes_in: 2,
            packets_out: 1,
            packets_in: 1,
            tcp_flags: 0x12,
            conn_state: crate::ConnState::SF,
            app_protocol: None,
            src_meta: None,
            dst_meta: None,
        }
    }

    #[test]
    fn format_names_agree_across_serde_from_str_and_display() {
        for format in InputFormat::ALL {
            let json = serde_json::to_string(&format).expect("serialize");
            assert_eq!(json, format!("\"{}\"", format.as_str()));
            let back: InputFormat = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, format);
            assert_eq!(format.to_string().parse::<InputFormat>(), Ok(format));
        }
        assert_eq!("zeek-conn-json".parse::<InputFormat>(), Ok(InputFormat::ZeekConnJson));
        let error = "netflow".parse::<InputFormat>().expect_err("not a format");
        assert!(error.to_string().contains("goflow2-protobuf"), "{error}");
    }

    #[test]
    fn native_records_pass_through_in_every_wire_format() {
        let adapter = Adapter::new(InputFormat::Peergraph).with_sensor_id("ignored");
        for wire in [WireFormat::Json, WireFormat::AvroSingleObject] {
            let bytes = Encoder::<Flow>::new(wire).expect("encoder").encode_to_vec(&native_flow()).expect("encode");
            let mut flows = vec![native_flow()];
            assert_eq!(adapter.decode(&bytes, &mut flows).expect("decode"), 1);
            assert_eq!(flows, [native_flow(), native_flow()], "{wire}");
        }
    }

    #[test]
    fn a_failed_message_appends_nothing_and_says_why() {
        let mut flows = vec![native_flow()];
        let mut invalid = native_flow();
        invalid.end_ms = 0;
        let bytes = serde_json::to_vec(&invalid).expect("json");
        let error = Adapter::new(InputFormat::Peergraph).decode(&bytes, &mut flows).expect_err("invalid");
        assert_eq!((error.kind(), flows.len()), ("end_before_start", 1));
        // A Zeek log whose second line is broken: the first line's flow is not left behind.
        let two = "1.0\tu\t10.0.0.1\t1\t10.0.0.2\t2\ttcp\n2.0\tu\t10.0.0.1\t1\tnot-an-address\t2\ttcp\n";
        let adapter = Adapter::new(InputFormat::ZeekConnTsv)
            .with_fields("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto")
            .expect("fields");
        let error = adapter.decode(two.as_bytes(), &mut flows).expect_err("bad line");
        assert_eq!((error.kind(), flows.len()), ("bad_field", 1));
        assert!(error.to_string().starts_with("zeek-conn-tsv record 2: "), "{error}");
        assert_eq!(Adapter::new(InputFormat::Hubble).decode(&[], &mut flows).expect_err("empty").kind(), "empty");
        let not_utf8 = Adapter::new(InputFormat::AwsVpc).decode(&[0xff, 0xfe], &mut flows).expect_err("bytes");
        assert_eq!(not_utf8.kind(), "not_utf8");
    }

    #[test]
    fn adapters_are_shareable_across_workers() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Adapter>();
        assert_send_sync::<AdapterError>();
    }

    proptest! {
        /// Every adapter, arbitrary bytes: an error or valid flows, never a panic.
        #[test]
        fn no_adapter_panics_and_every_flow_is_valid(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for format in InputFormat::ALL {
                let mut flows = Vec::new();
                if adapter_decode(format, &bytes, &mut flows).is_ok() {
                    for flow in &flows {
                        prop_assert!(flow.validate().is_ok(), "{format}: {flow:?}");
                    }
                }
            }
        }

        /// JSON-shaped input reaches the mappings (arbitrary bytes rarely parse as JSON).
        #[test]
        fn json_shaped_input_never_panics(
            keys in proptest::collection::vec("(ts|id\\.orig_h|src_ip|flow|IP|l4|time|ip_src|bytes|proto|src_addr|event_type|timestamp_start)", 0..8),
            values in proptest::collection::vec("(-?[0-9]{1,20}(\\.[0-9]{1,8})?|\"[ -~]{0,24}\"|\\{\\}|\\[\\]|null|true)", 0..8),
        ) {
            let body: Vec<String> = keys.iter().zip(values.iter()).map(|(key, value)| format!("\"{key}\":{value}")).collect();
            let json = format!("{{{}}}", body.join(","));
            for format in InputFormat::ALL {
                let mut flows = Vec::new();
                let _ = adapter_decode(format, json.as_bytes(), &mut flows);
            }
        }
    }

    fn adapter_decode(format: InputFormat, bytes: &[u8], flows: &mut Vec<Flow>) -> Result<usize, AdapterError> {
        Adapter::new(format).decode(bytes, flows)
    }
}
