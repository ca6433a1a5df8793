//! `peergraph bench`: the pipeline's throughput as a ratio against a raw consume of the same
//! topic, measured in the same command (the machine is shared; bare times mean little).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Flow;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, client_config};
use crate::metrics::Metrics;
use crate::simulate::SwapConfig;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Flows to simulate into a fresh topic.
    #[arg(long, default_value_t = 1_000_000)]
    pub flows: u64,
    /// Pipeline worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Reuse this already-filled topic instead of simulating.
    #[arg(long)]
    pub topic: Option<String>,
    /// Office clients in the simulated environment (more clients, more distinct edges).
    #[arg(long, default_value_t = 400)]
    pub clients: usize,
    #[arg(long, default_value_t = 12)]
    pub web_replicas: usize,
}

struct Measure {
    what: &'static str,
    messages: u64,
    seconds: f64,
}

pub fn bench(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    let stop = AtomicBool::new(false);
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => {
            let topic = format!("peergraph.bench.{}", crate::simulate::now_ms());
            config.topics.flows = topic.clone();
            config.simulate.max_flows = args.flows;
            config.simulate.duration = Duration::from_secs(args.flows.max(1) * 3600);
            config.simulate.speed = 0.0;
            config.simulate.clients = args.clients;
            config.simulate.web_replicas = args.web_replicas;
            config.simulate.swap = Some(SwapConfig { at: Duration::from_secs(600), ..SwapConfig::default() });
            let started = Instant::now();
            let report = crate::simulate::simulate(&config, &stop)?;
            eprintln!("simulated {} flows into {topic} in {:.1}s", report.flows, started.elapsed().as_secs_f64());
            topic
        }
    };
    config.topics.flows = topic.clone();
    config.topics.alerts = format!("{topic}.alerts");

    let raw = consume(&config, &topic, false)?;
    let decoded = consume(&config, &topic, true)?;

    config.run.workers = args.workers;
    config.run.stop_at_end = true;
    config.input.group_id = format!("peergraph-bench-{}", crate::simulate::now_ms());
    // A fresh state topic: a benchmark run must not start from an earlier run's history.
    config.topics.state = format!("{}.state", config.input.group_id);
    config.metrics.listen = String::new();
    let started = Instant::now();
    let report = crate::run::run(&config, Arc::new(AtomicBool::new(false)), Metrics::new());
    let seconds = started.elapsed().as_secs_f64();
    // The run's state topic is of no use to any later run.
    if let Err(error) = kafka::delete_topics(&config.kafka, &[config.topics.state.as_str()]) {
        tracing::warn!(%error, topic = %config.topics.state, "could not delete the benchmark's state topic");
    }
    let report = report?;
    let pipeline = Measure { what: "peergraph run", messages: report.messages, seconds };

    println!("topic {topic}: {} messages; pipeline workers: {}", raw.messages, args.workers);
    println!("{:<28} {:>10} {:>9} {:>12} {:>8}", "", "messages", "seconds", "msgs/s", "vs raw");
    for m in [&raw, &decoded, &pipeline] {
        let rate = m.messages as f64 / m.seconds;
        let ratio = rate / (raw.messages as f64 / raw.seconds);
        println!("{:<28} {:>10} {:>9.2} {:>12.0} {:>8.2}", m.what, m.messages, m.seconds, rate, ratio);
    }
    println!(
        "edge updates handed to the dataflow: {} ({:.3} per flow)",
        report.edge_updates,
        report.edge_updates as f64 / report.messages.max(1) as f64
    );
    Ok(())
}

/// Reads the whole topic on one thread, optionally decoding every flow.
fn consume(config: &Config, topic: &str, decode: bool) -> anyhow::Result<Measure> {
    let partitions = kafka::partition_count(&config.kafka, topic)?;
    let consumer: BaseConsumer = client_config(&config.kafka)
        .set("group.id", "peergraph-bench-raw")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the raw consumer")?;
    let mut list = TopicPartitionList::new();
    let mut end = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        end += high - low;
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let decoder = Decoder::<Flow>::default();
    let started = Instant::now();
    let (mut read, mut bytes, mut valid) = (0i64, 0usize, 0u64);
    while read < end {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                read += 1;
                let payload = message.payload().unwrap_or_default();
                bytes += payload.len();
                if decode && decoder.decode(payload).is_ok() {
                    valid += 1;
                }
            }
            Some(Err(error)) => anyhow::bail!("raw consume of {topic} failed: {error}"),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(!decode || valid == read as u64, "{} of {read} messages did not decode", read as u64 - valid);
    eprintln!("{} {read} messages, {:.1} MB", if decode { "consumed+decoded" } else { "consumed" }, bytes as f64 / 1e6);
    Ok(Measure { what: if decode { "raw consume + decode" } else { "raw consume" }, messages: read as u64, seconds })
}
