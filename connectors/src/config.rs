//! `ConnectConfig`: the `[connect]` section of peergraph's configuration — the consumer group, which
//! sinks alerts go to, how they are batched and retried.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::console::ConsoleSinkConfig;
use crate::delivery::{SinkPolicy, SinkSlot};
use crate::error::ConnectError;
use crate::file::FileSinkConfig;
use crate::policy::BatchConfig;
use crate::retry::RetryConfig;
use crate::routing::{RouteConfig, Router};
use crate::sinks::{CustomSinks, SinkConfig, SinkKind};

/// How alerts are consumed from the alerts topic and delivered to the sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectConfig {
    /// Kafka consumer group; connectors sharing it split the alerts topic's partitions between them.
    pub group_id: String,
    /// Print one line per alert event on standard output (a sink instance named "console").
    pub console: bool,
    /// Append alert events as JSON lines to this file (a sink instance named "file"; the file is
    /// created with its directories when missing).
    pub file: Option<PathBuf>,
    /// Most alert events per call, for the console and file sinks and every sink type whose own
    /// default is the connector's.
    pub batch_max: usize,
    /// Longest time the first alert event of a batch waits before the batch is delivered, full or
    /// not (as `batch_max`); also how soon skipped messages are committed.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// Stop once no message has arrived for this long (for tests and one-shot runs), counted from the
    /// consumer getting its partitions, so a slow group join does not count; unset: run until shut down.
    #[serde(with = "humantime_serde")]
    pub idle_exit: Option<Duration>,
    /// How a failing sink is retried before the batch is given up on (and dead-lettered, or not
    /// committed), for every sink instance that sets no `retry` of its own.
    pub retry: RetryConfig,
    /// Most alert events read but not yet acknowledged by every sink they were routed to; reading
    /// pauses at this many (back-pressure from a slow sink).
    pub max_in_flight: usize,
    /// Kafka topic for alert events a sink gave up on (with the error and the attempt count), after
    /// which they count as acknowledged for that sink. Unset: a sink giving up stops the connector,
    /// and the events stay uncommitted.
    pub dead_letter_topic: Option<String>,
    /// Sink instances (`[[connect.sinks]]`), besides the `console` and `file` shortcuts.
    pub sinks: Vec<SinkConfig>,
    /// Routing rules (`[[connect.routes]]`); a sink no rule names takes every alert event.
    pub routes: Vec<RouteConfig>,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            group_id: "peergraph-connect".into(),
            console: true,
            file: None,
            batch_max: 500,
            batch_timeout: Duration::from_secs(1),
            idle_exit: None,
            retry: RetryConfig::default(),
            max_in_flight: 10_000,
            dead_letter_topic: None,
            sinks: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl ConnectConfig {
    /// What is wrong with this configuration, if anything, as a [`ConnectError::Config`].
    pub fn validate(&self) -> Result<(), ConnectError> {
        let invalid = |reason: String| Err(ConnectError::Config { reason });
        if self.group_id.trim().is_empty() {
            return invalid("connect.group_id is empty".into());
        }
        if self.batch_max == 0 {
            return invalid("connect.batch_max must be at least 1".into());
        }
        if self.batch_timeout.is_zero() {
            return invalid("connect.batch_timeout must be longer than 0".into());
        }
        if self.idle_exit.is_some_and(|idle| idle.is_zero()) {
            return invalid("connect.idle_exit must be longer than 0 when set".into());
        }
        if self.max_in_flight == 0 {
            return invalid("connect.max_in_flight must be at least 1".into());
        }
        if self.dead_letter_topic.as_deref().is_some_and(|topic| topic.trim().is_empty()) {
            return invalid("connect.dead_letter_topic is empty; leave it unset for no dead-letter topic".into());
        }
        let instances = self.instances();
        if instances.is_empty() {
            return invalid(
                "no sink configured: set connect.console = true, connect.file or add [[connect.sinks]]".into(),
            );
        }
        self.retry.validate().map_err(|reason| ConnectError::Config { reason: format!("connect.{reason}") })?;
        let mut names = BTreeSet::new();
        for instance in &instances {
            instance.validate().map_err(|reason| ConnectError::Config { reason: format!("connect.{reason}") })?;
            if !names.insert(instance.instance_name()) {
                return invalid(format!(
                    "connect.sinks: two sink instances are named {:?}; give each a unique name",
                    instance.instance_name()
                ));
            }
        }
        self.router(&instances).map_err(|reason| ConnectError::Config { reason: format!("connect.{reason}") })?;
        Ok(())
    }

    /// Every sink instance: the console and file shortcuts first, then `sinks`.
    fn instances(&self) -> Vec<SinkConfig> {
        let mut instances = Vec::with_capacity(self.sinks.len() + 2);
        if self.console {
            instances.push(SinkConfig::new("console", SinkKind::Console(ConsoleSinkConfig::default())));
        }
        if let Some(path) = &self.file {
            instances.push(SinkConfig::new("file", SinkKind::File(FileSinkConfig { path: path.clone() })));
        }
        instances.extend(self.sinks.iter().cloned());
        instances
    }

    fn router(&self, instances: &[SinkConfig]) -> Result<Router, String> {
        let names: Vec<String> = instances.iter().map(|instance| instance.instance_name().to_owned()).collect();
        Router::new(&self.routes, &names)
    }

    /// The batching of sinks that take the connector's.
    fn batch(&self) -> BatchConfig {
        BatchConfig { max_events: self.batch_max, timeout: self.batch_timeout }
    }

    /// Validates the configuration and builds every sink instance (console first, then file, then
    /// `sinks` in order), with the router over them.
    pub(crate) async fn build_slots(&self, custom: &CustomSinks) -> Result<(Vec<SinkSlot>, Router), ConnectError> {
        self.validate()?;
        let instances = self.instances();
        let router = self.router(&instances).map_err(|reason| ConnectError::Config { reason })?;
        let mut slots = Vec::with_capacity(instances.len());
        for instance in &instances {
            let name = instance.instance_name().to_owned();
            let sink = match instance.kind.build(&name, custom).await {
                Ok(sink) => sink,
                Err(source) => {
                    crate::delivery::close_sinks(&mut slots).await;
                    return Err(ConnectError::Build { sink: name, source });
                }
            };
            let policy = match &instance.kind {
                // The shortcuts keep the connector-wide settings, as before there were instances.
                SinkKind::Console(_) | SinkKind::File(_) if instance.batch.is_none() => SinkPolicy {
                    batch: self.batch(),
                    retry: instance.retry.clone().unwrap_or_else(|| self.retry.clone()),
                    rate_limit: instance.rate_limit.clone(),
                    circuit_breaker: instance.circuit_breaker.clone(),
                },
                _ => instance.policy(&self.batch(), &self.retry),
            };
            slots.push(SinkSlot { name, sink, policy });
        }
        Ok((slots, router))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(config: &ConnectConfig) -> String {
        match config.validate() {
            Err(ConnectError::Config { reason }) => reason,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_print_to_the_console() {
        let config = ConnectConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.group_id, "peergraph-connect");
        assert!(config.console);
        assert_eq!((config.batch_max, config.batch_timeout, config.idle_exit), (500, Duration::from_secs(1), None));
    }

    #[test]
    fn an_empty_section_deserializes_to_the_defaults() {
        let config: ConnectConfig = serde_json::from_str("{}").expect("empty is valid");
        assert_eq!(config, ConnectConfig::default());
    }

    #[test]
    fn durations_are_human_readable_and_unknown_fields_are_refused() {
        let config: ConnectConfig = serde_json::from_str(
            r#"{"file": "/tmp/a.jsonl", "batch_timeout": "250ms", "idle_exit": "5s", "retry": {"max_attempts": 2}}"#,
        )
        .expect("parses");
        assert_eq!(config.batch_timeout, Duration::from_millis(250));
        assert_eq!(config.idle_exit, Some(Duration::from_secs(5)));
        assert_eq!(config.retry.max_attempts, 2);
        assert_eq!(config.file, Some(PathBuf::from("/tmp/a.jsonl")));
        let error = serde_json::from_str::<ConnectConfig>(r#"{"batch_size": 5}"#).expect_err("unknown field");
        assert!(error.to_string().contains("batch_size"), "{error}");
    }

    #[test]
    fn validation_names_the_offending_setting() {
        let base = ConnectConfig::default();
        assert!(reason(&ConnectConfig { group_id: " ".into(), ..base.clone() }).contains("group_id"));
        assert!(reason(&ConnectConfig { batch_max: 0, ..base.clone() }).contains("batch_max"));
        assert!(reason(&ConnectConfig { batch_timeout: Duration::ZERO, ..base.clone() }).contains("batch_timeout"));
        assert!(reason(&ConnectConfig { idle_exit: Some(Duration::ZERO), ..base.clone() }).contains("idle_exit"));
        assert!(reason(&ConnectConfig { console: false, ..base.clone() }).contains("no sink"));
        assert!(reason(&ConnectConfig { file: Some(PathBuf::from("")), ..base.clone() }).contains("file sink"));
        let retry = RetryConfig { max_attempts: 0, ..RetryConfig::default() };
        assert!(reason(&ConnectConfig { retry, ..base }).contains("connect.retry.max_attempts"));
    }

    #[tokio::test]
    async fn builds_one_sink_per_configured_target() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ConnectConfig { file: Some(dir.path().join("out/alerts.jsonl")), ..ConnectConfig::default() };
        config
            .sinks
            .push(SinkConfig::new("audit", SinkKind::File(FileSinkConfig { path: dir.path().join("audit.jsonl") })));
        let (slots, _router) = config.build_slots(&CustomSinks::new()).await.expect("builds");
        let names: Vec<(&str, &str)> = slots.iter().map(|slot| (slot.name.as_str(), slot.sink.name())).collect();
        assert_eq!(names, [("console", "console"), ("file", "file"), ("audit", "file")]);
        assert!(dir.path().join("out/alerts.jsonl").exists());
    }

    #[test]
    fn sink_instances_and_routes_are_read_from_toml() {
        let text = r#"
            console = false
            dead_letter_topic = "peergraph.alerts.dlq"

            [[sinks]]
            name = "audit"
            type = "file"
            path = "/tmp/audit.jsonl"
            rate_limit = { events_per_second = 5.0, burst = 10 }
            batch = { max_events = 10, timeout = "200ms" }

            [[sinks]]
            type = "console"

            [[routes]]
            sinks = ["audit"]
            min_severity = "high"
            namespaces = ["shop"]
        "#;
        let config: ConnectConfig = toml::from_str(text).expect("parses");
        assert!(config.validate().is_ok(), "{:?}", config.validate());
        assert_eq!(config.sinks[0].instance_name(), "audit");
        assert_eq!(config.sinks[1].instance_name(), "console");
        assert_eq!(config.sinks[0].batch, Some(BatchConfig { max_events: 10, timeout: Duration::from_millis(200) }));
        assert_eq!(config.routes[0].min_severity, Some(peergraph_schemas::Severity::High));
        // What `peergraph config --print` shows round-trips.
        let shown = toml::to_string_pretty(&config).expect("serializes");
        let back: ConnectConfig = toml::from_str(&shown).expect("reparses");
        assert_eq!(back, config, "{shown}");
    }

    #[test]
    fn duplicate_instance_names_and_routes_to_unknown_sinks_are_refused() {
        let mut config = ConnectConfig::default();
        config.sinks.push(SinkConfig::new("console", SinkKind::Console(ConsoleSinkConfig::default())));
        assert!(reason(&config).contains("two sink instances"), "{}", reason(&config));
        let mut config = ConnectConfig::default();
        config.routes.push(RouteConfig { sinks: vec!["pagerduty".into()], ..RouteConfig::default() });
        assert!(reason(&config).contains("pagerduty"), "{}", reason(&config));
    }
}
