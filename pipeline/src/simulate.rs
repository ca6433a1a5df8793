//! `peergraph simulate`: a sensor fleet for a small environment — office clients, a web workload
//! with several replicas, a database, DNS, an external payments API — publishing flows to the
//! flows topic. On request one web replica's image is swapped for a malicious one that also talks
//! to a new external address. Deterministic given the seed and the start time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use peergraph_schemas::codec::WireFormat;
use peergraph_schemas::flow::{proto, tcp_flag};
use peergraph_schemas::{ConnState, EndpointMeta, Flow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka;
use crate::kafka::output::record_encoder;
use crate::sensor::publish::FlowPublisher;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulateConfig {
    /// Seed of every random choice; the same seed and start give the same flows.
    pub seed: u64,
    /// Wire format of the published flows.
    pub format: WireFormat,
    /// Office client hosts calling the web workload.
    pub clients: usize,
    /// Replicas of the web workload (the peer group under watch).
    pub web_replicas: usize,
    /// Simulated time between two rounds of flows.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Simulated time covered by the run.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Stop after this many flows, whatever the duration (0: no limit).
    pub max_flows: u64,
    /// Simulated seconds per wall-clock second; 0 publishes as fast as possible.
    pub speed: f64,
    /// Event time of the first round, ms since the Unix epoch; absent: now (or, when publishing
    /// as fast as possible, now minus the duration, so the run ends at the present).
    pub start_ms: Option<i64>,
    /// The swapped-image attack; absent: benign traffic only.
    pub swap: Option<SwapConfig>,
    /// Further attacks, each at its time, by an office client.
    pub attacks: Vec<AttackConfig>,
    /// Where to write the ground-truth labels (JSON lines, one per injected attack).
    pub labels: Option<PathBuf>,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            seed: 7,
            format: WireFormat::AvroSingleObject,
            clients: 20,
            web_replicas: 3,
            step: Duration::from_secs(1),
            duration: Duration::from_secs(600),
            max_flows: 0,
            speed: 0.0,
            start_ms: None,
            swap: None,
            attacks: Vec::new(),
            labels: None,
        }
    }
}

/// One web replica runs a malicious image from `at` for `lasting`, beaconing to `destination`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwapConfig {
    /// Index of the web replica whose image is swapped (0-based).
    pub replica: usize,
    /// Simulated time from the start when the swap happens.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// How long the malicious image runs before it is rolled back.
    #[serde(with = "humantime_serde")]
    pub lasting: Duration,
    /// The external address the malicious image talks to.
    pub destination: String,
    pub port: i32,
}

impl Default for SwapConfig {
    fn default() -> Self {
        SwapConfig {
            replica: 1,
            at: Duration::from_secs(120),
            lasting: Duration::from_secs(120),
            destination: "203.0.113.66".into(),
            port: 4444,
        }
    }
}

/// One attack by an office client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    pub kind: AttackKind,
    /// Simulated time from the start when it begins.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// How long it goes on.
    #[serde(with = "humantime_serde")]
    pub lasting: Duration,
    /// Index of the office client that attacks (0-based).
    #[serde(default)]
    pub client: usize,
    /// The address attacked or called; absent: the kind's default.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Many ports of one internal server, half-open or refused (T1046).
    PortScan,
    /// One port (SMB) on many internal addresses, mostly unanswered (T1046).
    Sweep,
    /// Regular calls to an external address, every 30 s ± 10 %, with steady sizes (T1071).
    Beacon,
    /// Megabytes out to an external address every step (T1048).
    Exfiltration,
    /// SSH, RDP and SMB to internal hosts it never talked to (T1021).
    LateralMovement,
    /// Calls to an address on a threat-intel list (the test lists it).
    IntelHit,
}

impl AttackKind {
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::PortScan => "port_scan",
            AttackKind::Sweep => "sweep",
            AttackKind::Beacon => "beacon",
            AttackKind::Exfiltration => "exfiltration",
            AttackKind::LateralMovement => "lateral_movement",
            AttackKind::IntelHit => "intel_hit",
        }
    }

    fn default_target(self) -> &'static str {
        match self {
            AttackKind::PortScan => "10.30.0.5",
            AttackKind::Sweep => "10.40.0.0",
            AttackKind::Beacon => "185.100.87.12",
            AttackKind::Exfiltration => "45.33.32.156",
            AttackKind::LateralMovement => "10.50.0.0",
            AttackKind::IntelHit => "203.0.113.200",
        }
    }
}

/// A ground-truth label: which entity was attacked how, and when (event time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub entity: String,
    pub attack: String,
    pub destination: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulateReport {
    pub flows: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub labels: Vec<Label>,
}

/// An endpoint of the simulated environment.
#[derive(Clone, Debug)]
struct Node {
    addr: String,
    meta: Option<EndpointMeta>,
}

impl Node {
    fn host(addr: String) -> Node {
        Node { addr, meta: None }
    }

    fn pod(addr: String, namespace: &str, workload: &str, kind: &str, pod: String, image: &str) -> Node {
        let digest = format!("sha256:{:x}", fnv(image));
        Node {
            addr,
            meta: Some(EndpointMeta {
                namespace: Some(namespace.into()),
                workload: Some(workload.into()),
                workload_kind: Some(kind.into()),
                pod: Some(pod),
                node: Some("node-1".into()),
                image: Some(image.into()),
                image_digest: Some(digest),
                labels: BTreeMap::from([("app".into(), workload.into())]),
            }),
        }
    }

    fn entity(&self) -> String {
        match &self.meta {
            Some(EndpointMeta { namespace: Some(ns), pod: Some(pod), .. }) => format!("pod:{ns}/{pod}"),
            _ => format!("host:{}", self.addr),
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The simulated environment and its random source.
pub struct Environment {
    rng: ChaCha8Rng,
    clients: Vec<Node>,
    web: Vec<Node>,
    db: Node,
    dns: Vec<Node>,
    payments: Node,
    saas: Vec<Node>,
    swap: Option<(SwapConfig, Node)>,
    /// Each attack with its progress: the next beacon time, or how many probes it has sent.
    attacks: Vec<(AttackConfig, i64)>,
    start_ms: i64,
}

const WEB_IMAGE: &str = "registry.example/shop/web:1.4.2";
const EVIL_IMAGE: &str = "docker.io/xmrig-lookalike/web:latest";

impl Environment {
    pub fn new(config: &SimulateConfig, start_ms: i64) -> Environment {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let suffix = |rng: &mut ChaCha8Rng| -> String {
            (0..5).map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)])).collect()
        };
        let clients = (0..config.clients).map(|i| Node::host(format!("10.20.{}.{}", i / 240, 10 + i % 240))).collect();
        let web: Vec<Node> = (0..config.web_replicas)
            .map(|i| {
                let pod = format!("web-6d4cf56db6-{}", suffix(&mut rng));
                Node::pod(format!("10.1.{}.{}", i / 240, 11 + i % 240), "shop", "web", "Deployment", pod, WEB_IMAGE)
            })
            .collect();
        let db = Node::pod("10.1.8.50".into(), "shop", "db", "StatefulSet", "db-0".into(), "postgres:16.4");
        let dns = (0..2)
            .map(|i| {
                let pod = format!("coredns-5d78c9869d-{}", suffix(&mut rng));
                Node::pod(format!("10.1.9.{}", 2 + i), "kube-system", "coredns", "Deployment", pod, "coredns:1.11.1")
            })
            .collect();
        let swap = config.swap.clone().and_then(|swap| {
            let replica = web.get(swap.replica)?.clone();
            let mut evil = replica.clone();
            if let Some(meta) = evil.meta.as_mut() {
                meta.image = Some(EVIL_IMAGE.into());
                meta.image_digest = Some(format!("sha256:{:x}", fnv(EVIL_IMAGE)));
            }
            Some((swap, evil))
        });
        Environment {
            rng,
            clients,
            web,
            db,
            dns,
            payments: Node::host("198.51.100.10".into()),
            saas: ["192.0.2.10", "192.0.2.20", "192.0.2.30"].iter().map(|a| Node::host((*a).into())).collect(),
            swap,
            attacks: config.attacks.iter().map(|a| (a.clone(), start_ms + a.at.as_millis() as i64)).collect(),
            start_ms,
        }
    }

    /// The labels of what this environment injects.
    pub fn labels(&self, end_ms: i64) -> Vec<Label> {
        let swaps = self.swap.iter().map(|(swap, node)| Label {
            entity: node.entity(),
            attack: "swapped_image".into(),
            destination: format!("ext:{}", swap.destination),
            start_ms: self.start_ms + swap.at.as_millis() as i64,
            end_ms: (self.start_ms + (swap.at + swap.lasting).as_millis() as i64).min(end_ms),
        });
        let attacks = self.attacks.iter().filter_map(|(attack, _)| {
            let attacker = self.clients.get(attack.client)?;
            let target = attack.target.clone().unwrap_or_else(|| attack.kind.default_target().to_owned());
            Some(Label {
                entity: attacker.entity(),
                attack: attack.kind.name().into(),
                destination: target,
                start_ms: self.start_ms + attack.at.as_millis() as i64,
                end_ms: (self.start_ms + (attack.at + attack.lasting).as_millis() as i64).min(end_ms),
            })
        });
        swaps.chain(attacks).collect()
    }

    /// The attacks' flows for the step ending at `now_ms`.
    fn attack_round(&mut self, now_ms: i64, step_ms: i64, out: &mut Vec<Flow>) {
        let mut attacks = std::mem::take(&mut self.attacks);
        for (attack, progress) in attacks.iter_mut() {
            let from = self.start_ms + attack.at.as_millis() as i64;
            let until = from + attack.lasting.as_millis() as i64;
            let Some(attacker) = self.clients.get(attack.client).cloned() else { continue };
            let target = attack.target.clone().unwrap_or_else(|| attack.kind.default_target().to_owned());
            if now_ms <= from || now_ms - step_ms >= until {
                continue;
            }
            match attack.kind {
                AttackKind::PortScan => {
                    let host = Node::host(target);
                    for _ in 0..40 {
                        let port = 1 + (*progress % 1024) as i32;
                        *progress += 1;
                        let mut flow = self.tcp(&attacker, &host, port, now_ms, step_ms, 60, 0, None);
                        flow.conn_state = if port % 3 == 0 { ConnState::REJ } else { ConnState::S0 };
                        flow.tcp_flags = tcp_flag::SYN;
                        flow.packets_in = 0;
                        out.push(flow);
                    }
                }
                AttackKind::Sweep => {
                    let base: std::net::Ipv4Addr = target.parse().unwrap_or(std::net::Ipv4Addr::new(10, 40, 0, 0));
                    for _ in 0..30 {
                        let n = (*progress % 60_000) as u32;
                        *progress += 1;
                        let address = std::net::Ipv4Addr::from(u32::from(base) + 1 + n);
                        let host = Node::host(address.to_string());
                        let mut flow = self.tcp(&attacker, &host, 445, now_ms, step_ms, 60, 0, None);
                        flow.conn_state = ConnState::S0;
                        flow.tcp_flags = tcp_flag::SYN;
                        flow.packets_in = 0;
                        out.push(flow);
                    }
                }
                AttackKind::Beacon => {
                    // `progress` is the next beacon's time.
                    let c2 = Node::host(target);
                    while *progress <= now_ms && *progress < until {
                        let at = *progress;
                        let bytes = 1_200 + self.rng.random_range(-50..=50);
                        let mut flow = self.tcp(&attacker, &c2, 443, at, 1, bytes, 300, Some("tls"));
                        flow.end_ms = at;
                        flow.start_ms = at - 150;
                        out.push(flow);
                        *progress += 30_000 + self.rng.random_range(-3_000..=3_000);
                    }
                }
                AttackKind::Exfiltration => {
                    let drop = Node::host(target);
                    let bytes = 5_000_000 + self.rng.random_range(0..1_000_000);
                    out.push(self.tcp(&attacker, &drop, 443, now_ms, step_ms, bytes, 20_000, Some("tls")));
                }
                AttackKind::LateralMovement => {
                    let base: std::net::Ipv4Addr = target.parse().unwrap_or(std::net::Ipv4Addr::new(10, 50, 0, 0));
                    let n = (*progress % 250) as u32;
                    *progress += 1;
                    let host = Node::host(std::net::Ipv4Addr::from(u32::from(base) + 1 + n).to_string());
                    let port = [22, 3389, 445][(n % 3) as usize];
                    out.push(self.tcp(&attacker, &host, port, now_ms, step_ms, 4_000, 9_000, None));
                }
                AttackKind::IntelHit => {
                    let bad = Node::host(target);
                    out.push(self.tcp(&attacker, &bad, 443, now_ms, step_ms, 900, 4_000, Some("tls")));
                }
            }
        }
        self.attacks = attacks;
    }

    /// The flows that end in the step ending at `now_ms`.
    pub fn round(&mut self, now_ms: i64, step_ms: i64, out: &mut Vec<Flow>) {
        let elapsed = now_ms - self.start_ms;
        let swapped = self.swap.as_ref().and_then(|(swap, evil)| {
            let from = swap.at.as_millis() as i64;
            let until = from + swap.lasting.as_millis() as i64;
            (elapsed >= from && elapsed < until).then(|| (swap.replica, evil.clone(), swap.clone()))
        });
        let mut web = self.web.clone();
        if let Some((replica, evil, _)) = &swapped {
            web[*replica] = evil.clone();
        }

        // Office clients: browse the shop, resolve names, use SaaS.
        for client in self.clients.clone() {
            if self.rng.random_bool(0.5) && !web.is_empty() {
                let replica = web[self.rng.random_range(0..web.len())].clone();
                let bytes = self.rng.random_range(400..2_000);
                out.push(self.tcp(&client, &replica, 8080, now_ms, step_ms, bytes, bytes * 20, Some("http")));
            }
            if self.rng.random_bool(0.2) {
                let saas = self.saas[self.rng.random_range(0..self.saas.len())].clone();
                let bytes = self.rng.random_range(1_000..20_000);
                out.push(self.tcp(&client, &saas, 443, now_ms, step_ms, bytes, bytes * 5, Some("tls")));
            }
        }
        // Every replica does the same job: query the database, resolve names, call payments.
        for replica in &web {
            for _ in 0..self.rng.random_range(1..=3) {
                let bytes = self.rng.random_range(200..1_500);
                let db = self.db.clone();
                out.push(self.tcp(replica, &db, 5432, now_ms, step_ms, bytes, bytes * 8, Some("postgresql")));
            }
            let dns = self.dns[self.rng.random_range(0..self.dns.len())].clone();
            out.push(self.udp(replica, &dns, 53, now_ms, step_ms, 70, 160, Some("dns")));
            if self.rng.random_bool(0.3) {
                let payments = self.payments.clone();
                let (request, response) = (self.rng.random_range(900..6_000), self.rng.random_range(1_500..12_000));
                out.push(self.tcp(replica, &payments, 443, now_ms, step_ms, request, response, Some("tls")));
            }
        }
        self.attack_round(now_ms, step_ms, out);
        // The malicious image phones home.
        if let Some((replica, _, swap)) = swapped {
            let c2 = Node::host(swap.destination.clone());
            let bytes = self.rng.random_range(20_000..90_000);
            let evil = web[replica].clone();
            let mut flow = self.tcp(&evil, &c2, swap.port, now_ms, step_ms, bytes, 800, None);
            flow.dst_port = swap.port;
            out.push(flow);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        src: &Node,
        dst: &Node,
        port: i32,
        now_ms: i64,
        step_ms: i64,
        out: i64,
        back: i64,
        app: Option<&str>,
    ) -> Flow {
        let mut flow = self.flow(src, dst, port, now_ms, step_ms, out, back, app);
        flow.protocol = proto::TCP;
        flow.tcp_flags = tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN;
        flow.conn_state = ConnState::SF;
        flow
    }

    #[allow(clippy::too_many_arguments)]
    fn udp(
        &mut self,
        src: &Node,
        dst: &Node,
        port: i32,
        now_ms: i64,
        step_ms: i64,
        out: i64,
        back: i64,
        app: Option<&str>,
    ) -> Flow {
        let mut flow = self.flow(src, dst, port, now_ms, step_ms, out, back, app);
        flow.protocol = proto::UDP;
        flow
    }

    #[allow(clippy::too_many_arguments)]
    fn flow(
        &mut self,
        src: &Node,
        dst: &Node,
        port: i32,
        now_ms: i64,
        step_ms: i64,
        out: i64,
        back: i64,
        app: Option<&str>,
    ) -> Flow {
        let end_ms = now_ms - self.rng.random_range(0..step_ms.max(1));
        Flow {
            sensor_id: "sim-sensor-1".into(),
            start_ms: end_ms - self.rng.random_range(1..800),
            end_ms,
            src_addr: src.addr.clone(),
            src_port: self.rng.random_range(32_768..61_000),
            dst_addr: dst.addr.clone(),
            dst_port: port,
            protocol: proto::TCP,
            bytes_out: out,
            bytes_in: back,
            packets_out: 1 + out / 1_200,
            packets_in: 1 + back / 1_200,
            tcp_flags: 0,
            conn_state: ConnState::SF,
            app_protocol: app.map(str::to_owned),
            src_meta: src.meta.clone(),
            dst_meta: dst.meta.clone(),
        }
    }
}

/// Publishes the simulation to the flows topic. Returns when the simulated duration (or
/// `max_flows`) is reached, or `stop` is set.
pub fn simulate(config: &Config, stop: &AtomicBool) -> anyhow::Result<SimulateReport> {
    let sim = &config.simulate;
    anyhow::ensure!(!sim.step.is_zero(), "simulate.step must be positive");
    kafka::ensure_topics(&config.kafka, &config.topics)?;
    let registry = config.schema_registry()?;
    let encoder = record_encoder::<Flow>(sim.format, &config.topics.flows, registry.as_deref())?;
    let mut publisher = FlowPublisher::new(&config.kafka, &config.topics.flows, encoder)?;
    let step_ms = sim.step.as_millis() as i64;
    let now = now_ms();
    let start_ms = sim.start_ms.unwrap_or(if sim.speed > 0.0 { now } else { now - sim.duration.as_millis() as i64 });
    let end_ms = start_ms + sim.duration.as_millis() as i64;
    let mut env = Environment::new(sim, start_ms);
    let wall_start = Instant::now();
    let mut report = SimulateReport { start_ms, end_ms, ..SimulateReport::default() };
    let mut round = Vec::new();
    let mut t = start_ms + step_ms;
    tracing::info!(topic = %config.topics.flows, start_ms, end_ms, format = %sim.format, "simulating");
    'rounds: while t <= end_ms && !stop.load(Ordering::Relaxed) {
        if sim.speed > 0.0 {
            let due = wall_start + Duration::from_secs_f64((t - start_ms) as f64 / 1000.0 / sim.speed);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        round.clear();
        env.round(t, step_ms, &mut round);
        // Sensors export flows roughly in the order they end.
        round.sort_by_key(|flow| flow.end_ms);
        for flow in &round {
            if sim.max_flows > 0 && report.flows >= sim.max_flows {
                break 'rounds;
            }
            publisher.publish(flow)?;
            report.flows += 1;
        }
        t += step_ms;
    }
    publisher.flush(Duration::from_secs(120))?;
    report.end_ms = report.end_ms.min(t);
    report.labels = env.labels(report.end_ms);
    if let Some(path) = &sim.labels {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating labels file {}", path.display()))?;
        for label in &report.labels {
            writeln!(file, "{}", serde_json::to_string(label)?)?;
        }
    }
    tracing::info!(flows = report.flows, "simulation published");
    Ok(report)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(config: &SimulateConfig, rounds: i64) -> Vec<Flow> {
        let mut env = Environment::new(config, 0);
        let mut out = Vec::new();
        for r in 1..=rounds {
            env.round(r * 1000, 1000, &mut out);
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_flows() {
        let config = SimulateConfig::default();
        assert_eq!(flows(&config, 5), flows(&config, 5));
        let other = SimulateConfig { seed: 8, ..SimulateConfig::default() };
        assert_ne!(flows(&config, 5), flows(&other, 5));
    }

    #[test]
    fn every_flow_is_valid() {
        let config = SimulateConfig {
            clients: 1_000,
            web_replicas: 300,
            swap: Some(SwapConfig { at: Duration::ZERO, ..SwapConfig::default() }),
            ..SimulateConfig::default()
        };
        for flow in flows(&config, 3) {
            flow.validate().unwrap();
            assert!(flow.end_ms <= 20_000 && flow.end_ms > 0);
        }
    }

    #[test]
    fn every_attack_comes_from_its_client_within_its_time_and_is_labelled() {
        let kinds = [
            AttackKind::PortScan,
            AttackKind::Sweep,
            AttackKind::Beacon,
            AttackKind::Exfiltration,
            AttackKind::LateralMovement,
            AttackKind::IntelHit,
        ];
        let attacks: Vec<AttackConfig> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| AttackConfig {
                kind: *kind,
                at: Duration::from_secs(10),
                lasting: Duration::from_secs(120),
                client: i,
                target: None,
            })
            .collect();
        let config = SimulateConfig { attacks, ..SimulateConfig::default() };
        let all = flows(&config, 200);
        let env = Environment::new(&config, 0);
        let labels = env.labels(200_000);
        assert_eq!(labels.len(), kinds.len());
        for (kind, label) in kinds.iter().zip(&labels) {
            assert_eq!(label.attack, kind.name());
            let target = kind.default_target();
            let theirs: Vec<&Flow> = all
                .iter()
                .filter(|f| {
                    format!("host:{}", f.src_addr) == label.entity
                        && !f.dst_addr.starts_with("10.1.")
                        && !f.dst_addr.starts_with("192.0.2.")
                })
                .collect();
            assert!(!theirs.is_empty(), "{kind:?} sent nothing");
            for flow in &theirs {
                assert!(flow.end_ms >= 10_000 && flow.end_ms <= 130_000, "{kind:?} at {}", flow.end_ms);
                flow.validate().unwrap();
            }
            if matches!(kind, AttackKind::Beacon) {
                assert!((4..=5).contains(&theirs.len()), "a beacon every 30 s ± 10 % for 120 s: {}", theirs.len());
                assert!(theirs.iter().all(|f| f.dst_addr == target));
            }
        }
    }

    #[test]
    fn only_the_swapped_replica_talks_to_the_new_destination_and_only_while_swapped() {
        let swap = SwapConfig { at: Duration::from_secs(10), lasting: Duration::from_secs(5), ..SwapConfig::default() };
        let config = SimulateConfig { swap: Some(swap.clone()), ..SimulateConfig::default() };
        let all = flows(&config, 30);
        let evil: Vec<&Flow> = all.iter().filter(|f| f.dst_addr == swap.destination).collect();
        assert_eq!(evil.len(), 5);
        let env = Environment::new(&config, 0);
        let labels = env.labels(30_000);
        assert_eq!(labels.len(), 1);
        for flow in evil {
            assert_eq!(flow.src_meta.as_ref().and_then(|m| m.image.as_deref()), Some(EVIL_IMAGE));
            assert_eq!(format!("pod:shop/{}", flow.src_meta.as_ref().unwrap().pod.as_ref().unwrap()), labels[0].entity);
            assert!(flow.end_ms >= labels[0].start_ms - 1000 && flow.end_ms < labels[0].end_ms);
        }
    }
}
