//! Where frames come from: a pcap or pcapng file (pure Rust, `pcap-parser`), or a live interface
//! through libpcap (feature `live-capture`). Both hand the same [`Frame`]s to one callback, with
//! timestamps in microseconds since the Unix epoch.

use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use pcap_parser::pcapng::Block;
use pcap_parser::{create_reader, PcapBlockOwned, PcapError};

/// One captured frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Capture time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// LINKTYPE_* of the frame's interface.
    pub linktype: u32,
    /// The captured bytes (at most the snap length).
    pub data: &'a [u8],
}

/// What a capture source hands its consumer.
#[derive(Debug)]
pub enum CaptureEvent<'a> {
    Frame(Frame<'a>),
    /// No frame for a while on a live interface: wall-clock time, so timeouts still fire.
    Idle {
        now_us: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a pcap or pcapng file ({reason})")]
    NotACapture { path: PathBuf, reason: String },
    #[error("reading capture file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("live capture on {interface}: {reason}")]
    Live { interface: String, reason: String },
}

/// How a capture read ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub frames: u64,
    /// The file ended in the middle of a record (a capture cut short): what came before counts.
    pub truncated_file: bool,
    /// Frames on an interface that a pcapng file never described.
    pub unknown_interface: u64,
}

#[derive(Clone, Copy)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset_s: i64,
}

/// Reads `path` (pcap, nanosecond pcap or pcapng, any byte order) and calls `on_event` for
/// each frame in file order, until the end or until it returns `Break`.
pub fn read_file<F>(path: &Path, mut on_event: F) -> Result<CaptureStats, CaptureError>
where
    F: FnMut(CaptureEvent<'_>) -> ControlFlow<()>,
{
    let file = File::open(path).map_err(|source| CaptureError::Open { path: path.to_owned(), source })?;
    let mut reader = create_reader(1 << 20, BufReader::new(file))
        .map_err(|e| CaptureError::NotACapture { path: path.to_owned(), reason: format!("{e:?}") })?;
    let mut stats = CaptureStats::default();
    // Legacy pcap: one link type and a µs or ns resolution for the whole file.
    let mut legacy = Interface { linktype: 1, resolution: 1_000_000, offset_s: 0 };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut last_ts_us = 0i64;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                let mut flow = ControlFlow::Continue(());
                match block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        legacy.linktype = header.network.0 as u32;
                        legacy.resolution = if header.is_nanosecond_precision() { 1_000_000_000 } else { 1_000_000 };
                    }
                    PcapBlockOwned::Legacy(packet) => {
                        stats.frames += 1;
                        let ts_us = i64::from(packet.ts_sec) * 1_000_000
                            + if legacy.resolution == 1_000_000 {
                                i64::from(packet.ts_usec)
                            } else {
                                i64::from(packet.ts_usec) / 1000
                            };
                        last_ts_us = ts_us;
                        let len = (packet.caplen as usize).min(packet.data.len());
                        flow = on_event(CaptureEvent::Frame(Frame {
                            ts_us,
                            linktype: legacy.linktype,
                            data: &packet.data[..len],
                        }));
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(description)) => interfaces.push(Interface {
                        linktype: description.linktype.0 as u32,
                        resolution: description.ts_resolution().unwrap_or(1_000_000).max(1),
                        offset_s: description.ts_offset(),
                    }),
                    PcapBlockOwned::NG(Block::EnhancedPacket(packet)) => {
                        stats.frames += 1;
                        match interfaces.get(packet.if_id as usize) {
                            Some(interface) => {
                                let units = (u64::from(packet.ts_high) << 32) | u64::from(packet.ts_low);
                                let us = u128::from(units) * 1_000_000 / u128::from(interface.resolution);
                                let ts_us = i64::try_from(us)
                                    .unwrap_or(i64::MAX)
                                    .saturating_add(interface.offset_s.saturating_mul(1_000_000));
                                last_ts_us = ts_us;
                                let len = (packet.caplen as usize).min(packet.data.len());
                                flow = on_event(CaptureEvent::Frame(Frame {
                                    ts_us,
                                    linktype: interface.linktype,
                                    data: &packet.data[..len],
                                }));
                            }
                            None => stats.unknown_interface += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(packet)) => {
                        // No timestamp in a simple packet block: it takes the previous frame's time.
                        stats.frames += 1;
                        match interfaces.first() {
                            Some(interface) => {
                                flow = on_event(CaptureEvent::Frame(Frame {
                                    ts_us: last_ts_us,
                                    linktype: interface.linktype,
                                    data: packet.data,
                                }))
                            }
                            None => stats.unknown_interface += 1,
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
                if flow.is_break() {
                    break;
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    stats.truncated_file = true;
                    break;
                }
                reader.refill().map_err(|e| CaptureError::Read { path: path.to_owned(), reason: format!("{e:?}") })?;
            }
            Err(e) => {
                return Err(CaptureError::Read { path: path.to_owned(), reason: format!("{e:?}") });
            }
        }
    }
    Ok(stats)
}

/// Live-capture options.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub snaplen: i32,
    pub promiscuous: bool,
    /// A BPF filter expression ("" for everything).
    pub filter: String,
    /// libpcap's read timeout; also how often `stop` is looked at.
    pub poll_ms: i32,
}

/// Captures from `interface` until `stop` is set or `on_event` returns `Break`.
#[cfg(feature = "live-capture")]
pub fn capture_live<F>(
    interface: &str,
    options: &LiveOptions,
    stop: &AtomicBool,
    mut on_event: F,
) -> Result<CaptureStats, CaptureError>
where
    F: FnMut(CaptureEvent<'_>) -> ControlFlow<()>,
{
    let live = |reason: String| CaptureError::Live { interface: interface.to_owned(), reason };
    let capture = pcap::Capture::from_device(interface)
        .map_err(|e| live(e.to_string()))?
        .snaplen(options.snaplen)
        .promisc(options.promiscuous)
        .timeout(options.poll_ms)
        .immediate_mode(false);
    let mut capture =
        capture.open().map_err(|e| live(format!("{e} (live capture needs CAP_NET_RAW and CAP_NET_ADMIN, or root)")))?;
    if !options.filter.is_empty() {
        capture.filter(&options.filter, true).map_err(|e| live(format!("filter {:?}: {e}", options.filter)))?;
    }
    // Non-blocking reads: libpcap's read timeout does not fire on a quiet interface with every
    // kernel (TPACKET_V3 waits for a packet), and `stop` must be seen promptly.
    let mut capture = capture.setnonblock().map_err(|e| live(e.to_string()))?;
    let linktype = capture.get_datalink().0 as u32;
    let mut stats = CaptureStats::default();
    let mut last_idle = std::time::Instant::now();
    let poll = std::time::Duration::from_millis(u64::try_from(options.poll_ms.max(1)).unwrap_or(500));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match capture.next_packet() {
            Ok(packet) => {
                stats.frames += 1;
                let ts = packet.header.ts;
                // `timeval`'s field types differ between platforms (i32 on 32-bit targets).
                #[allow(clippy::useless_conversion)]
                let ts_us = i64::from(ts.tv_sec) * 1_000_000 + i64::from(ts.tv_usec);
                let event = CaptureEvent::Frame(Frame { ts_us, linktype, data: packet.data });
                if on_event(event).is_break() {
                    break;
                }
            }
            Err(pcap::Error::TimeoutExpired) => {
                // Nothing queued: nap briefly, and now and then let the timeouts run on wall time.
                std::thread::sleep(std::time::Duration::from_millis(5));
                if last_idle.elapsed() >= poll {
                    last_idle = std::time::Instant::now();
                    if on_event(CaptureEvent::Idle { now_us: wall_clock_us() }).is_break() {
                        break;
                    }
                }
            }
            Err(e) => return Err(live(e.to_string())),
        }
    }
    Ok(stats)
}

/// Without the `live-capture` feature there is no libpcap to capture with.
#[cfg(not(feature = "live-capture"))]
pub fn capture_live<F>(
    interface: &str,
    _options: &LiveOptions,
    _stop: &AtomicBool,
    _on_event: F,
) -> Result<CaptureStats, CaptureError>
where
    F: FnMut(CaptureEvent<'_>) -> ControlFlow<()>,
{
    Err(CaptureError::Live {
        interface: interface.to_owned(),
        reason: "this peergraph was built without the `live-capture` feature (libpcap)".into(),
    })
}

pub fn wall_clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads every frame of `path` and does nothing with it: the baseline the sensor's throughput
/// is compared with.
pub fn count_frames(path: &Path) -> Result<(u64, u64), CaptureError> {
    let mut bytes = 0u64;
    let stats = read_file(path, |event| {
        if let CaptureEvent::Frame(frame) = event {
            bytes += frame.data.len() as u64;
        }
        ControlFlow::Continue(())
    })?;
    Ok((stats.frames, bytes))
}
