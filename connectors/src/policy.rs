//! The shared machinery around every sink call, configured per sink instance: batching limits, a
//! token-bucket rate limit and a circuit breaker. Retries are in `retry.rs`; the sink worker in
//! `delivery.rs` composes them, so no sink writes its own loop.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How a sink's alert events are grouped into calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most alert events per call; a full batch is delivered at once.
    pub max_events: usize,
    /// Longest time the first event of a batch waits before the batch is delivered, full or not.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_events: 500, timeout: Duration::from_secs(1) }
    }
}

impl BatchConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_events == 0 {
            return Err("batch.max_events must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("batch.timeout must be longer than 0".into());
        }
        Ok(())
    }
}

/// A token bucket over alert events: at most `events_per_second` on average, bursts of `burst`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained alert events per second sent to the target (e.g. PagerDuty: 2 per second per key).
    pub events_per_second: f64,
    /// Alert events that may go at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { events_per_second: 10.0, burst: 10 }
    }
}

impl RateLimitConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.events_per_second.is_finite() && self.events_per_second > 0.0) {
            return Err("rate_limit.events_per_second must be a positive number".into());
        }
        if self.burst == 0 {
            return Err("rate_limit.burst must be at least 1".into());
        }
        Ok(())
    }
}

/// Holds calls back so the target sees at most the configured rate.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// May go negative: a batch larger than the burst borrows, and the next call waits it off.
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        let burst = f64::from(config.burst);
        RateLimiter { per_second: config.events_per_second, burst, tokens: burst, refilled: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
    }

    /// Waits until `events` may be sent, then takes them from the bucket.
    pub async fn acquire(&mut self, events: usize) {
        // A batch larger than the burst waits for a full bucket, then borrows the rest.
        let needed = (events as f64).min(self.burst);
        self.refill();
        if self.tokens < needed {
            let wait = Duration::from_secs_f64((needed - self.tokens) / self.per_second);
            tokio::time::sleep(wait).await;
            self.refill();
        }
        self.tokens -= events as f64;
    }
}

/// When a sink's target is considered down, and how it is probed again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failed calls that open the circuit; 0 disables the breaker.
    pub failure_threshold: u32,
    /// How long an open circuit makes no call at all; then one probe call is let through (half open):
    /// success closes the circuit, failure opens it again. Waiting while open uses up no attempt.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(30) }
    }
}

/// The state of one sink's circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CircuitState {
    Closed,
    /// No calls until the instant; then half open.
    Open {
        until: Instant,
    },
}

/// Stops hammering a target that keeps failing: after `failure_threshold` consecutive failures, no
/// call goes out for `open_for`.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    config: CircuitBreakerConfig,
    consecutive_failures: u32,
    state: CircuitState,
}

impl CircuitBreaker {
    pub fn new(config: &CircuitBreakerConfig) -> Self {
        CircuitBreaker { config: config.clone(), consecutive_failures: 0, state: CircuitState::Closed }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Waits while the circuit is open; returns when a call may be made (closed or half open).
    pub async fn ready(&mut self) {
        if let CircuitState::Open { until } = self.state {
            tokio::time::sleep_until(until).await;
        }
    }

    /// The call succeeded: the circuit closes.
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.state = CircuitState::Closed;
    }

    /// The call failed; returns whether this opened the circuit.
    pub fn failed(&mut self) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let threshold = self.config.failure_threshold;
        if threshold > 0 && self.consecutive_failures >= threshold {
            // Half open after a failed probe (past the threshold) re-opens at once.
            self.state = CircuitState::Open { until: Instant::now() + self.config.open_for };
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spreads_events_to_the_configured_rate_after_the_burst() {
        let mut limiter = RateLimiter::new(&RateLimitConfig { events_per_second: 2.0, burst: 2 });
        let started = Instant::now();
        limiter.acquire(1).await;
        limiter.acquire(1).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst goes at once");
        for _ in 0..4 {
            limiter.acquire(1).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1999) && elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_burst_borrows_and_the_next_call_pays() {
        let mut limiter = RateLimiter::new(&RateLimitConfig { events_per_second: 10.0, burst: 5 });
        let started = Instant::now();
        limiter.acquire(25).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        limiter.acquire(1).await;
        // 20 borrowed + 1 needed at 10/s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(2099) && elapsed < Duration::from_millis(2200), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_the_threshold_and_lets_a_probe_through_after_open_for() {
        let config = CircuitBreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(10) };
        let mut breaker = CircuitBreaker::new(&config);
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        assert!(breaker.failed(), "third consecutive failure opens");
        let started = Instant::now();
        breaker.ready().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(breaker.failed(), "a failed probe opens it again");
        breaker.ready().await;
        breaker.succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
        let before = Instant::now();
        breaker.ready().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(!breaker.failed(), "the count starts over after a success");
    }

    #[test]
    fn a_zero_threshold_disables_the_breaker() {
        let mut breaker = CircuitBreaker::new(&CircuitBreakerConfig { failure_threshold: 0, ..Default::default() });
        for _ in 0..100 {
            assert!(!breaker.failed());
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn invalid_settings_are_named() {
        assert!(BatchConfig { max_events: 0, ..Default::default() }.validate().unwrap_err().contains("max_events"));
        let limit = RateLimitConfig { events_per_second: 0.0, burst: 1 };
        assert!(limit.validate().unwrap_err().contains("events_per_second"));
        let limit = RateLimitConfig { events_per_second: 1.0, burst: 0 };
        assert!(limit.validate().unwrap_err().contains("burst"));
    }
}
