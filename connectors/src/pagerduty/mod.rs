//! The PagerDuty sink (Events API v2): one event per alert event, posted to `/v2/enqueue` in order.
//! `dedup_key` = alert id makes a redelivered trigger fold into the open incident; events already
//! accepted in a batch that is retried are not sent again (a replayed trigger after a resolve would
//! open a second incident).

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use peergraph_schemas::Alert;

pub use config::PagerDutySinkConfig;
pub use encoder::{encode_event, severity};

use crate::http;
use crate::idempotency::RecentlyDelivered;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

/// Sends alert events to one PagerDuty integration.
pub struct PagerDutySink {
    client: reqwest::Client,
    enqueue: reqwest::Url,
    routing_key: Secret,
    client_url: Option<String>,
    delivered: RecentlyDelivered,
}

impl PagerDutySink {
    pub(crate) fn new(
        client: reqwest::Client,
        enqueue: reqwest::Url,
        routing_key: Secret,
        client_url: Option<String>,
    ) -> Self {
        PagerDutySink { client, enqueue, routing_key, client_url, delivered: RecentlyDelivered::default() }
    }
}

#[async_trait]
impl Sink for PagerDutySink {
    fn name(&self) -> &str {
        "pagerduty"
    }

    /// The Events API has no read endpoint: an empty body must come back 400 (reachable, TLS fine)
    /// rather than a connection error or 5xx.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        let response = self
            .client
            .post(self.enqueue.clone())
            .json(&serde_json::json!({}))
            .send()
            .await
            .map_err(|error| http::transport_error("pagerduty health check", error))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::NOT_FOUND {
            return Err(http::status_error("pagerduty health check", status, response.headers(), ""));
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        for alert in batch {
            if self.delivered.contains(alert) {
                continue;
            }
            let event = encode_event(alert, self.routing_key.expose(), self.client_url.as_deref());
            let what = format!("pagerduty enqueue for alert {}", alert.alert_id);
            http::send(&what, self.client.post(self.enqueue.clone()).json(&event)).await?;
            self.delivered.insert(alert);
        }
        Ok(())
    }
}
