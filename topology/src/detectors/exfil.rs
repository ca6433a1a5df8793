//! Exfiltration: an entity sends far more to external addresses in the window than the other
//! members of its peer group do (leave-one-out), and more than an absolute floor. ATT&CK T1048.
//! Bytes leave an entity as the originator's bytes out on its flows to `ext:` destinations and
//! as the responder's bytes in on flows external clients opened to it (a download from the
//! inside). The byte counts are the differences, so the window's sums are consolidation's work.

use std::cmp::Reverse;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;

use super::{alert_id, smallest, DetectorInputs, Finding};
use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

pub const DETECTOR: &str = "exfiltration";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExfilConfig {
    pub enabled: bool,
    /// Least an entity must send to external addresses in the window to be reported at all.
    /// Unit: bytes.
    pub min_bytes: u64,
    /// How many times the mean of its group's other members (in the same window) an entity must
    /// send. Unit: multiple (×).
    pub min_ratio_to_group: u64,
    /// Smallest peer group (members seen in the window) whose other members make a baseline.
    /// Unit: members.
    pub min_group_size: usize,
    /// For an entity with no such group: the least it must send to be reported on the floor
    /// alone; 0 never reports ungrouped entities. Unit: bytes.
    pub ungrouped_min_bytes: u64,
    /// How many destinations the evidence names (the ones that received most). Unit: items.
    pub evidence_destinations: usize,
}

impl Default for ExfilConfig {
    fn default() -> Self {
        ExfilConfig {
            enabled: true,
            min_bytes: 50_000_000,
            min_ratio_to_group: 10,
            min_group_size: 3,
            ungrouped_min_bytes: 1_000_000_000,
            evidence_destinations: 3,
        }
    }
}

/// `(internal entity, external destination, bytes)` leaving through one edge's volume.
pub fn leaving(edge: &Edge, volume: &Volume) -> Option<(String, String, i64)> {
    match (edge.src.is_external(), edge.dst.is_external()) {
        (false, true) => Some((edge.src.entity.clone(), edge.dst.entity.clone(), volume.bytes_out)),
        (true, false) => Some((edge.dst.entity.clone(), edge.src.entity.clone(), volume.bytes_in)),
        _ => None,
    }
}

/// What an entity's sending is compared with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Baseline {
    /// The other members of a group of `members` (including the entity) sent `others_bytes`.
    Group { group: String, members: isize, others_bytes: isize },
    /// No group of `min_group_size`: only the ungrouped floor applies.
    Ungrouped,
}

/// Whether `bytes` sent, against `baseline`, is reported.
pub fn exceeds(config: &ExfilConfig, bytes: isize, baseline: &Baseline) -> bool {
    match baseline {
        Baseline::Group { members, others_bytes, .. } => {
            // bytes ≥ ratio × others / (members − 1), without the division.
            bytes >= config.min_bytes as isize
                && bytes as i128 * (*members as i128 - 1) >= config.min_ratio_to_group as i128 * *others_bytes as i128
        }
        Baseline::Ungrouped => config.ungrouped_min_bytes > 0 && bytes >= config.ungrouped_min_bytes as isize,
    }
}

/// Entities sending far above their group (or, without one, above the ungrouped floor).
pub fn detect<'s>(config: &ExfilConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let min_group_size = config.min_group_size as isize;
    let floor =
        config.min_bytes.min(if config.ungrouped_min_bytes > 0 { config.ungrouped_min_bytes } else { u64::MAX });

    // (entity, destination) with the bytes that left towards it as the difference.
    let sent: VecCollection<'s, Epoch, (String, String), isize> =
        VecCollection::new(inputs.edges.inner.clone().flat_map(|(edge, time, volume)| {
            leaving(&edge, &volume)
                .filter(|(_, _, bytes)| *bytes != 0)
                .map(|(entity, destination, bytes)| ((entity, destination), time, bytes as isize))
        }));
    let totals = sent.clone().map(|(entity, _)| entity).count();

    // (group, (members, Σ bytes)) over the members seen in the window, silent ones included.
    let group_sums = inputs
        .members
        .clone()
        .explode(|(_, group)| Some((group, (1isize, 0isize))))
        .concat(
            inputs.members.clone().join(totals.clone()).explode(|(_, (group, bytes))| Some((group, (0isize, bytes)))),
        )
        .count()
        .filter(move |(_, (members, _))| *members >= min_group_size);

    let candidates = totals.clone().filter(move |(_, bytes)| *bytes >= floor as isize);
    let grouped = candidates
        .clone()
        .join(inputs.members.clone())
        .map(|(entity, (bytes, group))| (group, (entity, bytes)))
        .join(group_sums.clone())
        .map(|(group, ((entity, bytes), (members, sum)))| {
            (entity, (bytes, Baseline::Group { group, members, others_bytes: sum - bytes }))
        });
    let in_usable_group = inputs
        .members
        .clone()
        .map(|(entity, group)| (group, entity))
        .semijoin(group_sums.map(|(group, _)| group))
        .map(|(_, entity)| entity)
        .distinct();
    let ungrouped = candidates.antijoin(in_usable_group).map(|(entity, bytes)| (entity, (bytes, Baseline::Ungrouped)));

    let config_ = config.clone();
    let reported = grouped.concat(ungrouped).filter(move |(_, (bytes, baseline))| exceeds(&config_, *bytes, baseline));

    // The destinations that received most, and how many there were.
    let per_destination = sent.count();
    let destinations = per_destination.clone().map(|((entity, _), _)| entity).count();
    let top = smallest(
        per_destination.map(|((entity, destination), bytes)| (entity, (Reverse(bytes), destination))),
        config.evidence_destinations,
    );

    let config = config.clone();
    reported.join(destinations).join(top).map(move |(entity, (((bytes, baseline), count), top))| {
        let top = top.into_iter().map(|(Reverse(bytes), destination)| (destination, bytes)).collect();
        finding(&config, entity, bytes, baseline, count, top)
    })
}

pub fn finding(
    config: &ExfilConfig,
    entity: String,
    bytes: isize,
    baseline: Baseline,
    destinations: isize,
    top: Vec<(String, isize)>,
) -> Finding {
    let key = "external".to_owned();
    let top_list = top.iter().map(|(d, b)| format!("{d}={b}")).collect::<Vec<_>>().join(",");
    let mut evidence = vec![
        ("bytes_to_external".to_owned(), bytes.to_string()),
        ("destinations".to_owned(), destinations.to_string()),
        ("top_destinations".to_owned(), top_list),
        ("min_bytes".to_owned(), config.min_bytes.to_string()),
    ];
    let (summary, threshold, peer_group) = match &baseline {
        Baseline::Group { group, members, others_bytes } => {
            let mean = others_bytes / (members - 1).max(1);
            evidence.push(("peer_group".to_owned(), group.clone()));
            evidence.push(("group_members".to_owned(), members.to_string()));
            evidence.push(("group_baseline_bytes".to_owned(), mean.to_string()));
            evidence.push(("min_ratio_to_group".to_owned(), config.min_ratio_to_group.to_string()));
            (
                format!(
                    "{entity} sent {bytes} bytes to {destinations} external destinations in the window; the other {} members of {group} sent {mean} bytes each on average",
                    members - 1
                ),
                (config.min_bytes as isize).max(config.min_ratio_to_group as isize * mean),
                Some(group.clone()),
            )
        }
        Baseline::Ungrouped => {
            evidence.push(("ungrouped_min_bytes".to_owned(), config.ungrouped_min_bytes.to_string()));
            (
                format!(
                    "{entity} sent {bytes} bytes to {destinations} external destinations in the window (no peer group to compare with; floor {} bytes)",
                    config.ungrouped_min_bytes
                ),
                config.ungrouped_min_bytes as isize,
                None,
            )
        }
    };
    // 60 at the threshold, +10 per doubling beyond it.
    let doublings = (bytes / threshold.max(1)).max(1).ilog2() as isize;
    let base = if peer_group.is_some() { 60 } else { 50 };
    Finding {
        alert_id: alert_id(DETECTOR, &entity, &key),
        detector: DETECTOR.to_owned(),
        entity,
        key,
        peer_group,
        score: (base + 10 * doublings).clamp(0, 100) as u8,
        summary,
        evidence,
        techniques: vec!["T1048".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    fn small() -> ExfilConfig {
        ExfilConfig {
            min_bytes: 1000,
            min_ratio_to_group: 10,
            min_group_size: 3,
            ungrouped_min_bytes: 5000,
            evidence_destinations: 2,
            ..ExfilConfig::default()
        }
    }

    fn found(scenario: &Scenario, config: ExfilConfig, at: Epoch) -> Vec<Finding> {
        let out = run_scenario(scenario, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at])
    }

    /// The plain version: sum the window at `at` per entity and compare, from scratch.
    fn oracle(scenario: &Scenario, config: &ExfilConfig, at: Epoch) -> Vec<Finding> {
        let mut sent: BTreeMap<String, BTreeMap<String, isize>> = BTreeMap::new();
        for (edge, volume) in scenario.edges_at(at) {
            if let Some((entity, destination, bytes)) = leaving(&edge, &volume) {
                *sent.entry(entity).or_default().entry(destination).or_default() += bytes as isize;
            }
        }
        for destinations in sent.values_mut() {
            destinations.retain(|_, b| *b != 0);
        }
        sent.retain(|_, d| !d.is_empty());
        let total = |entity: &str| sent.get(entity).map_or(0, |d| d.values().sum::<isize>());
        let members = scenario.members_at(at);
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (entity, of) in &members {
            for group in of {
                groups.entry(group.clone()).or_default().push(entity.clone());
            }
        }
        let mut out = Vec::new();
        for (entity, destinations) in &sent {
            let bytes = total(entity);
            let mut baselines = Vec::new();
            for group in members.get(entity).into_iter().flatten() {
                let group_members = &groups[group];
                if group_members.len() >= config.min_group_size {
                    let others = group_members.iter().filter(|m| *m != entity).map(|m| total(m)).sum();
                    baselines.push(Baseline::Group {
                        group: group.clone(),
                        members: group_members.len() as isize,
                        others_bytes: others,
                    });
                }
            }
            if baselines.is_empty() {
                baselines.push(Baseline::Ungrouped);
            }
            let mut top: Vec<(String, isize)> = destinations.iter().map(|(d, b)| (d.clone(), *b)).collect();
            top.sort_by_key(|(d, b)| (Reverse(*b), d.clone()));
            top.truncate(config.evidence_destinations);
            for baseline in baselines {
                if exceeds(config, bytes, &baseline) {
                    out.push(finding(
                        config,
                        entity.clone(),
                        bytes,
                        baseline,
                        destinations.len() as isize,
                        top.clone(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn replica(i: usize, dst: &str) -> Edge {
        edge(&format!("pod:shop/web-{i}"), Some("web"), dst, None, 443)
    }

    #[test]
    fn one_replica_uploading_far_more_than_its_peers_is_found() {
        let mut scenario = Scenario::new(10);
        for i in 1..=4 {
            scenario.contacts.push((replica(i, "ext:198.51.100.7"), 2, vol(3, 0, 200, 5000)));
        }
        scenario.contacts.push((replica(3, "ext:203.0.113.66"), 3, vol(1, 0, 40_000, 100)));
        scenario.contacts.push((replica(3, "ext:203.0.113.67"), 3, vol(1, 0, 9_000, 100)));
        let found = found(&scenario, small(), 5);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!((f.entity.as_str(), f.peer_group.as_deref()), ("pod:shop/web-3", Some("web")));
        let evidence: BTreeMap<_, _> = f.evidence.iter().cloned().collect();
        assert_eq!(evidence["bytes_to_external"], "49200");
        assert_eq!(evidence["group_baseline_bytes"], "200");
        assert_eq!(evidence["top_destinations"], "ext:203.0.113.66=40000,ext:203.0.113.67=9000");
        assert_eq!(f.techniques, vec!["T1048".to_owned()]);
    }

    #[test]
    fn a_group_that_all_uploads_alike_is_not_exfiltration() {
        let mut scenario = Scenario::new(10);
        for i in 1..=4 {
            scenario.contacts.push((replica(i, "ext:198.51.100.7"), 2, vol(3, 0, 30_000 + i as i64 * 1000, 5000)));
        }
        assert!(found(&scenario, small(), 5).is_empty());
    }

    #[test]
    fn an_ungrouped_host_needs_the_higher_floor_and_downloads_from_it_count() {
        let mut scenario = Scenario::new(10);
        scenario.contacts.push((edge("host:10.0.0.8", None, "ext:198.51.100.7", None, 22), 2, vol(1, 0, 3000, 0)));
        assert!(found(&scenario, small(), 5).is_empty(), "3000 < the ungrouped floor of 5000");
        // An external client downloads from the host: its bytes in are bytes leaving the host.
        scenario.contacts.push((edge("ext:203.0.113.9", None, "host:10.0.0.8", None, 21), 2, vol(1, 0, 100, 4000)));
        let found = found(&scenario, small(), 5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].entity, "host:10.0.0.8");
        assert!(found[0].evidence.contains(&("bytes_to_external".to_owned(), "7000".to_owned())));
    }

    #[test]
    fn internal_traffic_is_not_exfiltration() {
        let mut scenario = Scenario::new(10);
        scenario.contacts.push((edge("host:10.0.0.8", None, "host:10.0.0.9", None, 445), 2, vol(1, 0, 90_000, 0)));
        assert!(found(&scenario, small(), 5).is_empty());
    }

    fn contact() -> impl Strategy<Value = (Edge, Epoch, Volume)> {
        let ends = prop::sample::select(vec![
            ("pod:a/w-1", Some("w")),
            ("pod:a/w-2", Some("w")),
            ("pod:a/w-3", Some("w")),
            ("pod:a/w-4", Some("w")),
            ("host:10.0.0.1", None),
            ("ext:198.51.100.1", None),
            ("ext:198.51.100.2", None),
        ]);
        (ends.clone(), ends, 1..14u64, prop::sample::select(vec![0i64, 10, 100, 2000, 9000]), 0..500i64).prop_map(
            |((src, sw), (dst, dw), epoch, out, inb)| (edge(src, sw, dst, dw, 443), epoch, vol(1, 0, out, inb)),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn exfiltration_matches_a_from_scratch_sum_at_every_epoch(contacts in prop::collection::vec(contact(), 0..40)) {
            let mut scenario = Scenario::new(4);
            scenario.contacts = contacts;
            let config = ExfilConfig { min_bytes: 1500, min_ratio_to_group: 3, ungrouped_min_bytes: 8000, ..small() };
            let until = 18;
            let cfg = config.clone();
            let out = run_scenario(&scenario, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&scenario, &config, at), "at epoch {}", at);
            }
        }
    }
}
