//! The Splunk HTTP Event Collector sink: batches of concatenated JSON events to
//! `/services/collector/event` with `Authorization: Splunk <token>`, split below `max_bytes`, with
//! optional indexer acknowledgement. HEC has no document ids: a batch resent after a lost answer
//! is indexed twice; every event carries the indexed field `event_key` to `| dedup` on.

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use serde_json::Value;

pub use config::SplunkHecSinkConfig;
pub use encoder::{encode_event, split_bodies};

use crate::http;
use crate::idempotency::RecentlyDelivered;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

/// Sends alert events to one HEC endpoint.
pub struct SplunkHecSink {
    client: reqwest::Client,
    base: reqwest::Url,
    token: Secret,
    config: SplunkHecSinkConfig,
    /// The request channel (a UUID) indexer acknowledgement is tracked on.
    channel: String,
    delivered: RecentlyDelivered,
}

/// A random version-4 UUID.
fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// HEC's JSON error codes that retrying can fix: 9 server busy, 8 internal error, 23 shutting down.
fn retryable_code(code: i64) -> bool {
    matches!(code, 8 | 9 | 23)
}

impl SplunkHecSink {
    pub(crate) fn new(client: reqwest::Client, base: reqwest::Url, token: Secret, config: SplunkHecSinkConfig) -> Self {
        SplunkHecSink { client, base, token, config, channel: uuid_v4(), delivered: RecentlyDelivered::default() }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(http::join(&self.base, path))
            .header("Authorization", format!("Splunk {}", self.token.expose()))
            .header("X-Splunk-Request-Channel", &self.channel)
    }

    /// Sends one body; returns its ack id when indexer acknowledgement is on.
    async fn send_body(&self, body: Vec<u8>, events: usize) -> Result<Option<u64>, SinkError> {
        let what = format!("splunk_hec POST of {events} event(s)");
        let request = self.post("/services/collector/event").header("Content-Type", "application/json").body(body);
        let response = request.send().await.map_err(|error| http::transport_error(&what, error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|error| http::transport_error(&what, error))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = http::status_error(&what, status, &headers, &text);
            // HEC says "server busy" with 503 and code 9, but some proxies turn it into 400.
            return match answer["code"].as_i64() {
                Some(code) if retryable_code(code) => {
                    Err(SinkError::retryable_after(error.reason(), error.retry_after()))
                }
                _ => Err(error),
            };
        }
        Ok(answer["ackId"].as_u64())
    }

    /// Polls `/services/collector/ack` until every id is acknowledged or `ack_timeout` passes.
    async fn await_acks(&self, mut pending: Vec<u64>) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        let mut pause = Duration::from_millis(50);
        while !pending.is_empty() {
            let mut url = http::join(&self.base, "/services/collector/ack");
            url.query_pairs_mut().append_pair("channel", &self.channel);
            let request = self
                .client
                .post(url)
                .header("Authorization", format!("Splunk {}", self.token.expose()))
                .header("X-Splunk-Request-Channel", &self.channel)
                .json(&serde_json::json!({ "acks": pending }));
            let (_, body) = http::send("splunk_hec ack poll", request).await?;
            let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            pending.retain(|id| answer["acks"][id.to_string()] != Value::Bool(true));
            if pending.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SinkError::retryable(format!(
                    "splunk_hec: {} request(s) not acknowledged by the indexers within {:?}",
                    pending.len(),
                    self.config.ack_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for SplunkHecSink {
    fn name(&self) -> &str {
        "splunk_hec"
    }

    /// `GET /services/collector/health`, then an empty authorized POST to check the token
    /// (HEC answers "No data", code 5, with 400 to a valid token and 401/403 otherwise).
    async fn health_check(&mut self) -> Result<(), SinkError> {
        let health = self.client.get(http::join(&self.base, "/services/collector/health"));
        http::send("splunk_hec health check", health).await?;
        let response = self
            .post("/services/collector/event")
            .send()
            .await
            .map_err(|error| http::transport_error("splunk_hec token check", error))?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(SinkError::permanent(format!("splunk_hec token check: HTTP {status}: the token is refused")));
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let fresh: Vec<&Alert> = batch.iter().filter(|alert| !self.delivered.contains(alert)).collect();
        let mut events = Vec::with_capacity(fresh.len());
        for alert in &fresh {
            let encoded = serde_json::to_vec(&encode_event(alert, &self.config)).map_err(|error| {
                SinkError::permanent(format!("encode alert {} for splunk_hec: {error}", alert.alert_id))
            })?;
            events.push(encoded);
        }
        for (body, members) in split_bodies(&events, self.config.max_bytes) {
            let ack = self.send_body(body, members.len()).await?;
            if self.config.indexer_ack {
                let id = ack.ok_or_else(|| {
                    SinkError::permanent(
                        "splunk_hec: indexer_ack is on but HEC returned no ackId; enable it on the token",
                    )
                })?;
                self.await_acks(vec![id]).await?;
            }
            for member in members {
                self.delivered.insert(fresh[member]);
            }
        }
        Ok(())
    }
}
