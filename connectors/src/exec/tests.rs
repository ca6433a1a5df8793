//! The exec sink against small shell programs that follow, bend and break the protocol.

use std::time::Duration;

use peergraph_schemas::AlertEvent;

use super::*;
use crate::test_support::{alert, deliver_all, fast_retry};

/// A sink running `script` with bash, in `dir`.
fn sink(dir: &std::path::Path, script: &str) -> ExecSink {
    ExecSinkConfig {
        command: "bash".into(),
        args: vec!["-c".into(), script.into()],
        working_dir: Some(dir.to_owned()),
        ack_timeout: Duration::from_secs(2),
        ..ExecSinkConfig::default()
    }
    .build()
    .expect("builds")
}

fn received(dir: &std::path::Path) -> Vec<Alert> {
    std::fs::read_to_string(dir.join("received.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("an alert per line"))
        .collect()
}

/// Appends each line to received.jsonl and acknowledges it.
const ECHO: &str = r#"while IFS= read -r line; do printf '%s\n' "$line" >> received.jsonl; echo '{"ok": true}'; done"#;

#[tokio::test]
async fn every_event_is_written_as_a_json_line_and_acknowledged_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = sink(dir.path(), ECHO);
    sink.health_check().await.expect("starts");
    let batches = vec![
        vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)],
        vec![alert("a", AlertEvent::Cleared)],
    ];
    deliver_all(&mut sink, &batches, &fast_retry(1)).await;
    sink.close().await.expect("closes");
    let expected: Vec<Alert> = batches.into_iter().flatten().collect();
    assert_eq!(received(dir.path()), expected);
}

#[tokio::test]
async fn a_program_that_dies_mid_batch_is_restarted_and_only_unacknowledged_events_are_resent() {
    let dir = tempfile::tempdir().expect("dir");
    // The first run takes two events and dies; later runs behave.
    let script = r#"
        runs=$(cat runs 2>/dev/null || echo 0); echo $((runs + 1)) > runs
        n=0
        while IFS= read -r line; do
          printf '%s\n' "$line" >> received.jsonl; echo '{"ok": true}'
          n=$((n + 1)); if [ "$runs" = 0 ] && [ "$n" = 2 ]; then exit 3; fi
        done"#;
    let mut sink = sink(dir.path(), script);
    let batch: Vec<Alert> = (0..5).map(|n| alert(&format!("a{n}"), AlertEvent::Raised)).collect();
    let retries = deliver_all(&mut sink, std::slice::from_ref(&batch), &fast_retry(3)).await;
    sink.close().await.expect("closes");
    assert_eq!(retries, 1);
    assert_eq!(received(dir.path()), batch, "each event exactly once");
    assert_eq!(std::fs::read_to_string(dir.path().join("runs")).expect("runs").trim(), "2");
}

#[tokio::test]
async fn refusals_are_retryable_or_permanent_as_the_program_says() {
    let dir = tempfile::tempdir().expect("dir");
    let mut busy = sink(dir.path(), r#"read -r line; echo '{"ok": false, "retry": true, "error": "queue full"}'"#);
    let error = busy.deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("busy");
    assert!(error.is_retryable() && error.to_string().contains("queue full"), "{error}");
    let mut rejecting =
        sink(dir.path(), r#"read -r line; echo '{"ok": false, "retry": false, "error": "bad project"}'"#);
    let error = rejecting.deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("rejected");
    assert!(!error.is_retryable() && error.to_string().contains("bad project"), "{error}");
    let mut garbled = sink(dir.path(), r#"read -r line; echo 'what?'"#);
    let error = garbled.deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("garbled");
    assert!(error.is_retryable() && error.to_string().contains("not an acknowledgement"), "{error}");
}

#[tokio::test]
async fn a_silent_program_times_out_and_a_missing_one_is_a_permanent_error() {
    let dir = tempfile::tempdir().expect("dir");
    let mut silent = sink(dir.path(), "sleep 30");
    let started = std::time::Instant::now();
    let error = silent.deliver(&[alert("a", AlertEvent::Raised)]).await.expect_err("times out");
    assert!(error.is_retryable() && error.to_string().contains("no acknowledgement"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut missing =
        ExecSinkConfig { command: "/nonexistent/peergraph-hook".into(), ..Default::default() }.build().expect("builds");
    let error = missing.health_check().await.expect_err("not found");
    assert!(!error.is_retryable() && error.to_string().contains("/nonexistent/peergraph-hook"), "{error}");
}
