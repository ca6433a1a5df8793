//! Connectors: a consumer group on the alerts topic that decodes alert events, batches them, delivers
//! each batch to every configured sink (console, file; later SIEMs and ticketing) with shared retries,
//! and commits the batch's offsets only afterwards — at least once, made effectively once by idempotent sinks.

mod config;
pub mod console;
mod consumer;
mod delivery;
mod error;
pub mod file;
mod retry;
mod sink;

pub use config::ConnectConfig;
pub use consumer::run;
pub use delivery::ConnectReport;
pub use error::ConnectError;
pub use retry::RetryConfig;
pub use sink::{Sink, SinkError};
