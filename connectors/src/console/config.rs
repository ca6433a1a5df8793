//! The console sink's settings and the function that builds it.

use serde::{Deserialize, Serialize};

use super::ConsoleSink;

/// Settings of the console sink, which prints one line per alert event to standard output. It has
/// none yet; the struct exists so the sink is configured like every other one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSinkConfig {}

impl ConsoleSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// A console sink writing to this process's standard output.
    pub fn build(&self) -> ConsoleSink {
        ConsoleSink::new(Box::new(tokio::io::stdout()))
    }
}
