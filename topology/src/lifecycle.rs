//! Alert lifecycle: turns the findings collection into alert events. A finding appearing raises
//! its alert, a changed finding updates it, a retracted one clears it. Events for a time are
//! emitted only once the frontier has passed that time, from consolidated updates, so the
//! un-netted +/- pairs a join produces mid-epoch never reach anyone. Timers give the stage its
//! damping: a learning period, a minimum duration before a raise, a delay before a clear
//! (hysteresis) and a minimum interval between updates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
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
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// How findings become alert events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After the pipeline first sees data, findings are tracked but no alert is raised for this
    /// long (e.g. "5m"; absent: one window), so a half-filled window is not mistaken for an
    /// anomaly. Alerts still open when it ends are raised then.
    #[serde(with = "humantime_serde")]
    pub learning_period: Option<Duration>,
    /// A finding must hold this long (event time) before its alert is raised (e.g. "10s"; 0: at once).
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    /// A finding must stay gone this long before its alert is cleared; if it comes back meanwhile
    /// the alert simply goes on (e.g. "30s"; 0: at once). Default one minute: a finding at a
    /// detector's threshold (a beacon whose count in the window hovers at the minimum) flickers
    /// as the window slides, and each flicker would be a ticket opened and resolved.
    #[serde(with = "humantime_serde")]
    pub clear_after: Duration,
    /// Least event time between two `updated` events of one alert, unless its severity changes;
    /// the latest evidence is sent when the interval has passed (e.g. "1m").
    #[serde(with = "humantime_serde")]
    pub min_update_interval: Duration,
    /// The earliest epoch a previous run of the pipeline observed, restored on restart so the
    /// learning period is not started again. Set by the pipeline, not by configuration.
    #[serde(skip)]
    pub observed_since: Option<Epoch>,
    /// After a restart: what was announced before it. Set by the pipeline, not by configuration.
    #[serde(skip)]
    pub resumed: Option<ResumedAlerts>,
}

/// What a restarted pipeline knows of the alerts it announced before the restart: from epoch
/// `at` on it emits again, and `open` holds the last event of every alert not cleared then. The
/// replay before `at` rebuilds the lifecycle's state silently, but it cannot know when an old
/// alert was last announced or with what evidence; at `at` the lifecycle takes that from here,
/// so its next update, clear or raise is the one a run without the restart would have emitted.
#[derive(Clone, Debug, Default)]
pub struct ResumedAlerts {
    pub at: Epoch,
    /// By alert id.
    pub open: Arc<BTreeMap<String, Alert>>,
}

impl PartialEq for ResumedAlerts {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.open == other.open
    }
}

// Alert scores are finite.
impl Eq for ResumedAlerts {}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            learning_period: None,
            min_duration: Duration::ZERO,
            clear_after: Duration::from_secs(60),
            min_update_interval: Duration::from_secs(60),
            observed_since: None,
            resumed: None,
        }
    }
}

/// The lifecycle's timings in epochs (ms).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub learning: u64,
    pub min_duration: u64,
    pub clear_after: u64,
    pub min_update_interval: u64,
    /// Observation start restored from a previous run (see [`LifecycleConfig::observed_since`]).
    pub observed_since: Option<Epoch>,
}

impl Timings {
    pub fn new(config: &LifecycleConfig, window: Duration) -> Timings {
        let ms = |d: Duration| d.as_millis() as u64;
        Timings {
            learning: ms(config.learning_period.unwrap_or(window)),
            min_duration: ms(config.min_duration),
            clear_after: ms(config.clear_after),
            min_update_interval: ms(config.min_update_interval),
            observed_since: config.observed_since,
        }
    }
}

/// The finding updates of one epoch not yet closed, with the capability to emit its events.
type PendingEpoch = (Capability<Epoch>, Vec<(Finding, isize)>);

/// One alert's state, from its finding's first appearance until it is cleared.
struct AlertState {
    /// The findings with this alert id and their multiplicities (one, unless a detector emits
    /// two bodies for one key in the same epoch, in which case the greatest is reported).
    findings: BTreeMap<Finding, isize>,
    first_seen: Epoch,
    last_seen: Epoch,
    /// What the last emitted event said, and when; `None` until the raise is emitted.
    announced: Option<(Finding, Epoch)>,
    /// When the finding went away, while it stays away.
    gone_since: Option<Epoch>,
}

impl AlertState {
    fn current(&self) -> Option<&Finding> {
        self.findings.iter().rev().find(|(_, n)| **n > 0).map(|(f, _)| f)
    }
}

/// The lifecycle state of one worker's share of the alerts.
#[derive(Default)]
struct Lifecycle {
    timings: Timings,
    /// Start of the silent period, once the earliest observed epoch is known.
    silent_until: Option<Epoch>,
    alerts: HashMap<String, AlertState>,
    /// Alerts to look at again when the frontier passes an epoch.
    due: BTreeMap<Epoch, BTreeSet<String>>,
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
/// for epochs earlier than the `observed` start plus the learning period.
pub fn alert_lifecycle<'s>(
    findings: VecCollection<'s, Epoch, Finding>,
    observed: Stream<'s, Epoch, Vec<Epoch>>,
    timings: Timings,
    resumed: Option<ResumedAlerts>,
) -> Stream<'s, Epoch, Vec<Alert>> {
    let (worker, workers) = (findings.scope().index(), findings.scope().peers());
    let mut resumed = resumed;
    let route = Exchange::new(|update: &(Finding, Epoch, isize)| route_of(&update.0.alert_id));
    findings.inner.binary_frontier::<_, CapacityContainerBuilder<Vec<Alert>>, _, _, _, _>(
        observed,
        route,
        Pipeline,
        "AlertLifecycle",
        move |_initial, _info| {
            let mut pending: BTreeMap<Epoch, PendingEpoch> = BTreeMap::new();
            // A capability for every epoch some alert is due to be looked at again.
            let mut timers: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
            let mut state = Lifecycle { timings, ..Lifecycle::default() };
            let mut observed_from: Option<Epoch> = timings.observed_since;
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
                state.silent_until = observed_from.map(|o| o.saturating_add(timings.learning));
                // An epoch is closed once neither findings nor news of an earlier start can come.
                let closed = |time: &Epoch| !frontier.less_equal(time) && !starts_frontier.less_equal(time);
                loop {
                    let next_data = pending.keys().next().copied();
                    let next_timer = timers.keys().next().copied();
                    let Some(time) = next_data.into_iter().chain(next_timer).min() else { break };
                    if !closed(&time) {
                        break;
                    }
                    if let Some(resumed) = resumed.take_if(|r| time >= r.at) {
                        let mine = |id: &str| route_of(id) % workers as u64 == worker as u64;
                        state.resume(&resumed, time, mine);
                    }
                    let mut events = Vec::new();
                    let mut caps = Vec::new();
                    if next_data == Some(time) {
                        let (cap, updates) = pending.remove(&time).expect("present");
                        state.close_epoch(time, updates, &mut events);
                        caps.push(cap);
                    }
                    if let Some(cap) = timers.remove(&time) {
                        caps.push(cap);
                    }
                    state.fire_due(time, &mut events);
                    let cap = caps.first().expect("an epoch with work has a capability");
                    for due in state.due.range(time + 1..).map(|(t, _)| *t).collect::<Vec<_>>() {
                        timers.entry(due).or_insert_with(|| cap.delayed(&due));
                    }
                    if !events.is_empty() {
                        output.session(cap).give_iterator(events.into_iter());
                    }
                }
            }
        },
    )
}

impl Lifecycle {
    fn schedule(&mut self, at: Epoch, alert_id: &str) {
        self.due.entry(at).or_default().insert(alert_id.to_owned());
    }

    /// Takes what was announced before a restart (see [`ResumedAlerts`]) over what the replay
    /// believes it announced, for the alerts this worker owns (`mine`), before epoch `time`.
    fn resume(&mut self, resumed: &ResumedAlerts, time: Epoch, mine: impl Fn(&str) -> bool) {
        for (id, alert) in self.alerts.iter_mut() {
            match resumed.open.get(id) {
                Some(said) => {
                    // The finding as announced: the current one if it says the same, else one
                    // rebuilt from the alert (which differs from every current finding).
                    let at = said.event_time_ms.max(0) as Epoch;
                    let same = |f: &&Finding| {
                        to_alert(f, said.event, said.first_seen_ms as Epoch, said.last_seen_ms as Epoch, at) == *said
                    };
                    let finding = alert.current().filter(same).cloned().unwrap_or_else(|| finding_of(said));
                    alert.announced = Some((finding, at));
                    alert.first_seen = said.first_seen_ms.max(0) as Epoch;
                }
                // Not announced before the restart (or already cleared): only the replay raised it.
                None => alert.announced = None,
            }
            self.due.entry(time).or_default().insert(id.clone());
        }
        let gone: Vec<(&String, &Alert)> =
            resumed.open.iter().filter(|(id, _)| mine(id) && !self.alerts.contains_key(*id)).collect();
        for (id, said) in gone {
            // Open before the restart, but its finding is gone: it is cleared (after `clear_after`).
            let state = AlertState {
                findings: BTreeMap::new(),
                first_seen: said.first_seen_ms.max(0) as Epoch,
                last_seen: said.last_seen_ms.max(0) as Epoch,
                announced: Some((finding_of(said), said.event_time_ms.max(0) as Epoch)),
                gone_since: Some(time),
            };
            self.alerts.insert(id.clone(), state);
            self.due.entry(time).or_default().insert(id.clone());
        }
    }

    /// When a raise may be emitted for a finding that appeared at `time`.
    fn raise_at(&self, first_seen: Epoch) -> Epoch {
        (first_seen + self.timings.min_duration).max(self.silent_until.unwrap_or(Epoch::MAX))
    }

    /// Applies one closed epoch's finding updates; events due at once are pushed to `events`.
    fn close_epoch(&mut self, time: Epoch, mut updates: Vec<(Finding, isize)>, events: &mut Vec<Alert>) {
        differential_dataflow::consolidation::consolidate(&mut updates);
        let mut touched = BTreeSet::new();
        for (finding, diff) in updates {
            let alert = self.alerts.entry(finding.alert_id.clone()).or_insert_with(|| AlertState {
                findings: BTreeMap::new(),
                first_seen: time,
                last_seen: time,
                announced: None,
                gone_since: None,
            });
            touched.insert(finding.alert_id.clone());
            let count = alert.findings.entry(finding).or_insert(0);
            *count += diff;
            if *count == 0 {
                alert.findings.retain(|_, n| *n != 0);
            }
        }
        for id in touched {
            let Some(alert) = self.alerts.get_mut(&id) else { continue };
            match (alert.current().is_some(), alert.announced.is_some()) {
                (true, _) => {
                    alert.last_seen = time;
                    alert.gone_since = None;
                    self.schedule(time, &id);
                }
                (false, false) => {
                    // Gone before anyone heard of it.
                    self.alerts.remove(&id);
                }
                (false, true) => {
                    alert.gone_since.get_or_insert(time);
                    self.schedule(time, &id);
                }
            }
        }
        self.fire_due(time, events);
    }

    /// Looks again at every alert due at or before `time`, emitting what its state calls for.
    fn fire_due(&mut self, time: Epoch, events: &mut Vec<Alert>) {
        let due: Vec<Epoch> = self.due.range(..=time).map(|(t, _)| *t).collect();
        let mut ids = BTreeSet::new();
        for t in due {
            ids.extend(self.due.remove(&t).unwrap_or_default());
        }
        for id in ids {
            self.review(&id, time, events);
        }
    }

    fn review(&mut self, id: &str, time: Epoch, events: &mut Vec<Alert>) {
        let timings = self.timings;
        let raise_at = match self.alerts.get(id) {
            Some(alert) => self.raise_at(alert.first_seen),
            None => return,
        };
        let Some(alert) = self.alerts.get_mut(id) else { return };
        let current = alert.current().cloned();
        match (current, alert.announced.clone()) {
            (Some(finding), None) => {
                if time >= raise_at {
                    events.push(to_alert(&finding, AlertEvent::Raised, alert.first_seen, alert.last_seen, time));
                    alert.announced = Some((finding, time));
                } else if raise_at < Epoch::MAX {
                    self.schedule(raise_at, id);
                }
            }
            (Some(finding), Some((said, when))) => {
                if finding == said {
                    return;
                }
                let severity_changed =
                    Severity::from_score(f64::from(finding.score)) != Severity::from_score(f64::from(said.score));
                let may_update_at = when + timings.min_update_interval;
                if severity_changed || time >= may_update_at {
                    events.push(to_alert(&finding, AlertEvent::Updated, alert.first_seen, alert.last_seen, time));
                    alert.announced = Some((finding, time));
                } else {
                    self.schedule(may_update_at, id);
                }
            }
            (None, Some((said, _))) => {
                // Gone: clear once it has stayed gone for `clear_after`.
                let clear_at = alert.gone_since.unwrap_or(time) + timings.clear_after;
                if time >= clear_at {
                    events.push(to_alert(&said, AlertEvent::Cleared, alert.first_seen, alert.last_seen, time));
                    self.alerts.remove(id);
                } else {
                    self.schedule(clear_at, id);
                }
            }
            (None, None) => {
                self.alerts.remove(id);
            }
        }
    }
}

/// The finding an alert event announced, as far as the event tells (the key is not in it).
fn finding_of(alert: &Alert) -> Finding {
    Finding {
        alert_id: alert.alert_id.clone(),
        detector: alert.detector.clone(),
        entity: Name::new(&alert.entity),
        key: String::new(),
        peer_group: alert.peer_group.as_deref().map(Name::new),
        score: alert.score.clamp(0.0, 100.0) as u8,
        summary: alert.summary.clone(),
        evidence: alert.evidence.clone().into_iter().collect(),
        techniques: alert.techniques.clone(),
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
        entity: finding.entity.to_string(),
        peer_group: finding.peer_group.as_ref().map(Name::to_string),
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

    fn lifecycle(timings: Timings) -> Lifecycle {
        Lifecycle { timings, silent_until: Some(0), ..Lifecycle::default() }
    }

    /// Closes `time` with `updates` and fires every timer up to it, as the operator does.
    fn step(state: &mut Lifecycle, time: Epoch, updates: Vec<(Finding, isize)>) -> Vec<Alert> {
        let mut events = Vec::new();
        state.close_epoch(time, updates, &mut events);
        events
    }

    fn tick(state: &mut Lifecycle, time: Epoch) -> Vec<Alert> {
        let mut events = Vec::new();
        state.fire_due(time, &mut events);
        events
    }

    fn kinds(events: &[Alert]) -> Vec<AlertEvent> {
        events.iter().map(|e| e.event).collect()
    }

    /// The events a lifecycle emits from `resumed.at` on, after replaying `replay` silently.
    fn after_resume(
        timings: Timings,
        replay: Vec<(Epoch, Vec<(Finding, isize)>)>,
        resumed: &ResumedAlerts,
        then: Vec<(Epoch, Vec<(Finding, isize)>)>,
    ) -> Vec<Alert> {
        let mut state = lifecycle(timings);
        for (time, updates) in replay {
            step(&mut state, time, updates);
        }
        state.resume(resumed, resumed.at, |_| true);
        let mut events = tick(&mut state, resumed.at);
        for (time, updates) in then {
            events.extend(step(&mut state, time, updates));
            events.extend(tick(&mut state, time));
        }
        events
    }

    #[test]
    fn after_a_restart_the_lifecycle_continues_from_what_was_announced() {
        let timings = Timings { min_update_interval: 10_000, ..Timings::default() };
        let (old, new) = (finding("a", "x", 60), finding("a", "x", 65));
        // Before the restart: raised at 1000 with `old`, never updated. The replay starts later and
        // sees `new` from 20000: it would raise (silently) at 20000 and update only from 30000.
        let announced = to_alert(&old, AlertEvent::Raised, 1000, 1000, 1000);
        let open = Arc::new(BTreeMap::from([(old.alert_id.clone(), announced)]));
        let resumed = ResumedAlerts { at: 25_000, open };
        let replay = vec![(20_000, vec![(new.clone(), 1)])];
        let events = after_resume(timings, replay.clone(), &resumed, vec![]);
        assert_eq!(kinds(&events), vec![AlertEvent::Updated], "the update was due since 11000: {events:?}");
        assert_eq!((events[0].event_time_ms, events[0].first_seen_ms, events[0].score), (25_000, 1000, 65.0));

        // What was announced is what the replay found: nothing to say.
        let same = to_alert(&new, AlertEvent::Updated, 1000, 19_000, 19_000);
        let resumed_same = ResumedAlerts { at: 25_000, open: Arc::new(BTreeMap::from([(new.alert_id.clone(), same)])) };
        assert!(after_resume(timings, replay.clone(), &resumed_same, vec![]).is_empty());

        // Not announced before the restart: the replay's silent raise is not taken for one.
        let nothing = ResumedAlerts { at: 25_000, open: Arc::default() };
        assert_eq!(kinds(&after_resume(timings, replay, &nothing, vec![])), vec![AlertEvent::Raised]);

        // Open before the restart, its finding gone during it: cleared, with what was announced.
        let events = after_resume(timings, vec![], &resumed, vec![]);
        assert_eq!(kinds(&events), vec![AlertEvent::Cleared]);
        assert_eq!((events[0].score, events[0].first_seen_ms), (60.0, 1000));
    }

    #[test]
    fn a_finding_raises_updates_and_clears_its_alert() {
        let mut state = lifecycle(Timings::default());
        let raised = step(&mut state, 1000, vec![(finding("a", "x", 60), 1)]);
        assert_eq!(kinds(&raised), vec![AlertEvent::Raised]);
        assert_eq!(raised[0].first_seen_ms, 1000);

        let updated = step(&mut state, 2000, vec![(finding("a", "x", 60), -1), (finding("a", "x", 80), 1)]);
        assert_eq!(kinds(&updated), vec![AlertEvent::Updated]);
        assert_eq!(updated[0].score, 80.0);
        assert_eq!(updated[0].first_seen_ms, 1000);

        let cleared = step(&mut state, 3000, vec![(finding("a", "x", 80), -1)]);
        assert_eq!(kinds(&cleared), vec![AlertEvent::Cleared]);
        assert_eq!(cleared[0].last_seen_ms, 2000);
        assert!(state.alerts.is_empty());
    }

    #[test]
    fn netted_changes_within_an_epoch_emit_nothing() {
        let mut state = lifecycle(Timings::default());
        step(&mut state, 1000, vec![(finding("a", "x", 60), 1)]);
        let none = step(&mut state, 2000, vec![(finding("a", "x", 60), -1), (finding("a", "x", 60), 1)]);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn silence_holds_raises_back_and_swallows_what_cleared_meanwhile() {
        let mut state = lifecycle(Timings::default());
        state.silent_until = Some(5000);
        assert!(step(&mut state, 1000, vec![(finding("a", "x", 60), 1), (finding("b", "y", 60), 1)]).is_empty());
        assert!(step(&mut state, 2000, vec![(finding("b", "y", 60), -1)]).is_empty());
        let raised = tick(&mut state, 5000);
        assert_eq!(raised.len(), 1);
        let r = &raised[0];
        assert_eq!(
            (r.entity.as_str(), r.event, r.first_seen_ms, r.event_time_ms),
            ("a", AlertEvent::Raised, 1000, 5000)
        );
        let cleared = step(&mut state, 6000, vec![(finding("a", "x", 60), -1)]);
        assert_eq!(kinds(&cleared), vec![AlertEvent::Cleared]);
    }

    #[test]
    fn a_finding_shorter_than_the_minimum_duration_raises_nothing() {
        let mut state = lifecycle(Timings { min_duration: 3000, ..Timings::default() });
        assert!(step(&mut state, 1000, vec![(finding("a", "x", 60), 1)]).is_empty());
        assert!(step(&mut state, 2000, vec![(finding("a", "x", 60), -1)]).is_empty());
        assert!(tick(&mut state, 4000).is_empty());
        assert!(state.alerts.is_empty());

        assert!(step(&mut state, 5000, vec![(finding("b", "y", 60), 1)]).is_empty());
        assert_eq!(kinds(&tick(&mut state, 8000)), vec![AlertEvent::Raised]);
    }

    #[test]
    fn a_finding_that_comes_back_within_clear_after_does_not_flap() {
        let mut state = lifecycle(Timings { clear_after: 5000, ..Timings::default() });
        assert_eq!(kinds(&step(&mut state, 1000, vec![(finding("a", "x", 60), 1)])), vec![AlertEvent::Raised]);
        assert!(step(&mut state, 2000, vec![(finding("a", "x", 60), -1)]).is_empty());
        assert!(step(&mut state, 4000, vec![(finding("a", "x", 60), 1)]).is_empty());
        assert!(tick(&mut state, 7000).is_empty(), "came back: no clear, no second raise");
        assert!(step(&mut state, 8000, vec![(finding("a", "x", 60), -1)]).is_empty());
        let cleared = tick(&mut state, 12_000);
        assert!(cleared.is_empty(), "not yet: last seen at 4000, gone at 8000");
        let cleared = tick(&mut state, 13_000);
        assert_eq!(kinds(&cleared), vec![AlertEvent::Cleared]);
    }

    #[test]
    fn updates_are_throttled_unless_the_severity_changes() {
        let mut state = lifecycle(Timings { min_update_interval: 10_000, ..Timings::default() });
        step(&mut state, 1000, vec![(finding("a", "x", 71), 1)]);
        assert!(step(&mut state, 2000, vec![(finding("a", "x", 71), -1), (finding("a", "x", 72), 1)]).is_empty());
        assert!(step(&mut state, 3000, vec![(finding("a", "x", 72), -1), (finding("a", "x", 73), 1)]).is_empty());
        let latest = tick(&mut state, 11_000);
        assert_eq!(kinds(&latest), vec![AlertEvent::Updated]);
        assert_eq!(latest[0].score, 73.0, "the latest evidence is sent");
        let severe = step(&mut state, 12_000, vec![(finding("a", "x", 73), -1), (finding("a", "x", 95), 1)]);
        assert_eq!(kinds(&severe), vec![AlertEvent::Updated], "high → critical goes out at once");
    }

    #[test]
    fn alert_ids_are_deterministic_and_distinct() {
        assert_eq!(alert_id("d", "e", "k"), alert_id("d", "e", "k"));
        assert_ne!(alert_id("d", "e", "k"), alert_id("d", "ek", ""));
        assert_eq!(alert_id("d", "e", "k").len(), 32);
    }
}
