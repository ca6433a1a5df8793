//! The alerts `GET /alerts` and the page show: each alert's lifecycle events within
//! `time.graph_retention`, held per process (each worker adds the events it emits), so the page
//! can show the alerts open at any time it can show the graph of.
//!
//! Bounded: at most `api.max_alerts` alert ids. A new id beyond it takes the place of the cleared
//! alert whose last event is oldest; when every held alert is open, the new one is refused and
//! counted (`peergraph_api_alerts_dropped_total`). The alerts topic has every event regardless.

use std::collections::BTreeMap;

use peergraph_schemas::{Alert, AlertEvent};
use serde::Serialize;

use crate::metrics::Metrics;

/// One alert as the board holds it: its events in event-time order.
#[derive(Debug)]
struct Held {
    events: Vec<Alert>,
}

impl Held {
    /// The alert's latest event at or before `at`.
    fn at(&self, at: i64) -> Option<&Alert> {
        self.events.iter().rev().find(|event| event.event_time_ms <= at)
    }

    fn last(&self) -> &Alert {
        self.events.last().expect("a held alert has an event")
    }
}

/// The alert board of one process.
#[derive(Debug)]
pub struct AlertBoard {
    max_alerts: usize,
    retention_ms: i64,
    alerts: BTreeMap<String, Held>,
    /// The latest event time seen: the retention is counted back from it.
    latest_ms: i64,
    /// Each worker's alert-stream frontier: every alert event before it has been recorded.
    frontiers: BTreeMap<usize, u64>,
    /// Workers of this process: until each has reported, nothing is final.
    workers: usize,
}

/// An alert as `GET /alerts` answers: its state at the time asked and its lifecycle so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertView {
    /// The alert's latest event at the time asked.
    #[serde(flatten)]
    pub alert: Alert,
    /// Whether it was open then (raised or updated, not cleared).
    pub open: bool,
    /// Its lifecycle events up to the time asked, oldest first, within the retention.
    pub events: Vec<LifecycleStep>,
}

/// One lifecycle event of an alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LifecycleStep {
    pub event: AlertEvent,
    pub event_time_ms: i64,
    pub score: f64,
}

impl AlertBoard {
    pub fn new(max_alerts: usize, retention_ms: u64, workers: usize) -> AlertBoard {
        AlertBoard {
            max_alerts,
            retention_ms: retention_ms as i64,
            alerts: BTreeMap::new(),
            latest_ms: 0,
            frontiers: BTreeMap::new(),
            workers,
        }
    }

    /// Worker `worker`'s alert stream has no more events before `frontier` (`None`: none at all).
    pub fn advance(&mut self, worker: usize, frontier: Option<u64>) {
        self.frontiers.insert(worker, frontier.unwrap_or(u64::MAX));
    }

    /// Every alert event before this time is on the board (0 until every worker has reported).
    pub fn closed_before(&self) -> u64 {
        if self.frontiers.len() < self.workers {
            return 0;
        }
        self.frontiers.values().copied().min().unwrap_or(0)
    }

    /// Records one lifecycle event (a replayed one, same id, event and time, once).
    pub fn record(&mut self, alert: &Alert, metrics: &Metrics) {
        if !self.alerts.contains_key(&alert.alert_id) && self.alerts.len() >= self.max_alerts && !self.evict_one() {
            metrics.api_alerts_dropped.inc();
            return;
        }
        let held = self.alerts.entry(alert.alert_id.clone()).or_insert_with(|| Held { events: Vec::new() });
        let known = held.events.iter().any(|e| e.event == alert.event && e.event_time_ms == alert.event_time_ms);
        if !known {
            let at = held.events.partition_point(|e| e.event_time_ms <= alert.event_time_ms);
            held.events.insert(at, alert.clone());
        }
        if alert.event_time_ms > self.latest_ms {
            self.latest_ms = alert.event_time_ms;
            self.expire();
        }
        metrics.api_alerts_held.set(self.alerts.len() as i64);
    }

    /// Forgets what is older than the retention: cleared alerts whose last event is, and each
    /// alert's events before the cutoff but the one that gives its state at the cutoff.
    fn expire(&mut self) {
        let cutoff = self.latest_ms - self.retention_ms;
        self.alerts.retain(|_, held| !(held.last().event == AlertEvent::Cleared && held.last().event_time_ms < cutoff));
        for held in self.alerts.values_mut() {
            let before = held.events.partition_point(|e| e.event_time_ms < cutoff);
            if before > 1 {
                held.events.drain(..before - 1);
            }
        }
    }

    /// Makes room by forgetting the cleared alert whose last event is oldest; false if none is.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .alerts
            .iter()
            .filter(|(_, held)| held.last().event == AlertEvent::Cleared)
            .min_by_key(|(_, held)| held.last().event_time_ms)
            .map(|(id, _)| id.clone());
        oldest.is_some_and(|id| self.alerts.remove(&id).is_some())
    }

    /// The alerts as they stood at `at` (ms): the open ones, and with `cleared` also those that
    /// were cleared by then (within the retention), most severe first.
    pub fn at(&self, at: i64, cleared: bool) -> Vec<AlertView> {
        let mut views: Vec<AlertView> = self
            .alerts
            .values()
            .filter_map(|held| {
                let alert = held.at(at)?;
                let open = alert.event != AlertEvent::Cleared;
                (open || cleared).then(|| AlertView {
                    alert: alert.clone(),
                    open,
                    events: held
                        .events
                        .iter()
                        .take_while(|e| e.event_time_ms <= at)
                        .map(|e| LifecycleStep { event: e.event, event_time_ms: e.event_time_ms, score: e.score })
                        .collect(),
                })
            })
            .collect();
        views.sort_by(|a, b| {
            (b.open, b.alert.severity, b.alert.event_time_ms, &a.alert.alert_id).cmp(&(
                a.open,
                a.alert.severity,
                a.alert.event_time_ms,
                &b.alert.alert_id,
            ))
        });
        views
    }
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::Severity;

    use super::*;

    fn event(id: &str, event: AlertEvent, time: i64) -> Alert {
        Alert {
            alert_id: id.into(),
            event,
            detector: "peer_unique_destination".into(),
            severity: Severity::High,
            score: 80.0,
            entity: "pod:shop/web-3".into(),
            peer_group: Some("workload:shop/Deployment/web".into()),
            summary: "talks where its peers never do".into(),
            evidence: BTreeMap::new(),
            techniques: vec![],
            first_seen_ms: time,
            last_seen_ms: time,
            event_time_ms: time,
        }
    }

    #[test]
    fn an_alert_is_open_between_its_raise_and_its_clear_and_a_replay_counts_once() {
        let metrics = Metrics::default();
        let mut board = AlertBoard::new(10, 60_000, 1);
        board.record(&event("a", AlertEvent::Raised, 1_000), &metrics);
        board.record(&event("a", AlertEvent::Raised, 1_000), &metrics);
        board.record(&event("a", AlertEvent::Cleared, 5_000), &metrics);
        assert_eq!(board.closed_before(), 0, "nothing is final before the worker reports");
        board.advance(0, Some(7_000));
        assert_eq!(board.closed_before(), 7_000);
        assert!(board.at(500, true).is_empty(), "nothing before the raise");
        let during = board.at(2_000, false);
        assert_eq!((during.len(), during[0].open, during[0].events.len()), (1, true, 1));
        assert!(board.at(6_000, false).is_empty(), "cleared by then");
        let after = board.at(6_000, true);
        assert_eq!((after[0].open, after[0].events.len()), (false, 2));
    }

    #[test]
    fn the_board_forgets_past_the_retention_and_is_bounded() {
        let metrics = Metrics::default();
        let mut board = AlertBoard::new(2, 10_000, 1);
        board.record(&event("old", AlertEvent::Raised, 1_000), &metrics);
        board.record(&event("old", AlertEvent::Cleared, 2_000), &metrics);
        board.record(&event("open", AlertEvent::Raised, 3_000), &metrics);
        // A third id: the cleared one makes room.
        board.record(&event("new", AlertEvent::Raised, 4_000), &metrics);
        assert_eq!(board.at(4_000, true).len(), 2);
        // A fourth while both are open: refused and counted.
        board.record(&event("fourth", AlertEvent::Raised, 5_000), &metrics);
        assert_eq!(metrics.api_alerts_dropped.get(), 1);
        // Far later: an open alert stays (its state at the cutoff), with its raise.
        board.record(&event("open", AlertEvent::Updated, 50_000), &metrics);
        let open = board.at(50_000, false);
        assert_eq!(open.len(), 2);
        assert!(open.iter().all(|v| !v.events.is_empty()));
    }
}
