//! The Jira sink: a raised alert opens an issue unless a JQL search on its label
//! `peergraph-<alert id>` finds one (so a replay opens nothing new), an update comments, a clear
//! comments and transitions the issue to done.
//!
//! Jira's search index lags behind writes by a moment, so the issues this process created are also
//! remembered by alert id: a retry seconds after a create does not depend on the index.

mod config;
mod encoder;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use async_trait::async_trait;
use peergraph_schemas::{Alert, AlertEvent};
use serde_json::{json, Value};

pub use config::JiraSinkConfig;
pub use encoder::{alert_label, body, comment, new_issue, search_jql};

use crate::http;
use crate::idempotency::RecentlyDelivered;
use crate::secret::Secret;
use crate::sink::{Sink, SinkError};

pub(crate) enum Auth {
    Basic { email: String, api_token: Secret },
    Bearer(Secret),
}

/// An issue found for an alert.
#[derive(Clone, Debug)]
struct Issue {
    key: String,
    done: bool,
}

/// Keeps one Jira issue per alert.
pub struct JiraSink {
    client: reqwest::Client,
    base: reqwest::Url,
    auth: Auth,
    config: JiraSinkConfig,
    delivered: RecentlyDelivered,
    /// Alert id → issue key, for issues this process created (bounded).
    created: HashMap<String, String>,
}

impl JiraSink {
    pub(crate) fn new(client: reqwest::Client, base: reqwest::Url, auth: Auth, config: JiraSinkConfig) -> Self {
        JiraSink { client, base, auth, config, delivered: RecentlyDelivered::default(), created: HashMap::new() }
    }

    fn api(&self, path: &str) -> reqwest::Url {
        http::join(&self.base, &format!("/rest/api/{}/{path}", self.config.api_version))
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url).header("Accept", "application/json");
        match &self.auth {
            Auth::Basic { email, api_token } => request.basic_auth(email, Some(api_token.expose())),
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        }
    }

    async fn find(&self, alert_id: &str) -> Result<Option<Issue>, SinkError> {
        let mut url = if self.config.api_version == 2 { self.api("search") } else { self.api("search/jql") };
        url.query_pairs_mut()
            .append_pair("jql", &search_jql(&self.config.project_key, alert_id))
            .append_pair("fields", "status")
            .append_pair("maxResults", "1");
        let what = format!("jira search for the issue of alert {alert_id}");
        let (_, body) = http::send(&what, self.request(reqwest::Method::GET, url)).await?;
        let found: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let issue = found["issues"].as_array().and_then(|issues| issues.first()).and_then(|issue| {
            Some(Issue {
                key: issue["key"].as_str()?.to_owned(),
                done: issue["fields"]["status"]["statusCategory"]["key"] == "done",
            })
        });
        match (issue, self.created.get(alert_id)) {
            (Some(issue), _) => Ok(Some(issue)),
            (None, Some(key)) => Ok(Some(Issue { key: key.clone(), done: false })),
            (None, None) => Ok(None),
        }
    }

    async fn create(&mut self, alert: &Alert) -> Result<Issue, SinkError> {
        let what = format!("jira create of the issue of alert {}", alert.alert_id);
        let request = self.request(reqwest::Method::POST, self.api("issue")).json(&new_issue(alert, &self.config));
        let (_, body) = http::send(&what, request).await?;
        let created: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let key = created["key"]
            .as_str()
            .ok_or_else(|| SinkError::permanent(format!("{what}: no issue key in the answer")))?
            .to_owned();
        tracing::info!(alert_id = %alert.alert_id, issue = %key, "jira issue opened");
        if self.created.len() >= 10_000 {
            self.created.clear();
        }
        self.created.insert(alert.alert_id.clone(), key.clone());
        Ok(Issue { key, done: false })
    }

    async fn comment(&self, issue: &Issue, alert: &Alert) -> Result<(), SinkError> {
        let what = format!("jira comment on {} for alert {}", issue.key, alert.alert_id);
        let url = self.api(&format!("issue/{}/comment", issue.key));
        let request = self.request(reqwest::Method::POST, url).json(&comment(alert, self.config.api_version));
        http::send(&what, request).await.map(|_| ())
    }

    async fn resolve(&self, issue: &Issue, alert: &Alert) -> Result<(), SinkError> {
        let what = format!("jira transitions of {} for alert {}", issue.key, alert.alert_id);
        let url = self.api(&format!("issue/{}/transitions", issue.key));
        let (_, body) = http::send(&what, self.request(reqwest::Method::GET, url.clone())).await?;
        let listed: Value = serde_json::from_str(&body)
            .map_err(|error| SinkError::retryable(format!("{what}: unreadable answer: {error}")))?;
        let transitions = listed["transitions"].as_array().cloned().unwrap_or_default();
        let wanted = &self.config.resolve_transition;
        let chosen = transitions
            .iter()
            .find(|t| t["name"].as_str().is_some_and(|name| name.eq_ignore_ascii_case(wanted)))
            .or_else(|| transitions.iter().find(|t| t["to"]["statusCategory"]["key"] == "done"))
            .and_then(|t| t["id"].as_str())
            .ok_or_else(|| {
                SinkError::permanent(format!("{what}: no transition named {wanted:?} and none into a done status"))
            })?;
        let request = self.request(reqwest::Method::POST, url).json(&json!({"transition": {"id": chosen}}));
        http::send(&format!("jira transition of {} to done", issue.key), request).await.map(|_| ())
    }

    async fn deliver_one(&mut self, alert: &Alert) -> Result<(), SinkError> {
        let existing = self.find(&alert.alert_id).await?;
        match (alert.event, existing) {
            (AlertEvent::Raised, Some(_)) => Ok(()),
            (AlertEvent::Raised, None) => self.create(alert).await.map(|_| ()),
            (AlertEvent::Updated, existing) => {
                let issue = match existing {
                    Some(issue) => issue,
                    None => self.create(alert).await?,
                };
                self.comment(&issue, alert).await
            }
            (AlertEvent::Cleared, None) => Ok(()),
            (AlertEvent::Cleared, Some(issue)) if issue.done => Ok(()),
            (AlertEvent::Cleared, Some(issue)) => {
                self.comment(&issue, alert).await?;
                self.resolve(&issue, alert).await
            }
        }
    }
}

#[async_trait]
impl Sink for JiraSink {
    fn name(&self) -> &str {
        "jira"
    }

    /// Reads the project: credentials, permissions and TLS in one go.
    async fn health_check(&mut self) -> Result<(), SinkError> {
        let url = self.api(&format!("project/{}", self.config.project_key));
        http::send("jira health check", self.request(reqwest::Method::GET, url)).await.map(|_| ())
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
