//! The ServiceNow sink (Table API): a raised alert opens an incident unless one with its
//! `correlation_id` exists (query before insert, so a replay opens nothing new), an update adds a
//! work note, a clear resolves the incident.

mod config;
mod encoder;
#[cfg(test)]
pub(crate) mod tests;

use async_trait::async_trait;
use peergraph_schemas::{Alert, AlertEvent};
use serde_json::Value;

pub use config::ServiceNowSinkConfig;
pub use encoder::{describe, impact_and_urgency, new_incident, resolution, update_note};

use crate::http;
use crate::idempotency::RecentlyDelivered;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

pub(crate) enum Auth {
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// An incident found by correlation id.
struct Incident {
    sys_id: String,
    state: String,
}

/// Keeps one incident per alert in a ServiceNow table.
pub struct ServiceNowSink {
    client: reqwest::Client,
    table: reqwest::Url,
    auth: Auth,
    config: ServiceNowSinkConfig,
    delivered: RecentlyDelivered,
}

impl ServiceNowSink {
    pub(crate) fn new(client: reqwest::Client, table: reqwest::Url, auth: Auth, config: ServiceNowSinkConfig) -> Self {
        ServiceNowSink { client, table, auth, config, delivered: RecentlyDelivered::default() }
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url).header("Accept", "application/json");
        match &self.auth {
            Auth::Basic { username, password } => request.basic_auth(username, Some(password.expose())),
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        }
    }

    /// The incident of `alert_id`, if one exists.
    async fn find(&self, alert_id: &str) -> Result<Option<Incident>, SinkError> {
        let mut url = self.table.clone();
        url.query_pairs_mut()
            // In an encoded query `^` separates conditions; a literal one is written `^^`.
            .append_pair("sysparm_query", &format!("correlation_id={}", alert_id.replace('^', "^^")))
            .append_pair("sysparm_fields", "sys_id,number,state")
            .append_pair("sysparm_limit", "1");
        let what = format!("servicenow query for the incident of alert {alert_id}");
        let (_, body) = http::send(&what, self.request(reqwest::Method::GET, url)).await?;
        let found: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let first = found["result"].as_array().and_then(|records| records.first());
        Ok(first.and_then(|record| {
            Some(Incident {
                sys_id: record["sys_id"].as_str()?.to_owned(),
                state: record["state"].as_str().unwrap_or_default().to_owned(),
            })
        }))
    }

    async fn create(&self, alert: &Alert) -> Result<Incident, SinkError> {
        let what = format!("servicenow insert of the incident of alert {}", alert.alert_id);
        let request = self.request(reqwest::Method::POST, self.table.clone()).json(&new_incident(alert, &self.config));
        let (_, body) = http::send(&what, request).await?;
        let created: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let sys_id = created["result"]["sys_id"].as_str().unwrap_or_default().to_owned();
        tracing::info!(alert_id = %alert.alert_id, number = %created["result"]["number"], "incident opened");
        Ok(Incident { sys_id, state: "1".into() })
    }

    async fn update(&self, incident: &Incident, fields: &Value, what: &str) -> Result<(), SinkError> {
        let url = http::join(&self.table, &incident.sys_id);
        http::send(what, self.request(reqwest::Method::PATCH, url).json(fields)).await.map(|_| ())
    }

    async fn deliver_one(&self, alert: &Alert) -> Result<(), SinkError> {
        let existing = self.find(&alert.alert_id).await?;
        match (alert.event, existing) {
            (AlertEvent::Raised, Some(_)) => Ok(()),
            (AlertEvent::Raised, None) => self.create(alert).await.map(|_| ()),
            (AlertEvent::Updated, existing) => {
                // An update without a ticket (the raise was dead-lettered or routed elsewhere) opens one.
                let incident = match existing {
                    Some(incident) => incident,
                    None => self.create(alert).await?,
                };
                let what = format!("servicenow work note on the incident of alert {}", alert.alert_id);
                self.update(&incident, &update_note(alert), &what).await
            }
            (AlertEvent::Cleared, None) => Ok(()),
            (AlertEvent::Cleared, Some(incident)) if self.config.done_states.contains(&incident.state) => Ok(()),
            (AlertEvent::Cleared, Some(incident)) => {
                let what = format!("servicenow resolve of the incident of alert {}", alert.alert_id);
                self.update(&incident, &resolution(alert, &self.config), &what).await
            }
        }
    }
}

#[async_trait]
impl Sink for ServiceNowSink {
    fn name(&self) -> &str {
        "servicenow"
    }

    /// Reads one record of the table: credentials, ACLs and TLS in one go.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        let mut url = self.table.clone();
        url.query_pairs_mut().append_pair("sysparm_limit", "1").append_pair("sysparm_fields", "sys_id");
        http::send("servicenow health check", self.request(reqwest::Method::GET, url)).await.map(|_| ())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        for alert in batch {
            if self.delivered.contains(alert) {
                continue;
            }
            self.deliver_one(alert).await?;
            self.delivered.insert(alert);
        }
        Ok(())
    }
}
