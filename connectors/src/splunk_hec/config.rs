//! The Splunk HEC sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SplunkHecSink;
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::load_secret;
use crate::sink::SinkError;

/// Splunk HTTP Event Collector, event endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplunkHecSinkConfig {
    /// The collector, e.g. `https://splunk.example.com:8088`.
    pub endpoint: String,
    /// Environment variable holding the HEC token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the HEC token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Index for the events; unset: the token's default index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// `source` of the events.
    pub source: String,
    /// `sourcetype` of the events.
    pub sourcetype: String,
    /// `host` of the events; unset: the alert's entity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Largest request body; a batch is split into requests below it.
    pub max_bytes: usize,
    /// Wait for indexer acknowledgement (the token must have it enabled): a batch counts as
    /// delivered only once Splunk reports it indexed.
    pub indexer_ack: bool,
    /// How long to wait for indexer acknowledgement before sending the batch again.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for SplunkHecSinkConfig {
    fn default() -> Self {
        SplunkHecSinkConfig {
            endpoint: String::new(),
            token_env: None,
            token_file: None,
            index: None,
            source: "peergraph".into(),
            sourcetype: "peergraph:alert".into(),
            host: None,
            max_bytes: 1024 * 1024,
            indexer_ack: false,
            ack_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl SplunkHecSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("splunk_hec endpoint", &self.endpoint)?;
        if self.token_env.is_none() && self.token_file.is_none() {
            return Err("splunk_hec: set token_env or token_file".into());
        }
        if self.max_bytes < 1024 {
            return Err("splunk_hec: max_bytes must be at least 1024".into());
        }
        Ok(())
    }

    /// Reads the token and builds the client.
    pub fn build(&self) -> Result<SplunkHecSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let token = load_secret("splunk_hec token", self.token_env.as_deref(), self.token_file.as_ref())
            .map_err(SinkError::permanent)?;
        let base = http::parse_url("splunk_hec endpoint", &self.endpoint).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(SplunkHecSink::new(client, base, token, self.clone()))
    }
}
