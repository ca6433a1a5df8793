//! The console sink: one human-readable line per alert event on standard output, for `peergraph
//! demo`, development and eyeballing a topic. A redelivered batch is simply printed again.

mod config;
mod encoder;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use config::ConsoleSinkConfig;
pub use encoder::encode_line;

use crate::sink::{Sink, SinkError};

/// Writes [`encode_line`] lines to a terminal (or any writer).
pub struct ConsoleSink {
    out: Box<dyn AsyncWrite + Send + Unpin>,
}

impl ConsoleSink {
    /// A console sink writing to `out`.
    pub fn new(out: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        ConsoleSink { out }
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(|error| SinkError::io("flush standard output", &error))
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let mut lines = String::with_capacity(160 * batch.len());
        for alert in batch {
            encode_line(alert, &mut lines);
        }
        self.out
            .write_all(lines.as_bytes())
            .await
            .map_err(|error| SinkError::io("write to standard output", &error))?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(|error| SinkError::io("flush standard output", &error))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use peergraph_schemas::{AlertEvent, Severity};
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn delivers_one_line_per_alert_event() {
        let (writer, mut reader) = tokio::io::duplex(64 * 1024);
        let mut sink = ConsoleSink::new(Box::new(writer));
        let alert = |id: &str, event| Alert {
            alert_id: id.into(),
            event,
            detector: "scan".into(),
            severity: Severity::Medium,
            score: 50.0,
            entity: "ip:10.0.0.5".into(),
            peer_group: None,
            summary: "swept 120 ports".into(),
            evidence: BTreeMap::new(),
            techniques: vec![],
            first_seen_ms: 0,
            last_seen_ms: 0,
            event_time_ms: 0,
        };
        sink.health_check().await.expect("healthy");
        sink.deliver(&[alert("a1", AlertEvent::Raised), alert("a1", AlertEvent::Cleared)]).await.expect("delivered");
        sink.close().await.expect("closed");
        drop(sink);
        let mut printed = String::new();
        reader.read_to_string(&mut printed).await.expect("read back");
        assert_eq!(
            printed,
            "RAISED   medium    scan  ip:10.0.0.5  swept 120 ports  [id a1]\n\
             CLEARED  medium    scan  ip:10.0.0.5  swept 120 ports  [id a1]\n"
        );
    }
}
