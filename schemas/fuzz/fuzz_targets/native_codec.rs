//! The native codec: JSON, Avro single-object and Confluent-framed `Flow` messages.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Flow;

static DECODER: LazyLock<Decoder<Flow>> = LazyLock::new(Decoder::default);

fuzz_target!(|message: &[u8]| {
    let _ = DECODER.decode(message);
});
