//! Message bytes → records, whatever the framing: the first step of the pipeline's per-message work.
//! Writer schemas other than the record's own are resolved into it with Avro schema resolution; the
//! state for that is built once per fingerprint or schema id and cached.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, PoisonError, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::{GenericSingleObjectReader, Schema};

use super::{
    rabin_fingerprint, DecodeError, Record, SchemaLookup, StaticSchemas, WireFormat, CONFLUENT_HEADER_LEN,
    SINGLE_OBJECT_HEADER_LEN,
};

/// The most apache-avro may allocate for one string, byte array or collection while decoding. Kafka
/// messages are far smaller, so a larger length prefix is malformed; the cap keeps a hostile length
/// from allocating gigabytes. apache-avro's setting is process-wide and fixed by its first use: the
/// first [`Decoder`] constructed sets it, unless Avro was decoded before.
pub const MAX_AVRO_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Reads datums of one writer schema straight into `T`, from a plan compiled once for that schema (see
/// [`Record::compile_reader`]). Must agree with apache-avro value for value and error kind for error kind.
pub trait CompiledReader<T>: Send + Sync + 'static {
    /// Reads one datum from the front of `datum`, advancing it past what was read.
    fn read(&self, datum: &mut &[u8]) -> Result<T, apache_avro::Error>;
}

/// Decodes records of type `T` from JSON, Avro single-object and Confluent-framed messages, detecting
/// the framing per message. Build one per record type and share it (`&Decoder` is enough; it is `Sync`).
pub struct Decoder<T: Record> {
    /// Reads datums written with `T::schema()` straight into `T` through serde: apache-avro's fast path.
    own: GenericDatumReader<'static>,
    /// `T::schema()`'s named types, for resolving values written with other schemas.
    own_names: ResolvedSchema<'static>,
    /// The plan for datums written with `T::schema()`.
    own_plan: WriterPlan<T>,
    /// Whether compiled readers are used where there is one (otherwise apache-avro reads everything).
    compiled: bool,
    lookup: Arc<dyn SchemaLookup>,
    by_fingerprint: HashMap<u64, Arc<WriterPlan<T>>>,
    by_id: RwLock<HashMap<u32, Arc<WriterPlan<T>>>>,
    _record: PhantomData<fn() -> T>,
}

/// How to read datums written with one writer schema, decided when the schema is first seen.
struct WriterPlan<T> {
    /// `T`'s own reader compiled for this writer schema, when it has one that can read it.
    compiled: Option<Box<dyn CompiledReader<T>>>,
    /// How apache-avro reads it: the fallback, and the reader of record.
    avro: AvroPlan,
}

enum AvroPlan {
    /// The writer schema is `T::schema()` (same canonical form): use the serde path.
    Own,
    /// Decode with the writer schema, then resolve into `T::schema()`.
    Resolve {
        /// A bare datum reader that owns its resolved writer schema. (`GenericDatumReader` borrows its
        /// schema, so it cannot be cached beside it; a single-object reader expecting an empty header
        /// owns it and reads a bare datum.)
        datum: GenericSingleObjectReader,
    },
    /// Avro schema resolution cannot read this writer schema as `T`.
    Incompatible {
        /// Which writer schema, for the error.
        writer: String,
        /// Why, from the compatibility check.
        reason: String,
    },
}

impl<T: Record> Decoder<T> {
    /// A decoder that finds the writer schemas of Confluent-framed messages with `lookup`.
    pub fn new(lookup: Arc<dyn SchemaLookup>) -> Self {
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
        let own = GenericDatumReader::builder(T::schema()).human_readable(false).build();
        let own_names = ResolvedSchema::new(T::schema());
        let (own, own_names) = match (own, own_names) {
            (Ok(own), Ok(own_names)) => (own, own_names),
            // Only a schema with dangling or duplicate names fails here; the embedded ones are tested.
            (Err(error), _) | (_, Err(error)) => panic!("the embedded {} schema does not resolve: {error}", T::NAME),
        };
        Self {
            own,
            own_names,
            own_plan: WriterPlan { compiled: T::compile_reader(T::schema()), avro: AvroPlan::Own },
            compiled: true,
            lookup,
            by_fingerprint: HashMap::new(),
            by_id: RwLock::new(HashMap::new()),
            _record: PhantomData,
        }
    }

    /// Whether to read with `T`'s compiled reader where it has one (the default), or with apache-avro only:
    /// for benchmarks and for checking the two agree.
    pub fn with_compiled_readers(mut self, enabled: bool) -> Self {
        self.compiled = enabled;
        self
    }

    /// Whether this decoder uses compiled readers for the writer schemas it knows (a given
    /// Confluent schema id still falls back to apache-avro when its plan cannot be compiled).
    pub fn uses_compiled_reader(&self) -> bool {
        self.compiled && self.own_plan.compiled.is_some()
    }

    /// Also reads single-object messages written with `schema` (an older or newer version of
    /// `T`'s schema, identified by its fingerprint). Fails if `schema` cannot be resolved into `T`'s.
    pub fn with_writer_schema(mut self, schema: impl Into<Arc<Schema>>) -> Result<Self, DecodeError> {
        let schema = schema.into();
        let fingerprint = rabin_fingerprint(&schema);
        let plan = Self::plan(&schema, fingerprint, || format!("fingerprint {fingerprint:#018x}"));
        if let AvroPlan::Incompatible { writer, reason } = plan.avro {
            return Err(DecodeError::IncompatibleSchema { writer, reader: T::NAME, reason });
        }
        self.by_fingerprint.insert(fingerprint, Arc::new(plan));
        Ok(self)
    }

    /// Decodes one message. Never panics: any input that is not a valid `T` is a [`DecodeError`].
    pub fn decode(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        match WireFormat::detect(bytes)? {
            WireFormat::Json => {
                serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { schema: T::NAME, source })
            }
            WireFormat::AvroSingleObject => {
                let (header, datum) = split_header::<SINGLE_OBJECT_HEADER_LEN>(bytes, WireFormat::AvroSingleObject)?;
                let [_, _, fingerprint @ ..] = *header;
                let fingerprint = u64::from_le_bytes(fingerprint);
                if fingerprint == T::fingerprint() {
                    return self.read(&self.own_plan, datum);
                }
                match self.by_fingerprint.get(&fingerprint) {
                    Some(plan) => self.read(plan, datum),
                    None => Err(DecodeError::UnknownFingerprint {
                        fingerprint: format!("{fingerprint:#018x}"),
                        schema: T::NAME,
                        own: format!("{:#018x}", T::fingerprint()),
                    }),
                }
            }
            WireFormat::AvroConfluent => {
                let (header, datum) = split_header::<CONFLUENT_HEADER_LEN>(bytes, WireFormat::AvroConfluent)?;
                let [_, id @ ..] = *header;
                let plan = self.plan_for_id(u32::from_be_bytes(id))?;
                self.read(&plan, datum)
            }
        }
    }

    /// The cached plan for a Confluent schema id, looking the schema up on first sight.
    fn plan_for_id(&self, id: u32) -> Result<Arc<WriterPlan<T>>, DecodeError> {
        // The maps are only ever inserted into whole, so a panic elsewhere cannot leave them inconsistent.
        if let Some(plan) = self.by_id.read().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Arc::clone(plan));
        }
        // Lookup errors are not cached: a registry that was unreachable may answer next time.
        let schema = self.lookup.writer_schema(id)?;
        let plan = Arc::new(Self::plan(&schema, rabin_fingerprint(&schema), || format!("schema id {id}")));
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(by_id.entry(id).or_insert(plan)))
    }

    /// Resolves `writer` against `T::schema()` once: the compiled reader when `T` has one for it, and
    /// apache-avro's way of reading it.
    fn plan(writer: &Schema, fingerprint: u64, describe: impl FnOnce() -> String) -> WriterPlan<T> {
        if fingerprint == T::fingerprint() {
            return WriterPlan { compiled: T::compile_reader(writer), avro: AvroPlan::Own };
        }
        let describe = || match writer.name() {
            Some(name) => format!("{} ({})", describe(), name.fullname(None)),
            None => describe(),
        };
        let incompatible =
            |reason: String| WriterPlan { compiled: None, avro: AvroPlan::Incompatible { writer: describe(), reason } };
        if let Err(error) = SchemaCompatibility::can_read(writer, T::schema()) {
            return incompatible(error.to_string());
        }
        let datum = GenericSingleObjectReader::builder()
            .schema(writer.clone())
            .header(Vec::new())
            .human_readable(false)
            .build();
        match datum {
            Ok(datum) => WriterPlan { compiled: T::compile_reader(writer), avro: AvroPlan::Resolve { datum } },
            Err(error) => incompatible(error.to_string()),
        }
    }

    fn read(&self, plan: &WriterPlan<T>, datum: &[u8]) -> Result<T, DecodeError> {
        let mut rest = datum;
        let record = match (&plan.compiled, &plan.avro) {
            // The compiled reader is total (bounds-checked, no indexing), so it needs no panic guard.
            (Some(compiled), _) if self.compiled => {
                compiled.read(&mut rest).map_err(|error| DecodeError::from_avro(T::NAME, error))
            }
            (_, AvroPlan::Own) => Self::guarded(|| self.own.read_deser::<T>(&mut rest)),
            (_, AvroPlan::Resolve { datum }) => Self::guarded(|| {
                let written = datum.read_value(&mut rest)?;
                let resolved = written.resolve_with_names(T::schema(), self.own_names.get_names())?;
                apache_avro::from_value::<T>(&resolved)
            }),
            (_, AvroPlan::Incompatible { writer, reason }) => {
                return Err(DecodeError::IncompatibleSchema {
                    writer: writer.clone(),
                    reader: T::NAME,
                    reason: reason.clone(),
                })
            }
        }?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { schema: T::NAME, remaining: rest.len() });
        }
        Ok(record)
    }

    /// Runs apache-avro, turning its errors and, should there be one, its panic into a [`DecodeError`].
    fn guarded<R>(decode: impl FnOnce() -> Result<R, apache_avro::Error>) -> Result<R, DecodeError> {
        // Unwind safety: `decode` only reads shared state, and the input cursor is discarded on error.
        match panic::catch_unwind(AssertUnwindSafe(decode)) {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(error)) => Err(DecodeError::from_avro(T::NAME, error)),
            Err(payload) => {
                let message = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
                    (Some(message), _) => (*message).to_owned(),
                    (_, Some(message)) => message.clone(),
                    _ => "(no message)".to_owned(),
                };
                Err(DecodeError::Panicked { schema: T::NAME, message })
            }
        }
    }
}

fn split_header<const N: usize>(bytes: &[u8], format: WireFormat) -> Result<(&[u8; N], &[u8]), DecodeError> {
    bytes.split_first_chunk::<N>().ok_or(DecodeError::Truncated { format, expected: N, got: bytes.len() })
}

/// A decoder without a schema registry: Confluent-framed messages are [`DecodeError::UnknownSchemaId`].
impl<T: Record> Default for Decoder<T> {
    fn default() -> Self {
        Self::new(Arc::new(StaticSchemas::new()))
    }
}

impl<T: Record> fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fingerprints: Vec<String> = self.by_fingerprint.keys().map(|fp| format!("{fp:#018x}")).collect();
        fingerprints.sort();
        let mut ids: Vec<u32> = self.by_id.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("Decoder")
            .field("record", &T::NAME)
            .field("writer_fingerprints", &fingerprints)
            .field("cached_schema_ids", &ids)
            .field("compiled_readers", &self.compiled)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::LazyLock;

    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{fixtures, Encoder};
    use crate::{Alert, Flow, GraphEdge};

    const OWN_ID: u32 = 42;

    fn decoder<T: Record>() -> Decoder<T> {
        Decoder::new(Arc::new(StaticSchemas::new().with_record::<T>(OWN_ID)))
    }

    fn encoder<T: Record>(format: WireFormat) -> Encoder<T> {
        match format {
            WireFormat::AvroConfluent => Encoder::confluent(OWN_ID),
            other => Encoder::new(other).expect("encoder"),
        }
    }

    fn encode<T: Record>(format: WireFormat, record: &T) -> Vec<u8> {
        encoder::<T>(format).encode_to_vec(record).expect("encode")
    }

    fn error_kind<T: Record + fmt::Debug>(decoder: &Decoder<T>, bytes: &[u8]) -> &'static str {
        match decoder.decode(bytes) {
            Ok(record) => panic!("decoded {bytes:02x?} into {record:?}"),
            Err(error) => error.kind(),
        }
    }

    fn assert_round_trips<T: Record + PartialEq + fmt::Debug>(records: &[T]) {
        // One decoder for every framing: it must tell them apart by itself.
        let decoder = decoder::<T>();
        for format in WireFormat::ALL {
            for record in records {
                let bytes = encode(format, record);
                match decoder.decode(&bytes) {
                    Ok(decoded) => assert_eq!(&decoded, record, "{format}"),
                    Err(error) => panic!("{format}: {error}\nbytes: {bytes:02x?}"),
                }
            }
        }
    }

    #[test]
    fn flows_round_trip_in_every_format() {
        assert_round_trips(&[fixtures::flow(), fixtures::bare_flow()]);
    }

    #[test]
    fn alerts_round_trip_in_every_format() {
        let mut cleared = fixtures::alert();
        cleared.event = crate::AlertEvent::Cleared;
        cleared.peer_group = None;
        cleared.evidence.clear();
        cleared.techniques.clear();
        assert_round_trips(&[fixtures::alert(), cleared]);
    }

    #[test]
    fn graph_edges_round_trip_in_every_format() {
        let mut present = fixtures::edge();
        present.present = true;
        present.level = crate::EdgeLevel::Entity;
        assert_round_trips(&[fixtures::edge(), present]);
    }

    #[test]
    fn json_uses_the_avro_field_names_and_symbols() {
        let json: serde_json::Value =
            serde_json::from_slice(&encode(WireFormat::Json, &fixtures::flow())).expect("json");
        assert_eq!(json["conn_state"], "SF");
        assert_eq!(json["src_meta"]["labels"]["app"], "web");
        let json: serde_json::Value =
            serde_json::from_slice(&encode(WireFormat::Json, &fixtures::alert())).expect("json");
        assert_eq!((&json["event"], &json["severity"]), (&"updated".into(), &"high".into()));
    }

    #[test]
    fn json_may_omit_optional_fields() {
        let json = r#" {"sensor_id":"s","start_ms":1,"end_ms":2,"src_addr":"::1","src_port":1,"dst_addr":"::2",
            "dst_port":2,"protocol":17,"bytes_out":0,"bytes_in":0,"packets_out":1,"packets_in":0,"tcp_flags":0,
            "conn_state":"S0","src_meta":{"pod":"p"}}"#;
        let flow = decoder::<Flow>().decode(json.as_bytes()).expect("decode");
        assert_eq!((flow.app_protocol, flow.dst_meta), (None, None));
        assert_eq!(flow.src_meta.map(|meta| (meta.pod, meta.labels.len())), Some((Some("p".into()), 0)));
    }

    #[test]
    fn empty_message_is_empty() {
        assert_eq!(error_kind(&decoder::<Flow>(), b""), "empty");
    }

    #[test]
    fn truncated_headers_are_truncated_header() {
        let decoder = decoder::<Flow>();
        let single = encode(WireFormat::AvroSingleObject, &fixtures::flow());
        for len in 1..SINGLE_OBJECT_HEADER_LEN {
            assert_eq!(error_kind(&decoder, &single[..len]), "truncated_header", "{len} bytes");
        }
        let confluent = encode(WireFormat::AvroConfluent, &fixtures::flow());
        for len in 1..CONFLUENT_HEADER_LEN {
            assert_eq!(error_kind(&decoder, &confluent[..len]), "truncated_header", "{len} bytes");
        }
        let err = decoder.decode(&confluent[..3]).expect_err("truncated");
        assert_eq!(err.to_string(), "truncated avro-confluent header: need 5 bytes, message has 3");
    }

    #[test]
    fn every_truncation_of_a_datum_is_truncated_datum() {
        let decoder = decoder::<Flow>();
        for format in [WireFormat::AvroSingleObject, WireFormat::AvroConfluent] {
            let bytes = encode(format, &fixtures::flow());
            let header =
                if format == WireFormat::AvroConfluent { CONFLUENT_HEADER_LEN } else { SINGLE_OBJECT_HEADER_LEN };
            for len in header..bytes.len() {
                assert_eq!(
                    error_kind(&decoder, &bytes[..len]),
                    "truncated_datum",
                    "{format}, {len} of {} bytes",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_datum_are_trailing_bytes() {
        let mut bytes = encode(WireFormat::AvroSingleObject, &fixtures::flow());
        bytes.extend_from_slice(b"xy");
        let err = decoder::<Flow>().decode(&bytes).expect_err("trailing");
        assert_eq!(err.kind(), "trailing_bytes");
        assert!(err.to_string().starts_with("2 bytes left after the io.peergraph.Flow Avro datum"), "{err}");
    }

    #[test]
    fn unframed_bytes_are_unknown_framing() {
        let decoder = decoder::<Flow>();
        for bytes in [&b"\x07garbage"[..], b"SF,10.0.0.1", b"\xc3\x02abcdefghij", b"[]", &[0xff; 64]] {
            assert_eq!(error_kind(&decoder, bytes), "unknown_framing", "{bytes:02x?}");
        }
        let err = decoder.decode(b"\x07garbage").expect_err("garbage");
        assert!(err.to_string().contains("first byte 0x07"), "{err}");
    }

    #[test]
    fn random_bytes_after_a_valid_header_are_malformed_or_truncated() {
        let decoder = decoder::<Flow>();
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&Flow::fingerprint().to_le_bytes());
        // A sensor_id of length 3, a start_ms, then an end_ms varint longer than a 64-bit one can be.
        bytes.extend_from_slice(&[
            0x06, b'a', b'b', b'c', 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(error_kind(&decoder, &bytes), "malformed_avro");
    }

    #[test]
    fn huge_length_prefixes_are_refused_without_allocating() {
        let decoder = decoder::<Flow>();
        let header = encode(WireFormat::AvroSingleObject, &fixtures::flow())[..SINGLE_OBJECT_HEADER_LEN].to_vec();
        // sensor_id claims 2^62 bytes: over the allocation cap, refused before allocating.
        let mut huge = header.clone();
        huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        let err = decoder.decode(&huge).expect_err("huge length");
        assert_eq!(err.kind(), "malformed_avro", "{err}");
        // A negative length.
        let mut negative = header.clone();
        negative.push(0x01);
        assert_eq!(error_kind(&decoder, &negative), "malformed_avro");
        // 1 MiB claimed, three bytes present: within the cap, so it is a truncated datum.
        let mut long = header;
        long.extend_from_slice(&[0x80, 0x80, 0x80, 0x01, b'a', b'b', b'c']);
        assert_eq!(error_kind(&decoder, &long), "truncated_datum");
    }

    #[test]
    fn out_of_range_enum_and_union_indexes_are_malformed_avro() {
        let decoder = decoder::<Flow>();
        let bytes = encode(WireFormat::AvroSingleObject, &fixtures::bare_flow());
        // The bare flow ends with conn_state (enum index 12 = OTH, zigzag 0x18) and three null unions (0x00).
        assert_eq!(bytes[bytes.len() - 4..], [0x18, 0x00, 0x00, 0x00]);
        let mut bad_enum = bytes.clone();
        let at = bad_enum.len() - 4;
        bad_enum[at] = 0x1a; // index 13
        assert_eq!(error_kind(&decoder, &bad_enum), "malformed_avro");
        let mut bad_union = bytes;
        let last = bad_union.len() - 1;
        bad_union[last] = 0x04; // branch 2 of ["null", EndpointMeta]
        assert_eq!(error_kind(&decoder, &bad_union), "malformed_avro");
    }

    #[test]
    fn unknown_fingerprint_is_reported_in_hex_with_the_fix() {
        let decoder = decoder::<Flow>();
        let mut bytes = encode(WireFormat::AvroSingleObject, &fixtures::flow());
        let wrong = Flow::fingerprint() ^ 0xdead_beef;
        bytes[2..SINGLE_OBJECT_HEADER_LEN].copy_from_slice(&wrong.to_le_bytes());
        let err = decoder.decode(&bytes).expect_err("wrong fingerprint");
        assert_eq!(err.kind(), "unknown_fingerprint");
        let message = err.to_string();
        assert!(message.contains(&format!("{wrong:#018x}")) && message.contains("with_writer_schema"), "{message}");
        // Another record type's fingerprint is just as unknown.
        let edge = encode(WireFormat::AvroSingleObject, &fixtures::edge());
        assert_eq!(error_kind(&decoder, &edge), "unknown_fingerprint");
    }

    #[test]
    fn unknown_schema_id_is_unknown_schema_id() {
        let decoder = decoder::<Flow>();
        let bytes = Encoder::<Flow>::confluent(7).encode_to_vec(&fixtures::flow()).expect("encode");
        let err = decoder.decode(&bytes).expect_err("unknown id");
        assert_eq!(err.kind(), "unknown_schema_id");
        assert!(err.to_string().starts_with("schema id 7 not found in the static schemas (ids 42)"), "{err}");
        assert_eq!(error_kind(&Decoder::<Flow>::default(), &bytes), "unknown_schema_id");
    }

    #[test]
    fn json_missing_field_is_malformed_json_naming_the_field() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&encode(WireFormat::Json, &fixtures::flow())).expect("json");
        json.as_object_mut().expect("object").remove("dst_port");
        let bytes = serde_json::to_vec(&json).expect("json");
        let err = decoder::<Flow>().decode(&bytes).expect_err("missing field");
        assert_eq!(err.kind(), "malformed_json");
        assert!(err.to_string().contains("missing field `dst_port`"), "{err}");
        assert_eq!(error_kind(&decoder::<Flow>(), b"{\"sensor_id\": "), "malformed_json");
        assert_eq!(error_kind(&decoder::<Flow>(), b"{} trailing"), "malformed_json");
    }

    /// `T`'s schema with the named field dropped, or with extra fields appended.
    fn flow_schema_edited(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(Flow::SCHEMA_JSON).expect("json");
        let fields = json["fields"].as_array_mut().expect("fields");
        edit(fields);
        Schema::parse(&json).expect("edited schema parses")
    }

    /// The datum of `value` (a `Flow` as an Avro value, edited to fit) under `writer`.
    fn datum_with(writer: &Schema, value: Value) -> Vec<u8> {
        let value = value.resolve(writer).expect("value fits the writer schema");
        GenericDatumWriter::builder(writer)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .expect("encode with writer schema")
    }

    fn without_field(value: Value, name: &str) -> Value {
        match value {
            Value::Record(fields) => Value::Record(fields.into_iter().filter(|(field, _)| field != name).collect()),
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn writer_without_an_optional_field_resolves_to_its_default() {
        let writer = flow_schema_edited(|fields| fields.retain(|field| field["name"] != "app_protocol"));
        let flow = fixtures::flow();
        let datum = datum_with(&writer, without_field(apache_avro::to_value(&flow).expect("to_value"), "app_protocol"));
        let expected = Flow { app_protocol: None, ..flow };

        // Single-object: the writer schema is given to the decoder up front.
        let mut single = vec![0xC3, 0x01];
        single.extend_from_slice(&rabin_fingerprint(&writer).to_le_bytes());
        single.extend_from_slice(&datum);
        assert_eq!(error_kind(&decoder::<Flow>(), &single), "unknown_fingerprint");
        let decoder = decoder::<Flow>().with_writer_schema(writer.clone()).expect("compatible");
        assert_eq!(decoder.decode(&single).expect("decode"), expected);

        // Confluent: the writer schema comes from the lookup.
        let decoder = Decoder::<Flow>::new(Arc::new(StaticSchemas::new().with_schema(9, writer)));
        let mut confluent = vec![0x00, 0, 0, 0, 9];
        confluent.extend_from_slice(&datum);
        assert_eq!(decoder.decode(&confluent).expect("decode"), expected);
        // The reader's own messages still take the fast path beside it.
        let own = encode(WireFormat::AvroSingleObject, &fixtures::flow());
        assert_eq!(decoder.decode(&own).expect("decode"), fixtures::flow());
    }

    #[test]
    fn writer_with_an_extra_field_is_read_without_it() {
        let writer = flow_schema_edited(|fields| {
            fields.insert(3, serde_json::json!({"name": "vlan", "type": "int"}));
        });
        let flow = fixtures::flow();
        let mut value = apache_avro::to_value(&flow).expect("to_value");
        if let Value::Record(fields) = &mut value {
            fields.insert(3, ("vlan".into(), Value::Int(120)));
        }
        let mut bytes = vec![0x00, 0, 0, 0, 3];
        bytes.extend_from_slice(&datum_with(&writer, value));
        let decoder = Decoder::<Flow>::new(Arc::new(StaticSchemas::new().with_schema(3, writer)));
        assert_eq!(decoder.decode(&bytes).expect("decode"), flow);
    }

    #[test]
    fn incompatible_writer_schema_is_refused_up_front_and_per_message() {
        // A required field the reader has no default for is missing from the writer.
        let writer = flow_schema_edited(|fields| fields.retain(|field| field["name"] != "sensor_id"));
        let err = decoder::<Flow>().with_writer_schema(writer.clone()).expect_err("incompatible");
        assert_eq!(err.kind(), "incompatible_schema");
        assert!(err.to_string().contains("sensor_id"), "{err}");

        let decoder = Decoder::<Flow>::new(Arc::new(StaticSchemas::new().with_schema(5, writer)));
        let bytes = [0x00, 0, 0, 0, 5, 0x00];
        for _ in 0..2 {
            let err = decoder.decode(&bytes).expect_err("incompatible");
            assert_eq!(err.kind(), "incompatible_schema");
            assert!(err.to_string().starts_with("writer schema (schema id 5 (io.peergraph.Flow))"), "{err}");
        }
    }

    /// Counts lookups, to prove the decoder asks once per schema id.
    struct CountingLookup {
        inner: StaticSchemas,
        calls: AtomicUsize,
    }

    impl SchemaLookup for CountingLookup {
        fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.writer_schema(id)
        }
    }

    #[test]
    fn writer_schemas_are_looked_up_once_per_id() {
        let evolved = flow_schema_edited(|fields| fields.retain(|field| field["name"] != "app_protocol"));
        let lookup = Arc::new(CountingLookup {
            inner: StaticSchemas::new().with_record::<Flow>(OWN_ID).with_schema(9, evolved.clone()),
            calls: AtomicUsize::new(0),
        });
        let decoder = Decoder::<Flow>::new(lookup.clone());
        let own = encode(WireFormat::AvroConfluent, &fixtures::flow());
        let mut old = vec![0x00, 0, 0, 0, 9];
        let value = without_field(apache_avro::to_value(fixtures::flow()).expect("to_value"), "app_protocol");
        old.extend_from_slice(&datum_with(&evolved, value));
        for _ in 0..100 {
            decoder.decode(&own).expect("own");
            decoder.decode(&old).expect("old");
            assert_eq!(error_kind(&decoder, &[0x00, 0, 0, 0, 1, 0]), "unknown_schema_id");
        }
        // Two successful lookups cached; the unknown id is asked each time (it may be registered later).
        assert_eq!(lookup.calls.load(Ordering::Relaxed), 2 + 100);
    }

    #[test]
    fn codec_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Decoder<Flow>>();
        assert_send_sync::<Decoder<Alert>>();
        assert_send_sync::<Encoder<GraphEdge>>();
        assert_send_sync::<DecodeError>();
        assert_send_sync::<crate::codec::EncodeError>();
    }

    /// Flow's schema without its three optional fields, so random datums also take the resolving path.
    static OLD_FLOW_SCHEMA: LazyLock<Schema> = LazyLock::new(|| flow_schema_edited(|fields| fields.truncate(14)));
    const OLD_ID: u32 = 41;

    /// One decoder for all property-test cases, knowing the own and the old Flow schema by id and fingerprint.
    static FLOW_DECODER: LazyLock<Decoder<Flow>> = LazyLock::new(|| {
        let lookup = StaticSchemas::new().with_record::<Flow>(OWN_ID).with_schema(OLD_ID, OLD_FLOW_SCHEMA.clone());
        Decoder::new(Arc::new(lookup)).with_writer_schema(OLD_FLOW_SCHEMA.clone()).expect("compatible")
    });

    #[test]
    fn a_panic_inside_apache_avro_is_a_decode_error() {
        let result = Decoder::<Flow>::guarded::<Flow>(|| panic!("index out of bounds"));
        match result {
            Err(error) => {
                assert_eq!(error.kind(), "decoder_panic");
                assert!(error.to_string().ends_with("index out of bounds"), "{error}");
            }
            Ok(flow) => panic!("decoded {flow:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let decoder = &*FLOW_DECODER;
            let single = |fingerprint: u64| [&[0xC3, 0x01][..], &fingerprint.to_le_bytes()].concat();
            for header in [
                Vec::new(),
                single(Flow::fingerprint()),
                single(rabin_fingerprint(&OLD_FLOW_SCHEMA)),
                OWN_ID.to_be_bytes().to_vec(),
                [&[0x00][..], &OWN_ID.to_be_bytes()].concat(),
                [&[0x00][..], &OLD_ID.to_be_bytes()].concat(),
                b"{".to_vec(),
            ] {
                let _ = decoder.decode(&[&header[..], &bytes].concat());
            }
            let _ = Decoder::<Alert>::default().decode(&bytes);
            let _ = Decoder::<GraphEdge>::default().decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic_the_decoder(
            format in prop::sample::select(WireFormat::ALL.to_vec()),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let decoder = &*FLOW_DECODER;
            let mut bytes = encode(format, &fixtures::flow());
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decoder.decode(&bytes);
            let _ = decoder.decode(&bytes[..cut.index(bytes.len())]);
        }

        #[test]
        fn random_flows_round_trip_in_every_format(flow in fixtures::flow_strategy()) {
            let decoder = &*FLOW_DECODER;
            for format in WireFormat::ALL {
                let bytes = encode(format, &flow);
                let decoded = decoder.decode(&bytes);
                prop_assert!(decoded.is_ok(), "{}: {:?}", format, decoded.err().map(|e| e.to_string()));
                prop_assert_eq!(decoded.ok(), Some(flow.clone()), "{}", format);
            }
        }
    }
}
