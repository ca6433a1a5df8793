//! What can go wrong turning records into bytes and back. Every error has a stable `kind()` so the
//! pipeline can count dropped messages per cause without parsing messages.

use super::WireFormat;

/// A record could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The Confluent framing was chosen without a schema registry id.
    #[error("the avro-confluent wire format needs the schema registry id of {schema}; configure one")]
    MissingSchemaId {
        /// The record's Avro full name.
        schema: &'static str,
    },
    /// The record does not fit its Avro schema (a bug: the schema and the Rust type disagree).
    #[error("could not encode {schema} as Avro: {source}")]
    Avro {
        /// The record's Avro full name.
        schema: &'static str,
        /// What apache-avro reported.
        #[source]
        source: apache_avro::Error,
    },
    /// The record could not be written as JSON.
    #[error("could not encode {schema} as JSON: {source}")]
    Json {
        /// The record's Avro full name.
        schema: &'static str,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
}

impl EncodeError {
    /// A short stable name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            EncodeError::MissingSchemaId { .. } => "missing_schema_id",
            EncodeError::Avro { .. } => "avro",
            EncodeError::Json { .. } => "json",
        }
    }
}

/// A message could not be decoded into a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message has no bytes (a Kafka tombstone, or an empty value).
    #[error("empty message")]
    Empty,
    /// The first byte matches none of the framings.
    #[error(
        "unknown framing: first byte 0x{first_byte:02x} is neither Avro single-object (0xc3 0x01), \
         Confluent (0x00) nor JSON ('{{')"
    )]
    UnknownFraming {
        /// The message's first byte.
        first_byte: u8,
    },
    /// The message ends inside its framing header.
    #[error("truncated {format} header: need {expected} bytes, message has {got}")]
    Truncated {
        /// The framing the first bytes announced.
        format: WireFormat,
        /// Header length of that framing.
        expected: usize,
        /// Length of the message.
        got: usize,
    },
    /// A single-object message names a writer schema this decoder does not know.
    #[error(
        "single-object fingerprint {fingerprint} is neither {schema}'s ({own}) nor a registered writer schema's; \
         add the producer's schema with Decoder::with_writer_schema"
    )]
    UnknownFingerprint {
        /// The message's writer schema fingerprint, hex.
        fingerprint: String,
        /// The record type the decoder reads.
        schema: &'static str,
        /// That record type's own fingerprint, hex.
        own: String,
    },
    /// A Confluent message names a schema id the lookup does not have.
    #[error("schema id {id} not found in {looked_up_in}; register the writer schema or configure the registry")]
    UnknownSchemaId {
        /// The schema registry id in the message.
        id: u32,
        /// Where it was looked up ("the static schemas (ids 1, 2)", "the registry at http://…").
        looked_up_in: String,
    },
    /// The schema lookup failed for another reason (registry unreachable, bad response).
    #[error("could not look up schema id {id}: {reason}")]
    SchemaLookup {
        /// The schema registry id in the message.
        id: u32,
        /// What went wrong, for humans.
        reason: String,
    },
    /// The writer schema cannot be read as the reader's schema by Avro schema resolution.
    #[error("writer schema ({writer}) cannot be resolved into {reader}: {reason}")]
    IncompatibleSchema {
        /// Which writer schema: "schema id 17 (io.peergraph.Flow)", "fingerprint 0123…".
        writer: String,
        /// The record type the decoder reads.
        reader: &'static str,
        /// Why, from the schema compatibility check.
        reason: String,
    },
    /// The Avro datum ends before the writer schema is satisfied.
    #[error("truncated {schema} Avro datum: {source}")]
    TruncatedDatum {
        /// The record type the decoder reads.
        schema: &'static str,
        /// What apache-avro reported.
        #[source]
        source: apache_avro::Error,
    },
    /// The Avro datum does not match the writer schema (bad union index, enum index, UTF-8, length…).
    #[error("malformed {schema} Avro datum: {source}")]
    Avro {
        /// The record type the decoder reads.
        schema: &'static str,
        /// What apache-avro reported.
        #[source]
        source: apache_avro::Error,
    },
    /// The datum decoded but bytes are left over: most likely the wrong writer schema.
    #[error("{remaining} bytes left after the {schema} Avro datum; was it written with another schema?")]
    TrailingBytes {
        /// The record type the decoder reads.
        schema: &'static str,
        /// How many bytes were not consumed.
        remaining: usize,
    },
    /// The JSON is not valid, or not a valid record (missing field, wrong type, unknown enum symbol).
    #[error("malformed {schema} JSON: {source}")]
    Json {
        /// The record type the decoder reads.
        schema: &'static str,
        /// What serde_json reported (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// apache-avro panicked on this input; caught so one message cannot take the pipeline down.
    #[error("the Avro decoder panicked on a {schema} message: {message}")]
    Panicked {
        /// The record type the decoder reads.
        schema: &'static str,
        /// The panic message.
        message: String,
    },
}

impl DecodeError {
    /// A short stable name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFraming { .. } => "unknown_framing",
            DecodeError::Truncated { .. } => "truncated_header",
            DecodeError::UnknownFingerprint { .. } => "unknown_fingerprint",
            DecodeError::UnknownSchemaId { .. } => "unknown_schema_id",
            DecodeError::SchemaLookup { .. } => "schema_lookup_failed",
            DecodeError::IncompatibleSchema { .. } => "incompatible_schema",
            DecodeError::TruncatedDatum { .. } => "truncated_datum",
            DecodeError::Avro { .. } => "malformed_avro",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::Json { .. } => "malformed_json",
            DecodeError::Panicked { .. } => "decoder_panic",
        }
    }

    /// Classifies an apache-avro error: running out of input is truncation, anything else is malformed.
    pub(crate) fn from_avro(schema: &'static str, source: apache_avro::Error) -> DecodeError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::UnexpectedEof {
                    return DecodeError::TruncatedDatum { schema, source };
                }
            }
            cause = error.source();
        }
        DecodeError::Avro { schema, source }
    }
}

/// A wire format name that is none of `json`, `avro`, `avro-confluent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown wire format {given:?}; expected one of \"json\", \"avro\", \"avro-confluent\"")]
pub struct ParseWireFormatError {
    /// What was given.
    pub given: String,
}
