//! Exfiltration: an entity sends far more to external addresses in the window than the other
//! members of its peer group do (leave-one-out) and than it has itself in any coarse tick of its
//! long history, and more than an absolute floor. ATT&CK T1048.
//! Bytes leave an entity as the originator's bytes out on its flows to `ext:` destinations and
//! as the responder's bytes in on flows external clients opened to it (a download from the
//! inside). The byte counts are the differences, so the window's sums are consolidation's work.
//! The entity's own baseline is its busiest coarse tick in the volume history
//! ([`crate::volume_history`]), scaled to the window's length.

use std::cmp::Reverse;

use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;

use super::{alert_id, smallest, DetectorInputs, Finding};
use crate::graph::Edge;
use crate::name::{ByText, Name};
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
    /// For an entity with neither such a group nor its own baseline: the least it must send to be
    /// reported on the floor alone; 0 never reports such entities. Unit: bytes.
    pub ungrouped_min_bytes: u64,
    /// How many times its own busiest coarse tick, scaled to the window's length, an entity with
    /// an own baseline must send in the window; 0 ignores the entity's own history. Unit:
    /// multiple (×).
    pub min_ratio_to_own: u64,
    /// Coarse ticks with external traffic the history must hold for an entity before its own
    /// baseline counts. Unit: coarse ticks (`time.history_tick`).
    pub min_history_ticks: usize,
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
            min_ratio_to_own: 10,
            min_history_ticks: 24,
            evidence_destinations: 3,
        }
    }
}

/// `(internal entity, external destination, bytes)` leaving through one edge's volume.
pub fn leaving(edge: &Edge, volume: &Volume) -> Option<(Name, Name, i64)> {
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
    Group { group: Name, members: isize, others_bytes: isize },
    /// No group of `min_group_size`: only the ungrouped floor applies.
    Ungrouped,
}

/// An entity's own long baseline: what the volume history holds for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnBaseline {
    /// Coarse ticks with external traffic in the history.
    pub ticks: isize,
    /// The most it sent in one of them.
    pub peak_tick_bytes: isize,
    /// That peak scaled to the window's length (`peak × window / history_tick`).
    pub peak_per_window: isize,
}

impl OwnBaseline {
    /// The baseline of an entity whose history holds `ticks` (bytes per coarse tick); `None` while
    /// it holds fewer than `min_history_ticks`.
    pub fn of(ticks: impl Iterator<Item = isize>, config: &ExfilConfig, window_ms: u64, tick_ms: u64) -> Option<Self> {
        let (count, peak) = ticks.fold((0isize, 0isize), |(n, peak), bytes| (n + 1, peak.max(bytes)));
        (count > 0 && count as usize >= config.min_history_ticks).then(|| OwnBaseline {
            ticks: count,
            peak_tick_bytes: peak,
            peak_per_window: (peak as i128 * window_ms as i128 / tick_ms.max(1) as i128) as isize,
        })
    }
}

/// Whether `bytes` sent, against `baseline` and the entity's own baseline (if it has one), is
/// reported: a grouped entity must exceed its group and its own baseline, an ungrouped one its own
/// baseline or, without one, the ungrouped floor.
pub fn exceeds(config: &ExfilConfig, bytes: isize, baseline: &Baseline, own: Option<&OwnBaseline>) -> bool {
    let above_own = |own: &OwnBaseline| {
        bytes >= config.min_bytes as isize
            && bytes as i128 >= config.min_ratio_to_own as i128 * own.peak_per_window as i128
    };
    match baseline {
        Baseline::Group { members, others_bytes, .. } => {
            // bytes ≥ ratio × others / (members − 1), without the division.
            bytes >= config.min_bytes as isize
                && bytes as i128 * (*members as i128 - 1) >= config.min_ratio_to_group as i128 * *others_bytes as i128
                && own.is_none_or(above_own)
        }
        Baseline::Ungrouped => match own {
            Some(own) => above_own(own),
            None => config.ungrouped_min_bytes > 0 && bytes >= config.ungrouped_min_bytes as isize,
        },
    }
}

/// Entities sending far above their group (or, without one, above the ungrouped floor).
pub fn detect<'s>(config: &ExfilConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let min_group_size = config.min_group_size as isize;
    let floor =
        config.min_bytes.min(if config.ungrouped_min_bytes > 0 { config.ungrouped_min_bytes } else { u64::MAX });

    // (entity, destination) with the bytes that left towards it as the difference.
    let sent: VecCollection<'s, Epoch, (Name, Name), isize> =
        VecCollection::new(inputs.edges.inner.clone().flat_map(|(edge, time, volume)| {
            leaving(&edge, &volume)
                .filter(|(_, _, bytes)| *bytes != 0)
                .map(|(entity, destination, bytes)| ((entity, destination), time, bytes as isize))
        }));
    let totals = sent.clone().map(|(entity, _)| entity).count_total();

    // (group, (members, Σ bytes)) over the members seen in the window, silent ones included.
    let group_sums = inputs
        .members
        .clone()
        .explode(|(_, group)| Some((group, (1isize, 0isize))))
        .concat(
            inputs.members.clone().join(totals.clone()).explode(|(_, (group, bytes))| Some((group, (0isize, bytes)))),
        )
        .count_total()
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
        .distinct_total();
    let ungrouped = candidates.antijoin(in_usable_group).map(|(entity, bytes)| (entity, (bytes, Baseline::Ungrouped)));

    // Each candidate with its own baseline, where it has one (a left outer join).
    let candidates = grouped.concat(ungrouped);
    let judged = if config.min_ratio_to_own == 0 {
        candidates.map(|(entity, (bytes, baseline))| (entity, (bytes, baseline, None)))
    } else {
        let (config_, window_ms, tick_ms) = (config.clone(), inputs.time.window_ms(), inputs.time.history_tick_ms());
        let own = inputs.volumes.clone().reduce(move |_entity, ticks, output| {
            if let Some(own) = OwnBaseline::of(ticks.iter().map(|(_, bytes)| *bytes), &config_, window_ms, tick_ms) {
                output.push((own, 1));
            }
        });
        candidates
            .clone()
            .join(own.clone())
            .map(|(entity, ((bytes, baseline), own))| (entity, (bytes, baseline, Some(own))))
            .concat(
                candidates
                    .antijoin(own.map(|(entity, _)| entity))
                    .map(|(entity, (bytes, baseline))| (entity, (bytes, baseline, None))),
            )
    };
    let config_ = config.clone();
    let reported = judged.filter(move |(_, (bytes, baseline, own))| exceeds(&config_, *bytes, baseline, own.as_ref()));

    // The destinations that received most, and how many there were.
    let per_destination = sent.count_total();
    let destinations = per_destination.clone().map(|((entity, _), _)| entity).count_total();
    let top = smallest(
        per_destination.map(|((entity, destination), bytes)| (entity, (Reverse(bytes), ByText(destination)))),
        config.evidence_destinations,
    );

    let config = config.clone();
    reported.join(destinations).join(top).map(move |(entity, (((bytes, baseline, own), count), top))| {
        let top = top.into_iter().map(|(Reverse(bytes), ByText(destination))| (destination, bytes)).collect();
        finding(&config, entity, bytes, baseline, own, count, top)
    })
}

pub fn finding(
    config: &ExfilConfig,
    entity: Name,
    bytes: isize,
    baseline: Baseline,
    own: Option<OwnBaseline>,
    destinations: isize,
    top: Vec<(Name, isize)>,
) -> Finding {
    let key = "external".to_owned();
    let top_list = top.iter().map(|(d, b)| format!("{d}={b}")).collect::<Vec<_>>().join(",");
    let mut evidence = vec![
        ("bytes_to_external".to_owned(), bytes.to_string()),
        ("destinations".to_owned(), destinations.to_string()),
        ("top_destinations".to_owned(), top_list),
        ("min_bytes".to_owned(), config.min_bytes.to_string()),
    ];
    let (mut summary, mut threshold, peer_group) = match &baseline {
        Baseline::Group { group, members, others_bytes } => {
            let mean = others_bytes / (members - 1).max(1);
            evidence.push(("peer_group".to_owned(), group.to_string()));
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
        Baseline::Ungrouped if own.is_some() => (
            format!("{entity} sent {bytes} bytes to {destinations} external destinations in the window (no peer group to compare with)"),
            config.min_bytes as isize,
            None,
        ),
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
    if let Some(own) = &own {
        evidence.push(("own_history_ticks".to_owned(), own.ticks.to_string()));
        evidence.push(("own_peak_tick_bytes".to_owned(), own.peak_tick_bytes.to_string()));
        evidence.push(("own_baseline_bytes".to_owned(), own.peak_per_window.to_string()));
        evidence.push(("min_ratio_to_own".to_owned(), config.min_ratio_to_own.to_string()));
        summary.push_str(&format!(
            "; its own busiest coarse tick of {} with external traffic sent {} bytes ({} per window)",
            own.ticks, own.peak_tick_bytes, own.peak_per_window
        ));
        threshold = threshold.max(config.min_ratio_to_own as isize * own.peak_per_window);
    }
    // 60 (50 on a floor) at the threshold, +10 per doubling beyond it.
    let doublings = (bytes / threshold.max(1)).max(1).ilog2() as isize;
    // A finding against a baseline (the group's or its own) is stronger than one on a floor.
    let base = if peer_group.is_some() || own.is_some() { 60 } else { 50 };
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
    use crate::volume_history::{expires_at, settles_at};

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
                *sent.entry(entity.to_string()).or_default().entry(destination.to_string()).or_default() +=
                    bytes as isize;
            }
        }
        for destinations in sent.values_mut() {
            destinations.retain(|_, b| *b != 0);
        }
        sent.retain(|_, d| !d.is_empty());
        let total = |entity: &str| sent.get(entity).map_or(0, |d| d.values().sum::<isize>());
        // The own baselines: every coarse tick in the history at `at`, summed from scratch.
        let time = scenario.time();
        let mut ticks: BTreeMap<String, BTreeMap<Epoch, isize>> = BTreeMap::new();
        if scenario.with_history {
            for (edge, epoch, volume) in &scenario.contacts {
                let coarse = scenario.coarse(*epoch);
                let alive = settles_at(&time, coarse) <= at && at < expires_at(&time, coarse);
                if let Some((entity, _, bytes)) = leaving(edge, volume).filter(|_| alive) {
                    *ticks.entry(entity.to_string()).or_default().entry(coarse).or_default() += bytes as isize;
                }
            }
        }
        let own = |entity: &str| {
            let sent = ticks.get(entity).into_iter().flat_map(|t| t.values().copied().filter(|b| *b != 0));
            OwnBaseline::of(sent, config, time.window_ms(), time.history_tick_ms())
                .filter(|_| config.min_ratio_to_own > 0)
        };
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
                        group: group.into(),
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
            let own = own(entity);
            for baseline in baselines {
                if exceeds(config, bytes, &baseline, own.as_ref()) {
                    out.push(finding(
                        config,
                        entity.into(),
                        bytes,
                        baseline,
                        own,
                        destinations.len() as isize,
                        top.iter().map(|(d, b)| (Name::new(d), *b)).collect(),
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

    /// A scenario with a long history: coarse ticks of 10 epochs (one window), kept for 1000.
    fn with_history() -> (Scenario, ExfilConfig) {
        let mut scenario = Scenario::new(10);
        (scenario.history_tick, scenario.history_ttl, scenario.with_history) = (10, 1000, true);
        (scenario, ExfilConfig { min_ratio_to_own: 2, min_history_ticks: 3, ..small() })
    }

    fn evidence(finding: &Finding) -> BTreeMap<String, String> {
        finding.evidence.iter().cloned().collect()
    }

    #[test]
    fn an_ungrouped_host_is_judged_by_its_own_busiest_tick_instead_of_the_floor() {
        let (mut scenario, config) = with_history();
        let upload =
            |epoch, bytes| (edge("host:10.0.0.8", None, "ext:198.51.100.7", None, 443), epoch, vol(1, 0, bytes, 0));
        // Four ticks of 4000 bytes: its busiest tick, scaled to the (equal) window, is 4000.
        scenario.contacts.extend([5, 15, 25, 35].map(|epoch| upload(epoch, 4000)));
        scenario.contacts.push(upload(52, 6000));
        scenario.contacts.push(upload(58, 5000));
        let out = run_scenario(&scenario, 58, {
            let config = config.clone();
            move |inputs| detect(&config, &inputs)
        });
        assert!(as_set(&out[&55]).is_empty(), "6000 is above the floor of 5000 but below 2 × 4000: {:?}", out[&55]);
        let found = as_set(&out[&58]);
        assert_eq!(found.len(), 1, "{found:?}");
        let evidence = evidence(&found[0]);
        assert_eq!(evidence["bytes_to_external"], "11000");
        assert_eq!(evidence["own_history_ticks"], "4");
        assert_eq!(evidence["own_peak_tick_bytes"], "4000");
        assert_eq!(evidence["own_baseline_bytes"], "4000");
        assert!(!evidence.contains_key("ungrouped_min_bytes"));
        assert_eq!(found, oracle(&scenario, &config, 58));
        // Without the history the floor alone decides, and 6000 is reported.
        scenario.with_history = false;
        assert_eq!(run_scenario(&scenario, 55, move |inputs| detect(&config, &inputs))[&55].len(), 1);
    }

    #[test]
    fn a_replica_that_always_uploads_more_than_its_peers_is_its_own_normal() {
        let (mut scenario, config) = with_history();
        for epoch in [5, 15, 25, 35, 55] {
            for i in 1..=4 {
                scenario.contacts.push((replica(i, "ext:198.51.100.7"), epoch, vol(1, 0, 100, 0)));
            }
            scenario.contacts.push((replica(3, "ext:203.0.113.66"), epoch, vol(1, 0, 3000, 0)));
        }
        let found = |config: ExfilConfig| {
            let out = run_scenario(&scenario, 56, move |inputs| detect(&config, &inputs));
            as_set(&out[&56])
        };
        assert!(found(config.clone()).is_empty(), "3100 is 31 × its peers but its own normal");
        let without_own = found(ExfilConfig { min_ratio_to_own: 0, ..config });
        assert_eq!(without_own.len(), 1, "{without_own:?}");
        assert_eq!(without_own[0].entity, "pod:shop/web-3");
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

        #[test]
        fn exfiltration_with_own_baselines_matches_a_from_scratch_sum_at_every_epoch(
            contacts in prop::collection::vec(contact().prop_flat_map(|(edge, _, volume)| {
                (Just(edge), 1..40u64, Just(volume))
            }), 0..50),
        ) {
            let mut scenario = Scenario::new(4);
            (scenario.history_tick, scenario.history_ttl, scenario.with_history) = (3, 15, true);
            scenario.contacts = contacts;
            let config = ExfilConfig {
                min_bytes: 1500,
                min_ratio_to_group: 3,
                ungrouped_min_bytes: 8000,
                min_ratio_to_own: 2,
                min_history_ticks: 2,
                ..small()
            };
            let until = 45;
            let cfg = config.clone();
            let out = run_scenario(&scenario, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&scenario, &config, at), "at epoch {}", at);
            }
        }
    }
}
