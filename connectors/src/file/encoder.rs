//! Alert → one JSON line, the same JSON as the alerts topic's `json` wire format. Pure; the writing
//! is in `mod.rs`.

use peergraph_schemas::Alert;

/// Appends `alert` as one JSON object and a newline to `out`. JSON escapes every newline inside
/// strings, so a line is always exactly one alert event. On error `out` is left as it was.
pub fn encode_line(alert: &Alert, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let start = out.len();
    match serde_json::to_writer(&mut *out, alert) {
        Ok(()) => {
            out.push(b'\n');
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use peergraph_schemas::{AlertEvent, Severity};

    use super::*;

    fn alert() -> Alert {
        Alert {
            alert_id: "1a2b3c".into(),
            event: AlertEvent::Updated,
            detector: "beaconing".into(),
            severity: Severity::Critical,
            score: 93.5,
            entity: "pod:shop/web-2".into(),
            peer_group: None,
            summary: "every 60 s to\n203.0.113.9".into(),
            evidence: BTreeMap::from([("interval_s".to_string(), "60".to_string())]),
            techniques: vec!["T1071".into()],
            first_seen_ms: 1,
            last_seen_ms: 2,
            event_time_ms: 3,
        }
    }

    #[test]
    fn one_alert_is_one_json_line_with_the_topic_field_names() {
        let mut out = Vec::new();
        encode_line(&alert(), &mut out).expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            concat!(
                r#"{"alert_id":"1a2b3c","event":"updated","detector":"beaconing","severity":"critical","#,
                r#""score":93.5,"entity":"pod:shop/web-2","peer_group":null,"summary":"every 60 s to\n203.0.113.9","#,
                r#""evidence":{"interval_s":"60"},"techniques":["T1071"],"first_seen_ms":1,"last_seen_ms":2,"#,
                r#""event_time_ms":3}"#,
                "\n"
            )
        );
    }

    #[test]
    fn lines_append_and_read_back_as_the_same_alerts() {
        let mut out = b"earlier\n".to_vec();
        let mut cleared = alert();
        cleared.event = AlertEvent::Cleared;
        encode_line(&alert(), &mut out).expect("encodes");
        encode_line(&cleared, &mut out).expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "earlier");
        let back: Vec<Alert> = lines[1..].iter().map(|line| serde_json::from_str(line).expect("parses")).collect();
        assert_eq!(back, [alert(), cleared]);
    }
}
