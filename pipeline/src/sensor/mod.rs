//! `peergraph sensor`: a flow meter for places that have no sensor. It reads packets from a pcap
//! or pcapng file or a live interface, builds bidirectional flows with Zeek's connection states,
//! and publishes them to the flows topic (or writes them as JSON lines), like any other sensor.
//!
//! [`packet`] decodes frames, [`table`] turns packets into flows, [`capture`] reads files and
//! interfaces, [`publish`] writes to Kafka. See docs/sensor.md for the flow semantics.

pub mod capture;
pub mod packet;
pub mod publish;
pub mod table;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use peergraph_schemas::codec::{Encoder, WireFormat};
use serde::{Deserialize, Serialize};

use crate::config::{Config, KafkaConfig, TopicsConfig};
use capture::{CaptureEvent, CaptureStats, Frame, LiveOptions};
use packet::Skip;
use publish::FlowPublisher;
use table::{ExportReason, FlowTable, MeteredFlow, PortSet, TableParams, TableStats};

/// Zeek's default `likely_server_ports` for TCP (every base analyzer's registered server port):
/// a flow first seen from one of these to another port is turned round.
pub const DEFAULT_TCP_SERVER_PORTS: &[u16] = &[
    21, 22, 23, 25, 53, 79, 80, 81, 88, 135, 139, 143, 389, 443, 445, 465, 502, 513, 514, 563, 585, 587, 614, 631, 636,
    989, 990, 992, 993, 995, 1080, 1434, 1883, 2811, 3128, 3268, 3306, 3389, 5222, 5223, 5269, 5432, 6379, 6666, 6667,
    6668, 6669, 8000, 8080, 8888, 20000,
];

/// Zeek's default `likely_server_ports` for UDP.
pub const DEFAULT_UDP_SERVER_PORTS: &[u16] = &[
    53, 67, 88, 123, 137, 161, 162, 389, 443, 514, 784, 853, 1812, 1813, 2123, 2152, 3389, 3544, 4011, 4754, 4789,
    5060, 5072, 5353, 5355, 6081, 20000,
];

/// The `[sensor]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorConfig {
    /// Written into every flow's `sensor_id`.
    pub sensor_id: String,
    /// Wire format of the published flows.
    pub format: WireFormat,
    /// A flow with no packet for this long (packet time) is exported.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A flow lasting longer than this is exported and continues in a new record; 0 disables.
    #[serde(with = "humantime_serde")]
    pub active_timeout: Duration,
    /// How long a closed TCP connection (FIN exchange or RST) is kept for its last packets.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a TCP SYN may go unanswered before it is exported as a failed attempt (S0);
    /// 0 waits for the idle timeout instead.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Most flows held in memory (about 200 bytes each); beyond it the flow nearest its
    /// deadline is exported early and counted as evicted.
    pub max_flows: usize,
    /// TCP server ports, for deciding who originated a flow whose first packet is not a SYN.
    pub tcp_server_ports: Vec<u16>,
    /// UDP server ports: a flow first seen from one of them to another port is turned round.
    pub udp_server_ports: Vec<u16>,
    /// Live capture: bytes kept of each frame (headers are all the sensor reads).
    pub snaplen: i32,
    /// Live capture: put the interface in promiscuous mode.
    pub promiscuous: bool,
    /// Live capture: a BPF filter ("" captures everything).
    pub filter: String,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            sensor_id: "peergraph-sensor".into(),
            format: WireFormat::AvroSingleObject,
            idle_timeout: Duration::from_secs(60),
            active_timeout: Duration::from_secs(30 * 60),
            linger: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(5),
            max_flows: 1_000_000,
            tcp_server_ports: DEFAULT_TCP_SERVER_PORTS.to_vec(),
            udp_server_ports: DEFAULT_UDP_SERVER_PORTS.to_vec(),
            snaplen: 256,
            promiscuous: true,
            filter: String::new(),
        }
    }
}

impl SensorConfig {
    /// The flow table's parameters.
    pub fn table_params(&self) -> TableParams {
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        TableParams {
            idle_timeout_us: us(self.idle_timeout).max(1),
            active_timeout_us: us(self.active_timeout),
            linger_us: us(self.linger),
            attempt_timeout_us: us(self.attempt_timeout),
            max_flows: self.max_flows.max(1),
            tcp_server_ports: PortSet::new(&self.tcp_server_ports),
            udp_server_ports: PortSet::new(&self.udp_server_ports),
        }
    }
}

/// `peergraph sensor`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["pcap", "interface"])))]
pub struct SensorArgs {
    /// Read packets from this pcap or pcapng file (packet time drives the timeouts).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Capture live from this interface (needs CAP_NET_RAW; see docs/sensor.md).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// Written into every flow (overrides sensor.sensor_id).
    #[arg(long)]
    pub sensor_id: Option<String>,
    /// Export a flow after this long without packets, e.g. "60s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Export (and continue) a flow after this long, e.g. "30m".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub active_timeout: Option<Duration>,
    /// Write flows as JSON lines to this file instead of publishing them to Kafka.
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
    /// Live capture: BPF filter expression (overrides sensor.filter).
    #[arg(long)]
    pub filter: Option<String>,
    /// Measure instead of publishing: read the --pcap file this many times plainly, then
    /// this many times through the sensor, and report both rates and their ratio.
    #[arg(long, value_name = "N")]
    pub measure: Option<u32>,
}

/// What a sensor run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorReport {
    /// Frames read from the file or interface.
    pub frames: u64,
    /// Frames that were IP packets and were metered.
    pub packets: u64,
    /// Frames not metered, by reason (not_ip, fragment, truncated, link_type).
    pub skipped: BTreeMap<String, u64>,
    /// Flows exported, in all.
    pub flows: u64,
    /// Flows exported, by reason (idle, active, closed, attempt, reuse, evicted, flush).
    pub exported: BTreeMap<String, u64>,
    /// Flows exported early because the table was full.
    pub evicted: u64,
    /// The most flows held at once.
    pub peak_flows: usize,
    /// Flows the broker refused (Kafka output only).
    pub delivery_failures: u64,
    /// The capture file ended inside a record.
    pub truncated_file: bool,
    /// Packet time of the first and last frame, ms since the Unix epoch.
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Wall-clock time of the run.
    pub seconds: f64,
    /// With --measure: the sensor's speed against a plain read of the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
}

/// The sensor's packet rate against a plain read of the same capture, in one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Times the file was read each way.
    pub repeats: u32,
    /// Frames per read.
    pub frames: u64,
    /// Frames per second, reading the file frame by frame (pcap-parser) and nothing else.
    pub plain_read_fps: f64,
    /// Frames per second, reading, decoding and metering into flows (no output).
    pub sensor_fps: f64,
    /// sensor_fps / plain_read_fps.
    pub ratio: f64,
}

/// Reads `path` `repeats` times plainly, then `repeats` times through a fresh sensor each time.
pub fn measure(path: &Path, config: &SensorConfig, repeats: u32) -> Result<Throughput, capture::CaptureError> {
    let repeats = repeats.max(1);
    let started = Instant::now();
    let mut frames = 0;
    let mut checksum = 0u64;
    for _ in 0..repeats {
        let (n, bytes) = capture::count_frames(path)?;
        frames = n;
        checksum = checksum.wrapping_add(bytes);
    }
    let plain = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut flows = 0u64;
    for _ in 0..repeats {
        let mut sensor = Sensor::new(config.table_params());
        capture::read_file(path, |event| {
            if let CaptureEvent::Frame(frame) = event {
                sensor.frame(&frame);
                flows += sensor.drain().count() as u64;
            }
            ControlFlow::Continue(())
        })?;
        sensor.finish();
        flows += sensor.drain().count() as u64;
    }
    let metered = started.elapsed().as_secs_f64();
    std::hint::black_box((checksum, flows));
    let total = (frames * u64::from(repeats)) as f64;
    let plain_read_fps = total / plain.max(1e-9);
    let sensor_fps = total / metered.max(1e-9);
    Ok(Throughput { repeats, frames, plain_read_fps, sensor_fps, ratio: sensor_fps / plain_read_fps })
}

/// Frames in, flows out: the packet decoder and the flow table, without any I/O.
pub struct Sensor {
    table: FlowTable,
    skipped: [u64; Skip::ALL.len()],
    frames: u64,
    first_us: Option<i64>,
    last_us: Option<i64>,
    out: Vec<MeteredFlow>,
}

impl Sensor {
    pub fn new(params: TableParams) -> Sensor {
        Sensor {
            table: FlowTable::new(params),
            skipped: [0; Skip::ALL.len()],
            frames: 0,
            first_us: None,
            last_us: None,
            out: Vec::with_capacity(1024),
        }
    }

    /// Meters one frame; finished flows accumulate until [`Sensor::drain`].
    pub fn frame(&mut self, frame: &Frame<'_>) {
        self.frames += 1;
        self.first_us = Some(self.first_us.map_or(frame.ts_us, |t| t.min(frame.ts_us)));
        self.last_us = Some(self.last_us.map_or(frame.ts_us, |t| t.max(frame.ts_us)));
        match packet::summarize(frame.linktype, frame.data) {
            Ok(summary) => self.table.observe(frame.ts_us, &summary, &mut self.out),
            Err(skip) => {
                self.skipped[skip as usize] += 1;
                // Time still moves on, so timeouts fire on a link full of non-IP frames too.
                self.table.advance(frame.ts_us, &mut self.out);
            }
        }
    }

    /// Moves time on without a packet (a quiet live interface).
    pub fn idle(&mut self, now_us: i64) {
        self.table.advance(now_us, &mut self.out);
    }

    /// Exports every flow still held (end of the capture, or stop).
    pub fn finish(&mut self) {
        self.table.flush(&mut self.out);
    }

    /// The flows finished since the last drain, in export order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, MeteredFlow> {
        self.out.drain(..)
    }

    pub fn table_stats(&self) -> &TableStats {
        self.table.stats()
    }

    /// Frames seen, and frames skipped per reason.
    pub fn report(&self) -> SensorReport {
        let stats = self.table.stats();
        SensorReport {
            frames: self.frames,
            packets: stats.packets,
            skipped: Skip::ALL
                .iter()
                .filter(|s| self.skipped[**s as usize] > 0)
                .map(|s| (s.as_str().to_owned(), self.skipped[*s as usize]))
                .collect(),
            flows: stats.exported.iter().sum(),
            exported: ExportReason::ALL
                .iter()
                .filter(|r| stats.exported(**r) > 0)
                .map(|r| (r.as_str().to_owned(), stats.exported(*r)))
                .collect(),
            evicted: stats.exported(ExportReason::Evicted),
            peak_flows: stats.peak_flows,
            first_ms: self.first_us.map(|t| t.div_euclid(1000)),
            last_ms: self.last_us.map(|t| t.div_euclid(1000)),
            ..SensorReport::default()
        }
    }
}

/// Meters a whole capture file in memory: the flows in export order, and the report. What the
/// tests and comparisons use.
pub fn meter_file(
    path: &Path,
    config: &SensorConfig,
) -> Result<(Vec<MeteredFlow>, SensorReport), capture::CaptureError> {
    let mut sensor = Sensor::new(config.table_params());
    let mut flows = Vec::new();
    let stats = capture::read_file(path, |event| {
        if let CaptureEvent::Frame(frame) = event {
            sensor.frame(&frame);
            flows.extend(sensor.drain());
        }
        ControlFlow::Continue(())
    })?;
    sensor.finish();
    flows.extend(sensor.drain());
    let mut report = sensor.report();
    report.truncated_file = stats.truncated_file;
    Ok((flows, report))
}

/// Where the flows go.
enum Output {
    Kafka(FlowPublisher),
    JsonLines { file: BufWriter<File>, path: PathBuf, written: u64 },
}

impl Output {
    fn write(&mut self, flow: &MeteredFlow, sensor_id: &str) -> anyhow::Result<()> {
        let flow = flow.to_flow(sensor_id);
        match self {
            Output::Kafka(publisher) => publisher.publish(&flow)?,
            Output::JsonLines { file, path, written } => {
                serde_json::to_writer(&mut *file, &flow)?;
                file.write_all(b"\n").with_context(|| format!("writing {}", path.display()))?;
                *written += 1;
            }
        }
        Ok(())
    }

    fn close(&mut self, report: &mut SensorReport) -> anyhow::Result<()> {
        match self {
            Output::Kafka(publisher) => {
                publisher.flush(Duration::from_secs(120))?;
                report.delivery_failures = publisher.failed();
                anyhow::ensure!(publisher.failed() == 0, "{} flows were refused by the broker", publisher.failed());
            }
            Output::JsonLines { file, path, .. } => {
                file.flush().with_context(|| format!("writing {}", path.display()))?
            }
        }
        Ok(())
    }
}

/// Runs `peergraph sensor` with the configuration's Kafka, topics and sensor sections.
pub fn run_sensor(config: &Config, args: SensorArgs, stop: &AtomicBool) -> anyhow::Result<SensorReport> {
    run_sensor_with(&config.kafka, &config.topics, &config.sensor, args, stop)
}

/// Runs the sensor: file or interface in, flows to Kafka or a JSON-lines file out. Returns at
/// the end of the file, or when `stop` is set (live capture).
pub fn run_sensor_with(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    sensor_config: &SensorConfig,
    args: SensorArgs,
    stop: &AtomicBool,
) -> anyhow::Result<SensorReport> {
    let mut config = sensor_config.clone();
    if let (Some(repeats), Some(path)) = (args.measure, &args.pcap) {
        let started = Instant::now();
        let throughput = measure(path, &config, repeats)?;
        return Ok(SensorReport {
            frames: throughput.frames,
            seconds: started.elapsed().as_secs_f64(),
            throughput: Some(throughput),
            ..SensorReport::default()
        });
    }
    if let Some(id) = args.sensor_id {
        config.sensor_id = id;
    }
    config.idle_timeout = args.idle_timeout.unwrap_or(config.idle_timeout);
    config.active_timeout = args.active_timeout.unwrap_or(config.active_timeout);
    if let Some(filter) = args.filter {
        config.filter = filter;
    }
    let mut output = match &args.output {
        Some(path) => Output::JsonLines {
            file: BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?),
            path: path.clone(),
            written: 0,
        },
        None => {
            crate::kafka::ensure_topics(kafka, topics)?;
            Output::Kafka(FlowPublisher::new(kafka, &topics.flows, Encoder::new(config.format)?)?)
        }
    };
    let started = Instant::now();
    let mut sensor = Sensor::new(config.table_params());
    let mut failure: Option<anyhow::Error> = None;
    let sensor_id = config.sensor_id.clone();
    let mut on_event = |event: CaptureEvent<'_>| {
        match event {
            CaptureEvent::Frame(frame) => sensor.frame(&frame),
            CaptureEvent::Idle { now_us } => sensor.idle(now_us),
        }
        for flow in sensor.drain() {
            if let Err(error) = output.write(&flow, &sensor_id) {
                failure = Some(error);
                return ControlFlow::Break(());
            }
        }
        if stop.load(Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    let source = args.pcap.as_ref().map_or_else(|| format!("{:?}", args.interface), |p| p.display().to_string());
    tracing::info!(source = %source, sensor_id = %config.sensor_id, "sensor started");
    let capture: CaptureStats = match (&args.pcap, &args.interface) {
        (Some(path), _) => capture::read_file(path, &mut on_event)?,
        (None, Some(interface)) => {
            let options = LiveOptions {
                snaplen: config.snaplen,
                promiscuous: config.promiscuous,
                filter: config.filter.clone(),
                poll_ms: 500,
            };
            capture::capture_live(interface, &options, stop, &mut on_event)?
        }
        (None, None) => anyhow::bail!("give --pcap FILE or --interface IF"),
    };
    if let Some(error) = failure {
        return Err(error);
    }
    sensor.finish();
    for flow in sensor.drain() {
        output.write(&flow, &config.sensor_id)?;
    }
    let mut report = sensor.report();
    report.truncated_file = capture.truncated_file;
    output.close(&mut report)?;
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(frames = report.frames, flows = report.flows, "sensor finished");
    Ok(report)
}
