//! The file sink's settings and the function that builds it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FileSink;
use crate::sink::SinkError;

/// Settings of the file sink, which appends alert events as JSON lines to one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to; it and its parent directories are created when missing.
    pub path: PathBuf,
}

impl FileSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("file sink: path is empty".into());
        }
        if self.path.file_name().is_none()
            || self.path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR)
        {
            return Err(format!("file sink: {} names a directory, not a file", self.path.display()));
        }
        Ok(())
    }

    /// Creates the parent directories and opens the file for appending.
    pub async fn build(&self) -> Result<FileSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        FileSink::open(self.path.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &str) -> FileSinkConfig {
        FileSinkConfig { path: PathBuf::from(path) }
    }

    #[test]
    fn a_file_path_is_valid() {
        assert_eq!(config("alerts.jsonl").validate(), Ok(()));
        assert_eq!(config("/var/log/peergraph/alerts.jsonl").validate(), Ok(()));
    }

    #[test]
    fn empty_and_directory_paths_are_rejected() {
        assert!(config("").validate().unwrap_err().contains("empty"));
        for directory in ["/", "/var/log/", "alerts/..", "."] {
            let error = config(directory).validate().expect_err(directory);
            assert!(error.contains("directory"), "{directory}: {error}");
        }
    }
}
