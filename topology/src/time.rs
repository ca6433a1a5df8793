//! Event time. A flow's time is its end timestamp rounded up to the tick; that epoch, in ms since
//! the Unix epoch, is its timely timestamp. A record lives in the sliding window from its epoch
//! until epoch + window.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A timely timestamp: the end of a tick, in ms since the Unix epoch.
pub type Epoch = u64;

/// How event time is cut into epochs and windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// Granularity of event time (e.g. "1s"). Coarser ticks mean less progress-tracking work.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Length of the sliding window the service graph and detectors look at (e.g. "5m").
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How far behind its partition's newest record a record may be and still count (e.g. "5s").
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Granularity of the long-horizon history of workload edges (e.g. "1h").
    #[serde(with = "humantime_serde")]
    pub history_tick: Duration,
    /// How long the history remembers an edge after it was last seen (e.g. "7d").
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How far back the service graph can be read as it was (the query API's `at`, e.g. "1h").
    /// Every change of every edge within it is kept in memory; see docs/performance.md.
    #[serde(with = "humantime_serde")]
    pub graph_retention: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(300),
            allowed_lateness: Duration::from_secs(5),
            history_tick: Duration::from_secs(3600),
            history_ttl: Duration::from_secs(7 * 24 * 3600),
            graph_retention: Duration::from_secs(900),
        }
    }
}

/// Why a time configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeConfigError {
    #[error("time.tick must be at least 1ms")]
    ZeroTick,
    #[error("time.window ({window_ms} ms) must be a positive multiple of time.tick ({tick_ms} ms)")]
    Window { window_ms: u64, tick_ms: u64 },
    #[error("time.history_tick ({history_tick_ms} ms) must be a positive multiple of time.tick, and time.history_ttl a positive multiple of it")]
    History { history_tick_ms: u64 },
}

impl TimeConfig {
    pub fn validate(&self) -> Result<(), TimeConfigError> {
        let tick_ms = self.tick_ms();
        if tick_ms == 0 {
            return Err(TimeConfigError::ZeroTick);
        }
        let window_ms = self.window_ms();
        if window_ms == 0 || !window_ms.is_multiple_of(tick_ms) {
            return Err(TimeConfigError::Window { window_ms, tick_ms });
        }
        let history_tick_ms = self.history_tick.as_millis() as u64;
        let history_ttl_ms = self.history_ttl.as_millis() as u64;
        if history_tick_ms == 0
            || !history_tick_ms.is_multiple_of(tick_ms)
            || history_ttl_ms == 0
            || !history_ttl_ms.is_multiple_of(history_tick_ms)
        {
            return Err(TimeConfigError::History { history_tick_ms });
        }
        Ok(())
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick.as_millis() as u64
    }

    pub fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// The coarse history epoch of a fine epoch: rounded up to the history tick.
    pub fn history_epoch_of(&self, epoch: Epoch) -> Epoch {
        let tick = (self.history_tick.as_millis() as u64).max(1);
        epoch.div_ceil(tick).saturating_mul(tick)
    }

    pub fn graph_retention_ms(&self) -> u64 {
        self.graph_retention.as_millis() as u64
    }

    pub fn history_tick_ms(&self) -> u64 {
        self.history_tick.as_millis() as u64
    }

    pub fn history_ttl_ms(&self) -> u64 {
        self.history_ttl.as_millis() as u64
    }

    /// Allowed lateness rounded up to whole ticks, in ms.
    pub fn lateness_ms(&self) -> u64 {
        self.allowed_lateness.as_millis().div_ceil(self.tick.as_millis().max(1)) as u64 * self.tick_ms()
    }

    /// The epoch an event at `ms` belongs to: `ms` rounded up to the tick. Times before the Unix
    /// epoch clamp to 0.
    pub fn epoch_of(&self, ms: i64) -> Epoch {
        let ms = ms.max(0) as u64;
        let tick = self.tick_ms().max(1);
        ms.div_ceil(tick).saturating_mul(tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_up_to_the_tick() {
        let t = TimeConfig::default();
        assert_eq!(t.epoch_of(0), 0);
        assert_eq!(t.epoch_of(1), 1000);
        assert_eq!(t.epoch_of(1000), 1000);
        assert_eq!(t.epoch_of(1001), 2000);
        assert_eq!(t.epoch_of(-5), 0);
    }

    #[test]
    fn window_must_be_a_multiple_of_the_tick() {
        let t = TimeConfig { window: Duration::from_millis(1500), ..TimeConfig::default() };
        assert_eq!(t.validate(), Err(TimeConfigError::Window { window_ms: 1500, tick_ms: 1000 }));
        assert!(TimeConfig::default().validate().is_ok());
    }

    #[test]
    fn lateness_rounds_up_to_ticks() {
        let t = TimeConfig { allowed_lateness: Duration::from_millis(2500), ..TimeConfig::default() };
        assert_eq!(t.lateness_ms(), 3000);
    }
}
