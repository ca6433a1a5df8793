//! Detectors: dataflows from the service graph and peer groups to findings. A finding is a fact
//! ("pod X talks to Y, which none of its peers touch") that holds while its evidence is in the
//! window; the lifecycle stage turns findings appearing and disappearing into alert events.

pub mod beacon;
pub mod entity_cap;
pub mod exfil;
pub mod intel;
pub mod lateral;
pub mod new_edge;
pub mod novelty;
pub mod peer_deviation;
pub mod peer_unique;
pub mod scan;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::{Edge, WorkloadEdge};
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// Parameters of every detector, one section each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorsConfig {
    pub peer_unique_destination: peer_unique::PeerUniqueConfig,
    pub peer_group_deviation: peer_deviation::PeerDeviationConfig,
    pub entity_cap: entity_cap::EntityCapConfig,
    pub scan: scan::ScanConfig,
    pub beaconing: beacon::BeaconConfig,
    pub exfiltration: exfil::ExfilConfig,
    pub lateral_movement: lateral::LateralConfig,
    pub new_edge: new_edge::NewEdgeConfig,
    pub threat_intel: intel::IntelConfig,
}

/// What a detector found. Its identity is `(detector, entity, key)`; the rest may change while it
/// holds (a change is an alert update).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// Deterministic id of the alert this finding raises: see [`alert_id`].
    pub alert_id: String,
    pub detector: String,
    pub entity: Name,
    /// What distinguishes findings of one detector about one entity (e.g. the destination).
    pub key: String,
    pub peer_group: Option<Name>,
    /// Strength of the finding, 0..=100.
    pub score: u8,
    pub summary: String,
    /// The numbers and names that made the detector fire, as (name, value).
    pub evidence: Vec<(String, String)>,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
}

/// The alert id of `(detector, entity, key)`: the first 128 bits of their SHA-256, in hex. A replay
/// of the same flows gives the same ids, so every downstream system can deduplicate on it.
pub fn alert_id(detector: &str, entity: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    for part in [detector, entity, key] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// What every detector may read. Cloning a collection clones a handle, not data.
#[derive(Clone)]
pub struct DetectorInputs<'s> {
    /// Each flow's edge with its epoch, windowed (+volume at the epoch, −volume one window later):
    /// for detectors that need the timing of contacts (beaconing).
    pub contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    /// The windowed entity-level service graph: `contacts` without the epoch.
    pub edges: VecCollection<'s, Epoch, Edge, Volume>,
    /// The entity edges present in the window, each once ([`crate::graph::live_edges`]): for
    /// detectors that need only who talks to whom, so that traffic on a known edge costs them nothing.
    pub live: VecCollection<'s, Epoch, Edge>,
    /// `edges` arranged by edge ([`crate::graph::arrange_edges`]): join against it for an edge's
    /// windowed volume instead of arranging `edges` again.
    pub by_edge: crate::graph::EdgeArrangement<'s>,
    /// `(workload edge, first epoch in the window)` for every workload edge in the window: the
    /// service graph's workload-level first-seen (see [`crate::graph::first_contacts`]).
    pub first_contacts: VecCollection<'s, Epoch, (WorkloadEdge, Epoch)>,
    /// `(entity, peer group)` for the members seen in the window.
    pub members: VecCollection<'s, Epoch, (Name, Name)>,
    /// Threat-intel indicators currently listed.
    pub indicators: VecCollection<'s, Epoch, Indicator>,
    /// Long-horizon history: `(workload edge, coarse epoch)` present from the coarse epoch it was
    /// seen in until that epoch plus the history's time to live.
    pub history: VecCollection<'s, Epoch, (WorkloadEdge, Epoch)>,
    /// Long-horizon volume history: `(entity, coarse epoch)` with the bytes the entity sent to
    /// external addresses in that coarse tick as multiplicity (see [`crate::volume_history`]).
    pub volumes: crate::volume_history::VolumeHistory<'s>,
    /// How time is cut (window and coarse tick lengths, for detectors that compare them).
    pub time: crate::time::TimeConfig,
}

/// A threat-intel indicator: an address or network that is known bad.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Indicator {
    /// The network in CIDR form (a single address is a /32 or /128).
    pub network: ipnet::IpNet,
    /// Where the indicator comes from (feed name).
    pub source: String,
    /// What it is ("emotet C2", ...).
    pub description: String,
}

/// A service as findings name it: "22/tcp", "53/udp", "0/icmp".
pub fn service(port: u16, protocol: u8) -> String {
    match protocol {
        1 => format!("{port}/icmp"),
        6 => format!("{port}/tcp"),
        17 => format!("{port}/udp"),
        58 => format!("{port}/icmpv6"),
        other => format!("{port}/proto-{other}"),
    }
}

/// How many buckets [`smallest`] spreads one key's values over.
const SAMPLE_BUCKETS: u64 = 256;

/// The `count` smallest values of every key, for evidence samples. A single reduce over a key's
/// values would redo work proportional to all of them on every change (a scanner touching a
/// million hosts would make each update cost a million); here the values are first spread over
/// [`SAMPLE_BUCKETS`] buckets by hash, each bucket keeps its `count` smallest, and the key keeps
/// the smallest of those, so an update costs about `n / 256 + 256 × count` values.
pub fn smallest<'s, K, V>(
    values: VecCollection<'s, Epoch, (K, V)>,
    count: usize,
) -> VecCollection<'s, Epoch, (K, Vec<V>)>
where
    K: differential_dataflow::ExchangeData + std::hash::Hash,
    V: differential_dataflow::ExchangeData + std::hash::Hash,
{
    use differential_dataflow::hashable::Hashable;
    values
        .map(|(key, value)| {
            let bucket = value.hashed() % SAMPLE_BUCKETS;
            ((key, bucket), value)
        })
        .reduce(move |_, input, output: &mut Vec<(V, isize)>| {
            output.extend(input.iter().take(count).map(|(value, _)| ((*value).clone(), 1)));
        })
        .map(|((key, _bucket), value)| (key, value))
        .reduce(move |_, input, output| {
            output.push((input.iter().take(count).map(|(value, _)| (*value).clone()).collect::<Vec<V>>(), 1));
        })
}

/// Every enabled detector over the windowed graph.
pub fn findings<'s>(config: &DetectorsConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let scope = inputs.edges.scope();
    let mut all = Vec::new();
    if config.peer_unique_destination.enabled {
        all.push(peer_unique::peer_unique_destinations(&config.peer_unique_destination, inputs));
    }
    if config.peer_group_deviation.enabled {
        all.push(peer_deviation::detect(&config.peer_group_deviation, inputs));
    }
    if config.entity_cap.enabled {
        all.push(entity_cap::detect(&config.entity_cap, inputs));
    }
    if config.scan.enabled {
        all.push(scan::detect(&config.scan, inputs));
    }
    if config.beaconing.enabled {
        all.push(beacon::detect(&config.beaconing, inputs));
    }
    if config.exfiltration.enabled {
        all.push(exfil::detect(&config.exfiltration, inputs));
    }
    if config.lateral_movement.enabled {
        all.push(lateral::detect(&config.lateral_movement, inputs));
    }
    if config.new_edge.enabled {
        all.push(new_edge::detect(&config.new_edge.alongside(&config.lateral_movement), inputs));
    }
    if config.threat_intel.enabled {
        all.push(intel::detect(&config.threat_intel, inputs));
    }
    differential_dataflow::collection::concatenate(scope, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    #[test]
    fn every_section_has_defaults_and_a_partial_section_keeps_the_rest() {
        let config: DetectorsConfig = serde_json::from_str(
            r#"{"scan": {"min_distinct_ports": 20}, "lateral_movement": {"learning_period": "2h"}}"#,
        )
        .unwrap();
        assert_eq!(config.scan.min_distinct_ports, 20);
        assert_eq!(config.scan.min_distinct_hosts, scan::ScanConfig::default().min_distinct_hosts);
        assert_eq!(config.lateral_movement.learning_period, std::time::Duration::from_secs(7200));
        let round: DetectorsConfig = serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(round, config);
        assert!(serde_json::from_str::<DetectorsConfig>(r#"{"scan": {"min_ports": 1}}"#).is_err());
    }

    #[test]
    fn all_detectors_run_together_and_each_reports_under_its_own_name() {
        let mut s = Scenario::new(10);
        for port in 1..=60 {
            s.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, port), 2, vol(1, 1, 60, 0)));
        }
        s.indicators.push((
            Indicator { network: "203.0.113.0/24".parse().unwrap(), source: "feed".into(), description: "C2".into() },
            1,
            1,
        ));
        s.contacts.push((edge("host:10.0.0.7", None, "ext:203.0.113.66", None, 443), 2, vol(1, 0, 60, 60)));
        let out = run_scenario(&s, 3, |inputs| findings(&DetectorsConfig::default(), &inputs));
        let mut detectors: Vec<String> = as_set(&out[&3]).into_iter().map(|f| f.detector).collect();
        detectors.sort();
        detectors.dedup();
        assert_eq!(detectors, vec![scan::DETECTOR.to_owned(), intel::DETECTOR.to_owned()], "sorted by name");
    }
}
