//! The Microsoft Sentinel sink (Azure Monitor Logs Ingestion API): records POSTed as JSON arrays
//! to a data collection rule's stream with a bearer token from Entra ID (client credentials),
//! fetched and cached until shortly before it expires; a 401 drops the token and retries. The API
//! has no document ids: records carry `EventKey` to deduplicate on in KQL (`summarize arg_max`).

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use serde_json::Value;
use tokio::time::Instant;

pub use config::SentinelSinkConfig;
pub use encoder::{array_bodies, encode_record};

use crate::http;
use crate::idempotency::RecentlyDelivered;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

/// A bearer token and when to stop using it.
struct Token {
    value: Secret,
    renew_at: Instant,
}

/// Sends alert events to one DCR stream.
pub struct SentinelSink {
    client: reqwest::Client,
    stream: reqwest::Url,
    token_url: reqwest::Url,
    client_secret: Secret,
    config: SentinelSinkConfig,
    token: Option<Token>,
    delivered: RecentlyDelivered,
}

impl SentinelSink {
    pub(crate) fn new(
        client: reqwest::Client,
        stream: reqwest::Url,
        token_url: reqwest::Url,
        client_secret: Secret,
        config: SentinelSinkConfig,
    ) -> Self {
        SentinelSink {
            client,
            stream,
            token_url,
            client_secret,
            config,
            token: None,
            delivered: RecentlyDelivered::default(),
        }
    }

    /// A valid token, fetched when there is none or it is about to expire.
    async fn token(&mut self) -> Result<Secret, SinkError> {
        if let Some(token) = self.token.as_ref().filter(|token| Instant::now() < token.renew_at) {
            return Ok(token.value.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("scope", self.config.scope.as_str()),
        ];
        let what = "sentinel token request";
        let (_, body) =
            http::send(what, self.client.post(self.token_url.clone()).form(&form)).await.map_err(|error| {
                // A refused client secret is a configuration problem, not a passing one.
                if error.reason().contains("HTTP 400") || error.reason().contains("HTTP 401") {
                    SinkError::permanent(error.reason())
                } else {
                    error
                }
            })?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let value = answer["access_token"]
            .as_str()
            .ok_or_else(|| SinkError::retryable(format!("{what}: no access_token in the answer")))?;
        let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(300));
        // Renew five minutes early (or halfway, for short-lived tokens).
        let renew_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(300)).max(lifetime / 2);
        let value = Secret::new(value);
        self.token = Some(Token { value: value.clone(), renew_at });
        Ok(value)
    }

    async fn upload(&mut self, body: Vec<u8>, records: usize) -> Result<(), SinkError> {
        let token = self.token().await?;
        let what = format!("sentinel upload of {records} record(s)");
        let request = self
            .client
            .post(self.stream.clone())
            .bearer_auth(token.expose())
            .header("Content-Type", "application/json")
            .body(body);
        match http::send(&what, request).await {
            Err(error) if error.reason().contains("HTTP 401") => {
                // Expired or revoked early: fetch a new one on the retry.
                self.token = None;
                Err(SinkError::retryable(error.reason()))
            }
            other => other.map(|_| ()),
        }
    }
}

#[async_trait]
impl Sink for SentinelSink {
    fn name(&self) -> &str {
        "sentinel"
    }

    /// Gets a token, then uploads an empty array (accepted with 204 when the rule and stream exist
    /// and the app may write to them).
    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.upload(b"[]".to_vec(), 0).await
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let fresh: Vec<&Alert> = batch.iter().filter(|alert| !self.delivered.contains(alert)).collect();
        let records: Vec<Value> = fresh.iter().map(|alert| encode_record(alert)).collect();
        let bodies = array_bodies(&records, self.config.max_bytes)
            .map_err(|error| SinkError::permanent(format!("encode records for sentinel: {error}")))?;
        let mut next = 0;
        for (body, count) in bodies {
            self.upload(body, count).await?;
            for alert in &fresh[next..next + count] {
                self.delivered.insert(alert);
            }
            next += count;
        }
        Ok(())
    }
}
