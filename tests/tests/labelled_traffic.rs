//! Real labelled traffic: peergraph's detectors over public Zeek `conn.log`s that other projects
//! labelled, with the detections those projects' own integration tests expect (see
//! `tests/data/labelled/*/README.md` for where each file comes from).
//!
//! No Kafka here: the logs go through the Zeek adapter, each flow becomes an edge the way the
//! pipeline's source resolves it, and the edges are windowed into the dataflow the way the pipeline
//! does it (`Feeds::window`): each (edge, epoch) enters at its epoch with +volume and leaves one
//! window later with −volume, and each workload edge enters the history once per coarse epoch. The
//! flows are fed epoch by epoch, in end-time order, into one timely worker.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::input::Input;
use peergraph_schemas::adapters::{Adapter, InputFormat};
use peergraph_schemas::Flow;
use peergraph_topology::{
    build, AssetRecord, Edge, EntityResolver, Epoch, Finding, Indicator, Inputs, Name, ScheduledInput, TopologyConfig,
    Volume, WorkloadEdge,
};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/labelled").join(path)
}

/// Every flow of one log file, decoded by the adapter as a sensor topic would be (a whole file is
/// one message: the TSV header travels with its lines), sorted by end time.
fn read_log(path: &str, format: InputFormat) -> Vec<Flow> {
    let bytes = std::fs::read(data(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut flows = Vec::new();
    Adapter::new(format).decode(&bytes, &mut flows).unwrap_or_else(|e| panic!("cannot decode {path}: {e}"));
    let records = bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty() && line[0] != b'#').count();
    assert_eq!(flows.len(), records, "{path}: every record becomes a flow");
    flows.sort_by_key(|flow| flow.end_ms);
    flows
}

/// A finding's identity: (detector, entity, key).
type Identity = (String, String, String);

/// Runs the whole dataflow over `flows` and returns every finding that held at some closed epoch:
/// per identity, each version it went through (its evidence grows and shrinks with the window).
fn findings(config: &TopologyConfig, flows: Vec<Flow>) -> BTreeMap<Identity, Vec<Finding>> {
    config.time.validate().expect("a valid time configuration");
    let config = config.clone();
    let updates = timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let topology = config.clone();
        let (mut contacts, mut assets, mut indicators, mut history, probe) =
            worker.dataflow::<Epoch, _, _>(move |scope| {
                let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let (assets_in, assets) = scope.new_collection::<AssetRecord, isize>();
                let (indicators_in, indicators) = scope.new_collection::<Indicator, isize>();
                let (history_in, history) = scope.new_collection::<(WorkloadEdge, Epoch), isize>();
                // Nothing restored: the volume history is derived from the flows alone.
                let (volumes_in, volumes) = scope.new_collection::<(Name, Epoch), isize>();
                drop(volumes_in);
                let outputs = build(&topology, Inputs { contacts, assets, indicators, history, volumes });
                let (probe, _) = outputs.findings.inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
                (ScheduledInput::new(contacts_in), assets_in, indicators_in, ScheduledInput::new(history_in), probe)
            });

        // One batch per epoch, pre-aggregated per (edge, epoch) as the pipeline's source does.
        let time = &config.time;
        let resolver = EntityResolver::new(&config.entities);
        let mut batches: BTreeMap<Epoch, HashMap<Edge, Volume>> = BTreeMap::new();
        for flow in &flows {
            let edge = Edge {
                src: resolver.resolve(&flow.src_addr, flow.src_meta.as_ref()),
                dst: resolver.resolve(&flow.dst_addr, flow.dst_meta.as_ref()),
                dst_port: flow.dst_port as u16,
                protocol: flow.protocol as u8,
            };
            let volume = batches.entry(time.epoch_of(flow.end_ms)).or_default().entry(edge).or_default();
            volume.plus_equals(&Volume::of_flow(flow));
        }
        let last = *batches.keys().next_back().expect("at least one flow");
        let mut remembered: HashSet<(WorkloadEdge, Epoch)> = HashSet::new();
        for (epoch, batch) in batches {
            contacts.advance_to(epoch);
            assets.advance_to(epoch);
            indicators.advance_to(epoch);
            history.advance_to(epoch);
            for (edge, volume) in batch {
                let coarse = time.history_epoch_of(epoch);
                let workload_edge = WorkloadEdge::from(&edge);
                if remembered.insert((workload_edge.clone(), coarse)) {
                    history.update_at((workload_edge.clone(), coarse), coarse, 1);
                    history.update_at((workload_edge, coarse), coarse + time.history_ttl_ms(), -1);
                }
                contacts.update_at((edge.clone(), epoch), epoch + time.window_ms(), volume.negated());
                contacts.update_at((edge, epoch), epoch, volume);
            }
            contacts.flush();
            assets.flush();
            indicators.flush();
            history.flush();
            worker.step_while(|| probe.less_than(&epoch));
        }
        // Let the last window slide out completely.
        let end = last + time.window_ms() + time.tick_ms();
        contacts.advance_to(end);
        assets.advance_to(end);
        indicators.advance_to(end);
        history.advance_to(end);
        contacts.flush();
        assets.flush();
        indicators.flush();
        history.flush();
        worker.step_while(|| probe.less_than(&end));
        let updates = seen.borrow().clone();
        updates
    });

    // Replay the changes epoch by epoch and keep whatever held at the end of some epoch.
    let mut by_time: BTreeMap<Epoch, Vec<(Finding, isize)>> = BTreeMap::new();
    for (finding, time, diff) in updates {
        by_time.entry(time).or_default().push((finding, diff));
    }
    let mut current: BTreeMap<Finding, isize> = BTreeMap::new();
    let mut held: BTreeMap<Identity, Vec<Finding>> = BTreeMap::new();
    for (_, changes) in by_time {
        for (finding, diff) in changes {
            *current.entry(finding).or_default() += diff;
        }
        current.retain(|_, count| *count != 0);
        for (finding, count) in &current {
            assert_eq!(*count, 1, "a finding holds once: {finding:?}");
            let identity = (finding.detector.clone(), finding.entity.to_string(), finding.key.clone());
            let versions = held.entry(identity).or_default();
            if versions.last() != Some(finding) {
                versions.push(finding.clone());
            }
        }
    }
    assert!(current.is_empty(), "every finding retires once its flows leave the window: {current:?}");
    held
}

/// The identities of the findings of `detector`.
fn of(found: &BTreeMap<Identity, Vec<Finding>>, detector: &str) -> BTreeSet<(String, String)> {
    found.keys().filter(|(d, _, _)| d == detector).map(|(_, entity, key)| (entity.clone(), key.clone())).collect()
}

fn pair(entity: &str, key: &str) -> (String, String) {
    (entity.to_owned(), key.to_owned())
}

/// The largest value a numeric evidence item reached over a finding's versions.
fn peak(found: &BTreeMap<Identity, Vec<Finding>>, detector: &str, entity: &str, key: &str, item: &str) -> i64 {
    let versions = &found[&(detector.to_owned(), entity.to_owned(), key.to_owned())];
    versions
        .iter()
        .flat_map(|finding| finding.evidence.iter().filter(|(name, _)| name == item))
        .map(|(_, value)| value.parse::<i64>().expect("a numeric evidence item"))
        .max()
        .unwrap_or_else(|| panic!("no {item} in {versions:?}"))
}

/// The configuration for the Stratosphere port-scan captures: a 10-minute window (each scan lasts
/// under a minute), and the scan thresholds at Slips's own: Slips reports a scan when more than 5
/// destination ports (vertical, `minimum_dports_to_set_evidence = 5`) or more than 5 destination
/// addresses on one port (horizontal, `minimum_dstips_to_set_evidence = 5`) went unanswered in its
/// time window. peergraph's defaults (50 ports, 30 hosts) are tuned for a busy cluster network.
fn slips_config() -> TopologyConfig {
    let mut config = TopologyConfig::default();
    config.time.tick = Duration::from_secs(1);
    config.time.window = Duration::from_secs(600);
    config.detectors.scan.min_distinct_ports = 6;
    config.detectors.scan.min_distinct_hosts = 6;
    config
}

#[test]
fn slips_vertical_port_scan_is_found_on_the_scanner() {
    let started = std::time::Instant::now();
    // Slips's tests/integration/test_portscans.py::test_vertical expects
    // "vertical port scan to IP 45.33.32.156 from 192.168.1.9".
    let flows = read_log("stratosphere-slips/port-scans/vertical/conn.log", InputFormat::ZeekConnJson);
    let found = findings(&slips_config(), flows);
    assert_eq!(
        of(&found, "scan"),
        BTreeSet::from([pair("host:192.168.1.9", "vertical:ext:45.33.32.156")]),
        "{found:#?}"
    );
    // Once the window holds the whole scan: nmap's 44 distinct ports, every one refused (REJ) or
    // reset without a byte (RSTO).
    let item = |name| peak(&found, "scan", "host:192.168.1.9", "vertical:ext:45.33.32.156", name);
    assert_eq!((item("distinct_services"), item("unanswered")), (44, 44), "{found:#?}");
    // The capture's benign part (DNS to the home router, one HTTPS download from GitHub) is no
    // scan, and a scanner is not a beacon.
    assert!(of(&found, "beaconing").is_empty(), "{found:#?}");
    eprintln!("vertical: {:?}", started.elapsed());
}

#[test]
fn slips_horizontal_port_scan_is_found_on_the_scanner() {
    let started = std::time::Instant::now();
    // Slips's tests/integration/test_portscans.py::test_horizontal expects
    // "Horizontal port scan to port http 80/tcp. From 10.0.2.112".
    let flows = read_log("stratosphere-slips/port-scans/horizontal/conn.log", InputFormat::ZeekConnTsv);
    let mut config = slips_config();
    // Slips counts only the not-established destinations of a port (10 here, connection state S0);
    // peergraph counts every destination and asks for a share of them unanswered. This infected
    // host also completes ordinary HTTP exchanges with 15 other servers on port 80 in the same
    // half-minute, so 10 of its 25 port-80 destinations (40 %) went unanswered.
    config.detectors.scan.min_unanswered_percent = 40;
    let found = findings(&config, flows.clone());
    assert_eq!(of(&found, "scan"), BTreeSet::from([pair("host:10.0.2.112", "horizontal:80/tcp")]), "{found:#?}");
    let item = |name| peak(&found, "scan", "host:10.0.2.112", "horizontal:80/tcp", name);
    assert_eq!((item("distinct_destinations"), item("unanswered")), (25, 10), "{found:#?}");
    // Its other services (HTTPS, DNS, SMTP, a C&C port) are answered and touch few hosts: no scan.
    // And peergraph's default share (80 %) does not call this mostly-answered traffic a scan.
    let found = findings(&slips_config(), flows);
    assert!(of(&found, "scan").is_empty(), "{found:#?}");
    eprintln!("horizontal: {:?}", started.elapsed());
}

#[test]
fn rita_proxy_beacon_is_found_on_the_beaconing_pair() {
    let started = std::time::Instant::now();
    // RITA's integration/beacons_test.go::TestProxyBeacons expects 10.136.0.18 to beacon to
    // www.honestimnotevil.com (357 connections, score 0.979) through the proxy 10.136.0.16:3128.
    // A conn.log sees only the proxied leg: one internal host calling the proxy every ~4 minutes
    // (200-300 s, jittered) with the same 677 bytes, for 28 hours.
    let flows = read_log("rita/proxy/conn.log", InputFormat::ZeekConnTsv);
    let mut config = TopologyConfig::default();
    config.time.tick = Duration::from_secs(1);
    // An hour holds ~14 beacons, above the detector's default 8 connections.
    config.time.window = Duration::from_secs(3600);
    // The beacon's destination in conn.log is the internal proxy (host:10.136.0.16), and the
    // detector by default scores only edges to external destinations; RITA attributes the beacon
    // to the FQDN from the proxy's http.log, which peergraph does not read.
    config.detectors.beaconing.external_only = false;
    let found = findings(&config, flows);
    assert_eq!(
        of(&found, "beaconing"),
        BTreeSet::from([pair("host:10.136.0.18", "host:10.136.0.16:3128/tcp")]),
        "{found:#?}"
    );
    let item = |name| peak(&found, "beaconing", "host:10.136.0.18", "host:10.136.0.16:3128/tcp", name);
    assert!(item("connections") >= 8 && item("score_permille") >= 900, "{found:#?}");
    // The capture's other traffic, IPv6 router solicitations from two link-local addresses, is
    // neither a beacon nor a scan.
    assert!(of(&found, "scan").is_empty(), "{found:#?}");
    eprintln!(
        "beacon: {} connections in the window, score {} permille at its peak; {:?}",
        item("connections"),
        item("score_permille"),
        started.elapsed()
    );
}
