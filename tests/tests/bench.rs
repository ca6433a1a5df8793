//! `peergraph bench` on a real broker: its flows stream (event time advances through many epochs
//! ending about now), its self-check passes, and it leaves none of its topics behind.

use std::time::Duration;

use peergraph::bench::{bench, BenchArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};

fn bench_topics(config: &peergraph::config::Config, since_ms: i64) -> Vec<String> {
    let consumer: BaseConsumer = peergraph::kafka::client_config(&config.kafka).create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| {
            let run_ms = name.strip_prefix("peergraph.bench.").and_then(|rest| rest.split('.').next());
            run_ms.and_then(|ms| ms.parse::<i64>().ok()).is_some_and(|ms| ms >= since_ms)
        })
        .collect()
}

#[test]
fn bench_streams_checks_itself_and_deletes_its_topics() {
    let mut config = peergraph_tests::config("bench");
    config.api.listen = String::new();
    // Coarse ticks and a short window: a few dozen epochs, enough to slide, quick in a debug build.
    config.time.tick = Duration::from_secs(5);
    config.time.window = Duration::from_secs(60);
    let since_ms = peergraph::simulate::now_ms();
    let args = BenchArgs {
        flows: 6_000,
        workers: 1,
        topic: None,
        keep_flows: false,
        clients: 40,
        web_replicas: 4,
        workloads: 20,
        namespaces: 2,
        replicas: 2,
        calls_per_minute: 6.0,
    };
    bench(config.clone(), args).expect("the bench and its self-check pass");
    assert_eq!(bench_topics(&config, since_ms), Vec::<String>::new(), "the bench left topics behind");
}
