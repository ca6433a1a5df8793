//! Connectors: a consumer group on the alerts topic that decodes alert events, routes each to the
//! configured sink instances (console, file, SIEMs, ticketing, webhooks, subprocesses, custom Rust
//! sinks), which batch, rate-limit, retry and circuit-break on their own, dead-letter what they give
//! up on, and lets offsets be committed only once every routed sink acknowledged — at least once,
//! made effectively once by the sinks' idempotency keys.

mod config;
pub mod console;
mod consumer;
#[cfg(test)]
mod consumer_group_tests;
mod delivery;
pub mod elasticsearch;
mod error;
pub mod exec;
pub mod file;
mod http;
mod idempotency;
pub mod jira;
mod metrics;
pub mod pagerduty;
mod policy;
mod retry;
mod routing;
mod secret;
pub mod sentinel;
pub mod servicenow;
mod sink;
mod sinks;
pub mod splunk_hec;
pub mod syslog;
#[cfg(test)]
mod test_support;
pub mod webhook;

pub use config::ConnectConfig;
pub use consumer::{check, run, run_with};
pub use delivery::{ConnectReport, DeadLetter};
pub use error::ConnectError;
pub use http::{HttpConfig, TlsConfig};
pub use metrics::{metrics, register_metrics, ConnectMetrics, SinkLabels};
pub use policy::{BatchConfig, CircuitBreakerConfig, RateLimitConfig};
pub use retry::RetryConfig;
pub use routing::{namespace_of, RouteConfig};
pub use secret::{load_secret, Secret};
pub use sink::{Sink, SinkError};
pub use sinks::{CustomSinkConfig, CustomSinks, SinkConfig, SinkFactory, SinkKind};
