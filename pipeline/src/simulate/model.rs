//! The simulated environment as data: groups of endpoints (office clients, admins, servers,
//! Kubernetes workloads, SaaS and internet destinations) and the call patterns between them. Two
//! profiles build it: `demo` (a few clients and one web workload) and `organisation` (office
//! subnets, admins, servers, several namespaces of multi-replica workloads, SaaS). The generator
//! in `mod.rs` does not know which one it runs.

use std::collections::BTreeMap;

use peergraph_schemas::flow::proto;
use peergraph_schemas::EndpointMeta;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::load::Load;
use super::SimulateConfig;

/// An endpoint of the simulated environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub addr: String,
    pub meta: Option<EndpointMeta>,
}

impl Node {
    pub fn host(addr: impl Into<String>) -> Node {
        Node { addr: addr.into(), meta: None }
    }

    /// The entity the pipeline resolves this endpoint to (`pod:<ns>/<pod>` or `host:<addr>`; an
    /// external address is `ext:<addr>`, which the resolver decides, not the simulator).
    pub fn entity(&self) -> String {
        entity_of(&self.addr, self.meta.as_ref())
    }
}

/// The entity of an endpoint as the simulator names it (see [`Node::entity`]).
pub fn entity_of(addr: &str, meta: Option<&EndpointMeta>) -> String {
    match meta {
        Some(EndpointMeta { namespace: Some(ns), pod: Some(pod), .. }) => format!("pod:{ns}/{pod}"),
        _ if addr.starts_with("10.") => format!("host:{addr}"),
        _ => format!("ext:{addr}"),
    }
}

/// The digest a simulated registry gives an image reference.
pub fn digest(image: &str) -> String {
    let hash = image.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("sha256:{hash:x}")
}

/// A Kubernetes workload: its pods are the members of its group and come and go.
#[derive(Clone, Debug)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// "Deployment" or "StatefulSet" (StatefulSet pods keep ordinal names).
    pub kind: &'static str,
    /// Image repository; the tag is `version`.
    pub repository: String,
    pub version: u32,
    pub min_replicas: usize,
    pub max_replicas: usize,
    /// The load the autoscaler follows (replicas = min + (max − min) × load).
    pub load: Load,
    /// Pod-template hash of the current version (Deployments name pods after it).
    pub template: String,
}

impl Workload {
    pub fn image(&self) -> String {
        format!("{}:{}.{}", self.repository, self.version / 10, self.version % 10)
    }
}

/// A set of endpoints that behave alike: office clients, one server role, one workload's pods,
/// one SaaS provider's addresses.
#[derive(Clone, Debug)]
pub struct Group {
    /// How configs name the group: "office", "admins", "dc", "shop/web", "saas/payments", …
    pub name: String,
    pub members: Vec<Node>,
    /// Set for Kubernetes workloads, whose members churn.
    pub workload: Option<Workload>,
}

/// How a call pattern's rate is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// Each caller makes `per_minute` calls to a callee of its choice.
    Caller,
    /// Each callee receives `per_minute` calls from callers chosen at random (scrapes, customers).
    Callee,
}

/// Which callee a caller picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Any member, at random (a load-balanced service).
    Any,
    /// Always the same one: caller i calls member i mod n (a site's domain controller).
    Sticky,
}

/// A call pattern: members of `from` call members of `to` on one service.
#[derive(Clone, Debug)]
pub struct Call {
    pub from: usize,
    pub to: usize,
    pub port: i32,
    pub protocol: i32,
    pub app: Option<&'static str>,
    /// Calls per minute at full load, counted as `per` says.
    pub per_minute: f64,
    /// Flows per minute per caller whatever the load: a pod keeps pooled connections to its
    /// backends, and a sensor reports a long-lived connection at least once per active timeout
    /// (a minute). Set for pods in the organisation profile; 0 otherwise.
    pub floor_per_minute: f64,
    pub per: Per,
    pub affinity: Affinity,
    pub load: Load,
    /// Originator bytes, drawn uniformly.
    pub request: (i64, i64),
    /// Responder bytes, drawn uniformly.
    pub response: (i64, i64),
}

/// Which environment the simulator builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Office clients, one web workload with replicas, a database, DNS, a payments API, three
    /// SaaS addresses; flat load, no churn (`simulate.clients`, `simulate.web_replicas`).
    #[default]
    Demo,
    /// An organisation sized by `[simulate.organisation]`; diurnal load, noise and churn.
    Organisation,
}

/// The organisation profile's size and habits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrganisationConfig {
    /// Office client hosts, spread over `office_subnets` /24 subnets of 10.20.0.0/16.
    pub office_clients: usize,
    pub office_subnets: usize,
    /// Administrators' workstations (10.21.0.0/24): office habits plus SSH / RDP to the servers.
    pub admins: usize,
    /// Scale of every call rate (1.0: the documented rates; lower for smaller runs).
    pub rate_scale: f64,
    /// Local time is UTC plus this many hours (for working hours).
    pub utc_offset_hours: i32,
    /// Percent of calls that fail (refused or unanswered) and are retried once.
    pub failed_percent: f64,
    /// Web browsing to rarely seen internet addresses, per office client per minute at full load.
    pub browsing_per_minute: f64,
    /// Mean lifetime of a pod before it is replaced (new name, new address); 0: never.
    #[serde(with = "humantime_serde")]
    pub pod_lifetime: std::time::Duration,
    /// Rolling deploys per weekday, at random working-hours times, each of a random Deployment.
    pub deploys_per_day: f64,
    /// How long a rolling deploy takes to replace every pod of its workload.
    #[serde(with = "humantime_serde")]
    pub deploy_duration: std::time::Duration,
    /// Whether Deployments scale their replicas with their load.
    pub autoscale: bool,
}

impl Default for OrganisationConfig {
    fn default() -> Self {
        OrganisationConfig {
            office_clients: 240,
            office_subnets: 4,
            admins: 4,
            rate_scale: 1.0,
            utc_offset_hours: 0,
            failed_percent: 0.5,
            browsing_per_minute: 0.3,
            pod_lifetime: std::time::Duration::from_secs(12 * 3600),
            deploys_per_day: 3.0,
            deploy_duration: std::time::Duration::from_secs(300),
            autoscale: true,
        }
    }
}

/// A fleet of Kubernetes Deployments added to either profile, to size a benchmark: none unless
/// `workloads` is set. In each namespace, every workload's pods call the next workload's pods
/// (load-balanced) and look names up at CoreDNS, at a flat rate, so each pod keeps about
/// `replicas` + 2 entity edges live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Namespaces the workloads are spread over (round robin), named `fleet-<n>`.
    pub namespaces: usize,
    /// Deployments in the fleet, named `svc-<k>` in their namespace; 0: no fleet.
    pub workloads: usize,
    /// Replicas of each Deployment.
    pub replicas: usize,
    /// Calls per minute each pod makes to the next workload of its namespace (port 8080); it
    /// makes half as many DNS lookups.
    pub calls_per_minute: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { namespaces: 100, workloads: 0, replicas: 3, calls_per_minute: 2.0 }
    }
}

/// Groups and call patterns.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub groups: Vec<Group>,
    pub calls: Vec<Call>,
    /// Next pod address (an index into 10.1.0.0/16).
    next_pod: u32,
}

/// Flows per minute a pod reports on each of its backends however idle it is (see
/// [`Call::floor_per_minute`]).
pub const POOLED_PER_MINUTE: f64 = 1.0;

/// Letters Kubernetes uses in generated names.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn suffix(rng: &mut ChaCha8Rng, len: usize) -> String {
    (0..len).map(|_| char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())])).collect()
}

impl Model {
    /// The model a config asks for.
    pub fn build(config: &SimulateConfig, rng: &mut ChaCha8Rng) -> Model {
        let mut model = match config.environment {
            Profile::Demo => Model::demo(config, rng),
            Profile::Organisation => Model::organisation(&config.organisation, rng),
        };
        model.add_fleet(&config.fleet, rng);
        model
    }

    /// The fleet's workloads and their calls (nothing when `fleet.workloads` is 0).
    fn add_fleet(&mut self, fleet: &FleetConfig, rng: &mut ChaCha8Rng) {
        if fleet.workloads == 0 || fleet.replicas == 0 {
            return;
        }
        let namespaces = fleet.namespaces.clamp(1, fleet.workloads);
        let dns = match self.group("kube-system/coredns") {
            Some(dns) => dns,
            None => {
                let flat = Load::Flat;
                self.add_workload(rng, "kube-system", "coredns", "Deployment", "coredns", (2, 2), flat)
            }
        };
        let mut by_namespace: Vec<Vec<usize>> = vec![Vec::new(); namespaces];
        for k in 0..fleet.workloads {
            let (namespace, name) = (format!("fleet-{}", k % namespaces), format!("svc-{}", k / namespaces));
            let repository = format!("registry.example/{namespace}/{name}");
            let replicas = (fleet.replicas, fleet.replicas);
            let group = self.add_workload(rng, &namespace, &name, "Deployment", &repository, replicas, Load::Flat);
            by_namespace[k % namespaces].push(group);
        }
        let (per_minute, flat) = (fleet.calls_per_minute, Load::Flat);
        for groups in &by_namespace {
            for (i, &from) in groups.iter().enumerate() {
                let to = groups[(i + 1) % groups.len()];
                self.call(from, to, 8080, Some("http"), per_minute, flat, (300, 1_500), (1_000, 20_000));
                self.call(from, dns, 53, Some("dns"), per_minute / 2.0, flat, (60, 80), (90, 300));
            }
        }
    }

    pub fn group(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    fn add_hosts(&mut self, name: &str, addrs: impl IntoIterator<Item = String>) -> usize {
        self.groups.push(Group {
            name: name.into(),
            members: addrs.into_iter().map(Node::host).collect(),
            workload: None,
        });
        self.groups.len() - 1
    }

    #[allow(clippy::too_many_arguments)]
    fn add_workload(
        &mut self,
        rng: &mut ChaCha8Rng,
        namespace: &str,
        name: &str,
        kind: &'static str,
        repository: &str,
        replicas: (usize, usize),
        load: Load,
    ) -> usize {
        let workload = Workload {
            namespace: namespace.into(),
            name: name.into(),
            kind,
            repository: repository.into(),
            version: 10 + rng.random_range(0..40),
            min_replicas: replicas.0,
            max_replicas: replicas.1,
            load,
            template: suffix(rng, 10),
        };
        self.groups.push(Group { name: format!("{namespace}/{name}"), members: Vec::new(), workload: Some(workload) });
        let group = self.groups.len() - 1;
        for ordinal in 0..replicas.0 {
            let pod = self.new_pod(rng, group, ordinal);
            self.groups[group].members.push(pod);
        }
        group
    }

    /// A new pod of `group`'s workload at `ordinal`: a fresh name (StatefulSets reuse the
    /// ordinal) and a fresh address.
    pub fn new_pod(&mut self, rng: &mut ChaCha8Rng, group: usize, ordinal: usize) -> Node {
        let workload = self.groups[group].workload.clone().expect("pods belong to workloads");
        let pod = match workload.kind {
            "StatefulSet" => format!("{}-{ordinal}", workload.name),
            _ => format!("{}-{}-{}", workload.name, workload.template, suffix(rng, 5)),
        };
        self.next_pod += 1;
        let n = self.next_pod;
        let image = workload.image();
        Node {
            addr: format!("10.1.{}.{}", (n / 250) % 256, 2 + n % 250),
            meta: Some(EndpointMeta {
                namespace: Some(workload.namespace.clone()),
                workload: Some(workload.name.clone()),
                workload_kind: Some(workload.kind.into()),
                pod: Some(pod),
                node: Some(format!("node-{}", 1 + rng.random_range(0..6))),
                image_digest: Some(digest(&image)),
                image: Some(image),
                labels: BTreeMap::from([("app".into(), workload.name.clone())]),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        from: usize,
        to: usize,
        port: i32,
        app: Option<&'static str>,
        per_minute: f64,
        load: Load,
        request: (i64, i64),
        response: (i64, i64),
    ) -> &mut Call {
        let protocol = if app == Some("dns") { proto::UDP } else { proto::TCP };
        self.calls.push(Call {
            floor_per_minute: 0.0,
            from,
            to,
            port,
            protocol,
            app,
            per_minute,
            per: Per::Caller,
            affinity: Affinity::Any,
            load,
            request,
            response,
        });
        self.calls.last_mut().expect("just pushed")
    }

    /// The small environment of `peergraph demo` and the first tests: flat load, no churn.
    fn demo(config: &SimulateConfig, rng: &mut ChaCha8Rng) -> Model {
        let mut m = Model::default();
        let office = m.add_hosts("office", (0..config.clients).map(|i| format!("10.20.{}.{}", i / 240, 10 + i % 240)));
        let web = m.add_workload(
            rng,
            "shop",
            "web",
            "Deployment",
            "registry.example/shop/web",
            (config.web_replicas, config.web_replicas),
            Load::Flat,
        );
        let db = m.add_workload(rng, "shop", "db", "StatefulSet", "postgres", (1, 1), Load::Flat);
        let dns = m.add_workload(rng, "kube-system", "coredns", "Deployment", "coredns", (2, 2), Load::Flat);
        let payments = m.add_hosts("saas/payments", ["198.51.100.10".to_owned()]);
        let saas = m.add_hosts("saas", ["192.0.2.10", "192.0.2.20", "192.0.2.30"].map(String::from));
        // The demo's rates are per round (one `step`), whatever its length, as they always were:
        // longer steps make a sparser, cheaper day.
        let per_round = 60_000.0 / config.step.as_millis().max(1) as f64;
        let flat = Load::Flat;
        m.call(office, web, 8080, Some("http"), 0.5 * per_round, flat, (400, 2_000), (8_000, 40_000));
        m.call(office, saas, 443, Some("tls"), 0.2 * per_round, flat, (1_000, 20_000), (5_000, 100_000));
        m.call(web, db, 5432, Some("postgresql"), 2.0 * per_round, flat, (200, 1_500), (1_600, 12_000));
        m.call(web, dns, 53, Some("dns"), per_round, flat, (70, 70), (160, 160));
        m.call(web, payments, 443, Some("tls"), 0.3 * per_round, flat, (900, 6_000), (1_500, 12_000));
        m
    }

    /// An organisation: office subnets, admins, servers, Kubernetes namespaces, SaaS. Rates are
    /// calls per minute at full load, before `rate_scale`.
    fn organisation(config: &OrganisationConfig, rng: &mut ChaCha8Rng) -> Model {
        let mut m = Model::default();
        let subnets = config.office_subnets.max(1);
        let per_subnet = config.office_clients.div_ceil(subnets).max(1);
        let office = m.add_hosts(
            "office",
            (0..config.office_clients).map(|i| format!("10.20.{}.{}", i / per_subnet, 10 + i % per_subnet)),
        );
        let admins = m.add_hosts("admins", (0..config.admins).map(|i| format!("10.21.0.{}", 10 + i)));
        let dc = m.add_hosts("dc", ["10.10.0.10", "10.10.0.11"].map(String::from));
        let file = m.add_hosts("file", ["10.10.0.20".to_owned()]);
        let mail = m.add_hosts("mail", ["10.10.0.30".to_owned()]);
        let intranet = m.add_hosts("intranet", ["10.10.0.40", "10.10.0.41"].map(String::from));

        let (o, c, f) = (Load::Office, Load::Customer, Load::Flat);
        let web = m.add_workload(rng, "shop", "web", "Deployment", "registry.example/shop/web", (3, 6), c);
        let api = m.add_workload(rng, "shop", "api", "Deployment", "registry.example/shop/api", (3, 6), c);
        let worker = m.add_workload(rng, "shop", "worker", "Deployment", "registry.example/shop/worker", (2, 3), c);
        let cache = m.add_workload(rng, "shop", "cache", "StatefulSet", "redis", (3, 3), f);
        let db = m.add_workload(rng, "shop", "db", "StatefulSet", "postgres", (2, 2), f);
        let queue = m.add_workload(rng, "shop", "queue", "StatefulSet", "rabbitmq", (3, 3), f);
        let runner =
            m.add_workload(rng, "tools", "ci-runner", "Deployment", "registry.example/tools/runner", (2, 4), o);
        let coredns = m.add_workload(rng, "kube-system", "coredns", "Deployment", "coredns", (2, 2), f);
        let prometheus = m.add_workload(rng, "monitoring", "prometheus", "StatefulSet", "prometheus", (1, 1), f);

        let suite = m.add_hosts("saas/office-suite", (1..=8).map(|i| format!("52.96.10.{i}")));
        let code = m.add_hosts("saas/code-hosting", ["140.82.112.3", "140.82.112.4"].map(String::from));
        // Pods reach each SaaS API at one address (a regional endpoint): replicas spreading their
        // calls over many addresses of one provider would each touch addresses their peers did
        // not in a window (see docs/simulator.md, "what the detectors make of it").
        let payments = m.add_hosts("saas/payments", ["198.51.100.10".to_owned()]);
        let registry = m.add_hosts("saas/registry", ["140.82.112.30".to_owned()]);
        let cdn = m.add_hosts("saas/cdn", (0..4).map(|i| format!("151.101.{}.{}", i * 64, 133)));
        let firsts = [23u8, 34, 62, 81, 91, 104, 146, 176];
        let public = |rng: &mut ChaCha8Rng, n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    let a = firsts[rng.random_range(0..firsts.len())];
                    format!(
                        "{a}.{}.{}.{}",
                        rng.random_range(0..256),
                        rng.random_range(0..256),
                        rng.random_range(1..255)
                    )
                })
                .collect()
        };
        let websites = public(rng, 5_000);
        let customers = public(rng, 3_000);
        let internet = m.add_hosts("internet", websites);
        let customers = m.add_hosts("customers", customers);

        // People: every workstation (office and admins) resolves names at its site's domain
        // controller, authenticates, reads shares and mail, uses the intranet, SaaS and the web.
        for people in [office, admins] {
            m.call(people, dc, 53, Some("dns"), 1.0, o, (60, 80), (90, 300)).affinity = Affinity::Sticky;
            m.call(people, dc, 88, Some("krb"), 0.2, o, (1_200, 1_800), (1_300, 2_000)).affinity = Affinity::Sticky;
            m.call(people, dc, 389, Some("ldap"), 0.3, o, (300, 900), (500, 6_000)).affinity = Affinity::Sticky;
            m.call(people, dc, 445, Some("smb"), 0.2, o, (2_000, 6_000), (4_000, 40_000)).affinity = Affinity::Sticky;
            m.call(people, file, 445, Some("smb"), 0.6, o, (1_000, 60_000), (2_000, 800_000));
            m.call(people, mail, 993, Some("imap"), 0.5, o, (500, 3_000), (1_000, 120_000));
            m.call(people, mail, 587, Some("smtp"), 0.1, o, (2_000, 200_000), (300, 600));
            m.call(people, intranet, 443, Some("tls"), 0.4, o, (600, 2_000), (4_000, 90_000));
            m.call(people, web, 8080, Some("http"), 0.1, o, (400, 2_000), (8_000, 40_000));
            m.call(people, suite, 443, Some("tls"), 1.5, o, (800, 30_000), (2_000, 300_000));
            m.call(people, cdn, 443, Some("tls"), 0.5, o, (500, 1_500), (20_000, 2_000_000));
            m.call(people, internet, 443, Some("tls"), config.browsing_per_minute, o, (500, 2_000), (5_000, 500_000));
        }
        // Admins: SSH to the Linux servers, RDP to the domain controllers, git over SSH.
        for (servers, port) in [(file, 22), (mail, 22), (intranet, 22), (dc, 3389)] {
            m.call(admins, servers, port, None, 0.3, o, (3_000, 40_000), (5_000, 200_000));
        }
        m.call(admins, code, 22, Some("ssh"), 0.3, o, (2_000, 50_000), (5_000, 500_000));
        // Servers: machine authentication, directory lookups, mail relay, domain replication, updates.
        for servers in [file, mail, intranet] {
            m.call(servers, dc, 88, Some("krb"), 0.3, f, (1_200, 1_800), (1_300, 2_000));
            m.call(servers, dc, 389, Some("ldap"), 0.5, f, (300, 900), (500, 6_000));
        }
        for port in [389, 88, 445] {
            m.call(dc, dc, port, None, 0.5, f, (1_000, 20_000), (1_000, 20_000));
        }
        m.call(mail, suite, 25, Some("smtp"), 1.0, f, (3_000, 200_000), (300, 600));
        m.call(intranet, db, 5432, Some("postgresql"), 1.0, o, (200, 1_500), (1_600, 12_000));
        // The shop: customers → web → api → cache / db / queue → worker → payments, mail.
        m.call(customers, web, 8080, Some("http"), 20.0, c, (400, 2_000), (8_000, 60_000)).per = Per::Callee;
        m.call(web, api, 8080, Some("http"), 3.0, c, (300, 1_500), (1_000, 20_000));
        m.call(api, cache, 6379, Some("redis"), 3.0, c, (60, 400), (100, 4_000));
        m.call(api, db, 5432, Some("postgresql"), 2.0, c, (200, 1_500), (1_600, 12_000));
        m.call(api, queue, 5672, Some("amqp"), 0.6, c, (300, 2_000), (100, 300));
        m.call(api, payments, 443, Some("tls"), 0.4, c, (900, 6_000), (1_500, 12_000));
        m.call(worker, queue, 5672, Some("amqp"), 1.0, c, (100, 300), (300, 2_000));
        m.call(worker, db, 5432, Some("postgresql"), 0.6, c, (200, 1_500), (1_600, 12_000));
        m.call(worker, mail, 25, Some("smtp"), 0.2, c, (3_000, 30_000), (300, 600));
        m.call(worker, payments, 443, Some("tls"), 0.2, c, (900, 6_000), (1_500, 12_000));
        m.call(runner, registry, 443, Some("tls"), 1.0, o, (2_000, 20_000), (50_000, 5_000_000));
        for pods in [web, api, worker, runner] {
            m.call(pods, coredns, 53, Some("dns"), 0.5, f, (60, 80), (90, 300));
        }
        m.call(coredns, dc, 53, Some("dns"), 2.0, f, (60, 80), (90, 300));
        // Monitoring scrapes every pod of the shop once a minute.
        for pods in [web, api, worker, cache, db, queue] {
            m.call(prometheus, pods, 9090, Some("http"), 1.0, f, (200, 300), (5_000, 40_000)).per = Per::Callee;
        }
        for call in &mut m.calls {
            call.per_minute *= config.rate_scale;
            if m.groups[call.from].workload.is_some() {
                call.floor_per_minute = POOLED_PER_MINUTE;
            }
        }
        m
    }
}
