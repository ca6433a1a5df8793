//! Entity resolution: what a flow endpoint is. A pod (namespace/pod) when the sensor knows it,
//! otherwise a host on an internal network or an external address. The workload a pod belongs to
//! is its peer group.

use std::net::IpAddr;

use ipnet::IpNet;
use peergraph_schemas::EndpointMeta;
use serde::{Deserialize, Serialize};

/// A resolved flow endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// "pod:<namespace>/<pod>", "host:<addr>" or "ext:<addr>".
    pub entity: String,
    /// "workload:<namespace>/<kind>/<name>" when the endpoint is a replica of a workload.
    pub workload: Option<String>,
}

/// The destination that stands for every destination beyond a source's cap.
pub const OVERFLOW_ENTITY: &str = "overflow:destinations";

impl Endpoint {
    /// The destination that stands for every destination beyond a source's cap.
    pub fn overflow() -> Endpoint {
        Endpoint { entity: OVERFLOW_ENTITY.to_owned(), workload: None }
    }

    pub fn is_overflow(&self) -> bool {
        self.entity == OVERFLOW_ENTITY
    }

    /// The node this endpoint is in the workload-level graph: its workload, or itself.
    pub fn node(&self) -> &str {
        self.workload.as_deref().unwrap_or(&self.entity)
    }

    pub fn is_external(&self) -> bool {
        self.entity.starts_with("ext:")
    }
}

/// Which addresses are internal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// CIDRs whose addresses are internal hosts; everything else is external. Defaults to the
    /// private, shared, loopback and link-local ranges of IPv4 and IPv6.
    pub internal_networks: Vec<IpNet>,
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
        ResolverConfig { internal_networks: nets.iter().filter_map(|n| n.parse().ok()).collect() }
    }
}

/// Resolves endpoints from a flow's address and metadata.
#[derive(Clone, Debug)]
pub struct EntityResolver {
    internal: Vec<IpNet>,
}

impl EntityResolver {
    pub fn new(config: &ResolverConfig) -> Self {
        EntityResolver { internal: config.internal_networks.clone() }
    }

    pub fn is_internal(&self, addr: &str) -> bool {
        match addr.parse::<IpAddr>() {
            Ok(ip) => self.internal.iter().any(|net| net.contains(&ip)),
            Err(_) => false,
        }
    }

    pub fn resolve(&self, addr: &str, meta: Option<&EndpointMeta>) -> Endpoint {
        if let Some(meta) = meta {
            if let (Some(ns), Some(pod)) = (&meta.namespace, &meta.pod) {
                let workload = meta.workload.as_ref().map(|name| match &meta.workload_kind {
                    Some(kind) => format!("workload:{ns}/{kind}/{name}"),
                    None => format!("workload:{ns}/{name}"),
                });
                return Endpoint { entity: format!("pod:{ns}/{pod}"), workload };
            }
        }
        let prefix = if self.is_internal(addr) { "host" } else { "ext" };
        Endpoint { entity: format!("{prefix}:{addr}"), workload: None }
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
}
