//! Decode throughput of `Decoder<Flow>` on one thread: the same N encoded flows read by apache-avro's serde
//! path (`with_compiled_readers(false)`), by the compiled reader, and as JSON, in one command so the ratios
//! hold on a shared machine. The timed loops decode and drop each flow; the first round also checks, untimed,
//! that every pass decoded every flow to the same checksum of all fields.
//!
//! cargo run --release -p peergraph-schemas --example decode_bench -- [FLOWS] [ROUNDS]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use peergraph_schemas::codec::{Decoder, Encoder, WireFormat};
use peergraph_schemas::{ConnState, EndpointMeta, Flow};

/// A small deterministic generator (xorshift64*), so every run decodes the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORKLOADS: [(&str, &str, &str); 6] = [
    ("shop", "frontend", "Deployment"),
    ("shop", "checkout", "Deployment"),
    ("payments", "ledger", "StatefulSet"),
    ("payments", "api", "Deployment"),
    ("kube-system", "coredns", "Deployment"),
    ("monitoring", "node-exporter", "DaemonSet"),
];

fn pod_meta(rng: &mut Rng) -> (String, EndpointMeta) {
    let (namespace, workload, kind) = WORKLOADS[rng.below(WORKLOADS.len() as u64) as usize];
    let replica = rng.below(12);
    let image = format!("registry.example/{namespace}/{workload}:1.{}.0", replica % 3);
    let meta = EndpointMeta {
        namespace: Some(namespace.into()),
        workload: Some(workload.into()),
        workload_kind: Some(kind.into()),
        pod: Some(format!("{workload}-7d9f{replica:x}-abcde")),
        node: Some(format!("node-{}", 1 + rng.below(6))),
        image_digest: Some(format!("sha256:{:016x}", rng.next())),
        image: Some(image),
        labels: BTreeMap::from([("app".to_owned(), workload.to_owned())]),
    };
    (format!("10.244.{}.{}", rng.below(6), 2 + replica), meta)
}

/// Flows shaped like the simulator's: most between pods with both ends' metadata, the rest from office hosts
/// or to external addresses without any.
fn flow(rng: &mut Rng, n: u64) -> Flow {
    let with_meta = rng.below(10) < 7;
    let ((src_addr, src_meta), (dst_addr, dst_meta)) = if with_meta {
        let (src, src_meta) = pod_meta(rng);
        let (dst, dst_meta) = pod_meta(rng);
        ((src, Some(src_meta)), (dst, Some(dst_meta)))
    } else {
        let src = format!("10.1.{}.{}", rng.below(4), rng.below(250));
        let dst = format!("203.0.113.{}", rng.below(250));
        ((src, None), (dst, None))
    };
    let start_ms = 1_764_000_000_000 + n as i64 * 3;
    Flow {
        sensor_id: format!("hubble-node-{}", 1 + rng.below(6)),
        start_ms,
        end_ms: start_ms + rng.below(5_000) as i64,
        src_addr,
        src_port: 32_768 + rng.below(28_000) as i32,
        dst_addr,
        dst_port: [443, 8080, 5432, 53][rng.below(4) as usize],
        protocol: 6,
        bytes_out: rng.below(20_000) as i64,
        bytes_in: rng.below(2_000_000) as i64,
        packets_out: 1 + rng.below(40) as i64,
        packets_in: rng.below(60) as i64,
        tcp_flags: 0x1b,
        conn_state: if rng.below(50) == 0 { ConnState::REJ } else { ConnState::SF },
        app_protocol: (rng.below(2) == 0).then(|| "tls".to_owned()),
        src_meta,
        dst_meta,
    }
}

/// FNV-1a over a flow's fields: equal checksums mean the passes decoded the same values.
fn checksum(sum: u64, flow: &Flow) -> u64 {
    let mut hash = sum;
    let mut mix = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x100_0000_01b3);
    };
    mix(flow.sensor_id.as_bytes());
    mix(flow.src_addr.as_bytes());
    mix(flow.dst_addr.as_bytes());
    for number in [flow.start_ms, flow.end_ms, flow.bytes_out, flow.bytes_in, flow.packets_out, flow.packets_in] {
        mix(&number.to_le_bytes());
    }
    for number in [flow.src_port, flow.dst_port, flow.protocol, flow.tcp_flags, flow.conn_state as i32] {
        mix(&number.to_le_bytes());
    }
    mix(flow.app_protocol.as_deref().unwrap_or("-").as_bytes());
    for meta in [&flow.src_meta, &flow.dst_meta] {
        let Some(meta) = meta else {
            mix(b"no meta");
            continue;
        };
        let strings = [
            &meta.namespace,
            &meta.workload,
            &meta.workload_kind,
            &meta.pod,
            &meta.node,
            &meta.image,
            &meta.image_digest,
        ];
        for string in strings {
            mix(string.as_deref().unwrap_or("-").as_bytes());
        }
        for (key, value) in &meta.labels {
            mix(key.as_bytes());
            mix(value.as_bytes());
        }
    }
    hash
}

struct Pass {
    what: &'static str,
    flows: u64,
    checksum: u64,
    seconds: f64,
    bytes: usize,
}

/// Decodes every message, timed, touching each flow only cheaply (its fields' sizes and numbers); then,
/// untimed, decodes them again for the full checksum, so the hash's cost does not dilute the ratios.
fn decode_all(what: &'static str, decoder: &Decoder<Flow>, messages: &[Vec<u8>], verify: bool) -> Pass {
    let bytes = messages.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut flows = 0u64;
    for message in messages {
        match decoder.decode(black_box(message)) {
            Ok(flow) => {
                flows += 1;
                black_box((flow.src_addr.len(), flow.dst_meta.as_ref().map(|meta| meta.labels.len()), flow.bytes_in));
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let checksum = if verify {
        messages.iter().filter_map(|message| decoder.decode(message).ok()).fold(0, |sum, flow| checksum(sum, &flow))
    } else {
        0
    };
    Pass { what, flows, checksum, seconds, bytes }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map_or(1_000_000, |n| n.parse().expect("FLOWS is a number"));
    let rounds: usize = args.next().map_or(3, |n| n.parse().expect("ROUNDS is a number"));

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let flows: Vec<Flow> = (0..count).map(|n| flow(&mut rng, n)).collect();
    let encode = |format: WireFormat| -> Vec<Vec<u8>> {
        let encoder = Encoder::<Flow>::new(format).expect("encoder");
        flows.iter().map(|flow| encoder.encode_to_vec(flow).expect("encode")).collect()
    };
    let avro = encode(WireFormat::AvroSingleObject);
    let json = encode(WireFormat::Json);
    drop(flows);

    let apache_avro = Decoder::<Flow>::default().with_compiled_readers(false);
    let compiled = Decoder::<Flow>::default();
    assert!(compiled.uses_compiled_reader() && !apache_avro.uses_compiled_reader());

    println!(
        "{count} flows, Avro single-object {:.1} MB ({:.0} B/flow), JSON {:.1} MB; one thread; best of {rounds} rounds",
        avro.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        avro.iter().map(Vec::len).sum::<usize>() as f64 / count as f64,
        json.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
    );
    let mut best: Vec<Pass> = Vec::new();
    for round in 0..rounds {
        // Interleaved, so a slow moment of the machine is shared by all three.
        let verify = round == 0;
        let passes = [
            decode_all("apache-avro serde (Avro)", &apache_avro, &avro, verify),
            decode_all("compiled reader (Avro)", &compiled, &avro, verify),
            decode_all("serde_json (JSON)", &compiled, &json, verify),
        ];
        for pass in passes {
            match best.iter_mut().find(|b| b.what == pass.what) {
                Some(b) if b.seconds <= pass.seconds => {}
                Some(b) => b.seconds = pass.seconds,
                None => best.push(pass),
            }
        }
    }
    assert!(best.iter().all(|pass| pass.flows == count), "every pass decodes every flow");
    assert!(best.iter().all(|pass| pass.checksum == best[0].checksum), "every pass decodes the same values");
    let baseline = count as f64 / best[0].seconds;
    println!("checksum {:016x} in every pass", best[0].checksum);
    println!("{:<26} {:>9} {:>12} {:>9} {:>16}", "", "seconds", "flows/s", "MB/s", "vs apache-avro");
    for pass in &best {
        let rate = pass.flows as f64 / pass.seconds;
        let megabytes = pass.bytes as f64 / 1e6 / pass.seconds;
        println!("{:<26} {:>9.3} {:>12.0} {:>9.1} {:>16.2}", pass.what, pass.seconds, rate, megabytes, rate / baseline);
    }
}
