//! Detectors: dataflows from the service graph and peer groups to findings. A finding is a fact
//! ("pod X talks to Y, which none of its peers touch") that holds while its evidence is in the
//! window; the lifecycle stage turns findings appearing and disappearing into alert events.

pub mod peer_unique;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

/// Parameters of every detector, one section each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorsConfig {
    pub peer_unique_destination: peer_unique::PeerUniqueConfig,
}

/// What a detector found. Its identity is `(detector, entity, key)`; the rest may change while it
/// holds (a change is an alert update).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// Deterministic id of the alert this finding raises: see [`alert_id`].
    pub alert_id: String,
    pub detector: String,
    pub entity: String,
    /// What distinguishes findings of one detector about one entity (e.g. the destination).
    pub key: String,
    pub peer_group: Option<String>,
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

/// Every enabled detector over the windowed entity graph.
pub fn findings<'s>(
    config: &DetectorsConfig,
    edges: VecCollection<'s, Epoch, Edge, Volume>,
    members: VecCollection<'s, Epoch, (String, String)>,
) -> VecCollection<'s, Epoch, Finding> {
    let scope = edges.scope();
    let mut all = Vec::new();
    if config.peer_unique_destination.enabled {
        all.push(peer_unique::peer_unique_destinations(&config.peer_unique_destination, edges, members));
    }
    differential_dataflow::collection::concatenate(scope, all)
}
