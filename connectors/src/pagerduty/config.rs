//! The PagerDuty sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PagerDutySink;
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::load_secret;
use crate::sink::SinkError;

/// PagerDuty Events API v2: `raised` and `updated` trigger (deduplicated by `dedup_key` = alert id),
/// `cleared` resolves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PagerDutySinkConfig {
    /// Events API base URL; the sink posts to `<url>/v2/enqueue`.
    pub url: String,
    /// Environment variable holding the integration's routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key_env: Option<String>,
    /// File holding the integration's routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key_file: Option<PathBuf>,
    /// Optional link shown on the incident (`client_url`), e.g. the peergraph alert page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for PagerDutySinkConfig {
    fn default() -> Self {
        PagerDutySinkConfig {
            url: "https://events.pagerduty.com".into(),
            routing_key_env: None,
            routing_key_file: None,
            client_url: None,
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl PagerDutySinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("pagerduty url", &self.url)?;
        if self.routing_key_env.is_none() && self.routing_key_file.is_none() {
            return Err("pagerduty: set routing_key_env or routing_key_file".into());
        }
        Ok(())
    }

    /// Reads the routing key and builds the client.
    pub fn build(&self) -> Result<PagerDutySink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let routing_key =
            load_secret("pagerduty routing_key", self.routing_key_env.as_deref(), self.routing_key_file.as_ref())
                .map_err(SinkError::permanent)?;
        let base = http::parse_url("pagerduty url", &self.url).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(PagerDutySink::new(client, http::join(&base, "/v2/enqueue"), routing_key, self.client_url.clone()))
    }
}
