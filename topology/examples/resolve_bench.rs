//! Entity resolution alone: the cost of `EntityResolver::resolve` per flow end for an internal
//! host, an external address in no group and an external address in a group, with `groups`
//! external groups of `networks` networks each (IPv4 /12–/24 and IPv6 /32–/48, random).
//!
//!     cargo run --release -p peergraph-topology --example resolve_bench -- [groups] [networks] [lookups]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;
use peergraph_topology::entity::{EntityResolver, ExternalGroup, ResolverConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (groups, networks, lookups) = (arg(1, 100), arg(2, 20), arg(3, 1_000_000));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Public-looking IPv4 first octets (none internal) and IPv6 in 2001::/16.
    let v4 = |rng: &mut ChaCha8Rng| Ipv4Addr::new(rng.random_range(11..=99), rng.random(), rng.random(), 1);
    let config = ResolverConfig {
        external_groups: (0..groups)
            .map(|g| ExternalGroup {
                name: format!("saas-{g}"),
                networks: (0..networks)
                    .map(|n| {
                        if n % 4 == 3 {
                            let addr = Ipv6Addr::new(0x2001, rng.random(), rng.random(), 0, 0, 0, 0, 0);
                            IpNet::new(IpAddr::V6(addr), rng.random_range(32..=48)).unwrap().trunc()
                        } else {
                            IpNet::new(IpAddr::V4(v4(&mut rng)), rng.random_range(12..=24)).unwrap().trunc()
                        }
                    })
                    .collect(),
            })
            .collect(),
        ..ResolverConfig::default()
    };
    let resolver = EntityResolver::new(&config);
    // Addresses of each class, as the strings a flow carries.
    let grouped: Vec<String> = config
        .external_groups
        .iter()
        .flat_map(|g| g.networks.iter().map(|n| n.hosts().nth(1).unwrap_or(n.addr()).to_string()))
        .take(4096)
        .collect();
    let mut ungrouped = Vec::new();
    while ungrouped.len() < 4096 {
        let addr = v4(&mut rng).to_string();
        if resolver.resolve(&addr, None).workload.is_none() {
            ungrouped.push(addr);
        }
    }
    let internal: Vec<String> =
        (0..4096).map(|i| format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256)).collect();
    assert!(grouped.iter().all(|a| resolver.resolve(a, None).workload.is_some()), "every grouped address is grouped");
    println!(
        "{groups} groups × {networks} networks ({} distinct), {lookups} lookups per class",
        config.external_groups.iter().map(|g| g.networks.len()).sum::<usize>()
    );
    for (class, addrs) in
        [("internal host", &internal), ("external, no group", &ungrouped), ("external, grouped", &grouped)]
    {
        let started = Instant::now();
        for i in 0..lookups {
            black_box(resolver.resolve(black_box(&addrs[i % addrs.len()]), None));
        }
        let ns = started.elapsed().as_nanos() as f64 / lookups as f64;
        println!("{class:>20}: {ns:7.0} ns per resolve");
    }
}
