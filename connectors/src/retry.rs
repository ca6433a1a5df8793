//! Retries with exponential backoff and jitter, written once and shared by every sink call the
//! consumer makes; a sink only says whether a failure is retryable ([`SinkError::is_retryable`]).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::sink::SinkError;

/// The longest `Retry-After` obeyed; a target asking for more gets retried after this long.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How a failing sink call is retried before the consumer gives up on the batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per sink call, the first one included; 1 means no retry.
    pub max_attempts: u32,
    /// Wait before the first retry; each later wait doubles, up to `max_backoff`. Each wait is drawn
    /// between half and all of that (jitter), so a fleet of connectors does not retry in lockstep.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1 (1 means no retry)".into());
        }
        if self.max_backoff < self.initial_backoff {
            return Err(format!(
                "retry.max_backoff ({:?}) is shorter than retry.initial_backoff ({:?})",
                self.max_backoff, self.initial_backoff
            ));
        }
        Ok(())
    }

    /// The longest wait after failed attempt number `attempt` (1-based), before jitter.
    fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff.saturating_mul(1u32 << doublings).min(self.max_backoff)
    }

    /// The wait after failed attempt number `attempt` (1-based): "equal jitter", half fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter_nanos = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_nanos))
    }
}

/// The attempts at one sink call: the caller makes each attempt and reports a failure to
/// [`Attempts::failed`], which waits out the backoff when another attempt is due, or gives up.
///
/// A loop around the call, rather than a function taking the call as a closure: a closure that lends
/// out the sink anew on every attempt cannot be expressed so that the future stays `Send`.
///
/// ```text
/// let mut attempts = Attempts::new(&config.retry, sink.name(), "deliver");
/// loop {
///     match sink.deliver(batch).await {
///         Ok(()) => break,
///         Err(error) => attempts.failed(error).await?,
///     }
/// }
/// ```
#[derive(Debug)]
pub(crate) struct Attempts<'a> {
    policy: &'a RetryConfig,
    sink: &'a str,
    operation: &'static str,
    made: u32,
}

/// A call that failed permanently or ran out of attempts: the last error.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub error: SinkError,
    pub attempts: u32,
}

impl<'a> Attempts<'a> {
    /// Before the first attempt. `sink` and `operation` label the logs.
    pub fn new(policy: &'a RetryConfig, sink: &'a str, operation: &'static str) -> Self {
        Attempts { policy, sink, operation, made: 1 }
    }

    /// Attempts made so far, the one in progress included.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Whether the attempt in progress is the last the policy allows.
    pub fn exhausted(&self) -> bool {
        self.made >= self.policy.max_attempts.max(1)
    }

    /// One more attempt beyond `max_attempts`, which the caller's own budget allows (an open
    /// circuit's pace, see `deliver_with_policy`).
    pub fn one_more(&mut self) {
        self.made += 1;
    }

    /// The attempt in progress failed with `error`: sleeps with backoff and returns `Ok` when the
    /// error is retryable and attempts remain, and gives up otherwise.
    pub async fn failed(&mut self, error: SinkError) -> Result<(), GaveUp> {
        let max_attempts = self.policy.max_attempts.max(1);
        if !error.is_retryable() || self.made >= max_attempts {
            return Err(GaveUp { error, attempts: self.made });
        }
        // A target that names its own pause (`Retry-After`) is obeyed, within reason.
        let asked = error.retry_after().unwrap_or_default().min(LONGEST_RETRY_AFTER);
        let wait = self.policy.backoff(self.made).max(asked);
        tracing::warn!(
            sink = self.sink,
            operation = self.operation,
            attempt = self.made,
            max_attempts,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            %error,
            "sink call failed; retrying"
        );
        tokio::time::sleep(wait).await;
        self.made += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_jitters_within_the_upper_half() {
        let policy = policy(10);
        let ceilings: Vec<u64> = (1..=6).map(|n| policy.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        for attempt in 1..=6 {
            let ceiling = policy.ceiling(attempt);
            for _ in 0..50 {
                let wait = policy.backoff(attempt);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "attempt {attempt}: {wait:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(1000), "no overflow on huge attempt numbers");
    }

    #[test]
    fn validation_rejects_zero_attempts_and_inverted_backoff() {
        assert!(RetryConfig::default().validate().is_ok());
        assert!(policy(0).validate().unwrap_err().contains("max_attempts"));
        let inverted = RetryConfig { max_backoff: Duration::from_millis(10), ..policy(3) };
        assert!(inverted.validate().unwrap_err().contains("max_backoff"));
    }

    /// Runs `outcomes` as successive attempts the way callers loop, returning the attempts made.
    async fn attempt(policy: &RetryConfig, outcomes: Vec<Result<(), SinkError>>) -> Result<u32, GaveUp> {
        let mut attempts = Attempts::new(policy, "test", "deliver");
        for outcome in outcomes {
            match outcome {
                Ok(()) => return Ok(attempts.made()),
                Err(error) => attempts.failed(error).await?,
            }
        }
        panic!("ran out of scripted outcomes after {} attempts", attempts.made());
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_success() {
        let started = tokio::time::Instant::now();
        let outcomes = vec![Err(SinkError::retryable("busy")), Err(SinkError::retryable("busy")), Ok(())];
        assert_eq!(attempt(&policy(5), outcomes).await.expect("succeeds on the third attempt"), 3);
        // Two waits: at least half of 100 ms and half of 200 ms.
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_stops_after_max_attempts_with_the_last_error() {
        let outcomes = (1..=5).map(|n| Err(SinkError::retryable(format!("busy {n}")))).collect();
        let gave_up = attempt(&policy(3), outcomes).await.expect_err("never succeeds");
        assert_eq!(gave_up.attempts, 3);
        assert_eq!(gave_up.error, SinkError::retryable("busy 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_longer_than_the_backoff_is_waited_out() {
        let started = tokio::time::Instant::now();
        let outcomes =
            vec![Err(SinkError::retryable_after("429 too many requests", Some(Duration::from_secs(7)))), Ok(())];
        assert_eq!(attempt(&policy(3), outcomes).await.expect("succeeds"), 2);
        assert!(started.elapsed() >= Duration::from_secs(7), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let started = tokio::time::Instant::now();
        let outcomes = vec![Err(SinkError::permanent("forbidden")), Ok(())];
        let gave_up = attempt(&policy(5), outcomes).await.expect_err("permanent");
        assert_eq!(gave_up.attempts, 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait before giving up");
    }
}
