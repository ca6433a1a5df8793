//! Retries with exponential backoff and jitter, written once and shared by every sink call the
//! consumer makes; a sink only says whether a failure is retryable ([`SinkError::is_retryable`]).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::sink::SinkError;

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

/// A call that succeeded, and how many attempts it took.
#[derive(Debug)]
pub(crate) struct Succeeded<T> {
    pub value: T,
    pub attempts: u32,
}

/// A call that failed permanently or ran out of attempts: the last error.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub error: SinkError,
    pub attempts: u32,
}

/// Runs `call` until it succeeds, fails permanently, or has been tried `policy.max_attempts` times,
/// sleeping with backoff between attempts. `sink` and `operation` only label the logs.
pub(crate) async fn with_retry<T>(
    policy: &RetryConfig,
    sink: &str,
    operation: &'static str,
    mut call: impl AsyncFnMut() -> Result<T, SinkError>,
) -> Result<Succeeded<T>, GaveUp> {
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(Succeeded { value, attempts: attempt }),
            Err(error) if error.is_retryable() && attempt < max_attempts => {
                let wait = policy.backoff(attempt);
                tracing::warn!(
                    sink,
                    operation,
                    attempt,
                    max_attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    %error,
                    "sink call failed; retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(error) => return Err(GaveUp { error, attempts: attempt }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> RetryConfig {
        RetryConfig { max_attempts, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(1000) }
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
                assert!(wait >= ceiling / 2 && wait <= ceiling, "attempt {attempt}: {wait:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
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

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_success() {
        let mut failures_left = 2;
        let started = tokio::time::Instant::now();
        let outcome = with_retry(&policy(5), "test", "deliver", async || {
            if failures_left > 0 {
                failures_left -= 1;
                Err(SinkError::retryable("busy"))
            } else {
                Ok("done")
            }
        })
        .await
        .expect("succeeds on the third attempt");
        assert_eq!((outcome.value, outcome.attempts), ("done", 3));
        // Two waits: at least half of 100 ms and half of 200 ms.
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_stops_after_max_attempts_with_the_last_error() {
        let mut calls = 0;
        let gave_up = with_retry(&policy(3), "test", "deliver", async || -> Result<(), SinkError> {
            calls += 1;
            Err(SinkError::retryable(format!("busy {calls}")))
        })
        .await
        .expect_err("never succeeds");
        assert_eq!(gave_up.attempts, 3);
        assert_eq!(calls, 3);
        assert_eq!(gave_up.error, SinkError::retryable("busy 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let mut calls = 0;
        let gave_up = with_retry(&policy(5), "test", "deliver", async || -> Result<(), SinkError> {
            calls += 1;
            Err(SinkError::permanent("forbidden"))
        })
        .await
        .expect_err("permanent");
        assert_eq!((gave_up.attempts, calls), (1, 1));
    }
}
