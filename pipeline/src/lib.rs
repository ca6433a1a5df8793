//! peergraph's pipeline: configuration, the Kafka source and sinks around the timely cluster,
//! the sensor simulator and its efficacy evaluation, the embedded demo and the benchmark. The binary `peergraph` is a thin
//! command line over these.

pub mod alert_board;
pub mod api;
pub mod bench;
pub mod config;
pub mod demo;
pub mod directory;
pub mod evaluate;
pub mod kafka;
pub mod metrics;
pub mod page;
pub mod run;
pub mod sensor;
pub mod simulate;

pub use config::Config;

/// Structured logs to stderr; `filter` is an `EnvFilter` directive ("info", "peergraph=debug").
pub fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
