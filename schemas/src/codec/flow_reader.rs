//! The compiled reader of `Flow` datums: the hot path of the pipeline's decode. A writer schema is turned once
//! (per fingerprint or schema id) into a list of field operations — read into this `Flow` field, skip a field
//! the reader does not have — and every message is then read by walking that list over the borrowed bytes.
//! Fields the writer lacks keep their defaults (`null`, `{}`). Writer schemas the plan cannot express (type
//! promotions, unusual unions, logical types in extra fields) compile to `None`; the decoder then uses
//! apache-avro's schema resolution instead.

use std::collections::HashMap;

use apache_avro::error::Details;
use apache_avro::schema::{Name, RecordField, ResolvedSchema};
use apache_avro::{Error, Schema};

use super::binary::{Input, Skip};
use super::{CompiledReader, MAX_AVRO_ALLOCATION_BYTES};
use crate::{ConnState, EndpointMeta, Flow};

/// `Flow`'s enum symbols in declaration order (the order of `flow.avsc`, checked by the record tests).
const CONN_STATES: [(&str, ConnState); 13] = {
    use ConnState::*;
    [
        ("S0", S0),
        ("S1", S1),
        ("SF", SF),
        ("REJ", REJ),
        ("S2", S2),
        ("S3", S3),
        ("RSTO", RSTO),
        ("RSTR", RSTR),
        ("RSTOS0", RSTOS0),
        ("RSTRH", RSTRH),
        ("SH", SH),
        ("SHR", SHR),
        ("OTH", OTH),
    ]
};

/// A two-branch union of `null` and a value, with `null` at either position.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Nullable {
    null_branch: usize,
}

/// One writer field of a `Flow`, in writer order.
#[derive(Clone, Debug, PartialEq)]
enum FlowOp {
    SensorId,
    StartMs,
    EndMs,
    SrcAddr,
    SrcPort,
    DstAddr,
    DstPort,
    Protocol,
    BytesOut,
    BytesIn,
    PacketsOut,
    PacketsIn,
    TcpFlags,
    /// The writer's symbols, by index, as the reader's (`None`: a symbol the reader does not have).
    ConnState(Vec<Option<ConnState>>),
    AppProtocol(Nullable),
    SrcMeta(Nullable, MetaPlan),
    DstMeta(Nullable, MetaPlan),
    Skip(Skip),
}

/// One writer field of an `EndpointMeta`, in writer order.
#[derive(Clone, Debug, PartialEq)]
enum MetaOp {
    Namespace(Nullable),
    Workload(Nullable),
    WorkloadKind(Nullable),
    Pod(Nullable),
    Node(Nullable),
    Image(Nullable),
    ImageDigest(Nullable),
    Labels,
    Skip(Skip),
}

#[derive(Clone, Debug, PartialEq)]
struct MetaPlan {
    ops: Vec<MetaOp>,
}

/// A `Flow` read plan for one writer schema.
#[derive(Debug)]
pub(crate) struct FlowPlan {
    ops: Vec<FlowOp>,
    max_len: usize,
}

/// `Flow`'s fields without a default: a writer schema must have every one.
const REQUIRED: [&str; 14] = [
    "sensor_id",
    "start_ms",
    "end_ms",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "protocol",
    "bytes_out",
    "bytes_in",
    "packets_out",
    "packets_in",
    "tcp_flags",
    "conn_state",
];

struct Compiler<'s> {
    names: &'s HashMap<Name, &'s Schema>,
}

impl<'s> Compiler<'s> {
    /// `schema` with a named reference looked up.
    fn deref(&self, schema: &'s Schema) -> Option<&'s Schema> {
        match schema {
            Schema::Ref { name } => self.names.get(name).copied(),
            other => Some(other),
        }
    }

    /// The fields of a record named `name` (unqualified, as Avro schema resolution matches records).
    fn record(&self, schema: &'s Schema, name: &str) -> Option<&'s [RecordField]> {
        match self.deref(schema)? {
            Schema::Record(record) if record.name.name() == name => Some(&record.fields),
            _ => None,
        }
    }

    fn is(&self, schema: &'s Schema, expected: &Schema) -> bool {
        self.deref(schema) == Some(expected)
    }

    /// A union of `null` and one other branch, that branch's schema.
    fn nullable(&self, schema: &'s Schema) -> Option<(Nullable, &'s Schema)> {
        let Schema::Union(union) = self.deref(schema)? else {
            return None;
        };
        match union.variants() {
            [Schema::Null, value] => Some((Nullable { null_branch: 0 }, value)),
            [value, Schema::Null] => Some((Nullable { null_branch: 1 }, value)),
            _ => None,
        }
    }

    fn nullable_string(&self, schema: &'s Schema) -> Option<Nullable> {
        let (nullable, value) = self.nullable(schema)?;
        self.is(value, &Schema::String).then_some(nullable)
    }

    fn conn_state(&self, schema: &'s Schema) -> Option<Vec<Option<ConnState>>> {
        let Schema::Enum(enumeration) = self.deref(schema)? else {
            return None;
        };
        if enumeration.name.name() != "ConnState" {
            return None;
        }
        // A writer symbol the reader lacks is an error per message, as in Avro schema resolution.
        let by_name = |symbol: &String| CONN_STATES.iter().find(|(name, _)| name == symbol).map(|(_, state)| *state);
        Some(enumeration.symbols.iter().map(by_name).collect())
    }

    fn meta(&self, schema: &'s Schema) -> Option<MetaPlan> {
        let fields = self.record(schema, "EndpointMeta")?;
        let mut ops = Vec::with_capacity(fields.len());
        for field in fields {
            let string = || self.nullable_string(&field.schema);
            let op = match field.name.as_str() {
                "namespace" => MetaOp::Namespace(string()?),
                "workload" => MetaOp::Workload(string()?),
                "workload_kind" => MetaOp::WorkloadKind(string()?),
                "pod" => MetaOp::Pod(string()?),
                "node" => MetaOp::Node(string()?),
                "image" => MetaOp::Image(string()?),
                "image_digest" => MetaOp::ImageDigest(string()?),
                "labels" => match self.deref(&field.schema)? {
                    Schema::Map(map) if self.is(&map.types, &Schema::String) => MetaOp::Labels,
                    _ => return None,
                },
                _ => MetaOp::Skip(Skip::compile(&field.schema, self.names)?),
            };
            ops.push(op);
        }
        Some(MetaPlan { ops })
    }

    fn flow(&self, schema: &'s Schema) -> Option<Vec<FlowOp>> {
        let fields = self.record(schema, "Flow")?;
        if !REQUIRED.iter().all(|required| fields.iter().any(|field| field.name == *required)) {
            return None;
        }
        let mut ops = Vec::with_capacity(fields.len());
        for field in fields {
            let typed = |expected: Schema, op: FlowOp| self.is(&field.schema, &expected).then_some(op);
            let op = match field.name.as_str() {
                "sensor_id" => typed(Schema::String, FlowOp::SensorId)?,
                "start_ms" => typed(Schema::Long, FlowOp::StartMs)?,
                "end_ms" => typed(Schema::Long, FlowOp::EndMs)?,
                "src_addr" => typed(Schema::String, FlowOp::SrcAddr)?,
                "src_port" => typed(Schema::Int, FlowOp::SrcPort)?,
                "dst_addr" => typed(Schema::String, FlowOp::DstAddr)?,
                "dst_port" => typed(Schema::Int, FlowOp::DstPort)?,
                "protocol" => typed(Schema::Int, FlowOp::Protocol)?,
                "bytes_out" => typed(Schema::Long, FlowOp::BytesOut)?,
                "bytes_in" => typed(Schema::Long, FlowOp::BytesIn)?,
                "packets_out" => typed(Schema::Long, FlowOp::PacketsOut)?,
                "packets_in" => typed(Schema::Long, FlowOp::PacketsIn)?,
                "tcp_flags" => typed(Schema::Int, FlowOp::TcpFlags)?,
                "conn_state" => FlowOp::ConnState(self.conn_state(&field.schema)?),
                "app_protocol" => FlowOp::AppProtocol(self.nullable_string(&field.schema)?),
                "src_meta" | "dst_meta" => {
                    let (nullable, meta) = self.nullable(&field.schema)?;
                    let meta = self.meta(meta)?;
                    if field.name == "src_meta" {
                        FlowOp::SrcMeta(nullable, meta)
                    } else {
                        FlowOp::DstMeta(nullable, meta)
                    }
                }
                _ => FlowOp::Skip(Skip::compile(&field.schema, self.names)?),
            };
            ops.push(op);
        }
        Some(ops)
    }
}

impl FlowPlan {
    /// The plan for datums written with `writer`, or `None` when it is not a `Flow` schema this reader can
    /// read without apache-avro's help. Schema compatibility is checked by the caller, before.
    pub(crate) fn compile(writer: &Schema) -> Option<FlowPlan> {
        let resolved = ResolvedSchema::new(writer).ok()?;
        let compiler = Compiler { names: resolved.get_names() };
        let ops = compiler.flow(writer)?;
        // apache-avro's cap is process-wide and fixed by its first use; read it as it stands.
        let max_len = apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
        Some(FlowPlan { ops, max_len })
    }

    fn read_flow(&self, input: &mut Input<'_>) -> Result<Flow, Error> {
        let mut flow = Flow {
            sensor_id: String::new(),
            start_ms: 0,
            end_ms: 0,
            src_addr: String::new(),
            src_port: 0,
            dst_addr: String::new(),
            dst_port: 0,
            protocol: 0,
            bytes_out: 0,
            bytes_in: 0,
            packets_out: 0,
            packets_in: 0,
            tcp_flags: 0,
            conn_state: ConnState::OTH,
            app_protocol: None,
            src_meta: None,
            dst_meta: None,
        };
        for op in &self.ops {
            match op {
                FlowOp::SensorId => flow.sensor_id = input.str()?.to_owned(),
                FlowOp::StartMs => flow.start_ms = input.long()?,
                FlowOp::EndMs => flow.end_ms = input.long()?,
                FlowOp::SrcAddr => flow.src_addr = input.str()?.to_owned(),
                FlowOp::SrcPort => flow.src_port = input.int()?,
                FlowOp::DstAddr => flow.dst_addr = input.str()?.to_owned(),
                FlowOp::DstPort => flow.dst_port = input.int()?,
                FlowOp::Protocol => flow.protocol = input.int()?,
                FlowOp::BytesOut => flow.bytes_out = input.long()?,
                FlowOp::BytesIn => flow.bytes_in = input.long()?,
                FlowOp::PacketsOut => flow.packets_out = input.long()?,
                FlowOp::PacketsIn => flow.packets_in = input.long()?,
                FlowOp::TcpFlags => flow.tcp_flags = input.int()?,
                FlowOp::ConnState(symbols) => {
                    let index = input.index(symbols.len(), true)?;
                    flow.conn_state = match symbols.get(index).copied().flatten() {
                        Some(state) => state,
                        None => return Err(unknown_symbol(index)),
                    };
                }
                FlowOp::AppProtocol(nullable) => flow.app_protocol = optional_string(input, *nullable)?,
                FlowOp::SrcMeta(nullable, plan) => flow.src_meta = optional_meta(input, *nullable, plan)?,
                FlowOp::DstMeta(nullable, plan) => flow.dst_meta = optional_meta(input, *nullable, plan)?,
                FlowOp::Skip(skip) => input.skip(skip)?,
            }
        }
        Ok(flow)
    }
}

fn unknown_symbol(index: usize) -> Error {
    Error::new(Details::GetEnumSymbol(format!("writer symbol {index} of ConnState is not one of the reader's")))
}

/// Whether the union at the input is its value branch.
#[inline]
fn present(input: &mut Input<'_>, nullable: Nullable) -> Result<bool, Error> {
    Ok(input.index(2, false)? != nullable.null_branch)
}

#[inline]
fn optional_string(input: &mut Input<'_>, nullable: Nullable) -> Result<Option<String>, Error> {
    Ok(if present(input, nullable)? { Some(input.str()?.to_owned()) } else { None })
}

fn optional_meta(input: &mut Input<'_>, nullable: Nullable, plan: &MetaPlan) -> Result<Option<EndpointMeta>, Error> {
    if !present(input, nullable)? {
        return Ok(None);
    }
    let mut meta = EndpointMeta::default();
    for op in &plan.ops {
        match op {
            MetaOp::Namespace(nullable) => meta.namespace = optional_string(input, *nullable)?,
            MetaOp::Workload(nullable) => meta.workload = optional_string(input, *nullable)?,
            MetaOp::WorkloadKind(nullable) => meta.workload_kind = optional_string(input, *nullable)?,
            MetaOp::Pod(nullable) => meta.pod = optional_string(input, *nullable)?,
            MetaOp::Node(nullable) => meta.node = optional_string(input, *nullable)?,
            MetaOp::Image(nullable) => meta.image = optional_string(input, *nullable)?,
            MetaOp::ImageDigest(nullable) => meta.image_digest = optional_string(input, *nullable)?,
            MetaOp::Labels => {
                // A repeated field would merge; a writer record has each field once.
                meta.labels.clear();
                input.string_map(&mut meta.labels)?;
            }
            MetaOp::Skip(skip) => input.skip(skip)?,
        }
    }
    Ok(Some(meta))
}

impl CompiledReader<Flow> for FlowPlan {
    fn read(&self, datum: &mut &[u8]) -> Result<Flow, Error> {
        let mut input = Input::new(datum, self.max_len);
        let flow = self.read_flow(&mut input)?;
        *datum = input.rest();
        Ok(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Record;

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(Flow::SCHEMA_JSON).expect("json");
        edit(&mut json);
        Schema::parse(&json).expect("edited schema parses")
    }

    #[test]
    fn the_own_schema_compiles_to_one_read_per_field_in_order() {
        let plan = FlowPlan::compile(Flow::schema()).expect("own schema compiles");
        assert_eq!(plan.ops.len(), 17);
        assert_eq!(plan.ops[0], FlowOp::SensorId);
        assert!(
            matches!(&plan.ops[13], FlowOp::ConnState(symbols) if symbols.len() == 13 && symbols.iter().all(Option::is_some))
        );
        assert_eq!(plan.ops[14], FlowOp::AppProtocol(Nullable { null_branch: 0 }));
        let (FlowOp::SrcMeta(_, src), FlowOp::DstMeta(_, dst)) = (&plan.ops[15], &plan.ops[16]) else {
            panic!("{:?}", &plan.ops[15..]);
        };
        assert_eq!(src, dst, "dst_meta's reference to EndpointMeta is resolved");
        assert_eq!(src.ops.last(), Some(&MetaOp::Labels));
    }

    #[test]
    fn extra_writer_fields_compile_to_skips() {
        let writer = edited(|json| {
            let fields = json["fields"].as_array_mut().expect("fields");
            fields.insert(3, serde_json::json!({"name": "vlan", "type": "int"}));
            fields.push(serde_json::json!({"name": "tags", "type": {"type": "array", "items": "string"}}));
        });
        let plan = FlowPlan::compile(&writer).expect("compiles");
        assert_eq!(plan.ops[3], FlowOp::Skip(Skip::Int));
        assert_eq!(plan.ops.last(), Some(&FlowOp::Skip(Skip::Array(Box::new(Skip::String)))));
    }

    #[test]
    fn what_the_plan_cannot_express_is_left_to_apache_avro() {
        // A promotion (int written, long read).
        let promoted = edited(|json| json["fields"][1]["type"] = "int".into());
        assert!(FlowPlan::compile(&promoted).is_none());
        // A required field missing.
        let missing = edited(|json| {
            json["fields"].as_array_mut().expect("fields").remove(0);
        });
        assert!(FlowPlan::compile(&missing).is_none());
        // A three-branch union.
        let union = edited(|json| json["fields"][14]["type"] = serde_json::json!(["null", "string", "int"]));
        assert!(FlowPlan::compile(&union).is_none());
        // Another record altogether.
        assert!(FlowPlan::compile(crate::GraphEdge::schema()).is_none());
    }
}
