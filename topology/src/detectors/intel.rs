//! Threat-intel match: a flow endpoint whose address lies inside a listed indicator network.
//! Each distinct address in the window is exploded into the networks that could contain it (one
//! per prefix length for IPv4; every fourth prefix length for IPv6, indicators being split to
//! the next such length), and joined with the indicators keyed by their network, so a match
//! costs a join, not a scan of the list. The finding is about the entity on the other end: the
//! one that talked to (or was contacted by) the listed address.
//!
//! Addresses come from entity ids (`host:<addr>`, `ext:<addr>`). A pod's id carries no address,
//! so a listed address that resolved to a pod is not matched (the pod's peer still is).

use std::net::IpAddr;

use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{alert_id, DetectorInputs, Finding, Indicator};
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

pub const DETECTOR: &str = "threat_intel";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntelConfig {
    pub enabled: bool,
    /// Whether contacts *from* a listed address to an internal entity are reported too (not only
    /// contacts to one); inbound scans from listed addresses are common and mostly refused.
    /// Unit: flag.
    pub inbound: bool,
}

impl Default for IntelConfig {
    fn default() -> Self {
        IntelConfig { enabled: true, inbound: true }
    }
}

/// The address in an entity id, if it has one.
pub fn address(entity: &str) -> Option<IpAddr> {
    entity.strip_prefix("host:").or_else(|| entity.strip_prefix("ext:")).and_then(|addr| addr.parse().ok())
}

/// The IPv6 prefix lengths addresses are exploded at.
const V6_STEP: u8 = 4;

/// Every network of an exploded prefix length that contains `addr`.
pub fn prefixes(addr: IpAddr) -> Vec<IpNet> {
    let lengths: Vec<u8> = match addr {
        IpAddr::V4(_) => (0..=32).collect(),
        IpAddr::V6(_) => (0..=128).step_by(V6_STEP as usize).collect(),
    };
    lengths.into_iter().filter_map(|len| IpNet::new(addr, len).ok().map(|net| net.trunc())).collect()
}

/// An indicator network as networks of exploded prefix lengths (an IPv6 /29 becomes eight /32s).
pub fn keyed(network: &IpNet) -> Vec<IpNet> {
    let network = network.trunc();
    match network {
        IpNet::V4(_) => vec![network],
        IpNet::V6(_) => {
            let len = network.prefix_len().div_ceil(V6_STEP) * V6_STEP;
            network.subnets(len).map(|subnets| subnets.collect()).unwrap_or_default()
        }
    }
}

/// Which way the contact went, seen from the entity the finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// The entity opened the flows to the listed address.
    Outbound,
    /// The listed address opened the flows to the entity.
    Inbound,
}

/// The indicator reported for an address: the most specific match (longest prefix, then the
/// least in `Indicator` order), and how many indicators matched.
pub fn best<'a>(matches: impl IntoIterator<Item = &'a Indicator>) -> Option<(Indicator, usize)> {
    let mut all: Vec<&Indicator> = matches.into_iter().collect();
    all.sort();
    all.dedup();
    let count = all.len();
    all.into_iter()
        .min_by_key(|ind| (std::cmp::Reverse(ind.network.prefix_len()), (*ind).clone()))
        .map(|ind| (ind.clone(), count))
}

/// One finding's identity: `(entity, its peer group, direction, listed address)`.
type Hit = (Name, Option<Name>, Direction, IpAddr);

/// Contacts with listed addresses.
pub fn detect<'s>(config: &IntelConfig, inputs: &DetectorInputs<'s>) -> VecCollection<'s, Epoch, Finding> {
    let inbound = config.inbound;
    let addresses = inputs
        .live
        .clone()
        .flat_map(|edge| [address(&edge.src.entity), address(&edge.dst.entity)].into_iter().flatten())
        .distinct_total();
    let listed =
        inputs.indicators.clone().flat_map(|ind| keyed(&ind.network).into_iter().map(move |net| (net, ind.clone())));
    let matched = addresses
        .flat_map(|addr| prefixes(addr).into_iter().map(move |net| (net, addr)))
        .join(listed)
        .map(|(_net, (addr, indicator))| (addr, indicator))
        .reduce(|_addr, matches, output| {
            if let Some(best) = best(matches.iter().map(|(ind, _)| *ind)) {
                output.push((best, 1isize));
            }
        });

    // Both ends of every live edge, keyed by address, seen from the other end.
    let ends = inputs.live.clone().flat_map(move |edge| {
        let outbound = address(&edge.dst.entity)
            .map(|addr| (addr, (edge.src.entity.clone(), edge.src.peer_group().cloned(), Direction::Outbound)));
        let inbound = address(&edge.src.entity)
            .filter(|_| inbound)
            .map(|addr| (addr, (edge.dst.entity.clone(), edge.dst.peer_group().cloned(), Direction::Inbound)));
        outbound.into_iter().chain(inbound).map(move |(addr, end)| (addr, (edge.clone(), end)))
    });
    // The live edges that make a hit, by edge: few, and changing only when an edge appears or goes
    // or a match changes; each hit's volume is its edges' windowed volume, read off the shared
    // arrangement of the edges (so a flow on a known edge costs a look-up, not a copy).
    let hits = ends
        .join(matched)
        .map(|(addr, ((edge, (entity, workload, direction)), indicator))| {
            (edge, ((entity, workload, direction, addr), indicator))
        })
        .arrange_by_key();
    inputs
        .by_edge
        .clone()
        .join_core(hits, |_edge, (), (hit, indicator)| Some((hit.clone(), indicator.clone())))
        .count_total()
        .map(|((hit, (indicator, matches)), volume)| finding(hit, &indicator, matches, &volume))
}

pub fn finding(hit: Hit, indicator: &Indicator, matches: usize, volume: &Volume) -> Finding {
    let (entity, workload, direction, addr) = hit;
    let answered = volume.flows > volume.failed;
    let (key, verb, to, from) = match direction {
        Direction::Outbound => (format!("outbound:{addr}"), "contacted", volume.bytes_out, volume.bytes_in),
        Direction::Inbound => (format!("inbound:{addr}"), "was contacted by", volume.bytes_in, volume.bytes_out),
    };
    let score = match (direction, answered) {
        (Direction::Outbound, true) => 90,
        (Direction::Outbound, false) => 60,
        (Direction::Inbound, true) => 70,
        (Direction::Inbound, false) => 30,
    };
    Finding {
        alert_id: alert_id(DETECTOR, &entity, &key),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{entity} {verb} {addr}, listed in {} by {} ({}): {} flows, {} failed, in the window",
            indicator.network, indicator.source, indicator.description, volume.flows, volume.failed
        ),
        evidence: vec![
            ("address".to_owned(), addr.to_string()),
            ("direction".to_owned(), format!("{direction:?}").to_lowercase()),
            ("indicator_network".to_owned(), indicator.network.to_string()),
            ("indicator_source".to_owned(), indicator.source.clone()),
            ("indicator_description".to_owned(), indicator.description.clone()),
            ("matching_indicators".to_owned(), matches.to_string()),
            ("flows".to_owned(), volume.flows.to_string()),
            ("failed".to_owned(), volume.failed.to_string()),
            ("bytes_to_address".to_owned(), to.to_string()),
            ("bytes_from_address".to_owned(), from.to_string()),
        ],
        entity,
        key,
        peer_group: workload,
        score,
        techniques: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use differential_dataflow::difference::Semigroup;
    use proptest::prelude::*;

    use super::*;
    use crate::graph::Edge;
    use crate::testing::{as_set, edge, run_scenario, vol, Scenario};

    fn indicator(network: &str, source: &str) -> Indicator {
        Indicator { network: network.parse().unwrap(), source: source.to_owned(), description: format!("{source} C2") }
    }

    /// The plain version: every edge end against every listed indicator with `contains`.
    fn oracle(s: &Scenario, config: &IntelConfig, at: Epoch) -> Vec<Finding> {
        let indicators = s.indicators_at(at);
        let mut hits: BTreeMap<(Hit, Indicator, usize), Volume> = BTreeMap::new();
        for (edge, volume) in s.edges_at(at) {
            let mut ends = vec![(&edge.dst, &edge.src, Direction::Outbound)];
            if config.inbound {
                ends.push((&edge.src, &edge.dst, Direction::Inbound));
            }
            for (listed_end, entity, direction) in ends {
                let Some(addr) = address(&listed_end.entity) else { continue };
                if let Some((ind, n)) = best(indicators.iter().filter(|ind| ind.network.contains(&addr))) {
                    hits.entry(((entity.entity.clone(), entity.peer_group().cloned(), direction, addr), ind, n))
                        .or_default()
                        .plus_equals(&volume);
                }
            }
        }
        let mut out: Vec<Finding> =
            hits.into_iter().map(|((hit, ind, n), volume)| finding(hit, &ind, n, &volume)).collect();
        out.sort();
        out
    }

    fn found(s: &Scenario, config: IntelConfig, at: Epoch) -> Vec<Finding> {
        let out = run_scenario(s, at, move |inputs| detect(&config, &inputs));
        as_set(&out[&at])
    }

    #[test]
    fn a_pod_calling_a_listed_network_is_found_with_the_most_specific_indicator() {
        let mut s = Scenario::new(10);
        s.indicators.push((indicator("203.0.113.0/24", "feed-a"), 1, 1));
        s.indicators.push((indicator("203.0.113.64/28", "feed-b"), 1, 1));
        s.contacts.push((edge("pod:shop/web-2", Some("web"), "ext:203.0.113.66", None, 4444), 3, vol(2, 0, 900, 120)));
        s.contacts.push((edge("pod:shop/web-1", Some("web"), "ext:198.51.100.1", None, 443), 3, vol(2, 0, 900, 120)));
        let found = found(&s, IntelConfig::default(), 5);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!((f.entity.as_str(), f.key.as_str(), f.score), ("pod:shop/web-2", "outbound:203.0.113.66", 90));
        let evidence: BTreeMap<_, _> = f.evidence.iter().cloned().collect();
        assert_eq!(evidence["indicator_network"], "203.0.113.64/28");
        assert_eq!(evidence["indicator_source"], "feed-b");
        assert_eq!(evidence["matching_indicators"], "2");
        assert_eq!(evidence["bytes_to_address"], "900");
    }

    #[test]
    fn an_inbound_probe_from_a_listed_address_is_weak_and_can_be_switched_off() {
        let mut s = Scenario::new(10);
        s.indicators.push((indicator("2001:db8:4000::/37", "feed-v6"), 1, 1));
        s.contacts.push((edge("ext:2001:db8:4123::9", None, "host:10.0.0.5", None, 22), 3, vol(3, 3, 180, 0)));
        let found_in = found(&s, IntelConfig::default(), 5);
        assert_eq!(found_in.len(), 1, "{found_in:?}");
        assert_eq!((found_in[0].entity.as_str(), found_in[0].score), ("host:10.0.0.5", 30));
        assert!(found(&s, IntelConfig { inbound: false, ..IntelConfig::default() }, 5).is_empty());
    }

    #[test]
    fn a_withdrawn_indicator_clears_its_finding() {
        let mut s = Scenario::new(10);
        s.indicators.push((indicator("198.51.100.7/32", "feed-a"), 1, 1));
        s.indicators.push((indicator("198.51.100.7/32", "feed-a"), 4, -1));
        s.contacts.push((edge("host:10.0.0.8", None, "ext:198.51.100.7", None, 443), 2, vol(1, 0, 100, 100)));
        let out = run_scenario(&s, 5, |inputs| detect(&IntelConfig::default(), &inputs));
        assert_eq!(as_set(&out[&3]).len(), 1);
        assert!(as_set(&out[&4]).is_empty());
    }

    #[test]
    fn exploding_covers_every_prefix_length() {
        assert_eq!(prefixes("10.1.2.3".parse().unwrap()).len(), 33);
        assert_eq!(keyed(&"2001:db8::/29".parse().unwrap()).len(), 8);
        assert_eq!(keyed(&"10.1.2.3/8".parse().unwrap()), vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    fn contact() -> impl Strategy<Value = (Edge, Epoch, Volume)> {
        let ends = prop::sample::select(vec![
            ("pod:a/w-1", Some("w")),
            ("host:10.0.0.1", None),
            ("ext:198.51.100.1", None),
            ("ext:198.51.100.130", None),
            ("ext:2001:db8::1", None),
            ("ext:2001:db8:8000::1", None),
        ]);
        (ends.clone(), ends, 1..16u64, 0..2i64).prop_map(|((src, sw), (dst, dw), epoch, failed)| {
            (edge(src, sw, dst, dw, 443), epoch, vol(1, failed, 100, 7))
        })
    }

    fn listing() -> impl Strategy<Value = Vec<(Indicator, Epoch, isize)>> {
        let networks = prop::sample::select(vec![
            "198.51.100.1/32",
            "198.51.100.0/24",
            "198.51.100.128/25",
            "198.51.0.0/16",
            "2001:db8::/32",
            "2001:db8::/33",
            "2001:db8:8000::/35",
        ]);
        (networks, prop::sample::select(vec!["feed-a", "feed-b"]), 1..16u64, prop::option::of(1..10u64)).prop_map(
            |(network, source, from, lasting)| {
                let ind = indicator(network, source);
                let mut updates = vec![(ind.clone(), from, 1)];
                if let Some(lasting) = lasting {
                    updates.push((ind, from + lasting, -1));
                }
                updates
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn intel_matches_a_from_scratch_containment_check_at_every_epoch(
            contacts in prop::collection::vec(contact(), 0..30),
            listings in prop::collection::vec(listing(), 0..5),
            inbound: bool,
        ) {
            let mut s = Scenario::new(4);
            s.contacts = contacts;
            s.indicators = listings.into_iter().flatten().collect();
            let config = IntelConfig { inbound, ..IntelConfig::default() };
            let until = 26;
            let cfg = config.clone();
            let out = run_scenario(&s, until, move |inputs| detect(&cfg, &inputs));
            for at in 1..=until {
                prop_assert_eq!(as_set(&out[&at]), oracle(&s, &config, at), "at epoch {}", at);
            }
        }
    }
}
