//! The dataflow alone, without Kafka: throughput per worker, the cost of one tick at 1 % key churn
//! against recomputing the same window from scratch, the latency from a tick's end to its alerts,
//! and memory per live edge.
//!
//!     cargo run --release -p peergraph-topology --example dataflow_bench -- [OPTIONS]
//!     cargo run --release -p peergraph-topology --example dataflow_bench -- [workers] [edges] [ticks] [retention]
//!
//! Options (the second form is the older positional one, still accepted):
//!
//! - `--workers W` (1), `--ticks T` (180) of load, `--retention R` (none, in ticks; see below);
//! - the size, one of: `--edges N` (100,000): N distinct entity edges, pods of 200 ten-replica
//!   workloads calling 50 backends on 7 ports, the shape of the earlier figures; or
//!   `--workloads W [--replicas R (3)] [--namespaces N (100)]`: a fleet where each pod calls every
//!   replica of the next workload in its namespace and both CoreDNS pods, W·R·(R + 2) entity
//!   edges (10,000 × 3: 150,000);
//! - `--active P` (25): percent of the edges with flows in each loading tick;
//! - `--quiet-ticks Q` (30): ticks timed one by one at ~1 % key churn after one settling window.
//!
//! With `retention` (in ticks), each worker keeps a handle on the arranged service graph holding its
//! compaction back that far, as the query API does, and the report adds what that history holds.
//!
//! Synthetic traffic: each edge active in a loading tick with probability P %, 1..8 flows when
//! active; a 60-tick window; every detector of the default configuration enabled.
//!
//! With `PEERGRAPH_BENCH_ASSETS=P` set, the inventory lists P % of the backends (each as a /32 asset
//! with a role; `P=10` lists 5 of the 50), so that P % of the contacts are renamed to assets; by
//! default the inventory is empty.
//!
//! With `PEERGRAPH_BENCH_OPERATORS=N` set, worker 0 also prints the N operators that took the most
//! time (timely's scheduling log), to say where a tick's cost goes, and the N arrangements that
//! hold the most updates at the end of the load (differential's batch / merge / drop log), with
//! how many arrangements the dataflow has: to say where its memory goes. With
//! `PEERGRAPH_BENCH_PROFILE_CHURN=1` as well, the operator times cover the timed quiet ticks only:
//! where a quiet tick's cost goes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use peergraph_topology::{
    build, AssetRecord, Edge, Endpoint, Epoch, GraphFilter, GraphHistory, GraphTrace, Indicator, Inputs, Name,
    ScheduledInput, TopologyConfig, Volume, WorkloadEdge,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

const TICK: u64 = 1_000;
const WINDOW_TICKS: u64 = 60;

/// The one place the benchmark builds entity edges (so a change of `Endpoint`'s fields is a
/// change here only).
fn edge(src: (&str, Option<&str>), dst: (&str, Option<&str>), dst_port: u16, protocol: u8) -> Edge {
    let endpoint = |(entity, workload): (&str, Option<&str>)| Endpoint::new(entity, workload);
    Edge { src: endpoint(src), dst: endpoint(dst), dst_port, protocol }
}

/// Which entity edges the synthetic traffic runs over.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `edges` edges: pods of 200 ten-replica workloads calling 50 backends on 7 ports.
    Backends { edges: usize },
    /// Each pod of `workloads` Deployments of `replicas` replicas in `namespaces` namespaces calls
    /// every replica of the next workload of its namespace (8080/tcp) and both CoreDNS pods (53/udp).
    Fleet { workloads: usize, replicas: usize, namespaces: usize },
}

impl Shape {
    fn edges(&self) -> usize {
        match *self {
            Shape::Backends { edges } => edges,
            Shape::Fleet { workloads, replicas, .. } => workloads * replicas * (replicas + 2),
        }
    }

    fn edge(&self, i: usize) -> Edge {
        match *self {
            Shape::Backends { .. } => {
                let (group, member, backend) = (i % 200, (i / 200) % 10, (i / 2000) % 50);
                let src = format!("pod:ns{group}/w{group}-{member}");
                let workload = format!("workload:ns{group}/Deployment/w{group}");
                let dst = format!("host:{}", backend_address(backend));
                edge((&src, Some(&workload)), (&dst, None), 443 + (i % 7) as u16, 6)
            }
            Shape::Fleet { workloads, replicas, namespaces } => {
                let namespaces = namespaces.clamp(1, workloads.max(1));
                let (pod, k) = (i / (replicas + 2), i % (replicas + 2));
                let (w, r) = (pod / replicas, pod % replicas);
                let namespace = w % namespaces;
                let name = |w: usize| format!("fleet-{namespace}/svc-{}", w / namespaces);
                let src = format!("pod:{}-{r}", name(w));
                let src_workload = format!("workload:fleet-{namespace}/Deployment/svc-{}", w / namespaces);
                if k < replicas {
                    let next = if w + namespaces < workloads { w + namespaces } else { namespace };
                    let dst = format!("pod:{}-{k}", name(next));
                    let dst_workload = format!("workload:fleet-{namespace}/Deployment/svc-{}", next / namespaces);
                    edge((&src, Some(&src_workload)), (&dst, Some(&dst_workload)), 8080, 6)
                } else {
                    let dst = format!("pod:kube-system/coredns-{}", k - replicas);
                    let dns = "workload:kube-system/Deployment/coredns";
                    edge((&src, Some(&src_workload)), (&dst, Some(dns)), 53, 17)
                }
            }
        }
    }
}

/// The command line: options, or the older positional `[workers] [edges] [ticks] [retention]`.
#[derive(Clone, Copy, Debug)]
struct Args {
    workers: usize,
    shape: Shape,
    ticks: u64,
    retention: Option<u64>,
    active_percent: u32,
    quiet_ticks: u64,
}

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let mut parsed = Args {
            workers: 1,
            shape: Shape::Backends { edges: 100_000 },
            ticks: 180,
            retention: None,
            active_percent: 25,
            quiet_ticks: 30,
        };
        let number = |name: &str, value: Option<&String>| -> Result<u64, String> {
            value.and_then(|v| v.replace('_', "").parse().ok()).ok_or(format!("{name} needs a number"))
        };
        if args.first().is_some_and(|a| !a.starts_with("--")) {
            let positional: Vec<u64> =
                args.iter().map(|a| a.parse().map_err(|_| format!("not a number: {a}"))).collect::<Result<_, _>>()?;
            let at = |i: usize| positional.get(i).copied();
            parsed.workers = at(0).unwrap_or(1) as usize;
            parsed.shape = Shape::Backends { edges: at(1).unwrap_or(100_000) as usize };
            parsed.ticks = at(2).unwrap_or(180);
            parsed.retention = at(3);
            return Ok(parsed);
        }
        let (mut workloads, mut replicas, mut namespaces) = (None, 3, 100);
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let value = number(flag, iter.next())?;
            match flag.as_str() {
                "--workers" => parsed.workers = value as usize,
                "--edges" => parsed.shape = Shape::Backends { edges: value as usize },
                "--workloads" => workloads = Some(value as usize),
                "--replicas" => replicas = value as usize,
                "--namespaces" => namespaces = value as usize,
                "--ticks" => parsed.ticks = value,
                "--retention" => parsed.retention = Some(value),
                "--active" => parsed.active_percent = value.clamp(1, 100) as u32,
                "--quiet-ticks" => parsed.quiet_ticks = value.max(1),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if let Some(workloads) = workloads {
            parsed.shape = Shape::Fleet { workloads, replicas: replicas.max(1), namespaces };
        }
        Ok(parsed)
    }
}

fn backend_address(backend: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 9, (backend / 250) as u8, (backend % 250) as u8)
}

/// The inventory: `percent` % of the 50 backends, spread evenly, each a /32 asset with a role.
fn inventory(percent: usize) -> Vec<AssetRecord> {
    let listed = 50 * percent.min(100) / 100;
    (0..listed)
        .map(|n| n * 50 / listed.max(1))
        .map(|backend| AssetRecord {
            network: std::net::IpAddr::V4(backend_address(backend)).into(),
            id: format!("backend-{backend}"),
            role: Some("backend".to_owned()),
            criticality: 3,
        })
        .collect()
}

/// A worker's installed topology: its contacts input, the probe on its alerts, and a handle on the
/// arranged graph's trace.
type Installed = (ScheduledInput<(Edge, Epoch), Volume>, ProbeHandle<Epoch>, GraphTrace);

/// The whole topology on this worker, fed contacts and `assets` (given by worker 0 at the start):
/// the reference inputs are closed at once so they hold no time back.
fn install(worker: &mut timely::worker::Worker, config: &TopologyConfig, assets: &[AssetRecord]) -> Installed {
    let first = worker.index() == 0;
    worker.dataflow::<Epoch, _, _>(|scope| {
        let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
        let (mut assets_in, assets_collection) = scope.new_collection::<AssetRecord, isize>();
        if first {
            for asset in assets {
                assets_in.insert(asset.clone());
            }
        }
        let assets = assets_collection;
        let (indicators_in, indicators) = scope.new_collection::<Indicator, isize>();
        let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
        let (volumes_in, volumes) = scope.new_collection::<(Name, Epoch), isize>();
        let outputs = build(config, Inputs { contacts, assets, indicators, history, volumes });
        let (probe, _) = outputs.alerts.probe();
        drop((assets_in, indicators_in, history_in, volumes_in));
        (ScheduledInput::new(contacts_in), probe, outputs.graph.trace)
    })
}

/// Time spent per operator, from timely's `Schedule` start / stop events, with the operators' names,
/// and the updates each arrangement holds, from differential's batch events.
#[derive(Default)]
struct OperatorTimes {
    names: std::collections::HashMap<usize, (Vec<usize>, String)>,
    started: std::collections::HashMap<usize, Duration>,
    spent: std::collections::HashMap<usize, Duration>,
    /// Per arranging operator: updates in its trace's batches (added by a batch or a completed
    /// merge, removed by the merge's inputs or a drop).
    held: std::collections::HashMap<usize, isize>,
}

impl OperatorTimes {
    /// Starts recording on `worker`; read the result after the run.
    fn record(worker: &mut timely::worker::Worker) -> std::rc::Rc<std::cell::RefCell<OperatorTimes>> {
        use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
        let times = std::rc::Rc::new(std::cell::RefCell::new(OperatorTimes::default()));
        let sink = times.clone();
        worker.log_register().expect("timely logging").insert::<TimelyEventBuilder, _>("timely", move |_, events| {
            let Some(events) = events else { return };
            let mut times = sink.borrow_mut();
            for (at, event) in events.iter() {
                match event {
                    TimelyEvent::Operates(op) => {
                        times.names.insert(op.id, (op.addr.clone(), op.name.clone()));
                    }
                    TimelyEvent::Schedule(s) => match s.start_stop {
                        StartStop::Start => {
                            times.started.insert(s.id, *at);
                        }
                        StartStop::Stop => {
                            if let Some(from) = times.started.remove(&s.id) {
                                *times.spent.entry(s.id).or_default() += at.saturating_sub(from);
                            }
                        }
                    },
                    _ => {}
                }
            }
        });
        let sink = times.clone();
        use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
        worker.log_register().expect("timely logging").insert::<DifferentialEventBuilder, _>(
            "differential/arrange",
            move |_, events| {
                let Some(events) = events else { return };
                let mut times = sink.borrow_mut();
                for (_, event) in events.iter() {
                    let (operator, change) = match event {
                        DifferentialEvent::Batch(b) => (b.operator, b.length as isize),
                        DifferentialEvent::Merge(m) => match m.complete {
                            Some(merged) => (m.operator, merged as isize - (m.length1 + m.length2) as isize),
                            None => continue,
                        },
                        DifferentialEvent::Drop(d) => (d.operator, -(d.length as isize)),
                        _ => continue,
                    };
                    *times.held.entry(operator).or_default() += change;
                }
            },
        );
        times
    }

    /// The `top` arrangements by updates held, and how many arrangements there are.
    fn print_arrangements(&self, top: usize) {
        let mut held: Vec<_> = self.held.iter().collect();
        held.sort_by(|a, b| b.1.cmp(a.1));
        let total: isize = held.iter().map(|(_, n)| **n).sum();
        println!("worker 0, {} arrangements holding {total} updates at the end of the load; the largest:", held.len());
        for (id, updates) in held.into_iter().take(top) {
            let (addr, name) = self.names.get(id).cloned().unwrap_or_default();
            println!("  {updates:>10} updates  {name} {addr:?} (id {id})");
        }
    }

    /// The `top` operators by time spent, innermost first (a scope's time includes its children's).
    fn print(&self, top: usize) {
        let mut spent: Vec<_> = self.spent.iter().collect();
        spent.sort_by(|a, b| b.1.cmp(a.1));
        println!("worker 0, time per operator (a scope includes its children):");
        for (id, time) in spent.into_iter().take(top) {
            let (addr, name) = self.names.get(id).cloned().unwrap_or_default();
            println!("  {:>9.1} ms  {name} {addr:?} (id {id})", time.as_secs_f64() * 1e3);
        }
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

struct Report {
    flows: u64,
    updates: u64,
    load: Duration,
    /// Each timed quiet tick: from closing the tick to its alerts (slowest worker).
    quiet_ticks: Vec<Duration>,
    scratch: Duration,
    live_edges: usize,
    rss_before: u64,
    rss_loaded: u64,
    /// Updates the graph traces held at the end of the load, and the time to read the graph at a
    /// past time from them (slowest worker).
    history: Option<(usize, Duration)>,
}

/// What one worker measured.
struct WorkerResult {
    flows: u64,
    updates: u64,
    load: Duration,
    quiet_ticks: Vec<Duration>,
    live_edges: usize,
    rss_loaded: u64,
    history: Option<(usize, Duration)>,
}

/// The `q` quantile (0..=1) of `samples`, by the nearest rank.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = Args::parse(&argv).unwrap_or_else(|e| {
        eprintln!("dataflow_bench: {e}\nusage: see the head of topology/examples/dataflow_bench.rs");
        std::process::exit(2)
    });
    let Args { workers, shape, ticks, retention, active_percent, quiet_ticks } = args;
    let edges = shape.edges();
    let mut config = TopologyConfig::default();
    config.time.window = Duration::from_millis(WINDOW_TICKS * TICK);
    let config = Arc::new(config);
    let assets = inventory(std::env::var("PEERGRAPH_BENCH_ASSETS").ok().and_then(|p| p.parse().ok()).unwrap_or(0));
    let profile_top: usize = std::env::var("PEERGRAPH_BENCH_OPERATORS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let results = Arc::new(Mutex::new(Vec::new()));
    let rss_before = rss_bytes();

    let (config2, results2, assets2) = (config.clone(), results.clone(), assets.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
        let mine: Vec<Edge> = (0..edges).filter(|i| i % peers == index).map(|i| shape.edge(i)).collect();
        let operator_times = (index == 0 && profile_top > 0).then(|| OperatorTimes::record(worker));
        let (mut contacts, probe, trace) = install(worker, &config2, &assets2);
        // Without a retention the trace handle is dropped here and the graph keeps no history.
        let mut history = retention.map(|r| GraphHistory::new(trace, r * TICK, TICK));

        // Load: `ticks` ticks, each edge active with probability P %, 1..8 flows when active.
        let started = Instant::now();
        let (mut flows, mut updates) = (0u64, 0u64);
        let mut live = std::collections::HashSet::new();
        for tick in 1..=ticks {
            let epoch = tick * TICK;
            for (n, edge) in mine.iter().enumerate() {
                if rng.random_range(0..100) < active_percent {
                    let n_flows = rng.random_range(1..8);
                    let volume = Volume {
                        flows: n_flows,
                        bytes_out: 900 * n_flows,
                        bytes_in: 4000 * n_flows,
                        packets_out: 2 * n_flows,
                        packets_in: 4 * n_flows,
                        failed: 0,
                    };
                    contacts.update_at((edge.clone(), epoch), epoch, volume);
                    contacts.update_at((edge.clone(), epoch), epoch + WINDOW_TICKS * TICK, volume.negated());
                    flows += n_flows as u64;
                    updates += 2;
                    if tick + WINDOW_TICKS > ticks {
                        live.insert(n);
                    }
                }
            }
            contacts.advance_to(epoch + TICK);
            contacts.flush();
            worker.step_while(|| probe.less_than(contacts.time()));
            if let Some(history) = history.as_mut() {
                history.maintain();
            }
        }
        let load = started.elapsed();
        let rss_loaded = rss_bytes();
        if let Some(times) = operator_times.as_ref() {
            times.borrow().print_arrangements(profile_top);
        }
        // What the history holds, and one read of the whole entity-level graph half a retention ago.
        let held = history.as_mut().map(|history| {
            let at = history.latest().unwrap_or(0).saturating_sub(history.retention_ms() / 2);
            let started = Instant::now();
            let edges = history.read(at, &GraphFilter::level(peergraph_schemas::EdgeLevel::Entity));
            let read = started.elapsed();
            assert!(edges.is_ok_and(|e| !e.is_empty()), "the graph half a retention ago has edges");
            (history.held_updates(), read)
        });

        // Churn: from here on, each edge appears in a tick with probability 1/100, so once the
        // dense ticks have left the window about 1 % of the keys change per tick (appear, or
        // leave the window). Settle for one window, then time the next ticks one by one: from
        // closing the tick (its flows are in) until the alerts' frontier has passed it.
        let sparse = |rng: &mut ChaCha8Rng, contacts: &mut ScheduledInput<(Edge, Epoch), Volume>, epoch: Epoch| {
            for edge in &mine {
                if rng.random_range(0..100) == 0 {
                    let volume = Volume { flows: 1, bytes_out: 900, ..Volume::default() };
                    contacts.update_at((edge.clone(), epoch), epoch, volume);
                    contacts.update_at((edge.clone(), epoch), epoch + WINDOW_TICKS * TICK, volume.negated());
                }
            }
        };
        for tick in ticks + 1..=ticks + WINDOW_TICKS {
            sparse(&mut rng, &mut contacts, tick * TICK);
            contacts.advance_to(tick * TICK + TICK);
            contacts.flush();
            worker.step_while(|| probe.less_than(contacts.time()));
        }
        if let Some(times) =
            operator_times.as_ref().filter(|_| std::env::var_os("PEERGRAPH_BENCH_PROFILE_CHURN").is_some())
        {
            // Time only the quiet ticks: deliver the events logged so far first.
            if let Some(logger) =
                worker.log_register().and_then(|r| r.get::<timely::logging::TimelyEventBuilder>("timely"))
            {
                logger.flush();
            }
            times.borrow_mut().spent.clear();
        }
        let mut quiet = Vec::new();
        for tick in ticks + WINDOW_TICKS + 1..=ticks + WINDOW_TICKS + quiet_ticks {
            sparse(&mut rng, &mut contacts, tick * TICK);
            let closed = Instant::now();
            contacts.advance_to(tick * TICK + TICK);
            contacts.flush();
            worker.step_while(|| probe.less_than(contacts.time()));
            quiet.push(closed.elapsed());
        }
        if let Some(times) = operator_times {
            worker.log_register().expect("timely logging").remove("timely");
            times.borrow().print(profile_top);
        }

        drop(history);
        let result = WorkerResult {
            flows,
            updates,
            load,
            quiet_ticks: quiet,
            live_edges: live.len(),
            rss_loaded,
            history: held,
        };
        results2.lock().unwrap().push(result);
    })
    .unwrap()
    .join();

    // The same window computed from scratch: a fresh dataflow given the last window's contacts
    // at once.
    let scratch = {
        let (config3, assets3) = (config.clone(), assets.clone());
        let started = Instant::now();
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + index as u64);
            let mine: Vec<Edge> = (0..edges).filter(|i| i % peers == index).map(|i| shape.edge(i)).collect();
            let (mut contacts, probe, _) = install(worker, &config3, &assets3);
            // The churn phase's window (about 45 % of the edges live), given at once.
            let end = (ticks + 2 * WINDOW_TICKS) * TICK;
            for _tick in 0..WINDOW_TICKS {
                for edge in &mine {
                    if rng.random_range(0..100) == 0 {
                        contacts.update_at(
                            (edge.clone(), end),
                            end,
                            Volume { flows: 1, bytes_out: 900, ..Volume::default() },
                        );
                    }
                }
            }
            contacts.advance_to(end + TICK);
            contacts.flush();
            worker.step_while(|| probe.less_than(contacts.time()));
        })
        .unwrap()
        .join();
        started.elapsed()
    };

    let results = results.lock().unwrap();
    // Per tick, the slowest worker's latency (the probe is shared, so they nearly agree).
    let quiet_ticks: Vec<Duration> = (0..quiet_ticks as usize)
        .map(|t| results.iter().filter_map(|r| r.quiet_ticks.get(t)).max().copied().unwrap_or_default())
        .collect();
    let report = Report {
        flows: results.iter().map(|r| r.flows).sum(),
        updates: results.iter().map(|r| r.updates).sum(),
        load: results.iter().map(|r| r.load).max().unwrap_or_default(),
        quiet_ticks,
        scratch,
        live_edges: results.iter().map(|r| r.live_edges).sum(),
        rss_before,
        rss_loaded: results.iter().map(|r| r.rss_loaded).max().unwrap_or_default(),
        history: results
            .iter()
            .map(|r| r.history)
            .try_fold((0, Duration::ZERO), |(n, t), held| held.map(|(more, read)| (n + more, t.max(read)))),
    };
    let secs = report.load.as_secs_f64();
    let size = match shape {
        Shape::Backends { edges } => format!("{edges} distinct edges (pods of 200 workloads → 50 backends)"),
        Shape::Fleet { workloads, replicas, namespaces } => format!(
            "{workloads} workloads × {replicas} replicas in {namespaces} namespaces: {edges} distinct entity edges"
        ),
    };
    println!(
        "workers {workers}, {size}, {ticks} ticks at {active_percent} % of edges active, window {WINDOW_TICKS} \
         ticks, {} assets listed",
        assets.len()
    );
    println!(
        "load: {} flows as {} updates in {:.2}s: {:.0} flows/s ({:.0} per worker), {:.0} updates/s",
        report.flows,
        report.updates,
        secs,
        report.flows as f64 / secs,
        report.flows as f64 / secs / workers as f64,
        report.updates as f64 / secs
    );
    let mean = report.quiet_ticks.iter().sum::<Duration>() / report.quiet_ticks.len().max(1) as u32;
    println!(
        "one tick at ~1% key churn: {:.1} ms (mean of {}); the same window from scratch: {:.1} ms; ratio {:.4}",
        mean.as_secs_f64() * 1e3,
        report.quiet_ticks.len(),
        report.scratch.as_secs_f64() * 1e3,
        mean.as_secs_f64() / report.scratch.as_secs_f64()
    );
    println!(
        "tick end → alerts (the tick's flows in, the alerts' frontier past it): p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms over {} quiet ticks",
        quantile(&report.quiet_ticks, 0.5).as_secs_f64() * 1e3,
        quantile(&report.quiet_ticks, 0.99).as_secs_f64() * 1e3,
        quantile(&report.quiet_ticks, 1.0).as_secs_f64() * 1e3,
        report.quiet_ticks.len()
    );
    println!(
        "memory: {} live edges, RSS {:.0} MB → {:.0} MB: {:.0} bytes per live edge",
        report.live_edges,
        report.rss_before as f64 / 1e6,
        report.rss_loaded as f64 / 1e6,
        (report.rss_loaded.saturating_sub(report.rss_before)) as f64 / report.live_edges.max(1) as f64
    );
    if let (Some(retention), Some((held, read))) = (retention, report.history) {
        println!(
            "graph history: {retention} ticks retained, {held} updates held in the graph trace; \
             reading the entity graph half a retention ago: {:.1} ms",
            read.as_secs_f64() * 1e3
        );
    }
}
