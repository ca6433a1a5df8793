//! Peer groups: the sets of entities expected to behave alike. The replicas of one workload, the
//! members of one asset role (the inventory names it as the endpoint's workload, `role:…`), and,
//! for internal entities with no label at all, the entities that answer on the same set of
//! services: their served-port profile (`ports:22/tcp,443/tcp`). Membership is windowed like
//! everything else: an entity leaves its group when its last flow leaves the window, and an
//! unlabelled server whose served services change moves to the group of its new profile.

use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::detectors::service;
use crate::graph::Edge;
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// How unlabelled entities are grouped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerGroupsConfig {
    /// Group internal entities that have neither a workload nor an asset role by the services
    /// they answer on in the window.
    pub served_port_profiles: bool,
    /// Answered flows (flows that did not fail) a service needs in the window to be part of an
    /// entity's profile, so that a port touched once by a scan or a stray client does not move
    /// the entity to another group. Unit: flows.
    pub min_flows_per_service: i64,
}

impl Default for PeerGroupsConfig {
    fn default() -> Self {
        PeerGroupsConfig { served_port_profiles: true, min_flows_per_service: 2 }
    }
}

impl PeerGroupsConfig {
    /// Groups by workload and role only.
    pub fn labelled_only() -> Self {
        PeerGroupsConfig { served_port_profiles: false, ..PeerGroupsConfig::default() }
    }
}

/// The prefix of a served-port-profile group's name.
pub const PROFILE_GROUP_PREFIX: &str = "ports:";

/// The name of the group of entities that answer on exactly `services` ("22/tcp", ascending by
/// port and protocol).
pub fn profile_group(services: &[(u16, u8)]) -> Name {
    let names: Vec<String> = services.iter().map(|(port, protocol)| service(*port, *protocol)).collect();
    Name::joined(&[PROFILE_GROUP_PREFIX, &names.join(",")])
}

/// Whether `edge` shows its destination answering a service that can profile it: an unlabelled
/// internal host (not external, not a multicast, broadcast or unspecified address, not the
/// overflow) on a port of TCP, UDP or SCTP. ICMP and ICMPv6 "ports" are message types every host
/// answers (echo, IPv6 neighbour discovery): they say nothing of what the host serves.
pub fn answers_a_service(edge: &Edge) -> bool {
    let ported = !matches!(edge.protocol, 1 | 58);
    ported
        && edge.dst.workload.is_none()
        && !edge.dst.is_external()
        && !edge.dst.is_special()
        && !edge.dst.is_overflow()
}

/// `(entity, group)` for every entity seen in the window that belongs to a group.
///
/// `live` is `edges` each once ([`crate::graph::live_edges`]): labelled membership needs only it;
/// served-port profiles count answered flows, so they read `edges`.
pub fn membership<'s>(
    edges: VecCollection<'s, Epoch, Edge, Volume>,
    live: VecCollection<'s, Epoch, Edge>,
    config: &PeerGroupsConfig,
) -> VecCollection<'s, Epoch, (Name, Name)> {
    let labelled = live
        .flat_map(|edge| {
            [edge.src, edge.dst].into_iter().filter_map(|end| {
                let group = end.peer_group()?.clone();
                Some((end.entity, group))
            })
        })
        .distinct_total();
    if !config.served_port_profiles {
        return labelled;
    }
    // Per unlabelled internal responder, its services with their windowed volume (the
    // consolidated differences); the profile is the services answered often enough. An entity
    // with a label never gets here, so it is in one group only.
    let min_flows = config.min_flows_per_service;
    let profiled = edges
        .filter(|edge| answers_a_service(edge))
        .map(|edge| (edge.dst.entity, (edge.dst_port, edge.protocol)))
        .reduce(move |_entity, services: &[(&(u16, u8), Volume)], output| {
            let answered: Vec<(u16, u8)> = services
                .iter()
                .filter(|(_, volume)| volume.flows - volume.failed >= min_flows)
                .map(|(service, _)| **service)
                .collect();
            if !answered.is_empty() {
                output.push((profile_group(&answered), 1));
            }
        });
    labelled.concat(profiled)
}

/// `(group, members)` for every group, counting the members seen in the window.
pub fn group_sizes<'s>(members: VecCollection<'s, Epoch, (Name, Name)>) -> VecCollection<'s, Epoch, (Name, isize)> {
    members.map(|(_entity, group)| group).count_total()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::entity::Endpoint;
    use crate::testing::{as_set, run_scenario, vol, Scenario};

    /// Window length in epochs (the scenarios tick by 1).
    const WINDOW: Epoch = 5;

    fn endpoint(entity: &str, workload: Option<&str>) -> Endpoint {
        Endpoint::new(entity, workload)
    }

    /// Contacts among unlabelled hosts, replicas of one workload, an external address and a
    /// grouped external address, on a few services, some failed.
    fn contacts() -> impl Strategy<Value = Vec<(Edge, Epoch, Volume)>> {
        let ends = prop_oneof![
            Just(endpoint("host:10.0.0.1", None)),
            Just(endpoint("host:10.0.0.2", None)),
            Just(endpoint("host:10.0.0.3", None)),
            Just(endpoint("host:10.0.0.4", None)),
            Just(endpoint("pod:shop/web-1", Some("workload:shop/Deployment/web"))),
            Just(endpoint("pod:shop/web-2", Some("workload:shop/Deployment/web"))),
            Just(endpoint("ext:203.0.113.9", None)),
            Just(endpoint("ext:198.51.100.7", Some("ext-group:saas"))),
            Just(endpoint("mcast:ff02::1:ff00:2c6", None)),
        ];
        let services = prop_oneof![
            Just((22u16, 6u8)),
            Just((443, 6)),
            Just((53, 17)),
            Just((5432, 6)),
            Just((136, 58)),
            Just((0, 1))
        ];
        let contact = (ends.clone(), ends, services, 1u64..=20, 1i64..=3, 0i64..=3).prop_map(
            |(src, dst, (dst_port, protocol), epoch, flows, failed)| {
                (Edge { src, dst, dst_port, protocol }, epoch, vol(flows, failed.min(flows), 0, 0))
            },
        );
        proptest::collection::vec(contact, 0..40)
    }

    /// The groups of the window ending at `t`, computed plainly from the contacts in it.
    fn oracle(contacts: &[(Edge, Epoch, Volume)], t: Epoch, config: &PeerGroupsConfig) -> BTreeSet<(String, String)> {
        let mut groups = BTreeSet::new();
        let mut answered: BTreeMap<String, BTreeMap<(u16, u8), i64>> = BTreeMap::new();
        for (edge, _, volume) in contacts.iter().filter(|(_, at, _)| *at <= t && t < *at + WINDOW) {
            for end in [&edge.src, &edge.dst] {
                if let Some(group) = end.peer_group() {
                    groups.insert((end.entity.to_string(), group.to_string()));
                }
            }
            let ported = edge.protocol != 1 && edge.protocol != 58;
            if ported && edge.dst.workload.is_none() && !edge.dst.is_external() && !edge.dst.is_special() {
                let services = answered.entry(edge.dst.entity.to_string()).or_default();
                *services.entry((edge.dst_port, edge.protocol)).or_default() += volume.flows - volume.failed;
            }
        }
        if config.served_port_profiles {
            for (entity, services) in answered {
                let profile: Vec<(u16, u8)> =
                    services.into_iter().filter(|(_, n)| *n >= config.min_flows_per_service).map(|(s, _)| s).collect();
                if !profile.is_empty() {
                    groups.insert((entity, profile_group(&profile).to_string()));
                }
            }
        }
        groups
    }

    fn groups_over_time(
        contacts: Vec<(Edge, Epoch, Volume)>,
        config: &PeerGroupsConfig,
    ) -> BTreeMap<Epoch, BTreeSet<(String, String)>> {
        let mut scenario = Scenario::new(WINDOW);
        scenario.contacts = contacts;
        let config = config.clone();
        run_scenario(&scenario, 26, move |inputs| membership(inputs.edges, inputs.live, &config))
            .into_iter()
            .map(|(t, snapshot)| {
                (t, as_set(&snapshot).into_iter().map(|(e, g)| (e.to_string(), g.to_string())).collect())
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// At every closed epoch the groups equal a from-scratch computation over the window,
        /// with and without served-port profiles.
        #[test]
        fn membership_agrees_with_a_batch_recomputation(contacts in contacts(), profiles in any::<bool>()) {
            let config = PeerGroupsConfig { served_port_profiles: profiles, ..PeerGroupsConfig::default() };
            for (t, got) in groups_over_time(contacts.clone(), &config) {
                prop_assert_eq!(got, oracle(&contacts, t, &config), "at {}", t);
            }
        }
    }

    #[test]
    fn servers_answering_the_same_services_form_a_group_and_a_scan_does_not_move_them() {
        let client = endpoint("host:10.0.9.9", None);
        let to = |server: &str, port: u16, volume: Volume| {
            (Edge { src: client.clone(), dst: endpoint(server, None), dst_port: port, protocol: 6 }, 1, volume)
        };
        let answered = vol(2, 0, 0, 0);
        let refused = vol(1, 1, 0, 0);
        let contacts = vec![
            to("host:10.0.0.1", 443, answered),
            to("host:10.0.0.2", 443, answered),
            to("host:10.0.0.3", 443, answered),
            to("host:10.0.0.3", 22, refused),
            to("host:10.0.0.4", 22, answered),
        ];
        let groups = groups_over_time(contacts, &PeerGroupsConfig::default()).remove(&1).unwrap();
        let expected: BTreeSet<(String, String)> = [
            ("host:10.0.0.1", "ports:443/tcp"),
            ("host:10.0.0.2", "ports:443/tcp"),
            ("host:10.0.0.3", "ports:443/tcp"),
            ("host:10.0.0.4", "ports:22/tcp"),
        ]
        .into_iter()
        .map(|(e, g)| (e.to_owned(), g.to_owned()))
        .collect();
        assert_eq!(groups, expected);
    }
}
