//! `peergraph bench`: the pipeline's throughput as a ratio against a raw consume of the same
//! topic, measured in the same command (the machine is shared; bare times mean little). The
//! simulated flows carry real event times that end now and are spread as the simulator's load
//! model says, so the window slides during the run as it does in production. Every topic the run
//! touches is its own and is deleted at the end, and the run checks itself like a test: it fails
//! if event time did not advance or a flow is unaccounted for.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use peergraph_schemas::codec::Decoder;
use peergraph_schemas::Flow;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, KafkaConfig};
use crate::kafka::{self, client_config};
use crate::metrics::Metrics;
use crate::run::RunReport;
use crate::simulate::{DryRun, FleetConfig, SwapConfig};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Flows to simulate into a fresh topic; their event times end now and reach back as far as
    /// the environment's load needs to produce them.
    #[arg(long, default_value_t = 1_000_000)]
    pub flows: u64,
    /// Pipeline worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Reuse this already-filled flows topic instead of simulating (it is never deleted).
    #[arg(long)]
    pub topic: Option<String>,
    /// Keep the simulated flows topic at the end, to run again on it with `--topic`.
    #[arg(long)]
    pub keep_flows: bool,
    /// Office clients in the simulated environment (more clients, more distinct edges).
    #[arg(long, default_value_t = 400)]
    pub clients: usize,
    /// Replicas of the demo's web workload.
    #[arg(long, default_value_t = 12)]
    pub web_replicas: usize,
    /// Kubernetes Deployments in a simulated fleet besides the demo (0: none), e.g. 10000; with
    /// `--replicas 3` each pod keeps about 5 entity edges live (the next workload's 3 replicas
    /// and 2 DNS pods), so 10000 × 3 is about 150,000 live entity edges.
    #[arg(long, default_value_t = 0)]
    pub workloads: usize,
    /// Namespaces the fleet's Deployments are spread over.
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// Replicas of each fleet Deployment.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Calls per minute each fleet pod makes to the next workload of its namespace (and half
    /// as many DNS lookups); with the fleet's size, this sets the event-time span of `--flows`.
    #[arg(long, default_value_t = 2.0)]
    pub calls_per_minute: f64,
}

struct Measure {
    what: &'static str,
    messages: u64,
    seconds: f64,
}

/// The run's own topics: deleted when it ends, on an error too. A flows topic given with
/// `--topic`, or kept with `--keep-flows`, is not among them.
struct RunTopics {
    kafka: KafkaConfig,
    owned: Vec<String>,
}

impl Drop for RunTopics {
    fn drop(&mut self) {
        let names: Vec<&str> = self.owned.iter().map(String::as_str).filter(|t| !t.is_empty()).collect();
        match kafka::delete_topics(&self.kafka, &names) {
            Ok(()) => eprintln!("deleted the run's {} topics", names.len()),
            Err(error) => {
                tracing::warn!(%error, topics = ?names, "could not delete the benchmark's topics");
                eprintln!("could not delete the benchmark's topics {names:?}: {error}");
            }
        }
    }
}

pub fn bench(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    let prefix = format!("peergraph.bench.{}", crate::simulate::now_ms());
    let topics = &mut config.topics;
    topics.flows = args.topic.clone().unwrap_or_else(|| format!("{prefix}.flows"));
    topics.alerts = format!("{prefix}.alerts");
    topics.service_graph = format!("{prefix}.service-graph");
    topics.assets = format!("{prefix}.assets");
    topics.indicators = format!("{prefix}.indicators");
    topics.dead_letter = format!("{prefix}.dead-letter");
    // A fresh state topic and group: a benchmark run must not start from an earlier run's history.
    topics.state = format!("{prefix}.state");
    config.input.group_id = format!("{prefix}.pipeline");
    let mut owned = vec![
        config.topics.alerts.clone(),
        config.topics.service_graph.clone(),
        config.topics.assets.clone(),
        config.topics.indicators.clone(),
        config.topics.dead_letter.clone(),
        config.topics.state.clone(),
    ];
    if args.topic.is_none() && !args.keep_flows {
        owned.push(config.topics.flows.clone());
    }
    let _topics = RunTopics { kafka: config.kafka.clone(), owned };
    kafka::ensure_topics(&config.kafka, &config.topics)?;

    let (produced, plan) = match &args.topic {
        Some(_) => (None, None),
        None => {
            let (flows, plan) = simulate_streaming(&mut config, &args)?;
            (Some(flows), Some(plan))
        }
    };
    let topic = config.topics.flows.clone();

    let raw = consume(&config, &topic, false, &prefix)?;
    let decoded = consume(&config, &topic, true, &prefix)?;

    config.run.workers = args.workers;
    config.run.stop_at_end = true;
    let metrics = Metrics::new();
    let memory_before = Memory::reset_peak();
    let started = Instant::now();
    let report = crate::run::run(&config, Arc::new(AtomicBool::new(false)), metrics.clone())?;
    let seconds = started.elapsed().as_secs_f64();
    let memory_peak = Memory::peak();
    let pipeline = Measure { what: "peergraph run", messages: report.messages, seconds };

    println!("topic {topic}: {} messages; pipeline workers: {}", raw.messages, args.workers);
    println!("{:<28} {:>10} {:>9} {:>12} {:>8} {:>10}", "", "messages", "seconds", "msgs/s", "vs raw", "vs decode");
    let rate = |m: &Measure| m.messages as f64 / m.seconds;
    for m in [&raw, &decoded, &pipeline] {
        let (vs_raw, vs_decode) = (rate(m) / rate(&raw), rate(m) / rate(&decoded));
        println!(
            "{:<28} {:>10} {:>9.2} {:>12.0} {:>8.2} {:>10.2}",
            m.what,
            m.messages,
            m.seconds,
            rate(m),
            vs_raw,
            vs_decode
        );
    }
    println!(
        "edge updates handed to the dataflow: {} ({:.3} per flow)",
        report.edge_updates,
        report.edge_updates as f64 / report.messages.max(1) as f64
    );
    let check = SelfCheck {
        produced: produced.unwrap_or(raw.messages),
        raw: raw.messages,
        decoded: decoded.messages,
        read: report.messages,
        accepted: metrics.flows_accepted.get(),
        refused: metrics.rejected_total.get(),
    };
    let tick_ms = config.time.tick_ms();
    let epochs = EventTime::of(&report, tick_ms);
    print_event_time(&epochs, &report, config.time.window_ms(), plan.as_ref(), seconds);
    if let (Some(before), Some(peak)) = (memory_before, memory_peak) {
        let grown = peak.saturating_sub(before);
        let per_edge = plan.as_ref().filter(|plan| plan.live_edges > 0).map_or(String::new(), |plan| {
            format!(": {:.1} KB per live entity edge", grown as f64 / plan.live_edges as f64 / 1e3)
        });
        println!(
            "memory: RSS {:.0} MB before the run, peak {:.0} MB during it (+{:.0} MB){per_edge}",
            before as f64 / 1e6,
            peak as f64 / 1e6,
            grown as f64 / 1e6
        );
    }
    println!(
        "flows: produced {}, raw consume {}, decoded {}, pipeline read {} = accepted {} + refused {} \
         (late {}, ancient_timestamp {}, future_timestamp {}; dead-lettered {})",
        check.produced,
        check.raw,
        check.decoded,
        check.read,
        check.accepted,
        check.refused,
        metrics.rejected("late"),
        metrics.rejected("ancient_timestamp"),
        metrics.rejected("future_timestamp"),
        metrics.dead_lettered.get(),
    );
    let failures: Vec<String> = check.failures().into_iter().chain(epochs.failure()).collect();
    if !failures.is_empty() {
        anyhow::bail!("the benchmark's self-check failed:\n  - {}", failures.join("\n  - "));
    }
    println!("self-check passed: event time advanced through {} epochs, every flow accounted for", epochs.epochs);
    if args.keep_flows && args.topic.is_none() {
        println!("kept the flows topic: run again on it with --topic {topic}");
    }
    Ok(())
}

/// Simulates `--flows` flows ending now into the flows topic: a dry run of the environment says
/// how long its load model takes to produce them, and the simulation starts that long ago.
/// Returns the flows published and the dry run's figures.
fn simulate_streaming(config: &mut Config, args: &BenchArgs) -> anyhow::Result<(u64, DryRun)> {
    let sim = &mut config.simulate;
    sim.max_flows = args.flows;
    sim.speed = 0.0;
    sim.clients = args.clients;
    sim.web_replicas = args.web_replicas;
    sim.fleet = FleetConfig {
        namespaces: args.namespaces,
        workloads: args.workloads,
        replicas: args.replicas,
        calls_per_minute: args.calls_per_minute,
    };
    sim.swap = Some(SwapConfig { at: Duration::from_secs(600), ..SwapConfig::default() });
    let window_ms = config.time.window_ms() as i64;
    let end_ms = crate::simulate::now_ms();
    let max_span_ms = end_ms - config.input.earliest_end_ms();
    let planning = Instant::now();
    // The span the load needs from now on; then the same simulation as it will run, from that
    // long ago (the same for a flat load; one whose rate follows the time of day may produce a
    // few flows fewer or more than planned, and ends within a step or so of now).
    let ahead = crate::simulate::dry_run(sim, end_ms, args.flows, window_ms, max_span_ms);
    anyhow::ensure!(
        ahead.flows == args.flows,
        "this environment produces only {} flows from now back to input.earliest_end: simulate fewer flows or a \
         larger environment (--clients, --workloads)",
        ahead.flows
    );
    let start_ms = end_ms - ahead.span_ms;
    let plan = crate::simulate::dry_run(sim, start_ms, args.flows, window_ms, ahead.span_ms);
    sim.start_ms = Some(start_ms);
    sim.duration = Duration::from_millis(plan.span_ms as u64);
    eprintln!(
        "planned {} flows over {:.0} s of event time ending now ({} live entity edges at the end, by the \
         simulator's count) in {:.1}s",
        plan.flows,
        plan.span_ms as f64 / 1e3,
        plan.live_edges,
        planning.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let report = crate::simulate::simulate(config, &AtomicBool::new(false))?;
    eprintln!(
        "simulated {} flows into {} in {:.1}s",
        report.flows,
        config.topics.flows,
        started.elapsed().as_secs_f64()
    );
    Ok((report.flows, plan))
}

/// Every flow accounted for: as many read by each consumer as were produced, and each read flow
/// either accepted into the dataflow or refused for a counted reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SelfCheck {
    produced: u64,
    raw: u64,
    decoded: u64,
    read: u64,
    accepted: u64,
    refused: u64,
}

impl SelfCheck {
    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (what, n) in
            [("the raw consume", self.raw), ("the decoding consume", self.decoded), ("the pipeline", self.read)]
        {
            if n != self.produced {
                failures.push(format!("{what} read {n} flows, {} were produced", self.produced));
            }
        }
        if self.accepted + self.refused != self.read {
            failures.push(format!(
                "the pipeline read {} flows but accepted {} and refused {} ({} unaccounted for)",
                self.read,
                self.accepted,
                self.refused,
                self.read as i64 - (self.accepted + self.refused) as i64
            ));
        }
        failures
    }
}

/// How far event time advanced in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventTime {
    /// Ticks from the earliest accepted flow's epoch to the final output frontier.
    epochs: u64,
    tick_ms: u64,
}

impl EventTime {
    fn of(report: &RunReport, tick_ms: u64) -> EventTime {
        let epochs =
            report.first_epoch.map_or(0, |first| report.output_frontier.saturating_sub(first) / tick_ms.max(1));
        EventTime { epochs, tick_ms }
    }

    /// A run whose flows all fall into one epoch measures a batch, not a stream: no window slides.
    fn failure(&self) -> Option<String> {
        (self.epochs <= 1).then(|| {
            format!(
                "event time advanced through {} epoch(s) of {} ms: every flow fell into one epoch, so no window slid",
                self.epochs, self.tick_ms
            )
        })
    }
}

fn print_event_time(epochs: &EventTime, report: &RunReport, window_ms: u64, plan: Option<&DryRun>, seconds: f64) {
    let at = |epoch: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(epoch));
    let first = report.first_epoch.map_or("none".to_owned(), |f| at(f).to_string());
    let span_ms = epochs.epochs * epochs.tick_ms;
    println!(
        "event time: first epoch {first}, output frontier {} ({}): {} epochs of {} ms, {:.1} windows of {} s; \
         the output frontier moved {} times",
        at(report.output_frontier),
        report.output_frontier,
        epochs.epochs,
        epochs.tick_ms,
        span_ms as f64 / window_ms.max(1) as f64,
        window_ms / 1000,
        report.frontier_moves
    );
    // Whether the pipeline would keep up with this load live: event time processed per second.
    println!(
        "the pipeline went through {:.0} s of event time in {seconds:.1} s: {:.1}× real time",
        span_ms as f64 / 1e3,
        span_ms as f64 / 1e3 / seconds.max(1e-9)
    );
    if span_ms <= window_ms {
        println!("WARNING: the run is shorter than one window: the window never slid (simulate more flows)");
    }
    if let Some(plan) = plan {
        println!(
            "simulated: {:.0} s of event time, {} live entity edges in the last window",
            plan.span_ms as f64 / 1e3,
            plan.live_edges
        );
    }
}

/// The process's resident memory, from `/proc/self/status` (Linux; `None` elsewhere).
struct Memory;

impl Memory {
    /// The resident set now, after resetting the kernel's peak (`VmHWM`) to it, so that
    /// [`Memory::peak`] measures only what follows.
    fn reset_peak() -> Option<u64> {
        // "5" resets the peak resident set size (Linux 4.0 and later); without it the peak may
        // be the simulator's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self::field("VmRSS:")
    }

    /// The peak resident set since the last [`Memory::reset_peak`].
    fn peak() -> Option<u64> {
        Self::field("VmHWM:")
    }

    fn field(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }
}

/// Reads the whole topic on one thread, optionally decoding every flow.
fn consume(config: &Config, topic: &str, decode: bool, prefix: &str) -> anyhow::Result<Measure> {
    let partitions = kafka::partition_count(&config.kafka, topic)?;
    let consumer: BaseConsumer = client_config(&config.kafka)
        .set("group.id", format!("{prefix}.raw"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_in_one_epoch_fails_the_self_check() {
        let report = |first: u64, frontier: u64| RunReport {
            first_epoch: Some(first),
            output_frontier: frontier,
            ..RunReport::default()
        };
        // What the old bench did: every time clamped to epoch 0, the frontier at the next tick.
        assert!(EventTime::of(&report(0, 1_000), 1_000).failure().is_some());
        assert!(EventTime::of(&RunReport::default(), 1_000).failure().is_some(), "nothing accepted");
        let streamed = EventTime::of(&report(1_796_256_000_000, 1_796_256_900_000), 1_000);
        assert_eq!(streamed.epochs, 900);
        assert_eq!(streamed.failure(), None);
    }

    #[test]
    fn every_flow_must_be_read_and_accepted_or_refused() {
        let fine = SelfCheck { produced: 10, raw: 10, decoded: 10, read: 10, accepted: 8, refused: 2 };
        assert!(fine.failures().is_empty());
        let lost = SelfCheck { accepted: 7, ..fine };
        assert_eq!(lost.failures().len(), 1, "{:?}", lost.failures());
        assert!(lost.failures()[0].contains("1 unaccounted"), "{:?}", lost.failures());
        let short = SelfCheck { read: 9, accepted: 7, ..fine };
        assert!(short.failures()[0].contains("the pipeline read 9 flows, 10 were produced"), "{:?}", short.failures());
    }
}
