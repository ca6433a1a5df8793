//! The registry of sink types: `[[connect.sinks]]` entries, each a named instance of a built-in type
//! (or of a custom type registered in Rust), with its own batching, retry, rate-limit and
//! circuit-breaker settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::console::ConsoleSinkConfig;
use crate::delivery::SinkPolicy;
use crate::elasticsearch::ElasticsearchSinkConfig;
use crate::exec::ExecSinkConfig;
use crate::file::FileSinkConfig;
use crate::jira::JiraSinkConfig;
use crate::pagerduty::PagerDutySinkConfig;
use crate::policy::{BatchConfig, CircuitBreakerConfig, RateLimitConfig};
use crate::retry::RetryConfig;
use crate::sentinel::SentinelSinkConfig;
use crate::servicenow::ServiceNowSinkConfig;
use crate::sink::{Sink, SinkError};
use crate::splunk_hec::SplunkHecSinkConfig;
use crate::syslog::SyslogSinkConfig;
use crate::webhook::WebhookSinkConfig;

/// One sink instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkConfig {
    /// The instance's name, unique in `[connect]`, used by routes, logs and metrics; defaults to the type.
    #[serde(default)]
    pub name: String,
    /// The type (`type = "pagerduty"`) and its settings.
    #[serde(flatten)]
    pub kind: SinkKind,
    /// How alert events are grouped into calls; each type has its own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchConfig>,
    /// How a failing call is retried; defaults to `connect.retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// At most this many alert events per second to the target; unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// When to stop calling a target that keeps failing, and for how long.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// The built-in sink types, chosen by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    /// One human-readable line per alert event on standard output.
    Console(ConsoleSinkConfig),
    /// JSON lines appended to a file.
    File(FileSinkConfig),
    /// PagerDuty Events API v2.
    #[serde(rename = "pagerduty")]
    PagerDuty(PagerDutySinkConfig),
    /// ServiceNow Table API incidents.
    #[serde(rename = "servicenow")]
    ServiceNow(ServiceNowSinkConfig),
    /// Jira issues (REST v2 / v3).
    Jira(JiraSinkConfig),
    /// A signed HTTP POST per batch.
    Webhook(WebhookSinkConfig),
    /// Splunk HTTP Event Collector.
    SplunkHec(SplunkHecSinkConfig),
    /// Elasticsearch / OpenSearch `_bulk` with ECS documents.
    Elasticsearch(ElasticsearchSinkConfig),
    /// Microsoft Sentinel through the Logs Ingestion API.
    Sentinel(SentinelSinkConfig),
    /// RFC 5424 syslog over UDP, TCP or TLS with CEF, LEEF or JSON payloads.
    Syslog(SyslogSinkConfig),
    /// A subprocess speaking JSON lines on its standard input and output.
    Exec(ExecSinkConfig),
    /// A sink type registered in Rust with [`CustomSinks`].
    Custom(CustomSinkConfig),
}

impl SinkKind {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Console(_) => "console",
            SinkKind::File(_) => "file",
            SinkKind::PagerDuty(_) => "pagerduty",
            SinkKind::ServiceNow(_) => "servicenow",
            SinkKind::Jira(_) => "jira",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::SplunkHec(_) => "splunk_hec",
            SinkKind::Elasticsearch(_) => "elasticsearch",
            SinkKind::Sentinel(_) => "sentinel",
            SinkKind::Syslog(_) => "syslog",
            SinkKind::Exec(_) => "exec",
            SinkKind::Custom(_) => "custom",
        }
    }

    /// The batching a type gets when its instance sets none.
    fn default_batch(&self, connect_default: &BatchConfig) -> BatchConfig {
        match self {
            SinkKind::Console(_)
            | SinkKind::File(_)
            | SinkKind::Custom(_)
            | SinkKind::Webhook(_)
            | SinkKind::SplunkHec(_)
            | SinkKind::Elasticsearch(_)
            | SinkKind::Sentinel(_)
            | SinkKind::Syslog(_)
            | SinkKind::Exec(_) => connect_default.clone(),
            // One request per alert event either way; small batches acknowledge sooner.
            SinkKind::PagerDuty(_) | SinkKind::ServiceNow(_) | SinkKind::Jira(_) => {
                BatchConfig { max_events: 20, timeout: connect_default.timeout }
            }
        }
    }

    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SinkKind::Console(config) => config.validate(),
            SinkKind::File(config) => config.validate(),
            SinkKind::PagerDuty(config) => config.validate(),
            SinkKind::ServiceNow(config) => config.validate(),
            SinkKind::Jira(config) => config.validate(),
            SinkKind::Webhook(config) => config.validate(),
            SinkKind::SplunkHec(config) => config.validate(),
            SinkKind::Elasticsearch(config) => config.validate(),
            SinkKind::Sentinel(config) => config.validate(),
            SinkKind::Syslog(config) => config.validate(),
            SinkKind::Exec(config) => config.validate(),
            SinkKind::Custom(config) => {
                if config.plugin.trim().is_empty() {
                    return Err("custom sink: plugin is empty".into());
                }
                Ok(())
            }
        }
    }

    /// Builds the sink: reads its secrets, opens files and clients. Nothing is sent yet.
    pub async fn build(&self, name: &str, custom: &CustomSinks) -> Result<Box<dyn Sink>, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        Ok(match self {
            SinkKind::Console(config) => Box::new(config.build()),
            SinkKind::File(config) => Box::new(config.build().await?),
            SinkKind::PagerDuty(config) => Box::new(config.build()?),
            SinkKind::ServiceNow(config) => Box::new(config.build()?),
            SinkKind::Jira(config) => Box::new(config.build()?),
            SinkKind::Webhook(config) => Box::new(config.build()?),
            SinkKind::SplunkHec(config) => Box::new(config.build()?),
            SinkKind::Elasticsearch(config) => Box::new(config.build()?),
            SinkKind::Sentinel(config) => Box::new(config.build()?),
            SinkKind::Syslog(config) => Box::new(config.build()?),
            SinkKind::Exec(config) => Box::new(config.build()?),
            SinkKind::Custom(config) => custom.build(name, config)?,
        })
    }
}

impl SinkConfig {
    /// A sink instance of `kind` with every shared setting at its default.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind,
            batch: None,
            retry: None,
            rate_limit: None,
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }

    /// The instance's name: `name`, or the type when unnamed.
    pub fn instance_name(&self) -> &str {
        if self.name.is_empty() {
            self.kind.type_name()
        } else {
            &self.name
        }
    }

    /// What is wrong with this instance's settings, prefixed with its name.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.instance_name();
        let prefix = |reason: String| format!("sinks[{name}]: {reason}");
        self.kind.validate().map_err(prefix)?;
        if let Some(batch) = &self.batch {
            batch.validate().map_err(prefix)?;
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(prefix)?;
        }
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.validate().map_err(prefix)?;
        }
        Ok(())
    }

    /// The policy the worker drives this instance with, defaults filled in from `[connect]`.
    pub(crate) fn policy(&self, connect_batch: &BatchConfig, connect_retry: &RetryConfig) -> SinkPolicy {
        SinkPolicy {
            batch: self.batch.clone().unwrap_or_else(|| self.kind.default_batch(connect_batch)),
            retry: self.retry.clone().unwrap_or_else(|| connect_retry.clone()),
            rate_limit: self.rate_limit.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
        }
    }
}

/// `type = "custom"`: a sink type registered in Rust, with free-form options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomSinkConfig {
    /// The name the sink type was registered under with [`CustomSinks::register`].
    pub plugin: String,
    /// Handed to the type's factory as it is.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// Builds a custom sink instance from its instance name and options.
pub type SinkFactory =
    Box<dyn Fn(&str, &serde_json::Map<String, serde_json::Value>) -> Result<Box<dyn Sink>, SinkError> + Send + Sync>;

/// Sink types added in Rust by an embedding program; see `connectors/examples/custom_sink.rs`.
#[derive(Default)]
pub struct CustomSinks {
    factories: BTreeMap<String, SinkFactory>,
}

impl CustomSinks {
    /// No custom types.
    pub fn new() -> CustomSinks {
        CustomSinks::default()
    }

    /// Makes `type = "custom", plugin = "<plugin>"` build sinks with `factory`.
    pub fn register(
        mut self,
        plugin: impl Into<String>,
        factory: impl Fn(&str, &serde_json::Map<String, serde_json::Value>) -> Result<Box<dyn Sink>, SinkError>
            + Send
            + Sync
            + 'static,
    ) -> CustomSinks {
        self.factories.insert(plugin.into(), Box::new(factory));
        self
    }

    fn build(&self, name: &str, config: &CustomSinkConfig) -> Result<Box<dyn Sink>, SinkError> {
        let factory = self.factories.get(&config.plugin).ok_or_else(|| {
            let known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
            SinkError::permanent(format!(
                "custom sink plugin {:?} is not registered (registered: {known:?})",
                config.plugin
            ))
        })?;
        factory(name, &config.options)
    }
}

impl std::fmt::Debug for CustomSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use peergraph_schemas::Alert;

    use super::*;
    use crate::config::ConnectConfig;

    struct Nothing;

    #[async_trait]
    impl Sink for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
        async fn health_check(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn deliver(&mut self, _batch: &[Alert]) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn custom_types_are_built_by_their_registered_factory_with_their_options() {
        let config: ConnectConfig = toml::from_str(
            r#"
                console = false
                [[sinks]]
                name = "mine"
                type = "custom"
                plugin = "nothing"
                options = { answer = 42 }
            "#,
        )
        .expect("parses");
        let custom = CustomSinks::new().register("nothing", |name, options| {
            assert_eq!((name, options.get("answer")), ("mine", Some(&serde_json::json!(42))));
            Ok(Box::new(Nothing) as Box<dyn Sink>)
        });
        let (slots, _) = config.build_slots(&custom).await.expect("builds");
        assert_eq!((slots[0].name.as_str(), slots[0].sink.name()), ("mine", "nothing"));
        let error = config.build_slots(&CustomSinks::new()).await.err().expect("not registered");
        assert!(error.to_string().contains("\"nothing\" is not registered"), "{error}");
    }

    #[test]
    fn every_type_reads_from_toml_and_misspelt_settings_are_refused() {
        let config: ConnectConfig = toml::from_str(
            r#"
                [[sinks]]
                type = "pagerduty"
                routing_key_env = "PD_KEY"
                [[sinks]]
                type = "servicenow"
                instance_url = "https://example.service-now.com"
                username = "svc"
                password_env = "SN_PASSWORD"
                [[sinks]]
                type = "jira"
                url = "https://example.atlassian.net"
                project_key = "SEC"
                email = "bot@example.com"
                api_token_env = "JIRA_TOKEN"
                [[sinks]]
                type = "webhook"
                url = "https://hooks.example.com/peergraph"
                secret_file = "/run/secrets/hook"
                [[sinks]]
                type = "splunk_hec"
                endpoint = "https://splunk.example.com:8088"
                token_env = "HEC_TOKEN"
                tls.insecure_skip_verify = true
                [[sinks]]
                type = "elasticsearch"
                endpoint = "https://es.example.com:9200"
                api_key_env = "ES_API_KEY"
                [[sinks]]
                type = "sentinel"
                endpoint = "https://dce.eastus-1.ingest.monitor.azure.com"
                dcr_immutable_id = "dcr-0123"
                tenant_id = "t"
                client_id = "c"
                client_secret_env = "AZ_SECRET"
                [[sinks]]
                type = "syslog"
                address = "siem.example.com:6514"
                transport = "tls"
                format = "leef"
                [[sinks]]
                type = "exec"
                command = "/usr/local/bin/peergraph-hook"
            "#,
        )
        .expect("parses");
        config.validate().expect("valid");
        let names: Vec<&str> = config.sinks.iter().map(SinkConfig::instance_name).collect();
        assert_eq!(
            names,
            ["pagerduty", "servicenow", "jira", "webhook", "splunk_hec", "elasticsearch", "sentinel", "syslog", "exec"]
        );
        // `peergraph config --print` shows them (secrets are only ever variable names and paths).
        let shown = toml::to_string_pretty(&config).expect("serializes");
        assert_eq!(toml::from_str::<ConnectConfig>(&shown).expect("reparses"), config, "{shown}");
        let misspelt = toml::from_str::<ConnectConfig>(
            r#"
                [[sinks]]
                type = "pagerduty"
                routing_key_enc = "PD_KEY"
            "#,
        );
        let error = misspelt.expect_err("unknown field").to_string();
        assert!(error.contains("routing_key_enc"), "{error}");
        let unknown_type = toml::from_str::<ConnectConfig>("[[sinks]]\ntype = \"carrier_pigeon\"\n");
        assert!(unknown_type.expect_err("unknown type").to_string().contains("carrier_pigeon"));
    }
}
