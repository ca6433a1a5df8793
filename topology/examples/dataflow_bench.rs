//! The dataflow alone, without Kafka: throughput per worker, the cost of one tick at 1 % key churn
//! against recomputing the same window from scratch, and memory per live edge.
//!
//!     cargo run --release -p peergraph-topology --example dataflow_bench -- [workers] [edges] [ticks] [retention]
//!
//! With `retention` (in ticks), each worker keeps a handle on the arranged service graph holding its
//! compaction back that far, as the query API does, and the report adds what that history holds.
//!
//! Synthetic traffic: `edges` distinct entity edges (pods of 100-replica-ish workloads talking to
//! shared backends), each active in a tick with probability 1/4; a 60-tick window; every detector
//! of the default configuration enabled.
//!
//! With `PEERGRAPH_BENCH_ASSETS=P` set, the inventory lists P % of the backends (each as a /32 asset
//! with a role; `P=10` lists 5 of the 50), so that P % of the contacts are renamed to assets; by
//! default the inventory is empty.
//!
//! With `PEERGRAPH_BENCH_OPERATORS=N` set, worker 0 also prints the N operators that took the most
//! time (timely's scheduling log), to say where a tick's cost goes.

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

fn edge_number(i: usize) -> Edge {
    let group = i % 200;
    let member = (i / 200) % 10;
    let backend = (i / 2000) % 50;
    Edge {
        src: Endpoint {
            entity: format!("pod:ns{group}/w{group}-{member}").into(),
            workload: Some(format!("workload:ns{group}/Deployment/w{group}").into()),
        },
        dst: Endpoint { entity: format!("host:{}", backend_address(backend)).into(), workload: None },
        dst_port: 443 + (i % 7) as u16,
        protocol: 6,
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

/// Time spent per operator, from timely's `Schedule` start / stop events, with the operators' names.
#[derive(Default)]
struct OperatorTimes {
    names: std::collections::HashMap<usize, (Vec<usize>, String)>,
    started: std::collections::HashMap<usize, Duration>,
    spent: std::collections::HashMap<usize, Duration>,
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
        times
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
    churn_tick: Duration,
    scratch: Duration,
    live_edges: usize,
    rss_before: u64,
    rss_loaded: u64,
    /// Updates the graph traces held at the end of the load, and the time to read the graph at a
    /// past time from them (slowest worker).
    history: Option<(usize, Duration)>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let edges: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let ticks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(180);
    let retention: Option<u64> = args.next().and_then(|a| a.parse().ok());
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
        let mine: Vec<Edge> = (0..edges).filter(|i| i % peers == index).map(edge_number).collect();
        let operator_times = (index == 0 && profile_top > 0).then(|| OperatorTimes::record(worker));
        let (mut contacts, probe, trace) = install(worker, &config2, &assets2);
        // Without a retention the trace handle is dropped here and the graph keeps no history.
        let mut history = retention.map(|r| GraphHistory::new(trace, r * TICK, TICK));

        // Load: `ticks` ticks, each edge active with probability 1/4, 1..8 flows when active.
        let started = Instant::now();
        let (mut flows, mut updates) = (0u64, 0u64);
        let mut live = std::collections::HashSet::new();
        for tick in 1..=ticks {
            let epoch = tick * TICK;
            for edge in &mine {
                if rng.random_range(0..4) == 0 {
                    let n = rng.random_range(1..8);
                    let volume = Volume {
                        flows: n,
                        bytes_out: 900 * n,
                        bytes_in: 4000 * n,
                        packets_out: 2 * n,
                        packets_in: 4 * n,
                        failed: 0,
                    };
                    contacts.update_at((edge.clone(), epoch), epoch, volume);
                    contacts.update_at((edge.clone(), epoch), epoch + WINDOW_TICKS * TICK, volume.negated());
                    flows += n as u64;
                    updates += 2;
                    if tick + WINDOW_TICKS > ticks {
                        live.insert(edge.clone());
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
        // leave the window). Settle for one window, then time the next ten ticks.
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
        let started = Instant::now();
        for tick in ticks + WINDOW_TICKS + 1..=ticks + WINDOW_TICKS + 10 {
            sparse(&mut rng, &mut contacts, tick * TICK);
            contacts.advance_to(tick * TICK + TICK);
            contacts.flush();
            worker.step_while(|| probe.less_than(contacts.time()));
        }
        let churn_tick = started.elapsed() / 10;
        if let Some(times) = operator_times {
            worker.log_register().expect("timely logging").remove("timely");
            times.borrow().print(profile_top);
        }

        drop(history);
        results2.lock().unwrap().push((index, flows, updates, load, churn_tick, live.len(), rss_loaded, held));
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
            let mine: Vec<Edge> = (0..edges).filter(|i| i % peers == index).map(edge_number).collect();
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
    let report = Report {
        flows: results.iter().map(|r| r.1).sum(),
        updates: results.iter().map(|r| r.2).sum(),
        load: results.iter().map(|r| r.3).max().unwrap_or_default(),
        churn_tick: results.iter().map(|r| r.4).max().unwrap_or_default(),
        scratch,
        live_edges: results.iter().map(|r| r.5).sum(),
        rss_before,
        rss_loaded: results.iter().map(|r| r.6).max().unwrap_or_default(),
        history: results
            .iter()
            .map(|r| r.7)
            .try_fold((0, Duration::ZERO), |(n, t), held| held.map(|(more, read)| (n + more, t.max(read)))),
    };
    let secs = report.load.as_secs_f64();
    println!(
        "workers {workers}, distinct edges {edges}, ticks {ticks}, window {WINDOW_TICKS} ticks, {} assets listed",
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
    println!(
        "one tick at ~1% key churn: {:.1} ms; the same window from scratch: {:.1} ms; ratio {:.4}",
        report.churn_tick.as_secs_f64() * 1e3,
        report.scratch.as_secs_f64() * 1e3,
        report.churn_tick.as_secs_f64() / report.scratch.as_secs_f64()
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
