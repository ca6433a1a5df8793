//! New edge / rare connection: a workload edge that the long-horizon history has never seen
//! before its presence in the window (new), or saw in only a few coarse epochs (rare), once the
//! learning period is over. Internal admin-protocol edges that are *new* are left to the
//! lateral-movement detector when it is enabled (it reports them per entity, with the
//! protocol's technique); their *rare* reappearances are reported here. ATT&CK T1021 for
//! internal admin ports.

use std::time::Duration;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::lateral::{self, LateralConfig};
use super::novelty::{novelty, Novelty};
use super::{alert_id, service, DetectorInputs, Finding};
use crate::entity::{is_external_node, is_overflow_node, is_special_node};
use crate::graph::WorkloadEdge;
use crate::time::Epoch;

pub const DETECTOR: &str = "new_edge";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewEdgeConfig {
    pub enabled: bool,
    /// No edge counts as new or rare until this long after the earliest coarse epoch the history
    /// holds (the end of its first coarse tick). Unit: duration (e.g. "1d").
    #[serde(with = "humantime_serde")]
    pub learning_period: Duration,
    /// An edge the history saw in at least one and at most this many coarse epochs before the
    /// window is rare and reported; 0 reports never-seen edges only. Unit: coarse epochs
    /// (`time.history_tick`s).
    pub rare_max_epochs: usize,
    /// Whether edges with an external end (`ext:` address or `ext-group:` external group) count;
    /// off, only internal edges do (external peers come and go too often to be news). Unit: flag.
    pub include_external: bool,
    /// Set by [`findings`](super::findings) from the lateral-movement section: which edges are
    /// admin edges, and whether lateral movement reports the new ones.
    #[serde(skip)]
    pub lateral: Option<LateralConfig>,
}

impl Default for NewEdgeConfig {
    fn default() -> Self {
        NewEdgeConfig {
            enabled: true,
            learning_period: Duration::from_secs(24 * 3600),
            rare_max_epochs: 2,
            include_external: false,
            lateral: None,
        }
    }
}

impl NewEdgeConfig {
    /// This configuration alongside the lateral-movement detector's.
    pub fn alongside(&self, lateral: &LateralConfig) -> NewEdgeConfig {
        NewEdgeConfig { lateral: Some(lateral.clone()), ..self.clone() }
    }

    fn admin(&self) -> LateralConfig {
        self.lateral.clone().unwrap_or_default()
    }

    /// Whether the finding for `edge` with `novelty` is this detector's to report.
    pub fn reports(&self, edge: &WorkloadEdge, novelty: &Novelty) -> bool {
        let deferred =
            self.lateral.as_ref().is_some_and(|l| l.enabled && l.is_admin(edge)) && novelty.prior_epochs == 0;
        !deferred
    }

    /// Whether the detector looks at `edge`: never one to or from a multicast group, the broadcast
    /// or the unspecified address (a host's neighbour discovery is new every time); external ends
    /// only with `include_external`.
    pub fn considers(&self, edge: &WorkloadEdge) -> bool {
        let special = [&edge.src, &edge.dst].into_iter().any(|end| is_special_node(end) || is_overflow_node(end));
        !special && (self.include_external || (!is_external_node(&edge.src) && !is_external_node(&edge.dst)))
    }
}

/// Workload edges new to, or rare in, the long-horizon history.
pub fn detect<'s>(config: &NewEdgeConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let (keep, report) = (config.clone(), config.clone());
    let learning_ms = config.learning_period.as_millis() as u64;
    novelty(inputs, move |edge| keep.considers(edge), config.rare_max_epochs, learning_ms)
        .filter(move |(edge, novelty)| report.reports(edge, novelty))
        .map({
            let config = config.clone();
            move |(edge, novelty)| finding(&config, &edge, &novelty)
        })
}

pub fn finding(config: &NewEdgeConfig, edge: &WorkloadEdge, novelty: &Novelty) -> Finding {
    let svc = service(edge.dst_port, edge.protocol);
    let key = format!("{}:{svc}", edge.dst);
    let admin = config.admin();
    let is_admin = admin.is_admin(edge);
    let kind = if novelty.prior_epochs == 0 { "new" } else { "rare" };
    let summary = match novelty.last_seen_before {
        None => format!("{} → {key} is a new edge: the history has not seen it before this window", edge.src),
        Some(last) => format!(
            "{} → {key} is a rare edge: the history saw it in only {} coarse epochs before this window, last at {last}",
            edge.src, novelty.prior_epochs
        ),
    };
    let mut evidence = vec![
        ("kind".to_owned(), kind.to_owned()),
        ("destination".to_owned(), edge.dst.to_string()),
        ("service".to_owned(), svc),
        ("history_prior_epochs".to_owned(), novelty.prior_epochs.to_string()),
        ("rare_max_epochs".to_owned(), config.rare_max_epochs.to_string()),
        (
            "learning_period".to_owned(),
            humantime_serde::re::humantime::format_duration(config.learning_period).to_string(),
        ),
    ];
    if let Some(last) = novelty.last_seen_before {
        evidence.push(("history_last_seen_epoch".to_owned(), last.to_string()));
    }
    let score = match (kind, is_admin) {
        ("new", true) => 70,
        ("new", false) => 60,
        (_, true) => 50,
        _ => 40,
    };
    Finding {
        alert_id: alert_id(DETECTOR, &edge.src, &key),
        detector: DETECTOR.to_owned(),
        entity: edge.src.clone(),
        key,
        peer_group: edge.src.starts_with("workload:").then(|| edge.src.clone()),
        score,
        summary,
        evidence,
        techniques: if is_admin { lateral::techniques(edge.dst_port) } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::detectors::lateral::tests::{contact, oracle_novelty, scenario};
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    fn quick() -> NewEdgeConfig {
        NewEdgeConfig { learning_period: Duration::ZERO, ..NewEdgeConfig::default() }
            .alongside(&LateralConfig::default())
    }

    fn found(s: &Scenario, config: NewEdgeConfig, at: Epoch) -> Vec<(String, String, String)> {
        let out = run_scenario(s, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at]).into_iter().map(|f| (f.entity.to_string(), f.key, f.evidence[0].1.clone())).collect()
    }

    fn oracle(s: &Scenario, config: &NewEdgeConfig, at: Epoch) -> Vec<Finding> {
        let novel = oracle_novelty(
            s,
            at,
            |w| config.considers(w),
            config.rare_max_epochs,
            config.learning_period.as_millis() as u64,
        );
        let mut out: Vec<Finding> =
            novel.iter().filter(|(w, n)| config.reports(w, n)).map(|(w, n)| finding(config, w, n)).collect();
        out.sort();
        out
    }

    #[test]
    fn a_new_internal_edge_is_found_at_workload_level() {
        let mut s = scenario();
        s.contacts.push((edge("pod:shop/web-2", Some("web"), "host:10.0.0.5", None, 5432), 10, vol(1, 0, 400, 900)));
        let found = found(&s, quick(), 10);
        assert_eq!(found, vec![("web".to_owned(), "host:10.0.0.5:5432/tcp".to_owned(), "new".to_owned())]);
    }

    #[test]
    fn an_edge_seen_in_few_coarse_epochs_is_rare_and_in_many_is_not() {
        let mut s = scenario();
        let db = edge("host:10.0.0.7", None, "host:10.0.0.9", None, 5432);
        s.contacts.push((db.clone(), 2, vol(1, 0, 400, 900)));
        s.contacts.push((db.clone(), 30, vol(1, 0, 400, 900)));
        assert_eq!(found(&s, quick(), 30)[0].2, "rare");
        s.contacts.push((db.clone(), 6, vol(1, 0, 400, 900)));
        s.contacts.push((db, 10, vol(1, 0, 400, 900)));
        assert!(found(&s, quick(), 30).is_empty(), "seen in 3 coarse epochs > rare_max_epochs 2");
    }

    #[test]
    fn new_admin_edges_are_left_to_lateral_movement_unless_it_is_off() {
        let mut s = scenario();
        s.contacts.push((edge("host:10.0.0.7", None, "host:10.0.0.8", None, 22), 10, vol(1, 0, 400, 900)));
        assert!(found(&s, quick(), 10).is_empty());
        let alone = NewEdgeConfig { learning_period: Duration::ZERO, ..NewEdgeConfig::default() }
            .alongside(&LateralConfig { enabled: false, ..LateralConfig::default() });
        let out = run_scenario(&s, 10, move |inputs| detect(&alone, &inputs));
        let f = &as_set(&out[&10])[0];
        assert_eq!((f.key.as_str(), f.score), ("host:10.0.0.8:22/tcp", 70));
        assert_eq!(f.techniques, vec!["T1021".to_owned(), "T1021.004".to_owned()]);
    }

    #[test]
    fn external_edges_count_only_when_asked_and_learning_holds_everything_back() {
        let mut s = scenario();
        s.contacts.push((edge("host:10.0.0.7", None, "ext:198.51.100.9", None, 443), 10, vol(1, 0, 400, 900)));
        assert!(found(&s, quick(), 10).is_empty());
        let external = NewEdgeConfig { include_external: true, ..quick() };
        assert_eq!(found(&s, external.clone(), 10).len(), 1);
        let learning = NewEdgeConfig { learning_period: Duration::from_millis(7), ..external };
        assert!(found(&s, learning, 10).is_empty(), "10 < start 4 + learning 7");
    }

    #[test]
    fn the_addresses_of_one_external_group_are_one_external_destination() {
        let mut s = scenario();
        let saas = |addr: &str| edge("pod:shop/web-1", Some("web"), addr, Some("ext-group:saas"), 443);
        s.contacts.push((saas("ext:198.51.100.1"), 2, vol(1, 0, 400, 900)));
        s.contacts.push((saas("ext:198.51.100.2"), 10, vol(1, 0, 400, 900)));
        s.contacts.push((edge("pod:shop/web-1", Some("web"), "ext:203.0.113.9", None, 443), 10, vol(1, 0, 400, 900)));
        let external = NewEdgeConfig { include_external: true, rare_max_epochs: 0, ..quick() };
        let new = vec![("web".to_owned(), "ext:203.0.113.9:443/tcp".to_owned(), "new".to_owned())];
        assert_eq!(found(&s, external, 10), new, "the group's second address is not a new edge");
        assert!(found(&s, quick(), 10).is_empty(), "a group's node is external");
        let ssh = WorkloadEdge { src: "web".into(), dst: "ext-group:saas".into(), dst_port: 22, protocol: 6 };
        assert!(!LateralConfig::default().is_admin(&ssh), "SSH to an external group is not lateral movement");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn new_edges_match_a_from_scratch_history_check_at_every_epoch(
            contacts in prop::collection::vec(contact(), 0..40),
            learning in 0..6u64,
            rare_max_epochs in 0..3usize,
            include_external: bool,
            lateral_enabled: bool,
        ) {
            let mut s = Scenario::new(4);
            s.history_tick = 3;
            s.history_ttl = 12;
            s.with_history = true;
            s.contacts = contacts;
            let config = NewEdgeConfig {
                learning_period: Duration::from_millis(learning),
                rare_max_epochs,
                include_external,
                ..NewEdgeConfig::default()
            }
            .alongside(&LateralConfig { enabled: lateral_enabled, ..LateralConfig::default() });
            let until = 34;
            let cfg = config.clone();
            let out = run_scenario(&s, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&s, &config, at), "at epoch {}", at);
            }
        }
    }
}
