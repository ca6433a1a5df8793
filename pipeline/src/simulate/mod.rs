//! `peergraph simulate`: a sensor fleet publishing the flows of a simulated environment to the
//! flows topic, with attacks injected at chosen times and a ground-truth labels file of what was
//! injected. The environment is a profile (`demo`: a few clients and one web workload;
//! `organisation`: office subnets, admins, servers, Kubernetes namespaces, SaaS, with diurnal load,
//! noise and churn) built as groups and call patterns (`model`); one generator runs either.
//! Deterministic given the seed and the start time.

pub mod attacks;
pub mod labels;
pub mod load;
pub mod model;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peergraph_schemas::codec::WireFormat;
use peergraph_schemas::flow::{proto, tcp_flag};
use peergraph_schemas::{ConnState, Flow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use attacks::{AttackConfig, AttackKind, SwapConfig};
pub use labels::Label;
pub use model::{FleetConfig, OrganisationConfig, Profile};

use crate::config::Config;
use crate::kafka;
use crate::kafka::output::record_encoder;
use crate::sensor::publish::FlowPublisher;
use attacks::{Injected, Injection};
use labels::Tally;
use model::{Affinity, Model, Node, Per};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulateConfig {
    /// Seed of every random choice; the same seed and start give the same flows.
    pub seed: u64,
    /// Wire format of the published flows.
    pub format: WireFormat,
    /// Which environment: "demo" (the default) or "organisation".
    pub environment: Profile,
    /// Office client hosts calling the web workload (demo environment).
    pub clients: usize,
    /// Replicas of the web workload, the peer group under watch (demo environment).
    pub web_replicas: usize,
    /// The organisation environment's size and habits.
    pub organisation: OrganisationConfig,
    /// Kubernetes Deployments added to the environment, to size a benchmark (none by default).
    pub fleet: FleetConfig,
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
    /// The swapped-image attack; absent: none.
    pub swap: Option<SwapConfig>,
    /// Further attacks, each at its time, by its attacker.
    pub attacks: Vec<AttackConfig>,
    /// Where to write the ground-truth labels (JSON lines, one per injected attack); absent: a
    /// file `peergraph-labels-<start_ms>.jsonl` in the temporary directory. Written on every run.
    pub labels: Option<PathBuf>,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            seed: 7,
            format: WireFormat::AvroSingleObject,
            environment: Profile::Demo,
            clients: 20,
            web_replicas: 3,
            organisation: OrganisationConfig::default(),
            fleet: FleetConfig::default(),
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulateReport {
    pub flows: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub labels: Vec<Label>,
    /// Where the labels were written.
    pub labels_file: Option<PathBuf>,
    /// Benign churn: pods started (replacements, scale-ups, rolling deploys) and rolling deploys.
    pub pods_started: u64,
    pub deploys: u64,
}

/// A generated flow, with the index of the label of the attack that injected it (none: benign).
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub flow: Flow,
    pub label: Option<usize>,
}

/// A rolling deploy: from `at_ms`, the group's pods are replaced by the next version over the
/// deploy duration.
#[derive(Clone, Debug)]
struct Deploy {
    at_ms: i64,
    group: usize,
    started: bool,
}

/// The simulated environment and its random source.
pub struct Environment {
    rng: ChaCha8Rng,
    model: Model,
    injections: Vec<Injection>,
    tallies: Vec<Tally>,
    /// Attackers that name no member of the environment.
    unresolved: Vec<String>,
    /// Churn, noise and local time: the organisation's settings (none for the demo).
    organisation: Option<OrganisationConfig>,
    deploys: Vec<Deploy>,
    pods_started: u64,
    deploys_started: u64,
}

const EVIL_IMAGE: &str = "docker.io/xmrig-lookalike/web:latest";

impl Environment {
    pub fn new(config: &SimulateConfig, start_ms: i64) -> Environment {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let model = Model::build(config, &mut rng);
        let organisation = (config.environment == Profile::Organisation).then(|| config.organisation.clone());
        let mut env = Environment {
            rng,
            model,
            injections: Vec::new(),
            tallies: Vec::new(),
            unresolved: Vec::new(),
            organisation,
            deploys: Vec::new(),
            pods_started: 0,
            deploys_started: 0,
        };
        let at = |offset: Duration| start_ms + offset.as_millis() as i64;
        if let Some(swap) = &config.swap {
            let attacker = format!("{}[{}]", swap.workload, swap.replica);
            let destination = format!("ext:{}", swap.destination);
            let (from, until) = (at(swap.at), at(swap.at + swap.lasting));
            let what = Injected::SwappedImage { port: swap.port };
            env.inject(what, &attacker, swap.destination.clone(), destination, from, until);
        }
        for attack in &config.attacks {
            let attacker = attack.attacker.clone().unwrap_or_else(|| format!("office[{}]", attack.client));
            let target = attack.target.clone().unwrap_or_else(|| attack.kind.default_target().to_owned());
            let (from, until) = (at(attack.at), at(attack.at + attack.lasting));
            env.inject(Injected::Attack(attack.kind), &attacker, target.clone(), target, from, until);
        }
        env.schedule_deploys(start_ms, start_ms + config.duration.as_millis() as i64);
        env
    }

    fn inject(&mut self, what: Injected, attacker: &str, target: String, destination: String, from: i64, until: i64) {
        let found = attacks::parse_attacker(attacker).and_then(|(name, member)| {
            let group = self.model.group(name)?;
            let g = &self.model.groups[group];
            (member < g.members.len() || g.workload.is_some()).then_some((group, member))
        });
        let Some((group, member)) = found else {
            self.unresolved.push(attacker.to_owned());
            return;
        };
        let entity = self.model.groups[group].members.get(member).map(Node::entity).unwrap_or_default();
        let label = Label {
            entity,
            attack: what.name().into(),
            destination,
            start_ms: from,
            end_ms: until,
            attacker: attacker.to_owned(),
            ..Label::default()
        };
        let progress = if matches!(what, Injected::Attack(AttackKind::Beacon)) { from } else { 0 };
        self.injections.push(Injection {
            what,
            group,
            member,
            target,
            from_ms: from,
            until_ms: until,
            progress,
            label: self.tallies.len(),
        });
        self.tallies.push(Tally::new(label));
    }

    /// Rolling deploys on weekdays, at random working-hours times, of random Deployments.
    fn schedule_deploys(&mut self, start_ms: i64, end_ms: i64) {
        let Some(organisation) = &self.organisation else { return };
        let (per_day, offset) = (organisation.deploys_per_day, organisation.utc_offset_hours as i64 * 3_600_000);
        let deployments: Vec<usize> = (0..self.model.groups.len())
            .filter(|g| self.model.groups[*g].workload.as_ref().is_some_and(|w| w.kind == "Deployment"))
            .collect();
        if per_day <= 0.0 || deployments.is_empty() {
            return;
        }
        let day_ms = 86_400_000;
        let mut day = (start_ms + offset).div_euclid(day_ms) * day_ms - offset;
        while day < end_ms {
            if load::is_weekday(day + 12 * 3_600_000, organisation.utc_offset_hours) {
                for _ in 0..poisson(&mut self.rng, per_day) {
                    let at_ms = day + 9 * 3_600_000 + self.rng.random_range(0..8 * 3_600_000);
                    let group = deployments[self.rng.random_range(0..deployments.len())];
                    if at_ms >= start_ms && at_ms < end_ms {
                        self.deploys.push(Deploy { at_ms, group, started: false });
                    }
                }
            }
            day += day_ms;
        }
        self.deploys.sort_by_key(|d| d.at_ms);
    }

    /// Attackers in the config that name no member of the environment.
    pub fn unresolved(&self) -> &[String] {
        &self.unresolved
    }

    /// The labels of what this environment injects (so far), their ends cut at `end_ms`; attacks
    /// that would start at or after `end_ms` are not part of the run and have no label.
    pub fn labels(&self, end_ms: i64) -> Vec<Label> {
        self.tallies
            .iter()
            .map(|t| Label { end_ms: t.label.end_ms.min(end_ms), ..t.label.clone() })
            .filter(|label| label.start_ms < end_ms)
            .collect()
    }

    /// Member indexes of `group` an attack uses around `now_ms`: churn leaves them alone.
    fn pinned(&self, group: usize, now_ms: i64, step_ms: i64) -> Vec<usize> {
        self.injections
            .iter()
            .filter(|i| i.group == group && now_ms >= i.from_ms - 2 * step_ms && now_ms <= i.until_ms + step_ms)
            .map(|i| i.member)
            .collect()
    }

    fn replace_pod(&mut self, group: usize, member: usize) {
        let pod = self.model.new_pod(&mut self.rng, group, member);
        self.model.groups[group].members[member] = pod;
        self.pods_started += 1;
    }

    /// Pods replaced, rolling deploys, autoscaling: for the organisation only.
    fn churn(&mut self, now_ms: i64, step_ms: i64) {
        let Some(organisation) = self.organisation.clone() else { return };
        let deploy_ms = organisation.deploy_duration.as_millis().max(1) as i64;
        for d in 0..self.deploys.len() {
            if !self.deploys[d].started && self.deploys[d].at_ms <= now_ms {
                self.deploys[d].started = true;
                self.deploys_started += 1;
                let template = model::suffix(&mut self.rng, 10);
                if let Some(workload) = self.model.groups[self.deploys[d].group].workload.as_mut() {
                    workload.version += 1;
                    workload.template = template;
                }
            }
        }
        let replace_p = match organisation.pod_lifetime.as_millis() as f64 {
            0.0 => 0.0,
            lifetime => (step_ms as f64 / lifetime).min(1.0),
        };
        for group in 0..self.model.groups.len() {
            let Some(workload) = self.model.groups[group].workload.clone() else { continue };
            let pinned = self.pinned(group, now_ms, step_ms);
            // Pods die and are replaced.
            for member in 0..self.model.groups[group].members.len() {
                if replace_p > 0.0 && !pinned.contains(&member) && self.rng.random_bool(replace_p) {
                    self.replace_pod(group, member);
                }
            }
            // A rolling deploy replaces old pods by new ones, a share of them at a time.
            if let Some(deploy) = self.deploys.iter().rev().find(|d| d.group == group && d.started) {
                let done = ((now_ms - deploy.at_ms) as f64 / deploy_ms as f64).min(1.0);
                let image = workload.image();
                let replicas = self.model.groups[group].members.len();
                let is_new = |node: &Node| node.meta.as_ref().and_then(|m| m.image.as_deref()) == Some(image.as_str());
                let mut new = self.model.groups[group].members.iter().filter(|n| is_new(n)).count();
                let target = (replicas as f64 * done).ceil() as usize;
                for member in 0..replicas {
                    if new >= target {
                        break;
                    }
                    if !is_new(&self.model.groups[group].members[member]) && !pinned.contains(&member) {
                        self.replace_pod(group, member);
                        new += 1;
                    }
                }
            }
            // The autoscaler follows the load; an attacking replica is kept.
            let mut desired = self.model.groups[group].members.len();
            if organisation.autoscale && workload.kind == "Deployment" && workload.max_replicas > workload.min_replicas
            {
                let load = workload.load.factor(now_ms, organisation.utc_offset_hours);
                let span = (workload.max_replicas - workload.min_replicas) as f64;
                desired = workload.min_replicas + (span * load).round() as usize;
            }
            desired = desired.max(pinned.iter().map(|m| m + 1).max().unwrap_or(0));
            while self.model.groups[group].members.len() < desired {
                let ordinal = self.model.groups[group].members.len();
                let pod = self.model.new_pod(&mut self.rng, group, ordinal);
                self.model.groups[group].members.push(pod);
                self.pods_started += 1;
            }
            while self.model.groups[group].members.len() > desired
                && !pinned.contains(&(self.model.groups[group].members.len() - 1))
            {
                self.model.groups[group].members.pop();
            }
        }
    }

    /// A member as it appears on the wire now: a swapped replica carries the malicious image.
    fn node(&self, group: usize, member: usize, swapped: &[(usize, usize)]) -> Node {
        let mut node = self.model.groups[group].members[member].clone();
        if swapped.contains(&(group, member)) {
            if let Some(meta) = node.meta.as_mut() {
                meta.image = Some(EVIL_IMAGE.into());
                meta.image_digest = Some(model::digest(EVIL_IMAGE));
            }
        }
        node
    }

    /// The flows that end in the step ending at `now_ms`.
    pub fn round(&mut self, now_ms: i64, step_ms: i64, out: &mut Vec<Generated>) {
        self.churn(now_ms, step_ms);
        let active: Vec<usize> = (0..self.injections.len())
            .filter(|i| {
                let injection = &self.injections[*i];
                injection.is_active(now_ms) && injection.member < self.model.groups[injection.group].members.len()
            })
            .collect();
        let swapped: Vec<(usize, usize)> = active
            .iter()
            .map(|i| &self.injections[*i])
            .filter(|i| matches!(i.what, Injected::SwappedImage { .. }))
            .map(|i| (i.group, i.member))
            .collect();
        let (offset, failed) = match &self.organisation {
            Some(o) => (o.utc_offset_hours, o.failed_percent / 100.0),
            None => (0, 0.0),
        };
        for c in 0..self.model.calls.len() {
            let call = &self.model.calls[c];
            let (from, to) = (call.from, call.to);
            let (callers, callees) = (self.model.groups[from].members.len(), self.model.groups[to].members.len());
            if callers == 0 || callees == 0 {
                continue;
            }
            let per_minute = (call.per_minute * call.load.factor(now_ms, offset)).max(call.floor_per_minute);
            let lambda = per_minute * step_ms as f64 / 60_000.0;
            let (per, affinity) = (call.per, call.affinity);
            let mut pairs = Vec::new();
            match per {
                Per::Caller => {
                    for i in 0..callers {
                        for _ in 0..poisson(&mut self.rng, lambda) {
                            let j = match affinity {
                                Affinity::Any => self.rng.random_range(0..callees),
                                Affinity::Sticky => i % callees,
                            };
                            pairs.push((i, j));
                        }
                    }
                }
                Per::Callee => {
                    for j in 0..callees {
                        for _ in 0..poisson(&mut self.rng, lambda) {
                            pairs.push((self.rng.random_range(0..callers), j));
                        }
                    }
                }
            }
            for (i, mut j) in pairs {
                if from == to && i == j {
                    if callees == 1 {
                        continue;
                    }
                    j = (j + 1) % callees;
                }
                let (src, dst) = (self.node(from, i, &swapped), self.node(to, j, &swapped));
                let call = &self.model.calls[c];
                let request = self.rng.random_range(call.request.0..=call.request.1);
                let response = self.rng.random_range(call.response.0..=call.response.1);
                let (port, protocol, app) = (call.port, call.protocol, call.app);
                let mut flow = make_flow(&mut self.rng, &src, &dst, port, now_ms, step_ms, request, response, app);
                set_protocol(&mut flow, protocol);
                if failed > 0.0 && self.rng.random_bool(failed) {
                    // Noise: a refused or unanswered attempt, retried once with success.
                    let mut attempt = flow.clone();
                    attempt.end_ms = attempt.start_ms + self.rng.random_range(0..50);
                    attempt.start_ms = attempt.end_ms - self.rng.random_range(1..3_000).min(attempt.end_ms);
                    attempt.bytes_out = if protocol == proto::TCP { 60 } else { flow.bytes_out };
                    attempt.packets_out = 1;
                    attempt.bytes_in = 0;
                    attempt.packets_in = 0;
                    attempt.src_port = self.rng.random_range(32_768..61_000);
                    attempt.conn_state = if protocol != proto::TCP {
                        ConnState::S0
                    } else if self.rng.random_bool(0.5) {
                        ConnState::REJ
                    } else {
                        ConnState::S0
                    };
                    attempt.tcp_flags = if protocol == proto::TCP { tcp_flag::SYN } else { 0 };
                    out.push(Generated { flow: attempt, label: None });
                }
                out.push(Generated { flow, label: None });
            }
        }
        for i in active {
            let injection = &self.injections[i];
            let attacker = self.node(injection.group, injection.member, &swapped);
            let label = injection.label;
            if self.tallies[label].label.flows == 0 {
                // Churn may have replaced the member before the attack began: name it as it is now.
                self.tallies[label].label.entity = attacker.entity();
            }
            let first = out.len();
            self.injections[i].round(&attacker, &mut self.rng, now_ms, step_ms, out);
            for generated in &out[first..] {
                self.tallies[label].add(&generated.flow);
            }
        }
    }
}

/// A Poisson-distributed count with mean `lambda` (Knuth's method; a normal approximation for
/// large means).
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0, rng.random::<f64>());
        while p > limit {
            k += 1;
            p *= rng.random::<f64>();
        }
        return k;
    }
    let (u1, u2) = (rng.random_range(f64::EPSILON..1.0), rng.random::<f64>());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (lambda + z * lambda.sqrt()).round().max(0.0) as u64
}

fn set_protocol(flow: &mut Flow, protocol: i32) {
    flow.protocol = protocol;
    if protocol == proto::TCP {
        flow.tcp_flags = tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN;
        flow.conn_state = ConnState::SF;
    } else {
        flow.tcp_flags = 0;
        flow.conn_state = ConnState::SF;
    }
}

/// A successful TCP flow from `src` to `dst` ending in the step ending at `now_ms`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp(
    rng: &mut ChaCha8Rng,
    src: &Node,
    dst: &Node,
    port: i32,
    now_ms: i64,
    step_ms: i64,
    out: i64,
    back: i64,
    app: Option<&str>,
) -> Flow {
    let mut flow = make_flow(rng, src, dst, port, now_ms, step_ms, out, back, app);
    set_protocol(&mut flow, proto::TCP);
    flow
}

#[allow(clippy::too_many_arguments)]
fn make_flow(
    rng: &mut ChaCha8Rng,
    src: &Node,
    dst: &Node,
    port: i32,
    now_ms: i64,
    step_ms: i64,
    out: i64,
    back: i64,
    app: Option<&str>,
) -> Flow {
    let end_ms = now_ms - rng.random_range(0..step_ms.max(1));
    Flow {
        sensor_id: "sim-sensor-1".into(),
        start_ms: end_ms - rng.random_range(1..800),
        end_ms,
        src_addr: src.addr.clone(),
        src_port: rng.random_range(32_768..61_000),
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

/// Publishes the simulation to the flows topic and writes its labels. Returns when the simulated
/// duration (or `max_flows`) is reached, or `stop` is set.
pub fn simulate(config: &Config, stop: &AtomicBool) -> anyhow::Result<SimulateReport> {
    let sim = &config.simulate;
    anyhow::ensure!(!sim.step.is_zero(), "simulate.step must be positive");
    let step_ms = sim.step.as_millis() as i64;
    let now = now_ms();
    let start_ms = sim.start_ms.unwrap_or(if sim.speed > 0.0 { now } else { now - sim.duration.as_millis() as i64 });
    let end_ms = start_ms + sim.duration.as_millis() as i64;
    let mut env = Environment::new(sim, start_ms);
    anyhow::ensure!(
        env.unresolved().is_empty(),
        "simulate: attackers {:?} name no member of the {:?} environment (\"group[index]\", e.g. \"office[3]\")",
        env.unresolved(),
        sim.environment
    );
    kafka::ensure_topics(&config.kafka, &config.topics)?;
    let registry = config.schema_registry()?;
    let encoder = record_encoder::<Flow>(sim.format, &config.topics.flows, registry.as_deref())?;
    let mut publisher = FlowPublisher::new(&config.kafka, &config.topics.flows, encoder)?;
    let wall_start = Instant::now();
    let mut report = SimulateReport { start_ms, end_ms, ..SimulateReport::default() };
    let mut round = Vec::new();
    let mut t = start_ms + step_ms;
    tracing::info!(topic = %config.topics.flows, start_ms, end_ms, format = %sim.format, environment = ?sim.environment, "simulating");
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
        round.sort_by_key(|generated| generated.flow.end_ms);
        for generated in &round {
            if sim.max_flows > 0 && report.flows >= sim.max_flows {
                break 'rounds;
            }
            publisher.publish(&generated.flow)?;
            report.flows += 1;
        }
        t += step_ms;
    }
    publisher.flush(Duration::from_secs(120))?;
    report.end_ms = report.end_ms.min(t);
    report.labels = env.labels(report.end_ms);
    report.pods_started = env.pods_started;
    report.deploys = env.deploys_started;
    let path =
        sim.labels.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("peergraph-labels-{start_ms}.jsonl")));
    labels::write(&path, &report.labels)?;
    tracing::info!(flows = report.flows, labels = report.labels.len(), labels_file = %path.display(), "simulation published");
    report.labels_file = Some(path);
    Ok(report)
}

/// What a simulation starting at `start_ms` publishes, counted without publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun {
    /// Flows generated: the ones asked for, or fewer if `max_span_ms` ran out first.
    pub flows: u64,
    /// Simulated time the rounds took to produce them, ms (whole steps).
    pub span_ms: i64,
    /// Distinct entity edges (source, destination, port, protocol, as the simulator names the
    /// entities) with a flow in the last `window_ms` of the span.
    pub live_edges: usize,
}

/// Runs the environment's rounds from `start_ms` until `flows` flows (or `max_span_ms` of
/// simulated time), as [`simulate`] would with `max_flows = flows`: how long its load model takes
/// to produce them, so that a benchmark's event times can be real ones ending about now.
pub fn dry_run(sim: &SimulateConfig, start_ms: i64, flows: u64, window_ms: i64, max_span_ms: i64) -> DryRun {
    let step_ms = sim.step.as_millis().max(1) as i64;
    let mut env = Environment::new(sim, start_ms);
    let mut round = Vec::new();
    let mut last_seen: HashMap<(String, String, i32, i32), i64> = HashMap::new();
    let (mut produced, mut t) = (0u64, start_ms);
    while produced < flows && t - start_ms < max_span_ms {
        t += step_ms;
        round.clear();
        env.round(t, step_ms, &mut round);
        for generated in round.iter().take((flows - produced) as usize) {
            let flow = &generated.flow;
            let src = model::entity_of(&flow.src_addr, flow.src_meta.as_ref());
            let dst = model::entity_of(&flow.dst_addr, flow.dst_meta.as_ref());
            let last = last_seen.entry((src, dst, flow.dst_port, flow.protocol)).or_insert(flow.end_ms);
            *last = (*last).max(flow.end_ms);
        }
        produced += (round.len() as u64).min(flows - produced);
    }
    let live_edges = last_seen.values().filter(|last| **last > t - window_ms).count();
    DryRun { flows: produced, span_ms: t - start_ms, live_edges }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Monday 2026-01-05 06:00 UTC.
    const MONDAY_6AM: i64 = 1_767_592_800_000;

    fn generate(config: &SimulateConfig, start_ms: i64, rounds: i64) -> (Vec<Generated>, Environment) {
        let step_ms = config.step.as_millis() as i64;
        let mut env = Environment::new(config, start_ms);
        let mut out = Vec::new();
        for r in 1..=rounds {
            env.round(start_ms + r * step_ms, step_ms, &mut out);
        }
        (out, env)
    }

    fn flows(config: &SimulateConfig, rounds: i64) -> Vec<Flow> {
        generate(config, 0, rounds).0.into_iter().map(|g| g.flow).collect()
    }

    fn organisation() -> SimulateConfig {
        SimulateConfig {
            environment: Profile::Organisation,
            step: Duration::from_secs(20),
            duration: Duration::from_secs(24 * 3600),
            organisation: OrganisationConfig { office_clients: 60, admins: 2, ..OrganisationConfig::default() },
            ..SimulateConfig::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_flows() {
        let config = SimulateConfig::default();
        assert_eq!(flows(&config, 5), flows(&config, 5));
        let other = SimulateConfig { seed: 8, ..SimulateConfig::default() };
        assert_ne!(flows(&config, 5), flows(&other, 5));
        let config = organisation();
        let day = |config: &SimulateConfig| generate(config, MONDAY_6AM, 400).0;
        assert_eq!(day(&config), day(&config));
        assert_ne!(day(&config), day(&SimulateConfig { seed: 8, ..config.clone() }));
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
        for generated in generate(&organisation(), MONDAY_6AM, 200).0 {
            generated.flow.validate().unwrap();
        }
    }

    /// The dry run counts what the simulation publishes: the same flows, over the span the load
    /// model needs for them; a fleet of `w` workloads × `r` replicas keeps about w·r·(r + 2)
    /// entity edges live (each pod calls every replica of the next workload and both DNS pods).
    #[test]
    fn a_dry_run_counts_the_flows_and_the_span_of_the_load_model() {
        let config = SimulateConfig { clients: 40, web_replicas: 4, ..SimulateConfig::default() };
        let dry = dry_run(&config, MONDAY_6AM, 5_000, 300_000, i64::MAX);
        assert_eq!(dry.flows, 5_000);
        let rounds = dry.span_ms / 1_000;
        let (all, _) = generate(&config, MONDAY_6AM, rounds);
        let (fewer, _) = generate(&config, MONDAY_6AM, rounds - 1);
        assert!(
            all.len() >= 5_000 && fewer.len() < 5_000,
            "{} rounds: {} flows, one fewer: {}",
            rounds,
            all.len(),
            fewer.len()
        );
        assert!(all.iter().all(|g| g.flow.end_ms > MONDAY_6AM && g.flow.end_ms <= MONDAY_6AM + dry.span_ms));
        // Nothing at all: the span runs out.
        let empty = SimulateConfig { clients: 0, web_replicas: 0, ..SimulateConfig::default() };
        assert_eq!(
            dry_run(&empty, MONDAY_6AM, 10, 300_000, 60_000),
            DryRun { flows: 0, span_ms: 60_000, live_edges: 0 }
        );

        let fleet = FleetConfig { namespaces: 10, workloads: 200, replicas: 3, calls_per_minute: 6.0 };
        let config = SimulateConfig { clients: 0, web_replicas: 1, fleet, ..SimulateConfig::default() };
        let dry = dry_run(&config, MONDAY_6AM, 60_000, 300_000, 3_600_000);
        let expected = 200 * 3 * (3 + 2);
        assert!(dry.live_edges >= expected * 9 / 10 && dry.live_edges <= expected + 100, "{dry:?}, about {expected}");
    }

    #[test]
    fn the_organisation_has_every_role_and_follows_working_hours() {
        let config = organisation();
        let (all, env) = generate(&config, MONDAY_6AM, 24 * 180);
        let groups: Vec<&str> = env.model.groups.iter().map(|g| g.name.as_str()).collect();
        for role in ["office", "admins", "dc", "file", "mail", "shop/web", "shop/api", "shop/db", "saas/payments"] {
            assert!(groups.contains(&role), "{role} missing from {groups:?}");
        }
        let hour_of = |ms: i64| (ms - MONDAY_6AM).div_euclid(3_600_000) + 6;
        let office_flows_at = |hour: i64| {
            all.iter().filter(|g| g.flow.src_addr.starts_with("10.20.") && hour_of(g.flow.end_ms) == hour).count()
        };
        let (morning, night) = (office_flows_at(10), office_flows_at(27));
        assert!(morning > 20 * night.max(1), "10:00 {morning} flows, 03:00 {night}");
        // Admins use SSH and RDP to the servers (the benign baseline of lateral movement).
        let admin_ports: BTreeSet<i32> =
            all.iter().filter(|g| g.flow.src_addr.starts_with("10.21.")).map(|g| g.flow.dst_port).collect();
        assert!(admin_ports.contains(&22) && admin_ports.contains(&3389), "{admin_ports:?}");
        // Noise: some calls fail and are retried.
        let failed = all.iter().filter(|g| g.flow.conn_state.is_failed()).count();
        assert!(failed > 0 && failed < all.len() / 50, "{failed} failed of {}", all.len());
        assert!(all.iter().all(|g| g.label.is_none()), "no attack configured, none injected");
    }

    #[test]
    fn pods_come_and_go_and_rolling_deploys_change_every_replicas_image() {
        let config = organisation();
        let (all, env) = generate(&config, MONDAY_6AM, 24 * 180);
        assert!(env.deploys_started >= 1, "a weekday has rolling deploys");
        assert!(env.pods_started > 10, "pods started: {}", env.pods_started);
        // Per workload: distinct pods and images seen over the day; at any moment, the replicas.
        let mut pods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut images: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for meta in all.iter().flat_map(|g| [&g.flow.src_meta, &g.flow.dst_meta]).flatten() {
            let workload = format!("{}/{}", meta.namespace.clone().unwrap(), meta.workload.clone().unwrap());
            pods.entry(workload.clone()).or_default().insert(meta.pod.clone().unwrap());
            images.entry(workload).or_default().insert(meta.image_digest.clone().unwrap());
        }
        assert!(pods["shop/api"].len() > 6, "api pods over a day: {:?}", pods["shop/api"]);
        assert!(images.values().any(|digests| digests.len() >= 2), "some workload was deployed: {images:?}");
        // After the day, each workload runs one image on all its replicas.
        for group in env.model.groups.iter().filter(|g| g.workload.is_some()) {
            let now: BTreeSet<_> =
                group.members.iter().map(|n| n.meta.as_ref().unwrap().image_digest.clone()).collect();
            assert_eq!(now.len(), 1, "{}: {now:?}", group.name);
        }
    }

    /// The labels file matches what was injected: every injected flow comes from its label's
    /// entity inside its label's time range, every label has flows and counts them right, and
    /// benign traffic never touches an attack's destination.
    #[test]
    fn labels_match_what_was_injected() {
        let hour = |h: u64| Duration::from_secs(h * 3600);
        let attackers = ["office[3]", "shop/api[1]", "admins[1]", "office[7]", "shop/worker[0]", "file"];
        let mut config = organisation();
        config.attacks = AttackKind::ALL
            .iter()
            .zip(attackers)
            .enumerate()
            .map(|(i, (kind, attacker))| AttackConfig {
                kind: *kind,
                at: hour(1 + i as u64) + Duration::from_secs(7),
                lasting: Duration::from_secs(600),
                client: 0,
                target: None,
                attacker: Some(attacker.into()),
            })
            .collect();
        config.swap = Some(SwapConfig { at: hour(8), lasting: Duration::from_secs(600), ..SwapConfig::default() });
        let rounds = 9 * 180;
        let end_ms = MONDAY_6AM + rounds * 20_000;
        let (all, env) = generate(&config, MONDAY_6AM, rounds);
        let labels = env.labels(end_ms);
        assert_eq!(labels.len(), 7);
        assert_eq!(labels[0].attack, "swapped_image");
        let resolver = peergraph_topology::entity::EntityResolver::default();
        for (index, label) in labels.iter().enumerate() {
            let theirs: Vec<&Flow> = all.iter().filter(|g| g.label == Some(index)).map(|g| &g.flow).collect();
            assert!(!theirs.is_empty(), "{} sent nothing", label.attack);
            assert_eq!(label.flows, theirs.len() as u64, "{}", label.attack);
            assert_eq!(label.bytes_out, theirs.iter().map(|f| f.bytes_out).sum::<i64>());
            for flow in &theirs {
                assert_eq!(resolver.resolve(&flow.src_addr, flow.src_meta.as_ref()).entity, label.entity);
                assert!(flow.end_ms >= label.start_ms && flow.end_ms < label.end_ms, "{}: {flow:?}", label.attack);
                flow.validate().unwrap();
            }
            let destinations: BTreeSet<&str> = theirs.iter().map(|f| f.dst_addr.as_str()).collect();
            assert_eq!(label.destinations, destinations.len() as u64);
            let benign_to_them =
                all.iter().filter(|g| g.label.is_none() && destinations.contains(g.flow.dst_addr.as_str()));
            assert_eq!(benign_to_them.count(), 0, "benign traffic to {}'s destinations", label.attack);
        }
        assert!(labels.iter().any(|l| l.entity.starts_with("pod:shop/api-")), "{labels:#?}");
        let swapped = &labels[0];
        let evil: Vec<&Flow> = all.iter().filter(|g| g.label == Some(0)).map(|g| &g.flow).collect();
        assert!(evil.iter().all(|f| f.src_meta.as_ref().unwrap().image.as_deref() == Some(EVIL_IMAGE)));
        assert_eq!(swapped.destination, "ext:203.0.113.66");
        // The same seed gives the same labels and flows.
        let (again, env_again) = generate(&config, MONDAY_6AM, rounds);
        assert_eq!(env_again.labels(end_ms), labels);
        assert!(again == all);
    }

    /// Sensors export flows about when they end: every flow of a round ends in that round's step
    /// (a failed attempt may precede its retry by a little), so nothing arrives hours late.
    #[test]
    fn every_flow_ends_in_its_round() {
        let mut config = organisation();
        config.swap = Some(SwapConfig { at: Duration::from_secs(3600), ..SwapConfig::default() });
        config.attacks = AttackKind::ALL
            .iter()
            .map(|kind| AttackConfig {
                kind: *kind,
                at: Duration::from_secs(1800),
                lasting: Duration::from_secs(600),
                client: 0,
                target: None,
                attacker: Some("shop/api[1]".into()),
            })
            .collect();
        let step_ms = 20_000;
        let mut env = Environment::new(&config, MONDAY_6AM);
        for r in 1..=3 * 180 {
            let now = MONDAY_6AM + r * step_ms;
            let mut out = Vec::new();
            env.round(now, step_ms, &mut out);
            for g in out {
                assert!(g.flow.end_ms <= now && g.flow.end_ms > now - step_ms - 1_000, "at {now}: {g:?}");
            }
        }
    }

    #[test]
    fn an_attacker_naming_no_member_is_reported() {
        let mut config = organisation();
        config.attacks = vec![AttackConfig {
            kind: AttackKind::Beacon,
            at: Duration::ZERO,
            lasting: Duration::from_secs(60),
            client: 0,
            target: None,
            attacker: Some("nowhere[2]".into()),
        }];
        assert_eq!(Environment::new(&config, 0).unresolved(), ["nowhere[2]".to_owned()]);
    }

    #[test]
    fn every_attack_comes_from_its_client_within_its_time_and_is_labelled() {
        let attacks: Vec<AttackConfig> = AttackKind::ALL
            .iter()
            .enumerate()
            .map(|(i, kind)| AttackConfig {
                kind: *kind,
                at: Duration::from_secs(10),
                lasting: Duration::from_secs(120),
                client: i,
                target: None,
                attacker: None,
            })
            .collect();
        let config = SimulateConfig { attacks, ..SimulateConfig::default() };
        let all = flows(&config, 200);
        let env = Environment::new(&config, 0);
        let labels = env.labels(200_000);
        assert_eq!(labels.len(), AttackKind::ALL.len());
        for (kind, label) in AttackKind::ALL.iter().zip(&labels) {
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
            assert!(flow.end_ms >= labels[0].start_ms && flow.end_ms < labels[0].end_ms);
        }
    }
}
