//! `peergraph demo`: the whole product in one process with no setup. An in-process Kafka
//! (librdkafka's mock cluster), the simulator with one swapped replica, the pipeline on two
//! workers, and the connector printing alerts to the console and a JSON-lines file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::mocking::MockCluster;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::simulate::SwapConfig;

/// Simulated seconds per wall-clock second in the demo.
const SPEED: f64 = 10.0;

pub fn demo(mut config: Config, wall: Duration, alerts_file: &Path, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka")?;
    config.kafka.brokers = cluster.bootstrap_servers();
    config.topics.create = false;
    for topic in [
        &config.topics.flows,
        &config.topics.alerts,
        &config.topics.service_graph,
        &config.topics.assets,
        &config.topics.indicators,
        &config.topics.state,
    ] {
        cluster.create_topic(topic, config.topics.partitions, 1).with_context(|| format!("creating {topic}"))?;
    }
    config.time.window = Duration::from_secs(60);
    config.run.workers = 2;
    config.run.idle_timeout = Duration::from_secs(3);
    config.simulate.speed = SPEED;
    config.simulate.duration = wall.mul_f64(SPEED);
    config.simulate.start_ms = None;
    config.simulate.swap.get_or_insert_with(SwapConfig::default);
    config.connect.console = true;
    config.connect.file = Some(alerts_file.to_path_buf());
    config.validate()?;

    let swap = config.simulate.swap.clone().unwrap_or_default();
    println!(
        "peergraph demo: simulating {} of traffic ({}x) on an in-process Kafka; web replica {} runs a malicious image \
         from {} to {} (simulated), talking to {}.",
        humantime::format_duration(config.simulate.duration),
        SPEED,
        swap.replica,
        humantime::format_duration(swap.at),
        humantime::format_duration(swap.at + swap.lasting),
        swap.destination,
    );
    println!("Alerts appear below and in {}.", alerts_file.display());
    let page = (!config.api.listen.is_empty()).then(|| format!("http://{}/", config.api.listen));
    match &page {
        Some(page) => println!("The activity map (the service graph, its history and the alerts on it): {page}\n"),
        None => println!("(api.listen is empty: no activity map page)\n"),
    }

    let stop_run = Arc::new(AtomicBool::new(false));
    let stop_connect = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let (config, stop_run) = (config.clone(), stop_run.clone());
        std::thread::spawn(move || crate::run::run(&config, stop_run, Metrics::new()))
    };
    let connector = {
        let (config, stop_connect) = (config.clone(), stop_connect.clone());
        std::thread::spawn(move || -> anyhow::Result<peergraph_connectors::ConnectReport> {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let client = crate::kafka::client_config(&config.kafka);
            let shutdown = async move {
                while !stop_connect.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            Ok(runtime.block_on(peergraph_connectors::run(client, &config.topics.alerts, &config.connect, shutdown))?)
        })
    };

    // Next to the first alert on the console, where to see it on the map.
    let pointer = page.map(|page| {
        let (file, stop) = (alerts_file.to_path_buf(), stop_connect.clone());
        // The file is appended to: an alert of this run makes it grow.
        let before = std::fs::metadata(&file).map_or(0, |m| m.len());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::metadata(&file).is_ok_and(|m| m.len() > before) {
                    println!("  ↳ see it on the activity map: {page} (click the alert to focus its entity and peers)");
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    });

    let simulated = crate::simulate::simulate(&config, &stop);
    // Let the pipeline close the last epochs and the connector deliver what they raised.
    std::thread::sleep(Duration::from_secs(3));
    stop_run.store(true, Ordering::Relaxed);
    let ran = pipeline.join().map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?;
    std::thread::sleep(Duration::from_secs(2));
    stop_connect.store(true, Ordering::Relaxed);
    let delivered = connector.join().map_err(|_| anyhow::anyhow!("the connector thread panicked"))?;
    if let Some(pointer) = pointer {
        let _ = pointer.join();
    }

    let simulated = simulated?;
    let ran = ran?;
    let delivered = delivered?;
    println!(
        "\ndone: {} flows simulated, {} read by the pipeline; alerts delivered: {:?}",
        simulated.flows, ran.messages, delivered
    );
    Ok(())
}
