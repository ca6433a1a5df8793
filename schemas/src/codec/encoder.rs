//! Records → message bytes, in the configured wire format. Used where peergraph produces: the alerts
//! and service-graph topics, and the demo's flow generator.

use std::fmt;
use std::marker::PhantomData;

use apache_avro::writer::datum::GenericDatumWriter;

use super::{EncodeError, Record, WireFormat, CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC};

/// Encodes records of type `T` in one wire format. Build it once and share it; `encode` appends to a
/// caller's buffer so a producer loop can reuse one allocation.
pub struct Encoder<T: Record> {
    format: WireFormat,
    schema_id: Option<u32>,
    /// Borrows `T::schema()`, which lives for the whole process; the schema's names are resolved here, once.
    writer: GenericDatumWriter<'static>,
    _record: PhantomData<fn(&T)>,
}

impl<T: Record> Encoder<T> {
    /// An encoder for `format`. [`WireFormat::AvroConfluent`] needs a schema id: use
    /// [`Encoder::confluent`]; here it is an [`EncodeError::MissingSchemaId`].
    pub fn new(format: WireFormat) -> Result<Self, EncodeError> {
        match format {
            WireFormat::AvroConfluent => Err(EncodeError::MissingSchemaId { schema: T::NAME }),
            WireFormat::Json | WireFormat::AvroSingleObject => Ok(Self::build(format, None)),
        }
    }

    /// An encoder for the Confluent wire format, stamping `schema_id` (the id `T::SCHEMA_JSON` is
    /// registered under) into every message.
    pub fn confluent(schema_id: u32) -> Self {
        Self::build(WireFormat::AvroConfluent, Some(schema_id))
    }

    fn build(format: WireFormat, schema_id: Option<u32>) -> Self {
        let writer = match GenericDatumWriter::builder(T::schema()).human_readable(false).build() {
            Ok(writer) => writer,
            // Only a schema with dangling or duplicate names fails here; the embedded ones are tested.
            Err(error) => panic!("the embedded {} schema does not resolve: {error}", T::NAME),
        };
        Self { format, schema_id, writer, _record: PhantomData }
    }

    /// The wire format written.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// The schema registry id written, for the Confluent format.
    pub fn schema_id(&self) -> Option<u32> {
        self.schema_id
    }

    /// Appends the framed `record` to `out`. On error `out` is left as it was.
    pub fn encode(&self, record: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.encode_unchecked(record, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// The framed `record` in a new buffer.
    pub fn encode_to_vec(&self, record: &T) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        self.encode(record, &mut out)?;
        Ok(out)
    }

    fn encode_unchecked(&self, record: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match (self.format, self.schema_id) {
            (WireFormat::Json, _) => {
                return serde_json::to_writer(&mut *out, record)
                    .map_err(|source| EncodeError::Json { schema: T::NAME, source });
            }
            (WireFormat::AvroSingleObject, _) => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&T::fingerprint().to_le_bytes());
            }
            (WireFormat::AvroConfluent, Some(schema_id)) => {
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
            (WireFormat::AvroConfluent, None) => return Err(EncodeError::MissingSchemaId { schema: T::NAME }),
        }
        self.writer.write_ser(out, record).map(drop).map_err(|source| EncodeError::Avro { schema: T::NAME, source })
    }
}

impl<T: Record> fmt::Debug for Encoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("record", &T::NAME)
            .field("format", &self.format)
            .field("schema_id", &self.schema_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::fixtures;
    use crate::{Flow, GraphEdge};

    #[test]
    fn single_object_header_is_magic_then_little_endian_fingerprint() {
        let bytes = Encoder::<Flow>::new(WireFormat::AvroSingleObject)
            .and_then(|encoder| encoder.encode_to_vec(&fixtures::flow()))
            .expect("encode");
        assert_eq!(bytes[..2], [0xC3, 0x01]);
        assert_eq!(bytes[2..10], Flow::fingerprint().to_le_bytes());
        // The same bytes apache-avro's own single-object header builder produces.
        let header = apache_avro::headers::RabinFingerprintHeader::from_schema(Flow::schema());
        assert_eq!(bytes[..10], apache_avro::headers::HeaderBuilder::build_header(&header)[..]);
    }

    #[test]
    fn confluent_header_is_zero_then_big_endian_schema_id() {
        let bytes = Encoder::<GraphEdge>::confluent(0x0102_0304).encode_to_vec(&fixtures::edge()).expect("encode");
        assert_eq!(bytes[..5], [0x00, 0x01, 0x02, 0x03, 0x04]);
        let single = Encoder::<GraphEdge>::new(WireFormat::AvroSingleObject).expect("encoder");
        let single = single.encode_to_vec(&fixtures::edge()).expect("encode");
        assert_eq!(bytes[5..], single[10..], "same datum under both framings");
    }

    #[test]
    fn confluent_without_schema_id_is_refused() {
        let err = Encoder::<Flow>::new(WireFormat::AvroConfluent).expect_err("no schema id");
        assert_eq!(err.kind(), "missing_schema_id");
        assert!(err.to_string().contains("io.peergraph.Flow"), "{err}");
    }

    #[test]
    fn encode_appends_to_the_callers_buffer() {
        let encoder = Encoder::<Flow>::new(WireFormat::Json).expect("encoder");
        let mut out = b"prefix".to_vec();
        encoder.encode(&fixtures::flow(), &mut out).expect("encode");
        encoder.encode(&fixtures::bare_flow(), &mut out).expect("encode");
        assert!(out.starts_with(b"prefix{"));
        let first = encoder.encode_to_vec(&fixtures::flow()).expect("encode");
        let second = encoder.encode_to_vec(&fixtures::bare_flow()).expect("encode");
        assert_eq!(out, [&b"prefix"[..], &first, &second].concat());
    }
}
