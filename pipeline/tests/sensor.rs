//! The pcap sensor against captures nobody here wrote: Zeek's own test traces, with the
//! `conn.log` that Zeek's test suite expects for each (tests/data/pcap/README.md). Every Zeek
//! connection must come out of the sensor with the same 5-tuple, connection state, packets and IP
//! bytes per direction (and, for UDP, payload bytes); where Zeek and the sensor differ on
//! purpose, the test names the difference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peergraph::config::{KafkaConfig, TopicsConfig};
use peergraph::sensor::table::MeteredFlow;
use peergraph::sensor::{meter_file, run_sensor_with, SensorArgs, SensorConfig};
use peergraph_schemas::codec::{Decoder, StaticSchemas};
use peergraph_schemas::{ConnState, Flow};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/pcap").join(name)
}

/// One comparable connection: Zeek's row or the sensor's flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Conn {
    orig: String,
    orig_port: u16,
    resp: String,
    resp_port: u16,
    protocol: u8,
    state: String,
    orig_pkts: u64,
    orig_ip_bytes: u64,
    resp_pkts: u64,
    resp_ip_bytes: u64,
    /// UDP only: payload bytes per direction (Zeek fills these only when duration > 0).
    udp_payload: Option<(u64, u64)>,
}

fn zeek_conns(log: &str) -> Vec<Conn> {
    let text = std::fs::read_to_string(data(log)).unwrap();
    let fields: Vec<&str> =
        text.lines().find_map(|l| l.strip_prefix("#fields\t")).expect("a #fields header").split('\t').collect();
    let col = |name: &str| fields.iter().position(|f| *f == name).unwrap_or_else(|| panic!("no {name} column"));
    let (oh, op, rh, rp) = (col("id.orig_h"), col("id.orig_p"), col("id.resp_h"), col("id.resp_p"));
    let (state, ip_proto, duration) = (col("conn_state"), col("ip_proto"), col("duration"));
    let (opk, oib, rpk, rib) = (col("orig_pkts"), col("orig_ip_bytes"), col("resp_pkts"), col("resp_ip_bytes"));
    let (ob, rb) = (col("orig_bytes"), col("resp_bytes"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let v: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| v[i].parse::<u64>().unwrap_or_else(|_| panic!("{line}: column {i} = {:?}", v[i]));
            let protocol = n(ip_proto) as u8;
            let udp_payload = (protocol == 17 && v[duration] != "-").then(|| (n(ob), n(rb)));
            Conn {
                orig: v[oh].into(),
                orig_port: n(op) as u16,
                resp: v[rh].into(),
                resp_port: n(rp) as u16,
                protocol,
                state: v[state].into(),
                orig_pkts: n(opk),
                orig_ip_bytes: n(oib),
                resp_pkts: n(rpk),
                resp_ip_bytes: n(rib),
                udp_payload,
            }
        })
        .collect()
}

fn sensor_conns(flows: &[MeteredFlow]) -> Vec<Conn> {
    flows
        .iter()
        .map(|f| Conn {
            orig: f.orig_addr.to_string(),
            orig_port: f.orig_port,
            resp: f.resp_addr.to_string(),
            resp_port: f.resp_port,
            protocol: f.protocol,
            state: format!("{:?}", f.conn_state),
            orig_pkts: f.packets[0],
            orig_ip_bytes: f.ip_bytes[0],
            resp_pkts: f.packets[1],
            resp_ip_bytes: f.ip_bytes[1],
            udp_payload: (f.protocol == 17 && f.end_us > f.start_us)
                .then_some((f.payload_bytes[0], f.payload_bytes[1])),
        })
        .collect()
}

/// Zeek's rows and the sensor's flows, each side's leftovers after matching equal records.
fn compare(pcap: &str, log: &str, config: &SensorConfig) -> (usize, Vec<Conn>, Vec<Conn>) {
    let (flows, report) = meter_file(&data(pcap), config).unwrap();
    assert!(report.frames > 0, "{pcap}: no frames read");
    let mut zeek = zeek_conns(log);
    let mut ours = sensor_conns(&flows);
    zeek.sort();
    ours.sort();
    let mut matched = 0;
    let mut only_zeek = Vec::new();
    let mut remaining: BTreeMap<Conn, usize> = BTreeMap::new();
    for conn in ours {
        *remaining.entry(conn).or_default() += 1;
    }
    for conn in zeek {
        match remaining.get_mut(&conn) {
            Some(count) if *count > 0 => {
                *count -= 1;
                matched += 1;
            }
            _ => only_zeek.push(conn),
        }
    }
    let only_ours =
        remaining.into_iter().flat_map(|(conn, count)| std::iter::repeat_n(conn, count)).collect::<Vec<_>>();
    (matched, only_zeek, only_ours)
}

fn assert_agrees(pcap: &str, log: &str, config: &SensorConfig) -> usize {
    let (matched, only_zeek, only_ours) = compare(pcap, log, config);
    assert!(
        only_zeek.is_empty() && only_ours.is_empty(),
        "{pcap}: {matched} connections agree; Zeek only:\n{}\nsensor only:\n{}",
        only_zeek.iter().map(|c| format!("  {c:?}")).collect::<Vec<_>>().join("\n"),
        only_ours.iter().map(|c| format!("  {c:?}")).collect::<Vec<_>>().join("\n"),
    );
    matched
}

fn zeek_like() -> SensorConfig {
    SensorConfig::default()
}

#[test]
fn wikipedia_trace_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("wikipedia.pcap", "wikipedia.conn.log", &zeek_like()), 34);
}

#[test]
fn qinq_trace_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("q-in-q.pcap", "q-in-q.conn.log", &zeek_like()), 2);
}

#[test]
fn pcapng_with_two_interfaces_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("pcapng-multi-interface.pcapng", "pcapng-multi-interface.conn.log", &zeek_like()), 3);
}

#[test]
fn rejected_and_retried_pop3_connections_match_zeek_conn_log() {
    assert_eq!(assert_agrees("pop3.pcap", "pop3.conn.log", &zeek_like()), 11);
}

#[test]
fn responder_reset_is_rstr() {
    assert_eq!(assert_agrees("http-to-ssh.pcap", "http-to-ssh.conn.log", &zeek_like()), 1);
}

#[test]
fn originator_reset_is_rsto() {
    assert_eq!(assert_agrees("https-to-http.pcap", "https-to-http.conn.log", &zeek_like()), 1);
}

#[test]
fn ipv6_ftp_session_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("ftp-ipv6.pcap", "ftp-ipv6.conn.log", &zeek_like()), 6);
}

#[test]
fn dhcp_broadcasts_and_server_replies_match_zeek_conn_log() {
    assert_eq!(assert_agrees("dhcp.pcap", "dhcp.conn.log", &zeek_like()), 4);
}

#[test]
fn connection_without_syn_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("missing-syn.pcap", "missing-syn.conn.log", &zeek_like()), 1);
}

#[test]
fn one_sided_ssh_capture_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("ssh-half-duplex.pcap", "ssh-half-duplex.conn.log", &zeek_like()), 25);
}

#[test]
fn vlan_and_mpls_trace_matches_zeek_conn_log() {
    assert_eq!(assert_agrees("mixed-vlan-mpls.pcap", "mixed-vlan-mpls.conn.log", &zeek_like()), 3);
}

#[test]
fn the_comparison_notices_a_difference() {
    // A 100 ms idle timeout splits Zeek's connections: the comparison must see it.
    let config = SensorConfig { idle_timeout: std::time::Duration::from_millis(100), ..zeek_like() };
    let (matched, only_zeek, only_ours) = compare("wikipedia.pcap", "wikipedia.conn.log", &config);
    eprintln!("matched {matched}\nzeek only {only_zeek:#?}\nours only {only_ours:#?}");
    assert!(!only_zeek.is_empty() && only_ours.len() > only_zeek.len());
}

fn args(pcap: &str) -> SensorArgs {
    SensorArgs {
        pcap: Some(data(pcap)),
        interface: None,
        sensor_id: Some("zeek-traces".into()),
        idle_timeout: None,
        active_timeout: None,
        output: None,
        filter: None,
        measure: None,
    }
}

fn read_jsonl(path: &Path) -> Vec<Flow> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

#[test]
fn the_sensor_command_writes_valid_flows_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("flows.jsonl");
    let stop = AtomicBool::new(false);
    let report = run_sensor_with(
        &KafkaConfig::default(),
        &TopicsConfig::default(),
        &SensorConfig::default(),
        SensorArgs { output: Some(output.clone()), ..args("wikipedia.pcap") },
        &stop,
    )
    .unwrap();
    let flows = read_jsonl(&output);
    assert_eq!(flows.len(), 34);
    assert_eq!(report.flows, 34);
    assert_eq!(report.frames, report.packets + report.skipped.values().sum::<u64>());
    for flow in &flows {
        flow.validate().unwrap();
        assert_eq!(flow.sensor_id, "zeek-traces");
    }
    // Spot-check one TCP connection against Zeek's row for it.
    // Zeek: 141.142.220.118 49996 → 208.80.152.3 80, S1, 6 packets / 1491 IP bytes out, 4 / 949 in.
    let http = flows.iter().find(|f| f.src_port == 49996 && f.dst_port == 80).expect("the HTTP connection");
    assert_eq!((http.src_addr.as_str(), http.dst_addr.as_str()), ("141.142.220.118", "208.80.152.3"));
    assert_eq!(http.conn_state, ConnState::S1);
    assert_eq!((http.packets_out, http.bytes_out, http.packets_in, http.bytes_in), (6, 1491, 4, 949));
}

/// The real broker `scripts/test` starts; this test is about Kafka, so it needs one.
fn brokers() -> String {
    std::env::var("PEERGRAPH_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "PEERGRAPH_KAFKA_BROKERS is not set: run the tests with scripts/test, which starts a real Kafka broker \
             (or start one with deploy/kafka/kafka.sh start and export the address it prints)"
        )
    })
}

#[test]
fn the_sensor_publishes_the_same_flows_to_kafka_keyed_and_timestamped() {
    let kafka = KafkaConfig { brokers: brokers(), connect_timeout: Duration::from_secs(30), ..KafkaConfig::default() };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topics = TopicsConfig { flows: format!("test.sensor.{nanos}.flows"), partitions: 2, ..TopicsConfig::default() };
    let stop = AtomicBool::new(false);
    let report = run_sensor_with(&kafka, &topics, &SensorConfig::default(), args("pop3.pcap"), &stop).unwrap();
    assert_eq!((report.flows, report.delivery_failures), (11, 0));

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("flows.jsonl");
    let json = SensorArgs { output: Some(output.clone()), ..args("pop3.pcap") };
    run_sensor_with(&kafka, &topics, &SensorConfig::default(), json, &stop).unwrap();
    let mut expected = read_jsonl(&output);

    let consumer: BaseConsumer = peergraph::kafka::client_config(&kafka)
        .set("group.id", format!("test.sensor.{nanos}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..topics.partitions {
        assignment.add_partition_offset(&topics.flows, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let decoder = Decoder::<Flow>::new(Arc::new(StaticSchemas::new()));
    let mut published = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while published.len() < expected.len() && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            let flow = decoder.decode(message.payload().unwrap()).unwrap();
            assert_eq!(message.key(), Some(flow.src_addr.as_bytes()), "keyed by the originator");
            assert_eq!(message.timestamp().to_millis(), Some(flow.end_ms), "stamped with the end time");
            published.push(flow);
        }
    }
    let order = |f: &Flow| (f.start_ms, f.src_port, f.end_ms);
    published.sort_by_key(order);
    expected.sort_by_key(order);
    assert_eq!(published, expected);
}

/// Packets and IP bytes per direction (src, src port, dst, dst port, protocol): the shape of a
/// unidirectional flow meter's output.
type Directions = BTreeMap<(String, u16, String, u16, u8), (u64, u64)>;

fn sensor_directions(flows: &[MeteredFlow]) -> Directions {
    let mut directions = Directions::new();
    for f in flows {
        let (o, r) = (f.orig_addr.to_string(), f.resp_addr.to_string());
        for (dir, key) in [
            (0, (o.clone(), f.orig_port, r.clone(), f.resp_port, f.protocol)),
            (1, (r, f.resp_port, o, f.orig_port, f.protocol)),
        ] {
            if f.packets[dir] > 0 {
                let entry = directions.entry(key).or_default();
                entry.0 += f.packets[dir];
                entry.1 += f.ip_bytes[dir];
            }
        }
    }
    directions
}

/// Runs Debian's pmacctd over `pcap` with its Kafka plugin publishing JSON to a fresh topic on
/// the test broker, and reads back what it published.
fn pmacct_directions(pcap: &str) -> Directions {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default();
    let (host, port) = first.rsplit_once(':').expect("PEERGRAPH_KAFKA_BROKERS is host:port");
    let kafka =
        KafkaConfig { brokers: brokers.clone(), connect_timeout: Duration::from_secs(30), ..KafkaConfig::default() };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("test.pmacct.{nanos}");
    let topics = TopicsConfig { flows: topic.clone(), partitions: 1, ..TopicsConfig::default() };
    peergraph::kafka::ensure_topics(&kafka, &topics).unwrap();

    // A savefile is accounted on packet time; a refresh shorter than the capture purges the cache
    // mid-file and loses what was in it, so pmacct purges once, when it exits at the end.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("pmacctd.conf");
    std::fs::write(
        &conf,
        format!(
            "daemonize: false\npcap_savefile: {}\npcap_savefile_wait: false\npcap_savefile_delay: 1\n\
             plugin_pipe_zmq: true\nplugins: kafka\naggregate: src_host, dst_host, src_port, dst_port, proto\n\
             kafka_output: json\nkafka_broker_host: {host}\nkafka_broker_port: {port}\nkafka_topic: {topic}\n\
             kafka_refresh_time: 3600\n",
            data(pcap).display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new("pmacctd")
        .arg("-f")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run pmacctd (Debian package pmacct, installed by scripts/test): {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("pmacctd did not finish {pcap} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "pmacctd failed on {pcap}: {status}");

    let consumer: BaseConsumer = peergraph::kafka::client_config(&kafka)
        .set("group.id", format!("test.pmacct.{nanos}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let (_, end) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap();
    assert!(end > 0, "pmacctd published nothing for {pcap}");
    let mut directions = Directions::new();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < end && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        read += 1;
        let record: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let text = |k: &str| record[k].as_str().unwrap_or_else(|| panic!("{record}: no {k}")).to_owned();
        let number = |k: &str| record[k].as_u64().unwrap_or_else(|| panic!("{record}: no {k}"));
        let protocol = match record["ip_proto"].as_str() {
            Some("tcp") => 6,
            Some("udp") => 17,
            Some("icmp") => 1,
            Some("ipv6-icmp") => 58,
            other => panic!("{record}: unexpected ip_proto {other:?}"),
        };
        let key = (text("ip_src"), number("port_src") as u16, text("ip_dst"), number("port_dst") as u16, protocol);
        let entry = directions.entry(key).or_default();
        entry.0 += number("packets");
        entry.1 += number("bytes");
    }
    assert_eq!(read, end, "read {read} of pmacct's {end} records");
    directions
}

fn assert_same_directions(pcap: &str) {
    let (flows, _) = meter_file(&data(pcap), &SensorConfig::default()).unwrap();
    let ours = sensor_directions(&flows);
    let theirs = pmacct_directions(pcap);
    let keys: std::collections::BTreeSet<_> = ours.keys().chain(theirs.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| format!("  {k:?}: sensor {:?}, pmacct {:?}", ours.get(k), theirs.get(k)))
        .collect();
    assert!(
        differences.is_empty(),
        "{pcap}: {} directions, {} differ (packets, IP bytes):\n{}",
        ours.len(),
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn pmacct_publishes_the_same_per_direction_counts_for_pop3() {
    assert_same_directions("pop3.pcap");
}

#[test]
fn pmacct_publishes_the_same_per_direction_counts_for_wikipedia() {
    assert_same_directions("wikipedia.pcap");
}

/// Live capture on the loopback interface (the test runs as root, as scripts/test and CI do).
#[cfg(feature = "live-capture")]
#[test]
fn live_capture_on_loopback_meters_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("live.jsonl");
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender_port = sender.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        let args = SensorArgs {
            pcap: None,
            interface: Some("lo".into()),
            output: Some(output.clone()),
            filter: Some(format!("udp and port {port}")),
            ..args("unused")
        };
        std::thread::spawn(move || {
            run_sensor_with(&KafkaConfig::default(), &TopicsConfig::default(), &SensorConfig::default(), args, &stop)
        })
    };
    // Give libpcap time to open the interface, then send and answer.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..5 {
        sender.send_to(&[7u8; 100], ("127.0.0.1", port)).unwrap();
    }
    let mut buf = [0u8; 200];
    let (_, from) = receiver.recv_from(&mut buf).unwrap();
    receiver.send_to(&[9u8; 40], from).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = capture.join().unwrap().unwrap_or_else(|e| panic!("live capture on lo failed (root needed): {e:#}"));
    let flows = read_jsonl(&output);
    assert_eq!(flows.len(), 1, "{report:?}\n{flows:?}");
    let flow = &flows[0];
    assert_eq!((flow.src_port, flow.dst_port, flow.protocol), (i32::from(sender_port), i32::from(port), 17));
    assert_eq!((flow.packets_out, flow.packets_in), (5, 1));
    assert_eq!((flow.bytes_out, flow.bytes_in), (5 * (20 + 8 + 100), 20 + 8 + 40));
    assert_eq!(flow.conn_state, ConnState::SF);
}
