//! The webhook sink's settings and the function that builds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::WebhookSink;
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::load_optional_secret;
use crate::sink::SinkError;

/// A generic webhook: each batch is POSTed as `{"alerts": [...]}`, signed with HMAC-SHA256 over
/// `<timestamp>.<body>` when a secret is configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// Where batches are POSTed.
    pub url: String,
    /// Environment variable holding the signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The header carrying `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
    pub signature_header: String,
    /// The header carrying the signing time, Unix seconds.
    pub timestamp_header: String,
    /// Extra headers sent with every request (not secret: they are shown by `config --print`).
    pub headers: BTreeMap<String, String>,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for WebhookSinkConfig {
    fn default() -> Self {
        WebhookSinkConfig {
            url: String::new(),
            secret_env: None,
            secret_file: None,
            signature_header: "X-Peergraph-Signature".into(),
            timestamp_header: "X-Peergraph-Timestamp".into(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl WebhookSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("webhook url", &self.url)?;
        for name in [&self.signature_header, &self.timestamp_header].into_iter().chain(self.headers.keys()) {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("webhook: {name:?} is not a header name"))?;
        }
        for (name, value) in &self.headers {
            if crate::secret::looks_secret(name) {
                return Err(format!("webhook: header {name:?} looks like a credential; use secret_env / secret_file"));
            }
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("webhook: the value of header {name:?} is not a header value"))?;
        }
        Ok(())
    }

    /// Reads the secret and builds the client.
    pub fn build(&self) -> Result<WebhookSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let secret = load_optional_secret("webhook secret", self.secret_env.as_deref(), self.secret_file.as_ref())
            .map_err(SinkError::permanent)?;
        let url = http::parse_url("webhook url", &self.url).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(WebhookSink::new(client, url, secret, self.clone()))
    }
}
