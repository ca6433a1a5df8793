//! The syslog sink's settings and the function that builds it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SyslogSink;
use crate::http::TlsConfig;
use crate::sink::SinkError;

/// How messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426); nothing confirms arrival.
    Udp,
    /// Octet-counted frames over TCP (RFC 6587 §3.4.1).
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425); the server certificate is verified.
    Tls,
}

/// What the MSG part of each RFC 5424 message holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// ArcSight Common Event Format.
    Cef,
    /// IBM QRadar Log Event Extended Format 2.0.
    Leef,
    /// The alert as JSON.
    Json,
}

/// Syslog (RFC 5424) with CEF, LEEF or JSON payloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogSinkConfig {
    /// `host:port` of the collector.
    pub address: String,
    /// "udp", "tcp" or "tls".
    pub transport: SyslogTransport,
    /// "cef", "leef" or "json".
    pub format: SyslogFormat,
    /// Syslog facility number (0–23; 16 = local0).
    pub facility: u8,
    /// HOSTNAME of the messages; unset: this machine's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// APP-NAME of the messages.
    pub app_name: String,
    /// The LEEF attribute delimiter (a caret by default: tabs get mangled by many relays).
    pub leef_delimiter: char,
    /// The server name the TLS certificate must carry; unset: the host part of `address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Longest message; longer ones are cut (UDP collectors typically take 2048 bytes or more).
    pub max_message_bytes: usize,
    /// Longest time connecting or writing may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS settings (`ca_file` for a private CA).
    pub tls: TlsConfig,
}

impl Default for SyslogSinkConfig {
    fn default() -> Self {
        SyslogSinkConfig {
            address: String::new(),
            transport: SyslogTransport::Tcp,
            format: SyslogFormat::Cef,
            facility: 16,
            hostname: None,
            app_name: "peergraph".into(),
            leef_delimiter: '^',
            server_name: None,
            max_message_bytes: 8192,
            timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
        }
    }
}

impl SyslogSinkConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(format!("syslog: address {:?} is not host:port", self.address));
        }
        if self.facility > 23 {
            return Err(format!("syslog: facility {} is above 23", self.facility));
        }
        if self.app_name.is_empty()
            || self.app_name.len() > 48
            || !self.app_name.bytes().all(|b| (33..=126).contains(&b))
        {
            return Err("syslog: app_name must be 1–48 printable ASCII characters".into());
        }
        if self.leef_delimiter == '=' || self.leef_delimiter == '\\' || self.leef_delimiter.is_alphanumeric() {
            return Err(format!("syslog: {:?} cannot be the LEEF delimiter", self.leef_delimiter));
        }
        if self.max_message_bytes < 480 {
            return Err("syslog: max_message_bytes must be at least 480 (RFC 5424's minimum)".into());
        }
        Ok(())
    }

    /// The host part of `address`, without IPv6 brackets.
    pub(crate) fn host(&self) -> &str {
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Prepares the sink; the connection is opened on first use.
    pub fn build(&self) -> Result<SyslogSink, SinkError> {
        self.validate().map_err(SinkError::permanent)?;
        SyslogSink::new(self.clone())
    }
}
