//! Alert event → RFC 5424 syslog message with a CEF, LEEF 2.0 or JSON payload, and the octet-counted
//! frame. Pure. Every field that carries alert text is escaped as its format demands, and no
//! message contains a line break, so one alert event is always exactly one message.

use std::fmt::Write as _;

use peergraph_schemas::{Alert, Severity};

use super::{SyslogFormat, SyslogSinkConfig};
use crate::idempotency::{event_key, event_name, rfc3339_ms};

/// Our structured-data id: "peergraph" at the IANA example enterprise number (RFC 5612).
const SD_ID: &str = "peergraph@32473";

/// The syslog severity (0 emergency … 7 debug) of an alert severity.
pub fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// The 0–10 severity CEF and LEEF use.
pub fn event_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// An RFC 5424 header field (HOSTNAME, APP-NAME, MSGID): printable ASCII, no spaces, "-" when empty.
fn header_field(value: &str, max: usize) -> String {
    let cleaned: String = value.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// An SD-PARAM value: `"`, `\` and `]` are escaped with a backslash (RFC 5424 §6.3.3); line breaks
/// are written as `\n` so the message stays one line.
pub fn escape_sd_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A CEF header field: `\` and `|` are escaped; line breaks become spaces (not allowed in headers).
pub fn escape_cef_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A CEF extension value: `\` and `=` are escaped, line breaks written as `\n` / `\r`.
pub fn escape_cef_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A LEEF header field: `\` and `|` are escaped, line breaks become spaces.
pub fn escape_leef_header(value: &str) -> String {
    escape_cef_header(value)
}

/// A LEEF attribute value: `\` and the delimiter are escaped, line breaks written as `\n` / `\r`.
pub fn escape_leef_value(value: &str, delimiter: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == delimiter => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The source address when the entity is an IP address.
fn entity_ip(alert: &Alert) -> Option<&str> {
    alert.entity.strip_prefix("ip:").filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
}

/// `CEF:0|peergraph|peergraph|<version>|<detector>|<summary>|<0-10>|<extension>`.
pub fn cef(alert: &Alert) -> String {
    let mut out = format!(
        "CEF:0|peergraph|peergraph|{}|{}|{}|{}|",
        escape_cef_header(env!("CARGO_PKG_VERSION")),
        escape_cef_header(&alert.detector),
        escape_cef_header(&alert.summary),
        event_severity(alert.severity)
    );
    let mut extension: Vec<(&str, String)> = vec![
        ("rt", alert.event_time_ms.to_string()),
        ("act", event_name(alert.event).into()),
        ("cat", alert.detector.clone()),
        ("externalId", alert.alert_id.clone()),
        ("msg", alert.summary.clone()),
        ("start", alert.first_seen_ms.to_string()),
        ("end", alert.last_seen_ms.to_string()),
        ("cs1Label", "entity".into()),
        ("cs1", alert.entity.clone()),
        ("cs2Label", "peerGroup".into()),
        ("cs2", alert.peer_group.clone().unwrap_or_default()),
        ("cs3Label", "techniques".into()),
        ("cs3", alert.techniques.join(",")),
        ("cs4Label", "eventKey".into()),
        ("cs4", event_key(alert)),
        ("cfp1Label", "score".into()),
        ("cfp1", alert.score.to_string()),
    ];
    if let Some(ip) = entity_ip(alert) {
        extension.push(("src", ip.to_owned()));
    }
    let fields: Vec<String> =
        extension.into_iter().map(|(key, value)| format!("{key}={}", escape_cef_value(&value))).collect();
    out.push_str(&fields.join(" "));
    out
}

/// `LEEF:2.0|peergraph|peergraph|<version>|<detector>|<delimiter>|<attributes>`.
pub fn leef(alert: &Alert, delimiter: char) -> String {
    let shown_delimiter =
        if delimiter.is_ascii_graphic() { delimiter.to_string() } else { format!("x{:02X}", delimiter as u32) };
    let mut out = format!(
        "LEEF:2.0|peergraph|peergraph|{}|{}|{}|",
        escape_leef_header(env!("CARGO_PKG_VERSION")),
        escape_leef_header(&alert.detector),
        shown_delimiter
    );
    let mut attributes: Vec<(&str, String)> = vec![
        ("devTime", rfc3339_ms(alert.event_time_ms)),
        ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSX".into()),
        ("sev", event_severity(alert.severity).to_string()),
        ("cat", alert.detector.clone()),
        ("action", event_name(alert.event).into()),
        ("alertId", alert.alert_id.clone()),
        ("eventKey", event_key(alert)),
        ("entity", alert.entity.clone()),
        ("peerGroup", alert.peer_group.clone().unwrap_or_default()),
        ("techniques", alert.techniques.join(",")),
        ("score", alert.score.to_string()),
        ("msg", alert.summary.clone()),
    ];
    if let Some(ip) = entity_ip(alert) {
        attributes.push(("src", ip.to_owned()));
    }
    let fields: Vec<String> =
        attributes.into_iter().map(|(key, value)| format!("{key}={}", escape_leef_value(&value, delimiter))).collect();
    out.push_str(&fields.join(&delimiter.to_string()));
    out
}

/// The whole RFC 5424 message (no framing, no trailing newline).
pub fn rfc5424(alert: &Alert, config: &SyslogSinkConfig, hostname: &str, pid: u32) -> String {
    let priority = u32::from(config.facility) * 8 + u32::from(syslog_severity(alert.severity));
    let mut out = format!(
        "<{priority}>1 {} {} {} {pid} {} ",
        rfc3339_ms(alert.event_time_ms),
        header_field(hostname, 255),
        header_field(&config.app_name, 48),
        header_field(event_name(alert.event), 32),
    );
    let _ = write!(
        out,
        "[{SD_ID} alertId=\"{}\" event=\"{}\" detector=\"{}\" severity=\"{}\"] ",
        escape_sd_value(&alert.alert_id),
        event_name(alert.event),
        escape_sd_value(&alert.detector),
        format!("{:?}", alert.severity).to_lowercase(),
    );
    match config.format {
        SyslogFormat::Cef => out.push_str(&cef(alert)),
        SyslogFormat::Leef => out.push_str(&leef(alert, config.leef_delimiter)),
        // serde_json escapes every control character, so JSON is one line too.
        SyslogFormat::Json => out.push_str(&serde_json::to_string(alert).unwrap_or_default()),
    }
    truncate(out, config.max_message_bytes)
}

/// Cuts `message` to at most `max` bytes on a character boundary.
fn truncate(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// RFC 6587 octet counting: `<length> <message>`.
pub fn octet_counted(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message.as_bytes());
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    fn hostile() -> Alert {
        let mut alert = alert("1a2b", AlertEvent::Raised);
        alert.detector = "scan|sweep".into();
        alert.summary = "a=b | c\\d\nnext ] \"q\" ^caret".into();
        alert.entity = "ip:10.0.0.5".into();
        alert
    }

    #[test]
    fn cef_escapes_pipes_and_backslashes_in_the_header_and_equals_and_newlines_in_extensions() {
        let text = cef(&hostile());
        assert!(
            text.starts_with(&format!(
                "CEF:0|peergraph|peergraph|{}|scan\\|sweep|a=b \\| c\\\\d next ] \"q\" ^caret|8|rt=1700000000000 act=raised cat=scan|sweep ",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains(r#" msg=a\=b | c\\d\nnext ] "q" ^caret "#), "{text}");
        assert!(text.ends_with(" src=10.0.0.5"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn leef_escapes_the_delimiter_and_declares_it_in_the_header() {
        let text = leef(&hostile(), '^');
        assert!(
            text.starts_with(&format!(
                "LEEF:2.0|peergraph|peergraph|{}|scan\\|sweep|^|devTime=2023-11-14T22:13:20.000Z^",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains(r#"^msg=a=b | c\\d\nnext ] "q" \^caret"#), "{text}");
        assert!(text.contains("^sev=8^"), "{text}");
        let tabbed = leef(&hostile(), '\t');
        assert!(tabbed.contains("|x09|devTime="), "{tabbed}");
    }

    #[test]
    fn the_rfc5424_message_has_pri_version_header_fields_and_escaped_structured_data() {
        let config = SyslogSinkConfig { address: "localhost:514".into(), facility: 16, ..Default::default() };
        let mut alert = hostile();
        alert.alert_id = "id]\"x".into();
        let message = rfc5424(&alert, &config, "ndr-1", 42);
        // local0 (16) * 8 + err (3) = 131.
        assert!(
            message.starts_with(
                "<131>1 2023-11-14T22:13:20.000Z ndr-1 peergraph 42 raised \
                 [peergraph@32473 alertId=\"id\\]\\\"x\" event=\"raised\" detector=\"scan|sweep\" severity=\"high\"] CEF:0|"
            ),
            "{message}"
        );
        let mut framed = Vec::new();
        octet_counted("<13>1 - - - - - - hi", &mut framed);
        assert_eq!(framed, b"20 <13>1 - - - - - - hi");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let config = SyslogSinkConfig { address: "h:1".into(), max_message_bytes: 480, ..Default::default() };
        let mut long = alert("a", AlertEvent::Raised);
        long.summary = "é".repeat(1000);
        let message = rfc5424(&long, &config, "h", 1);
        assert!(message.len() <= 480 && message.len() >= 478, "{}", message.len());
    }
}
