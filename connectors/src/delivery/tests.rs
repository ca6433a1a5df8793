//! The batching and delivery core driven from a channel instead of Kafka, on a paused clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peergraph_schemas::codec::{Encoder, SchemaLookup, WireFormat};
use peergraph_schemas::Severity;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::routing::RouteConfig;
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

fn policy(config: &ConnectConfig) -> SinkPolicy {
    SinkPolicy {
        batch: BatchConfig { max_events: config.batch_max, timeout: config.batch_timeout },
        retry: config.retry.clone(),
        rate_limit: None,
        circuit_breaker: CircuitBreakerConfig { failure_threshold: 0, ..CircuitBreakerConfig::default() },
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

/// Dead letters kept in memory.
#[derive(Default)]
struct DeadLetterList {
    letters: Mutex<Vec<DeadLetter>>,
}

#[async_trait]
impl DeadLetterQueue for DeadLetterList {
    async fn send(&self, letter: &DeadLetter) -> Result<(), String> {
        self.letters.lock().expect("letters").push(letter.clone());
        Ok(())
    }
}

struct Run {
    journal: Journal,
    result: Result<ConnectReport, ConnectError>,
}

/// How a test drives the core.
struct Harness {
    config: ConnectConfig,
    routes: Vec<RouteConfig>,
    policies: BTreeMap<&'static str, SinkPolicy>,
    dead_letters: Option<Arc<DeadLetterList>>,
    decoder: Decoder<Alert>,
}

impl Harness {
    fn new(config: ConnectConfig) -> Harness {
        Harness {
            config,
            routes: Vec::new(),
            policies: BTreeMap::new(),
            dead_letters: None,
            decoder: Decoder::<Alert>::default(),
        }
    }

    async fn drive(
        &self,
        mut source: mpsc::Receiver<SourceMessage>,
        sinks: Vec<ScriptedSink>,
        shutdown: impl Future<Output = ()>,
        journal: Journal,
    ) -> Run {
        let names: Vec<String> = sinks.iter().map(|sink| sink.name.to_string()).collect();
        let slots = sinks
            .into_iter()
            .map(|sink| SinkSlot {
                name: sink.name.to_string(),
                policy: self.policies.get(sink.name).cloned().unwrap_or_else(|| policy(&self.config)),
                sink: Box::new(sink),
            })
            .collect();
        let router = Router::new(&self.routes, &names).expect("routes");
        let mut committer = JournalingCommitter { journal: Arc::clone(&journal) };
        let dead_letters = self.dead_letters.clone().map(|list| list as Arc<dyn DeadLetterQueue>);
        let sinks = RoutedSinks { slots, router, dead_letters };
        let result = deliver_batches(&mut source, &mut committer, sinks, &self.decoder, &self.config, shutdown).await;
        Run { journal, result }
    }
}

async fn drive(
    source: mpsc::Receiver<SourceMessage>,
    sinks: Vec<ScriptedSink>,
    config: &ConnectConfig,
    shutdown: impl Future<Output = ()>,
    journal: Journal,
) -> Run {
    Harness::new(config.clone()).drive(source, sinks, shutdown, journal).await
}

/// The journal entries of one sink, in order.
fn of_sink(journal: &[String], sink: &str) -> Vec<String> {
    journal.iter().filter(|entry| entry.starts_with(&format!("{sink} "))).cloned().collect()
}

/// The sink got exactly `deliveries` then was closed, and the commits were exactly `expected_commits`,
/// each after the deliveries it covers.
fn assert_journal(journal: &Journal, sink: &str, deliveries: &[&str], expected_commits: &[&str]) {
    let journal = entries(journal);
    let mut expected: Vec<String> = deliveries.iter().map(|entry| entry.to_string()).collect();
    expected.push(format!("{sink} closed"));
    assert_eq!(of_sink(&journal, sink), expected, "{journal:#?}");
    assert_eq!(commits(&journal), expected_commits, "{journal:#?}");
    if let (Some(last_delivery), Some(first_commit)) = (
        deliveries.last().and_then(|d| journal.iter().position(|e| e == d)),
        journal.iter().position(|e| e.starts_with("commit")),
    ) {
        assert!(first_commit > last_delivery, "{journal:#?}");
    }
}

fn commits(journal: &[String]) -> Vec<String> {
    journal.iter().filter(|entry| entry.starts_with("commit")).cloned().collect()
}

#[tokio::test(start_paused = true)]
async fn offsets_are_committed_only_after_every_sink_has_the_batch() {
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
    let journal = entries(&run.journal);
    for sink in ["console", "file"] {
        assert_eq!(
            of_sink(&journal, sink),
            [
                format!(r#"{sink} got ["a", "b"]"#),
                format!(r#"{sink} got ["a", "b"]"#),
                // The source ended: the last, partial batch is delivered on the way out.
                format!(r#"{sink} got ["a"]"#),
                format!("{sink} closed"),
            ],
            "{journal:#?}"
        );
    }
    // Each commit comes after both sinks took the batch it covers, never earlier.
    let position = |entry: &str| journal.iter().position(|e| e == entry).expect(entry);
    let first_commit = position("commit {0: 11, 1: 5}");
    for sink in ["console", "file"] {
        assert!(position(&format!(r#"{sink} got ["a", "b"]"#)) < first_commit, "{journal:#?}");
    }
    assert_eq!(commits(&journal).last().map(String::as_str), Some("commit {0: 13}"), "{journal:#?}");
    assert!(position("commit {0: 13}") > position(r#"file got ["a"]"#), "{journal:#?}");
    assert!(position("commit {0: 13}") > position(r#"console got ["a"]"#), "{journal:#?}");
    assert_eq!((report.raised, report.updated, report.cleared, report.batches), (2, 1, 2, 6), "{report:?}");
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
    assert_journal(&run.journal, "file", &[r#"file got ["a"]"#], &["commit {0: 1}"]);
}

#[tokio::test(start_paused = true)]
async fn a_sink_failing_transiently_is_retried_and_the_batch_committed_once_it_succeeds() {
    let journal = Journal::default();
    let source = ended_source(vec![message(0, 0, json(&alert("a", AlertEvent::Raised)))]);
    let flaky = ScriptedSink::new("siem", &journal)
        .failing_first([SinkError::retryable("503 from the collector"), SinkError::retryable("timed out")]);
    let run = drive(source, vec![flaky], &config(10), std::future::pending(), Arc::clone(&journal)).await;

    let report = run.result.expect("delivered on the third attempt");
    let journal = entries(&run.journal);
    assert_eq!(
        of_sink(&journal, "siem"),
        [r#"siem failed ["a"]"#, r#"siem failed ["a"]"#, r#"siem got ["a"]"#, "siem closed"]
    );
    assert_eq!(commits(&journal), ["commit {0: 1}"]);
    assert_eq!((report.raised, report.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_slow_sink_holds_back_the_commit_but_not_the_other_sinks() {
    let journal = Journal::default();
    let source = ended_source(vec![
        message(0, 0, json(&alert("a", AlertEvent::Raised))),
        message(0, 1, json(&alert("b", AlertEvent::Raised))),
    ]);
    let mut harness = Harness::new(config(1));
    let mut slow = policy(&harness.config);
    slow.retry.initial_backoff = Duration::from_secs(5);
    slow.retry.max_backoff = Duration::from_secs(5);
    harness.policies.insert("siem", slow);
    let sinks = vec![
        ScriptedSink::new("file", &journal),
        ScriptedSink::new("siem", &journal).failing_first([SinkError::retryable("busy")]),
    ];
    let run = harness.drive(source, sinks, std::future::pending(), Arc::clone(&journal)).await;

    run.result.expect("delivered");
    let journal = entries(&run.journal);
    let position = |entry: &str| journal.iter().position(|e| e == entry).expect(entry);
    // The file sink got both alerts while the SIEM waited out its backoff…
    assert!(position(r#"file got ["b"]"#) < position(r#"siem got ["a"]"#), "{journal:#?}");
    // …but nothing was committed before the SIEM had them too.
    let first_commit = journal.iter().position(|e| e.starts_with("commit")).expect("a commit");
    assert!(first_commit > position(r#"siem got ["a"]"#), "{journal:#?}");
    assert_eq!(commits(&journal).last().map(String::as_str), Some("commit {0: 2}"));
}

#[tokio::test(start_paused = true)]
async fn a_permanently_failing_sink_without_a_dead_letter_topic_stops_delivery_without_committing() {
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
    // The console sink may have the batch; it gets it again after a restart, since nothing was committed.
    let journal = entries(&run.journal);
    assert!(commits(&journal).is_empty(), "{journal:#?}");
    assert!(journal.contains(&r#"file failed ["a", "b"]"#.to_string()), "{journal:#?}");
    assert!(journal.contains(&"console closed".to_string()) && journal.contains(&"file closed".to_string()));
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
    assert!(commits(&journal).is_empty(), "{journal:?}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_the_sink_gives_up_on_is_dead_lettered_with_the_error_and_attempts_then_committed() {
    let journal = Journal::default();
    let source = ended_source(vec![
        message(0, 0, json(&alert("a", AlertEvent::Raised))),
        message(0, 1, json(&alert("b", AlertEvent::Raised))),
        message(0, 2, json(&alert("c", AlertEvent::Raised))),
    ]);
    let mut harness = Harness::new(config(2));
    let letters = Arc::new(DeadLetterList::default());
    harness.dead_letters = Some(Arc::clone(&letters));
    let sinks = vec![
        ScriptedSink::new("file", &journal),
        ScriptedSink::new("siem", &journal).failing_first([
            SinkError::retryable("503"),
            SinkError::retryable("503"),
            SinkError::retryable("503 still"),
        ]),
    ];
    let run = harness.drive(source, sinks, std::future::pending(), Arc::clone(&journal)).await;

    let report = run.result.expect("dead-lettering is not an error");
    assert_eq!((report.raised, report.dead_lettered), (3, 2), "{report:?}");
    let letters = letters.letters.lock().expect("letters").clone();
    let shown: Vec<(&str, &str, u32, bool, i64)> = letters
        .iter()
        .map(|l| (l.sink.as_str(), l.alert.alert_id.as_str(), l.attempts, l.retryable, l.offset))
        .collect();
    assert_eq!(shown, [("siem", "a", 3, true, 0), ("siem", "b", 3, true, 1)]);
    assert_eq!(letters[0].error, "503 still");
    let journal = entries(&run.journal);
    assert!(journal.contains(&r#"siem got ["c"]"#.to_string()), "the next batch is delivered: {journal:#?}");
    assert_eq!(commits(&journal).last().map(String::as_str), Some("commit {0: 3}"), "{journal:#?}");
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_makes_no_calls_until_open_for_has_passed() {
    let journal = Journal::default();
    let source = ended_source(vec![message(0, 0, json(&alert("a", AlertEvent::Raised)))]);
    let mut harness = Harness::new(config(10));
    let mut guarded = policy(&harness.config);
    guarded.retry = RetryConfig {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    guarded.circuit_breaker = CircuitBreakerConfig { failure_threshold: 2, open_for: Duration::from_secs(60) };
    harness.policies.insert("siem", guarded);
    let failures = (0..3).map(|_| SinkError::retryable("503"));
    let sinks = vec![ScriptedSink::new("siem", &journal).failing_first(failures)];
    let started = Instant::now();
    let run = harness.drive(source, sinks, std::future::pending(), Arc::clone(&journal)).await;

    run.result.expect("delivered once the target recovered");
    // Two failures open the circuit for 60 s; the probe fails and opens it for another 60 s.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(120) && elapsed < Duration::from_secs(121), "{elapsed:?}");
    let journal = entries(&run.journal);
    assert_eq!(of_sink(&journal, "siem").len(), 5, "3 failures, 1 success, closed: {journal:#?}");
}

/// Row 5 of docs/reliability.md: with the defaults (6 attempts, a circuit of 5 failures / 30 s), a
/// target down for about a minute had its first batch dead-lettered 36 s into the outage, although
/// the docs promise no give-up before `max_attempts × open_for` (180 s).
#[tokio::test(start_paused = true)]
async fn with_a_circuit_breaker_a_batch_is_not_given_up_before_max_attempts_times_open_for() {
    // Down for 7 calls (about 70 s at the breaker's pace): delivered, nothing dead-lettered.
    let failures = (0..7).map(|_| SinkError::retryable("503"));
    let (report, letters, outage) = run_one_alert_with_default_policies(|sink| sink.failing_first(failures)).await;
    let report = report.expect("delivered once the target recovered");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(letters.is_empty());
    assert!(outage > Duration::from_secs(60) && outage < Duration::from_secs(180), "{outage:?}");

    // Down for good: given up on (dead-lettered) only once 6 × 30 s have passed.
    let (report, _, gave_up) =
        run_one_alert_with_default_policies(|sink| sink.failing_always(SinkError::retryable("503"))).await;
    assert_eq!(report.expect("dead-lettering is not an error").dead_lettered, 1);
    assert!(gave_up >= Duration::from_secs(180) && gave_up < Duration::from_secs(220), "{gave_up:?}");
}

/// One alert through a `siem` sink scripted by `script`, with the default retry and circuit
/// breaker policies and a dead-letter queue: the run's result, the dead letters, the time taken.
async fn run_one_alert_with_default_policies(
    script: impl FnOnce(ScriptedSink) -> ScriptedSink,
) -> (Result<ConnectReport, ConnectError>, Vec<DeadLetter>, Duration) {
    let journal = Journal::default();
    let mut harness = Harness::new(config(10));
    let mut defaults = policy(&harness.config);
    defaults.retry = RetryConfig::default();
    defaults.circuit_breaker = CircuitBreakerConfig::default();
    harness.policies.insert("siem", defaults);
    let letters = Arc::new(DeadLetterList::default());
    harness.dead_letters = Some(Arc::clone(&letters));
    let source = ended_source(vec![message(0, 0, json(&alert("a", AlertEvent::Raised)))]);
    let sinks = vec![script(ScriptedSink::new("siem", &journal))];
    let started = Instant::now();
    let run = harness.drive(source, sinks, std::future::pending(), Arc::clone(&journal)).await;
    let letters = letters.letters.lock().expect("letters").clone();
    (run.result, letters, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_sink_is_called_no_faster_than_its_limit() {
    let journal = Journal::default();
    let source =
        ended_source((0..6).map(|n| message(0, n, json(&alert(&format!("a{n}"), AlertEvent::Raised)))).collect());
    let mut harness = Harness::new(config(1));
    let mut limited = policy(&harness.config);
    limited.rate_limit = Some(RateLimitConfig { events_per_second: 2.0, burst: 2 });
    harness.policies.insert("pager", limited);
    let started = Instant::now();
    let run = harness
        .drive(source, vec![ScriptedSink::new("pager", &journal)], std::future::pending(), Arc::clone(&journal))
        .await;

    assert_eq!(run.result.expect("delivered").raised, 6);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2100), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn routes_send_alerts_only_to_their_sinks_and_unrouted_alerts_are_still_committed() {
    let journal = Journal::default();
    let mut low = alert("low", AlertEvent::Raised);
    low.severity = Severity::Low;
    let source = ended_source(vec![message(0, 0, json(&alert("high", AlertEvent::Raised))), message(0, 1, json(&low))]);
    let mut harness = Harness::new(config(10));
    harness.routes = vec![
        RouteConfig { sinks: vec!["pager".into()], min_severity: Some(Severity::High), ..RouteConfig::default() },
        RouteConfig { sinks: vec!["tickets".into()], detectors: vec!["beaconing".into()], ..RouteConfig::default() },
    ];
    let sinks = vec![ScriptedSink::new("pager", &journal), ScriptedSink::new("tickets", &journal)];
    let run = harness.drive(source, sinks, std::future::pending(), Arc::clone(&journal)).await;

    let report = run.result.expect("delivered");
    let journal = entries(&run.journal);
    assert_eq!(of_sink(&journal, "pager"), [r#"pager got ["high"]"#, "pager closed"]);
    assert_eq!(of_sink(&journal, "tickets"), ["tickets closed"]);
    assert_eq!(commits(&journal).last().map(String::as_str), Some("commit {0: 2}"));
    assert_eq!((report.raised, report.unrouted), (1, 1));
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
    assert_journal(&run.journal, "file", &[r#"file got ["a", "b"]"#], &["commit {0: 7}"]);
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
    let journal = entries(&run.journal);
    assert_eq!(commits(&journal), ["commit {2: 42}"]);
    assert_eq!(of_sink(&journal, "file"), ["file closed"]);
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
    let started = Instant::now();
    let run = drive(source, vec![ScriptedSink::new("file", &journal)], &config, shutdown, Arc::clone(&journal)).await;
    stopper.await.expect("stopper");
    drop(sender);

    assert_eq!(run.result.expect("clean shutdown").raised, 2);
    assert!(started.elapsed() < Duration::from_secs(1), "the drain does not wait for the batch timeout");
    assert_journal(&run.journal, "file", &[r#"file got ["a", "b"]"#], &["commit {0: 2}"]);
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
    assert_journal(&run.journal, "file", &[r#"file got ["a"]"#], &["commit {0: 1}"]);
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
    let source = ended_source(vec![
        message(0, 0, json(&alert("a", AlertEvent::Raised))),
        message(0, 1, Some(vec![0x00, 0, 0, 0, 17, 2, 3])),
        message(0, 2, json(&alert("b", AlertEvent::Raised))),
    ]);
    let mut harness = Harness::new(config(10));
    harness.decoder = Decoder::<Alert>::new(Arc::new(UnreachableRegistry));
    let run = harness
        .drive(source, vec![ScriptedSink::new("file", &journal)], std::future::pending(), Arc::clone(&journal))
        .await;

    match run.result {
        Err(ConnectError::SchemaLookup { partition: 0, offset: 1, source }) => {
            assert_eq!(source.kind(), "schema_lookup_failed")
        }
        other => panic!("expected a schema lookup error, got {other:?}"),
    }
    // What was read before is delivered and committed; the unreadable message and what follows are not.
    assert_journal(&run.journal, "file", &[r#"file got ["a"]"#], &["commit {0: 1}"]);
}

#[tokio::test(start_paused = true)]
async fn reading_pauses_at_max_in_flight_until_sinks_acknowledge() {
    let journal = Journal::default();
    let source =
        ended_source((0..5).map(|n| message(0, n, json(&alert(&format!("a{n}"), AlertEvent::Raised)))).collect());
    // A batch of up to 10 that can never fill: only 2 events may be in flight.
    let config = ConnectConfig { max_in_flight: 2, ..config(10) };
    let run =
        drive(source, vec![ScriptedSink::new("file", &journal)], &config, std::future::pending(), Arc::clone(&journal))
            .await;

    assert_eq!(run.result.expect("delivered").raised, 5);
    let journal = entries(&run.journal);
    assert_eq!(
        of_sink(&journal, "file"),
        [r#"file got ["a0", "a1"]"#, r#"file got ["a2", "a3"]"#, r#"file got ["a4"]"#, "file closed"],
    );
}
