//! The Elasticsearch / OpenSearch sink: `_bulk` requests of ECS documents. Every document is
//! `create`d under an id derived from its alert event, so the target dedupes redeliveries: a 409 for
//! an item means it is already there. Items failing with 429 / 5xx make the batch retry (what went
//! in answers 409 next time); other item failures are permanent.

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use peergraph_schemas::Alert;
use serde_json::Value;

pub use config::ElasticsearchSinkConfig;
pub use encoder::{bulk_lines, document_id, ecs_document, ecs_severity};

use crate::http;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

pub(crate) enum Auth {
    None,
    Basic { username: String, password: Secret },
    ApiKey(Secret),
}

/// Indexes alert events into one index.
pub struct ElasticsearchSink {
    client: reqwest::Client,
    base: reqwest::Url,
    auth: Auth,
    config: ElasticsearchSinkConfig,
}

impl ElasticsearchSink {
    pub(crate) fn new(
        client: reqwest::Client,
        base: reqwest::Url,
        auth: Auth,
        config: ElasticsearchSinkConfig,
    ) -> Self {
        ElasticsearchSink { client, base, auth, config }
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password.expose())),
            Auth::ApiKey(key) => request.header("Authorization", format!("ApiKey {}", key.expose())),
        }
    }

    async fn bulk(&self, body: Vec<u8>, events: usize) -> Result<(), SinkError> {
        let mut url = http::join(&self.base, "/_bulk");
        if let Some(pipeline) = &self.config.pipeline {
            url.query_pairs_mut().append_pair("pipeline", pipeline);
        }
        let what = format!("elasticsearch _bulk of {events} document(s)");
        let request =
            self.request(reqwest::Method::POST, url).header("Content-Type", "application/x-ndjson").body(body);
        let (_, text) = http::send(&what, request).await?;
        let answer: Value = serde_json::from_str(&text)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        if answer["errors"] != Value::Bool(true) {
            return Ok(());
        }
        let mut retryable = None;
        for item in answer["items"].as_array().into_iter().flatten() {
            let result = item.get("create").or_else(|| item.get("index")).unwrap_or(item);
            let status = result["status"].as_u64().unwrap_or(0);
            if (200..300).contains(&status) || status == 409 {
                continue;
            }
            let reason = format!(
                "{what}: document {} failed with {status}: {}",
                result["_id"].as_str().unwrap_or("?"),
                http::excerpt(&result["error"].to_string())
            );
            if status == 429 || status >= 500 {
                retryable.get_or_insert(reason);
            } else {
                return Err(SinkError::permanent(reason));
            }
        }
        match retryable {
            Some(reason) => Err(SinkError::retryable(reason)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> &str {
        "elasticsearch"
    }

    /// `GET /`: reachable, TLS and credentials fine.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        let url = http::join(&self.base, "/");
        http::send("elasticsearch health check", self.request(reqwest::Method::GET, url)).await.map(|_| ())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let mut body = Vec::new();
        let mut events = 0;
        for alert in batch {
            let mut lines = Vec::new();
            bulk_lines(alert, &self.config.index, &mut lines).map_err(|error| {
                SinkError::permanent(format!("encode alert {} for elasticsearch: {error}", alert.alert_id))
            })?;
            if !body.is_empty() && body.len() + lines.len() > self.config.max_bytes {
                self.bulk(std::mem::take(&mut body), events).await?;
                events = 0;
            }
            body.extend_from_slice(&lines);
            events += 1;
        }
        if !body.is_empty() {
            self.bulk(body, events).await?;
        }
        Ok(())
    }
}
