//! Bytes on the Kafka topics ⇄ records: the pipeline decodes flows with a [`Decoder`] and the sinks
//! encode alerts and graph edges with an [`Encoder`]. Three framings share one code path: JSON, Avro
//! single-object encoding, and the Confluent schema-registry wire format, whose schema ids come from a
//! [`SchemaRegistry`] (or [`StaticSchemas`]).

mod binary;
mod decoder;
mod encoder;
mod error;
mod flow_reader;
mod lookup;
mod record;
mod registry;

#[cfg(test)]
mod compiled_tests;
#[cfg(test)]
mod fixtures;

use std::fmt;
use std::str::FromStr;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

pub use decoder::{CompiledReader, Decoder, MAX_AVRO_ALLOCATION_BYTES};
pub use encoder::Encoder;
pub use error::{DecodeError, EncodeError, ParseWireFormatError};
pub use lookup::{SchemaLookup, StaticSchemas};
pub use record::Record;
pub use registry::{RegistryConfig, RegistryError, SchemaRegistry, SubjectNameStrategy, REGISTRY_CONTENT_TYPE};

/// The two bytes that open an Avro single-object encoded message (the Avro specification's "magic").
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Single-object header length: the magic and the 8-byte little-endian schema fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// The byte that opens a Confluent-framed message.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// Confluent header length: the magic and the 4-byte big-endian schema registry id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// How a record is framed on a topic. Serialized (config files, CLI) as `json`, `avro`, `avro-confluent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireFormat {
    /// One JSON object per message, field names as in the Avro schemas.
    #[serde(rename = "json")]
    Json,
    /// Avro single-object encoding: `C3 01`, the writer schema's CRC-64-AVRO fingerprint (8 bytes,
    /// little-endian), then the binary datum. Self-describing without a registry.
    #[serde(rename = "avro")]
    AvroSingleObject,
    /// Confluent schema-registry framing: `00`, the schema id (4 bytes, big-endian), then the binary datum.
    #[serde(rename = "avro-confluent")]
    AvroConfluent,
}

impl WireFormat {
    /// Every format, in the order they are listed to users.
    pub const ALL: [WireFormat; 3] = [WireFormat::Json, WireFormat::AvroSingleObject, WireFormat::AvroConfluent];

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::Json => "json",
            WireFormat::AvroSingleObject => "avro",
            WireFormat::AvroConfluent => "avro-confluent",
        }
    }

    /// Which framing a message uses, from its first bytes: `C3 01` single object, `00` Confluent,
    /// `{` or JSON whitespace JSON. Only the first byte(s) are looked at; truncation is found later.
    pub fn detect(bytes: &[u8]) -> Result<WireFormat, DecodeError> {
        match bytes {
            [] => Err(DecodeError::Empty),
            [CONFLUENT_MAGIC, ..] => Ok(WireFormat::AvroConfluent),
            [0xC3, 0x01, ..] => Ok(WireFormat::AvroSingleObject),
            // A lone C3 is the start of a single-object header cut short.
            [0xC3] => Err(DecodeError::Truncated {
                format: WireFormat::AvroSingleObject,
                expected: SINGLE_OBJECT_HEADER_LEN,
                got: 1,
            }),
            [b'{' | b' ' | b'\t' | b'\n' | b'\r', ..] => Ok(WireFormat::Json),
            [first_byte, ..] => Err(DecodeError::UnknownFraming { first_byte: *first_byte }),
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WireFormat {
    type Err = ParseWireFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WireFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == s)
            .ok_or_else(|| ParseWireFormatError { given: s.to_owned() })
    }
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, as the Avro specification
/// defines it for single-object encoding. The header carries it little-endian.
pub fn rabin_fingerprint(schema: &Schema) -> u64 {
    let digest = schema.fingerprint::<Rabin>();
    let mut bytes = [0u8; 8];
    // Rabin is a 64-bit digest; copy defensively rather than index.
    for (dst, src) in bytes.iter_mut().zip(digest.bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_names_agree_across_serde_from_str_and_display() {
        for format in WireFormat::ALL {
            let json = serde_json::to_string(&format).expect("serialize");
            assert_eq!(json, format!("\"{}\"", format.as_str()));
            let back: WireFormat = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, format);
            assert_eq!(format.to_string().parse::<WireFormat>(), Ok(format));
        }
        assert_eq!("avro".parse::<WireFormat>(), Ok(WireFormat::AvroSingleObject));
        assert_eq!("avro-confluent".parse::<WireFormat>(), Ok(WireFormat::AvroConfluent));
    }

    #[test]
    fn unknown_wire_format_names_the_accepted_ones() {
        let err = "protobuf".parse::<WireFormat>().expect_err("not a format");
        let message = err.to_string();
        assert!(message.contains("protobuf") && message.contains("avro-confluent"), "{message}");
    }

    #[test]
    fn framing_is_detected_from_the_first_bytes() {
        let detect = |bytes: &[u8]| WireFormat::detect(bytes).map_err(|e| e.kind());
        assert_eq!(detect(b"{\"a\":1}"), Ok(WireFormat::Json));
        assert_eq!(detect(b"\n {}"), Ok(WireFormat::Json));
        assert_eq!(detect(&[0xC3, 0x01, 0, 0]), Ok(WireFormat::AvroSingleObject));
        assert_eq!(detect(&[0x00, 0, 0, 0, 1]), Ok(WireFormat::AvroConfluent));
        assert_eq!(detect(&[]), Err("empty"));
        assert_eq!(detect(&[0xC3]), Err("truncated_header"));
        assert_eq!(detect(&[0xC3, 0x02]), Err("unknown_framing"));
        assert_eq!(detect(b"[1]"), Err("unknown_framing"));
    }

    #[test]
    fn rabin_fingerprint_matches_the_avro_specification_test_vectors() {
        // From the Avro specification's reference implementation tests (schema-tests.txt).
        let null = Schema::parse_str(r#""null""#).expect("parse");
        assert_eq!(rabin_fingerprint(&null), 7195948357588979594);
        let int = Schema::parse_str(r#""int""#).expect("parse");
        assert_eq!(rabin_fingerprint(&int) as i64, 8247732601305521295);
    }
}
