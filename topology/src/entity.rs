//! Entity resolution: what a flow endpoint is. A pod (namespace/pod) when the sensor knows it,
//! otherwise a host on an internal network or an external address. The workload a pod belongs to
//! is its peer group. An external address inside one of the configured external groups (the
//! networks of a SaaS provider or a CDN) keeps its own entity, `ext:<addr>`, and has the group,
//! `ext-group:<name>`, as its node in the workload-level graph: replicas calling different
//! addresses of one provider call the same node there.

use std::net::IpAddr;

use ipnet::IpNet;
use peergraph_schemas::EndpointMeta;
use prefix_trie::joint::{JointPrefixMap, JointPrefixSet};
use serde::{Deserialize, Serialize};

use crate::name::Name;

/// A resolved flow endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// "pod:<namespace>/<pod>", "host:<addr>", "ext:<addr>", or for the special addresses
    /// "mcast:<addr>", "bcast:<addr>", "unspec:<addr>" (see [`AddressClass`]).
    pub entity: Name,
    /// "workload:<namespace>/<kind>/<name>" when the endpoint is a replica of a workload;
    /// "ext-group:<name>" when it is an external address in an external group.
    pub workload: Option<Name>,
}

/// The destination that stands for every destination beyond a source's cap.
pub const OVERFLOW_ENTITY: &str = "overflow:destinations";

/// The source that stands for every address-based source beyond a worker's source cap.
pub const OVERFLOW_SOURCES: &str = "overflow:sources";

/// Whether a node stands for many (an overflow of destinations or of sources), not for one entity.
pub fn is_overflow_node(node: &str) -> bool {
    node.starts_with("overflow:")
}

/// The prefix of an external group's node in the workload-level graph (`ext-group:<name>`).
pub const EXTERNAL_GROUP_PREFIX: &str = "ext-group:";

/// Whether a node of either graph level is external: an external address (`ext:<addr>`) or an
/// external group (`ext-group:<name>`).
pub fn is_external_node(node: &str) -> bool {
    node.starts_with("ext:") || node.starts_with(EXTERNAL_GROUP_PREFIX)
}

/// Addresses that are neither a host nor an external peer: a multicast group (IPv4 224.0.0.0/4,
/// IPv6 ff00::/8: neighbour discovery's solicited-node groups, mDNS, SSDP...), the limited
/// broadcast address (255.255.255.255) and the unspecified address (0.0.0.0, `::`, a DHCP client
/// before it has an address). They keep their own entity, `<class>:<addr>`, and no detector takes
/// them for a destination a host chose: every host talks to a different solicited-node group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Multicast,
    Broadcast,
    Unspecified,
}

impl AddressClass {
    pub const ALL: [AddressClass; 3] = [AddressClass::Multicast, AddressClass::Broadcast, AddressClass::Unspecified];

    /// The class of `ip`, if it is special.
    pub fn of(ip: IpAddr) -> Option<AddressClass> {
        match ip {
            _ if ip.is_multicast() => Some(AddressClass::Multicast),
            _ if ip.is_unspecified() => Some(AddressClass::Unspecified),
            IpAddr::V4(v4) if v4.is_broadcast() => Some(AddressClass::Broadcast),
            _ => None,
        }
    }

    /// The entity prefix of the class.
    pub fn prefix(self) -> &'static str {
        match self {
            AddressClass::Multicast => "mcast:",
            AddressClass::Broadcast => "bcast:",
            AddressClass::Unspecified => "unspec:",
        }
    }
}

/// Whether a node is a special address (see [`AddressClass`]).
pub fn is_special_node(node: &str) -> bool {
    AddressClass::ALL.iter().any(|class| node.starts_with(class.prefix()))
}

impl Endpoint {
    /// The endpoint of an entity, in a workload (or external group) or none.
    pub fn new(entity: &str, workload: Option<&str>) -> Endpoint {
        Endpoint { entity: Name::new(entity), workload: workload.map(Name::new) }
    }

    /// The destination that stands for every destination beyond a source's cap.
    pub fn overflow() -> Endpoint {
        Endpoint { entity: Name::new(OVERFLOW_ENTITY), workload: None }
    }

    pub fn is_overflow(&self) -> bool {
        self.entity == OVERFLOW_ENTITY
    }

    /// The source that stands for every address-based source beyond a worker's source cap.
    pub fn overflow_sources() -> Endpoint {
        Endpoint { entity: Name::new(OVERFLOW_SOURCES), workload: None }
    }

    pub fn is_overflow_sources(&self) -> bool {
        self.entity == OVERFLOW_SOURCES
    }

    /// Whether the endpoint is an address-based entity (`host:` or `ext:`, not a pod, a special
    /// address or an overflow): what a spoofed source looks like.
    pub fn is_address_based(&self) -> bool {
        self.entity.starts_with("host:") || self.entity.starts_with("ext:")
    }

    /// The node this endpoint is in the workload-level graph: its workload (or external group),
    /// or itself.
    pub fn node(&self) -> &Name {
        self.workload.as_ref().unwrap_or(&self.entity)
    }

    /// Whether the endpoint is an external address (grouped or not).
    pub fn is_external(&self) -> bool {
        self.entity.starts_with("ext:")
    }

    /// Whether the endpoint is a multicast group, the broadcast or the unspecified address.
    pub fn is_special(&self) -> bool {
        is_special_node(&self.entity)
    }

    /// The name of the external group this endpoint's address is in, if any.
    pub fn external_group(&self) -> Option<&str> {
        self.workload.as_deref()?.strip_prefix(EXTERNAL_GROUP_PREFIX)
    }

    /// The peer group the endpoint's label puts it in: its workload or asset role. External
    /// endpoints have none: an external group is one node of the workload-level graph, not a set of
    /// entities expected to behave alike.
    pub fn peer_group(&self) -> Option<&Name> {
        if self.is_external() {
            None
        } else {
            self.workload.as_ref()
        }
    }
}

/// Which addresses are internal, and which external addresses are grouped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// CIDRs whose addresses are internal hosts; everything else is external. Defaults to the
    /// private, shared, loopback and link-local ranges of IPv4 and IPv6.
    pub internal_networks: Vec<IpNet>,
    /// Named sets of external networks, each one node of the workload-level graph
    /// (`ext-group:<name>`). An external address in several groups' networks goes to the group
    /// of the longest matching prefix. Default: none.
    pub external_groups: Vec<ExternalGroup>,
}

/// A named set of external networks that stand for one external service (a SaaS provider, a
/// CDN): `[[entities.external_groups]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalGroup {
    /// The group's name; its node is `ext-group:<name>`. Letters, digits, `-`, `_`, `.`, `/`.
    pub name: String,
    /// The group's networks (IPv4 or IPv6 CIDRs; a bare address is a /32 or /128).
    pub networks: Vec<IpNet>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        let nets = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
            "::1/128",
        ];
        ResolverConfig {
            internal_networks: nets.iter().filter_map(|n| n.parse().ok()).collect(),
            external_groups: Vec::new(),
        }
    }
}

/// Why an `[entities]` section is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverConfigError {
    #[error("entities.external_groups[{index}]: the name is empty")]
    EmptyName { index: usize },
    #[error("entities.external_groups: the name {name:?} may only have letters, digits, '-', '_', '.' and '/'")]
    BadName { name: String },
    #[error("entities.external_groups: the name {name:?} is used by more than one group")]
    DuplicateName { name: String },
    #[error("entities.external_groups: group {name:?} has no networks")]
    NoNetworks { name: String },
    #[error("entities.external_groups: network {network} is in both group {first:?} and group {second:?}")]
    SharedNetwork { network: IpNet, first: String, second: String },
    #[error(
        "entities.external_groups: network {network} of group {name:?} lies inside the internal network \
         {internal} (entities.internal_networks): its addresses are internal hosts, never in the group"
    )]
    InsideInternal { network: IpNet, name: String, internal: IpNet },
}

impl ResolverConfig {
    /// Checks the external groups: non-empty, distinct names of letters, digits, `-`, `_`, `.` and
    /// `/`; at least one network each; no network in two groups; no network inside an internal
    /// network (an internal network inside a group's network is fine: its addresses stay internal).
    pub fn validate(&self) -> Result<(), ResolverConfigError> {
        let internal: JointPrefixSet<IpNet> = self.internal_networks.iter().map(IpNet::trunc).collect();
        let mut owners: JointPrefixMap<IpNet, &str> = JointPrefixMap::new();
        let mut names = std::collections::BTreeSet::new();
        for (index, group) in self.external_groups.iter().enumerate() {
            let name = group.name.as_str();
            if name.is_empty() {
                return Err(ResolverConfigError::EmptyName { index });
            }
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
                return Err(ResolverConfigError::BadName { name: name.to_owned() });
            }
            if !names.insert(name) {
                return Err(ResolverConfigError::DuplicateName { name: name.to_owned() });
            }
            if group.networks.is_empty() {
                return Err(ResolverConfigError::NoNetworks { name: name.to_owned() });
            }
            for network in group.networks.iter().map(IpNet::trunc) {
                if let Some(internal) = internal.get_spm(&network) {
                    return Err(ResolverConfigError::InsideInternal { network, name: name.to_owned(), internal });
                }
                match owners.insert(network, name) {
                    Some(first) if first != name => {
                        return Err(ResolverConfigError::SharedNetwork {
                            network,
                            first: first.to_owned(),
                            second: name.to_owned(),
                        })
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Resolves endpoints from a flow's address and metadata.
#[derive(Clone, Debug)]
pub struct EntityResolver {
    /// The internal networks; an address in any of them is internal.
    internal: JointPrefixSet<IpNet>,
    /// Every external group's networks, each with the group's node (`ext-group:<name>`); an
    /// address takes the node of its longest matching network.
    groups: JointPrefixMap<IpNet, Name>,
}

impl EntityResolver {
    /// The resolver `config` describes. It does not validate `config` (see
    /// [`ResolverConfig::validate`]); should a network be in two groups, the group whose name
    /// sorts first has it.
    pub fn new(config: &ResolverConfig) -> Self {
        let mut by_name: Vec<&ExternalGroup> = config.external_groups.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mut groups = JointPrefixMap::new();
        for group in by_name {
            let node = Name::joined(&[EXTERNAL_GROUP_PREFIX, &group.name]);
            for network in group.networks.iter().map(IpNet::trunc) {
                if !groups.contains_key(&network) {
                    groups.insert(network, node.clone());
                }
            }
        }
        EntityResolver { internal: config.internal_networks.iter().map(IpNet::trunc).collect(), groups }
    }

    fn is_internal_ip(&self, ip: IpAddr) -> bool {
        self.internal.get_spm(&IpNet::from(ip)).is_some()
    }

    /// Whether `addr` is an address on an internal network.
    pub fn is_internal(&self, addr: &str) -> bool {
        addr.parse().is_ok_and(|ip| self.is_internal_ip(ip))
    }

    /// The node (`ext-group:<name>`) of the external group whose network is the longest to hold
    /// `ip`, if any. Meant for external addresses (internal ones are never grouped).
    pub fn external_group(&self, ip: IpAddr) -> Option<&Name> {
        self.groups.get_lpm(&IpNet::from(ip)).map(|(_, node)| node)
    }

    /// The endpoint of a flow's address with its sensor metadata: a pod when the metadata names
    /// one, else a special address's class (`mcast:<addr>`, ...; see [`AddressClass`]), else
    /// `host:<addr>` on an internal network, else `ext:<addr>` (in its external group, if any). The address is parsed once and looked up in prefix tables; the names are
    /// interned, so a name this thread has seen recently costs no allocation.
    pub fn resolve(&self, addr: &str, meta: Option<&EndpointMeta>) -> Endpoint {
        if let Some(meta) = meta {
            if let (Some(ns), Some(pod)) = (&meta.namespace, &meta.pod) {
                let workload = meta.workload.as_ref().map(|name| match &meta.workload_kind {
                    Some(kind) => Name::joined(&["workload:", ns, "/", kind, "/", name]),
                    None => Name::joined(&["workload:", ns, "/", name]),
                });
                return Endpoint { entity: Name::joined(&["pod:", ns, "/", pod]), workload };
            }
        }
        match addr.parse::<IpAddr>() {
            Ok(ip) => match AddressClass::of(ip) {
                Some(class) => Endpoint { entity: Name::joined(&[class.prefix(), addr]), workload: None },
                None if self.is_internal_ip(ip) => Endpoint { entity: Name::joined(&["host:", addr]), workload: None },
                None => Endpoint { entity: Name::joined(&["ext:", addr]), workload: self.external_group(ip).cloned() },
            },
            Err(_) => Endpoint { entity: Name::joined(&["ext:", addr]), workload: None },
        }
    }
}

impl Default for EntityResolver {
    fn default() -> Self {
        EntityResolver::new(&ResolverConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_resolve_to_their_workload() {
        let meta = EndpointMeta {
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            workload: Some("web".into()),
            workload_kind: Some("Deployment".into()),
            ..EndpointMeta::default()
        };
        let e = EntityResolver::default().resolve("10.1.0.11", Some(&meta));
        assert_eq!(e.entity, "pod:shop/web-1");
        assert_eq!(e.workload.as_deref(), Some("workload:shop/Deployment/web"));
        assert_eq!(e.node(), "workload:shop/Deployment/web");
    }

    #[test]
    fn bare_addresses_are_hosts_or_external() {
        let r = EntityResolver::default();
        assert_eq!(r.resolve("10.20.0.5", None).entity, "host:10.20.0.5");
        assert_eq!(r.resolve("fd00::1", None).entity, "host:fd00::1");
        assert_eq!(r.resolve("203.0.113.66", None).entity, "ext:203.0.113.66");
        assert!(r.resolve("203.0.113.66", None).is_external());
    }

    /// Issue 12: `ext:ff02::1:ff00:2c6` (a solicited-node multicast group) was alerted as a
    /// peer-unique destination.
    #[test]
    fn multicast_broadcast_and_unspecified_addresses_have_their_own_class() {
        let r = EntityResolver::default();
        for (addr, entity) in [
            ("ff02::1:ff00:2c6", "mcast:ff02::1:ff00:2c6"),
            ("224.0.0.251", "mcast:224.0.0.251"),
            ("239.255.255.250", "mcast:239.255.255.250"),
            ("255.255.255.255", "bcast:255.255.255.255"),
            ("0.0.0.0", "unspec:0.0.0.0"),
            ("::", "unspec:::"),
        ] {
            let end = r.resolve(addr, None);
            assert_eq!(end.entity, entity);
            assert!(end.is_special() && !end.is_external() && end.workload.is_none(), "{addr}");
        }
        assert!(!r.resolve("fe80::1", None).is_special(), "link-local unicast is an internal host");
        assert!(!r.resolve("10.0.0.255", None).is_special(), "a subnet's broadcast cannot be told from a host");
    }

    fn group(name: &str, networks: &[&str]) -> ExternalGroup {
        ExternalGroup { name: name.to_owned(), networks: networks.iter().map(|n| n.parse().unwrap()).collect() }
    }

    fn with_groups(groups: Vec<ExternalGroup>) -> ResolverConfig {
        ResolverConfig { external_groups: groups, ..ResolverConfig::default() }
    }

    /// A SaaS provider's v4 and v6 networks, with a more specific network of another group inside.
    fn saas() -> ResolverConfig {
        with_groups(vec![
            group("salesforce", &["13.108.0.0/14", "96.43.144.0/20", "2a01:111::/32"]),
            group("salesforce-eu", &["13.109.0.0/16", "2a01:111:f400::/48"]),
            group("cdn", &["151.101.0.0/16"]),
        ])
    }

    #[test]
    fn external_addresses_in_a_group_keep_their_entity_and_have_the_group_as_node() {
        let r = EntityResolver::new(&saas());
        for (addr, group) in [
            ("13.108.4.1", "salesforce"),
            ("13.111.255.254", "salesforce"),
            ("96.43.159.9", "salesforce"),
            ("2a01:111:2::9", "salesforce"),
            ("151.101.64.133", "cdn"),
        ] {
            let e = r.resolve(addr, None);
            assert_eq!(e.entity, format!("ext:{addr}"));
            assert_eq!(*e.node(), format!("ext-group:{group}"), "{addr}");
            assert_eq!(e.external_group(), Some(group));
            assert!(e.is_external(), "{addr}");
            assert_eq!(e.peer_group(), None, "a grouped external address is no peer-group member");
            assert!(is_external_node(e.node()));
        }
    }

    #[test]
    fn the_longest_matching_network_decides_the_group_in_v4_and_v6() {
        let r = EntityResolver::new(&saas());
        assert_eq!(r.resolve("13.109.7.7", None).node(), "ext-group:salesforce-eu");
        assert_eq!(r.resolve("13.110.7.7", None).node(), "ext-group:salesforce");
        assert_eq!(r.resolve("2a01:111:f400::25", None).node(), "ext-group:salesforce-eu");
        assert_eq!(r.resolve("2a01:111:f401::25", None).node(), "ext-group:salesforce");
    }

    #[test]
    fn addresses_outside_every_group_are_ungrouped_and_internal_ones_never_grouped() {
        let mut config = saas();
        config.external_groups.push(group("everything-else", &["0.0.0.0/0"]));
        let r = EntityResolver::new(&saas());
        for addr in ["13.112.0.1", "96.43.160.1", "2a01:112::1", "203.0.113.66"] {
            let e = r.resolve(addr, None);
            assert_eq!((e.entity.as_str(), e.workload.as_deref()), (format!("ext:{addr}").as_str(), None));
        }
        // A catch-all group holds every external address, and no internal one.
        let r = EntityResolver::new(&config);
        assert_eq!(r.resolve("203.0.113.66", None).node(), "ext-group:everything-else");
        assert_eq!(r.resolve("13.108.0.1", None).node(), "ext-group:salesforce");
        let host = r.resolve("10.1.2.3", None);
        assert_eq!((host.entity.as_str(), host.workload), ("host:10.1.2.3", None));
        assert_eq!(config.validate(), Ok(()), "an internal network inside a group's network is allowed");
        assert_eq!(r.resolve("not-an-address", None), Endpoint { entity: "ext:not-an-address".into(), workload: None });
    }

    #[test]
    fn an_unvalidated_network_in_two_groups_goes_to_the_name_that_sorts_first() {
        let config = with_groups(vec![group("zeta", &["198.51.100.0/24"]), group("alpha", &["198.51.100.0/24"])]);
        assert_eq!(EntityResolver::new(&config).resolve("198.51.100.7", None).node(), "ext-group:alpha");
        assert!(matches!(config.validate(), Err(ResolverConfigError::SharedNetwork { .. })));
    }

    #[test]
    fn invalid_groups_are_refused_with_the_reason() {
        let refused = |groups: Vec<ExternalGroup>| with_groups(groups).validate().unwrap_err().to_string();
        assert!(refused(vec![group("", &["198.51.100.0/24"])]).contains("external_groups[0]: the name is empty"));
        assert!(refused(vec![group("sales force", &["198.51.100.0/24"])]).contains("\"sales force\" may only have"));
        let twice = refused(vec![group("cdn", &["198.51.100.0/24"]), group("cdn", &["203.0.113.0/24"])]);
        assert!(twice.contains("\"cdn\" is used by more than one group"), "{twice}");
        assert!(refused(vec![group("cdn", &[])]).contains("group \"cdn\" has no networks"));
        let shared = refused(vec![group("a", &["198.51.100.0/24"]), group("b", &["2001:db8::/32", "198.51.100.9/24"])]);
        assert!(shared.contains("network 198.51.100.0/24 is in both group \"a\" and group \"b\""), "{shared}");
        let inside = refused(vec![group("vpn", &["10.8.0.0/16"])]);
        assert!(inside.contains("network 10.8.0.0/16 of group \"vpn\" lies inside the internal network 10.0.0.0/8"));
        let inside6 = refused(vec![group("ula", &["fd00:1::/32"])]);
        assert!(inside6.contains("inside the internal network fc00::/7"), "{inside6}");
        assert_eq!(saas().validate(), Ok(()));
        assert_eq!(ResolverConfig::default().validate(), Ok(()));
    }
}
