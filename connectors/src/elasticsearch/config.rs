//! The Elasticsearch / OpenSearch sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Auth, ElasticsearchSink};
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::{load_optional_secret, load_secret};
use crate::sink::SinkError;

/// Elasticsearch or OpenSearch `_bulk`: one ECS document per alert event, `create`d with the id
/// `<alert_id>-<event>-<event_time_ms>`, so a redelivered event is a harmless 409.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// The cluster, e.g. `https://es.example.com:9200`.
    pub endpoint: String,
    /// The index (or data stream) documents go to.
    pub index: String,
    /// An ingest pipeline to run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Basic authentication user (with `password_env` / `password_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding the user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding an API key (the base64 `id:api_key` form), sent as
    /// `Authorization: ApiKey <key>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body; a batch is split into requests below it.
    pub max_bytes: usize,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for ElasticsearchSinkConfig {
    fn default() -> Self {
        ElasticsearchSinkConfig {
            endpoint: String::new(),
            index: "peergraph-alerts".into(),
            pipeline: None,
            username: None,
            password_env: None,
            password_file: None,
            api_key_env: None,
            api_key_file: None,
            max_bytes: 5 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl ElasticsearchSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("elasticsearch endpoint", &self.endpoint)?;
        if self.index.is_empty() || self.index.starts_with(['_', '-', '+']) || self.index != self.index.to_lowercase() {
            return Err(format!("elasticsearch: {:?} is not a valid index name", self.index));
        }
        let basic = self.username.is_some() || self.password_env.is_some() || self.password_file.is_some();
        let api_key = self.api_key_env.is_some() || self.api_key_file.is_some();
        if basic && api_key {
            return Err("elasticsearch: set either username + password_env/_file or api_key_env/_file".into());
        }
        if basic && self.username.as_deref().is_none_or(str::is_empty) {
            return Err("elasticsearch: username is missing".into());
        }
        if self.max_bytes < 1024 {
            return Err("elasticsearch: max_bytes must be at least 1024".into());
        }
        Ok(())
    }

    /// Reads the credentials and builds the client.
    pub fn build(&self) -> Result<ElasticsearchSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let api_key =
            load_optional_secret("elasticsearch api_key", self.api_key_env.as_deref(), self.api_key_file.as_ref())
                .map_err(SinkError::permanent)?;
        let auth = match (api_key, &self.username) {
            (Some(key), _) => Auth::ApiKey(key),
            (None, Some(username)) => Auth::Basic {
                username: username.clone(),
                password: load_secret(
                    "elasticsearch password",
                    self.password_env.as_deref(),
                    self.password_file.as_ref(),
                )
                .map_err(SinkError::permanent)?,
            },
            (None, None) => Auth::None,
        };
        let base = http::parse_url("elasticsearch endpoint", &self.endpoint).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(ElasticsearchSink::new(client, base, auth, self.clone()))
    }
}
