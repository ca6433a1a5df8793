//! The batching and delivery core driven from a channel instead of Kafka, on a paused clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peergraph_schemas::codec::{Encoder, SchemaLookup, WireFormat};
use peergraph_schemas::Severity;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::sink::SinkError;

/// Everything the sinks and the committer did, in order: the order is what at-least-once is about.
type Journal = Arc<Mutex<Vec<String>>>;

fn entries(journal: &Journal) -> Vec<String> {
    journal.lock().expect("journal").clone()
}

/// A sink that journals what it receives and fails as scripted.
struct ScriptedSink {
    name: &'static str,
    journal: Journal,
    /// Failures to answer the next deliveries with, in order; then it succeeds.
    failures: VecDeque<SinkError>,
    /// Fail every delivery with this once `failures` is exhausted.
    always: Option<SinkError>,
}

impl ScriptedSink {
    fn new(name: &'static str, journal: &Journal) -> Self {
        ScriptedSink { name, journal: Arc::clone(journal), failures: VecDeque::new(), always: None }
    }

    fn failing_first(mut self, failures: impl IntoIterator<Item = SinkError>) -> Self {
        self.failures.extend(failures);
        self
    }

    fn failing_always(mut self, error: SinkError) -> Self {
        self.always = Some(error);
        self
    }

    fn log(&self, entry: String) {
        self.journal.lock().expect("journal").push(entry);
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    fn name(&self) -> &str {
        self.name
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Alert]) -> Result<(), SinkError> {
        let ids: Vec<&str> = batch.iter().map(|alert| alert.alert_id.as_str()).collect();
        if let Some(error) = self.failures.pop_front().or_else(|| self.always.clone()) {
            self.log(format!("{} failed {ids:?}", self.name));
            return Err(error);
        }
        self.log(format!("{} got {ids:?}", self.name));
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.log(format!("{} closed", self.name));
        Ok(())
    }
}

struct JournalingCommitter {
    journal: Journal,
}

#[async_trait]
impl OffsetCommitter for JournalingCommitter {
    async fn commit(&mut self, positions: &BTreeMap<i32, i64>) -> Result<(), String> {
        self.journal.lock().expect("journal").push(format!("commit {positions:?}"));
        Ok(())
    }
}

fn alert(id: &str, event: AlertEvent) -> Alert {
    Alert {
        alert_id: id.into(),
        event,
        detector: "peer_unique_destination".into(),
        severity: Severity::High,
        score: 80.0,
        entity: format!("pod:shop/{id}"),
        peer_group: Some("workload:shop/Deployment/web".into()),
        summary: "talks to 203.0.113.9:443 alone".into(),
        evidence: BTreeMap::new(),
        techniques: vec!["T1071".into()],
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
        event_time_ms: 2_000,
    }
}

fn json(alert: &Alert) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(alert).expect("json"))
}

fn avro(alert: &Alert) -> Option<Vec<u8>> {
    let encoder = Encoder::<Alert>::new(WireFormat::AvroSingleObject).expect("encoder");
    Some(encoder.encode_to_vec(alert).expect("avro"))
}

fn message(partition: i32, offset: i64, payload: Option<Vec<u8>>) -> SourceMessage {
    SourceMessage { partition, offset, payload }
}

fn config(batch_max: usize) -> ConnectConfig {
    ConnectConfig {
        batch_max,
        batch_timeout: Duration::from_secs(1),
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        },
        ..ConnectConfig::default()
    }
}

/// A source that yields `messages` and then ends.
fn ended_source(messages: Vec<SourceMessage>) -> mpsc::Receiver<SourceMessage> {
    let (sender, receiver) = mpsc::channel(messages.len().max(1));
    for message in messages {
        sender.try_send(message).expect("room in the channel");
    }
    receiver
}

struct Run {
    journal: Journal,
    result: Result<ConnectReport, ConnectError>,
}

async fn drive(
    mut source: mpsc::Receiver<SourceMessage>,
    sinks: Vec<ScriptedSink>,
    config: &ConnectConfig,
    shutdown: impl Future<Output = ()>,
    journal: Journal,
) -> Run {
    let mut sinks: Vec<Box<dyn Sink>> = sinks.into_iter().map(|sink| Box::new(sink) as Box<dyn Sink>).collect();
    let mut committer = JournalingCommitter { journal: Arc::clone(&journal) };
    let decoder = Decoder::<Alert>::default();
    let result = deliver_batches(&mut source, &mut committer, &mut sinks, &decoder, config, shutdown).await;
    Run { journal, result }
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_to_every_sink_before_their_offsets_are_committed() {
    let journal = Journal::default();
    let source = ended_source(vec![
        message(0, 10, json(&alert("a", AlertEvent::Raised))),
        message(1, 4, avro(&alert("b", AlertEvent::Raised))),
        message(0, 11, json(&alert("a", AlertEvent::Updated))),
        message(1, 5, avro(&alert("b", AlertEvent::Cleared))),
        message(0, 12, json(&alert("a", AlertEvent::Cleared))),
    ]);
    let sinks = vec![ScriptedSink::new("console", &journal), ScriptedSink::new("file", &journal)];
    let run = drive(source, sinks, &config(2), std::future::pending(), Arc::clone(&journal)).await;

    let report = run.result.expect("delivered");
    assert_eq!(
        entries(&run.journal),
        [
            r#"console got ["a", "b"]"#,
            r#"file got ["a", "b"]"#,
            "commit {0: 11, 1: 5}",
            r#"console got ["a", "b"]"#,
            r#"file got ["a", "b"]"#,
            "commit {0: 12, 1: 6}",
            // The source ended: the last, partial batch is delivered on the way out.
            r#"console got ["a"]"#,
            r#"file got ["a"]"#,
            "commit {0: 13}",
            "console closed",
            "file closed",
        ]
    );
    assert_eq!(report, ConnectReport { raised: 2, updated: 1, cleared: 2, batches: 3, ..ConnectReport::default() });
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_delivered_when_its_timeout_expires() {
    let journal = Journal::default();
    let (sender, source) = mpsc::channel(8);
    sender.send(message(0, 0, json(&alert("a", AlertEvent::Raised)))).await.expect("send");
    let started = Instant::now();
    let delivered_at = Arc::new(Mutex::new(None));
    let shutdown = {
        let journal = Arc::clone(&journal);
        let delivered_at = Arc::clone(&delivered_at);
        async move {
            // Poll the journal on the paused clock until the batch shows up, then stop.
            while entries(&journal).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            *delivered_at.lock().expect("lock") = Some(started.elapsed());
        }
    };
    let run =
        drive(source, vec![ScriptedSink::new("file", &journal)], &config(100), shutdown, Arc::clone(&journal)).await;
    drop(sender);

    assert_eq!(run.result.expect("delivered").raised, 1);
    let waited = delivered_at.lock().expect("lock").expect("delivered before shutdown");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100), "delivered after {waited:?}");
    assert_eq!(entries(&run.journal), [r#"file got ["a"]"#, "commit {0: 1}", "file closed"]);
}

#[tokio::test(start_paused = true)]
async fn a_sink_failing_transiently_is_retried_and_the_batch_committed_once_it_succeeds() {
    let journal = Journal::default();
    let source = ended_source(vec![message(0, 0, json(&alert("a", AlertEvent::Raised)))]);
    let flaky = ScriptedSink::new("siem", &journal)
        .failing_first([SinkError::retryable("503 from the collector"), SinkError::retryable("timed out")]);
    let run = drive(source, vec![flaky], &config(10), std::future::pending(), Arc::clone(&journal)).await;

    let report = run.result.expect("delivered on the third attempt");
    assert_eq!(
        entries(&run.journal),
        [r#"siem failed ["a"]"#, r#"siem failed ["a"]"#, r#"siem got ["a"]"#, "commit {0: 1}", "siem closed"]
    );
    assert_eq!((report.raised, report.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_permanently_failing_sink_stops_delivery_without_committing() {
    let journal = Journal::default();
    let source = ended_source(vec![
        message(0, 0, json(&alert("a", AlertEvent::Raised))),
        message(0, 1, json(&alert("b", AlertEvent::Raised))),
        message(0, 2, json(&alert("c", AlertEvent::Raised))),
    ]);
    let sinks = vec![
        ScriptedSink::new("console", &journal),
        ScriptedSink::new("file", &journal).failing_always(SinkError::permanent("permission denied")),
    ];
    let run = drive(source, sinks, &config(2), std::future::pending(), Arc::clone(&journal)).await;

    match run.result {
        Err(ConnectError::Delivery { sink, attempts, alerts, source }) => {
            assert_eq!((sink.as_str(), attempts, alerts), ("file", 1, 2));
            assert_eq!(source, SinkError::permanent("permission denied"));
        }
        other => panic!("expected a delivery error, got {other:?}"),
    }
    // The first sink already has the batch; it gets it again after a restart, since nothing was committed.
    // The rest of the topic is not read into sinks either.
    assert_eq!(
        entries(&run.journal),
        [r#"console got ["a", "b"]"#, r#"file failed ["a", "b"]"#, "console closed", "file closed"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_keeps_failing_gives_up_after_max_attempts_without_committing() {
    let journal = Journal::default();
    let source = ended_source(vec![message(3, 7, json(&alert("a", AlertEvent::Raised)))]);
    let down = ScriptedSink::new("siem", &journal).failing_always(SinkError::retryable("connection refused"));
    let run = drive(source, vec![down], &config(10), std::future::pending(), Arc::clone(&journal)).await;

    let error = run.result.expect_err("gives up");
    assert!(matches!(error, ConnectError::Delivery { attempts: 3, .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("siem") && message.contains("connection refused") && message.contains("not committed"),
        "{message}"
    );
    let journal = entries(&run.journal);
    assert_eq!(journal.iter().filter(|entry| entry.starts_with("siem failed")).count(), 3, "{journal:?}");
    assert!(!journal.iter().any(|entry| entry.starts_with("commit")), "{journal:?}");
}

#[tokio::test(start_paused = true)]
async fn undecodable_messages_are_skipped_counted_and_committed_past() {
    let journal = Journal::default();
    let mut truncated = json(&alert("x", AlertEvent::Raised)).expect("bytes");
    truncated.truncate(truncated.len() / 2);
    let source = ended_source(vec![
        message(0, 0, Some(b"not an alert".to_vec())),
        message(0, 1, json(&alert("a", AlertEvent::Raised))),
        message(0, 2, None),
        message(0, 3, Some(truncated)),
        message(0, 4, Some(vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9])),
        message(0, 5, Some(b"{\"alert_id\": 5}".to_vec())),
        message(0, 6, json(&alert("b", AlertEvent::Cleared))),
    ]);
    let run = drive(
        source,
        vec![ScriptedSink::new("file", &journal)],
        &config(10),
        std::future::pending(),
        Arc::clone(&journal),
    )
    .await;

    let report = run.result.expect("skipping is not an error");
    assert_eq!(entries(&run.journal), [r#"file got ["a", "b"]"#, "commit {0: 7}", "file closed"]);
    assert_eq!((report.raised, report.cleared, report.skipped), (1, 1, 5));
    assert_eq!(
        report.skipped_by_kind,
        BTreeMap::from([("empty", 1), ("malformed_json", 2), ("unknown_fingerprint", 1), ("unknown_framing", 1)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_only_undecodable_messages_is_committed_without_calling_the_sinks() {
    let journal = Journal::default();
    let source = ended_source(vec![message(2, 40, Some(b"garbage".to_vec())), message(2, 41, None)]);
    let run = drive(
        source,
        vec![ScriptedSink::new("file", &journal)],
        &config(10),
        std::future::pending(),
        Arc::clone(&journal),
    )
    .await;

    assert_eq!(run.result.expect("fine").skipped, 2);
    assert_eq!(entries(&run.journal), ["commit {2: 42}", "file closed"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_and_commits_the_in_flight_batch_then_closes_the_sinks() {
    let journal = Journal::default();
    let (sender, source) = mpsc::channel(8);
    sender.send(message(0, 0, json(&alert("a", AlertEvent::Raised)))).await.expect("send");
    sender.send(message(0, 1, json(&alert("b", AlertEvent::Raised)))).await.expect("send");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ConnectConfig { batch_timeout: Duration::from_secs(3600), ..config(100) };
    let stopper = tokio::spawn(async move {
        // Long enough for both messages to be read into the batch, far shorter than its timeout.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(());
    });
    let shutdown = async move {
        let _ = stopped.await;
    };
    let run = drive(source, vec![ScriptedSink::new("file", &journal)], &config, shutdown, Arc::clone(&journal)).await;
    stopper.await.expect("stopper");
    drop(sender);

    assert_eq!(run.result.expect("clean shutdown").raised, 2);
    assert_eq!(entries(&run.journal), [r#"file got ["a", "b"]"#, "commit {0: 2}", "file closed"]);
}

#[tokio::test(start_paused = true)]
async fn idle_exit_stops_once_no_message_arrived_for_that_long() {
    let journal = Journal::default();
    let (sender, source) = mpsc::channel(8);
    sender.send(message(0, 0, json(&alert("a", AlertEvent::Raised)))).await.expect("send");
    let config = ConnectConfig { idle_exit: Some(Duration::from_secs(5)), ..config(100) };
    let started = Instant::now();
    let run =
        drive(source, vec![ScriptedSink::new("file", &journal)], &config, std::future::pending(), Arc::clone(&journal))
            .await;
    drop(sender);

    assert_eq!(run.result.expect("idle exit is a clean stop").raised, 1);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(entries(&run.journal), [r#"file got ["a"]"#, "commit {0: 1}", "file closed"]);
}

/// A schema registry that cannot be reached.
struct UnreachableRegistry;

impl SchemaLookup for UnreachableRegistry {
    fn writer_schema(&self, id: u32) -> Result<std::sync::Arc<apache_avro::Schema>, DecodeError> {
        Err(DecodeError::SchemaLookup { id, reason: "connection refused".into() })
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_schema_registry_stops_delivery_instead_of_skipping_alerts() {
    let journal = Journal::default();
    let mut source = ended_source(vec![
        message(0, 0, json(&alert("a", AlertEvent::Raised))),
        message(0, 1, Some(vec![0x00, 0, 0, 0, 17, 2, 3])),
        message(0, 2, json(&alert("b", AlertEvent::Raised))),
    ]);
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(ScriptedSink::new("file", &journal))];
    let mut committer = JournalingCommitter { journal: Arc::clone(&journal) };
    let decoder = Decoder::<Alert>::new(Arc::new(UnreachableRegistry));
    let result =
        deliver_batches(&mut source, &mut committer, &mut sinks, &decoder, &config(10), std::future::pending()).await;

    match result {
        Err(ConnectError::SchemaLookup { partition: 0, offset: 1, source }) => {
            assert_eq!(source.kind(), "schema_lookup_failed")
        }
        other => panic!("expected a schema lookup error, got {other:?}"),
    }
    assert_eq!(entries(&journal), ["file closed"]);
}
