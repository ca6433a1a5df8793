//! The Jira sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Auth, JiraSink};
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::{load_optional_secret, load_secret};
use crate::sink::SinkError;

/// Jira REST API v2 (Data Center / Server) or v3 (Cloud): an issue per alert, labelled
/// `peergraph-<alert id>` and found again by a JQL search on that label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JiraSinkConfig {
    /// The site, e.g. `https://example.atlassian.net`.
    pub url: String,
    /// 2 (plain-text bodies, `/rest/api/2/search`) or 3 (Atlassian Document Format bodies,
    /// `/rest/api/3/search/jql`).
    pub api_version: u8,
    /// The project new issues go to.
    pub project_key: String,
    /// The issue type of new issues.
    pub issue_type: String,
    /// Labels added to every issue besides `peergraph` and `peergraph-<alert id>`.
    pub labels: Vec<String>,
    /// The transition a cleared alert takes (by name, case-insensitive); when no transition has
    /// this name, the first one into a "done" status is taken.
    pub resolve_transition: String,
    /// Cloud: the account's email, with `api_token_env` / `api_token_file` (basic authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Environment variable holding the API token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_env: Option<String>,
    /// File holding the API token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    /// Data Center: environment variable holding a personal access token (bearer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Data Center: file holding a personal access token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for JiraSinkConfig {
    fn default() -> Self {
        JiraSinkConfig {
            url: String::new(),
            api_version: 3,
            project_key: String::new(),
            issue_type: "Task".into(),
            labels: Vec::new(),
            resolve_transition: "Done".into(),
            email: None,
            api_token_env: None,
            api_token_file: None,
            token_env: None,
            token_file: None,
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl JiraSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("jira url", &self.url)?;
        if !matches!(self.api_version, 2 | 3) {
            return Err(format!("jira: api_version must be 2 or 3, not {}", self.api_version));
        }
        if self.project_key.trim().is_empty() {
            return Err("jira: project_key is empty".into());
        }
        if let Some(label) = self.labels.iter().find(|label| label.is_empty() || label.contains(char::is_whitespace)) {
            return Err(format!("jira: label {label:?} is empty or contains whitespace"));
        }
        let basic = self.email.is_some() || self.api_token_env.is_some() || self.api_token_file.is_some();
        let bearer = self.token_env.is_some() || self.token_file.is_some();
        match (basic, bearer) {
            (true, true) => Err("jira: set either email + api_token_env/_file or token_env/_file".into()),
            (false, false) => Err("jira: no credentials (email + api_token_env/_file, or token_env/_file)".into()),
            (true, false) if self.email.as_deref().is_none_or(str::is_empty) => Err("jira: email is missing".into()),
            _ => Ok(()),
        }
    }

    /// Reads the credentials and builds the client.
    pub fn build(&self) -> Result<JiraSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let token = load_optional_secret("jira token", self.token_env.as_deref(), self.token_file.as_ref())
            .map_err(SinkError::permanent)?;
        let auth = match (token, &self.email) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(email)) => Auth::Basic {
                email: email.clone(),
                api_token: load_secret("jira api_token", self.api_token_env.as_deref(), self.api_token_file.as_ref())
                    .map_err(SinkError::permanent)?,
            },
            (None, None) => return Err(SinkError::permanent("jira: no credentials")),
        };
        let base = http::parse_url("jira url", &self.url).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(JiraSink::new(client, base, auth, self.clone()))
    }
}
