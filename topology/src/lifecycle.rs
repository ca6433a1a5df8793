//! Alert lifecycle: turns the findings collection into alert events. A finding appearing raises
//! its alert, a changed finding updates it, a retracted one clears it. Events for a time are
//! emitted only once the frontier has passed that time, from consolidated updates, so the
//! un-netted +/- pairs a join produces mid-epoch never reach anyone.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use differential_dataflow::VecCollection;
use peergraph_schemas::{Alert, AlertEvent, Severity};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::detectors::Finding;
use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

/// How findings become alert events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After the pipeline first sees data, findings are tracked but no alert is raised for this
    /// long (e.g. "5m"; absent: one window), so a half-filled window is not mistaken for an
    /// anomaly. Alerts still open when it ends are raised then.
    #[serde(with = "humantime_serde")]
    pub learning_period: Option<Duration>,
}

/// The finding updates of one epoch not yet closed, with the capability to emit its events.
type PendingEpoch = (Capability<Epoch>, Vec<(Finding, isize)>);

/// An alert whose finding holds.
struct OpenAlert {
    /// The findings with this alert id and their multiplicities (one, unless a detector emits
    /// two bodies for one key in the same epoch, in which case the greatest is reported).
    findings: BTreeMap<Finding, isize>,
    first_seen: Epoch,
    last_seen: Epoch,
    /// Whether its raise was emitted (not while the lifecycle is silent).
    announced: bool,
}

impl OpenAlert {
    fn current(&self) -> Option<&Finding> {
        self.findings.iter().rev().find(|(_, n)| **n > 0).map(|(f, _)| f)
    }
}

/// The lifecycle state of one worker's share of the alerts.
#[derive(Default)]
struct Lifecycle {
    open: HashMap<String, OpenAlert>,
}

/// The earliest epoch of any flow the dataflow has seen, as it becomes known, sent to every
/// worker. The silent period is counted from it, so it does not depend on how the input was
/// batched.
pub fn observation_start<'s>(edges: VecCollection<'s, Epoch, Edge, Volume>) -> Stream<'s, Epoch, Vec<Epoch>> {
    edges
        .inner
        .unary::<CapacityContainerBuilder<Vec<Epoch>>, _, _, _>(Pipeline, "ObservationStart", |_, _| {
            let mut earliest: Option<Epoch> = None;
            move |input, output| {
                input.for_each(|cap, updates| {
                    let least =
                        updates.iter().filter(|(_, _, volume)| volume.flows > 0).map(|(_, time, _)| *time).min();
                    if let Some(least) = least.filter(|l| earliest.is_none_or(|e| *l < e)) {
                        earliest = Some(least);
                        output.session(&cap).give(least);
                    }
                });
            }
        })
        .broadcast()
}

/// Alert events, each at the epoch whose closing produced it. Findings are routed by alert id, so
/// one worker owns each alert's lifecycle and its events come out in order. No alert is raised
/// for epochs earlier than the `observed` start plus `learning_ms`.
pub fn alert_lifecycle<'s>(
    findings: VecCollection<'s, Epoch, Finding>,
    observed: Stream<'s, Epoch, Vec<Epoch>>,
    learning_ms: u64,
) -> Stream<'s, Epoch, Vec<Alert>> {
    let route = Exchange::new(|update: &(Finding, Epoch, isize)| route_of(&update.0.alert_id));
    findings.inner.binary_frontier::<_, CapacityContainerBuilder<Vec<Alert>>, _, _, _, _>(
        observed,
        route,
        Pipeline,
        "AlertLifecycle",
        move |initial, _info| {
            let mut pending: BTreeMap<Epoch, PendingEpoch> = BTreeMap::new();
            let mut state = Lifecycle::default();
            // Held, following the input frontier, until the silent period ends: the alerts still
            // open then are raised under it.
            let mut held = Some(initial);
            let mut observed_from: Option<Epoch> = None;
            move |(input, frontier), (starts, starts_frontier), output| {
                input.for_each(|cap, updates| {
                    for (finding, time, diff) in updates.drain(..) {
                        pending
                            .entry(time)
                            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
                            .1
                            .push((finding, diff));
                    }
                });
                starts.for_each(|_, batch| {
                    for start in batch.drain(..) {
                        observed_from = Some(observed_from.map_or(start, |o| o.min(start)));
                    }
                });
                // An epoch is closed once neither findings nor news of an earlier start can come.
                let closed = |time: &Epoch| !frontier.less_equal(time) && !starts_frontier.less_equal(time);
                let until = observed_from.map_or(Epoch::MAX, |o| o.saturating_add(learning_ms));
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if !closed(&time) {
                        break;
                    }
                    if time >= until {
                        if let Some(cap) = held.take() {
                            let raised = state.end_silence(until);
                            output.session(&cap).give_iterator(raised.into_iter());
                        }
                    }
                    let (cap, updates) = entry.remove();
                    let events = state.close_epoch(time, updates, time < until);
                    if !events.is_empty() {
                        output.session(&cap).give_iterator(events.into_iter());
                    }
                }
                if let Some(cap) = held.as_mut() {
                    let current = frontier
                        .frontier()
                        .first()
                        .copied()
                        .into_iter()
                        .chain(starts_frontier.frontier().first().copied())
                        .min();
                    match current {
                        Some(_) if closed(&until) => {
                            let raised = state.end_silence(until);
                            output.session(&*cap).give_iterator(raised.into_iter());
                            held = None;
                        }
                        Some(f) => cap.downgrade(&f.max(*cap.time())),
                        None => held = None,
                    }
                }
            }
        },
    )
}

impl Lifecycle {
    /// Applies one closed epoch's finding updates and returns the alert events they cause (none
    /// while `silent`).
    fn close_epoch(&mut self, time: Epoch, mut updates: Vec<(Finding, isize)>, silent: bool) -> Vec<Alert> {
        differential_dataflow::consolidation::consolidate(&mut updates);
        let mut touched: BTreeMap<String, Option<Finding>> = BTreeMap::new();
        for (finding, diff) in updates {
            let alert = self.open.entry(finding.alert_id.clone()).or_insert_with(|| OpenAlert {
                findings: BTreeMap::new(),
                first_seen: time,
                last_seen: time,
                announced: false,
            });
            touched.entry(finding.alert_id.clone()).or_insert_with(|| alert.current().cloned());
            let count = alert.findings.entry(finding).or_insert(0);
            *count += diff;
            if *count == 0 {
                alert.findings.retain(|_, n| *n != 0);
            }
        }
        let mut events = Vec::new();
        for (id, before) in touched {
            let Some(alert) = self.open.get_mut(&id) else { continue };
            let after = alert.current().cloned();
            let event = match (&before, &after) {
                (None, Some(_)) => {
                    alert.first_seen = time;
                    AlertEvent::Raised
                }
                (Some(b), Some(a)) if a != b => AlertEvent::Updated,
                (Some(_), None) => AlertEvent::Cleared,
                _ => continue,
            };
            if after.is_some() {
                alert.last_seen = time;
            }
            let emit = !silent && (alert.announced || event == AlertEvent::Raised);
            if emit {
                alert.announced = true;
                if let Some(finding) = after.as_ref().or(before.as_ref()) {
                    events.push(to_alert(finding, event, alert.first_seen, alert.last_seen, time));
                }
            }
            if after.is_none() {
                self.open.remove(&id);
            }
        }
        events
    }

    /// Raises, at `time`, every open alert whose raise the silent period held back.
    fn end_silence(&mut self, time: Epoch) -> Vec<Alert> {
        let mut raised = Vec::new();
        for alert in self.open.values_mut().filter(|a| !a.announced) {
            if let Some(finding) = alert.current() {
                raised.push(to_alert(finding, AlertEvent::Raised, alert.first_seen, alert.last_seen, time));
                alert.announced = true;
            }
        }
        raised.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        raised
    }
}

fn to_alert(finding: &Finding, event: AlertEvent, first_seen: Epoch, last_seen: Epoch, time: Epoch) -> Alert {
    let score = f64::from(finding.score);
    Alert {
        alert_id: finding.alert_id.clone(),
        event,
        detector: finding.detector.clone(),
        severity: Severity::from_score(score),
        score,
        entity: finding.entity.clone(),
        peer_group: finding.peer_group.clone(),
        summary: finding.summary.clone(),
        evidence: finding.evidence.iter().cloned().collect(),
        techniques: finding.techniques.clone(),
        first_seen_ms: first_seen as i64,
        last_seen_ms: last_seen as i64,
        event_time_ms: time as i64,
    }
}

/// Which worker owns an alert: the leading 64 bits of its (hex) id.
fn route_of(alert_id: &str) -> u64 {
    alert_id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::alert_id;

    fn finding(entity: &str, key: &str, score: u8) -> Finding {
        Finding {
            alert_id: alert_id("test", entity, key),
            detector: "test".into(),
            entity: entity.into(),
            key: key.into(),
            peer_group: None,
            score,
            summary: String::new(),
            evidence: vec![],
            techniques: vec![],
        }
    }

    #[test]
    fn a_finding_raises_updates_and_clears_its_alert() {
        let mut state = Lifecycle::default();
        let raised = state.close_epoch(1000, vec![(finding("a", "x", 60), 1)], false);
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].event, AlertEvent::Raised);
        assert_eq!(raised[0].first_seen_ms, 1000);

        let updated = state.close_epoch(2000, vec![(finding("a", "x", 60), -1), (finding("a", "x", 80), 1)], false);
        assert_eq!(updated.len(), 1);
        assert_eq!(updated[0].event, AlertEvent::Updated);
        assert_eq!(updated[0].score, 80.0);
        assert_eq!(updated[0].first_seen_ms, 1000);

        let cleared = state.close_epoch(3000, vec![(finding("a", "x", 80), -1)], false);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].event, AlertEvent::Cleared);
        assert_eq!(cleared[0].last_seen_ms, 2000);
        assert!(state.open.is_empty());
    }

    #[test]
    fn netted_changes_within_an_epoch_emit_nothing() {
        let mut state = Lifecycle::default();
        state.close_epoch(1000, vec![(finding("a", "x", 60), 1)], false);
        let none = state.close_epoch(2000, vec![(finding("a", "x", 60), -1), (finding("a", "x", 60), 1)], false);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn silence_holds_raises_back_and_swallows_what_cleared_meanwhile() {
        let mut state = Lifecycle::default();
        assert!(state.close_epoch(1000, vec![(finding("a", "x", 60), 1), (finding("b", "y", 60), 1)], true).is_empty());
        assert!(state.close_epoch(2000, vec![(finding("b", "y", 60), -1)], true).is_empty());
        let raised = state.end_silence(5000);
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (raised[0].entity.as_str(), raised[0].event, raised[0].first_seen_ms, raised[0].event_time_ms),
            ("a", AlertEvent::Raised, 1000, 5000)
        );
        let cleared = state.close_epoch(6000, vec![(finding("a", "x", 60), -1)], false);
        assert_eq!(cleared[0].event, AlertEvent::Cleared);
    }

    #[test]
    fn alert_ids_are_deterministic_and_distinct() {
        assert_eq!(alert_id("d", "e", "k"), alert_id("d", "e", "k"));
        assert_ne!(alert_id("d", "e", "k"), alert_id("d", "ek", ""));
        assert_eq!(alert_id("d", "e", "k").len(), 32);
    }
}
