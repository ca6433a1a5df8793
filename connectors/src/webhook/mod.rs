//! The generic webhook sink: each batch is one signed POST. At least once: a retried batch carries
//! the same `Idempotency-Key` header, which receivers use to drop repeats.

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use peergraph_schemas::Alert;

pub use config::WebhookSinkConfig;
pub use encoder::{encode_body, idempotency_key, signature};

use crate::http;
use crate::idempotency::unix_now;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

/// POSTs alert batches to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Secret>,
    config: WebhookSinkConfig,
}

impl WebhookSink {
    pub(crate) fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        secret: Option<Secret>,
        config: WebhookSinkConfig,
    ) -> Self {
        WebhookSink { client, url, secret, config }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    /// An empty, signed batch: the receiver must answer 2xx.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.deliver(&[]).await
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let body = encode_body(batch).map_err(|error| SinkError::permanent(format!("encode the batch: {error}")))?;
        let timestamp = unix_now();
        let mut request = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", idempotency_key(batch))
            .header(self.config.timestamp_header.as_str(), timestamp.to_string());
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(secret) = &self.secret {
            request = request
                .header(self.config.signature_header.as_str(), signature(secret.expose().as_bytes(), timestamp, &body));
        }
        let what = format!("webhook POST of {} alert event(s)", batch.len());
        http::send(&what, request.body(body)).await.map(|_| ())
    }
}
