//! Peer-group deviation: a member whose feature (bytes out, bytes in, distinct destinations,
//! distinct ports, connections, failed-connection ratio) is far above its group, judged both
//! against the other members (leave-one-out mean and standard deviation) and robustly (median and
//! MAD of the group), so one wild member can neither hide itself nor its peers.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::{alert_id, DetectorInputs, Finding};
use crate::name::Name;
use crate::stats::{entity_features, group_moments, group_robust, member_features, Feature, Moments, Robust};
use crate::time::Epoch;

pub const DETECTOR: &str = "peer_group_deviation";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerDeviationConfig {
    pub enabled: bool,
    /// Smallest group (members with outgoing traffic in the window) whose members are compared:
    /// the member and at least four peers, as three peers give no usable spread. Unit: members.
    pub min_group_size: usize,
    /// Standard deviations above the other members' mean a value must be (leave-one-out).
    pub min_z: f64,
    /// Scaled MADs (1.4826 × MAD) above the group median a value must be.
    pub min_robust_z: f64,
    /// Least value worth an alert, per feature: bytes for `bytes_out` / `bytes_in`, a count for
    /// `destinations`, `destination_ports`, `connections`, per mille for `failed_per_mille`.
    pub min_bytes: i64,
    pub min_count: i64,
    pub min_failed_per_mille: i64,
}

impl Default for PeerDeviationConfig {
    fn default() -> Self {
        PeerDeviationConfig {
            enabled: true,
            min_group_size: 5,
            min_z: 4.0,
            min_robust_z: 4.0,
            min_bytes: 1_000_000,
            min_count: 20,
            min_failed_per_mille: 300,
        }
    }
}

impl PeerDeviationConfig {
    fn floor(&self, feature: Feature) -> i64 {
        match feature {
            Feature::BytesOut | Feature::BytesIn => self.min_bytes,
            Feature::FailedPerMille => self.min_failed_per_mille,
            Feature::Destinations | Feature::DestinationPorts | Feature::Connections => self.min_count,
        }
    }
}

/// How far one member stands from its peers on one feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Deviation {
    pub value: i64,
    /// The other members.
    pub peers: Moments,
    pub robust: Robust,
    pub z: f64,
    pub robust_z: f64,
}

/// Judges `value` against the group's `moments` (which include it) and robust statistics.
pub fn deviation(
    config: &PeerDeviationConfig,
    feature: Feature,
    value: i64,
    moments: Moments,
    robust: Robust,
) -> Option<Deviation> {
    if moments.n < config.min_group_size as i64 || value < config.floor(feature) {
        return None;
    }
    let peers = moments.without(value);
    let mean = peers.mean();
    // Few or identical peers show little spread; the least spread assumed is a quarter of the
    // centre, one unit, and for counts (connections, destinations, ports) their counting noise,
    // √centre: 20 connections against peers at 9 is chance, not a deviation.
    let counted = matches!(feature, Feature::Connections | Feature::Destinations | Feature::DestinationPorts);
    let least_spread = |centre: f64| {
        let noise = if counted { centre.max(0.0).sqrt() } else { 0.0 };
        (0.25 * centre.abs()).max(noise).max(1.0)
    };
    let spread = peers.stddev().max(least_spread(mean));
    let z = (value as f64 - mean) / spread;
    let robust_spread = (1.4826 * robust.mad as f64).max(least_spread(robust.median as f64));
    let robust_z = (value - robust.median) as f64 / robust_spread;
    (z >= config.min_z && robust_z >= config.min_robust_z).then_some(Deviation { value, peers, robust, z, robust_z })
}

pub fn detect<'s>(config: &PeerDeviationConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let features = member_features(entity_features(inputs.edges.clone(), inputs.live.clone()), inputs.members.clone());
    let moments = group_moments(features.clone());
    let robust = group_robust(features.clone());
    // The statistics take every member; only members above the feature's floor can deviate, and
    // only groups large enough can judge, so both sides are cut down before the member-sized join.
    let min_group_size = config.min_group_size as i64;
    let statistics = moments.filter(move |(_, moments)| moments.n >= min_group_size).join(robust);
    let floors = config.clone();
    let candidates = features.filter(move |((_, feature), (_, value))| *value >= floors.floor(*feature));
    let config = config.clone();
    candidates.join(statistics).flat_map(move |((group, feature), ((member, value), (moments, robust)))| {
        deviation(&config, feature, value, moments, robust).map(|d| finding(member, group, feature, d))
    })
}

fn finding(member: Name, group: Name, feature: Feature, d: Deviation) -> Finding {
    // z of 4 → 70, 7 and more → 100.
    let score = (30.0 + 10.0 * d.z.min(7.0)).clamp(0.0, 100.0) as u8;
    let name = feature.name();
    Finding {
        alert_id: alert_id(DETECTOR, &member, name),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{member}: {name} {} is {:.0}σ above the other {} members of {group} (mean {:.0})",
            d.value,
            d.z.floor(),
            d.peers.n,
            d.peers.mean()
        ),
        evidence: vec![
            ("feature".to_owned(), name.to_owned()),
            ("value".to_owned(), d.value.to_string()),
            ("peers".to_owned(), d.peers.n.to_string()),
            ("peer_mean".to_owned(), format!("{:.0}", d.peers.mean())),
            ("peer_stddev".to_owned(), format!("{:.0}", d.peers.stddev())),
            ("group_median".to_owned(), d.robust.median.to_string()),
            ("group_mad".to_owned(), d.robust.mad.to_string()),
            ("z".to_owned(), format!("{:.0}", d.z.floor())),
        ],
        entity: member,
        key: name.to_owned(),
        peer_group: Some(group),
        score,
        techniques: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Edge;
    use crate::testing::{detector_inputs, edge, run_collection};

    fn replica(i: usize, dst: &str) -> Edge {
        edge(&format!("pod:shop/api-{i}"), Some("api"), dst, None, 443)
    }

    #[test]
    fn a_member_sending_far_more_than_its_peers_is_found_on_that_feature() {
        let config = PeerDeviationConfig { min_bytes: 1_000, ..PeerDeviationConfig::default() };
        let mut updates = Vec::new();
        for i in 0..5 {
            // 10 flows of 100 bytes each, to one destination...
            updates.push((replica(i, "host:10.0.0.9"), 1000, 10));
        }
        // ...and one member with 50 times the volume.
        updates.push((replica(3, "host:10.0.0.9"), 1000, 490));
        let out = run_collection(updates, 2000, move |contacts| detect(&config, &detector_inputs(contacts)));
        let found: Vec<(String, String)> =
            out.into_iter().map(|(f, _): (Finding, isize)| (f.entity.to_string(), f.key)).collect();
        assert!(found.contains(&("pod:shop/api-3".to_owned(), "bytes_out".to_owned())), "{found:?}");
        assert!(found.iter().all(|(entity, _)| entity == "pod:shop/api-3"), "{found:?}");
    }

    #[test]
    fn peers_that_differ_a_little_are_not_deviations() {
        let m = [1000, 1100, 1200, 1300, 1400].iter().fold(Moments::default(), |mut m, v| {
            differential_dataflow::difference::Semigroup::plus_equals(&mut m, &Moments::of(*v));
            m
        });
        let config = PeerDeviationConfig { min_bytes: 0, ..PeerDeviationConfig::default() };
        assert!(deviation(&config, Feature::BytesOut, 1400, m, Robust { median: 1200, mad: 100 }).is_none());
    }

    #[test]
    fn a_count_within_its_counting_noise_is_chance_and_far_beyond_it_is_a_deviation() {
        let values = [8, 9, 9, 10];
        let moments_with = |value: i64| {
            values.iter().chain([value].iter()).fold(Moments::default(), |mut m, v| {
                differential_dataflow::difference::Semigroup::plus_equals(&mut m, &Moments::of(*v));
                m
            })
        };
        let config = PeerDeviationConfig::default();
        let robust = Robust { median: 9, mad: 1 };
        // 20 connections against peers at 8-10: √9 = 3 is the least spread, so z ≈ 3.7.
        assert!(deviation(&config, Feature::Connections, 20, moments_with(20), robust).is_none());
        assert!(deviation(&config, Feature::Connections, 200, moments_with(200), robust).is_some());
    }

    #[test]
    fn small_groups_and_small_values_are_not_judged() {
        let m = Moments::of(1).without(1);
        let config = PeerDeviationConfig::default();
        assert!(deviation(&config, Feature::Connections, 5_000, m, Robust { median: 0, mad: 0 }).is_none());
        let many = (0..6).fold(Moments::default(), |mut acc, _| {
            differential_dataflow::difference::Semigroup::plus_equals(&mut acc, &Moments::of(1));
            acc
        });
        assert!(deviation(&config, Feature::Connections, 10, many, Robust { median: 1, mad: 0 }).is_none());
    }
}
