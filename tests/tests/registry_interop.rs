//! Wire-format interop with Confluent's own client code: the npm package `@confluentinc/schemaregistry`
//! (tests/interop/schemaregistry, installed by scripts/test with `npm ci`) serializes flows that
//! peergraph decodes, and deserializes flows that peergraph encoded. Both sides talk to the same
//! local registry receiver (HTTP basic auth on), so the schema ids come from a registry, not from
//! either side's configuration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use peergraph_schemas::codec::{Decoder, Encoder, RegistryConfig, SchemaRegistry};
use peergraph_schemas::{ConnState, EndpointMeta, Flow};
use peergraph_tests::registry::{LocalRegistry, RegistryOptions};
use serde_json::Value;

const TOPIC: &str = "interop.flows";
const USER: &str = "interop";
const PASSWORD: &str = "interop-pw";

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/schemaregistry")
}

/// Runs `node interop.mjs MODE` with `input` on stdin against `registry`; its JSON output.
fn confluent(mode: &str, input: &Value, registry: &LocalRegistry) -> Value {
    let dir = project();
    assert!(
        dir.join("node_modules/@confluentinc/schemaregistry/package.json").exists(),
        "{} has no node_modules: run `npm ci` there (scripts/test does)",
        dir.display()
    );
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro/flow.avsc");
    let mut child = Command::new("node")
        .arg("interop.mjs")
        .arg(mode)
        .current_dir(&dir)
        .env("REGISTRY_URL", registry.url())
        .env("REGISTRY_USER_INFO", format!("{USER}:{PASSWORD}"))
        .env("TOPIC", TOPIC)
        .env("SCHEMA_FILE", schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run node ({error}); install Node.js 20+ (scripts/test does)"));
    child.stdin.take().expect("stdin").write_all(input.to_string().as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("node");
    assert!(output.status.success(), "node interop.mjs {mode} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("node printed no JSON ({error}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn registry() -> LocalRegistry {
    LocalRegistry::start_with(RegistryOptions { basic_auth: Some((USER.into(), PASSWORD.into())), tls: false })
}

fn client(registry: &LocalRegistry) -> Arc<SchemaRegistry> {
    std::env::set_var("PEERGRAPH_INTEROP_REGISTRY_PASSWORD", PASSWORD);
    let config = RegistryConfig {
        url: registry.url().into(),
        username: Some(USER.into()),
        password_env: Some("PEERGRAPH_INTEROP_REGISTRY_PASSWORD".into()),
        ..RegistryConfig::default()
    };
    Arc::new(SchemaRegistry::new(&config).expect("registry client"))
}

/// Flows covering every field: optional fields set and unset, metadata records with labels,
/// large and negative longs, several connection states.
fn flows() -> Vec<Flow> {
    let meta = |workload: &str| EndpointMeta {
        namespace: Some("shop".into()),
        workload: Some(workload.into()),
        workload_kind: Some("Deployment".into()),
        pod: Some(format!("{workload}-7d9f-abcde")),
        node: Some("node-1".into()),
        image: Some(format!("registry.example/{workload}:1.2.3")),
        image_digest: Some("sha256:0123456789abcdef".into()),
        labels: [("app".to_owned(), workload.to_owned())].into(),
    };
    let base = Flow {
        sensor_id: "sensor-α".into(),
        start_ms: 1_700_000_000_000,
        end_ms: 1_700_000_004_321,
        src_addr: "10.1.2.3".into(),
        src_port: 51_234,
        dst_addr: "fd00::1".into(),
        dst_port: 443,
        protocol: 6,
        bytes_out: 4_000_000_000_123,
        bytes_in: -1,
        packets_out: 17,
        packets_in: 0,
        tcp_flags: 0x1b,
        conn_state: ConnState::SF,
        app_protocol: Some("tls".into()),
        src_meta: Some(meta("frontend")),
        dst_meta: Some(EndpointMeta { labels: Default::default(), ..meta("checkout") }),
    };
    vec![
        base.clone(),
        Flow { app_protocol: None, src_meta: None, dst_meta: None, conn_state: ConnState::REJ, ..base.clone() },
        Flow {
            protocol: 17,
            conn_state: ConnState::OTH,
            src_meta: Some(EndpointMeta::default()),
            sensor_id: String::new(),
            ..base
        },
    ]
}

#[test]
fn bytes_confluents_serializer_writes_are_read_by_peergraph() {
    let local = registry();
    let flows = flows();
    let written = confluent("serialize", &serde_json::to_value(&flows).expect("json"), &local);
    let id = u32::try_from(written["id"].as_u64().expect("schema id")).expect("u32 id");
    let messages: Vec<Vec<u8>> = written["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|hex| hex_decode(hex.as_str().expect("hex")))
        .collect();
    assert_eq!(messages.len(), flows.len());

    let registry = client(&local);
    let decoder = Decoder::<Flow>::new(registry.clone());
    let encoder = Encoder::<Flow>::confluent(id);
    for (bytes, flow) in messages.iter().zip(&flows) {
        assert_eq!(bytes[..5], [&[0u8][..], &id.to_be_bytes()].concat()[..], "magic byte and big-endian id");
        assert_eq!(decoder.decode(bytes).expect("peergraph decodes Confluent's bytes"), *flow);
        // Avro binary encoding is deterministic: both writers produce the same bytes.
        assert_eq!(*bytes, encoder.encode_to_vec(flow).expect("encode"), "same bytes as peergraph writes");
    }
    // peergraph registering the same schema under the same subject gets the same id.
    assert_eq!(registry.encoder::<Flow>(TOPIC).expect("register").schema_id(), Some(id));

    // Confluent's client used the same API subset, with the same content type and credentials. (It
    // first asks for the topic's subject associations, a newer API; like registries without it, the
    // receiver answers 404 and the client falls back to TopicNameStrategy.)
    let node_requests: Vec<_> =
        local.requests().into_iter().filter(|r| !r.path.starts_with("/associations/")).take(3).collect();
    let paths: Vec<(&str, &str)> = node_requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(
        paths,
        [
            ("POST", "/subjects/interop.flows-value/versions?normalize=false"),
            ("GET", &*format!("/schemas/ids/{id}?subject=interop.flows-value")),
            ("POST", "/subjects/interop.flows-value?normalize=false"),
        ]
    );
    let peergraph_request = local.requests().pop().expect("peergraph's request");
    assert_eq!(peergraph_request.authorization, node_requests[0].authorization, "same basic auth header");
    assert_eq!(node_requests[0].content_type.as_deref(), Some("application/vnd.schemaregistry.v1+json"));
}

#[test]
fn bytes_peergraph_writes_are_read_by_confluents_deserializer() {
    let local = registry();
    let flows = flows();
    let encoder = client(&local).encoder::<Flow>(TOPIC).expect("register the flow schema");
    let messages: Vec<Value> =
        flows.iter().map(|flow| Value::String(hex_encode(&encoder.encode_to_vec(flow).expect("encode")))).collect();
    let read = confluent("deserialize", &Value::Array(messages), &local);
    let read = read.as_array().expect("records");
    assert_eq!(read.len(), flows.len());
    for (index, (record, flow)) in read.iter().zip(&flows).enumerate() {
        let expected = serde_json::to_value(flow).expect("json");
        let expected = expected.as_object().expect("object");
        let record = record.as_object().expect("Confluent's deserializer returns records");
        assert_eq!(record.len(), expected.len(), "flow {index}: fields {:?}", record.keys().collect::<Vec<_>>());
        for (field, value) in expected {
            assert_eq!(record.get(field), Some(value), "flow {index}, field {field}");
        }
    }
    let by_id: Vec<_> = local.requests().into_iter().filter(|r| r.path.starts_with("/schemas/ids/")).collect();
    assert_eq!(by_id.len(), 1, "Confluent's deserializer fetched the writer schema by id once: {by_id:?}");
    let id = encoder.schema_id().expect("id");
    assert_eq!(by_id[0].path, format!("/schemas/ids/{id}?subject=interop.flows-value"));
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_decode(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex {hex:?}");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit")).collect()
}
