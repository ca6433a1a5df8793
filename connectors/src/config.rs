//! `ConnectConfig`: the `[connect]` section of peergraph's configuration — the consumer group, which
//! sinks alerts go to, how they are batched and retried.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::console::ConsoleSinkConfig;
use crate::error::ConnectError;
use crate::file::FileSinkConfig;
use crate::retry::RetryConfig;
use crate::sink::Sink;

/// How alerts are consumed from the alerts topic and delivered to the sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectConfig {
    /// Kafka consumer group; connectors sharing it split the alerts topic's partitions between them.
    pub group_id: String,
    /// Print one line per alert event on standard output.
    pub console: bool,
    /// Append alert events as JSON lines to this file (created with its directories when missing).
    pub file: Option<PathBuf>,
    /// Most alert events per batch; a full batch is delivered at once.
    pub batch_max: usize,
    /// Longest time the first message of a batch waits before the batch is delivered, full or not.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// Stop once no message has arrived for this long (for tests and one-shot runs), counted from the
    /// consumer getting its partitions, so a slow group join does not count; unset: run until shut down.
    #[serde(with = "humantime_serde")]
    pub idle_exit: Option<Duration>,
    /// How a failing sink is retried before the batch is given up on (and not committed).
    pub retry: RetryConfig,
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
        if !self.console && self.file.is_none() {
            return invalid("no sink configured: set connect.console = true or connect.file".into());
        }
        self.retry.validate().map_err(|reason| ConnectError::Config { reason: format!("connect.{reason}") })?;
        for validation in self.sink_validations() {
            validation.map_err(|reason| ConnectError::Config { reason: format!("connect.{reason}") })?;
        }
        Ok(())
    }

    /// Each configured sink's validation.
    fn sink_validations(&self) -> Vec<Result<(), String>> {
        let mut validations = Vec::new();
        if self.console {
            validations.push(ConsoleSinkConfig::default().validate());
        }
        if let Some(path) = &self.file {
            validations.push(FileSinkConfig { path: path.clone() }.validate());
        }
        validations
    }

    /// Validates the configuration and builds every configured sink, console first.
    pub async fn build_sinks(&self) -> Result<Vec<Box<dyn Sink>>, ConnectError> {
        self.validate()?;
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if self.console {
            sinks.push(Box::new(ConsoleSinkConfig::default().build()));
        }
        if let Some(path) = &self.file {
            let sink = FileSinkConfig { path: path.clone() }
                .build()
                .await
                .map_err(|source| ConnectError::Build { sink: "file".into(), source })?;
            sinks.push(Box::new(sink));
        }
        Ok(sinks)
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
        let config = ConnectConfig { file: Some(dir.path().join("out/alerts.jsonl")), ..ConnectConfig::default() };
        let sinks = config.build_sinks().await.expect("builds");
        let names: Vec<&str> = sinks.iter().map(|sink| sink.name()).collect();
        assert_eq!(names, ["console", "file"]);
        assert!(dir.path().join("out/alerts.jsonl").exists());
    }
}
