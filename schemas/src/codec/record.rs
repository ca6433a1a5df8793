//! The records that travel on peergraph's topics, each tied to its Avro schema in `schemas/avro/`,
//! parsed and fingerprinted once per process.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{rabin_fingerprint, CompiledReader};
use crate::{Alert, Asset, Flow, GraphEdge, Indicator};

/// A record type with an Avro schema: what [`Encoder`](super::Encoder) and [`Decoder`](super::Decoder)
/// work with. The serde field and variant names are the Avro field names and enum symbols.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema's full name, e.g. `io.peergraph.Flow`.
    const NAME: &'static str;
    /// The schema as JSON (the `.avsc` file), e.g. to register it with a schema registry.
    const SCHEMA_JSON: &'static str;
    /// The parsed schema, parsed on first use.
    fn schema() -> &'static Schema;
    /// The CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form.
    fn fingerprint() -> u64;
    /// A reader that decodes datums written with `writer` straight from the bytes, compiled once for that
    /// schema, or `None` (the default) when the type has none or it cannot read `writer`: the decoder
    /// then reads with apache-avro. `writer` has passed the schema compatibility check.
    fn compile_reader(_writer: &Schema) -> Option<Box<dyn CompiledReader<Self>>> {
        None
    }
}

/// Parses a schema compiled into the binary; the tests parse every one, so failure is a build defect.
fn parse_embedded(json: &str, file: &str) -> Schema {
    match Schema::parse_str(json) {
        Ok(schema) => schema,
        Err(error) => panic!("schemas/avro/{file} does not parse: {error}"),
    }
}

macro_rules! record {
    ($type:ty, $name:literal, $file:literal $(, compile = $compile:expr)?) => {
        impl Record for $type {
            const NAME: &'static str = $name;
            const SCHEMA_JSON: &'static str = include_str!(concat!("../../avro/", $file));

            fn schema() -> &'static Schema {
                static SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse_embedded(<$type>::SCHEMA_JSON, $file));
                &SCHEMA
            }

            fn fingerprint() -> u64 {
                static FINGERPRINT: LazyLock<u64> = LazyLock::new(|| rabin_fingerprint(<$type>::schema()));
                *FINGERPRINT
            }

            $(
                fn compile_reader(writer: &Schema) -> Option<Box<dyn CompiledReader<Self>>> {
                    $compile(writer).map(|reader| Box::new(reader) as Box<dyn CompiledReader<Self>>)
                }
            )?
        }
    };
}

record!(Flow, "io.peergraph.Flow", "flow.avsc", compile = super::flow_reader::FlowPlan::compile);
record!(Alert, "io.peergraph.Alert", "alert.avsc");
record!(GraphEdge, "io.peergraph.GraphEdge", "graph_edge.avsc");
record!(Asset, "io.peergraph.Asset", "asset.avsc");
record!(Indicator, "io.peergraph.Indicator", "indicator.avsc");

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apache_avro::schema::ResolvedSchema;
    use apache_avro::types::Value;

    use super::*;
    use crate::codec::fixtures;
    use crate::{AlertEvent, ConnState, EdgeLevel, Severity};

    /// Every named type of a schema (records and enums), by full name.
    fn named_types(schema: &Schema) -> BTreeMap<String, &Schema> {
        let resolved = ResolvedSchema::new(schema).expect("schema resolves");
        resolved.get_names().iter().map(|(name, schema)| (name.fullname(None), *schema)).collect()
    }

    fn record_field_names(schema: &Schema) -> Vec<String> {
        match schema {
            Schema::Record(record) => record.fields.iter().map(|field| field.name.clone()).collect(),
            other => panic!("not a record: {other:?}"),
        }
    }

    fn value_field_names(value: &Value) -> Vec<String> {
        match value {
            Value::Record(fields) => fields.iter().map(|(name, _)| name.clone()).collect(),
            other => panic!("not a record value: {other:?}"),
        }
    }

    fn enum_symbols(schema: &Schema) -> Vec<String> {
        match schema {
            Schema::Enum(schema) => schema.symbols.clone(),
            other => panic!("not an enum: {other:?}"),
        }
    }

    fn serde_names<T: Serialize>(variants: &[T]) -> Vec<String> {
        variants
            .iter()
            .map(|variant| match serde_json::to_value(variant).expect("serialize") {
                serde_json::Value::String(name) => name,
                other => panic!("not a unit variant: {other}"),
            })
            .collect()
    }

    #[test]
    fn schema_files_parse_and_carry_the_record_names() {
        for (schema, name) in
            [(Flow::schema(), Flow::NAME), (Alert::schema(), Alert::NAME), (GraphEdge::schema(), GraphEdge::NAME)]
        {
            let full_name = schema.name().map(|n| n.fullname(None));
            assert_eq!(full_name.as_deref(), Some(name));
        }
        let flow_types: Vec<String> = named_types(Flow::schema()).into_keys().collect();
        assert_eq!(flow_types, ["io.peergraph.ConnState", "io.peergraph.EndpointMeta", "io.peergraph.Flow"]);
    }

    #[test]
    fn avro_field_names_are_the_serde_field_names() {
        let flow = apache_avro::to_value(fixtures::flow()).expect("to_value");
        assert_eq!(value_field_names(&flow), record_field_names(Flow::schema()));
        let meta = apache_avro::to_value(fixtures::endpoint_meta()).expect("to_value");
        let flow_types = named_types(Flow::schema());
        assert_eq!(value_field_names(&meta), record_field_names(flow_types["io.peergraph.EndpointMeta"]));
        let alert = apache_avro::to_value(fixtures::alert()).expect("to_value");
        assert_eq!(value_field_names(&alert), record_field_names(Alert::schema()));
        let edge = apache_avro::to_value(fixtures::edge()).expect("to_value");
        assert_eq!(value_field_names(&edge), record_field_names(GraphEdge::schema()));

        // And the values fit the schemas as a whole (types, unions, maps).
        for (value, schema) in [(flow, Flow::schema()), (alert, Alert::schema()), (edge, GraphEdge::schema())] {
            if let Err(error) = value.resolve(schema) {
                panic!("{:?} does not fit its schema: {error}", schema.name());
            }
        }
    }

    #[test]
    fn avro_enum_symbols_are_the_serde_variant_names_in_order() {
        use ConnState::*;
        let flow_types = named_types(Flow::schema());
        let conn_states = [S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH];
        assert_eq!(enum_symbols(flow_types["io.peergraph.ConnState"]), serde_names(&conn_states));

        let alert_types = named_types(Alert::schema());
        let events = [AlertEvent::Raised, AlertEvent::Updated, AlertEvent::Cleared];
        assert_eq!(enum_symbols(alert_types["io.peergraph.AlertEvent"]), serde_names(&events));
        let severities = [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];
        assert_eq!(enum_symbols(alert_types["io.peergraph.Severity"]), serde_names(&severities));

        let edge_types = named_types(GraphEdge::schema());
        let levels = [EdgeLevel::Entity, EdgeLevel::Workload];
        assert_eq!(enum_symbols(edge_types["io.peergraph.EdgeLevel"]), serde_names(&levels));
    }

    /// Doc comments of the `pub struct`s, `pub enum`s and their `pub` fields, keyed `Type` and
    /// `Type.field`. A line-based reading, enough for the plain layout of the type modules.
    fn rust_docs(source: &str) -> BTreeMap<String, String> {
        let mut docs = BTreeMap::new();
        let mut pending: Vec<&str> = Vec::new();
        let mut current_struct: Option<String> = None;
        for line in source.lines().map(str::trim) {
            if let Some(doc) = line.strip_prefix("///") {
                pending.push(doc.trim());
                continue;
            }
            if line.starts_with("#[") {
                continue;
            }
            let type_decl = line.strip_prefix("pub struct ").map(|rest| (rest, true));
            let type_decl = type_decl.or_else(|| line.strip_prefix("pub enum ").map(|rest| (rest, false)));
            if let Some((rest, is_struct)) = type_decl {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                docs.insert(name.clone(), pending.join(" "));
                current_struct = is_struct.then_some(name);
            } else if line == "}" {
                current_struct = None;
            } else if let (Some(record), Some(rest)) = (&current_struct, line.strip_prefix("pub ")) {
                if let Some((field, _)) = rest.split_once(':') {
                    docs.insert(format!("{record}.{field}"), pending.join(" "));
                }
            }
            pending.clear();
        }
        docs
    }

    #[test]
    fn avro_docs_are_the_rust_doc_comments() {
        let mut rust = rust_docs(include_str!("../flow.rs"));
        rust.extend(rust_docs(include_str!("../alert.rs")));
        rust.extend(rust_docs(include_str!("../edge.rs")));

        let mut mismatches = Vec::new();
        let mut check = |key: String, avro_doc: &Option<String>| {
            let rust_doc = rust.get(&key).map(String::as_str);
            if rust_doc.is_none_or(str::is_empty) || rust_doc != avro_doc.as_deref() {
                mismatches.push(format!("{key}:\n  rust: {rust_doc:?}\n  avro: {avro_doc:?}"));
            }
        };
        for schema in [Flow::schema(), Alert::schema(), GraphEdge::schema()] {
            for (full_name, named) in named_types(schema) {
                let name = full_name.rsplit('.').next().unwrap_or(&full_name).to_owned();
                match named {
                    Schema::Record(record) => {
                        check(name.clone(), &record.doc);
                        for field in &record.fields {
                            check(format!("{name}.{}", field.name), &field.doc);
                        }
                    }
                    Schema::Enum(enumeration) => check(name, &enumeration.doc),
                    other => panic!("unexpected named type {other:?}"),
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "docs differ between the .avsc files and the Rust types:\n{}",
            mismatches.join("\n")
        );
    }

    /// Changing a schema's canonical form (names, types, order; not docs or defaults) changes its
    /// fingerprint, so single-object consumers still on the old schema stop reading it. When the
    /// change is intended, give consumers the old schema as a writer schema and update the pin.
    /// The pinned values were checked against an independent implementation of the specification's
    /// parsing canonical form and CRC-64-AVRO.
    #[test]
    fn fingerprints_are_pinned() {
        let pinned = [
            (Flow::NAME, Flow::fingerprint(), 0x5e53_eee1_262e_6253_u64),
            (Alert::NAME, Alert::fingerprint(), 0x5d7a_89e3_c524_069a),
            (GraphEdge::NAME, GraphEdge::fingerprint(), 0xc3aa_b97b_c5d0_e876),
        ];
        let changed: Vec<String> = pinned
            .iter()
            .filter(|(_, actual, expected)| actual != expected)
            .map(|(name, actual, expected)| format!("{name}: fingerprint {actual:#018x}, pinned {expected:#018x}"))
            .collect();
        assert!(changed.is_empty(), "schema canonical forms changed:\n{}", changed.join("\n"));
    }
}
