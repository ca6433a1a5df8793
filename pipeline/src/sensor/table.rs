//! The flow table: packets in, finished bidirectional flows out. A flow is keyed by its canonical
//! 5-tuple and VLAN ids; its originator is the SYN sender (or, failing that, the first packet's
//! sender unless port numbers say otherwise), and its TCP endpoints follow Zeek's state machine so
//! `conn_state` means what it means in a Zeek `conn.log`. Time is the packets' own time: a capture
//! replays to the same flows every time.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use peergraph_schemas::{ConnState, Flow};

use super::packet::{PacketSummary, TcpSegment};

/// The table's parameters, in microseconds of packet time.
#[derive(Clone, Debug)]
pub struct TableParams {
    /// A flow with no packet for this long is exported and forgotten.
    pub idle_timeout_us: i64,
    /// A flow older than this is exported and continues as a new record (0: never).
    pub active_timeout_us: i64,
    /// After a TCP connection closed (both FINs, a RST, or a FIN with no peer) it stays this
    /// long to collect the last ACKs, then is exported (Zeek's `tcp_close_delay`).
    pub linger_us: i64,
    /// A TCP SYN unanswered for this long is exported as an attempt (S0); later packets start a
    /// new flow (Zeek's `tcp_attempt_delay`). 0: wait for the idle timeout.
    pub attempt_timeout_us: i64,
    /// Most flows held at once; beyond it the flow closest to its deadline is exported early.
    pub max_flows: usize,
    /// TCP ports that identify a server, for flows whose first packet is not a SYN.
    pub tcp_server_ports: PortSet,
    /// UDP ports that identify a server: a flow from such a port to another port is turned round.
    pub udp_server_ports: PortSet,
}

/// A set of ports as a 65,536-bit map.
#[derive(Clone)]
pub struct PortSet(Box<[u64; 1024]>);

impl PortSet {
    pub fn new(ports: &[u16]) -> PortSet {
        let mut set = PortSet(Box::new([0; 1024]));
        for &port in ports {
            set.0[usize::from(port >> 6)] |= 1 << (port & 63);
        }
        set
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries((0..=u16::MAX).filter(|p| self.contains(*p))).finish()
    }
}

/// Why a flow left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportReason {
    /// No packet for the idle timeout.
    Idle,
    /// The active timeout passed; the flow goes on in a new record.
    Active,
    /// TCP close (FIN exchange, RST, half-close with no peer) and the linger passed.
    Closed,
    /// An unanswered SYN after the attempt timeout.
    Attempt,
    /// A new SYN on the same 5-tuple started another connection.
    Reuse,
    /// The table was full.
    Evicted,
    /// The end of the capture (or a stop).
    Flush,
}

impl ExportReason {
    pub const ALL: [ExportReason; 7] = [
        ExportReason::Idle,
        ExportReason::Active,
        ExportReason::Closed,
        ExportReason::Attempt,
        ExportReason::Reuse,
        ExportReason::Evicted,
        ExportReason::Flush,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportReason::Idle => "idle",
            ExportReason::Active => "active",
            ExportReason::Closed => "closed",
            ExportReason::Attempt => "attempt",
            ExportReason::Reuse => "reuse",
            ExportReason::Evicted => "evicted",
            ExportReason::Flush => "flush",
        }
    }
}

/// One exported flow with everything the table measured; [`MeteredFlow::to_flow`] gives the
/// record published on the flows topic. Index 0 of each pair is the originator's direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeteredFlow {
    pub vlan: u32,
    pub orig_addr: IpAddr,
    pub orig_port: u16,
    pub resp_addr: IpAddr,
    pub resp_port: u16,
    pub protocol: u8,
    /// First and last packet, microseconds since the Unix epoch.
    pub start_us: i64,
    pub end_us: i64,
    pub packets: [u64; 2],
    /// IP bytes (headers included), as Zeek's `orig_ip_bytes` / `resp_ip_bytes`.
    pub ip_bytes: [u64; 2],
    /// Transport payload bytes, retransmissions included.
    pub payload_bytes: [u64; 2],
    /// OR of the TCP flags each side sent.
    pub tcp_flags: [u8; 2],
    pub conn_state: ConnState,
    pub reason: ExportReason,
}

impl MeteredFlow {
    /// The flows-topic record. `bytes_out` / `bytes_in` are IP bytes (see docs/sensor.md).
    pub fn to_flow(&self, sensor_id: &str) -> Flow {
        Flow {
            sensor_id: sensor_id.to_owned(),
            start_ms: self.start_us.div_euclid(1000),
            end_ms: self.end_us.div_euclid(1000),
            src_addr: self.orig_addr.to_string(),
            src_port: i32::from(self.orig_port),
            dst_addr: self.resp_addr.to_string(),
            dst_port: i32::from(self.resp_port),
            protocol: i32::from(self.protocol),
            bytes_out: clamp(self.ip_bytes[0]),
            bytes_in: clamp(self.ip_bytes[1]),
            packets_out: clamp(self.packets[0]),
            packets_in: clamp(self.packets[1]),
            tcp_flags: i32::from(self.tcp_flags[0] | self.tcp_flags[1]) & 0x3f,
            conn_state: self.conn_state,
            app_protocol: None,
            src_meta: None,
            dst_meta: None,
        }
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Canonical key: the lower (address, port) endpoint first, so both directions meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    lo: IpAddr,
    hi: IpAddr,
    lo_port: u16,
    hi_port: u16,
    protocol: u8,
    one_way: bool,
    vlan: u32,
}

impl FlowKey {
    /// The key and whether the packet's sender is the `lo` endpoint.
    fn of(p: &PacketSummary) -> (FlowKey, bool) {
        let sender_is_lo = p.one_way || (p.src, p.src_port) <= (p.dst, p.dst_port);
        let (lo, lo_port, hi, hi_port) =
            if sender_is_lo { (p.src, p.src_port, p.dst, p.dst_port) } else { (p.dst, p.dst_port, p.src, p.src_port) };
        (FlowKey { lo, hi, lo_port, hi_port, protocol: p.protocol, one_way: p.one_way, vlan: p.vlan }, sender_is_lo)
    }
}

/// Zeek's TCP endpoint states (TCP_ENDPOINT_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpState {
    Inactive,
    SynSent,
    SynAckSent,
    Partial,
    Established,
    Closed,
    Reset,
}

#[derive(Clone, Copy, Debug)]
struct Endpoint {
    state: TcpState,
    prev_state: TcpState,
    /// Sequence number before the first byte (the ISN, or one less than the first seen seq).
    start_seq: u32,
    did_close: bool,
}

impl Endpoint {
    const NEW: Endpoint =
        Endpoint { state: TcpState::Inactive, prev_state: TcpState::Inactive, start_seq: 0, did_close: false };

    fn set_state(&mut self, state: TcpState) {
        if state != self.state {
            self.prev_state = self.state;
            self.state = state;
        }
    }

    fn inactive(&self) -> bool {
        matches!(self.state, TcpState::Inactive | TcpState::Partial)
    }
}

/// Matches Zeek's RSTOS0 history pattern `^?S[^HAFGIQ]*R.*` incrementally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rstos0 {
    Start,
    AfterSyn,
    Matched,
    No,
}

struct Slot {
    key: FlowKey,
    /// Bumped on every reuse of the slot, so stale deadline entries are recognised.
    generation: u32,
    live: bool,
    /// Whether the originator is the key's `lo` endpoint.
    orig_is_lo: bool,
    start_us: i64,
    last_us: i64,
    packets: [u64; 2],
    ip_bytes: [u64; 2],
    payload_bytes: [u64; 2],
    tcp_flags: [u8; 2],
    endpoints: [Endpoint; 2],
    rstos0: Rstos0,
    /// When the close linger ends (TCP), if the connection closed.
    close_deadline: Option<i64>,
    /// When an unanswered SYN becomes an attempt.
    attempt_deadline: Option<i64>,
    /// The deadline of this slot's live heap entry.
    queued: i64,
}

/// What [`FlowTable::observe`] and the timers have counted so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub packets: u64,
    pub flows_created: u64,
    pub exported: [u64; ExportReason::ALL.len()],
    /// The most flows held at once.
    pub peak_flows: usize,
}

impl TableStats {
    pub fn exported(&self, reason: ExportReason) -> u64 {
        self.exported[reason as usize]
    }
}

/// Bidirectional flows from packets, with timeouts on packet time.
pub struct FlowTable {
    params: TableParams,
    index: HashMap<FlowKey, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (deadline, slot, generation), earliest first. Each live slot has exactly one entry whose
    /// deadline equals its `queued`; others are stale and skipped.
    deadlines: BinaryHeap<Reverse<(i64, u32, u32)>>,
    now_us: i64,
    stats: TableStats,
}

impl FlowTable {
    pub fn new(params: TableParams) -> FlowTable {
        // Start small: the structures grow with the traffic, and a table is cheap to make.
        let capacity = params.max_flows.min(1024);
        FlowTable {
            params,
            index: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            deadlines: BinaryHeap::with_capacity(capacity),
            now_us: i64::MIN,
            stats: TableStats::default(),
        }
    }

    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Flows currently held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Moves packet time to `now_us`, exporting into `out` what expired before it. Time never
    /// goes back: an out-of-order packet does not rewind the timers.
    pub fn advance(&mut self, now_us: i64, out: &mut Vec<MeteredFlow>) {
        if now_us <= self.now_us {
            return;
        }
        self.now_us = now_us;
        while let Some(&Reverse((deadline, slot, generation))) = self.deadlines.peek() {
            if deadline > now_us {
                break;
            }
            self.deadlines.pop();
            let index = slot as usize;
            let Some(flow) = self.slots.get(index) else { continue };
            if !flow.live || flow.generation != generation || flow.queued != deadline {
                continue;
            }
            self.expire(index, now_us, out);
        }
    }

    /// Accounts one packet at `ts_us`; flows it finishes go to `out`.
    pub fn observe(&mut self, ts_us: i64, packet: &PacketSummary, out: &mut Vec<MeteredFlow>) {
        self.advance(ts_us, out);
        self.stats.packets += 1;
        let (key, sender_is_lo) = FlowKey::of(packet);
        let index = match self.index.get(&key) {
            Some(&slot) => {
                let index = slot as usize;
                match packet.tcp {
                    Some(tcp) if self.is_reuse(index, &tcp) => {
                        self.export(index, ExportReason::Reuse, out);
                        self.remove(index);
                        self.create(key, sender_is_lo, ts_us, packet, out)
                    }
                    _ => index,
                }
            }
            None => self.create(key, sender_is_lo, ts_us, packet, out),
        };
        let flow = &mut self.slots[index];
        let dir = usize::from(sender_is_lo != flow.orig_is_lo);
        flow.start_us = flow.start_us.min(ts_us);
        flow.last_us = flow.last_us.max(ts_us);
        flow.packets[dir] += 1;
        flow.ip_bytes[dir] += u64::from(packet.ip_bytes);
        flow.payload_bytes[dir] += u64::from(packet.payload_bytes);
        if let Some(tcp) = packet.tcp {
            flow.tcp_flags[dir] |= tcp.flags;
            let closed_now = flow.tcp_segment(dir, &tcp, packet.payload_bytes);
            if closed_now && flow.close_deadline.is_none() {
                flow.close_deadline = Some(flow.last_us + self.params.linger_us);
            }
            if dir == 0
                && tcp.syn()
                && !tcp.ack_flag()
                && flow.attempt_deadline.is_none()
                && self.params.attempt_timeout_us > 0
            {
                flow.attempt_deadline = Some(ts_us + self.params.attempt_timeout_us);
            }
        }
        let deadline = flow.deadline(&self.params);
        if deadline < flow.queued {
            flow.queued = deadline;
            self.deadlines.push(Reverse((deadline, index as u32, flow.generation)));
        }
    }

    /// Exports every flow still held (end of capture, or stop), in deadline order.
    pub fn flush(&mut self, out: &mut Vec<MeteredFlow>) {
        let mut live: Vec<(i64, usize)> =
            self.slots.iter().enumerate().filter(|(_, f)| f.live).map(|(i, f)| (f.start_us, i)).collect();
        live.sort_unstable();
        for (_, index) in live {
            self.export(index, ExportReason::Flush, out);
            self.remove(index);
        }
        self.deadlines.clear();
    }

    /// Zeek's `IsReuse`: a SYN that does not continue this connection starts a new one.
    fn is_reuse(&self, index: usize, tcp: &TcpSegment) -> bool {
        if !tcp.syn() {
            return false;
        }
        let flow = &self.slots[index];
        let conn_orig = if tcp.ack_flag() {
            // A SYN-ACK only reuses a half connection (nothing seen from the originator).
            if flow.endpoints[0].state != TcpState::Inactive {
                return false;
            }
            &flow.endpoints[1]
        } else {
            &flow.endpoints[0]
        };
        let closed = flow.endpoints[0].did_close || flow.endpoints[1].did_close;
        closed || tcp.seq != conn_orig.start_seq
    }

    fn create(
        &mut self,
        key: FlowKey,
        sender_is_lo: bool,
        ts_us: i64,
        packet: &PacketSummary,
        out: &mut Vec<MeteredFlow>,
    ) -> usize {
        if self.index.len() >= self.params.max_flows.max(1) {
            self.evict_one(out);
        }
        let flip = self.flip_roles(packet);
        let orig_is_lo = sender_is_lo != flip;
        let slot = Slot {
            key,
            generation: 0,
            live: true,
            orig_is_lo,
            start_us: ts_us,
            last_us: ts_us,
            packets: [0; 2],
            ip_bytes: [0; 2],
            payload_bytes: [0; 2],
            tcp_flags: [0; 2],
            endpoints: [Endpoint::NEW; 2],
            rstos0: Rstos0::Start,
            close_deadline: None,
            attempt_deadline: None,
            queued: i64::MAX,
        };
        let index = match self.free.pop() {
            Some(free) => {
                let index = free as usize;
                let generation = self.slots[index].generation.wrapping_add(1);
                self.slots[index] = Slot { generation, ..slot };
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        match self.index.entry(key) {
            Entry::Occupied(mut entry) => {
                entry.insert(index as u32);
            }
            Entry::Vacant(entry) => {
                entry.insert(index as u32);
            }
        }
        self.stats.flows_created += 1;
        self.stats.peak_flows = self.stats.peak_flows.max(self.index.len());
        index
    }

    /// Whether the first packet's receiver is the originator: a SYN-ACK, or a packet from a
    /// server port to a non-server port (Zeek's `likely_server_ports` heuristic).
    fn flip_roles(&self, packet: &PacketSummary) -> bool {
        if is_limited_broadcast(packet.dst) {
            return false;
        }
        match (packet.protocol, packet.tcp) {
            (6, Some(tcp)) => {
                if tcp.syn() {
                    return tcp.ack_flag();
                }
                let ports = &self.params.tcp_server_ports;
                if ports.contains(packet.src_port) {
                    !ports.contains(packet.dst_port) || packet.src_port < packet.dst_port
                } else {
                    false
                }
            }
            (17, _) => {
                let ports = &self.params.udp_server_ports;
                ports.contains(packet.src_port) && !ports.contains(packet.dst_port)
            }
            _ => false,
        }
    }

    fn evict_one(&mut self, out: &mut Vec<MeteredFlow>) {
        while let Some(Reverse((deadline, slot, generation))) = self.deadlines.pop() {
            let index = slot as usize;
            let Some(flow) = self.slots.get(index) else { continue };
            if !flow.live || flow.generation != generation || flow.queued != deadline {
                continue;
            }
            self.export(index, ExportReason::Evicted, out);
            self.remove(index);
            return;
        }
    }

    /// The heap entry of slot `index` came due at `now_us`.
    fn expire(&mut self, index: usize, now_us: i64, out: &mut Vec<MeteredFlow>) {
        let params = &self.params;
        let flow = &self.slots[index];
        let reason = if flow.close_deadline.is_some_and(|d| d <= now_us) {
            Some(ExportReason::Closed)
        } else if flow.attempt_deadline.is_some_and(|d| d <= now_us) && flow.is_attempt() {
            Some(ExportReason::Attempt)
        } else if flow.last_us + params.idle_timeout_us <= now_us {
            Some(ExportReason::Idle)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.export(index, reason, out);
            self.remove(index);
            return;
        }
        let flow = &mut self.slots[index];
        if flow.attempt_deadline.is_some_and(|d| d <= now_us) {
            // The SYN was answered: no attempt timer any more.
            flow.attempt_deadline = None;
        }
        if params.active_timeout_us > 0
            && flow.packets != [0, 0]
            && flow.start_us.saturating_add(params.active_timeout_us) <= now_us
        {
            self.export(index, ExportReason::Active, out);
            let flow = &mut self.slots[index];
            // The connection goes on: keep its state machine, start new counters; the next
            // record starts at its first packet.
            flow.packets = [0; 2];
            flow.ip_bytes = [0; 2];
            flow.payload_bytes = [0; 2];
            flow.tcp_flags = [0; 2];
            flow.start_us = i64::MAX;
        }
        let flow = &mut self.slots[index];
        // Always a step into the future, so `advance` cannot spin on one flow.
        let deadline = flow.deadline(&self.params).max(now_us.saturating_add(1));
        flow.queued = deadline;
        self.deadlines.push(Reverse((deadline, index as u32, flow.generation)));
    }

    fn export(&mut self, index: usize, reason: ExportReason, out: &mut Vec<MeteredFlow>) {
        let flow = &self.slots[index];
        if flow.packets == [0, 0] {
            // A continuation record that saw nothing after its active-timeout export.
            return;
        }
        self.stats.exported[reason as usize] += 1;
        let key = &flow.key;
        let (orig_addr, orig_port, resp_addr, resp_port) = if flow.orig_is_lo {
            (key.lo, key.lo_port, key.hi, key.hi_port)
        } else {
            (key.hi, key.hi_port, key.lo, key.lo_port)
        };
        out.push(MeteredFlow {
            vlan: key.vlan,
            orig_addr,
            orig_port,
            resp_addr,
            resp_port,
            protocol: key.protocol,
            start_us: flow.start_us,
            end_us: flow.last_us.max(flow.start_us),
            packets: flow.packets,
            ip_bytes: flow.ip_bytes,
            payload_bytes: flow.payload_bytes,
            tcp_flags: flow.tcp_flags,
            conn_state: flow.conn_state(),
            reason,
        });
    }

    fn remove(&mut self, index: usize) {
        let flow = &mut self.slots[index];
        if !flow.live {
            return;
        }
        flow.live = false;
        let key = flow.key;
        if self.index.get(&key) == Some(&(index as u32)) {
            self.index.remove(&key);
        }
        self.free.push(index as u32);
    }
}

fn is_limited_broadcast(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V4(v4) if v4.is_broadcast())
}

impl Slot {
    fn deadline(&self, params: &TableParams) -> i64 {
        let mut deadline = self.last_us.saturating_add(params.idle_timeout_us);
        if let Some(close) = self.close_deadline {
            deadline = deadline.min(close);
        }
        if let Some(attempt) = self.attempt_deadline {
            deadline = deadline.min(attempt);
        }
        if params.active_timeout_us > 0 {
            deadline = deadline.min(self.start_us.saturating_add(params.active_timeout_us));
        }
        deadline
    }

    /// Zeek's `AttemptTimer` condition: a SYN and nothing from the responder.
    fn is_attempt(&self) -> bool {
        matches!(self.endpoints[0].state, TcpState::SynSent | TcpState::SynAckSent)
            && self.endpoints[1].state == TcpState::Inactive
    }

    /// Runs one TCP segment through Zeek's endpoint state machine (TCPSessionAdapter::Process).
    /// Returns whether the connection is now completely closed.
    fn tcp_segment(&mut self, dir: usize, tcp: &TcpSegment, payload_len: u32) -> bool {
        let is_orig = dir == 0;
        let (syn, fin, rst, ack) = (tcp.syn(), tcp.fin(), tcp.rst(), tcp.ack_flag());

        // init_endpoint
        {
            let endpoint = &mut self.endpoints[dir];
            match endpoint.state {
                TcpState::Inactive => endpoint.start_seq = if syn { tcp.seq } else { tcp.seq.wrapping_sub(1) },
                TcpState::SynSent | TcpState::SynAckSent | TcpState::Established | TcpState::Partial => {
                    if syn {
                        endpoint.start_seq = tcp.seq;
                    }
                }
                TcpState::Reset => {
                    if syn && endpoint.prev_state == TcpState::Inactive {
                        endpoint.start_seq = tcp.seq;
                    }
                }
                TcpState::Closed => {}
            }
        }

        // update_history, reduced to what the RSTOS0 pattern needs.
        let letter = match u8::from(syn) + u8::from(fin) + u8::from(rst) {
            0 if payload_len > 0 => Some(b'D'),
            0 if ack => Some(b'A'),
            0 => None,
            1 if syn => Some(if ack { b'H' } else { b'S' }),
            1 if fin => Some(b'F'),
            1 => Some(b'R'),
            _ if fin && rst => Some(b'I'),
            _ => Some(b'Q'),
        };
        if let Some(letter) = letter {
            self.rstos0 = match (self.rstos0, is_orig, letter) {
                (Rstos0::Start, true, b'S') => Rstos0::AfterSyn,
                (Rstos0::Start, _, _) => Rstos0::No,
                (Rstos0::AfterSyn, true, b'R') => Rstos0::Matched,
                (Rstos0::AfterSyn, true, b'H' | b'A' | b'F' | b'I' | b'Q') => Rstos0::No,
                (state, _, _) => state,
            };
        }

        // init_peer: an ACK for a peer we have not heard from starts its sequence space.
        if ack && self.endpoints[1 - dir].state == TcpState::Inactive {
            self.endpoints[1 - dir].start_seq = tcp.ack.wrapping_sub(1);
        }

        let mut do_close = false;
        let [orig_ep, resp_ep] = &mut self.endpoints;
        let (endpoint, peer) = if is_orig { (orig_ep, resp_ep) } else { (resp_ep, orig_ep) };
        let mut flip = false;
        match endpoint.state {
            TcpState::Inactive => {
                if syn {
                    if is_orig {
                        endpoint.set_state(if ack { TcpState::SynAckSent } else { TcpState::SynSent });
                    } else {
                        if !ack && peer.state == TcpState::SynAckSent && tcp.seq == endpoint.start_seq {
                            // SYN / SYN-ACK seen in reverse order: flip the roles.
                            flip = true;
                            peer.set_state(TcpState::Established);
                        }
                        if peer.state == TcpState::SynSent {
                            peer.set_state(TcpState::Established);
                        }
                        endpoint.set_state(TcpState::Established);
                    }
                }
                if fin {
                    endpoint.set_state(TcpState::Closed);
                    do_close = true;
                }
                if rst {
                    endpoint.set_state(TcpState::Reset);
                    do_close = true;
                }
                if endpoint.state == TcpState::Inactive {
                    if !is_orig && payload_len == 0 && peer.state == TcpState::SynSent {
                        // An ACK of the SYN before the SYN-ACK: not yet a partial connection.
                    } else if ack && peer.state == TcpState::Established {
                        // Missed the SYN, saw the SYN-ACK: call it established.
                        endpoint.set_state(TcpState::Established);
                    } else {
                        endpoint.set_state(TcpState::Partial);
                    }
                }
            }
            TcpState::SynSent | TcpState::SynAckSent => {
                if fin {
                    endpoint.set_state(TcpState::Closed);
                    do_close = true;
                }
                if rst {
                    endpoint.set_state(TcpState::Reset);
                    do_close = true;
                }
            }
            TcpState::Established | TcpState::Partial => {
                if syn && endpoint.state == TcpState::Partial && peer.state == TcpState::Inactive && !ack {
                    endpoint.set_state(TcpState::SynSent);
                }
                if fin && !rst {
                    endpoint.set_state(TcpState::Closed);
                    if peer.state == TcpState::Reset && peer.prev_state == TcpState::Closed {
                        // The peer's FIN then RST was a normal close after all.
                        peer.set_state(TcpState::Closed);
                    }
                    do_close = true;
                }
                if rst {
                    endpoint.set_state(TcpState::Reset);
                    do_close = true;
                }
            }
            TcpState::Closed => {
                if rst && peer.state != TcpState::Closed {
                    endpoint.set_state(TcpState::Reset);
                    if !endpoint.did_close {
                        do_close = true;
                    }
                }
            }
            TcpState::Reset => {}
        }

        // ConnectionClosed: the connection is over once one side reset, or both closed, or the
        // side closing never heard from its peer.
        let mut complete = false;
        if do_close && !endpoint.did_close {
            endpoint.did_close = true;
            complete = endpoint.state == TcpState::Reset || peer.did_close || peer.state == TcpState::Inactive;
        }
        if flip {
            self.flip();
        }
        complete
    }

    fn flip(&mut self) {
        self.orig_is_lo = !self.orig_is_lo;
        self.packets.swap(0, 1);
        self.ip_bytes.swap(0, 1);
        self.payload_bytes.swap(0, 1);
        self.tcp_flags.swap(0, 1);
        self.endpoints.swap(0, 1);
    }

    /// Zeek's `conn_state` (base/protocols/conn/main.zeek), from the endpoint states.
    fn conn_state(&self) -> ConnState {
        match self.key.protocol {
            6 => self.tcp_conn_state(),
            17 => match (self.packets[0] > 0, self.packets[1] > 0) {
                (true, true) => ConnState::SF,
                (true, false) => ConnState::S0,
                (false, true) => ConnState::SHR,
                (false, false) => ConnState::OTH,
            },
            _ => ConnState::OTH,
        }
    }

    fn tcp_conn_state(&self) -> ConnState {
        use TcpState::*;
        let (os, rs) = (self.endpoints[0].state, self.endpoints[1].state);
        let o_inactive = self.endpoints[0].inactive();
        let r_inactive = self.endpoints[1].inactive();
        if rs == Reset {
            if os == SynSent || os == SynAckSent || (os == Reset && self.payload_bytes == [0, 0]) {
                ConnState::REJ
            } else if o_inactive {
                ConnState::RSTRH
            } else {
                ConnState::RSTR
            }
        } else if os == Reset {
            if r_inactive {
                if self.rstos0 == Rstos0::Matched {
                    ConnState::RSTOS0
                } else {
                    ConnState::OTH
                }
            } else {
                ConnState::RSTO
            }
        } else if rs == Closed && os == Closed {
            ConnState::SF
        } else if os == Closed {
            if r_inactive {
                ConnState::SH
            } else {
                ConnState::S2
            }
        } else if rs == Closed {
            if o_inactive {
                ConnState::SHR
            } else {
                ConnState::S3
            }
        } else if os == SynSent && rs == Inactive {
            ConnState::S0
        } else if os == Established && rs == Established {
            ConnState::S1
        } else {
            ConnState::OTH
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;

    fn params() -> TableParams {
        TableParams {
            idle_timeout_us: 60_000_000,
            active_timeout_us: 0,
            linger_us: 5_000_000,
            attempt_timeout_us: 5_000_000,
            max_flows: 1000,
            tcp_server_ports: PortSet::new(&[80, 443]),
            udp_server_ports: PortSet::new(&[53]),
        }
    }

    /// A TCP segment from the client 10.0.0.1:40000 (`from_client`) or the server 10.0.0.2:80.
    fn tcp(from_client: bool, flags: u8, seq: u32, ack: u32, payload: u32) -> PacketSummary {
        let (c, s) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (src, dst, sp, dp) = if from_client { (c, s, 40000, 80) } else { (s, c, 80, 40000) };
        PacketSummary {
            vlan: 0,
            src,
            dst,
            protocol: 6,
            src_port: sp,
            dst_port: dp,
            one_way: false,
            ip_bytes: 40 + payload,
            payload_bytes: payload,
            tcp: Some(TcpSegment { flags, seq, ack }),
        }
    }

    fn udp(from_client: bool, payload: u32) -> PacketSummary {
        let mut p = tcp(from_client, 0, 0, 0, payload);
        p.protocol = 17;
        p.tcp = None;
        p.ip_bytes = 28 + payload;
        if from_client {
            p.dst_port = 53;
        } else {
            p.src_port = 53;
        }
        p
    }

    /// Runs `packets` one millisecond apart and flushes.
    fn run(params: TableParams, packets: &[PacketSummary]) -> Vec<MeteredFlow> {
        let mut table = FlowTable::new(params);
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            table.observe(1_000_000 + i as i64 * 1000, p, &mut out);
        }
        table.flush(&mut out);
        out
    }

    fn states(packets: &[PacketSummary]) -> Vec<ConnState> {
        run(params(), packets).iter().map(|f| f.conn_state).collect()
    }

    #[test]
    fn handshake_data_and_fins_are_sf_with_both_directions_counted() {
        let flows = run(
            params(),
            &[
                tcp(true, SYN, 100, 0, 0),
                tcp(false, SYN | ACK, 500, 101, 0),
                tcp(true, ACK, 101, 501, 0),
                tcp(true, ACK | 0x08, 101, 501, 20),
                tcp(false, ACK, 501, 121, 300),
                tcp(true, FIN | ACK, 121, 801, 0),
                tcp(false, FIN | ACK, 801, 122, 0),
                tcp(true, ACK, 122, 802, 0),
            ],
        );
        assert_eq!(flows.len(), 1);
        let flow = &flows[0];
        assert_eq!(flow.conn_state, ConnState::SF);
        assert_eq!((flow.orig_port, flow.resp_port), (40000, 80));
        assert_eq!(flow.packets, [5, 3]);
        assert_eq!(flow.payload_bytes, [20, 300]);
        assert_eq!(flow.ip_bytes, [5 * 40 + 20, 3 * 40 + 300]);
        assert_eq!(flow.tcp_flags, [SYN | ACK | FIN | 0x08, SYN | ACK | FIN]);
        assert_eq!(flow.to_flow("s").tcp_flags, 0x1b);
    }

    #[test]
    fn zeek_states_for_the_usual_endings() {
        let syn = tcp(true, SYN, 100, 0, 0);
        let synack = tcp(false, SYN | ACK, 500, 101, 0);
        let ack = tcp(true, ACK, 101, 501, 0);
        assert_eq!(states(&[syn]), [ConnState::S0]);
        assert_eq!(states(&[syn, synack, ack]), [ConnState::S1]);
        assert_eq!(states(&[syn, tcp(false, RST | ACK, 0, 101, 0)]), [ConnState::REJ]);
        assert_eq!(states(&[syn, synack, ack, tcp(true, RST, 101, 0, 0)]), [ConnState::RSTO]);
        assert_eq!(states(&[syn, synack, ack, tcp(false, RST, 501, 0, 0)]), [ConnState::RSTR]);
        assert_eq!(states(&[syn, tcp(true, RST, 101, 0, 0)]), [ConnState::RSTOS0]);
        assert_eq!(states(&[syn, tcp(true, FIN, 101, 0, 0)]), [ConnState::SH]);
        assert_eq!(states(&[syn, synack, ack, tcp(true, FIN | ACK, 101, 501, 0)]), [ConnState::S2]);
        assert_eq!(states(&[syn, synack, ack, tcp(false, FIN | ACK, 501, 101, 0)]), [ConnState::S3]);
        // The SYN-ACK sender is the responder even when it is seen first.
        assert_eq!(states(&[synack, tcp(false, RST, 501, 0, 0)]), [ConnState::RSTRH]);
        assert_eq!(states(&[synack, tcp(false, FIN | ACK, 501, 101, 0)]), [ConnState::SHR]);
        assert_eq!(states(&[tcp(true, ACK, 101, 501, 10), tcp(false, ACK, 501, 111, 10)]), [ConnState::OTH]);
    }

    #[test]
    fn midstream_traffic_from_a_server_port_is_turned_round() {
        let flows = run(params(), &[tcp(false, ACK, 501, 101, 100), tcp(true, ACK, 101, 601, 0)]);
        assert_eq!((flows[0].orig_port, flows[0].resp_port), (40000, 80));
        assert_eq!(flows[0].packets, [1, 1]);
        let flows = run(params(), &[udp(false, 80)]);
        assert_eq!((flows[0].orig_port, flows[0].resp_port, flows[0].conn_state), (40000, 53, ConnState::SHR));
    }

    #[test]
    fn udp_states_follow_zeek() {
        assert_eq!(states(&[udp(true, 30)]), [ConnState::S0]);
        assert_eq!(states(&[udp(true, 30), udp(false, 90)]), [ConnState::SF]);
    }

    #[test]
    fn a_new_syn_after_a_reject_is_a_new_connection() {
        let syn = tcp(true, SYN, 100, 0, 0);
        let rst = tcp(false, RST | ACK, 0, 101, 0);
        let flows = run(params(), &[syn, rst, syn, rst]);
        assert_eq!(flows.len(), 2);
        assert!(flows.iter().all(|f| f.conn_state == ConnState::REJ && f.packets == [1, 1]));
        assert_eq!(flows[0].reason, ExportReason::Reuse);
        // A retransmitted SYN (same ISN) on an open attempt is the same connection.
        assert_eq!(run(params(), &[syn, syn]).len(), 1);
    }

    #[test]
    fn timeouts_run_on_packet_time() {
        let mut table = FlowTable::new(TableParams { active_timeout_us: 10_000_000, ..params() });
        let mut out = Vec::new();
        let ack = tcp(true, ACK, 101, 501, 10);
        // Idle: a packet 61 s after the last one finds its flow already exported.
        table.observe(0, &ack, &mut out);
        table.observe(61_000_000, &ack, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, ExportReason::Idle);
        // Active: packets every 2 s for 25 s give records of 10 s, and their packets add up.
        out.clear();
        let mut table = FlowTable::new(TableParams { active_timeout_us: 10_000_000, ..params() });
        for i in 0..13 {
            table.observe(i * 2_000_000, &ack, &mut out);
        }
        table.flush(&mut out);
        assert_eq!(out.iter().map(|f| f.packets[0]).sum::<u64>(), 13);
        assert_eq!(out.iter().filter(|f| f.reason == ExportReason::Active).count(), 2);
        assert!(out.iter().all(|f| f.end_us - f.start_us <= 10_000_000));
        // Close: the FIN exchange is exported once the linger has passed.
        out.clear();
        let mut table = FlowTable::new(params());
        table.observe(0, &tcp(true, FIN | ACK, 101, 501, 0), &mut out);
        table.observe(1000, &tcp(false, FIN | ACK, 501, 102, 0), &mut out);
        table.advance(4_000_000, &mut out);
        assert!(out.is_empty());
        table.advance(5_001_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, ExportReason::Closed);
        // Attempt: an unanswered SYN is exported after 5 s.
        out.clear();
        table.observe(10_000_000, &tcp(true, SYN, 100, 0, 0), &mut out);
        table.advance(15_000_000, &mut out);
        assert_eq!((out.len(), out[0].conn_state, out[0].reason), (1, ConnState::S0, ExportReason::Attempt));
    }

    #[test]
    fn a_full_table_evicts_and_counts() {
        let mut table = FlowTable::new(TableParams { max_flows: 10, ..params() });
        let mut out = Vec::new();
        for port in 0..100u16 {
            let mut p = udp(true, 10);
            p.src_port = 1000 + port;
            table.observe(i64::from(port), &p, &mut out);
        }
        assert_eq!(table.len(), 10);
        assert_eq!(table.stats().exported(ExportReason::Evicted), 90);
        // The oldest go first.
        assert_eq!(out[0].orig_port, 1000);
    }

    fn arbitrary_packet() -> impl Strategy<Value = (u8, PacketSummary)> {
        (any::<bool>(), any::<u8>(), 0u32..4, 0u32..4, 0u32..1500, 0u8..4, any::<bool>(), 0u8..3).prop_map(
            |(from_client, flags, seq, ack, payload, gap, vlan, protocol)| {
                let mut p = tcp(from_client, flags, seq * 1000, ack * 1000, payload);
                p.vlan = u32::from(vlan);
                match protocol {
                    0 => {}
                    1 => {
                        p = PacketSummary { protocol: 17, tcp: None, ..p };
                    }
                    _ => {
                        p = PacketSummary { protocol: 1, tcp: None, one_way: from_client, ..p };
                    }
                }
                (gap, p)
            },
        )
    }

    proptest! {
        /// Whatever the packets, nothing panics and every packet and byte is in exactly one record.
        #[test]
        fn packets_and_bytes_are_conserved(packets in prop::collection::vec(arbitrary_packet(), 0..200),
                                           max_flows in 1usize..6, active in 0i64..3) {
            let mut table = FlowTable::new(TableParams {
                max_flows,
                idle_timeout_us: 3_000_000,
                active_timeout_us: active * 2_000_000,
                linger_us: 1_000_000,
                attempt_timeout_us: 1_500_000,
                ..params()
            });
            let mut out = Vec::new();
            let mut now = 0i64;
            let (mut packets_in, mut bytes_in) = (0u64, 0u64);
            for (gap, p) in &packets {
                now += i64::from(*gap) * 700_000;
                table.observe(now, p, &mut out);
                packets_in += 1;
                bytes_in += u64::from(p.ip_bytes);
            }
            table.flush(&mut out);
            prop_assert_eq!(table.len(), 0);
            prop_assert_eq!(out.iter().map(|f| f.packets[0] + f.packets[1]).sum::<u64>(), packets_in);
            prop_assert_eq!(out.iter().map(|f| f.ip_bytes[0] + f.ip_bytes[1]).sum::<u64>(), bytes_in);
            for flow in &out {
                prop_assert!(flow.end_us >= flow.start_us);
                prop_assert!(flow.to_flow("s").validate().is_ok());
            }
        }
    }
}
