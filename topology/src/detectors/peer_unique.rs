//! Peer-unique destination: a member of a peer group (of at least `min_group_size` members)
//! talks to a destination that no other member of its group touches in the window. The
//! signature of a replica whose image was swapped for a malicious one. ATT&CK T1071, T1195.002.

use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::{alert_id, smallest, DetectorInputs, Finding};
use crate::name::Name;
use crate::time::Epoch;

pub const DETECTOR: &str = "peer_unique_destination";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerUniqueConfig {
    pub enabled: bool,
    /// Smallest group (members seen in the window) whose members are compared; below it, a
    /// destination only one member touches says little.
    pub min_group_size: usize,
    /// One incident, one alert: a member with more peer-unique destinations than this in the
    /// window gets one finding naming how many and a sample (key `destinations`), instead of one
    /// per destination (a scanning pod made 7,201 alerts). 0: always one per destination.
    pub max_findings_per_entity: usize,
}

impl Default for PeerUniqueConfig {
    fn default() -> Self {
        PeerUniqueConfig { enabled: true, min_group_size: 3, max_findings_per_entity: 10 }
    }
}

/// Findings for `(member, destination)` pairs that only that member of its group touches.
/// Destinations are compared at workload level, so replicas spreading their calls over the pods
/// of one backend, or over the addresses of one external group (`entities.external_groups`), are
/// not told apart.
pub fn peer_unique_destinations<'s>(
    config: &PeerUniqueConfig,
    inputs: &DetectorInputs<'s>,
) -> VecCollection<'s, Epoch, Finding> {
    let min_group_size = config.min_group_size as isize;
    let (edges, members) = (inputs.live.clone(), inputs.members.clone());

    // (entity, destination) pairs present in the window. A multicast group, the broadcast or the
    // unspecified address is no destination a host chose (each host joins its own
    // solicited-node group): never a peer-unique destination.
    let contacts = edges
        .filter(|edge| !edge.dst.is_special())
        .map(|edge| (edge.src.entity.clone(), edge.dst.node().clone()))
        .distinct_total();

    // ((group, destination), member) for every member of a group that touches the destination.
    let group_contacts =
        contacts.join(members.clone()).map(|(entity, (destination, group))| ((group, destination), entity));

    // (group, destination) touched by exactly one member.
    let unique = group_contacts
        .clone()
        .map(|(group_destination, _member)| group_destination)
        .count_total()
        .filter(|(_, members)| *members == 1)
        .map(|(group_destination, _)| (group_destination, ()));

    let sizes = crate::peers::group_sizes(members)
        .filter(move |(_, size)| *size >= min_group_size)
        .map(|(group, size)| (group, size));

    // (member, (destination, group, size)): every peer-unique destination of every member.
    let per_member = group_contacts
        .join(unique)
        .map(|((group, destination), (member, ()))| (group, (member, destination)))
        .join(sizes)
        .map(|(group, ((member, destination), size))| (member, (destination, group, size)));
    if config.max_findings_per_entity == 0 {
        return per_member.map(|(member, (destination, group, size))| finding(member, destination, group, size));
    }
    let most = config.max_findings_per_entity as isize;
    let counts = per_member.clone().map(|(member, _)| member).count_total();
    let few = counts.clone().filter(move |(_, n)| *n <= most).map(|(member, _)| member);
    let one_each = per_member
        .clone()
        .semijoin(few)
        .map(|(member, (destination, group, size))| finding(member, destination, group, size));
    let sample = smallest(per_member.clone().map(|(member, (destination, _, _))| (member, destination)), SAMPLE);
    let context = per_member.map(|(member, (_, group, size))| (member, (group, size))).distinct_total();
    let one_for_all = counts
        .filter(move |(_, n)| *n > most)
        .join(sample)
        .join(context)
        .map(|(member, ((count, sample), (group, size)))| many_finding(member, count, sample, group, size));
    one_each.concat(one_for_all)
}

/// Destinations an aggregated finding names.
const SAMPLE: usize = 5;

/// The score of a lone destination in a group of `size`: 3 members → 60, 5 → 80, ≥ 6 → 90.
fn score(size: isize) -> u8 {
    (50 + 10 * (size.min(6) - 2)).clamp(0, 100) as u8
}

/// One finding for a member with `count` peer-unique destinations, more than
/// `max_findings_per_entity`.
fn many_finding(member: Name, count: isize, sample: Vec<Name>, group: Name, size: isize) -> Finding {
    let sample: Vec<String> = sample.iter().map(|d| d.to_string()).collect();
    Finding {
        alert_id: alert_id(DETECTOR, &member, "destinations"),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{member} talks to {count} destinations that none of the other {} members of {group} touch (e.g. {})",
            size - 1,
            sample.join(", ")
        ),
        evidence: vec![
            ("destinations".to_owned(), count.to_string()),
            ("sample".to_owned(), sample.join(",")),
            ("group_size".to_owned(), size.to_string()),
            ("peers_touching_destination".to_owned(), "0".to_owned()),
        ],
        entity: member,
        key: "destinations".to_owned(),
        peer_group: Some(group),
        score: score(size).saturating_add(5).min(100),
        techniques: vec!["T1071".to_owned(), "T1195.002".to_owned(), "T1046".to_owned()],
    }
}

fn finding(member: Name, destination: Name, group: Name, size: isize) -> Finding {
    // Larger groups make a lone destination more telling.
    let score = score(size);
    Finding {
        alert_id: alert_id(DETECTOR, &member, &destination),
        detector: DETECTOR.to_owned(),
        summary: format!(
            "{member} talks to {destination}, which none of the other {} members of {group} touch",
            size - 1
        ),
        evidence: vec![
            ("destination".to_owned(), destination.to_string()),
            ("group_size".to_owned(), size.to_string()),
            ("peers_touching_destination".to_owned(), "0".to_owned()),
        ],
        entity: member,
        key: destination.into(),
        peer_group: Some(group),
        score,
        techniques: vec!["T1071".to_owned(), "T1195.002".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::{Endpoint, EntityResolver, ExternalGroup, ResolverConfig};
    use crate::graph::Edge;
    use crate::testing::{edge, run_collection};

    fn detect(updates: Vec<(Edge, Epoch, isize)>, until: Epoch) -> Vec<(String, String)> {
        let config = PeerUniqueConfig::default();
        let out = run_collection(updates, until, move |contacts| {
            peer_unique_destinations(&config, &crate::testing::detector_inputs(contacts))
        });
        let mut found: Vec<_> = out.into_iter().map(|(f, _)| (f.entity.to_string(), f.key)).collect();
        found.sort();
        found
    }

    fn replica(i: usize, dst: &str, port: u16) -> Edge {
        edge(&format!("pod:shop/web-{i}"), Some("web"), dst, None, port)
    }

    #[test]
    fn the_one_replica_with_a_new_destination_is_found() {
        let mut updates = Vec::new();
        for i in 1..=3 {
            updates.push((replica(i, "host:10.0.0.9", 5432), 1000, 1));
        }
        updates.push((replica(2, "ext:203.0.113.66", 4444), 1000, 1));
        assert_eq!(detect(updates, 2000), vec![("pod:shop/web-2".to_owned(), "ext:203.0.113.66".to_owned())]);
    }

    /// Issue 12: each replica's neighbour discovery goes to its own solicited-node multicast group.
    #[test]
    fn a_multicast_group_only_one_replica_sends_to_is_no_finding() {
        let resolver = EntityResolver::default();
        let mut updates = Vec::new();
        for i in 1..=3 {
            updates.push((replica(i, "host:10.0.0.9", 5432), 1000, 1));
        }
        let ndp = Edge { dst: resolver.resolve("ff02::1:ff00:2c6", None), protocol: 58, ..replica(2, "x", 135) };
        updates.push((ndp, 1000, 1));
        updates.push((replica(2, "ext:203.0.113.66", 4444), 1000, 1));
        assert_eq!(detect(updates, 2000), vec![("pod:shop/web-2".to_owned(), "ext:203.0.113.66".to_owned())]);
    }

    /// Issue 12: one scanning pod raised 7,201 peer-unique alerts, one per destination.
    #[test]
    fn a_member_with_many_unique_destinations_gets_one_finding_for_all_of_them() {
        let mut updates = Vec::new();
        for i in 1..=3 {
            updates.push((replica(i, "host:10.0.0.9", 5432), 1000, 1));
        }
        for d in 0..40 {
            updates.push((replica(2, &format!("host:10.9.0.{d}"), 445), 1000, 1));
        }
        updates.push((replica(3, "ext:203.0.113.66", 4444), 1000, 1));
        let config = PeerUniqueConfig::default();
        let out = run_collection(updates, 2000, move |contacts| {
            peer_unique_destinations(&config, &crate::testing::detector_inputs(contacts))
        });
        let mut found: Vec<(String, String, Option<String>)> = out
            .into_iter()
            .map(|(f, _)| {
                let count = f.evidence.iter().find(|(k, _)| k == "destinations").map(|(_, v)| v.clone());
                (f.entity.to_string(), f.key, count)
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("pod:shop/web-2".to_owned(), "destinations".to_owned(), Some("40".to_owned())),
                ("pod:shop/web-3".to_owned(), "ext:203.0.113.66".to_owned(), None),
            ]
        );
    }

    #[test]
    fn two_members_are_not_a_group_worth_comparing() {
        let updates = vec![
            (replica(1, "host:10.0.0.9", 5432), 1000, 1),
            (replica(2, "host:10.0.0.9", 5432), 1000, 1),
            (replica(2, "ext:203.0.113.66", 4444), 1000, 1),
        ];
        assert!(detect(updates, 2000).is_empty());
    }

    /// Replicas calling different addresses of one grouped SaaS, and grouped SaaS addresses calling
    /// different internal hosts (webhooks), resolved as the pipeline resolves them.
    fn saas_traffic(resolver: &EntityResolver) -> Vec<(Edge, Epoch, isize)> {
        let call = |i: usize, addr: &str, port: u16| {
            let src = Endpoint::new(&format!("pod:shop/web-{i}"), Some("web"));
            Edge { src, dst: resolver.resolve(addr, None), dst_port: port, protocol: 6 }
        };
        let webhook = |from: &str, to: &str| Edge {
            src: resolver.resolve(from, None),
            dst: resolver.resolve(to, None),
            dst_port: 8443,
            protocol: 6,
        };
        let mut updates = Vec::new();
        for i in 1..=3 {
            updates.push((call(i, "10.0.0.9", 5432), 1000, 1));
        }
        for (i, addr) in [(1, "13.108.0.10"), (2, "13.109.4.4"), (3, "2a01:111::7")] {
            updates.push((call(i, addr, 443), 1000, 1));
        }
        updates.push((call(2, "203.0.113.66", 4444), 1000, 1));
        for (from, to) in [("13.108.0.20", "10.0.0.1"), ("13.108.0.21", "10.0.0.2"), ("13.108.0.22", "10.0.0.3")] {
            updates.push((webhook(from, to), 1000, 1));
        }
        updates
    }

    #[test]
    fn replicas_spreading_over_a_grouped_saas_share_its_node_and_an_ungrouped_address_stays_unique() {
        let salesforce = ExternalGroup {
            name: "salesforce".to_owned(),
            networks: vec!["13.108.0.0/14".parse().unwrap(), "2a01:111::/32".parse().unwrap()],
        };
        let grouped = EntityResolver::new(&ResolverConfig { external_groups: vec![salesforce], ..Default::default() });
        assert_eq!(
            detect(saas_traffic(&grouped), 2000),
            vec![("pod:shop/web-2".to_owned(), "ext:203.0.113.66".to_owned())],
            "one SaaS node for all replicas; the grouped addresses are no peer group of their own"
        );
        // Without the group every replica's SaaS address is its own destination.
        let found = detect(saas_traffic(&EntityResolver::default()), 2000);
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn the_finding_goes_when_the_edge_leaves_the_window() {
        let mut updates = Vec::new();
        for i in 1..=3 {
            updates.push((replica(i, "host:10.0.0.9", 5432), 1000, 1));
        }
        updates.push((replica(2, "ext:203.0.113.66", 4444), 1000, 1));
        updates.push((replica(2, "ext:203.0.113.66", 4444), 3000, -1));
        assert!(detect(updates, 4000).is_empty());
    }
}
