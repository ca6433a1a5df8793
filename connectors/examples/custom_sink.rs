//! A custom sink in Rust: a "chat" sink that posts one line per alert event to a team chat's
//! incoming webhook, registered as plugin "chat" and configured like any built-in sink:
//!
//! ```toml
//! [connect]
//! console = false
//!
//! [[connect.sinks]]
//! name = "soc-chat"
//! type = "custom"
//! plugin = "chat"
//! options = { channel = "#soc", min_score = 50.0 }
//! rate_limit = { events_per_second = 1.0, burst = 5 }
//! ```
//!
//! The connector does the batching, retries, rate limiting, circuit breaking, dead-lettering and
//! offset commits; the sink only maps alerts to its target and says which failures are retryable.
//!
//! Run it against a broker (it prints the chat lines instead of posting them):
//!
//! ```text
//! PEERGRAPH_KAFKA_BROKERS=127.0.0.1:9092 cargo run -p peergraph-connectors --example custom_sink -- peergraph.alerts
//! ```

use async_trait::async_trait;
use peergraph_connectors::{ConnectConfig, CustomSinks, Sink, SinkError};
use peergraph_schemas::{Alert, AlertEvent};
use rdkafka::ClientConfig;

/// The sink's own settings, read from `options`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatOptions {
    channel: String,
    #[serde(default)]
    min_score: f64,
}

/// Posts alert events to a chat channel (here: prints them).
struct ChatSink {
    options: ChatOptions,
    posted: u64,
}

impl ChatSink {
    /// The pure mapping: alert in, chat line out (test this with fixtures).
    fn line(&self, alert: &Alert) -> String {
        let verb = match alert.event {
            AlertEvent::Raised => "🔴 raised",
            AlertEvent::Updated => "🟠 updated",
            AlertEvent::Cleared => "🟢 cleared",
        };
        format!("{} {verb}: {} on {} ({})", self.options.channel, alert.detector, alert.entity, alert.summary)
    }
}

#[async_trait]
impl Sink for ChatSink {
    fn name(&self) -> &str {
        "chat"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        // A real sink would call the chat API here (and return SinkError::permanent on a bad token).
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        for alert in batch.iter().filter(|alert| alert.score >= self.options.min_score) {
            // A real sink would POST here, mapping 429 / 5xx / timeouts to SinkError::retryable and
            // other refusals to SinkError::permanent; the connector retries or dead-letters.
            println!("{}", self.line(alert));
            self.posted += 1;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        eprintln!("chat sink posted {} message(s)", self.posted);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = std::env::args().nth(1).unwrap_or_else(|| "peergraph.alerts".into());
    let brokers = std::env::var("PEERGRAPH_KAFKA_BROKERS").map_err(|_| "set PEERGRAPH_KAFKA_BROKERS")?;

    // The connector's configuration, as it would appear under [connect] in peergraph's config file.
    let config: ConnectConfig = toml::from_str(
        r##"
            console = false
            group_id = "custom-sink-example"
            idle_exit = "10s"

            [[sinks]]
            name = "soc-chat"
            type = "custom"
            plugin = "chat"
            options = { channel = "#soc", min_score = 50.0 }
            rate_limit = { events_per_second = 5.0, burst = 10 }
        "##,
    )?;

    // Register the type: the factory gets the instance name and its `options`.
    let custom = CustomSinks::new().register("chat", |_name, options| {
        let options: ChatOptions = serde_json::from_value(serde_json::Value::Object(options.clone()))
            .map_err(|error| SinkError::permanent(format!("chat sink options: {error}")))?;
        Ok(Box::new(ChatSink { options, posted: 0 }) as Box<dyn Sink>)
    });

    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers);
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(peergraph_connectors::run_with(client, &topic, &config, &custom, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    eprintln!("{report:?}");
    Ok(())
}
