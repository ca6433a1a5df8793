// Confluent's own schema-registry client and Avro serde (@confluentinc/schemaregistry), driven by
// peergraph's interop test (tests/tests/registry_interop.rs) over stdin/stdout:
//
//   node interop.mjs serialize    stdin: JSON array of records; registers the schema with
//                                 Confluent's client and serializes each record with its
//                                 AvroSerializer; stdout: {"id": N, "messages": ["<hex>", ...]}
//   node interop.mjs deserialize  stdin: JSON array of hex messages; deserializes each with
//                                 Confluent's AvroDeserializer; stdout: JSON array of records
//
// Environment: REGISTRY_URL (the registry's base URL), REGISTRY_USER_INFO ("user:password", for
// HTTP basic auth; optional), TOPIC (subjects follow TopicNameStrategy: TOPIC-value), SCHEMA_FILE
// (the .avsc to register; serialize only).
import { readFileSync } from 'node:fs';
import {
  AvroDeserializer,
  AvroSerializer,
  SchemaRegistryClient,
  SerdeType,
} from '@confluentinc/schemaregistry';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

function client() {
  const config = { baseURLs: [required('REGISTRY_URL')] };
  if (process.env.REGISTRY_USER_INFO) {
    config.basicAuthCredentials = { credentialsSource: 'USER_INFO', userInfo: process.env.REGISTRY_USER_INFO };
  }
  return new SchemaRegistryClient(config);
}

async function serialize(records) {
  const topic = required('TOPIC');
  const registry = client();
  const schema = readFileSync(required('SCHEMA_FILE'), 'utf8');
  const id = await registry.register(`${topic}-value`, { schemaType: 'AVRO', schema });
  // useSchemaId: the serializer fetches the schema by id and checks it is registered under the
  // subject (GET /schemas/ids/{id}, POST /subjects/{subject}) before writing 00 + id + datum.
  const serializer = new AvroSerializer(registry, SerdeType.VALUE, { useSchemaId: id });
  const messages = [];
  for (const record of records) {
    const bytes = await serializer.serialize(topic, record);
    messages.push(bytes.toString('hex'));
  }
  return { id, messages };
}

async function deserialize(messages) {
  const topic = required('TOPIC');
  const deserializer = new AvroDeserializer(client(), SerdeType.VALUE, {});
  const records = [];
  for (const hex of messages) {
    records.push(await deserializer.deserialize(topic, Buffer.from(hex, 'hex')));
  }
  return records;
}

const mode = process.argv[2];
const input = JSON.parse(readFileSync(0, 'utf8'));
const output = mode === 'serialize' ? await serialize(input)
  : mode === 'deserialize' ? await deserialize(input)
  : (() => { throw new Error(`usage: node interop.mjs serialize|deserialize (got ${mode})`); })();
process.stdout.write(JSON.stringify(output));
