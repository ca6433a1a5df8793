//! The exec sink's settings and the function that builds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ExecSink;
use crate::sink::SinkError;

/// A subprocess that gets alert events as JSON lines on its standard input and acknowledges each
/// with one line on its standard output (the protocol is in docs/connectors.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecSinkConfig {
    /// The program to run (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables (not secret: shown by `config --print`; pass secrets through the
    /// connector's own environment, which the program inherits).
    pub env: BTreeMap<String, String>,
    /// Working directory; unset: the connector's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// Longest wait for one acknowledgement; a program that takes longer is restarted.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
}

impl Default for ExecSinkConfig {
    fn default() -> Self {
        ExecSinkConfig {
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            ack_timeout: Duration::from_secs(30),
        }
    }
}

impl ExecSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.trim().is_empty() {
            return Err("exec: command is empty".into());
        }
        if self.ack_timeout.is_zero() {
            return Err("exec: ack_timeout must be longer than 0".into());
        }
        if let Some(name) = self.env.keys().find(|name| crate::secret::looks_secret(name)) {
            return Err(format!(
                "exec: env {name:?} looks like a credential; set it in the connector's environment instead"
            ));
        }
        Ok(())
    }

    /// Prepares the sink; the program is started by the health check or the first delivery.
    pub fn build(&self) -> Result<ExecSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        Ok(ExecSink::new(self.clone()))
    }
}
