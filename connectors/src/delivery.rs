//! The heart of the connector, free of Kafka: messages in, decoded, batched by size and time, handed
//! to every sink (with shared retries), and only then acknowledged — at least once. `consumer.rs`
//! plugs Kafka into it; the tests plug in a channel.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::pin;

use async_trait::async_trait;
use peergraph_schemas::codec::{DecodeError, Decoder};
use peergraph_schemas::{Alert, AlertEvent};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::config::ConnectConfig;
use crate::error::ConnectError;
use crate::retry::{Attempts, GaveUp, RetryConfig};
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
    /// `raised` alert events delivered to every sink (and committed, or at least attempted).
    pub raised: u64,
    /// `updated` alert events delivered to every sink.
    pub updated: u64,
    /// `cleared` alert events delivered to every sink.
    pub cleared: u64,
    /// Messages that were not alerts (malformed, empty, unknown schema): logged, skipped, committed.
    pub skipped: u64,
    /// `skipped`, by [`DecodeError::kind`].
    pub skipped_by_kind: BTreeMap<&'static str, u64>,
    /// Batches delivered to every sink.
    pub batches: u64,
    /// Sink calls that were tried again after a retryable failure.
    pub retries: u64,
    /// Offset commits that failed (the next commit, or a restart's redelivery, covers them).
    pub commit_failures: u64,
}

impl ConnectReport {
    /// Alert events of every kind delivered to every sink.
    pub fn delivered(&self) -> u64 {
        self.raised + self.updated + self.cleared
    }

    fn count_delivered(&mut self, alerts: &[Alert]) {
        for alert in alerts {
            match alert.event {
                AlertEvent::Raised => self.raised += 1,
                AlertEvent::Updated => self.updated += 1,
                AlertEvent::Cleared => self.cleared += 1,
            }
        }
    }
}

/// Alerts decoded since the last commit, and how far each partition has been read.
#[derive(Default)]
struct Batch {
    alerts: Vec<Alert>,
    /// Partition → next offset to read, over every message of the batch, skipped ones included.
    positions: BTreeMap<i32, i64>,
    /// When the batch's first message arrived.
    opened: Option<Instant>,
}

impl Batch {
    fn record_position(&mut self, partition: i32, offset: i64) {
        self.opened.get_or_insert_with(Instant::now);
        let next = offset.saturating_add(1);
        let position = self.positions.entry(partition).or_insert(next);
        *position = (*position).max(next);
    }

    fn is_empty(&self) -> bool {
        self.positions.is_empty()
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

/// Health-checks every sink (with retries), before anything is consumed.
pub(crate) async fn check_sinks(sinks: &mut [Box<dyn Sink>], retry: &RetryConfig) -> Result<(), ConnectError> {
    for sink in sinks.iter_mut() {
        let name = sink.name().to_owned();
        let mut attempts = Attempts::new(retry, &name, "health_check");
        loop {
            match sink.health_check().await {
                Ok(()) => break,
                Err(error) => attempts.failed(error).await.map_err(|GaveUp { error, attempts: made }| {
                    ConnectError::HealthCheck { sink: name.clone(), attempts: made, source: error }
                })?,
            }
        }
        tracing::info!(sink = %name, "sink is healthy");
    }
    Ok(())
}

/// Consumes `source` until it ends, `shutdown` completes or `config.idle_exit` passes without a
/// message (counted from the source's first event): decodes, batches, delivers each batch to every
/// sink and then commits it. On the way out the in-flight batch is delivered and committed, and the
/// sinks are closed. When a sink gives up on a batch, or a schema cannot be looked up, nothing more is
/// committed and the error is returned (after closing the sinks). A shutdown that arrives while a
/// batch is being retried waits for that batch: retries are bounded by `config.retry`.
pub(crate) async fn deliver_batches(
    source: &mut impl AlertSource,
    committer: &mut impl OffsetCommitter,
    sinks: &mut [Box<dyn Sink>],
    decoder: &Decoder<Alert>,
    config: &ConnectConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectReport, ConnectError> {
    let mut shutdown = pin!(shutdown);
    let mut report = ConnectReport::default();
    let mut batch = Batch::default();
    let mut skip_log = SkipLog::default();
    // The idle clock starts at the first sign of a live source, so a slow group join is not idleness.
    let mut last_activity: Option<Instant> = None;

    let consumed: Result<(), ConnectError> = loop {
        let batch_deadline = batch.opened.map(|opened| opened + config.batch_timeout);
        let idle_deadline = config.idle_exit.zip(last_activity).map(|(idle, last)| last + idle);
        tokio::select! {
            // Shutdown first, then an expired batch: neither may starve behind a busy topic.
            biased;
            () = &mut shutdown => {
                tracing::info!(in_flight = batch.alerts.len(), "shutting down; delivering the in-flight batch");
                break Ok(());
            }
            () = sleep_until_if(batch_deadline) => {
                if let Err(error) = deliver_and_commit(&mut batch, sinks, committer, config, &mut report).await {
                    break Err(error);
                }
            }
            () = sleep_until_if(idle_deadline) => {
                tracing::info!(idle_exit = ?config.idle_exit, "no message for idle_exit; stopping");
                break Ok(());
            }
            event = source.next_event() => {
                last_activity = Some(Instant::now());
                let SourceMessage { partition, offset, payload } = match event {
                    Some(SourceEvent::Message(message)) => message,
                    Some(SourceEvent::Assigned) => continue,
                    None => {
                        tracing::info!("the alert source ended");
                        break Ok(());
                    }
                };
                match decoder.decode(payload.as_deref().unwrap_or_default()) {
                    Ok(alert) => batch.alerts.push(alert),
                    Err(error @ DecodeError::SchemaLookup { .. }) => {
                        break Err(ConnectError::SchemaLookup { partition, offset, source: error });
                    }
                    Err(error) => {
                        skip_log.skipped(partition, offset, &error);
                        report.skipped += 1;
                        *report.skipped_by_kind.entry(error.kind()).or_default() += 1;
                    }
                }
                batch.record_position(partition, offset);
                if batch.alerts.len() >= config.batch_max {
                    if let Err(error) = deliver_and_commit(&mut batch, sinks, committer, config, &mut report).await {
                        break Err(error);
                    }
                }
            }
        }
    };

    let outcome = match consumed {
        Ok(()) => deliver_and_commit(&mut batch, sinks, committer, config, &mut report).await,
        Err(error) => Err(error),
    };
    close_sinks(sinks).await;
    match outcome {
        Ok(()) => {
            tracing::info!(
                delivered = report.delivered(),
                skipped = report.skipped,
                batches = report.batches,
                retries = report.retries,
                "alert delivery stopped"
            );
            Ok(report)
        }
        Err(error) => {
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

/// Hands the batch to every sink in turn, then commits its positions. A sink that gives up stops
/// everything before the commit: sinks before it may have the batch, and will get it again.
async fn deliver_and_commit(
    batch: &mut Batch,
    sinks: &mut [Box<dyn Sink>],
    committer: &mut impl OffsetCommitter,
    config: &ConnectConfig,
    report: &mut ConnectReport,
) -> Result<(), ConnectError> {
    if batch.is_empty() {
        return Ok(());
    }
    if !batch.alerts.is_empty() {
        for sink in sinks.iter_mut() {
            let name = sink.name().to_owned();
            let mut attempts = Attempts::new(&config.retry, &name, "deliver");
            loop {
                let alerts = batch.alerts.len();
                let span = tracing::debug_span!("deliver", sink = %name, alerts, attempt = attempts.made());
                match sink.deliver(&batch.alerts).instrument(span).await {
                    Ok(()) => break,
                    Err(error) => {
                        if let Err(GaveUp { error, attempts: made }) = attempts.failed(error).await {
                            report.retries += u64::from(made - 1);
                            return Err(ConnectError::Delivery {
                                sink: name.clone(),
                                attempts: made,
                                alerts: batch.alerts.len(),
                                source: error,
                            });
                        }
                    }
                }
            }
            report.retries += u64::from(attempts.made() - 1);
        }
        report.count_delivered(&batch.alerts);
        report.batches += 1;
    }
    match committer.commit(&batch.positions).await {
        Ok(()) => {
            tracing::debug!(alerts = batch.alerts.len(), positions = ?batch.positions, "batch delivered and committed")
        }
        Err(error) => {
            report.commit_failures += 1;
            let positions = &batch.positions;
            tracing::warn!(?positions, %error, "committing a delivered batch failed; it may be delivered again");
        }
    }
    *batch = Batch::default();
    Ok(())
}

/// Closes every sink; a failure is logged, since everything committed was already durably delivered.
async fn close_sinks(sinks: &mut [Box<dyn Sink>]) {
    for sink in sinks.iter_mut() {
        if let Err(error) = sink.close().await {
            tracing::warn!(sink = sink.name(), %error, "closing the sink failed");
        }
    }
}

#[cfg(test)]
mod tests;
