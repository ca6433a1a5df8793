//! Field conversions every adapter shares: addresses, ports, counters, protocol names and TCP flag
//! spellings, each turning a bad value into an [`AdapterError`] that names the field.

use std::net::IpAddr;

use serde::Deserialize;

use super::{AdapterError, InputFormat};
use crate::flow::{proto, tcp_flag};

/// A JSON value that some sensors write as a number and others (or other versions) as a string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

impl NumberOrText {
    /// The value as an unsigned integer, if it is one (a numeric string counts).
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            NumberOrText::Unsigned(value) => Some(*value),
            NumberOrText::Signed(value) => u64::try_from(*value).ok(),
            NumberOrText::Float(_) => None,
            NumberOrText::Text(text) => text.trim().parse().ok(),
        }
    }

    /// The value as written, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            NumberOrText::Unsigned(value) => value.to_string(),
            NumberOrText::Signed(value) => value.to_string(),
            NumberOrText::Float(value) => value.to_string(),
            NumberOrText::Text(text) => text.clone(),
        }
    }
}

/// A textual IP address, normalised (IPv6 compressed, lower case) so the same endpoint reported by
/// two sensors is the same string.
pub(crate) fn address(format: InputFormat, field: &'static str, text: &str) -> Result<String, AdapterError> {
    text.trim()
        .parse::<IpAddr>()
        .map(|address| address.to_string())
        .map_err(|_| AdapterError::bad_field(format, field, text, "is not an IP address"))
}

/// A required field that the record lacks.
pub(crate) fn required<T>(format: InputFormat, field: &'static str, value: Option<T>) -> Result<T, AdapterError> {
    value.ok_or(AdapterError::MissingField { format, field })
}

/// A port number: 0..=65535.
pub(crate) fn port(format: InputFormat, field: &'static str, value: u64) -> Result<i32, AdapterError> {
    match u16::try_from(value) {
        Ok(port) => Ok(i32::from(port)),
        Err(_) => Err(AdapterError::bad_field(format, field, value, "is not a port (0..=65535)")),
    }
}

/// A byte or packet counter; anything beyond i64 is malformed, not a real count.
pub(crate) fn count(format: InputFormat, field: &'static str, value: u64) -> Result<i64, AdapterError> {
    i64::try_from(value).map_err(|_| AdapterError::bad_field(format, field, value, "is too large for a counter"))
}

/// A counter scaled by a sampling rate, saturating rather than overflowing.
pub(crate) fn scaled_count(
    format: InputFormat,
    field: &'static str,
    value: u64,
    rate: u64,
) -> Result<i64, AdapterError> {
    count(format, field, value.saturating_mul(rate.max(1)).min(i64::MAX as u64))
}

/// An IANA protocol number from a name ("tcp", "UDP", "IPv6-ICMP", "icmp") or a numeric string.
pub(crate) fn protocol_number(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(number) = name.parse::<u8>() {
        return Some(i32::from(number));
    }
    let number = match name.to_ascii_lowercase().as_str() {
        "icmp" | "icmpv4" => proto::ICMP,
        "igmp" => 2,
        "ipv4" | "ipip" | "ip-in-ip" => 4,
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "ipv6" => 41,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" | "icmp6" => proto::ICMPV6,
        "ospf" | "ospfigp" => 89,
        "pim" => 103,
        "vrrp" => 112,
        "sctp" => 132,
        "udplite" | "udp-lite" => 136,
        _ => return None,
    };
    Some(number)
}

/// A protocol field that may be a number or a name.
pub(crate) fn protocol(format: InputFormat, field: &'static str, value: &NumberOrText) -> Result<i32, AdapterError> {
    let number = match value {
        NumberOrText::Text(name) => protocol_number(name),
        other => other.as_u64().and_then(|number| u8::try_from(number).ok()).map(i32::from),
    };
    number.ok_or_else(|| AdapterError::bad_field(format, field, value.describe(), "is not an IP protocol"))
}

/// The bit of one TCP flag name as pmacct and Hubble spell them ("SYN", "ack", "ECE", ...).
pub(crate) fn tcp_flag_bit(name: &str) -> Option<i32> {
    let bit = match name.trim().to_ascii_uppercase().as_str() {
        "FIN" => tcp_flag::FIN,
        "SYN" => tcp_flag::SYN,
        "RST" => tcp_flag::RST,
        "PSH" => tcp_flag::PSH,
        "ACK" => tcp_flag::ACK,
        "URG" => tcp_flag::URG,
        "ECE" => 0x40,
        "CWR" => 0x80,
        "NS" => 0x100,
        _ => return None,
    };
    Some(bit)
}

/// A flag set whose bit is set in `flags`.
pub(crate) fn has(flags: i32, bit: i32) -> bool {
    flags & bit != 0
}

/// Whether a protocol carries ICMP type/code where other protocols carry ports.
pub(crate) fn is_icmp(protocol: i32) -> bool {
    protocol == proto::ICMP || protocol == proto::ICMPV6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_of_every_sensor() {
        for (name, number) in [("TCP", 6), ("udp", 17), ("IPv6-ICMP", 58), ("icmp", 1), ("47", 47), ("sctp", 132)] {
            assert_eq!(protocol_number(name), Some(number), "{name}");
        }
        assert_eq!(protocol_number("256"), None);
        assert_eq!(protocol_number("unknown_transport"), None);
    }

    #[test]
    fn addresses_are_normalised() {
        let format = InputFormat::AwsVpc;
        assert_eq!(address(format, "srcaddr", "2001:DB8:0:0::1").ok(), Some("2001:db8::1".to_owned()));
        assert_eq!(address(format, "srcaddr", " 10.0.0.1").ok(), Some("10.0.0.1".to_owned()));
        let error = address(format, "srcaddr", "eni-1").expect_err("not an address");
        assert_eq!(error.kind(), "bad_field");
        assert!(error.to_string().contains("srcaddr"), "{error}");
    }

    #[test]
    fn counters_and_ports_refuse_what_does_not_fit() {
        let format = InputFormat::PmacctJson;
        assert_eq!(port(format, "port_src", 65_535).ok(), Some(65_535));
        assert!(port(format, "port_src", 65_536).is_err());
        assert!(count(format, "bytes", u64::MAX).is_err());
        assert_eq!(scaled_count(format, "bytes", u64::MAX, 100).ok(), Some(i64::MAX));
        assert_eq!(scaled_count(format, "bytes", 1500, 0).ok(), Some(1500));
    }
}
