//! The schema registry client against the local receiver of the registry REST API
//! (peergraph_tests::registry): registration, lookup, caching, subject naming, retries, basic auth,
//! TLS, and decoding messages whose writer schema comes from the registry.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use peergraph_schemas::codec::{
    Decoder, Encoder, Record, RegistryConfig, SchemaLookup, SchemaRegistry, SubjectNameStrategy,
};
use peergraph_schemas::{Alert, ConnState, EndpointMeta, Flow, GraphEdge};
use peergraph_tests::registry::{LocalRegistry, RegistryOptions};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn config(registry: &LocalRegistry) -> RegistryConfig {
    RegistryConfig { url: registry.url().to_owned(), ..RegistryConfig::default() }
}

fn client(config: &RegistryConfig) -> SchemaRegistry {
    SchemaRegistry::new(config).expect("registry client")
}

fn flow(n: i64) -> Flow {
    Flow {
        sensor_id: format!("sensor-{n}"),
        start_ms: 1_700_000_000_000 + n,
        end_ms: 1_700_000_000_500 + n,
        src_addr: "10.0.0.1".into(),
        src_port: 40_000 + n as i32,
        dst_addr: "10.0.0.2".into(),
        dst_port: 443,
        protocol: 6,
        bytes_out: 1_000 * n,
        bytes_in: 20_000,
        packets_out: 10,
        packets_in: 12,
        tcp_flags: 0x1b,
        conn_state: ConnState::SF,
        app_protocol: (n % 2 == 0).then(|| "tls".to_owned()),
        src_meta: Some(EndpointMeta {
            namespace: Some("shop".into()),
            workload: Some("frontend".into()),
            labels: [("app".to_owned(), "frontend".to_owned())].into(),
            ..EndpointMeta::default()
        }),
        dst_meta: None,
    }
}

#[test]
fn encoders_register_once_and_decoders_look_each_id_up_once() {
    let local = LocalRegistry::start();
    let registry = Arc::new(client(&config(&local)));
    let encoder = registry.encoder::<Flow>("peergraph.flows").expect("register");
    let id = encoder.schema_id().expect("confluent encoder");
    assert_eq!(local.subjects().get("peergraph.flows-value"), Some(&vec![id]));
    assert_eq!(local.schema_text(id).as_deref(), Some(Flow::SCHEMA_JSON), "the schema is sent as written");
    // Registered again: from the cache, no request.
    let again = registry.encoder::<Flow>("peergraph.flows").expect("cached");
    assert_eq!(again.schema_id(), Some(id));
    assert_eq!(registry.requests(), 1);

    // A decoder with its own client: the writer schema is fetched once, whatever the message count.
    let reader = Arc::new(client(&config(&local)));
    let decoder = Decoder::<Flow>::new(reader.clone());
    for n in 0..5 {
        let bytes = encoder.encode_to_vec(&flow(n)).expect("encode");
        assert_eq!(bytes[..5], [&[0u8][..], &id.to_be_bytes()].concat()[..]);
        assert_eq!(decoder.decode(&bytes).expect("decode"), flow(n));
    }
    assert_eq!(reader.requests(), 1, "one GET for five messages");
    // The client's own cache also answers a second lookup without a request.
    reader.writer_schema(id).expect("cached schema");
    assert_eq!(reader.requests(), 1);

    let seen = local.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/subjects/peergraph.flows-value/versions"));
    assert_eq!(seen[0].content_type.as_deref(), Some(CONTENT_TYPE));
    assert_eq!((seen[1].method.as_str(), seen[1].path.as_str()), ("GET", &*format!("/schemas/ids/{id}")));
    assert_eq!(seen[1].authorization, None, "no credentials configured, none sent");
}

#[test]
fn subjects_are_named_by_the_configured_strategy() {
    let local = LocalRegistry::start();
    let by = |strategy| client(&RegistryConfig { subject_name_strategy: strategy, ..config(&local) });
    let topic = "peergraph.alerts";
    let topic_name = by(SubjectNameStrategy::TopicName).encoder::<Alert>(topic).expect("register").schema_id();
    let record_name = by(SubjectNameStrategy::RecordName).encoder::<Alert>(topic).expect("register").schema_id();
    let topic_record = by(SubjectNameStrategy::TopicRecordName).encoder::<GraphEdge>(topic).expect("register");
    let subjects = local.subjects();
    let names: Vec<&str> = subjects.keys().map(String::as_str).collect();
    assert_eq!(names, ["io.peergraph.Alert", "peergraph.alerts-io.peergraph.GraphEdge", "peergraph.alerts-value"]);
    // One schema, one id, whatever the subject (as in Confluent's registry); another schema, another id.
    assert_eq!(topic_name, record_name);
    assert_ne!(topic_record.schema_id(), topic_name);
}

#[test]
fn without_auto_register_the_schema_must_already_be_registered() {
    let local = LocalRegistry::start();
    let lookup_only = client(&RegistryConfig { auto_register: false, ..config(&local) });
    let error = lookup_only.encoder::<Alert>("peergraph.alerts").expect_err("nothing registered yet");
    assert_eq!(error.kind(), "not_found");
    let message = error.to_string();
    assert!(message.contains("/subjects/peergraph.alerts-value") && message.contains("40401"), "{message}");

    let id = client(&config(&local)).register("peergraph.alerts-value", Alert::SCHEMA_JSON).expect("register");
    let encoder = lookup_only.encoder::<Alert>("peergraph.alerts").expect("now registered");
    assert_eq!(encoder.schema_id(), Some(id));
    let lookups: Vec<_> =
        local.requests().into_iter().filter(|r| r.path == "/subjects/peergraph.alerts-value").collect();
    assert_eq!(lookups.len(), 2, "lookup-only mode never registers");
    assert!(lookups.iter().all(|r| r.method == "POST" && r.content_type.as_deref() == Some(CONTENT_TYPE)));
    assert_eq!(local.subjects()["peergraph.alerts-value"], vec![id]);

    // A subject that exists, but not with this schema: "schema not found" (40403).
    let error = lookup_only.lookup_id("peergraph.alerts-value", GraphEdge::SCHEMA_JSON).expect_err("other schema");
    assert!(error.to_string().contains("40403"), "{error}");
}

#[test]
fn unknown_ids_are_remembered_briefly_then_asked_again() {
    let local = LocalRegistry::start();
    let registry = Arc::new(client(&RegistryConfig { not_found_ttl: Duration::from_millis(300), ..config(&local) }));
    let decoder = Decoder::<Flow>::new(registry.clone());
    let bogus = Encoder::<Flow>::confluent(77).encode_to_vec(&flow(1)).expect("encode");
    for _ in 0..3 {
        let error = decoder.decode(&bogus).expect_err("id 77 is not registered");
        assert_eq!(error.kind(), "unknown_schema_id");
        assert!(error.to_string().contains(&format!("the schema registry at {}", local.url())), "{error}");
    }
    assert_eq!(registry.requests(), 1, "not found is cached");
    std::thread::sleep(Duration::from_millis(400));
    decoder.decode(&bogus).expect_err("still not registered");
    assert_eq!(registry.requests(), 2, "asked again after not_found_ttl");
}

#[test]
fn transient_failures_are_retried_and_persistent_ones_reported() {
    let local = LocalRegistry::start();
    let registry = client(&RegistryConfig { retries: 2, ..config(&local) });
    local.fail_next(&[503, 429]);
    let id = registry.register("retry-value", Flow::SCHEMA_JSON).expect("third attempt succeeds");
    assert_eq!(registry.requests(), 3);

    local.fail_next(&[500, 502, 503]);
    let error = registry.schema(id).expect_err("all three attempts fail");
    assert_eq!(error.kind(), "status");
    let message = error.to_string();
    assert!(message.contains(&format!("{}/schemas/ids/{id}", local.url())) && message.contains("503"), "{message}");
    assert_eq!(registry.requests(), 6);

    // A client error is not retried.
    local.fail_next(&[422]);
    let error = registry.register("bad-value", Alert::SCHEMA_JSON).expect_err("422");
    assert_eq!(error.kind(), "status");
    assert_eq!(registry.requests(), 7);
    // The decoder reports a failed lookup as such (retried on the next message, not cached).
    local.fail_next(&[500, 500, 500]);
    let reader = Arc::new(client(&RegistryConfig { retries: 2, ..config(&local) }));
    let decoder = Decoder::<Flow>::new(reader.clone());
    let bytes = Encoder::<Flow>::confluent(id).encode_to_vec(&flow(3)).expect("encode");
    assert_eq!(decoder.decode(&bytes).expect_err("registry failing").kind(), "schema_lookup_failed");
    assert_eq!(decoder.decode(&bytes).expect("registry back"), flow(3));
}

#[test]
fn basic_auth_is_sent_and_refusals_never_show_the_password() {
    let options = RegistryOptions { basic_auth: Some(("peergraph".into(), "s3cr3t-pw".into())), tls: false };
    let local = LocalRegistry::start_with(options);
    let dir = tempfile::tempdir().expect("dir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cr3t-pw\n").expect("write");
    let good = RegistryConfig {
        username: Some("peergraph".into()),
        password_file: Some(password_file.clone()),
        ..config(&local)
    };
    let id = client(&good).encoder::<Alert>("peergraph.alerts").expect("authorized").schema_id().expect("id");
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("peergraph:s3cr3t-pw"));
    assert_eq!(local.requests()[0].authorization.as_deref(), Some(expected.as_str()));

    std::env::set_var("PEERGRAPH_REGISTRY_TEST_WRONG_PASSWORD", "not-the-password");
    let wrong = RegistryConfig {
        password_file: None,
        password_env: Some("PEERGRAPH_REGISTRY_TEST_WRONG_PASSWORD".into()),
        ..good.clone()
    };
    let registry = client(&wrong);
    let error = registry.schema(id).expect_err("refused");
    assert_eq!(error.kind(), "unauthorized");
    let message = format!("{error} {error:?} {registry:?}");
    assert!(message.contains("401") && message.contains(local.url()), "{message}");
    assert!(!message.contains("not-the-password") && !message.contains("s3cr3t"), "{message}");
    assert_eq!(registry.requests(), 1, "a refusal is not retried");
    let anonymous = client(&config(&local));
    assert_eq!(anonymous.schema(id).expect_err("no credentials").kind(), "unauthorized");
}

#[test]
fn https_is_verified_against_the_configured_ca() {
    let local = LocalRegistry::start_with(RegistryOptions { basic_auth: None, tls: true });
    assert!(local.url().starts_with("https://"));
    let ca_file = local.ca_file().expect("ca").to_path_buf();
    let trusted = client(&RegistryConfig { ca_file: Some(ca_file), ..config(&local) });
    let id = trusted.register("tls-value", Flow::SCHEMA_JSON).expect("verified");
    assert_eq!(*trusted.schema(id).expect("schema"), *Flow::schema());

    let untrusted = client(&RegistryConfig { retries: 0, ..config(&local) });
    let error = untrusted.schema(id).expect_err("private CA not trusted");
    assert_eq!(error.kind(), "transport");
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");

    let insecure = client(&RegistryConfig { insecure_skip_verify: true, ..config(&local) });
    assert_eq!(*insecure.schema(id).expect("verification off"), *Flow::schema());
}

#[test]
fn messages_written_with_an_older_registered_schema_are_resolved_into_flows() {
    // An older Flow schema: no app_protocol, src_meta or dst_meta.
    let mut old: serde_json::Value = serde_json::from_str(Flow::SCHEMA_JSON).expect("schema json");
    let fields = old["fields"].as_array_mut().expect("fields");
    fields.retain(|field| !matches!(field["name"].as_str(), Some("app_protocol" | "src_meta" | "dst_meta")));
    let old_text = old.to_string();
    let old_schema = apache_avro::Schema::parse_str(&old_text).expect("old schema");

    let local = LocalRegistry::start();
    let registry = Arc::new(client(&config(&local)));
    let old_id = registry.register("peergraph.flows-value", &old_text).expect("register the old schema");
    let mut record = apache_avro::types::Record::new(&old_schema).expect("record");
    let expected = Flow { app_protocol: None, src_meta: None, dst_meta: None, ..flow(2) };
    let value = apache_avro::to_value(&expected).expect("value");
    let apache_avro::types::Value::Record(all) = value else { panic!("a record") };
    for (name, value) in all {
        if !matches!(name.as_str(), "app_protocol" | "src_meta" | "dst_meta") {
            record.put(&name, value);
        }
    }
    let mut bytes = vec![0];
    bytes.extend_from_slice(&old_id.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&old_schema).build().expect("writer");
    bytes.extend(writer.write_value_to_vec(record).expect("datum"));
    let decoder = Decoder::<Flow>::new(registry);
    assert_eq!(decoder.decode(&bytes).expect("resolved"), expected);
}

/// The receiver itself refuses what a registry refuses, so the tests above would catch a client
/// that sent the wrong content type, a malformed body or an invalid schema.
#[test]
fn the_local_registry_refuses_bad_content_types_bodies_and_schemas() {
    use std::io::{Read as _, Write as _};
    let local = LocalRegistry::start();
    let address = local.url().trim_start_matches("http://").to_owned();
    let post = |content_type: &str, body: &str| {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        write!(
            stream,
            "POST /subjects/s-value/versions HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    };
    let schema = serde_json::json!({ "schema": Flow::SCHEMA_JSON }).to_string();
    assert!(post("text/plain", &schema).starts_with("HTTP/1.1 415"));
    assert!(post(CONTENT_TYPE, "{\"schema\": 1}").starts_with("HTTP/1.1 422"));
    let invalid = post(CONTENT_TYPE, "{\"schema\": \"{\\\"type\\\": \\\"nope\\\"}\"}");
    assert!(invalid.starts_with("HTTP/1.1 422") && invalid.contains("42201"), "{invalid}");
    let accepted = post(CONTENT_TYPE, &schema);
    assert!(accepted.starts_with("HTTP/1.1 200") && accepted.contains("\"id\":1"), "{accepted}");
    assert!(local.subjects().contains_key("s-value"));
}
