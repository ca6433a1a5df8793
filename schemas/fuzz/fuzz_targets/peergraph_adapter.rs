//! The `Peergraph` adapter: any message is either an error or flows that pass `Flow::validate`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use peergraph_schemas::adapters::{Adapter, InputFormat};

static ADAPTER: LazyLock<Adapter> = LazyLock::new(|| Adapter::new(InputFormat::Peergraph));

fuzz_target!(|message: &[u8]| {
    let mut flows = Vec::new();
    if ADAPTER.decode(message, &mut flows).is_ok() {
        for flow in &flows {
            assert!(flow.validate().is_ok(), "{flow:?}");
        }
    }
});
