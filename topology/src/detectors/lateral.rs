//! Lateral movement: a new internal edge on a remote-administration protocol (SSH, RDP, SMB,
//! WinRM, …): an internal source opening an admin service on an internal destination when the
//! long-horizon history has not seen that workload edge before. ATT&CK T1021 and its
//! sub-technique for the protocol.

use std::time::Duration;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::novelty::{novelty, Novelty};
use super::{alert_id, service, DetectorInputs, Finding};
use crate::entity::{is_external_node, is_overflow_node, is_special_node};
use crate::graph::{Edge, WorkloadEdge};
use crate::time::Epoch;

pub const DETECTOR: &str = "lateral_movement";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LateralConfig {
    pub enabled: bool,
    /// Destination ports of remote-administration protocols. Unit: port numbers.
    pub admin_ports: Vec<u16>,
    /// The transport protocols those ports count on. Unit: IANA protocol numbers (6 TCP, 17 UDP).
    pub protocols: Vec<u8>,
    /// No edge counts as new until this long after the earliest coarse epoch the history holds
    /// (the end of its first coarse tick), so a fresh deployment does not report every edge.
    /// Unit: duration (e.g. "1d").
    #[serde(with = "humantime_serde")]
    pub learning_period: Duration,
}

impl Default for LateralConfig {
    fn default() -> Self {
        LateralConfig {
            enabled: true,
            admin_ports: vec![22, 445, 3389, 5985, 5986],
            protocols: vec![6, 17],
            learning_period: Duration::from_secs(24 * 3600),
        }
    }
}

impl LateralConfig {
    /// Whether a workload edge is internal (neither end an external address or external group,
    /// nor a multicast, broadcast or unspecified address) on an admin service.
    pub fn is_admin(&self, edge: &WorkloadEdge) -> bool {
        ![&edge.src, &edge.dst]
            .into_iter()
            .any(|end| is_external_node(end) || is_special_node(end) || is_overflow_node(end))
            && self.admin_ports.contains(&edge.dst_port)
            && self.protocols.contains(&edge.protocol)
    }
}

/// The ATT&CK ids of remote access on `port`.
pub fn techniques(port: u16) -> Vec<String> {
    let sub = match port {
        3389 => Some("T1021.001"),
        445 | 139 => Some("T1021.002"),
        135 => Some("T1021.003"),
        22 => Some("T1021.004"),
        5900 => Some("T1021.005"),
        5985 | 5986 => Some("T1021.006"),
        _ => None,
    };
    std::iter::once("T1021").chain(sub).map(str::to_owned).collect()
}

/// Entity-level edges on admin services whose workload edge the history has not seen.
pub fn detect<'s>(config: &LateralConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let (keep, keep_edges) = (config.clone(), config.clone());
    let learning_ms = config.learning_period.as_millis() as u64;
    let new = novelty(inputs, move |edge| keep.is_admin(edge), 0, learning_ms);

    // Each admin edge once, with whether any of its flows in the window succeeded.
    let answered = inputs
        .edges
        .clone()
        .filter(move |edge| keep_edges.is_admin(&WorkloadEdge::from(edge)))
        .map(|edge| (edge, ()))
        .reduce(|_edge, volume, output| output.push((volume[0].1.flows > volume[0].1.failed, 1isize)));

    let learning = config.learning_period;
    answered
        .map(|(edge, answered)| (WorkloadEdge::from(&edge), (edge, answered)))
        .join(new)
        .map(move |(_, ((edge, answered), novelty))| finding(&edge, answered, &novelty, learning))
}

pub fn finding(edge: &Edge, answered: bool, novelty: &Novelty, learning: Duration) -> Finding {
    let src = edge.src.entity.clone();
    let svc = service(edge.dst_port, edge.protocol);
    let key = format!("{}:{svc}", edge.dst.entity);
    let workload_edge = WorkloadEdge::from(edge);
    Finding {
        alert_id: alert_id(DETECTOR, &src, &key),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{src} {} {svc} on {}: the internal admin edge {} → {} is new (not in the history before this window)",
            if answered { "opened" } else { "tried" },
            edge.dst.entity,
            workload_edge.src,
            workload_edge.dst
        ),
        evidence: vec![
            ("destination".to_owned(), edge.dst.entity.to_string()),
            ("service".to_owned(), svc),
            ("workload_edge".to_owned(), format!("{} -> {}", workload_edge.src, workload_edge.dst)),
            ("answered".to_owned(), answered.to_string()),
            ("history_prior_epochs".to_owned(), novelty.prior_epochs.to_string()),
            ("learning_period".to_owned(), humantime_serde::re::humantime::format_duration(learning).to_string()),
        ],
        entity: src,
        key,
        peer_group: edge.src.peer_group().cloned(),
        score: if answered { 80 } else { 50 },
        techniques: techniques(edge.dst_port),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};
    use crate::volume::Volume;

    /// The plain version of [`novelty`] at `at`, from the scenario's window and history.
    pub fn oracle_novelty(
        scenario: &Scenario,
        at: Epoch,
        keep: impl Fn(&WorkloadEdge) -> bool,
        max_prior_epochs: usize,
        learning_ms: u64,
    ) -> BTreeMap<WorkloadEdge, Novelty> {
        let history = scenario.history_at(at);
        let Some(start) = history.iter().map(|(_, coarse)| *coarse).min() else { return BTreeMap::new() };
        let mut first: BTreeMap<WorkloadEdge, Epoch> = BTreeMap::new();
        for (edge, epoch) in scenario.contacts_at(at).keys() {
            let w = WorkloadEdge::from(edge);
            if keep(&w) {
                let f = first.entry(w).or_insert(*epoch);
                *f = (*f).min(*epoch);
            }
        }
        let mut out = BTreeMap::new();
        for (w, first) in first {
            let prior: BTreeSet<Epoch> =
                history.iter().filter(|(h, coarse)| *h == w && *coarse < first).map(|(_, c)| *c).collect();
            if prior.len() <= max_prior_epochs && first >= start + learning_ms {
                out.insert(w, Novelty { prior_epochs: prior.len(), last_seen_before: prior.last().copied() });
            }
        }
        out
    }

    fn oracle(scenario: &Scenario, config: &LateralConfig, at: Epoch) -> Vec<Finding> {
        let new = oracle_novelty(scenario, at, |w| config.is_admin(w), 0, config.learning_period.as_millis() as u64);
        let mut out: Vec<Finding> = scenario
            .edges_at(at)
            .into_iter()
            .filter_map(|(edge, volume): (Edge, Volume)| {
                new.get(&WorkloadEdge::from(&edge))
                    .map(|n| finding(&edge, volume.flows > volume.failed, n, config.learning_period))
            })
            .collect();
        out.sort();
        out
    }

    fn quick() -> LateralConfig {
        LateralConfig { learning_period: Duration::ZERO, ..LateralConfig::default() }
    }

    fn found(scenario: &Scenario, config: LateralConfig, at: Epoch) -> Vec<(String, String)> {
        let out = run_scenario(scenario, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at]).into_iter().map(|f| (f.entity.to_string(), f.key)).collect()
    }

    /// Window 3, coarse ticks of 4, a history that remembers 100; a baseline contact at epoch 1
    /// starts the history (at coarse epoch 4).
    pub fn scenario() -> Scenario {
        let mut scenario = Scenario::new(3);
        scenario.history_tick = 4;
        scenario.history_ttl = 100;
        scenario.with_history = true;
        scenario.contacts.push((edge("host:10.0.0.1", None, "host:10.0.0.2", None, 53), 1, vol(1, 0, 60, 90)));
        scenario
    }

    #[test]
    fn a_new_ssh_edge_is_lateral_movement_with_its_technique() {
        let mut s = scenario();
        s.contacts.push((edge("pod:shop/web-2", Some("web"), "host:10.0.0.5", None, 22), 10, vol(1, 0, 4000, 9000)));
        let out = run_scenario(&s, 13, |inputs| detect(&quick(), &inputs));
        for at in [10, 11, 12] {
            let found = as_set(&out[&at]);
            assert_eq!(found.len(), 1, "at {at}: {found:?}");
            assert_eq!((found[0].entity.as_str(), found[0].key.as_str()), ("pod:shop/web-2", "host:10.0.0.5:22/tcp"));
            assert_eq!(found[0].techniques, vec!["T1021".to_owned(), "T1021.004".to_owned()]);
            assert_eq!(found[0].score, 80);
        }
        assert!(as_set(&out[&13]).is_empty(), "the contact left the window");
    }

    #[test]
    fn an_admin_edge_the_history_knows_is_not_new() {
        let mut s = scenario();
        let rdp = edge("host:10.0.0.7", None, "host:10.0.0.8", None, 3389);
        s.contacts.push((rdp.clone(), 2, vol(1, 0, 4000, 9000)));
        s.contacts.push((rdp, 10, vol(1, 0, 4000, 9000)));
        assert!(found(&s, quick(), 10).is_empty());
    }

    #[test]
    fn external_and_non_admin_edges_are_not_lateral_movement() {
        let mut s = scenario();
        s.contacts.push((edge("host:10.0.0.7", None, "ext:198.51.100.4", None, 22), 10, vol(1, 0, 4000, 9000)));
        s.contacts.push((edge("host:10.0.0.7", None, "host:10.0.0.9", None, 5432), 10, vol(1, 0, 4000, 9000)));
        assert!(found(&s, quick(), 10).is_empty());
    }

    #[test]
    fn nothing_is_new_during_the_learning_period() {
        let mut s = scenario();
        s.contacts.push((edge("host:10.0.0.7", None, "host:10.0.0.8", None, 445), 10, vol(2, 2, 120, 0)));
        let learning = LateralConfig { learning_period: Duration::from_millis(10), ..LateralConfig::default() };
        assert!(found(&s, learning, 10).is_empty(), "10 < start 4 + learning 10");
        let found = run_scenario(&s, 10, |inputs| detect(&quick(), &inputs));
        let f = &as_set(&found[&10])[0];
        assert_eq!((f.score, f.techniques[1].as_str()), (50, "T1021.002"), "refused SMB: a weaker finding");
    }

    pub fn contact() -> impl Strategy<Value = (Edge, Epoch, Volume)> {
        let ends = prop::sample::select(vec![
            ("pod:a/w-1", Some("w")),
            ("pod:a/w-2", Some("w")),
            ("host:10.0.0.1", None),
            ("host:10.0.0.2", None),
            ("ext:198.51.100.1", None),
            ("ext:198.51.100.2", Some("ext-group:saas")),
        ]);
        (ends.clone(), ends, prop::sample::select(vec![22u16, 445, 80]), 1..30u64, 0..2i64).prop_map(
            |((src, sw), (dst, dw), port, epoch, failed)| (edge(src, sw, dst, dw, port), epoch, vol(1, failed, 100, 0)),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn lateral_movement_matches_a_from_scratch_history_check_at_every_epoch(
            contacts in prop::collection::vec(contact(), 0..40),
            learning in 0..6u64,
        ) {
            let mut s = Scenario::new(4);
            s.history_tick = 3;
            s.history_ttl = 12;
            s.with_history = true;
            s.contacts = contacts;
            let config = LateralConfig { learning_period: Duration::from_millis(learning), ..LateralConfig::default() };
            let until = 34;
            let cfg = config.clone();
            let out = run_scenario(&s, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&s, &config, at), "at epoch {}", at);
            }
        }
    }
}
