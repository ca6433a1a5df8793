//! The compiled `Flow` reader against apache-avro: random flows written by apache-avro's encoder with every
//! writer schema variant and framing decode to the same `Flow` through both, and corrupted or cut copies of
//! those bytes give the same error kind through both (or the same flow).
//!
//! The reference for a datum written with the reader's own schema is the decoder's apache-avro path itself
//! (its serde reader). For another writer schema the decoder's apache-avro path decodes to `Value`s and
//! resolves them, and that decoder reads past the end of a datum in places (a cut string reads as `null`, a
//! cut union as its first branch), so it accepts some truncated messages; the reference there is
//! apache-avro's serde reader over the writer schema, which matches Avro resolution for these variants
//! (fields added or removed with `null` / `{}` defaults, enum symbols reordered). Valid messages are checked
//! against both.

use std::sync::{Arc, LazyLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use proptest::prelude::*;

use super::{
    fixtures, rabin_fingerprint, DecodeError, Decoder, Encoder, Record, StaticSchemas, WireFormat,
    CONFLUENT_HEADER_LEN, SINGLE_OBJECT_HEADER_LEN,
};
use crate::{EndpointMeta, Flow};

const OWN_ID: u32 = 42;

/// A writer schema a producer may use, and how a flow's Avro value is edited to fit it.
struct Variant {
    name: &'static str,
    id: u32,
    schema: Schema,
    /// `Flow`'s value → the writer's value.
    edit: fn(Value, &Flow) -> Value,
    /// What a reader gets from a flow written this way (defaults for what the writer lacks).
    seen: fn(Flow) -> Flow,
}

fn schema_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Schema {
    let mut json: serde_json::Value = serde_json::from_str(Flow::SCHEMA_JSON).expect("json");
    edit(&mut json);
    Schema::parse(&json).expect("edited schema parses")
}

fn fields(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    json["fields"].as_array_mut().expect("fields")
}

fn record_fields(value: &mut Value) -> &mut Vec<(String, Value)> {
    match value {
        Value::Record(fields) => fields,
        Value::Union(_, inner) => record_fields(inner),
        other => panic!("not a record: {other:?}"),
    }
}

fn without(mut value: Value, names: &[&str]) -> Value {
    record_fields(&mut value).retain(|(name, _)| !names.contains(&name.as_str()));
    value
}

/// Every writer schema variant the codec accepts for `Flow`: the own schema, the registry tests' older
/// versions, an extra field, and one with extra fields of every kind, an edited nested record and the enum's
/// symbols reordered. (apache-avro's serde reader, the reference, cannot ignore extra enums or records:
/// those are checked separately.)
static VARIANTS: LazyLock<Vec<Variant>> = LazyLock::new(|| {
    vec![
        Variant { name: "own", id: OWN_ID, schema: Flow::schema().clone(), edit: |value, _| value, seen: |flow| flow },
        Variant {
            name: "without app_protocol",
            id: 9,
            schema: schema_edited(|json| fields(json).retain(|field| field["name"] != "app_protocol")),
            edit: |value, _| without(value, &["app_protocol"]),
            seen: |flow| Flow { app_protocol: None, ..flow },
        },
        Variant {
            name: "without the optional fields",
            id: 41,
            schema: schema_edited(|json| fields(json).truncate(14)),
            edit: |value, _| without(value, &["app_protocol", "src_meta", "dst_meta"]),
            seen: |flow| Flow { app_protocol: None, src_meta: None, dst_meta: None, ..flow },
        },
        Variant {
            name: "with an extra int",
            id: 3,
            schema: schema_edited(|json| fields(json).insert(3, serde_json::json!({"name": "vlan", "type": "int"}))),
            edit: |mut value, flow| {
                record_fields(&mut value).insert(3, ("vlan".into(), Value::Int(flow.src_port ^ flow.dst_port)));
                value
            },
            seen: |flow| flow,
        },
        Variant {
            name: "reshaped",
            id: 77,
            schema: reshaped_schema(),
            edit: reshape,
            seen: |flow| flow_without_digests(flow),
        },
    ]
});

fn reshaped_schema() -> Schema {
    schema_edited(|json| {
        let flow_fields = fields(json);
        let symbols = flow_fields[13]["type"]["symbols"].as_array_mut().expect("symbols");
        symbols.reverse();
        let meta = &mut flow_fields[15]["type"][1];
        let meta_fields = fields(meta);
        meta_fields.retain(|field| field["name"] != "image_digest");
        meta_fields.insert(0, serde_json::json!({"name": "uid", "type": "string"}));
        flow_fields.insert(0, serde_json::json!({"name": "cluster", "type": "string"}));
        flow_fields.push(serde_json::json!({"name": "counters", "type": {"type": "map", "values": "long"}}));
        flow_fields.push(serde_json::json!({"name": "ratio", "type": ["null", "double", "float"]}));
        flow_fields.push(serde_json::json!({"name": "seen", "type": "boolean"}));
        flow_fields.push(serde_json::json!({"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}}));
        flow_fields.push(serde_json::json!({
            "name": "zones",
            "type": ["null", {"type": "array", "items": {"type": "map", "values": "bytes"}}]
        }));
    })
}

fn reshape(mut value: Value, flow: &Flow) -> Value {
    let fields = record_fields(&mut value);
    for (name, field) in fields.iter_mut() {
        if name == "src_meta" || name == "dst_meta" {
            if let Value::Union(1, meta) = field {
                let meta_fields = record_fields(meta);
                meta_fields.retain(|(name, _)| name != "image_digest");
                meta_fields.insert(0, ("uid".into(), Value::String(flow.sensor_id.chars().rev().collect())));
            }
        }
    }
    fields.insert(0, ("cluster".into(), Value::String(flow.src_addr.clone())));
    let counters = [("out".to_owned(), Value::Long(flow.bytes_out)), ("in".to_owned(), Value::Long(flow.bytes_in))];
    fields.push(("counters".into(), Value::Map(counters.into_iter().take(flow.protocol as usize % 3).collect())));
    let ratio = match flow.tcp_flags % 3 {
        0 => Value::Union(0, Box::new(Value::Null)),
        1 => Value::Union(1, Box::new(Value::Double(flow.end_ms as f64))),
        _ => Value::Union(2, Box::new(Value::Float(flow.start_ms as f32))),
    };
    fields.push(("ratio".into(), ratio));
    fields.push(("seen".into(), Value::Boolean(flow.packets_in % 2 == 0)));
    fields.push(("hash".into(), Value::Fixed(4, flow.protocol.to_le_bytes().to_vec())));
    let zones = if flow.packets_out % 2 == 0 {
        Value::Union(0, Box::new(Value::Null))
    } else {
        let zone = |n: i32| {
            let racks = (0..n).map(|rack| (format!("rack-{rack}"), Value::Bytes(flow.dst_addr.as_bytes().to_vec())));
            Value::Map(racks.collect())
        };
        Value::Union(1, Box::new(Value::Array((0..flow.dst_port.rem_euclid(4)).map(zone).collect())))
    };
    fields.push(("zones".into(), zones));
    value
}

fn flow_without_digests(flow: Flow) -> Flow {
    let strip = |meta: Option<EndpointMeta>| meta.map(|meta| EndpointMeta { image_digest: None, ..meta });
    Flow { src_meta: strip(flow.src_meta), dst_meta: strip(flow.dst_meta), ..flow }
}

fn lookup() -> Arc<StaticSchemas> {
    let mut schemas = StaticSchemas::new();
    for variant in VARIANTS.iter() {
        schemas.insert(variant.id, variant.schema.clone());
    }
    Arc::new(schemas)
}

fn decoder_knowing_every_variant(compiled: bool) -> Decoder<Flow> {
    let mut decoder = Decoder::<Flow>::new(lookup()).with_compiled_readers(compiled);
    for variant in VARIANTS.iter().skip(1) {
        decoder = decoder.with_writer_schema(variant.schema.clone()).expect("compatible");
    }
    decoder
}

static COMPILED: LazyLock<Decoder<Flow>> = LazyLock::new(|| decoder_knowing_every_variant(true));
static APACHE_AVRO: LazyLock<Decoder<Flow>> = LazyLock::new(|| decoder_knowing_every_variant(false));

/// apache-avro's serde reader over each variant's writer schema (the reference for other writers).
static SERDE_READERS: LazyLock<Vec<GenericDatumReader<'static>>> = LazyLock::new(|| {
    VARIANTS
        .iter()
        .map(|variant| {
            let schema: &'static Schema = Box::leak(Box::new(variant.schema.clone()));
            GenericDatumReader::builder(schema).human_readable(false).build().expect("reader")
        })
        .collect()
});

/// The messages `flow` is written as with `variant`: every Avro framing (and JSON for the own schema).
fn messages(variant: &Variant, flow: &Flow) -> Vec<(WireFormat, Vec<u8>)> {
    if variant.id == OWN_ID {
        let mut messages = Vec::new();
        for format in WireFormat::ALL {
            let encoder = match format {
                WireFormat::AvroConfluent => Encoder::<Flow>::confluent(OWN_ID),
                other => Encoder::new(other).expect("encoder"),
            };
            messages.push((format, encoder.encode_to_vec(flow).expect("encode")));
        }
        return messages;
    }
    let value = (variant.edit)(apache_avro::to_value(flow).expect("to_value"), flow);
    let value = value.resolve(&variant.schema).unwrap_or_else(|error| panic!("{}: {error}", variant.name));
    let datum = GenericDatumWriter::builder(&variant.schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .expect("encode with the writer schema");
    let single = [&[0xC3, 0x01][..], &rabin_fingerprint(&variant.schema).to_le_bytes(), &datum].concat();
    let confluent = [&[0x00][..], &variant.id.to_be_bytes(), &datum].concat();
    vec![(WireFormat::AvroSingleObject, single), (WireFormat::AvroConfluent, confluent)]
}

/// What apache-avro makes of `bytes`, as the module documentation says.
fn reference(bytes: &[u8]) -> Result<Flow, DecodeError> {
    let variant = match WireFormat::detect(bytes) {
        Ok(WireFormat::AvroSingleObject) if bytes.len() >= SINGLE_OBJECT_HEADER_LEN => {
            let fingerprint = bytes[2..SINGLE_OBJECT_HEADER_LEN].try_into().map(u64::from_le_bytes).ok();
            VARIANTS.iter().position(|variant| Some(rabin_fingerprint(&variant.schema)) == fingerprint)
        }
        Ok(WireFormat::AvroConfluent) if bytes.len() >= CONFLUENT_HEADER_LEN => {
            let id = bytes[1..CONFLUENT_HEADER_LEN].try_into().map(u32::from_be_bytes).ok();
            VARIANTS.iter().position(|variant| Some(variant.id) == id)
        }
        _ => None,
    };
    let header = if bytes.first() == Some(&0) { CONFLUENT_HEADER_LEN } else { SINGLE_OBJECT_HEADER_LEN };
    match variant {
        Some(index) if VARIANTS[index].id != OWN_ID => {
            let mut datum = &bytes[header..];
            let flow = SERDE_READERS[index]
                .read_deser::<Flow>(&mut datum)
                .map_err(|error| DecodeError::from_avro(Flow::NAME, error))?;
            if !datum.is_empty() {
                return Err(DecodeError::TrailingBytes { schema: Flow::NAME, remaining: datum.len() });
            }
            Ok(flow)
        }
        // Framing errors, unknown writers, and the own schema: the decoder's apache-avro path.
        _ => APACHE_AVRO.decode(bytes),
    }
}

/// A byte written over a message's: any, or one of those that turn a varint, a length, an index or a boolean
/// into a neighbouring valid or invalid one.
fn corrupt_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        2 => any::<u8>(),
        1 => prop::sample::select(vec![0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x1a, 0x7f, 0x80, 0xff]),
    ]
}

fn outcome(result: Result<Flow, DecodeError>) -> Result<Flow, &'static str> {
    result.map_err(|error| error.kind())
}

#[test]
fn every_variant_is_read_by_a_compiled_reader() {
    assert!(COMPILED.uses_compiled_reader() && !APACHE_AVRO.uses_compiled_reader());
    for variant in VARIANTS.iter() {
        assert!(Flow::compile_reader(&variant.schema).is_some(), "{} does not compile", variant.name);
    }
}

#[test]
fn the_fixtures_decode_alike_in_every_variant_and_framing() {
    for variant in VARIANTS.iter() {
        for flow in [fixtures::flow(), fixtures::bare_flow()] {
            for (format, bytes) in messages(variant, &flow) {
                let expected = (variant.seen)(flow.clone());
                let context = format!("{} / {format}", variant.name);
                assert_eq!(outcome(COMPILED.decode(&bytes)), Ok(expected.clone()), "{context}");
                assert_eq!(outcome(APACHE_AVRO.decode(&bytes)), Ok(expected.clone()), "{context}");
                let reference = reference(&bytes).map_err(|error| error.to_string());
                assert_eq!(reference, Ok(expected), "{context}");
            }
        }
    }
}

/// The decoder's apache-avro path for other writer schemas reads a cut string as `null` and a cut union
/// as its first branch: here it takes a message cut before its last two fields for a flow without
/// metadata. The compiled reader refuses it, as apache-avro's serde reader does.
#[test]
fn a_cut_message_of_another_writer_is_truncated_though_apache_avros_resolution_takes_it() {
    let variant = &VARIANTS[1];
    let flow = fixtures::flow();
    let (_, bytes) = messages(variant, &Flow { src_meta: None, dst_meta: None, ..flow }).remove(1);
    let cut = &bytes[..bytes.len() - 2];
    assert!(APACHE_AVRO.decode(cut).is_ok(), "apache-avro's value path now refuses cut datums: simplify this test");
    assert_eq!(outcome(COMPILED.decode(cut)), Err("truncated_datum"));
    assert_eq!(outcome(reference(cut)), Err("truncated_datum"));
}

#[test]
fn extra_enum_and_record_fields_are_skipped_as_apache_avros_resolution_skips_them() {
    // apache-avro's serde reader cannot ignore an enum (serde's IgnoredAny asks for a newtype variant) or a
    // record (its field names only serve `deserialize_identifier`), so this writer is checked against the
    // decoder's apache-avro path only.
    let writer = schema_edited(|json| {
        let kind = serde_json::json!({"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]});
        fields(json).insert(1, serde_json::json!({"name": "kind", "type": kind}));
        let origin = serde_json::json!({"type": "record", "name": "Origin", "fields": [
            {"name": "zone", "type": "string"}, {"name": "rack", "type": ["null", "int"]}
        ]});
        fields(json).push(serde_json::json!({"name": "origin", "type": origin}));
    });
    let lookup = Arc::new(StaticSchemas::new().with_schema(5, writer.clone()));
    let compiled = Decoder::<Flow>::new(lookup.clone());
    let resolving = Decoder::<Flow>::new(lookup).with_compiled_readers(false);
    assert!(Flow::compile_reader(&writer).is_some());
    for (symbol, flow) in [(0, fixtures::flow()), (2, fixtures::bare_flow())] {
        let mut value = apache_avro::to_value(&flow).expect("to_value");
        let fields = record_fields(&mut value);
        fields.insert(1, ("kind".into(), Value::Enum(symbol, ["A", "B", "C"][symbol as usize].into())));
        let origin = vec![
            ("zone".into(), Value::String("eu-1".into())),
            ("rack".into(), Value::Union(1, Box::new(Value::Int(7)))),
        ];
        fields.push(("origin".into(), Value::Record(origin)));
        let datum = GenericDatumWriter::builder(&writer)
            .build()
            .and_then(|w| w.write_value_to_vec(value.resolve(&writer).expect("fits")))
            .expect("encode");
        let bytes = [&[0x00, 0, 0, 0, 5][..], &datum].concat();
        assert_eq!(outcome(compiled.decode(&bytes)), Ok(flow.clone()));
        assert_eq!(outcome(resolving.decode(&bytes)), Ok(flow));
        // Symbol 3 of 3.
        let mut bad = bytes.clone();
        bad[CONFLUENT_HEADER_LEN + 1 + bytes[CONFLUENT_HEADER_LEN] as usize / 2] = 0x06;
        assert_eq!(outcome(compiled.decode(&bad)), Err("malformed_avro"));
        assert_eq!(outcome(resolving.decode(&bad)), Err("malformed_avro"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_flows_decode_alike_in_every_variant_and_framing(flow in fixtures::flow_strategy()) {
        for variant in VARIANTS.iter() {
            let expected = (variant.seen)(flow.clone());
            for (format, bytes) in messages(variant, &flow) {
                let compiled = outcome(COMPILED.decode(&bytes));
                prop_assert_eq!(&compiled, &Ok(expected.clone()), "{} / {}", variant.name, format);
                prop_assert_eq!(&compiled, &outcome(APACHE_AVRO.decode(&bytes)), "{} / {}", variant.name, format);
                prop_assert_eq!(&compiled, &outcome(reference(&bytes)), "{} / {}", variant.name, format);
            }
        }
    }

    #[test]
    fn corrupted_and_cut_messages_fail_alike(
        flow in fixtures::flow_strategy(),
        variant in 0..5usize,
        framing in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), corrupt_byte()), 0..4),
        cut in any::<prop::sample::Index>(),
        cut_it in any::<bool>(),
    ) {
        let variant = &VARIANTS[variant];
        let messages = messages(variant, &flow);
        let (format, mut bytes) = messages[framing.index(messages.len())].clone();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if cut_it {
            bytes.truncate(cut.index(bytes.len()));
        }
        prop_assert_eq!(
            outcome(COMPILED.decode(&bytes)),
            outcome(reference(&bytes)),
            "{} / {}: {:02x?}", variant.name, format, bytes
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every cut of a message, not a random one: the cut points are where a reader most easily over-reads.
    #[test]
    fn every_cut_of_a_message_fails_alike(flow in fixtures::flow_strategy(), variant in 0..5usize) {
        let variant = &VARIANTS[variant];
        for (format, bytes) in messages(variant, &flow) {
            for len in 0..bytes.len() {
                prop_assert_eq!(
                    outcome(COMPILED.decode(&bytes[..len])),
                    outcome(reference(&bytes[..len])),
                    "{} / {}, {} of {} bytes", variant.name, format, len, bytes.len()
                );
            }
        }
    }
}
