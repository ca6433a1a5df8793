//! Beaconing: a source calling one destination service at regular intervals with regular sizes,
//! RITA-style. Per entity-level edge, the epochs of its successful contacts in the window give
//! the connection times; the score combines the Bowley skewness and the MADM (median absolute
//! deviation about the median) of the inter-arrival times and of the bytes per connection, and
//! how completely the connections cover their span. ATT&CK T1071.
//!
//! Everything ordered is a fixed-point integer (permille, ms, bytes): the reduce's output must be
//! `Ord`. Failed contacts (TCP retries against a dead or blocking peer) are ignored, and several
//! connections within one tick count as one: a tick is the resolution of event time.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::{alert_id, service, DetectorInputs, Finding};
use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

pub const DETECTOR: &str = "beaconing";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeaconConfig {
    pub enabled: bool,
    /// Fewest connections (ticks with at least one successful flow) in the window before an edge
    /// is scored; at least 4 (three intervals are the least that have quartiles). The default, 8,
    /// suits windows of minutes: with 4, ordinary browsing to a SaaS scored as a beacon in the
    /// simulated-day scenario. Unit: connections.
    pub min_connections: usize,
    /// Lowest combined score that is reported. Over one window of a realistic organisation,
    /// ordinary calls made at random about once a minute score 70–77 (docs/simulator.md), so only
    /// near-regular series are reported by default. Unit: percent (0..=100).
    pub min_score: u8,
    /// Score only edges to external destinations (`ext:`): internal services polled on a timer
    /// (health checks, metrics scrapes) are regular by design. Unit: flag.
    pub external_only: bool,
}

impl Default for BeaconConfig {
    fn default() -> Self {
        BeaconConfig { enabled: true, min_connections: 8, min_score: 90, external_only: true }
    }
}

/// Median of a sorted slice (the mean of the two middle values, rounded down); 0 when empty.
fn median(sorted: &[i64]) -> i64 {
    match sorted.len() {
        0 => 0,
        n => (sorted[(n - 1) / 2] + sorted[n / 2]).div_euclid(2),
    }
}

/// The statistics of one series (intervals or sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dispersion {
    pub median: i64,
    /// Median absolute deviation about the median.
    pub madm: i64,
    /// Bowley (quartile) skewness, in permille (−1000..=1000).
    pub skew_permille: i64,
}

impl Dispersion {
    /// Of a series with at least two values. Quartiles are the medians of the lower and upper
    /// halves (Tukey's hinges, the median excluded when the length is odd). As in RITA, a series
    /// whose median equals a quartile counts as unskewed.
    pub fn of(values: &[i64]) -> Dispersion {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let mid = median(&sorted);
        let (q1, q3) = (median(&sorted[..n / 2]), median(&sorted[n.div_ceil(2)..]));
        let skew_permille = if q3 != q1 && mid != q1 && mid != q3 { 1000 * (q1 + q3 - 2 * mid) / (q3 - q1) } else { 0 };
        let mut deviations: Vec<i64> = sorted.iter().map(|x| (x - mid).abs()).collect();
        deviations.sort_unstable();
        Dispersion { median: mid, madm: median(&deviations), skew_permille }
    }

    /// 1000 for a symmetric series, 0 for a maximally skewed one.
    pub fn skew_score(&self) -> i64 {
        (1000 - self.skew_permille.abs()).clamp(0, 1000)
    }

    /// 1000 when every value is the median, falling to 0 as the MADM reaches the median.
    pub fn madm_score(&self) -> i64 {
        if self.madm == 0 {
            1000
        } else if self.median <= 0 {
            0
        } else {
            (1000 - 1000 * self.madm / self.median).clamp(0, 1000)
        }
    }
}

/// A scored edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Beacon {
    pub connections: usize,
    /// First to last connection, in ms.
    pub span_ms: i64,
    pub intervals: Dispersion,
    pub sizes: Dispersion,
    /// RITA's connection-count score: connections against span / median interval, in permille.
    pub count_score: i64,
    /// The mean of the five component scores, in permille.
    pub score_permille: i64,
}

/// Scores the connections of one edge: `(epoch, volume)` for each epoch with contacts, sorted by
/// epoch. `None` when fewer than `min_connections` succeeded.
pub fn score(contacts: &[(Epoch, Volume)], min_connections: usize) -> Option<Beacon> {
    let connections: Vec<(i64, i64)> = contacts
        .iter()
        .filter(|(_, volume)| volume.flows > volume.failed)
        .map(|(epoch, volume)| (*epoch as i64, volume.bytes_out.max(0) / (volume.flows - volume.failed)))
        .collect();
    if connections.len() < min_connections.max(4) {
        return None;
    }
    let intervals: Vec<i64> = connections.windows(2).map(|pair| pair[1].0 - pair[0].0).collect();
    let sizes: Vec<i64> = connections.iter().map(|(_, bytes)| *bytes).collect();
    let (intervals, sizes) = (Dispersion::of(&intervals), Dispersion::of(&sizes));
    let span_ms = connections[connections.len() - 1].0 - connections[0].0;
    let count_score = (1000 * connections.len() as i64 * intervals.median / span_ms.max(1)).clamp(0, 1000);
    let score_permille =
        (intervals.skew_score() + intervals.madm_score() + count_score + sizes.skew_score() + sizes.madm_score()) / 5;
    Some(Beacon { connections: connections.len(), span_ms, intervals, sizes, count_score, score_permille })
}

/// Edges whose connections in the window look like a beacon.
pub fn detect<'s>(config: &BeaconConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let (min_connections, min_score) = (config.min_connections, config.min_score as i64);
    let external_only = config.external_only;
    inputs
        .contacts
        .clone()
        .filter(move |(edge, _)| !external_only || edge.dst.is_external())
        .reduce(move |edge, input, output| {
            // One value per epoch, sorted, with the epoch's summed volume: at most window / tick.
            let contacts: Vec<(Epoch, Volume)> = input.iter().map(|(epoch, volume)| (**epoch, *volume)).collect();
            if let Some(beacon) = score(&contacts, min_connections).filter(|b| b.score_permille >= min_score * 10) {
                output.push((finding(edge, &beacon, min_score), 1isize));
            }
        })
        .map(|(_edge, finding)| finding)
}

pub fn finding(edge: &Edge, beacon: &Beacon, min_score: i64) -> Finding {
    let src = edge.src.entity.clone();
    let key = format!("{}:{}", edge.dst.entity, service(edge.dst_port, edge.protocol));
    let number = |name: &str, value: i64| (name.to_owned(), value.to_string());
    Finding {
        alert_id: alert_id(DETECTOR, &src, &key),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{src} connected to {key} {} times in the window, every {} ms (median), MADM {} ms, {} bytes each (median): beacon score {}",
            beacon.connections,
            beacon.intervals.median,
            beacon.intervals.madm,
            beacon.sizes.median,
            beacon.score_permille / 10
        ),
        evidence: vec![
            ("destination".to_owned(), key.clone()),
            number("connections", beacon.connections as i64),
            number("span_ms", beacon.span_ms),
            number("interval_median_ms", beacon.intervals.median),
            number("interval_madm_ms", beacon.intervals.madm),
            number("interval_skew_permille", beacon.intervals.skew_permille),
            number("bytes_median", beacon.sizes.median),
            number("bytes_madm", beacon.sizes.madm),
            number("bytes_skew_permille", beacon.sizes.skew_permille),
            number("count_score_permille", beacon.count_score),
            number("score_permille", beacon.score_permille),
            number("min_score", min_score),
        ],
        entity: src,
        key,
        peer_group: edge.src.peer_group().cloned(),
        score: (beacon.score_permille / 10).clamp(0, 100) as u8,
        techniques: vec!["T1071".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    fn c2() -> Edge {
        edge("pod:shop/web-2", Some("web"), "ext:203.0.113.66", None, 443)
    }

    fn found(scenario: &Scenario, config: BeaconConfig, at: Epoch) -> Vec<Finding> {
        let out = run_scenario(scenario, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at])
    }

    /// The plain version: regroup the window at `at` by edge and score each from scratch.
    fn oracle(scenario: &Scenario, config: &BeaconConfig, at: Epoch) -> Vec<Finding> {
        let mut by_edge: BTreeMap<Edge, Vec<(Epoch, Volume)>> = BTreeMap::new();
        for ((edge, epoch), volume) in scenario.contacts_at(at) {
            if config.external_only && !edge.dst.is_external() {
                continue;
            }
            by_edge.entry(edge).or_default().push((epoch, volume));
        }
        let mut out: Vec<Finding> = by_edge
            .iter()
            .filter_map(|(edge, contacts)| {
                score(contacts, config.min_connections)
                    .filter(|b| b.score_permille >= config.min_score as i64 * 10)
                    .map(|b| finding(edge, &b, config.min_score as i64))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn dispersion_of_a_regular_series_is_perfect() {
        let d = Dispersion::of(&[60_000, 60_000, 60_000, 60_000]);
        assert_eq!(d, Dispersion { median: 60_000, madm: 0, skew_permille: 0 });
        assert_eq!((d.skew_score(), d.madm_score()), (1000, 1000));
    }

    #[test]
    fn dispersion_follows_the_textbook() {
        // Sorted 1 2 3 4 10 20 30: median 4, hinges 2 and 20, Bowley (2 + 20 − 8) / 18.
        let d = Dispersion::of(&[30, 1, 20, 2, 10, 3, 4]);
        assert_eq!(d.median, 4);
        assert_eq!(d.skew_permille, 1000 * 14 / 18);
        // Deviations 0 1 2 3 6 16 26: MADM 3.
        assert_eq!(d.madm, 3);
        assert_eq!(d.madm_score(), 1000 - 750);
    }

    #[test]
    fn a_jittered_beacon_is_found_with_its_numbers() {
        let mut scenario = Scenario::new(10_000);
        for (i, jitter) in [0i64, 40, -30, 10, -20, 30, 0, -10].iter().enumerate() {
            let epoch = (1000 + i as i64 * 600 + jitter) as Epoch;
            scenario.contacts.push((c2(), epoch, vol(1, 0, 310 + (i as i64 % 2) * 4, 1200)));
        }
        // Eight beats with ±7 % jitter score in the 80s: under the default 90, which needs more
        // beats or steadier ones (docs/detectors.md).
        assert!(found(&scenario, BeaconConfig::default(), 6000).is_empty());
        let found = found(&scenario, BeaconConfig { min_score: 80, ..BeaconConfig::default() }, 6000);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!((f.entity.as_str(), f.key.as_str()), ("pod:shop/web-2", "ext:203.0.113.66:443/tcp"));
        assert!(f.evidence.contains(&("connections".to_owned(), "8".to_owned())), "{f:?}");
        assert!(f.score >= 80, "{f:?}");
        assert_eq!(f.techniques, vec!["T1071".to_owned()]);
    }

    #[test]
    fn failed_retries_do_not_break_the_rhythm() {
        let mut scenario = Scenario::new(10_000);
        for i in 0..6 {
            scenario.contacts.push((c2(), 1000 + i * 500, vol(1, 0, 300, 900)));
            // A failed retry a few ms after every other beat.
            if i % 2 == 0 {
                scenario.contacts.push((c2(), 1000 + i * 500 + 7, vol(3, 3, 180, 0)));
            }
        }
        let config = BeaconConfig { min_connections: 6, ..BeaconConfig::default() };
        let found = found(&scenario, config, 5000);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].score, 100, "{found:?}");
    }

    #[test]
    fn irregular_traffic_is_not_a_beacon() {
        let mut scenario = Scenario::new(10_000);
        for (epoch, bytes) in
            [(1000, 300), (1050, 9000), (1900, 120), (2000, 40000), (2020, 700), (3500, 5), (3510, 800)]
        {
            scenario.contacts.push((c2(), epoch, vol(1, 0, bytes, 100)));
        }
        assert!(found(&scenario, BeaconConfig::default(), 5000).is_empty());
    }

    #[test]
    fn a_timer_driven_internal_call_is_not_a_beacon_unless_asked() {
        let mut scenario = Scenario::new(10_000);
        let scrape = edge("pod:mon/prometheus-0", Some("prometheus"), "host:10.0.0.5", None, 9100);
        for i in 0..8 {
            scenario.contacts.push((scrape.clone(), 1000 + i * 500, vol(1, 0, 300, 9000)));
        }
        assert!(found(&scenario, BeaconConfig::default(), 5000).is_empty());
        let everything = BeaconConfig { external_only: false, ..BeaconConfig::default() };
        assert_eq!(found(&scenario, everything, 5000).len(), 1);
    }

    #[test]
    fn three_connections_are_too_few() {
        let mut scenario = Scenario::new(10_000);
        for i in 0..3 {
            scenario.contacts.push((c2(), 1000 + i * 500, vol(1, 0, 300, 900)));
        }
        assert!(found(&scenario, BeaconConfig::default(), 5000).is_empty());
    }

    fn contact() -> impl Strategy<Value = (Edge, Epoch, Volume)> {
        (0..2usize, 0..3usize, 1..40u64, 1..3i64, 0..2i64, prop::sample::select(vec![100i64, 100, 100, 104, 3000]))
            .prop_map(|(src, dst, epoch, flows, failed, bytes)| {
                let dst = if dst == 0 { "host:10.0.1.1".to_owned() } else { format!("ext:198.51.100.{dst}") };
                let e = edge(&format!("host:10.0.0.{src}"), None, &dst, None, 443);
                (e, epoch, vol(flows, failed.min(flows), bytes * flows, 50))
            })
    }

    /// Regular contacts (every `period` epochs from `phase`), so that findings are frequent.
    fn regular() -> impl Strategy<Value = Vec<(Edge, Epoch, Volume)>> {
        (0..2usize, 1..5u64, 1..6u64, 3..12usize).prop_map(|(src, phase, period, count)| {
            let e = edge(&format!("host:10.0.0.{src}"), None, "ext:198.51.100.0", None, 443);
            (0..count as u64).map(|i| (e.clone(), phase + i * period, vol(1, 0, 100, 50))).collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn beacons_match_a_from_scratch_rescoring_at_every_epoch(
            noise in prop::collection::vec(contact(), 0..30),
            beats in regular(),
            external_only: bool,
        ) {
            let mut scenario = Scenario::new(12);
            scenario.contacts = noise.into_iter().chain(beats).collect();
            let config = BeaconConfig { min_score: 60, external_only, ..BeaconConfig::default() };
            let until = 50;
            let cfg = config.clone();
            let out = run_scenario(&scenario, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&scenario, &config, at), "at epoch {}", at);
            }
        }
    }
}
