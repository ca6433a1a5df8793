//! Scan / sweep: one source touching many ports of one destination (vertical scan) or one port on
//! many destinations (horizontal sweep) in the window, most of them unanswered. ATT&CK T1046.
//! Counts live in the difference type, so each change costs O(1) however large the scan.

use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::{alert_id, service, smallest, DetectorInputs, Finding};
use crate::graph::Edge;
use crate::name::{ByText, Name};
use crate::time::Epoch;
use crate::volume::Volume;

pub const DETECTOR: &str = "scan";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    pub enabled: bool,
    /// Vertical scan: distinct destination services (port and protocol) one source touches on one
    /// destination entity in the window, at least. Unit: services.
    pub min_distinct_ports: usize,
    /// Horizontal sweep: distinct destination entities one source touches on one service in the
    /// window, at least. Unit: entities.
    pub min_distinct_hosts: usize,
    /// Share of those targets that must be unanswered. Unit: percent (0..=100).
    pub min_unanswered_percent: u8,
    /// A target (source, destination, service) is unanswered when at least half of its flows in
    /// the window failed, or when its flows carried on average at most this many bytes (both
    /// directions together). Unit: bytes per flow.
    pub tiny_flow_bytes: u64,
    /// How many ports or hosts the evidence lists (the smallest ones). Unit: items.
    pub evidence_sample: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            enabled: true,
            min_distinct_ports: 50,
            min_distinct_hosts: 30,
            min_unanswered_percent: 80,
            tiny_flow_bytes: 256,
            evidence_sample: 10,
        }
    }
}

/// `(source, destination, port, protocol)`: one probe target, at entity level.
type Target = (Name, Name, u16, u8);

/// Whether a target's windowed volume looks like a probe rather than a conversation.
pub fn unanswered(volume: &Volume, tiny_flow_bytes: u64) -> bool {
    let bytes = (volume.bytes_out + volume.bytes_in).max(0) as u128;
    volume.failed * 2 >= volume.flows || bytes <= tiny_flow_bytes as u128 * volume.flows.max(0) as u128
}

/// Whether `total` targets, `unanswered` of them unanswered, make a scan.
fn qualifies(total: isize, unanswered: isize, min_total: usize, min_percent: u8) -> bool {
    total >= min_total as isize && unanswered * 100 >= min_percent as isize * total
}

/// Vertical scans and horizontal sweeps in the window.
pub fn detect<'s>(config: &ScanConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let tiny = config.tiny_flow_bytes;
    let sample = config.evidence_sample;

    // Each target once, with (1, whether it went unanswered) as its difference: it changes only
    // when that flips (a threshold over the target's windowed volume, no output trace).
    let target = |edge: Edge| (edge.src.entity, edge.dst.entity, edge.dst_port, edge.protocol);
    let targets: VecCollection<'s, Epoch, Target, (isize, isize)> =
        inputs.edges.clone().map(target).threshold_total(move |_target, volume| (1, unanswered(volume, tiny) as isize));
    // The targets present, for the evidence samples (which ignore multiplicities).
    let present = inputs.live.clone().map(target);

    let (min_ports, min_hosts, min_percent) =
        (config.min_distinct_ports, config.min_distinct_hosts, config.min_unanswered_percent);

    // Vertical: per (source, destination), (services, unanswered services).
    let vertical = targets
        .clone()
        .map(|(src, dst, _, _)| (src, dst))
        .count_total()
        .filter(move |(_, (total, unanswered))| qualifies(*total, *unanswered, min_ports, min_percent));
    // Samples only for the scans found: the targets of every other pair would cost two reduces per
    // pair for nothing.
    let scanned = vertical.clone().map(|(pair, _)| pair);
    let vertical_sample =
        smallest(present.clone().map(|(src, dst, port, proto)| ((src, dst), (port, proto))).semijoin(scanned), sample);
    let vertical = vertical.join(vertical_sample).map(move |((src, dst), ((total, unanswered), ports))| {
        let ports = ports.iter().map(|(port, proto)| service(*port, *proto)).collect();
        finding(Kind::Vertical, src, dst.to_string(), total, unanswered, ports, min_ports, min_percent)
    });

    // Horizontal: per (source, service), (destinations, unanswered destinations).
    let horizontal = targets
        .map(|(src, _, port, proto)| (src, port, proto))
        .count_total()
        .filter(move |(_, (total, unanswered))| qualifies(*total, *unanswered, min_hosts, min_percent));
    // The sample a person reads: the destinations first in name order.
    let swept = horizontal.clone().map(|(service, _)| service);
    let horizontal_sample =
        smallest(present.map(|(src, dst, port, proto)| ((src, port, proto), ByText(dst))).semijoin(swept), sample);
    let horizontal =
        horizontal.join(horizontal_sample).map(move |((src, port, proto), ((total, unanswered), hosts))| {
            let hosts = hosts.into_iter().map(|ByText(host)| host.to_string()).collect();
            finding(Kind::Horizontal, src, service(port, proto), total, unanswered, hosts, min_hosts, min_percent)
        });

    vertical.concat(horizontal)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Many services on one destination.
    Vertical,
    /// One service on many destinations.
    Horizontal,
}

/// The finding for one scan. `target` is the destination (vertical) or the service (horizontal);
/// `sample` the smallest services (vertical) or destinations (horizontal) touched.
#[allow(clippy::too_many_arguments)]
pub fn finding(
    kind: Kind,
    src: Name,
    target: String,
    total: isize,
    unanswered: isize,
    sample: Vec<String>,
    min_total: usize,
    min_percent: u8,
) -> Finding {
    let percent = unanswered * 100 / total.max(1);
    // 60 at the threshold, +10 per doubling beyond it (up to +30), +10 when nearly all unanswered.
    let doublings = (total as usize / min_total.max(1)).max(1).ilog2().min(3) as isize;
    let score = (60 + 10 * doublings + if percent >= 95 { 10 } else { 0 }).clamp(0, 100) as u8;
    let (key, summary, counted, threshold) = match kind {
        Kind::Vertical => (
            format!("vertical:{target}"),
            format!("{src} probed {total} services on {target} in the window, {percent}% unanswered (vertical scan)"),
            "distinct_services",
            "min_distinct_ports",
        ),
        Kind::Horizontal => (
            format!("horizontal:{target}"),
            format!(
                "{src} probed {target} on {total} destinations in the window, {percent}% unanswered (horizontal sweep)"
            ),
            "distinct_destinations",
            "min_distinct_hosts",
        ),
    };
    let (target_name, sample_name) = match kind {
        Kind::Vertical => ("destination", "sample_services"),
        Kind::Horizontal => ("service", "sample_destinations"),
    };
    Finding {
        alert_id: alert_id(DETECTOR, &src, &key),
        detector: DETECTOR.to_owned(),
        entity: src,
        key,
        peer_group: None,
        score,
        summary,
        evidence: vec![
            (target_name.to_owned(), target),
            (counted.to_owned(), total.to_string()),
            ("unanswered".to_owned(), unanswered.to_string()),
            ("unanswered_percent".to_owned(), percent.to_string()),
            (sample_name.to_owned(), sample.join(",")),
            (threshold.to_owned(), min_total.to_string()),
            ("min_unanswered_percent".to_owned(), min_percent.to_string()),
        ],
        techniques: vec!["T1046".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    fn small() -> ScanConfig {
        ScanConfig {
            min_distinct_ports: 4,
            min_distinct_hosts: 3,
            min_unanswered_percent: 75,
            tiny_flow_bytes: 100,
            evidence_sample: 2,
            ..ScanConfig::default()
        }
    }

    fn found(scenario: &Scenario, config: ScanConfig, at: Epoch) -> Vec<(String, String)> {
        let out = run_scenario(scenario, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at]).into_iter().map(|f| (f.entity.to_string(), f.key)).collect()
    }

    /// The plain version: recount the window at `at` from scratch.
    fn oracle(scenario: &Scenario, config: &ScanConfig, at: Epoch) -> Vec<Finding> {
        let mut targets: BTreeMap<(String, String, u16, u8), Volume> = BTreeMap::new();
        for (edge, volume) in scenario.edges_at(at) {
            use differential_dataflow::difference::Semigroup;
            targets
                .entry((edge.src.entity.to_string(), edge.dst.entity.to_string(), edge.dst_port, edge.protocol))
                .or_default()
                .plus_equals(&volume);
        }
        type Services = Vec<((u16, u8), bool)>;
        let mut vertical: BTreeMap<(String, String), Services> = BTreeMap::new();
        let mut horizontal: BTreeMap<(String, u16, u8), Vec<(String, bool)>> = BTreeMap::new();
        for ((src, dst, port, proto), volume) in &targets {
            let flag = unanswered(volume, config.tiny_flow_bytes);
            vertical.entry((src.clone(), dst.clone())).or_default().push(((*port, *proto), flag));
            horizontal.entry((src.clone(), *port, *proto)).or_default().push((dst.clone(), flag));
        }
        let mut out = Vec::new();
        for ((src, dst), mut services) in vertical {
            services.sort();
            let total = services.len() as isize;
            let unanswered = services.iter().filter(|(_, u)| *u).count() as isize;
            if qualifies(total, unanswered, config.min_distinct_ports, config.min_unanswered_percent) {
                let sample =
                    services.iter().take(config.evidence_sample).map(|((p, pr), _)| service(*p, *pr)).collect();
                out.push(finding(
                    Kind::Vertical,
                    src.into(),
                    dst,
                    total,
                    unanswered,
                    sample,
                    config.min_distinct_ports,
                    config.min_unanswered_percent,
                ));
            }
        }
        for ((src, port, proto), mut hosts) in horizontal {
            hosts.sort();
            let total = hosts.len() as isize;
            let unanswered = hosts.iter().filter(|(_, u)| *u).count() as isize;
            if qualifies(total, unanswered, config.min_distinct_hosts, config.min_unanswered_percent) {
                let sample = hosts.iter().take(config.evidence_sample).map(|(h, _)| h.clone()).collect();
                out.push(finding(
                    Kind::Horizontal,
                    src.into(),
                    service(port, proto),
                    total,
                    unanswered,
                    sample,
                    config.min_distinct_hosts,
                    config.min_unanswered_percent,
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_vertical_scan_of_refused_ports_is_found_once() {
        let mut scenario = Scenario::new(10);
        for port in 20..30 {
            scenario.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, port), 3, vol(2, 2, 80, 0)));
        }
        assert_eq!(
            found(&scenario, small(), 5),
            vec![("host:10.0.0.66".to_owned(), "vertical:host:10.0.0.5".to_owned())]
        );
        let out = run_scenario(&scenario, 5, |inputs| detect(&small(), &inputs));
        let f = &as_set(&out[&5])[0];
        assert!(f.evidence.contains(&("distinct_services".to_owned(), "10".to_owned())), "{f:?}");
        assert!(f.evidence.contains(&("sample_services".to_owned(), "20/tcp,21/tcp".to_owned())), "{f:?}");
        assert_eq!(f.score, 80, "{f:?}");
    }

    #[test]
    fn a_horizontal_sweep_of_tiny_flows_is_found_and_leaves_with_the_window() {
        let mut scenario = Scenario::new(10);
        for host in 1..=6 {
            let dst = format!("host:10.0.1.{host}");
            scenario.contacts.push((edge("pod:ops/probe-1", Some("probe"), &dst, None, 445), 2, vol(1, 0, 60, 40)));
        }
        assert_eq!(found(&scenario, small(), 5), vec![("pod:ops/probe-1".to_owned(), "horizontal:445/tcp".to_owned())]);
        assert!(found(&scenario, small(), 12).is_empty());
    }

    #[test]
    fn a_busy_client_with_real_conversations_is_not_a_scan() {
        let mut scenario = Scenario::new(10);
        for host in 1..=6 {
            let dst = format!("host:10.0.1.{host}");
            scenario.contacts.push((edge("host:10.0.0.7", None, &dst, None, 443), 2, vol(3, 0, 3000, 90000)));
        }
        for port in 8000..8010 {
            scenario.contacts.push((edge("host:10.0.0.7", None, "host:10.0.0.5", None, port), 2, vol(1, 0, 500, 5000)));
        }
        assert!(found(&scenario, small(), 5).is_empty());
    }

    #[test]
    fn too_few_ports_or_answered_ports_are_not_a_scan() {
        let mut scenario = Scenario::new(10);
        for port in 20..23 {
            scenario.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, port), 3, vol(1, 1, 60, 0)));
        }
        assert!(found(&scenario, small(), 5).is_empty(), "3 ports < 4");
        // Four ports, but two carried real data: 50% unanswered < 75%.
        scenario.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, 80), 3, vol(1, 0, 900, 9000)));
        scenario.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, 443), 3, vol(1, 0, 900, 9000)));
        assert!(found(&scenario, small(), 5).is_empty());
    }

    #[test]
    fn the_sample_is_the_smallest_of_many() {
        let mut scenario = Scenario::new(10);
        for port in (1000..1600).rev() {
            scenario.contacts.push((edge("host:10.0.0.66", None, "host:10.0.0.5", None, port), 1, vol(1, 1, 40, 0)));
        }
        let out = run_scenario(&scenario, 2, |inputs| detect(&small(), &inputs));
        let f = &as_set(&out[&2])[0];
        assert!(f.evidence.contains(&("sample_services".to_owned(), "1000/tcp,1001/tcp".to_owned())), "{f:?}");
        assert_eq!(f.score, 100, "{f:?}");
    }

    fn contact() -> impl Strategy<Value = (crate::graph::Edge, Epoch, Volume)> {
        (
            0..3usize,
            0..4usize,
            prop::sample::select(vec![22u16, 80, 443, 445, 3389]),
            1..12u64,
            1..3i64,
            0..3i64,
            0..300i64,
        )
            .prop_map(|(src, dst, port, epoch, flows, failed, bytes)| {
                let src = format!("host:10.0.0.{src}");
                let dst = format!("host:10.0.1.{dst}");
                (edge(&src, None, &dst, None, port), epoch, vol(flows, failed.min(flows), bytes, 0))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn scans_match_a_from_scratch_recount_at_every_epoch(contacts in prop::collection::vec(contact(), 0..60)) {
            let mut scenario = Scenario::new(4);
            scenario.contacts = contacts;
            let config = ScanConfig { min_distinct_ports: 3, min_distinct_hosts: 2, min_unanswered_percent: 60, tiny_flow_bytes: 100, evidence_sample: 2, ..ScanConfig::default() };
            let until = 16;
            let cfg = config.clone();
            let out = run_scenario(&scenario, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&scenario, &config, at), "at epoch {}", at);
            }
        }
    }
}
