//! One captured frame → the few numbers the flow table needs (addresses, ports, sizes, TCP
//! flags and sequence numbers), without allocating. Headers are read with `etherparse`'s lax
//! slicer, so a frame cut short by the capture's snap length still counts with the lengths its
//! IP header announces.

use std::net::IpAddr;

use etherparse::{EtherType, LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, TransportSlice};

/// pcap link-layer types (LINKTYPE_* from tcpdump.org) the sensor reads.
pub mod linktype {
    /// BSD loopback: a 4-byte address family in host byte order.
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// Raw IP (the value OpenBSD and some libpcap builds write as DLT_RAW).
    pub const RAW_OPENBSD: u32 = 12;
    pub const RAW_BSDOS: u32 = 14;
    pub const RAW: u32 = 101;
    /// OpenBSD loopback: a 4-byte address family in network byte order.
    pub const LOOP: u32 = 108;
    /// Linux "cooked" capture v1 (`-i any`).
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    /// Linux "cooked" capture v2.
    pub const LINUX_SLL2: u32 = 276;
}

/// TCP header facts the connection state machine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// The flags byte (FIN 0x01 … CWR 0x80).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
}

impl TcpSegment {
    pub fn syn(&self) -> bool {
        self.flags & 0x02 != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & 0x01 != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & 0x04 != 0
    }
    pub fn ack_flag(&self) -> bool {
        self.flags & 0x10 != 0
    }
}

/// What the flow table needs of one IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    /// VLAN ids, outer in the high 16 bits and inner in the low 16 (QinQ); 0 without a tag.
    pub vlan: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number of the transport (after IPv6 extension headers).
    pub protocol: u8,
    /// TCP/UDP ports; for ICMP the type (src) and, as Zeek does, the counterpart type of a
    /// request/reply pair or else the code (dst). 0 for other protocols.
    pub src_port: u16,
    pub dst_port: u16,
    /// An ICMP message without a counterpart (unreachable, time exceeded, …): its direction is
    /// part of its identity, so it is never matched with a packet going the other way.
    pub one_way: bool,
    /// IP bytes: the IP header's total length (IPv4) or 40 + payload length (IPv6), i.e. what
    /// the sender put on the wire above the link layer, whatever the snap length kept.
    pub ip_bytes: u32,
    /// Transport payload bytes (IP bytes less the IP, extension and transport headers).
    pub payload_bytes: u32,
    pub tcp: Option<TcpSegment>,
}

/// Why a frame did not become a [`PacketSummary`]. Counted per reason by the sensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// ARP, LLDP, STP, … anything that is not IPv4 or IPv6.
    NotIp,
    /// A link type the sensor does not decode.
    LinkType,
    /// Too short to hold the headers it announces.
    Truncated,
    /// An IP fragment (fragments are not reassembled; see docs/sensor.md).
    Fragment,
}

impl Skip {
    pub const ALL: [Skip; 4] = [Skip::NotIp, Skip::LinkType, Skip::Truncated, Skip::Fragment];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotIp => "not_ip",
            Skip::LinkType => "link_type",
            Skip::Truncated => "truncated",
            Skip::Fragment => "fragment",
        }
    }
}

const ETHERTYPE_MPLS: u16 = 0x8847;
const ETHERTYPE_MPLS_MULTICAST: u16 = 0x8848;

/// Decodes one frame of link type `linktype`.
pub fn summarize(linktype: u32, frame: &[u8]) -> Result<PacketSummary, Skip> {
    match linktype {
        linktype::ETHERNET => {
            let sliced = LaxSlicedPacket::from_ethernet(frame).map_err(|_| Skip::Truncated)?;
            if sliced.net.is_none() {
                // MPLS (and MPLS inside VLANs) is common on provider links: pop the labels.
                if let Some(payload) = sliced.ether_payload() {
                    let ether_type = payload.ether_type.0;
                    if ether_type == ETHERTYPE_MPLS || ether_type == ETHERTYPE_MPLS_MULTICAST {
                        let vlan = vlan_of(&sliced);
                        return after_mpls(payload.payload).map(|mut summary| {
                            summary.vlan = vlan;
                            summary
                        });
                    }
                }
            }
            from_sliced(&sliced)
        }
        linktype::RAW | linktype::RAW_OPENBSD | linktype::RAW_BSDOS | linktype::IPV4 | linktype::IPV6 => from_ip(frame),
        linktype::NULL | linktype::LOOP => {
            let family = frame.get(..4).ok_or(Skip::Truncated)?;
            let family = [family[0], family[1], family[2], family[3]];
            let family =
                if linktype == linktype::LOOP { u32::from_be_bytes(family) } else { u32::from_ne_bytes(family) };
            match family {
                // AF_INET everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
                2 | 10 | 24 | 28 | 30 => from_ip(&frame[4..]),
                _ => Err(Skip::NotIp),
            }
        }
        linktype::LINUX_SLL => {
            let protocol = frame.get(14..16).ok_or(Skip::Truncated)?;
            from_ether_type(u16::from_be_bytes([protocol[0], protocol[1]]), &frame[16..])
        }
        linktype::LINUX_SLL2 => {
            if frame.len() < 20 {
                return Err(Skip::Truncated);
            }
            from_ether_type(u16::from_be_bytes([frame[0], frame[1]]), &frame[20..])
        }
        _ => Err(Skip::LinkType),
    }
}

fn from_ether_type(ether_type: u16, payload: &[u8]) -> Result<PacketSummary, Skip> {
    if ether_type == ETHERTYPE_MPLS || ether_type == ETHERTYPE_MPLS_MULTICAST {
        return after_mpls(payload);
    }
    let sliced = LaxSlicedPacket::from_ether_type(EtherType(ether_type), payload);
    from_sliced(&sliced)
}

fn from_ip(packet: &[u8]) -> Result<PacketSummary, Skip> {
    match packet.first().map(|b| b >> 4) {
        Some(4) | Some(6) => {}
        Some(_) => return Err(Skip::NotIp),
        None => return Err(Skip::Truncated),
    }
    let sliced = LaxSlicedPacket::from_ip(packet).map_err(|_| Skip::Truncated)?;
    from_sliced(&sliced)
}

/// Pops an MPLS label stack (4 bytes a label, bottom-of-stack bit 0x100 in the third byte), then
/// guesses IPv4 / IPv6 from the version nibble, as every MPLS-aware sensor does.
fn after_mpls(mut labels: &[u8]) -> Result<PacketSummary, Skip> {
    for _ in 0..16 {
        let label = labels.get(..4).ok_or(Skip::Truncated)?;
        let bottom = label[2] & 0x01 != 0;
        labels = &labels[4..];
        if bottom {
            return from_ip(labels);
        }
    }
    Err(Skip::NotIp)
}

fn vlan_of(sliced: &LaxSlicedPacket<'_>) -> u32 {
    let mut vlan = 0u32;
    let mut tags = 0;
    for ext in &sliced.link_exts {
        if let LaxLinkExtSlice::Vlan(tag) = ext {
            if tags < 2 {
                vlan = (vlan << 16) | u32::from(tag.vlan_identifier().value());
                tags += 1;
            }
        }
    }
    vlan
}

fn from_sliced(sliced: &LaxSlicedPacket<'_>) -> Result<PacketSummary, Skip> {
    let vlan = vlan_of(sliced);
    let (src, dst, ip_start, ip_bytes, payload) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            let total = u32::from(header.total_len());
            let start = header.slice().as_ptr() as usize;
            // A zero total length is what TCP segmentation offload leaves in captures taken on
            // the sending host: fall back to what was captured.
            let ip_bytes = if total == 0 { (header.slice().len() + ip.payload().payload.len()) as u32 } else { total };
            (IpAddr::V4(header.source_addr()), IpAddr::V4(header.destination_addr()), start, ip_bytes, ip.payload())
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            let start = header.slice().as_ptr() as usize;
            let payload_len = u32::from(header.payload_length());
            let ip_bytes = if payload_len == 0 {
                (header.slice().len() + ip.extensions().slice().len() + ip.payload().payload.len()) as u32
            } else {
                40 + payload_len
            };
            (IpAddr::V6(header.source_addr()), IpAddr::V6(header.destination_addr()), start, ip_bytes, ip.payload())
        }
        Some(LaxNetSlice::Arp(_)) | None => {
            return Err(if sliced.stop_err.is_some() && sliced.net.is_none() && is_ip_ether(sliced) {
                Skip::Truncated
            } else {
                Skip::NotIp
            })
        }
    };
    if payload.fragmented {
        return Err(Skip::Fragment);
    }
    let protocol = payload.ip_number.0;
    let mut summary = PacketSummary {
        vlan,
        src,
        dst,
        protocol,
        src_port: 0,
        dst_port: 0,
        one_way: false,
        ip_bytes,
        payload_bytes: 0,
        tcp: None,
    };
    // Bytes from the start of the IP header to the start of the transport header.
    let l4_offset = (payload.payload.as_ptr() as usize).saturating_sub(ip_start) as u32;
    let l4_bytes = ip_bytes.saturating_sub(l4_offset);
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let header = tcp.header_slice();
            summary.src_port = tcp.source_port();
            summary.dst_port = tcp.destination_port();
            summary.payload_bytes = l4_bytes.saturating_sub(header.len() as u32);
            summary.tcp = Some(TcpSegment {
                flags: header.get(13).copied().unwrap_or(0),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
            });
        }
        Some(TransportSlice::Udp(udp)) => {
            summary.src_port = udp.source_port();
            summary.dst_port = udp.destination_port();
            summary.payload_bytes = l4_bytes.saturating_sub(8);
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let (kind, code) = type_and_code(icmp.slice());
            let (counterpart, one_way) = icmp4_counterpart(kind, code);
            summary.src_port = u16::from(kind);
            summary.dst_port = counterpart;
            summary.one_way = one_way;
            summary.payload_bytes = l4_bytes.saturating_sub(8);
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let (kind, code) = type_and_code(icmp.slice());
            let (counterpart, one_way) = icmp6_counterpart(kind, code);
            summary.src_port = u16::from(kind);
            summary.dst_port = counterpart;
            summary.one_way = one_way;
            summary.payload_bytes = l4_bytes.saturating_sub(8);
        }
        // Other transports (SCTP, GRE, ESP, IGMP, …) are metered by address pair and protocol.
        Some(_) | None => match protocol {
            // A TCP/UDP/ICMP header that did not fit: nothing trustworthy to key it on.
            6 | 17 | 1 | 58 => return Err(Skip::Truncated),
            _ => summary.payload_bytes = l4_bytes,
        },
    }
    Ok(summary)
}

fn is_ip_ether(sliced: &LaxSlicedPacket<'_>) -> bool {
    sliced.ether_payload().is_some_and(|p| p.ether_type == EtherType::IPV4 || p.ether_type == EtherType::IPV6)
}

fn type_and_code(icmp: &[u8]) -> (u8, u8) {
    (icmp.first().copied().unwrap_or(0), icmp.get(1).copied().unwrap_or(0))
}

/// Zeek's `ICMP4_counterpart`: request/reply types pair up into one connection.
fn icmp4_counterpart(kind: u8, code: u8) -> (u16, bool) {
    match kind {
        8 => (0, false),   // echo → echo reply
        0 => (8, false),   // echo reply → echo
        13 => (14, false), // timestamp
        14 => (13, false),
        15 => (16, false), // information request
        16 => (15, false),
        10 => (9, false), // router solicitation → advertisement
        9 => (10, false),
        17 => (18, false), // address mask
        18 => (17, false),
        _ => (u16::from(code), true),
    }
}

/// Zeek's `ICMP6_counterpart`.
fn icmp6_counterpart(kind: u8, code: u8) -> (u16, bool) {
    match kind {
        128 => (129, false), // echo request → reply
        129 => (128, false),
        133 => (134, false), // router solicitation → advertisement
        134 => (133, false),
        135 => (136, false), // neighbor solicitation → advertisement
        136 => (135, false),
        130 => (131, false), // MLD query → report
        131 => (130, false),
        139 => (140, false), // node information query → response
        140 => (139, false),
        144 => (145, false), // home agent address discovery
        145 => (144, false),
        _ => (u16::from(code), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    fn tcp_frame(payload: &[u8], syn: bool) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 1000, 65535);
        let builder = if syn { builder.syn() } else { builder.ack(7) };
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn a_vlan_tagged_tcp_segment_gives_ports_flags_and_ip_bytes() {
        let frame = tcp_frame(b"hello", false);
        let summary = summarize(linktype::ETHERNET, &frame).unwrap();
        assert_eq!(summary.vlan, 42);
        assert_eq!(summary.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((summary.src_port, summary.dst_port, summary.protocol), (40000, 443, 6));
        assert_eq!(summary.ip_bytes, 20 + 20 + 5);
        assert_eq!(summary.payload_bytes, 5);
        let tcp = summary.tcp.unwrap();
        assert!(tcp.ack_flag() && !tcp.syn());
        assert_eq!((tcp.seq, tcp.ack), (1000, 7));
    }

    #[test]
    fn a_frame_cut_by_the_snap_length_counts_the_announced_lengths() {
        let frame = tcp_frame(&[0u8; 1000], false);
        let cut = &frame[..14 + 4 + 20 + 20 + 10];
        let summary = summarize(linktype::ETHERNET, cut).unwrap();
        assert_eq!(summary.ip_bytes, 1040);
        assert_eq!(summary.payload_bytes, 1000);
    }

    #[test]
    fn qinq_keeps_both_vlan_ids() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(etherparse::VlanId::try_new(100).unwrap(), etherparse::VlanId::try_new(200).unwrap())
            .ipv6([0xfe; 16], [0x20; 16], 64)
            .udp(5353, 53)
            .write(&mut frame, b"dns?")
            .unwrap();
        let summary = summarize(linktype::ETHERNET, &frame).unwrap();
        assert_eq!(summary.vlan, (100 << 16) | 200);
        assert_eq!((summary.protocol, summary.ip_bytes, summary.payload_bytes), (17, 40 + 8 + 4, 4));
    }

    #[test]
    fn icmp_echo_request_and_reply_share_a_key() {
        let mut request = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut request, b"ping")
            .unwrap();
        let mut reply = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .icmpv4_echo_reply(1, 1)
            .write(&mut reply, b"ping")
            .unwrap();
        let request = summarize(linktype::RAW, &request).unwrap();
        let reply = summarize(linktype::RAW, &reply).unwrap();
        assert_eq!((request.src_port, request.dst_port), (8, 0));
        assert_eq!((reply.src_port, reply.dst_port), (0, 8));
        assert!(!request.one_way);
    }

    #[test]
    fn arp_is_not_ip() {
        let mut frame = vec![0xffu8; 12];
        frame.extend_from_slice(&[0x08, 0x06]);
        frame.extend_from_slice(&[0u8; 28]);
        assert_eq!(summarize(linktype::ETHERNET, &frame), Err(Skip::NotIp));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(linktype in prop::sample::select(vec![0u32, 1, 12, 101, 108, 113, 228, 229, 276, 999]),
                                       bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = summarize(linktype, &bytes);
        }

        #[test]
        fn mangled_real_frames_never_panic(cut in 0usize..80, flip in 0usize..80, value in any::<u8>()) {
            let mut frame = tcp_frame(b"some payload here", true);
            if flip < frame.len() {
                frame[flip] = value;
            }
            frame.truncate(cut.min(frame.len()));
            let _ = summarize(linktype::ETHERNET, &frame);
        }
    }
}
