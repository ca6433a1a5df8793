//! The `peergraph` command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use peergraph::config::Config;
use peergraph::metrics::Metrics;
use peergraph::simulate::{Profile, SwapConfig};
use peergraph_schemas::codec::WireFormat;

#[derive(Parser)]
#[command(name = "peergraph", version, about = "Network detection and response on Kafka, with differential dataflow")]
struct Cli {
    /// Configuration file (TOML). `PEERGRAPH__SECTION__KEY` environment variables override it.
    #[arg(long, short, global = true, env = "PEERGRAPH_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Log filter, e.g. "info" or "peergraph=debug" (RUST_LOG wins when set).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on an in-process Kafka: simulator, pipeline, console alerts.
    Demo(DemoArgs),
    /// Publish simulated flows to the flows topic.
    Simulate(SimulateArgs),
    /// Run the pipeline: flows topic → dataflow → alerts topic.
    Run(RunArgs),
    /// Deliver alerts from the alerts topic to the console and a JSON-lines file.
    Connect(ConnectArgs),
    /// Show the effective configuration (secrets redacted).
    Config {
        #[arg(long)]
        print: bool,
    },
    /// Meter packets (a pcap/pcapng file or a live interface) into flows on the flows topic.
    Sensor(peergraph::sensor::SensorArgs),
    /// Measure `run` against a raw consume of the same simulated topic.
    Bench(peergraph::bench::BenchArgs),
    /// Efficacy against the simulator's labels: which attacks were detected, which alerts were false positives.
    Evaluate(peergraph::evaluate::EvaluateArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Wall-clock seconds of simulated traffic (at ten simulated seconds per second).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// JSON-lines file the alerts are also written to.
    #[arg(long, default_value = "peergraph-demo-alerts.jsonl")]
    alerts_file: PathBuf,
}

#[derive(Args)]
struct SimulateArgs {
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many flows.
    #[arg(long)]
    flows: Option<u64>,
    /// Simulated time to cover, e.g. "10m".
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Simulated seconds per second; 0 = as fast as possible.
    #[arg(long)]
    speed: Option<f64>,
    /// Event time of the first round (ms since the Unix epoch).
    #[arg(long)]
    start_ms: Option<i64>,
    #[arg(long)]
    clients: Option<usize>,
    #[arg(long)]
    web_replicas: Option<usize>,
    /// Environment profile: "demo" or "organisation".
    #[arg(long, value_parser = parse_profile)]
    environment: Option<Profile>,
    /// Swap one web replica's image for a malicious one.
    #[arg(long)]
    swap: bool,
    /// When the swap happens (simulated time from the start).
    #[arg(long, value_parser = humantime::parse_duration)]
    swap_at: Option<Duration>,
    /// How long the malicious image runs.
    #[arg(long, value_parser = humantime::parse_duration)]
    swap_for: Option<Duration>,
    /// Write ground-truth labels (JSON lines) here.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// json, avro or avro-confluent.
    #[arg(long)]
    format: Option<WireFormat>,
}

#[derive(Args)]
struct RunArgs {
    /// Worker threads in this process.
    #[arg(long, short)]
    workers: Option<usize>,
    /// Processes in the timely cluster.
    #[arg(long)]
    processes: Option<usize>,
    /// This process's index.
    #[arg(long)]
    process: Option<usize>,
    /// One host:port per process.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Stop once the topic has been read to its end as of the start.
    #[arg(long)]
    stop_at_end: bool,
}

#[derive(Args)]
struct ConnectArgs {
    /// Also append alerts to this JSON-lines file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Do not print alerts to the console.
    #[arg(long)]
    no_console: bool,
    /// Stop after no alert arrived for this long, e.g. "30s".
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_exit: Option<Duration>,
    /// Build every configured sink and run its health check, then exit (non-zero on failure).
    #[arg(long)]
    check: bool,
}

fn main() {
    let cli = Cli::parse();
    peergraph::init_tracing(&cli.log, cli.log_json);
    if let Err(error) = dispatch(cli) {
        tracing::error!("{error:#}");
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(brokers) = cli.brokers {
        config.kafka.brokers = brokers;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc_on_thread(move || stop.store(true, Ordering::Relaxed));
    }
    match cli.command {
        Command::Demo(args) => {
            peergraph::demo::demo(config, Duration::from_secs(args.seconds), &args.alerts_file, stop)
        }
        Command::Simulate(args) => {
            let sim = &mut config.simulate;
            sim.seed = args.seed.unwrap_or(sim.seed);
            sim.max_flows = args.flows.unwrap_or(sim.max_flows);
            sim.duration = args.duration.unwrap_or(sim.duration);
            if let Some(flows) = args.flows {
                if args.duration.is_none() {
                    // A flow count alone: run as long as it takes.
                    sim.duration = Duration::from_secs(flows.max(1) * 3600);
                }
            }
            sim.speed = args.speed.unwrap_or(sim.speed);
            sim.start_ms = args.start_ms.or(sim.start_ms);
            sim.clients = args.clients.unwrap_or(sim.clients);
            sim.web_replicas = args.web_replicas.unwrap_or(sim.web_replicas);
            sim.environment = args.environment.unwrap_or(sim.environment);
            sim.labels = args.labels.or(sim.labels.take());
            sim.format = args.format.unwrap_or(sim.format);
            if args.swap || args.swap_at.is_some() || args.swap_for.is_some() {
                let mut swap = sim.swap.take().unwrap_or_default();
                swap.at = args.swap_at.unwrap_or(swap.at);
                swap.lasting = args.swap_for.unwrap_or(swap.lasting);
                sim.swap = Some(swap);
            } else if sim.swap.is_none() {
                sim.swap = None::<SwapConfig>;
            }
            let report = peergraph::simulate::simulate(&config, &stop)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Run(args) => {
            let run = &mut config.run;
            run.workers = args.workers.unwrap_or(run.workers);
            run.processes = args.processes.unwrap_or(run.processes);
            run.process = args.process.unwrap_or(run.process);
            run.hostfile = args.hostfile.or(run.hostfile.take());
            run.stop_at_end |= args.stop_at_end;
            // The page, the API, /metrics and /health: one server on api.listen, started by run.
            let metrics = Metrics::new();
            let report = peergraph::run::run(&config, stop, metrics)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Connect(args) => {
            if args.file.is_some() {
                config.connect.file = args.file;
            }
            config.connect.console &= !args.no_console;
            config.connect.idle_exit = args.idle_exit.or(config.connect.idle_exit);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            if args.check {
                let custom = peergraph_connectors::CustomSinks::default();
                let healthy = runtime
                    .block_on(peergraph_connectors::check(&config.connect, &custom))
                    .context("connect --check")?;
                println!("healthy sinks: {}", healthy.join(", "));
                return Ok(());
            }
            if !config.api.listen.is_empty() {
                let mut registry = prometheus_client::registry::Registry::default();
                peergraph_connectors::register_metrics(&mut registry);
                if let Err(error) = peergraph::metrics::serve_registry(&config.api.listen, registry) {
                    tracing::warn!("{error:#}; connect runs without its metrics endpoint");
                }
            }
            let client = peergraph::kafka::client_config(&config.kafka);
            let shutdown = async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let report = runtime
                .block_on(peergraph_connectors::run(client, &config.topics.alerts, &config.connect, shutdown))
                .context("connect")?;
            eprintln!("{report:?}");
            Ok(())
        }
        Command::Config { print: _ } => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Sensor(args) => {
            let report = peergraph::sensor::run_sensor(&config, args, &stop)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench(args) => peergraph::bench::bench(config, args),
        Command::Evaluate(args) => peergraph::evaluate::run(&args).map(|_| ()),
    }
}

fn parse_profile(name: &str) -> Result<Profile, String> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map_err(|_| format!("{name:?}: demo or organisation"))
}

/// Sets the flag on SIGINT / SIGTERM, from a small thread with its own runtime.
fn ctrlc_on_thread(on_signal: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        });
        eprintln!("stopping (signal received)…");
        on_signal();
    });
}
