//! The heart of the connector, free of Kafka: messages in, decoded, routed to sink instances, each
//! of which batches (by size and time), rate-limits, retries and circuit-breaks on its own; a batch a
//! sink gives up on goes to the dead-letter topic. Offsets are committed only up to the first message
//! some routed sink has not acknowledged yet — at least once. `consumer.rs` plugs Kafka into it; the
//! tests plug in channels.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use async_trait::async_trait;
use peergraph_schemas::codec::{DecodeError, Decoder};
use peergraph_schemas::{Alert, AlertEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::config::ConnectConfig;
use crate::error::ConnectError;
use crate::metrics::{metrics, ConnectMetrics};
use crate::policy::{BatchConfig, CircuitBreaker, CircuitBreakerConfig, CircuitState, RateLimitConfig, RateLimiter};
use crate::retry::{Attempts, GaveUp, RetryConfig};
use crate::routing::Router;
use crate::sink::Sink;

/// One message from the alerts topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceMessage {
    pub partition: i32,
    pub offset: i64,
    /// `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// What a source reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SourceEvent {
    /// A message to decode and deliver.
    Message(SourceMessage),
    /// The source got partitions to read (a consumer-group assignment): from here on, silence means
    /// the topic is idle rather than that the group is still forming.
    Assigned,
}

/// Where messages come from: the Kafka consumer, or a channel in tests.
#[async_trait]
pub(crate) trait AlertSource: Send {
    /// The next event, or `None` once the source has ended. Must be cancellation safe: a call that is
    /// dropped before it completes loses nothing.
    async fn next_event(&mut self) -> Option<SourceEvent>;
}

#[async_trait]
impl AlertSource for tokio::sync::mpsc::Receiver<SourceMessage> {
    async fn next_event(&mut self) -> Option<SourceEvent> {
        self.recv().await.map(SourceEvent::Message)
    }
}

/// Acknowledges consumed messages once every sink has them: commits consumer-group offsets.
#[async_trait]
pub(crate) trait OffsetCommitter: Send {
    /// Records `positions` (partition → the next offset to read) as consumed. A failure is not fatal:
    /// the next commit covers the same partitions, and at worst a restart redelivers.
    async fn commit(&mut self, positions: &BTreeMap<i32, i64>) -> Result<(), String>;
}

/// What a run of the connector did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectReport {
    /// `raised` alert events acknowledged by every sink they were routed to (and committed, or at
    /// least attempted). A sink acknowledges by taking the event, or by dead-lettering it.
    pub raised: u64,
    /// `updated` alert events acknowledged by every sink they were routed to.
    pub updated: u64,
    /// `cleared` alert events acknowledged by every sink they were routed to.
    pub cleared: u64,
    /// Messages that were not alerts (malformed, empty, unknown schema): logged, skipped, committed.
    pub skipped: u64,
    /// `skipped`, by [`DecodeError::kind`].
    pub skipped_by_kind: BTreeMap<&'static str, u64>,
    /// Alert events no routing rule sent anywhere (committed without a sink call).
    pub unrouted: u64,
    /// Successful sink calls, over every sink.
    pub batches: u64,
    /// Sink calls that were tried again after a retryable failure.
    pub retries: u64,
    /// Alert events (per sink) sent to the dead-letter topic after the sink gave up on them.
    pub dead_lettered: u64,
    /// Offset commits that failed (the next commit, or a restart's redelivery, covers them).
    pub commit_failures: u64,
}

impl ConnectReport {
    /// Alert events of every kind acknowledged by every routed sink.
    pub fn delivered(&self) -> u64 {
        self.raised + self.updated + self.cleared
    }

    fn count_acknowledged(&mut self, event: AlertEvent) {
        match event {
            AlertEvent::Raised => self.raised += 1,
            AlertEvent::Updated => self.updated += 1,
            AlertEvent::Cleared => self.cleared += 1,
        }
    }
}

/// Remembers which kinds of undecodable message were already logged loudly.
#[derive(Default)]
struct SkipLog {
    kinds_seen: HashSet<&'static str>,
}

impl SkipLog {
    fn skipped(&mut self, partition: i32, offset: i64, error: &DecodeError) {
        let kind = error.kind();
        if self.kinds_seen.insert(kind) {
            tracing::warn!(
                partition,
                offset,
                kind,
                %error,
                "skipping a message that is not an alert; further messages of this kind are logged at debug level"
            );
        } else {
            tracing::debug!(partition, offset, kind, %error, "skipping a message that is not an alert");
        }
    }
}

/// How one sink instance is driven: its batching, retries, rate limit and circuit breaker.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SinkPolicy {
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub rate_limit: Option<RateLimitConfig>,
    pub circuit_breaker: CircuitBreakerConfig,
}

/// A built sink with its instance name and policy.
pub(crate) struct SinkSlot {
    pub name: String,
    pub sink: Box<dyn Sink>,
    pub policy: SinkPolicy,
}

/// What goes to the dead-letter topic when a sink gives up on an alert event: the event itself and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The sink instance that gave up.
    pub sink: String,
    /// Its last error (secrets are never part of sink errors).
    pub error: String,
    /// Whether that error was transient (attempts ran out) or permanent (rejected).
    pub retryable: bool,
    /// Calls made before giving up.
    pub attempts: u32,
    /// Where the alert event was read from.
    pub partition: i32,
    /// Where the alert event was read from.
    pub offset: i64,
    /// The alert event.
    pub alert: Alert,
}

/// Where alert events go that a sink gave up on: the dead-letter topic, or a list in tests.
#[async_trait]
pub(crate) trait DeadLetterQueue: Send + Sync {
    /// Durably records `letter`; only then is the event acknowledged for that sink.
    async fn send(&self, letter: &DeadLetter) -> Result<(), String>;
}

/// The sink instances, how alerts are routed to them, and where what they give up on goes.
pub(crate) struct RoutedSinks {
    pub slots: Vec<SinkSlot>,
    pub router: Router,
    pub dead_letters: Option<Arc<dyn DeadLetterQueue>>,
}

/// Health-checks every sink (with its retry policy), before anything is consumed.
pub(crate) async fn check_sinks(slots: &mut [SinkSlot]) -> Result<(), ConnectError> {
    for slot in slots.iter_mut() {
        let mut attempts = Attempts::new(&slot.policy.retry, &slot.name, "health_check");
        loop {
            match slot.sink.health_check().await {
                Ok(()) => break,
                Err(error) => attempts.failed(error).await.map_err(|GaveUp { error, attempts: made }| {
                    ConnectError::HealthCheck { sink: slot.name.clone(), attempts: made, source: error }
                })?,
            }
        }
        tracing::info!(sink = %slot.name, "sink is healthy");
    }
    Ok(())
}

/// Closes every sink; a failure is logged, since everything acknowledged was already delivered.
pub(crate) async fn close_sinks(slots: &mut [SinkSlot]) {
    for slot in slots.iter_mut() {
        if let Err(error) = slot.sink.close().await {
            tracing::warn!(sink = %slot.name, %error, "closing the sink failed");
        }
    }
}

/// One alert event on its way to one sink.
struct Envelope {
    partition: i32,
    offset: i64,
    alert: Alert,
}

/// What a sink worker tells the consumer loop.
enum WorkerNews {
    /// The sink took these events (or dead-lettered them).
    Acknowledged { positions: Vec<(i32, i64)>, retries: u64, dead_lettered: u64 },
    /// The sink gave up with no dead-letter topic to fall back on, or the dead-letter topic failed.
    Failed(ConnectError),
}

/// Per partition: the offsets read but not yet acknowledged by every routed sink.
#[derive(Default)]
struct PartitionOffsets {
    /// Offset → (acknowledgements still missing, the event's kind).
    pending: BTreeMap<i64, (usize, AlertEvent)>,
    /// One past the highest offset read.
    next: i64,
    /// The position last committed.
    committed: Option<i64>,
}

/// Which offsets may be committed: everything below the first one still waiting for a sink.
#[derive(Default)]
struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionOffsets>,
    in_flight: usize,
}

impl OffsetTracker {
    /// A message was read; `sinks` acknowledgements are expected for it (0: it is done already).
    fn read(&mut self, partition: i32, offset: i64, sinks: usize, event: AlertEvent) {
        let offsets = self.partitions.entry(partition).or_insert_with(|| PartitionOffsets {
            // The consumer started here, so this is what the group has committed already (or the
            // reset position): no commit is due until something moves past it.
            committed: Some(offset),
            next: offset,
            pending: BTreeMap::new(),
        });
        offsets.next = offsets.next.max(offset.saturating_add(1));
        if sinks > 0 && offsets.pending.insert(offset, (sinks, event)).is_none() {
            self.in_flight += 1;
        }
    }

    /// One sink acknowledged the message; its event kind once every sink did.
    fn acknowledge(&mut self, partition: i32, offset: i64) -> Option<AlertEvent> {
        let offsets = self.partitions.get_mut(&partition)?;
        let (missing, event) = offsets.pending.get_mut(&offset)?;
        *missing -= 1;
        if *missing > 0 {
            return None;
        }
        let event = *event;
        offsets.pending.remove(&offset);
        self.in_flight -= 1;
        Some(event)
    }

    /// Positions (partition → next offset to read) that moved since they were last committed.
    fn committable(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .filter_map(|(&partition, offsets)| {
                let position = offsets.pending.keys().next().copied().unwrap_or(offsets.next);
                (offsets.committed != Some(position)).then_some((partition, position))
            })
            .collect()
    }

    fn committed(&mut self, positions: &BTreeMap<i32, i64>) {
        for (partition, &position) in positions {
            if let Some(offsets) = self.partitions.get_mut(partition) {
                offsets.committed = Some(position);
            }
        }
    }
}

/// Commits what may be committed, if anything moved.
async fn commit(tracker: &mut OffsetTracker, committer: &mut impl OffsetCommitter, report: &mut ConnectReport) {
    let positions = tracker.committable();
    if positions.is_empty() {
        return;
    }
    match committer.commit(&positions).await {
        Ok(()) => {
            tracing::debug!(?positions, "committed");
            tracker.committed(&positions);
        }
        Err(error) => {
            report.commit_failures += 1;
            tracing::warn!(?positions, %error, "committing acknowledged alerts failed; they may be delivered again");
        }
    }
}

/// Consumes `source` until it ends, `shutdown` completes or `config.idle_exit` passes without a
/// message (counted from the source's first event): decodes, routes each alert event to its sinks'
/// workers, and commits offsets as the workers acknowledge. On the way out the workers deliver what
/// they hold (graceful drain: retries stay bounded by each sink's policy), the acknowledged offsets
/// are committed and the sinks closed. When a sink gives up with no dead-letter topic, or a schema
/// cannot be looked up, nothing more is read, the other sinks drain, and the error is returned;
/// what that sink did not take stays uncommitted.
pub(crate) async fn deliver_batches(
    source: &mut impl AlertSource,
    committer: &mut impl OffsetCommitter,
    sinks: RoutedSinks,
    decoder: &Decoder<Alert>,
    config: &ConnectConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectReport, ConnectError> {
    let RoutedSinks { slots, router, dead_letters } = sinks;
    let mut shutdown = pin!(shutdown);
    let mut report = ConnectReport::default();
    let mut skip_log = SkipLog::default();
    let mut tracker = OffsetTracker::default();
    // The idle clock starts at the first sign of a live source, so a slow group join is not idleness.
    let mut last_activity: Option<Instant> = None;
    let mut commit_due: Option<Instant> = None;
    let mut failure: Option<ConnectError> = None;
    let mut stopping = false;

    // Dropping the set (the connector is cancelled) aborts the workers: nothing more is delivered.
    let mut workers = JoinSet::new();
    let (news_sender, mut news) = mpsc::unbounded_channel();
    let mut inboxes = Vec::with_capacity(slots.len());
    for slot in slots {
        let (inbox_sender, inbox) = mpsc::unbounded_channel();
        inboxes.push(inbox_sender);
        let span = tracing::info_span!("sink", sink = %slot.name);
        workers.spawn(sink_worker(slot, inbox, news_sender.clone(), dead_letters.clone()).instrument(span));
    }
    drop(news_sender);

    loop {
        if stopping && !inboxes.is_empty() {
            // Closing the inboxes tells the workers to deliver what they hold and stop.
            inboxes.clear();
        }
        let reading = !stopping && tracker.in_flight < config.max_in_flight;
        let idle_deadline = config.idle_exit.zip(last_activity).map(|(idle, last)| last + idle);
        tokio::select! {
            biased;
            () = &mut shutdown, if !stopping => {
                tracing::info!(in_flight = tracker.in_flight, "shutting down; draining in-flight batches");
                stopping = true;
            }
            received = news.recv() => match received {
                // Every worker has finished, and everything they reported is counted.
                None => break,
                Some(WorkerNews::Acknowledged { positions, retries, dead_lettered }) => {
                    report.batches += 1;
                    report.retries += retries;
                    report.dead_lettered += dead_lettered;
                    for (partition, offset) in positions {
                        if let Some(event) = tracker.acknowledge(partition, offset) {
                            report.count_acknowledged(event);
                        }
                    }
                    commit(&mut tracker, committer, &mut report).await;
                }
                Some(WorkerNews::Failed(error)) => {
                    tracing::error!(%error, "a sink gave up; stopping");
                    failure.get_or_insert(error);
                    stopping = true;
                }
            },
            Some(joined) = workers.join_next() => {
                if let Err(error) = joined {
                    if error.is_panic() {
                        tracing::error!(%error, "a sink worker panicked; stopping");
                        failure.get_or_insert(ConnectError::Worker { reason: error.to_string() });
                        stopping = true;
                    }
                }
            }
            () = sleep_until_if(commit_due) => {
                commit_due = None;
                commit(&mut tracker, committer, &mut report).await;
            }
            () = sleep_until_if(idle_deadline), if !stopping => {
                tracing::info!(idle_exit = ?config.idle_exit, "no message for idle_exit; stopping");
                stopping = true;
            }
            event = source.next_event(), if reading => {
                last_activity = Some(Instant::now());
                let SourceMessage { partition, offset, payload } = match event {
                    Some(SourceEvent::Message(message)) => message,
                    Some(SourceEvent::Assigned) => continue,
                    None => {
                        tracing::info!("the alert source ended");
                        stopping = true;
                        continue;
                    }
                };
                match decoder.decode(payload.as_deref().unwrap_or_default()) {
                    Ok(alert) => {
                        let targets = router.route(&alert);
                        tracker.read(partition, offset, targets.len(), alert.event);
                        if targets.is_empty() {
                            report.unrouted += 1;
                            tracing::debug!(partition, offset, alert_id = %alert.alert_id, "no route; skipped");
                            commit_due.get_or_insert_with(|| Instant::now() + config.batch_timeout);
                        }
                        for &target in &targets {
                            // A worker that has stopped has reported why; its inbox is simply closed.
                            let _ = inboxes[target].send(Envelope { partition, offset, alert: alert.clone() });
                        }
                    }
                    Err(error @ DecodeError::SchemaLookup { .. }) => {
                        failure.get_or_insert(ConnectError::SchemaLookup { partition, offset, source: error });
                        stopping = true;
                    }
                    Err(error) => {
                        skip_log.skipped(partition, offset, &error);
                        report.skipped += 1;
                        *report.skipped_by_kind.entry(error.kind()).or_default() += 1;
                        tracker.read(partition, offset, 0, AlertEvent::Raised);
                        commit_due.get_or_insert_with(|| Instant::now() + config.batch_timeout);
                    }
                }
            }
        }
    }
    while let Some(joined) = workers.join_next().await {
        if let Err(error) = joined {
            failure.get_or_insert(ConnectError::Worker { reason: error.to_string() });
        }
    }
    commit(&mut tracker, committer, &mut report).await;

    match failure {
        None => {
            tracing::info!(
                delivered = report.delivered(),
                skipped = report.skipped,
                batches = report.batches,
                retries = report.retries,
                dead_lettered = report.dead_lettered,
                "alert delivery stopped"
            );
            Ok(report)
        }
        Some(error) => {
            tracing::error!(%error, delivered = report.delivered(), "alert delivery failed");
            Err(error)
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_if(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One sink instance: batches what its inbox brings, delivers each batch under the sink's policy,
/// and reports acknowledgements. Ends when the inbox closes (after delivering what it holds) or when
/// the sink gives up with nowhere to dead-letter; closes the sink either way.
async fn sink_worker(
    mut slot: SinkSlot,
    mut inbox: mpsc::UnboundedReceiver<Envelope>,
    news: mpsc::UnboundedSender<WorkerNews>,
    dead_letters: Option<Arc<dyn DeadLetterQueue>>,
) {
    let mut limiter = slot.policy.rate_limit.as_ref().map(RateLimiter::new);
    let mut breaker = CircuitBreaker::new(&slot.policy.circuit_breaker);
    let labels = ConnectMetrics::labels(&slot.name);
    let mut open = true;
    while open {
        let Some(first) = inbox.recv().await else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + slot.policy.batch.timeout;
        while open && batch.len() < slot.policy.batch.max_events {
            tokio::select! {
                biased;
                next = inbox.recv() => match next {
                    Some(envelope) => batch.push(envelope),
                    None => open = false,
                },
                () = sleep_until(deadline) => break,
            }
        }
        let alerts: Vec<Alert> = batch.iter().map(|envelope| envelope.alert.clone()).collect();
        let positions: Vec<(i32, i64)> = batch.iter().map(|envelope| (envelope.partition, envelope.offset)).collect();
        match deliver_with_policy(&mut slot, &alerts, limiter.as_mut(), &mut breaker).await {
            Ok(made) => {
                metrics().delivered.get_or_create(&labels).inc_by(alerts.len() as u64);
                let _ =
                    news.send(WorkerNews::Acknowledged { positions, retries: u64::from(made - 1), dead_lettered: 0 });
            }
            Err(GaveUp { error, attempts }) => {
                let Some(queue) = &dead_letters else {
                    let _ = news.send(WorkerNews::Failed(ConnectError::Delivery {
                        sink: slot.name.clone(),
                        attempts,
                        alerts: alerts.len(),
                        source: error,
                    }));
                    break;
                };
                tracing::warn!(alerts = alerts.len(), attempts, %error, "sink gave up; dead-lettering the batch");
                let mut sent = true;
                for envelope in batch {
                    let letter = DeadLetter {
                        sink: slot.name.clone(),
                        error: error.to_string(),
                        retryable: error.is_retryable(),
                        attempts,
                        partition: envelope.partition,
                        offset: envelope.offset,
                        alert: envelope.alert,
                    };
                    if let Err(reason) = queue.send(&letter).await {
                        let _ = news.send(WorkerNews::Failed(ConnectError::DeadLetter {
                            sink: slot.name.clone(),
                            alert_id: letter.alert.alert_id.clone(),
                            reason,
                        }));
                        sent = false;
                        break;
                    }
                }
                if !sent {
                    break;
                }
                metrics().dead_lettered.get_or_create(&labels).inc_by(positions.len() as u64);
                let dead_lettered = positions.len() as u64;
                let _ =
                    news.send(WorkerNews::Acknowledged { positions, retries: u64::from(attempts - 1), dead_lettered });
            }
        }
    }
    if let Err(error) = slot.sink.close().await {
        tracing::warn!(%error, "closing the sink failed");
    }
}

/// One batch through the shared machinery: circuit breaker, rate limit, the call, retries with
/// backoff. Returns the attempts made, or the last error once the retry policy gives up.
async fn deliver_with_policy(
    slot: &mut SinkSlot,
    alerts: &[Alert],
    mut limiter: Option<&mut RateLimiter>,
    breaker: &mut CircuitBreaker,
) -> Result<u32, GaveUp> {
    let labels = ConnectMetrics::labels(&slot.name);
    let mut attempts = Attempts::new(&slot.policy.retry, &slot.name, "deliver");
    // With a circuit breaker, a batch is not given up on before `max_attempts × open_for` has
    // passed since its first failure (the attempts burnt before the circuit opened do not
    // shorten a target's grace): past `max_attempts`, the breaker paces the probes.
    let breaker_config = &slot.policy.circuit_breaker;
    let grace = (breaker_config.failure_threshold > 0)
        .then(|| breaker_config.open_for.saturating_mul(slot.policy.retry.max_attempts.max(1)));
    let mut first_failure: Option<Instant> = None;
    loop {
        if matches!(breaker.state(), CircuitState::Open { .. }) {
            tracing::info!("circuit open; waiting before probing the target");
        }
        breaker.ready().await;
        metrics().circuit_open.get_or_create(&labels).set(0);
        if let Some(limiter) = limiter.as_deref_mut() {
            limiter.acquire(alerts.len()).await;
        }
        let span = tracing::debug_span!("deliver", alerts = alerts.len(), attempt = attempts.made());
        match slot.sink.deliver(alerts).instrument(span).await {
            Ok(()) => {
                breaker.succeeded();
                return Ok(attempts.made());
            }
            Err(error) => {
                metrics().failed.get_or_create(&labels).inc();
                if breaker.failed() {
                    metrics().circuit_open.get_or_create(&labels).set(1);
                    tracing::warn!(%error, "circuit opened after consecutive failures");
                }
                let failing_since = *first_failure.get_or_insert_with(Instant::now);
                let within_grace = grace.is_some_and(|grace| failing_since.elapsed() < grace);
                if error.is_retryable() && attempts.exhausted() && within_grace {
                    tracing::warn!(
                        %error,
                        attempt = attempts.made(),
                        failing_for_ms = u64::try_from(failing_since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "sink call failed; still within max_attempts × open_for, probing again when the circuit allows"
                    );
                    if !matches!(breaker.state(), CircuitState::Open { .. }) {
                        tokio::time::sleep(slot.policy.retry.max_backoff).await;
                    }
                    attempts.one_more();
                    metrics().retried.get_or_create(&labels).inc();
                    continue;
                }
                attempts.failed(error).await?;
                metrics().retried.get_or_create(&labels).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests;
