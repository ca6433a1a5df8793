//! The `Sink` trait: where delivered alerts go. The consumer hands every sink the same batches, retries
//! a retryable failure with shared backoff, and commits the batch's offsets only once every sink took it.

use std::time::Duration;

use async_trait::async_trait;
use peergraph_schemas::Alert;

/// A destination for alerts (console, file, SIEMs, ticketing systems, or your own: see
/// `connectors/examples/custom_sink.rs` and `docs/connectors.md`).
///
/// Delivery is at least once: after a crash, or when a later sink of the same batch failed, a batch
/// that was already delivered is delivered again. A sink either tolerates duplicates or makes the
/// redelivery a no-op at the target with an idempotency key built from the alert id, its event and
/// its `event_time_ms` (which a replay reproduces).
#[async_trait]
pub trait Sink: Send {
    /// A short name for logs and errors ("console", "file", "splunk_hec").
    fn name(&self) -> &str;

    /// Whether the target is reachable and writable, checked before consuming starts.
    async fn health_check(&mut self) -> Result<(), SinkError>;

    /// Hands one batch to the target. `Ok` means the batch is durably at the target: the consumer
    /// commits the batch's offsets on the strength of it. On `Err`, any prefix of the batch may have
    /// arrived; the whole batch is delivered again.
    ///
    /// Retries, batching, rate limiting and circuit breaking are done around this call by the
    /// connector, configured per sink instance: a sink never loops on its own failures.
    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError>;

    /// Pushes out anything the sink buffers beyond what durability needs. The default has nothing to do.
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Flushes and releases the sink's resources; the sink is not used afterwards.
    async fn close(&mut self) -> Result<(), SinkError> {
        self.flush().await
    }
}

/// Why a sink call failed, and whether trying the same call again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Transient: the same call may succeed later (a full disk, a timeout, a 503, a dropped connection).
    #[error("{reason}")]
    Retryable {
        /// What went wrong, with the context to act on it.
        reason: String,
        /// How long the target asked us to wait before the next attempt (HTTP `Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help until someone changes the configuration or the target (a permission, a bad
    /// credential, a payload the target rejects).
    #[error("{reason}")]
    Permanent {
        /// What went wrong, with the context to act on it.
        reason: String,
    },
}

impl SinkError {
    /// A transient failure.
    pub fn retryable(reason: impl Into<String>) -> SinkError {
        SinkError::Retryable { reason: reason.into(), retry_after: None }
    }

    /// A transient failure after which the target asked for a pause (`429` / `503` with `Retry-After`).
    pub fn retryable_after(reason: impl Into<String>, retry_after: Option<Duration>) -> SinkError {
        SinkError::Retryable { reason: reason.into(), retry_after }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(reason: impl Into<String>) -> SinkError {
        SinkError::Permanent { reason: reason.into() }
    }

    /// An I/O failure while doing `what` ("append to /var/log/peergraph/alerts.jsonl"), classified by
    /// its kind: missing permissions and wrong kinds of path are permanent, the rest is worth a retry.
    pub fn io(what: impl std::fmt::Display, error: &std::io::Error) -> SinkError {
        use std::io::ErrorKind;
        let reason = format!("{what}: {error}");
        match error.kind() {
            ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::InvalidInput
            | ErrorKind::Unsupported => SinkError::Permanent { reason },
            _ => SinkError::Retryable { reason, retry_after: None },
        }
    }

    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }

    /// The pause the target asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Retryable { retry_after, .. } => *retry_after,
            SinkError::Permanent { .. } => None,
        }
    }

    /// The reason, without the classification.
    pub fn reason(&self) -> &str {
        match self {
            SinkError::Retryable { reason, .. } | SinkError::Permanent { reason } => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn io_errors_are_retryable_unless_retrying_cannot_help() {
        let denied = SinkError::io("open /x", &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!denied.is_retryable(), "{denied:?}");
        let full = SinkError::io("append /x", &io::Error::from(io::ErrorKind::StorageFull));
        assert!(full.is_retryable(), "{full:?}");
        let interrupted = SinkError::io("append /x", &io::Error::from(io::ErrorKind::Interrupted));
        assert!(interrupted.is_retryable(), "{interrupted:?}");
    }

    #[test]
    fn io_error_message_names_what_was_being_done() {
        let error = SinkError::io("append to /var/alerts.jsonl", &io::Error::other("disk on fire"));
        assert_eq!(error.to_string(), "append to /var/alerts.jsonl: disk on fire");
    }
}
