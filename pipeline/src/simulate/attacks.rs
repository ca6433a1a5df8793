//! Injected attacks: their configuration, and the flows each kind adds to a round. Every flow an
//! attack adds is marked with its label, and its end time lies inside the attack's time range.

use std::net::Ipv4Addr;
use std::time::Duration;

use peergraph_schemas::flow::tcp_flag;
use peergraph_schemas::{ConnState, Flow};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::model::Node;
use super::{tcp, Generated};

/// One replica of a workload runs a malicious image from `at` for `lasting`, calling `destination`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwapConfig {
    /// Index of the replica whose image is swapped (0-based).
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
    /// The workload group whose replica is swapped ("<namespace>/<name>").
    pub workload: String,
}

impl Default for SwapConfig {
    fn default() -> Self {
        SwapConfig {
            replica: 1,
            at: Duration::from_secs(120),
            lasting: Duration::from_secs(120),
            destination: "203.0.113.66".into(),
            port: 4444,
            workload: "shop/web".into(),
        }
    }
}

/// One attack, at its time, by one member of the environment.
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
    /// Index of the office client that attacks (0-based), when `attacker` is not set.
    #[serde(default)]
    pub client: usize,
    /// The address attacked or called; absent: the kind's default.
    #[serde(default)]
    pub target: Option<String>,
    /// Who attacks: a group and a member index, "office[3]", "admins[0]", "shop/api[1]", "dc"
    /// (index 0). A workload's member is its replica at that index when the attack starts (it is
    /// kept alive while the attack lasts). Absent: "office[<client>]".
    #[serde(default)]
    pub attacker: Option<String>,
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
    pub const ALL: [AttackKind; 6] = [
        AttackKind::PortScan,
        AttackKind::Sweep,
        AttackKind::Beacon,
        AttackKind::Exfiltration,
        AttackKind::LateralMovement,
        AttackKind::IntelHit,
    ];

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

    pub fn default_target(self) -> &'static str {
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

/// What an injection does.
#[derive(Clone, Debug)]
pub enum Injected {
    Attack(AttackKind),
    /// The replica runs a malicious image and calls `port` on its destination every step.
    SwappedImage {
        port: i32,
    },
}

impl Injected {
    pub fn name(&self) -> &'static str {
        match self {
            Injected::Attack(kind) => kind.name(),
            Injected::SwappedImage { .. } => "swapped_image",
        }
    }
}

/// One attack or swap as the generator runs it.
#[derive(Clone, Debug)]
pub struct Injection {
    pub what: Injected,
    /// Group and member index of the attacker.
    pub group: usize,
    pub member: usize,
    pub target: String,
    pub from_ms: i64,
    pub until_ms: i64,
    /// The kind's progress: the next beacon's time, or how many probes were sent.
    pub progress: i64,
    /// Index of its label.
    pub label: usize,
}

/// Parses "group[index]" (or "group", index 0).
pub fn parse_attacker(spec: &str) -> Option<(&str, usize)> {
    match spec.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
        Some((group, index)) => Some((group, index.parse().ok()?)),
        None => Some((spec, 0)),
    }
}

impl Injection {
    /// Whether the round ending at `now_ms` carries this injection's flows: the rounds ending in
    /// `[from, until)` (the first one's flows all end at `from`).
    pub fn is_active(&self, now_ms: i64) -> bool {
        now_ms >= self.from_ms && now_ms < self.until_ms
    }

    /// The attack's flows for the step ending at `now_ms`, from `attacker`.
    pub fn round(
        &mut self,
        attacker: &Node,
        rng: &mut ChaCha8Rng,
        now_ms: i64,
        step_ms: i64,
        out: &mut Vec<Generated>,
    ) {
        let first = out.len();
        let internal = |base: &str, default: Ipv4Addr, n: u32| {
            let base: Ipv4Addr = base.parse().unwrap_or(default);
            Node::host(Ipv4Addr::from(u32::from(base) + 1 + n).to_string())
        };
        let push = |flow: Flow, out: &mut Vec<Generated>| out.push(Generated { flow, label: Some(self.label) });
        match self.what {
            Injected::SwappedImage { port } => {
                let c2 = Node::host(self.target.clone());
                let bytes = rng.random_range(20_000..90_000);
                push(tcp(rng, attacker, &c2, port, now_ms, step_ms, bytes, 800, None), out);
            }
            Injected::Attack(AttackKind::PortScan) => {
                let host = Node::host(self.target.clone());
                for _ in 0..40 {
                    let port = 1 + (self.progress % 1024) as i32;
                    self.progress += 1;
                    let mut flow = tcp(rng, attacker, &host, port, now_ms, step_ms, 60, 0, None);
                    flow.conn_state = if port % 3 == 0 { ConnState::REJ } else { ConnState::S0 };
                    flow.tcp_flags = tcp_flag::SYN;
                    flow.packets_in = 0;
                    push(flow, out);
                }
            }
            Injected::Attack(AttackKind::Sweep) => {
                for _ in 0..30 {
                    let host = internal(&self.target, Ipv4Addr::new(10, 40, 0, 0), (self.progress % 60_000) as u32);
                    self.progress += 1;
                    let mut flow = tcp(rng, attacker, &host, 445, now_ms, step_ms, 60, 0, None);
                    flow.conn_state = ConnState::S0;
                    flow.tcp_flags = tcp_flag::SYN;
                    flow.packets_in = 0;
                    push(flow, out);
                }
            }
            Injected::Attack(AttackKind::Beacon) => {
                // `progress` is the next beacon's time (it starts at `from_ms`).
                let c2 = Node::host(self.target.clone());
                while self.progress <= now_ms && self.progress < self.until_ms {
                    let at = self.progress;
                    let bytes = 1_200 + rng.random_range(-50..=50);
                    let mut flow = tcp(rng, attacker, &c2, 443, at, 1, bytes, 300, Some("tls"));
                    flow.end_ms = at;
                    flow.start_ms = at - 150;
                    push(flow, out);
                    self.progress += 30_000 + rng.random_range(-3_000..=3_000);
                }
            }
            Injected::Attack(AttackKind::Exfiltration) => {
                let drop = Node::host(self.target.clone());
                let bytes = 5_000_000 + rng.random_range(0..1_000_000);
                push(tcp(rng, attacker, &drop, 443, now_ms, step_ms, bytes, 20_000, Some("tls")), out);
            }
            Injected::Attack(AttackKind::LateralMovement) => {
                let n = (self.progress % 250) as u32;
                self.progress += 1;
                let host = internal(&self.target, Ipv4Addr::new(10, 50, 0, 0), n);
                let port = [22, 3389, 445][(n % 3) as usize];
                push(tcp(rng, attacker, &host, port, now_ms, step_ms, 4_000, 9_000, None), out);
            }
            Injected::Attack(AttackKind::IntelHit) => {
                let bad = Node::host(self.target.clone());
                push(tcp(rng, attacker, &bad, 443, now_ms, step_ms, 900, 4_000, Some("tls")), out);
            }
        }
        // Every injected flow lies inside the attack's time range.
        for generated in &mut out[first..] {
            let flow = &mut generated.flow;
            let duration = flow.end_ms - flow.start_ms;
            flow.end_ms = flow.end_ms.clamp(self.from_ms, self.until_ms - 1);
            flow.start_ms = flow.end_ms - duration;
        }
    }
}
