//! The exec sink: custom delivery in any language. The connector runs a program and talks to it
//! over pipes: one alert event per line (the alert's JSON, as on the alerts topic) on its standard
//! input, one acknowledgement per event, in order, on its standard output:
//!
//! ```text
//! {"ok": true}                                         delivered
//! {"ok": false, "retry": true,  "error": "busy"}       failed; the batch is tried again
//! {"ok": false, "retry": false, "error": "rejected"}   failed for good; the batch is dead-lettered
//! ```
//!
//! A program that exits, writes something else, or does not answer within `ack_timeout` is killed
//! and started again for the retry; events it acknowledged are not sent again. Standard error is
//! passed through to the connector's.

mod config;
#[cfg(test)]
mod tests;

use std::process::Stdio;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub use config::ExecSinkConfig;

use crate::idempotency::RecentlyDelivered;
use crate::sink::{Sink, SinkError};

/// One acknowledgement line.
#[derive(Debug, Deserialize)]
pub struct Acknowledgement {
    /// Whether the event was delivered.
    pub ok: bool,
    /// On failure: whether trying again may help (default: yes).
    #[serde(default = "default_retry")]
    pub retry: bool,
    /// On failure: why.
    #[serde(default)]
    pub error: Option<String>,
}

fn default_retry() -> bool {
    true
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Pipes alert events through a subprocess.
pub struct ExecSink {
    config: ExecSinkConfig,
    running: Option<Running>,
    delivered: RecentlyDelivered,
}

impl ExecSink {
    pub(crate) fn new(config: ExecSinkConfig) -> Self {
        ExecSink { config, running: None, delivered: RecentlyDelivered::default() }
    }

    fn start(&self) -> Result<Running, SinkError> {
        let mut command = Command::new(&self.config.command);
        command
            .args(&self.config.args)
            .envs(&self.config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = &self.config.working_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|error| {
            let reason = format!("exec: start {:?}: {error}", self.config.command);
            match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => SinkError::permanent(reason),
                _ => SinkError::retryable(reason),
            }
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SinkError::retryable("exec: the program's pipes are missing"));
        };
        tracing::info!(command = %self.config.command, pid = child.id(), "exec sink program started");
        Ok(Running { child, stdin, stdout: BufReader::new(stdout).lines() })
    }

    /// Drops the program (killed on drop) so the next call starts it again.
    fn restart_later(&mut self, reason: String) -> SinkError {
        self.running = None;
        SinkError::retryable(reason)
    }

    async fn exchange(&mut self, fresh: &[&Alert]) -> Result<(), SinkError> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let mut lines = Vec::with_capacity(fresh.len() * 512);
        for alert in fresh {
            serde_json::to_writer(&mut lines, alert)
                .map_err(|error| SinkError::permanent(format!("exec: encode alert {}: {error}", alert.alert_id)))?;
            lines.push(b'\n');
        }
        let timeout = self.config.ack_timeout;
        let Some(running) = self.running.as_mut() else { return Ok(()) };
        let written = async {
            running.stdin.write_all(&lines).await?;
            running.stdin.flush().await
        }
        .await;
        if let Err(error) = written {
            return Err(self.restart_later(format!("exec: write to the program: {error}")));
        }
        for alert in fresh {
            let Some(running) = self.running.as_mut() else { return Ok(()) };
            let line = match tokio::time::timeout(timeout, running.stdout.next_line()).await {
                Err(_) => return Err(self.restart_later(format!("exec: no acknowledgement within {timeout:?}"))),
                Ok(Err(error)) => return Err(self.restart_later(format!("exec: read from the program: {error}"))),
                Ok(Ok(None)) => {
                    let status = running.child.try_wait().ok().flatten();
                    return Err(self.restart_later(format!("exec: the program closed its output (exit: {status:?})")));
                }
                Ok(Ok(Some(line))) => line,
            };
            let acknowledgement: Acknowledgement = match serde_json::from_str(line.trim()) {
                Ok(acknowledgement) => acknowledgement,
                Err(_) if line.trim() == "ok" => Acknowledgement { ok: true, retry: false, error: None },
                Err(error) => {
                    let shown: String = line.chars().take(200).collect();
                    return Err(self.restart_later(format!("exec: {shown:?} is not an acknowledgement: {error}")));
                }
            };
            if acknowledgement.ok {
                self.delivered.insert(alert);
                continue;
            }
            let reason = format!(
                "exec: the program refused alert {}: {}",
                alert.alert_id,
                acknowledgement.error.as_deref().unwrap_or("no reason given")
            );
            // The rest of the batch is still answered by the program: restart to resynchronise.
            self.running = None;
            return Err(if acknowledgement.retry {
                SinkError::retryable(reason)
            } else {
                SinkError::permanent(reason)
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ExecSink {
    fn name(&self) -> &str {
        "exec"
    }

    /// Starts the program.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let fresh: Vec<&Alert> = batch.iter().filter(|alert| !self.delivered.contains(alert)).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.exchange(&fresh).await
    }

    /// Closes the program's input and waits for it to exit (killing it after `ack_timeout`).
    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(Running { mut child, stdin, .. }) = self.running.take() {
            drop(stdin);
            if tokio::time::timeout(self.config.ack_timeout, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        Ok(())
    }
}
