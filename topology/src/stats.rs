//! Rolling peer-group statistics. Each member's features over the window (bytes out, bytes in,
//! distinct destinations, distinct destination ports, connections, failed-connection ratio) and,
//! per (group, feature), the exact moments `(n, Σx, Σx²)` — carried in the difference type, so
//! consolidation keeps them current as the window slides — and the robust median / MAD.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::graph::Edge;
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// What is measured of each member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Bytes the member sent, over all its outgoing edges.
    BytesOut,
    /// Bytes the member received on its outgoing connections.
    BytesIn,
    /// Distinct destinations (workload-level nodes) the member contacted.
    Destinations,
    /// Distinct destination ports the member contacted.
    DestinationPorts,
    /// Connections (flows) the member opened.
    Connections,
    /// Failed connections per thousand connections.
    FailedPerMille,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::BytesOut,
        Feature::BytesIn,
        Feature::Destinations,
        Feature::DestinationPorts,
        Feature::Connections,
        Feature::FailedPerMille,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::BytesOut => "bytes_out",
            Feature::BytesIn => "bytes_in",
            Feature::Destinations => "destinations",
            Feature::DestinationPorts => "destination_ports",
            Feature::Connections => "connections",
            Feature::FailedPerMille => "failed_per_mille",
        }
    }
}

/// `(n, Σx, Σx²)` as a difference: adding two adds the populations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Moments {
    pub n: i64,
    pub sum: i128,
    pub sum_sq: i128,
}

impl Moments {
    pub fn of(x: i64) -> Moments {
        Moments { n: 1, sum: x as i128, sum_sq: (x as i128) * (x as i128) }
    }

    /// The population without one of its values.
    pub fn without(self, x: i64) -> Moments {
        let one = Moments::of(x);
        Moments { n: self.n - one.n, sum: self.sum - one.sum, sum_sq: self.sum_sq - one.sum_sq }
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    /// Population standard deviation.
    pub fn stddev(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let n = self.n as f64;
        let variance = (self.sum_sq as f64 / n) - (self.sum as f64 / n).powi(2);
        variance.max(0.0).sqrt()
    }
}

impl IsZero for Moments {
    fn is_zero(&self) -> bool {
        self.n == 0 && self.sum == 0 && self.sum_sq == 0
    }
}

impl Semigroup for Moments {
    fn plus_equals(&mut self, rhs: &Self) {
        self.n += rhs.n;
        self.sum += rhs.sum;
        self.sum_sq += rhs.sum_sq;
    }
}

impl Monoid for Moments {
    fn zero() -> Self {
        Moments::default()
    }
}

impl Abelian for Moments {
    fn negate(&mut self) {
        self.n = -self.n;
        self.sum = -self.sum;
        self.sum_sq = -self.sum_sq;
    }
}

impl Multiply<isize> for Moments {
    type Output = Moments;
    fn multiply(self, rhs: &isize) -> Moments {
        let k = *rhs as i128;
        Moments { n: self.n * *rhs as i64, sum: self.sum * k, sum_sq: self.sum_sq * k }
    }
}

/// Robust location and spread of a group's feature: the median and the median absolute deviation
/// (both of the values, each counted with its multiplicity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Robust {
    pub median: i64,
    pub mad: i64,
}

/// `((group, feature), (member, value))`: each member's features, keyed by its group.
pub type MemberFeatures<'s> = VecCollection<'s, Epoch, ((Name, Feature), (Name, i64))>;

/// Connections an entity needs in the window to have a failed-connection ratio. Unit: flows.
pub const MIN_CONNECTIONS_FOR_RATIO: i64 = 10;

/// `(entity, feature) → value` for every source entity in the window.
///
/// `live` is `edges` each once ([`crate::graph::live_edges`]): the distinct destinations and
/// ports are counted from it, the volumes from `edges`.
pub fn entity_features<'s>(
    edges: VecCollection<'s, Epoch, Edge, Volume>,
    live: VecCollection<'s, Epoch, Edge>,
) -> VecCollection<'s, Epoch, ((Name, Feature), i64)> {
    // The windowed totals per source are the consolidated differences; `count` turns them into data.
    let totals = edges.clone().map(|edge| edge.src.entity).count_total().flat_map(|(entity, total): (Name, Volume)| {
        // A ratio over a handful of connections is noise (one failure in three is "333 ‰"):
        // below `MIN_CONNECTIONS_FOR_RATIO` the entity has no failed-ratio feature.
        let failed = (total.flows >= MIN_CONNECTIONS_FOR_RATIO).then(|| total.failed * 1000 / total.flows);
        [
            (Feature::BytesOut, Some(total.bytes_out)),
            (Feature::BytesIn, Some(total.bytes_in)),
            (Feature::Connections, Some(total.flows)),
            (Feature::FailedPerMille, failed),
        ]
        .into_iter()
        .filter_map(move |(feature, value)| value.map(|value| ((entity.clone(), feature), value)))
    });
    let destinations = live
        .clone()
        .map(|edge| (edge.src.entity.clone(), edge.dst.node().to_owned()))
        .distinct_total()
        .map(|(entity, _)| entity)
        .count_total()
        .map(|(entity, n)| ((entity, Feature::Destinations), n as i64));
    let ports = live
        .map(|edge| (edge.src.entity, edge.dst_port))
        .distinct_total()
        .map(|(entity, _)| entity)
        .count_total()
        .map(|(entity, n)| ((entity, Feature::DestinationPorts), n as i64));
    totals.concat(destinations).concat(ports)
}

/// `((group, feature), (member, value))` for every member of a group with outgoing traffic.
pub fn member_features<'s>(
    features: VecCollection<'s, Epoch, ((Name, Feature), i64)>,
    members: VecCollection<'s, Epoch, (Name, Name)>,
) -> MemberFeatures<'s> {
    features
        .map(|((entity, feature), value)| (entity, (feature, value)))
        .join(members)
        .map(|(entity, ((feature, value), group))| ((group, feature), (entity, value)))
}

/// `((group, feature), moments)`: the exact count, sum and sum of squares over the members.
pub fn group_moments<'s>(member_features: MemberFeatures<'s>) -> VecCollection<'s, Epoch, ((Name, Feature), Moments)> {
    member_features.explode(|(key, (_member, value))| Some((key, Moments::of(value)))).count_total()
}

/// `((group, feature), median / MAD)` over the members' values.
pub fn group_robust<'s>(member_features: MemberFeatures<'s>) -> VecCollection<'s, Epoch, ((Name, Feature), Robust)> {
    member_features.map(|(key, (_member, value))| (key, value)).reduce(|_key, input, output| {
        let values: Vec<(i64, isize)> = input.iter().map(|(value, count)| (**value, *count)).collect();
        if let Some(robust) = robust(&values) {
            output.push((robust, 1));
        }
    })
}

/// Median and MAD of values with multiplicities (lower median for even counts).
pub fn robust(values: &[(i64, isize)]) -> Option<Robust> {
    let median = weighted_median(values.iter().copied())?;
    let mut deviations: Vec<(i64, isize)> = values.iter().map(|(v, n)| ((v - median).abs(), *n)).collect();
    deviations.sort();
    let mad = weighted_median(deviations.into_iter())?;
    Some(Robust { median, mad })
}

/// The lower median of sorted-or-not values with positive multiplicities.
fn weighted_median(values: impl Iterator<Item = (i64, isize)>) -> Option<i64> {
    let mut values: Vec<(i64, isize)> = values.filter(|(_, n)| *n > 0).collect();
    values.sort();
    let total: isize = values.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let target = (total + 1) / 2;
    let mut seen = 0;
    for (value, n) in values {
        seen += n;
        if seen >= target {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::testing::{edge, run_collection_at};

    #[test]
    fn median_and_mad_count_multiplicities() {
        assert_eq!(robust(&[(1, 1), (2, 1), (100, 1)]), Some(Robust { median: 2, mad: 1 }));
        assert_eq!(robust(&[(5, 3), (9, 1)]), Some(Robust { median: 5, mad: 0 }));
        assert_eq!(robust(&[]), None);
    }

    #[test]
    fn leaving_one_out_removes_exactly_that_value() {
        let all = Moments::of(2).plus(Moments::of(4)).plus(Moments::of(9));
        let rest = all.without(9);
        assert_eq!(rest, Moments::of(2).plus(Moments::of(4)));
        assert_eq!(rest.mean(), 3.0);
        assert_eq!(rest.stddev(), 1.0);
    }

    impl Moments {
        fn plus(mut self, other: Moments) -> Moments {
            self.plus_equals(&other);
            self
        }
    }

    /// A contact in a small random world: 6 pods in 2 workloads, talking to 4 destinations on 3
    /// ports, at ticks 1..20, with 1..3 flows.
    fn contacts() -> impl Strategy<Value = Vec<(Edge, Epoch, isize)>> {
        let one = (0..6usize, 0..4usize, 0..3u16, 1..20u64, 1..4isize);
        proptest::collection::vec(one, 1..40).prop_map(|raw| {
            raw.into_iter()
                .map(|(src, dst, port, tick, flows)| {
                    let group = if src < 3 { "a" } else { "b" };
                    let e =
                        edge(&format!("pod:ns/p{src}"), Some(group), &format!("host:10.0.0.{dst}"), None, 80 + port);
                    (e, tick * 1000, flows)
                })
                .collect()
        })
    }

    const WINDOW: u64 = 5_000;

    /// The plain version: `((group, feature), (member, value))` recomputed from the contacts in
    /// the window at `t` (the testing helper gives each flow 100 bytes out and nothing else).
    fn oracle(contacts: &[(Edge, Epoch, isize)], t: Epoch) -> Vec<((String, Feature), (String, i64))> {
        let live: Vec<&(Edge, Epoch, isize)> = contacts.iter().filter(|(_, e, _)| *e <= t && t < e + WINDOW).collect();
        let entities: BTreeSet<(String, String)> = live
            .iter()
            .map(|(e, _, _)| (e.src.entity.to_string(), e.src.workload.as_deref().unwrap_or_default().to_owned()))
            .collect();
        let mut rows = Vec::new();
        for (entity, group) in entities {
            let mine: Vec<&&(Edge, Epoch, isize)> = live.iter().filter(|(e, _, _)| e.src.entity == entity).collect();
            let flows: i64 = mine.iter().map(|(_, _, n)| *n as i64).sum();
            let destinations: BTreeSet<&str> = mine.iter().map(|(e, _, _)| e.dst.node().as_str()).collect();
            let ports: BTreeSet<u16> = mine.iter().map(|(e, _, _)| e.dst_port).collect();
            for (feature, value) in [
                (Feature::BytesOut, 100 * flows),
                (Feature::BytesIn, 0),
                (Feature::Connections, flows),
                (Feature::FailedPerMille, 0),
                (Feature::Destinations, destinations.len() as i64),
                (Feature::DestinationPorts, ports.len() as i64),
            ] {
                if feature == Feature::FailedPerMille && flows < MIN_CONNECTIONS_FOR_RATIO {
                    continue;
                }
                rows.push(((group.clone(), feature), (entity.clone(), value)));
            }
        }
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// At every closed epoch, the members' features and the groups' moments and robust
        /// statistics equal a from-scratch computation over the window.
        #[test]
        fn statistics_agree_with_a_batch_recomputation(contacts in contacts()) {
            let times: Vec<Epoch> = (1..=26).map(|s| s * 1000).collect();
            let states = run_collection_at(contacts.clone(), WINDOW, times.clone(), |contacts| {
                let edges = contacts.map(|(edge, _)| edge);
                let live = crate::graph::live_edges(crate::graph::arrange_edges(edges.clone()));
                let labelled = crate::peers::PeerGroupsConfig::labelled_only();
                let members = crate::peers::membership(edges.clone(), live.clone(), &labelled);
                let features = member_features(entity_features(edges, live), members);
                let moments = group_moments(features.clone()).map(|(k, m)| (k, Some(m), None, None));
                let robust = group_robust(features.clone()).map(|(k, r)| (k, None, Some(r), None));
                features.map(|(k, mv)| (k, None, None, Some(mv))).concat(moments).concat(robust)
            });
            for (t, state) in times.iter().zip(states) {
                // Expected: per (group, feature) the members' values, their moments and robust stats.
                let mut expected_values: BTreeMap<(String, Feature), Vec<(String, i64)>> = BTreeMap::new();
                for ((group, feature), (entity, value)) in oracle(&contacts, *t) {
                    expected_values.entry((group, feature)).or_default().push((entity, value));
                }
                let mut got_values: BTreeMap<(String, Feature), Vec<(String, i64)>> = BTreeMap::new();
                let mut got_moments = BTreeMap::new();
                let mut got_robust = BTreeMap::new();
                for (((group, feature), moments, robust, value), count) in state {
                    let key = (group.to_string(), feature);
                    let value = value.map(|(member, value)| (member.to_string(), value));
                    prop_assert_eq!(count, 1, "every statistic is present once");
                    if let Some(m) = moments { got_moments.insert(key.clone(), m); }
                    if let Some(r) = robust { got_robust.insert(key.clone(), r); }
                    if let Some(v) = value { got_values.entry(key).or_default().push(v); }
                }
                for values in got_values.values_mut() { values.sort(); }
                for values in expected_values.values_mut() { values.sort(); }
                prop_assert_eq!(&got_values, &expected_values, "member features at {}", t);
                for (key, values) in &expected_values {
                    let moments = values.iter().fold(Moments::default(), |mut m, (_, v)| { m.plus_equals(&Moments::of(*v)); m });
                    prop_assert_eq!(got_moments.get(key), Some(&moments), "moments of {:?} at {}", key, t);
                    let counted: Vec<(i64, isize)> = values.iter().map(|(_, v)| (*v, 1)).collect();
                    prop_assert_eq!(got_robust.get(key).copied(), robust(&counted), "median/MAD of {:?} at {}", key, t);
                }
                prop_assert_eq!(got_moments.len(), expected_values.len());
            }
        }
    }
}
