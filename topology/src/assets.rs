//! Entity resolution against the inventory. The `assets` collection maps addresses and networks
//! (longest prefix wins) to an asset id, a role and a criticality; every address-based endpoint of
//! the graph (`host:` / `ext:`) that falls in one becomes `asset:<id>`, in the role's peer group.
//! Both sides are collections, so a relabel in the inventory updates every downstream result.
//! Endpoints the sensor identified as pods keep their Kubernetes identity, and external addresses
//! in a configured external group keep their group.

use std::net::IpAddr;

use differential_dataflow::difference::Multiply;
use differential_dataflow::VecCollection;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::detectors::Finding;
use crate::entity::Endpoint;
use crate::graph::{Edge, WorkloadEdge};
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
        Endpoint { entity: format!("asset:{}", self.id), workload: self.role.as_ref().map(|r| format!("role:{r}")) }
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

/// `(entity, asset)`: the asset (longest matching network; ties by id) of every address-based
/// endpoint in the graph. External addresses in an external group (`entities.external_groups`)
/// are not matched: the configuration already says what they are, and the long-horizon history
/// holds them as their group's node, which a rename could not follow.
pub fn asset_matches<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    assets: VecCollection<'s, Epoch, AssetRecord>,
) -> VecCollection<'s, Epoch, (String, AssetRecord)> {
    let addressed = contacts
        .flat_map(|(edge, _)| {
            [edge.src, edge.dst].into_iter().filter(|end| end.external_group().is_none()).filter_map(|end| {
                let address = address_of(&end.entity)?;
                Some((end.entity, address))
            })
        })
        .distinct();
    let candidates =
        addressed.flat_map(|(entity, address)| networks_of(address).map(move |network| (network, entity.clone())));
    candidates
        .join(assets.map(|asset| (asset.network.trunc(), asset)))
        .map(|(_network, (entity, asset))| (entity, asset))
        .reduce(|_entity, matches, output| {
            let best = matches
                .iter()
                .map(|(asset, _)| *asset)
                .max_by(|a, b| a.network.prefix_len().cmp(&b.network.prefix_len()).then_with(|| b.id.cmp(&a.id)));
            if let Some(asset) = best {
                output.push((asset.clone(), 1));
            }
        })
}

/// Renames one end of every record: where `key(record)` is in `names`, `set` puts the new name in;
/// other records pass unchanged (an outer join: join plus antijoin).
fn rename_end<'s, D, N, R>(
    records: VecCollection<'s, Epoch, D, R>,
    names: VecCollection<'s, Epoch, (String, N)>,
    key: fn(&D) -> String,
    set: fn(&mut D, N),
) -> VecCollection<'s, Epoch, D, R>
where
    D: differential_dataflow::ExchangeData,
    N: differential_dataflow::ExchangeData,
    R: differential_dataflow::ExchangeData + differential_dataflow::difference::Abelian + Multiply<isize, Output = R>,
{
    let matched = names.clone().map(|(name, _)| name);
    let keyed = records.map(move |record| (key(&record), record));
    keyed
        .clone()
        .join(names)
        .map(move |(_, (mut record, name))| {
            set(&mut record, name);
            record
        })
        .concat(keyed.antijoin(matched).map(|(_, record)| record))
}

/// The contacts with every endpoint that matched an asset replaced by the asset's endpoint.
pub fn resolve_assets<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    matches: VecCollection<'s, Epoch, (String, AssetRecord)>,
) -> VecCollection<'s, Epoch, (Edge, Epoch), Volume> {
    let endpoints = matches.map(|(entity, asset)| (entity, asset.endpoint()));
    let src = rename_end(contacts, endpoints.clone(), |(edge, _)| edge.src.entity.clone(), |(edge, _), e| edge.src = e);
    rename_end(src, endpoints, |(edge, _)| edge.dst.entity.clone(), |(edge, _), e| edge.dst = e)
}

/// The long-horizon history with its address-based nodes renamed as the current window's contacts
/// are. Only addresses active in the window are matched, which is all a detector joining the
/// history with the window can ask for.
pub fn resolve_history<'s>(
    history: VecCollection<'s, Epoch, (WorkloadEdge, Epoch)>,
    matches: VecCollection<'s, Epoch, (String, AssetRecord)>,
) -> VecCollection<'s, Epoch, (WorkloadEdge, Epoch)> {
    let nodes = matches.map(|(entity, asset)| (entity, asset.endpoint().node().to_owned()));
    let src = rename_end(history, nodes.clone(), |(edge, _)| edge.src.clone(), |(edge, _), n| edge.src = n);
    rename_end(src, nodes, |(edge, _)| edge.dst.clone(), |(edge, _), n| edge.dst = n)
}

/// Findings about assets, with their score raised (or lowered) by the asset's criticality: ten
/// points per level above (below) normal.
pub fn weigh_by_criticality<'s>(
    findings: VecCollection<'s, Epoch, Finding>,
    matches: VecCollection<'s, Epoch, (String, AssetRecord)>,
) -> VecCollection<'s, Epoch, Finding> {
    let criticality =
        matches.map(|(_, asset)| (asset.endpoint().entity, asset.criticality)).reduce(|_entity, levels, output| {
            if let Some((level, _)) = levels.last() {
                output.push((**level, 1));
            }
        });
    let by_entity = findings.map(|finding| (finding.entity.clone(), finding));
    let weighed = by_entity.clone().join(criticality.clone()).map(|(_, (mut finding, level))| {
        let score = i32::from(finding.score) + 10 * (i32::from(level) - 2);
        finding.score = score.clamp(0, 100) as u8;
        finding.evidence.push(("asset_criticality".to_owned(), level.to_string()));
        finding
    });
    weighed.concat(by_entity.antijoin(criticality.map(|(entity, _)| entity)).map(|(_, finding)| finding))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

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
            let mut state: BTreeMap<(String, Option<String>, String), Volume> = BTreeMap::new();
            for (datum, time, diff) in seen.iter().filter(|(_, time, _)| *time <= t) {
                let _ = time;
                differential_dataflow::difference::Semigroup::plus_equals(
                    state.entry(datum.clone()).or_default(),
                    diff,
                );
            }
            state.into_iter().filter(|(_, v)| v.flows != 0).map(|(k, _)| k).collect::<Vec<_>>()
        };
        let role = Some("role:domain-controller".to_owned());
        assert_eq!(state_at(1000), vec![("asset:dc-1".to_owned(), role.clone(), "ext:203.0.113.9".to_owned())]);
        assert_eq!(state_at(2000), vec![("asset:dc-2".to_owned(), role, "ext:203.0.113.9".to_owned())]);
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
                .map(|(edge, _)| (edge.dst.entity, edge.dst.workload))
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
