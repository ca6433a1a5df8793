//! Entity resolution against the inventory. The `assets` collection maps addresses and networks
//! (longest prefix wins) to an asset id, a role and a criticality; every address-based endpoint of
//! the graph (`host:` / `ext:`) that falls in one becomes `asset:<id>`, in the role's peer group.
//! Both sides are collections, so a relabel in the inventory updates every downstream result.
//! Endpoints the sensor identified as pods keep their Kubernetes identity, and external addresses
//! in a configured external group keep their group.
//!
//! What it costs: matching runs on the distinct addresses of the window, as `IpAddr`s (each
//! contact's addresses are parsed and consolidated per tick; no entity string is kept). Renaming leaves a record with no address-based
//! end (pod to pod) untouched and unindexed; a record with one is arranged once per such end, by
//! address, and changed only if its address has an asset (see `rename_end`). With an empty
//! inventory that one arrangement is the whole cost. Each function is a named region
//! (`AssetMatches`, `ResolveAssets`, `ResolveHistory`, `WeighByCriticality`), so an operator
//! profile shows its share.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::difference::{Abelian, Multiply};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::VecCollection;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Map;

use crate::detectors::Finding;
use crate::entity::Endpoint;
use crate::graph::{Edge, WorkloadEdge};
use crate::name::Name;
use crate::time::Epoch;
use crate::volume::Volume;

/// An inventory entry as the dataflow uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AssetRecord {
    pub network: IpNet,
    pub id: String,
    pub role: Option<String>,
    /// 0..=5, 2 normal.
    pub criticality: u8,
}

impl AssetRecord {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            entity: Name::joined(&["asset:", &self.id]),
            workload: self.role.as_ref().map(|role| Name::joined(&["role:", role])),
        }
    }
}

/// The address of an address-based entity id (`host:10.0.0.5`, `ext:2001:db8::1`).
pub fn address_of(entity: &str) -> Option<IpAddr> {
    let (kind, address) = entity.split_once(':')?;
    matches!(kind, "host" | "ext").then(|| address.parse().ok()).flatten()
}

/// Every network an address can be matched in: all IPv4 prefix lengths, IPv6 lengths in steps of
/// four bits (inventories and feeds use nibble-aligned IPv6 networks).
fn networks_of(address: IpAddr) -> impl Iterator<Item = IpNet> {
    let lengths: Vec<u8> = match address {
        IpAddr::V4(_) => (0..=32).collect(),
        IpAddr::V6(_) => (0..=128).step_by(4).collect(),
    };
    lengths.into_iter().filter_map(move |len| IpNet::new(address, len).ok().map(|net| net.trunc()))
}

/// `(address, asset)`: the asset (longest matching network; ties by id) of every address of an
/// address-based endpoint in the graph. Every such endpoint with that address (`host:` or `ext:`)
/// resolves to it. External addresses in an external group (`entities.external_groups`) are not
/// matched: the configuration already says what they are, and the long-horizon history holds them
/// as their group's node, which a rename could not follow.
pub fn asset_matches<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    assets: VecCollection<'s, Epoch, AssetRecord>,
) -> VecCollection<'s, Epoch, (IpAddr, AssetRecord)> {
    let outer = contacts.scope();
    outer.region_named("AssetMatches", |inner| {
        let addresses = contacts
            .enter_region(inner)
            .flat_map(|(edge, _)| [matchable(&edge.src), matchable(&edge.dst)].into_iter().flatten())
            .distinct_total();
        let candidates = addresses.flat_map(|address| networks_of(address).map(move |network| (network, address)));
        candidates
            .join(assets.enter_region(inner).map(|asset| (asset.network.trunc(), asset)))
            .map(|(_network, (address, asset))| (address, asset))
            .reduce(|_address, matches, output| {
                let best = matches
                    .iter()
                    .map(|(asset, _)| *asset)
                    .max_by(|a, b| a.network.prefix_len().cmp(&b.network.prefix_len()).then_with(|| b.id.cmp(&a.id)));
                if let Some(asset) = best {
                    output.push((asset.clone(), 1));
                }
            })
            .leave_region(outer)
    })
}

/// The address an endpoint is matched against the inventory by: an address-based endpoint's,
/// unless it is in an external group.
fn matchable(end: &Endpoint) -> Option<IpAddr> {
    end.external_group().is_none().then(|| address_of(&end.entity)).flatten()
}

/// Renames one end of every record: where the end's address, `key(record)`, has a name in `names`,
/// `set` puts the name in; other records pass unchanged. `names` holds at most one name per
/// address.
///
/// `key` returns `None` for an end that has no address or is not matched (a pod, a workload, an
/// external group): such records are neither indexed nor joined, they pass straight through. The others are arranged once, by
/// address, and one join against the names emits, for each record that has a name, its renamed
/// form and the retraction of the original; those changes are added to the untouched records. So
/// the rename costs one arrangement of the records with an address-based end, plus join work for
/// the records that have a name; a change in `names` (a relabel) rewrites every record it touches.
/// The arranged records are ordered by their hash first, so that sorting and merging them seldom
/// compares their strings, and [`Shared`], so that the arrangement's merges copy no strings.
fn rename_end<'s, D, N, R>(
    records: VecCollection<'s, Epoch, D, R>,
    names: VecCollection<'s, Epoch, (IpAddr, N)>,
    key: fn(&D) -> Option<IpAddr>,
    set: fn(&mut D, N),
) -> VecCollection<'s, Epoch, D, R>
where
    D: differential_dataflow::ExchangeData + Hash + Sync,
    N: differential_dataflow::ExchangeData,
    R: differential_dataflow::ExchangeData + Abelian + Multiply<isize, Output = R>,
{
    let addressed =
        records.clone().flat_map(move |record| Some((key(&record)?, (record.hashed(), Shared(Arc::new(record))))));
    let renames = addressed.arrange_by_key().join_core(names.arrange_by_key(), move |_, (_, record), name| {
        let original = D::clone(&record.0);
        let mut renamed = original.clone();
        set(&mut renamed, name.clone());
        Some((original, renamed))
    });
    let changes = renames
        .inner
        .flat_map(|((original, renamed), time, diff)| {
            let mut retraction = diff.clone();
            retraction.negate();
            [(renamed, time, diff), (original, time, retraction)]
        })
        .as_collection();
    records.concat(changes)
}

/// A record as [`rename_end`] indexes it: cloned (as every merge of its arrangement does) by
/// counting a reference rather than copying its strings. It compares, hashes and serializes as
/// the record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Shared<D>(Arc<D>);

impl<D: Serialize> Serialize for Shared<D> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, D: Deserialize<'de>> Deserialize<'de> for Shared<D> {
    fn deserialize<De: serde::Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        D::deserialize(deserializer).map(|record| Shared(Arc::new(record)))
    }
}

/// The contacts with every endpoint that matched an asset replaced by the asset's endpoint.
pub fn resolve_assets<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    matches: VecCollection<'s, Epoch, (IpAddr, AssetRecord)>,
) -> VecCollection<'s, Epoch, (Edge, Epoch), Volume> {
    let outer = contacts.scope();
    outer.region_named("ResolveAssets", |inner| {
        let endpoints = matches.enter_region(inner).map(|(address, asset)| (address, asset.endpoint()));
        let src = rename_end(
            contacts.enter_region(inner),
            endpoints.clone(),
            |(edge, _)| matchable(&edge.src),
            |(edge, _), e| edge.src = e,
        );
        rename_end(src, endpoints, |(edge, _)| matchable(&edge.dst), |(edge, _), e| edge.dst = e).leave_region(outer)
    })
}

/// The long-horizon history with its address-based nodes renamed as the current window's contacts
/// are. Only addresses active in the window are matched, which is all a detector joining the
/// history with the window can ask for.
pub fn resolve_history<'s>(
    history: VecCollection<'s, Epoch, (WorkloadEdge, Epoch)>,
    matches: VecCollection<'s, Epoch, (IpAddr, AssetRecord)>,
) -> VecCollection<'s, Epoch, (WorkloadEdge, Epoch)> {
    let outer = history.scope();
    outer.region_named("ResolveHistory", |inner| {
        let nodes = matches.enter_region(inner).map(|(address, asset)| (address, asset.endpoint().node().clone()));
        let src = rename_end(
            history.enter_region(inner),
            nodes.clone(),
            |(edge, _)| address_of(&edge.src),
            |(edge, _), n| edge.src = n,
        );
        rename_end(src, nodes, |(edge, _)| address_of(&edge.dst), |(edge, _), n| edge.dst = n).leave_region(outer)
    })
}

/// Findings about assets, with their score raised (or lowered) by the asset's criticality: ten
/// points per level above (below) normal.
pub fn weigh_by_criticality<'s>(
    findings: VecCollection<'s, Epoch, Finding>,
    matches: VecCollection<'s, Epoch, (IpAddr, AssetRecord)>,
) -> VecCollection<'s, Epoch, Finding> {
    let outer = findings.scope();
    outer.region_named("WeighByCriticality", |inner| {
        let criticality = matches
            .enter_region(inner)
            .map(|(_, asset)| (asset.endpoint().entity, asset.criticality))
            .reduce(|_entity, levels, output| {
                if let Some((level, _)) = levels.last() {
                    output.push((**level, 1));
                }
            });
        let by_entity = findings.enter_region(inner).map(|finding| (finding.entity.clone(), finding));
        let weighed = by_entity.clone().join(criticality.clone()).map(|(_, (mut finding, level))| {
            let score = i32::from(finding.score) + 10 * (i32::from(level) - 2);
            finding.score = score.clamp(0, 100) as u8;
            finding.evidence.push(("asset_criticality".to_owned(), level.to_string()));
            finding
        });
        weighed
            .concat(by_entity.antijoin(criticality.map(|(entity, _)| entity)).map(|(_, finding)| finding))
            .leave_region(outer)
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use differential_dataflow::difference::Semigroup;
    use differential_dataflow::input::Input;

    use super::*;
    use crate::testing::edge;

    fn asset(network: &str, id: &str, role: Option<&str>) -> AssetRecord {
        AssetRecord { network: network.parse().unwrap(), id: id.into(), role: role.map(str::to_owned), criticality: 2 }
    }

    #[test]
    fn addresses_resolve_to_the_longest_matching_network() {
        assert_eq!(address_of("host:10.0.0.5"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(address_of("pod:ns/p"), None);
        let nets: Vec<IpNet> = networks_of("10.1.2.3".parse().unwrap()).collect();
        assert!(nets.contains(&"10.1.2.0/24".parse().unwrap()) && nets.contains(&"10.1.2.3/32".parse().unwrap()));
    }

    /// Entities of the property test: hosts and external addresses (IPv4 and IPv6) that fall in
    /// several of the networks below, some in none, pods that never match, and an external address
    /// in an external group (never matched either).
    const ENTITIES: [&str; 10] = [
        "ext:203.0.113.77",
        "host:10.0.0.2",
        "host:10.0.0.9",
        "host:10.0.1.7",
        "host:10.200.0.1",
        "ext:203.0.113.9",
        "ext:198.51.100.1",
        "host:2001:db8::1",
        "pod:ns/a-1",
        "pod:ns/b-1",
    ];
    /// Networks (one not truncated) and ids; an id fixes its role and criticality.
    const NETWORKS: [&str; 7] =
        ["10.0.0.0/8", "10.0.0.0/24", "10.0.0.2/32", "10.0.1.9/24", "203.0.113.0/24", "2001:db8::/32", "0.0.0.0/0"];
    const IDS: [&str; 3] = ["a", "b", "c"];

    fn listed(network: usize, id: usize) -> AssetRecord {
        AssetRecord {
            network: NETWORKS[network].parse().unwrap(),
            id: IDS[id].to_owned(),
            role: [Some("db".to_owned()), None, Some("web".to_owned())][id].clone(),
            criticality: id as u8 + 1,
        }
    }

    fn endpoint(entity: usize) -> Endpoint {
        let entity = ENTITIES[entity];
        let workload = match entity.strip_prefix("pod:ns/") {
            Some(pod) => Some(format!("workload:ns/Deployment/{}", &pod[..1])),
            None => (entity == "ext:203.0.113.77").then(|| "ext-group:partner".to_owned()),
        };
        Endpoint::new(entity, workload.as_deref())
    }

    /// The reference: an endpoint renamed by the longest listed network that holds its address
    /// (ties by the smallest id), computed directly from the inventory at one time; pods and
    /// external groups keep theirs.
    fn resolved(endpoint: &Endpoint, inventory: &[AssetRecord]) -> Endpoint {
        let Some(address) = address_of(&endpoint.entity).filter(|_| endpoint.external_group().is_none()) else {
            return endpoint.clone();
        };
        inventory
            .iter()
            .filter(|asset| asset.network.contains(&address))
            .max_by(|a, b| a.network.prefix_len().cmp(&b.network.prefix_len()).then_with(|| b.id.cmp(&a.id)))
            .map_or_else(|| endpoint.clone(), AssetRecord::endpoint)
    }

    /// Accumulates timed updates up to and including `at`, dropping what nets to zero.
    fn state_at<D: Ord + Clone, R: Semigroup + Clone + differential_dataflow::difference::IsZero>(
        updates: &[(D, Epoch, R)],
        at: Epoch,
    ) -> BTreeMap<D, R> {
        let mut state: BTreeMap<D, R> = BTreeMap::new();
        for (datum, _, diff) in updates.iter().filter(|(_, time, _)| *time <= at) {
            match state.get_mut(datum) {
                Some(acc) => acc.plus_equals(diff),
                None => {
                    state.insert(datum.clone(), diff.clone());
                }
            }
        }
        state.retain(|_, diff| !diff.is_zero());
        state
    }

    /// One random case: contacts `(src, dst, port, from, until)` live in `[from, until)` (with
    /// one flow per contact), assets `(network, id, from, until)` listed in `[from, until)`.
    type Contacts = Vec<(usize, usize, u16, Epoch, Epoch)>;
    type Listings = Vec<(usize, usize, Epoch, Epoch)>;

    /// Runs asset resolution over the contacts and, as history, their workload edges, and returns
    /// every update of the resolved contacts and the resolved history.
    #[allow(clippy::type_complexity)]
    fn run_resolution(
        contacts: &Contacts,
        listings: &Listings,
        end: Epoch,
    ) -> (Vec<((Edge, Epoch), Epoch, Volume)>, Vec<((WorkloadEdge, Epoch), Epoch, isize)>) {
        let (contacts, listings) = (contacts.clone(), listings.clone());
        timely::execute_directly(move |worker| {
            let seen_contacts = Rc::new(RefCell::new(Vec::new()));
            let seen_history = Rc::new(RefCell::new(Vec::new()));
            let (contacts_sink, history_sink) = (seen_contacts.clone(), seen_history.clone());
            let (mut contacts_in, mut history_in, mut assets_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
                let (assets_in, assets) = scope.new_collection::<AssetRecord, isize>();
                let matches = asset_matches(contacts.clone(), assets);
                let (probe, _) = resolve_assets(contacts, matches.clone())
                    .inspect(move |update| contacts_sink.borrow_mut().push(update.clone()))
                    .probe();
                resolve_history(history, matches)
                    .inspect(move |update| history_sink.borrow_mut().push(update.clone()))
                    .probe_with(&probe);
                (contacts_in, history_in, assets_in, probe)
            });
            for time in 0..end {
                for &(src, dst, port, from, until) in &contacts {
                    let contact = Edge { src: endpoint(src), dst: endpoint(dst), dst_port: port, protocol: 6 };
                    let workload_edge = WorkloadEdge::from(&contact);
                    let one = Volume { flows: 1, bytes_out: 10, ..Volume::default() };
                    if from == time {
                        contacts_in.update((contact.clone(), from), one);
                        history_in.update((workload_edge.clone(), from), 1);
                    }
                    if until == time {
                        contacts_in.update((contact, from), one.negated());
                        history_in.update((workload_edge, from), -1);
                    }
                }
                for &(network, id, from, until) in &listings {
                    if from == time {
                        assets_in.update(listed(network, id), 1);
                    }
                    if until == time {
                        assets_in.update(listed(network, id), -1);
                    }
                }
                contacts_in.advance_to(time + 1);
                history_in.advance_to(time + 1);
                assets_in.advance_to(time + 1);
                contacts_in.flush();
                history_in.flush();
                assets_in.flush();
                worker.step_while(|| probe.less_than(&(time + 1)));
            }
            let contacts = seen_contacts.borrow().clone();
            let history = seen_history.borrow().clone();
            (contacts, history)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Random contacts and a random inventory that lists, withdraws and relabels networks over
        /// time: at every time the resolved contacts and history equal the reference renaming of
        /// what is live then.
        #[test]
        fn resolution_equals_the_reference_at_every_time(
            contacts in proptest::collection::vec((0..10usize, 0..10usize, 0..2u16, 0..8u64, 0..12u64), 0..14),
            listings in proptest::collection::vec((0..7usize, 0..3usize, 0..10u64, 0..12u64), 0..8),
        ) {
            const END: Epoch = 12;
            // Live in [from, until), until after from (or never, when it is not).
            let contacts: Contacts = contacts
                .into_iter()
                .map(|(src, dst, port, from, until)| (src, dst, port, from, if until > from { until } else { END }))
                .collect();
            let listings: Listings = listings
                .into_iter()
                .map(|(network, id, from, until)| (network, id, from, if until > from { until } else { END }))
                .collect();
            let (seen_contacts, seen_history) = run_resolution(&contacts, &listings, END);
            for at in 0..END {
                let inventory: Vec<AssetRecord> = listings
                    .iter()
                    .filter(|(_, _, from, until)| (*from..*until).contains(&at))
                    .map(|&(network, id, _, _)| listed(network, id))
                    .collect();
                let live: Vec<(Edge, Epoch)> = contacts
                    .iter()
                    .filter(|(_, _, _, from, until)| (*from..*until).contains(&at))
                    .map(|&(src, dst, port, from, _)| {
                        (Edge { src: endpoint(src), dst: endpoint(dst), dst_port: port, protocol: 6 }, from)
                    })
                    .collect();
                let expected_contacts: Vec<((Edge, Epoch), Volume)> = live
                    .iter()
                    .map(|(contact, from)| {
                        let renamed = Edge {
                            src: resolved(&contact.src, &inventory),
                            dst: resolved(&contact.dst, &inventory),
                            ..contact.clone()
                        };
                        ((renamed, *from), Volume { flows: 1, bytes_out: 10, ..Volume::default() })
                    })
                    .collect::<Vec<_>>();
                let expected_contacts = state_at(
                    &expected_contacts.into_iter().map(|(datum, volume)| (datum, 0, volume)).collect::<Vec<_>>(),
                    0,
                );
                proptest::prop_assert_eq!(state_at(&seen_contacts, at), expected_contacts, "contacts at {}", at);
                let expected_history = live
                    .iter()
                    .map(|(contact, from)| {
                        let renamed = Edge {
                            src: resolved(&contact.src, &inventory),
                            dst: resolved(&contact.dst, &inventory),
                            ..contact.clone()
                        };
                        ((WorkloadEdge::from(&renamed), *from), 0, 1isize)
                    })
                    .collect::<Vec<_>>();
                proptest::prop_assert_eq!(state_at(&seen_history, at), state_at(&expected_history, 0), "history at {}", at);
            }
        }
    }

    /// Contacts and assets in, resolved edges out, and an inventory change in between.
    #[test]
    fn a_relabel_in_the_inventory_rewrites_the_graph() {
        let seen = timely::execute_directly(|worker| {
            let seen = Rc::new(RefCell::new(Vec::new()));
            let sink = seen.clone();
            let (mut contacts_in, mut assets_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let (assets_in, assets) = scope.new_collection::<AssetRecord, isize>();
                let matches = asset_matches(contacts.clone(), assets);
                let (probe, _) = resolve_assets(contacts, matches)
                    .map(|(edge, _)| (edge.src.entity, edge.src.workload, edge.dst.entity))
                    .inspect(move |update| sink.borrow_mut().push(update.clone()))
                    .probe();
                (contacts_in, assets_in, probe)
            });
            let contact = (edge("host:10.0.4.7", None, "ext:203.0.113.9", None, 443), 1000);
            contacts_in.update_at(contact, 1000, Volume { flows: 1, ..Volume::default() });
            assets_in.update_at(asset("10.0.0.0/8", "corp", None), 1000, 1);
            assets_in.update_at(asset("10.0.4.0/24", "dc-1", Some("domain-controller")), 1000, 1);
            // At 2000 the inventory moves the /24 to another asset.
            assets_in.update_at(asset("10.0.4.0/24", "dc-1", Some("domain-controller")), 2000, -1);
            assets_in.update_at(asset("10.0.4.0/24", "dc-2", Some("domain-controller")), 2000, 1);
            assets_in.advance_to(3000);
            assets_in.flush();
            contacts_in.advance_to(3000);
            contacts_in.flush();
            worker.step_while(|| probe.less_than(&3000));
            let seen = seen.borrow().clone();
            seen
        });
        let state_at = |t: Epoch| {
            let mut state: BTreeMap<(Name, Option<Name>, Name), Volume> = BTreeMap::new();
            for (datum, time, diff) in seen.iter().filter(|(_, time, _)| *time <= t) {
                let _ = time;
                differential_dataflow::difference::Semigroup::plus_equals(
                    state.entry(datum.clone()).or_default(),
                    diff,
                );
            }
            state
                .into_iter()
                .filter(|(_, v)| v.flows != 0)
                .map(|((entity, role, dst), _)| (entity.to_string(), role.map(String::from), dst.to_string()))
                .collect::<Vec<_>>()
        };
        let role = Some("role:domain-controller".to_owned());
        assert_eq!(state_at(1000), vec![("asset:dc-1".to_owned(), role.clone(), "ext:203.0.113.9".to_owned())]);
        assert_eq!(state_at(2000), vec![("asset:dc-2".to_owned(), role, "ext:203.0.113.9".to_owned())]);
    }

    /// A finding about a listed asset is weighed by the asset's criticality; one about an entity
    /// that is no asset keeps its score.
    #[test]
    fn findings_about_assets_are_weighed_by_criticality() {
        let contacts = vec![(edge("host:10.0.4.7", None, "host:10.0.9.9", None, 443), 1000, 1)];
        let out = crate::testing::run_collection(contacts, 2000, |contacts| {
            let scope = contacts.scope();
            let critical = AssetRecord { criticality: 4, ..asset("10.0.4.0/24", "dc-1", Some("domain-controller")) };
            let (_, assets) = scope.new_collection_from(vec![critical]);
            let finding = |entity: &str| Finding {
                alert_id: format!("id-{entity}"),
                detector: "test".to_owned(),
                entity: entity.into(),
                key: String::new(),
                peer_group: None,
                score: 50,
                summary: String::new(),
                evidence: Vec::new(),
                techniques: Vec::new(),
            };
            let (_, findings) = scope.new_collection_from(vec![finding("asset:dc-1"), finding("host:10.0.9.9")]);
            weigh_by_criticality(findings, asset_matches(contacts, assets))
                .map(|finding| (finding.entity.to_string(), finding.score, finding.evidence))
        });
        let weighed: Vec<_> = out.into_iter().map(|(finding, _)| finding).collect();
        assert_eq!(
            weighed,
            vec![
                ("asset:dc-1".to_owned(), 70, vec![("asset_criticality".to_owned(), "4".to_owned())]),
                ("host:10.0.9.9".to_owned(), 50, Vec::new()),
            ]
        );
    }

    /// An inventory network covering external addresses renames the ungrouped one only: an
    /// address in an external group keeps its entity and group.
    #[test]
    fn grouped_external_addresses_are_not_matched_against_the_inventory() {
        let contacts = vec![
            (edge("host:10.0.4.7", None, "ext:198.51.100.9", Some("ext-group:saas"), 443), 1000, 1),
            (edge("host:10.0.4.7", None, "ext:198.51.100.10", None, 443), 1000, 1),
        ];
        let out = crate::testing::run_collection(contacts, 2000, |contacts| {
            let scope = contacts.scope();
            let (_, assets) = scope.new_collection_from(vec![asset("198.51.100.0/24", "partner", Some("partner"))]);
            resolve_assets(contacts.clone(), asset_matches(contacts, assets))
                .map(|(edge, _)| (edge.dst.entity.to_string(), edge.dst.workload.map(String::from)))
        });
        let ends: Vec<(String, Option<String>)> = out.into_iter().map(|(end, _)| end).collect();
        assert_eq!(
            ends,
            vec![
                ("asset:partner".to_owned(), Some("role:partner".to_owned())),
                ("ext:198.51.100.9".to_owned(), Some("ext-group:saas".to_owned())),
            ]
        );
    }
}
