//! Entity cap: a source whose distinct destinations in the window went over the pipeline's
//! per-source cap (`input.max_destinations_per_source`). Beyond the cap its destinations are
//! folded into one overflow destination so memory stays bounded; this detector says so, since a
//! source with that many destinations is itself worth a look (a sweep, a worm, a broken client).
//! Likewise a destination reached from the overflow source (`overflow:sources`: the sources
//! beyond `input.max_sources`): a flood from more distinct sources than the pipeline keeps,
//! spoofed or a botnet, found at its target.

use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::{alert_id, DetectorInputs, Finding};
use crate::time::Epoch;

pub const DETECTOR: &str = "entity_cap";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntityCapConfig {
    pub enabled: bool,
}

impl Default for EntityCapConfig {
    fn default() -> Self {
        EntityCapConfig { enabled: true }
    }
}

pub fn detect<'s>(_config: &EntityCapConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let flooded =
        inputs.live.clone().filter(|edge| edge.src.is_overflow_sources()).map(|edge| edge.dst.entity).distinct_total().map(
            |target| Finding {
                alert_id: alert_id(DETECTOR, &target, "sources"),
                detector: DETECTOR.to_owned(),
                summary: format!(
                    "{target} received flows from more distinct sources in the window than the pipeline keeps (input.max_sources): a flood from many, possibly spoofed, sources"
                ),
                evidence: vec![("cap".to_owned(), "input.max_sources".to_owned())],
                key: "sources".to_owned(),
                entity: target,
                peer_group: None,
                score: 70,
                techniques: vec!["T1498".to_owned()],
            },
        );
    let sweeping = inputs.live.clone().filter(|edge| edge.dst.is_overflow()).map(|edge| edge.src.entity).distinct_total().map(|source| Finding {
        alert_id: alert_id(DETECTOR, &source, "destinations"),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{source} contacted more distinct destinations in the window than the per-source cap; the rest are counted as one"
        ),
        evidence: vec![("cap".to_owned(), "input.max_destinations_per_source".to_owned())],
        key: "destinations".to_owned(),
        entity: source,
        peer_group: None,
        score: 50,
        techniques: vec!["T1046".to_owned()],
    });
    sweeping.concat(flooded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::OVERFLOW_ENTITY;
    use crate::testing::{detector_inputs, edge, run_collection};

    #[test]
    fn a_source_with_overflowed_destinations_is_found_once() {
        let updates = vec![
            (edge("host:10.0.0.5", None, OVERFLOW_ENTITY, None, 22), 1000, 7),
            (edge("host:10.0.0.5", None, OVERFLOW_ENTITY, None, 23), 1000, 3),
            (edge("host:10.0.0.6", None, "host:10.0.0.7", None, 22), 1000, 1),
        ];
        let out =
            run_collection(updates, 2000, |contacts| detect(&EntityCapConfig::default(), &detector_inputs(contacts)));
        let found: Vec<String> = out.into_iter().map(|(f, _): (Finding, isize)| f.entity.to_string()).collect();
        assert_eq!(found, vec!["host:10.0.0.5".to_owned()]);
    }

    #[test]
    fn a_target_reached_from_the_overflow_source_is_found_once() {
        let updates = vec![
            (edge(crate::entity::OVERFLOW_SOURCES, None, "host:10.0.0.80", None, 443), 1000, 900),
            (edge(crate::entity::OVERFLOW_SOURCES, None, "host:10.0.0.80", None, 80), 1000, 100),
            (edge("ext:203.0.113.5", None, "host:10.0.0.80", None, 443), 1000, 1),
        ];
        let out =
            run_collection(updates, 2000, |contacts| detect(&EntityCapConfig::default(), &detector_inputs(contacts)));
        let found: Vec<(String, String)> =
            out.into_iter().map(|(f, _): (Finding, isize)| (f.entity.to_string(), f.key)).collect();
        assert_eq!(found, vec![("host:10.0.0.80".to_owned(), "sources".to_owned())]);
    }
}
