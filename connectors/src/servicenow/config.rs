//! The ServiceNow sink's settings and the function that builds it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Auth, ServiceNowSink};
use crate::http::{self, HttpConfig, TlsConfig};
use crate::secret::{load_optional_secret, load_secret};
use crate::sink::SinkError;

/// ServiceNow Table API: an incident per alert, found again by `correlation_id` = alert id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceNowSinkConfig {
    /// The instance, e.g. `https://example.service-now.com`.
    pub instance_url: String,
    /// The table tickets go to.
    pub table: String,
    /// Basic authentication user (with `password_env` / `password_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding the user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the user's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding an OAuth bearer token (instead of basic authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding an OAuth bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `assignment_group` of new incidents (a sys_id or name), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment_group: Option<String>,
    /// `category` of new incidents.
    pub category: String,
    /// The `state` a cleared alert sets (6 = Resolved in the default incident state model).
    pub resolved_state: String,
    /// States that count as done already (Resolved, Closed, Canceled).
    pub done_states: Vec<String>,
    /// `close_code` set on resolve (required by the default resolve UI policy).
    pub close_code: String,
    /// Longest time one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings.
    pub tls: TlsConfig,
}

impl Default for ServiceNowSinkConfig {
    fn default() -> Self {
        ServiceNowSinkConfig {
            instance_url: String::new(),
            table: "incident".into(),
            username: None,
            password_env: None,
            password_file: None,
            token_env: None,
            token_file: None,
            assignment_group: None,
            category: "security".into(),
            resolved_state: "6".into(),
            done_states: vec!["6".into(), "7".into(), "8".into()],
            close_code: "Resolved by caller".into(),
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}

impl ServiceNowSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        http::parse_url("servicenow instance_url", &self.instance_url)?;
        if self.table.is_empty() || !self.table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("servicenow: table {:?} is not a table name", self.table));
        }
        let basic = self.username.is_some() || self.password_env.is_some() || self.password_file.is_some();
        let bearer = self.token_env.is_some() || self.token_file.is_some();
        match (basic, bearer) {
            (true, true) => Err("servicenow: set either username + password_env/_file or token_env/_file".into()),
            (false, false) => {
                Err("servicenow: no credentials (username + password_env/_file, or token_env/_file)".into())
            }
            (true, false) if self.username.as_deref().is_none_or(str::is_empty) => {
                Err("servicenow: username is missing".into())
            }
            _ => Ok(()),
        }
    }

    /// Reads the credentials and builds the client.
    pub fn build(&self) -> Result<ServiceNowSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        let token = load_optional_secret("servicenow token", self.token_env.as_deref(), self.token_file.as_ref())
            .map_err(SinkError::permanent)?;
        let auth = match (token, &self.username) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(username)) => Auth::Basic {
                username: username.clone(),
                password: load_secret("servicenow password", self.password_env.as_deref(), self.password_file.as_ref())
                    .map_err(SinkError::permanent)?,
            },
            (None, None) => return Err(SinkError::permanent("servicenow: no credentials")),
        };
        let base = http::parse_url("servicenow instance_url", &self.instance_url).map_err(SinkError::permanent)?;
        let client = http::client(&HttpConfig { timeout: self.timeout, tls: self.tls.clone() })?;
        Ok(ServiceNowSink::new(
            client,
            http::join(&base, &format!("/api/now/table/{}", self.table)),
            auth,
            self.clone(),
        ))
    }
}
