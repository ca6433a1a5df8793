//! The Microsoft Sentinel sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SentinelSink;
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::load_secret;
use crate::sink::SinkError;

/// Microsoft Sentinel through the Azure Monitor Logs Ingestion API: records POSTed to a data
/// collection rule's stream, authenticated with an Entra ID app (OAuth2 client credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelSinkConfig {
    /// The data collection endpoint (or the DCR's own logs ingestion endpoint), e.g.
    /// `https://my-dce-abcd.eastus-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The data collection rule's immutable id (`dcr-…`).
    pub dcr_immutable_id: String,
    /// The stream declared in the rule, e.g. `Custom-PeergraphAlerts_CL`.
    pub stream_name: String,
    /// The Logs Ingestion API version.
    pub api_version: String,
    /// The Entra ID tenant.
    pub tenant_id: String,
    /// The app registration's client id.
    pub client_id: String,
    /// Environment variable holding the app's client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// File holding the app's client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The token endpoint; `{tenant_id}` is replaced. Point it elsewhere for sovereign clouds or tests.
    pub token_url: String,
    /// The scope requested for the token.
    pub scope: String,
    /// Largest request body (the API takes at most 1 MB per call).
    pub max_bytes: usize,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for SentinelSinkConfig {
    fn default() -> Self {
        SentinelSinkConfig {
            endpoint: String::new(),
            dcr_immutable_id: String::new(),
            stream_name: "Custom-PeergraphAlerts_CL".into(),
            api_version: "2023-01-01".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret_env: None,
            client_secret_file: None,
            token_url: "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token".into(),
            scope: "https://monitor.azure.com//.default".into(),
            max_bytes: 1_000_000,
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl SentinelSinkConfig {
    /// The token URL with the tenant filled in.
    pub fn token_url(&self) -> String {
        self.token_url.replace("{tenant_id}", &self.tenant_id)
    }

    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("sentinel endpoint", &self.endpoint)?;
        http::parse_url("sentinel token_url", &self.token_url())?;
        for (name, value) in [
            ("dcr_immutable_id", &self.dcr_immutable_id),
            ("stream_name", &self.stream_name),
            ("tenant_id", &self.tenant_id),
            ("client_id", &self.client_id),
            ("api_version", &self.api_version),
        ] {
            if value.trim().is_empty() {
                return Err(format!("sentinel: {name} is empty"));
            }
            if value.contains(['/', '?', '#']) {
                return Err(format!("sentinel: {name} {value:?} contains URL syntax"));
            }
        }
        if self.client_secret_env.is_none() && self.client_secret_file.is_none() {
            return Err("sentinel: set client_secret_env or client_secret_file".into());
        }
        if !(1024..=1_000_000).contains(&self.max_bytes) {
            return Err("sentinel: max_bytes must be between 1024 and 1000000 (the API's limit)".into());
        }
        Ok(())
    }

    /// Reads the client secret and builds the client.
    pub fn build(&self) -> Result<SentinelSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let secret =
            load_secret("sentinel client_secret", self.client_secret_env.as_deref(), self.client_secret_file.as_ref())
                .map_err(SinkError::permanent)?;
        let endpoint = http::parse_url("sentinel endpoint", &self.endpoint).map_err(SinkError::permanent)?;
        let mut stream = http::join(
            &endpoint,
            &format!("/dataCollectionRules/{}/streams/{}", self.dcr_immutable_id, self.stream_name),
        );
        stream.query_pairs_mut().append_pair("api-version", &self.api_version);
        let token_url = http::parse_url("sentinel token_url", &self.token_url()).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(SentinelSink::new(client, stream, token_url, secret, self.clone()))
    }
}
