//! `Alert`: one lifecycle event of one alert, as published on the alerts topic (keyed by
//! `alert_id`, so an alert's events stay ordered in one partition) and consumed by connectors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One lifecycle event of one alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: a hash of (detector, entity, key). A replay reproduces the same ids.
    pub alert_id: String,
    /// Which lifecycle event this is.
    pub event: AlertEvent,
    /// The detector that raised it ("peer_unique_destination", ...).
    pub detector: String,
    /// How urgent the alert is.
    pub severity: Severity,
    /// Detector-specific strength of the finding, higher is stronger; 0..=100.
    pub score: f64,
    /// The entity the alert is about ("pod:shop/web-7d9f-abcde", "ip:10.0.0.5", ...).
    pub entity: String,
    /// The peer group the entity was compared with, if any ("workload:shop/Deployment/web").
    #[serde(default)]
    pub peer_group: Option<String>,
    /// One line for humans.
    pub summary: String,
    /// The numbers and names that made the detector fire.
    pub evidence: BTreeMap<String, String>,
    /// MITRE ATT&CK technique ids ("T1071", "T1195.002").
    pub techniques: Vec<String>,
    /// Event time the alert was first raised, ms since the Unix epoch.
    pub first_seen_ms: i64,
    /// Event time of the latest evidence, ms since the Unix epoch.
    pub last_seen_ms: i64,
    /// Event time of this lifecycle event (the epoch the dataflow closed when it emitted it).
    pub event_time_ms: i64,
}

/// The lifecycle of an alert: raised once, updated while its evidence changes, cleared when it no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEvent {
    /// The finding started to hold.
    Raised,
    /// The finding still holds and its evidence changed.
    Updated,
    /// The finding no longer holds.
    Cleared,
}

/// How urgent an alert is, from informational to critical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The conventional mapping from a 0..=100 score.
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 90.0 => Severity::Critical,
            s if s >= 70.0 => Severity::High,
            s if s >= 40.0 => Severity::Medium,
            s if s >= 10.0 => Severity::Low,
            _ => Severity::Info,
        }
    }
}
