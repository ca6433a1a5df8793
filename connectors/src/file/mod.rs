//! The file sink: alert events appended as JSON lines to one file, synced to disk per batch, for
//! one-shot runs, tests and log shippers. A redelivered batch is appended again; a line is identified
//! by (`alert_id`, `event`, `event_time_ms`), which a replay reproduces, so readers can deduplicate.

mod config;
mod encoder;

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use peergraph_schemas::Alert;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

pub use config::FileSinkConfig;
pub use encoder::encode_line;

use crate::sink::{Sink, SinkError};

/// Appends [`encode_line`] lines to a file.
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Which file `file` is, to notice when the path was rotated away or deleted underneath us.
    identity: Option<FileIdentity>,
    /// A write failed part-way: the file may end inside a line.
    maybe_torn: bool,
}

impl FileSink {
    /// Creates the parent directories and opens `path` for appending. A file left ending inside a
    /// line (a crash mid-write) first gets a newline, so the torn line does not swallow the next one.
    pub async fn open(path: PathBuf) -> Result<FileSink, SinkError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|error| SinkError::io(format_args!("create directory {}", parent.display()), &error))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|error| SinkError::io(format_args!("open {} for appending", path.display()), &error))?;
        let identity = FileIdentity::of_file(&file).await;
        let mut sink = FileSink { path, file, identity, maybe_torn: true };
        sink.end_torn_line().await?;
        Ok(sink)
    }

    /// Reopens the path if it no longer names the file we hold (log rotation, deletion): appending to
    /// an unlinked file would "succeed" into nowhere.
    async fn follow_rotation(&mut self) -> Result<(), SinkError> {
        let current = FileIdentity::of_path(&self.path).await;
        if current.is_none() || current != self.identity {
            tracing::info!(sink = "file", path = %self.path.display(), "file was rotated or removed; reopening");
            *self = FileSink::open(self.path.clone()).await?;
        }
        Ok(())
    }

    /// Appends a newline if the file ends inside a line.
    async fn end_torn_line(&mut self) -> Result<(), SinkError> {
        if !self.maybe_torn {
            return Ok(());
        }
        let ends_mid_line = ends_mid_line(&self.path)
            .await
            .map_err(|error| SinkError::io(format_args!("read the end of {}", self.path.display()), &error))?;
        if ends_mid_line {
            tracing::warn!(sink = "file", path = %self.path.display(), "file ended inside a line; terminating it");
            self.append(b"\n").await?;
        }
        self.maybe_torn = false;
        Ok(())
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let result = async {
            self.file.write_all(bytes).await?;
            self.file.flush().await?;
            self.file.sync_data().await
        }
        .await;
        result.map_err(|error| {
            self.maybe_torn = true;
            SinkError::io(format_args!("append to {}", self.path.display()), &error)
        })
    }
}

async fn ends_mid_line(path: &Path) -> std::io::Result<bool> {
    let mut file = File::open(path).await?;
    if file.metadata().await?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1)).await?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last).await?;
    Ok(last[0] != b'\n')
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        self.follow_rotation().await?;
        self.end_torn_line().await
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let mut lines = Vec::with_capacity(512 * batch.len());
        for alert in batch {
            encode_line(alert, &mut lines)
                .map_err(|error| SinkError::permanent(format!("encode alert {} as JSON: {error}", alert.alert_id)))?;
        }
        self.follow_rotation().await?;
        self.end_torn_line().await?;
        self.append(&lines).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Every delivery is already synced; there is nothing buffered.
        Ok(())
    }
}

/// Device and inode: what a path points at, independent of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity { device: metadata.dev(), inode: metadata.ino() }
    }

    #[cfg(not(unix))]
    fn of(_metadata: &std::fs::Metadata) -> FileIdentity {
        // No inode to compare; a rotation is only noticed when the path disappears.
        FileIdentity { device: 0, inode: 0 }
    }

    async fn of_file(file: &File) -> Option<FileIdentity> {
        file.metadata().await.ok().map(|metadata| FileIdentity::of(&metadata))
    }

    async fn of_path(path: &Path) -> Option<FileIdentity> {
        tokio::fs::metadata(path).await.ok().map(|metadata| FileIdentity::of(&metadata))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use peergraph_schemas::{AlertEvent, Severity};

    use super::*;

    fn alert(id: &str, event: AlertEvent) -> Alert {
        Alert {
            alert_id: id.into(),
            event,
            detector: "exfiltration".into(),
            severity: Severity::High,
            score: 75.0,
            entity: "host:db-1".into(),
            peer_group: None,
            summary: "4 GiB out to 198.51.100.7".into(),
            evidence: BTreeMap::new(),
            techniques: vec!["T1048".into()],
            first_seen_ms: 10,
            last_seen_ms: 20,
            event_time_ms: 20,
        }
    }

    fn read_alerts(path: &Path) -> Vec<Alert> {
        let text = std::fs::read_to_string(path).expect("file exists");
        text.lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("a JSON alert"))
            .collect()
    }

    #[tokio::test]
    async fn creates_parent_directories_and_appends_batches_as_json_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/deeper/alerts.jsonl");
        let config = FileSinkConfig { path: path.clone() };
        let mut sink = config.build().await.expect("opens");
        sink.health_check().await.expect("healthy");
        sink.deliver(&[alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)]).await.expect("first batch");
        sink.deliver(&[alert("a", AlertEvent::Cleared)]).await.expect("second batch");
        sink.close().await.expect("closed");
        assert_eq!(
            read_alerts(&path),
            [alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised), alert("a", AlertEvent::Cleared)]
        );
    }

    #[tokio::test]
    async fn reopening_appends_after_existing_lines_and_ends_a_torn_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, "{\"alert_id\":\"whole\"}\n{\"alert_id\":\"torn").expect("seed file");
        let mut sink = FileSink::open(path.clone()).await.expect("opens");
        sink.deliver(&[alert("c", AlertEvent::Raised)]).await.expect("delivered");
        let text = std::fs::read_to_string(&path).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "{\"alert_id\":\"torn", "the torn line stays on its own");
        assert_eq!(serde_json::from_str::<Alert>(lines[2]).expect("whole alert"), alert("c", AlertEvent::Raised));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_rotated_file_is_reopened_rather_than_written_into_nowhere() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alerts.jsonl");
        let mut sink = FileSink::open(path.clone()).await.expect("opens");
        sink.deliver(&[alert("before", AlertEvent::Raised)]).await.expect("delivered");
        std::fs::rename(&path, dir.path().join("alerts.jsonl.1")).expect("rotate");
        sink.deliver(&[alert("after", AlertEvent::Raised)]).await.expect("delivered after rotation");
        assert_eq!(read_alerts(&path), [alert("after", AlertEvent::Raised)]);
        assert_eq!(read_alerts(&dir.path().join("alerts.jsonl.1")), [alert("before", AlertEvent::Raised)]);
    }

    #[tokio::test]
    async fn a_directory_in_the_way_is_a_permanent_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).expect("directory");
        let error = FileSink::open(path).await.err().expect("cannot append to a directory");
        assert!(!error.is_retryable(), "{error:?}");
        assert!(error.to_string().contains("taken"), "{error}");
    }
}
