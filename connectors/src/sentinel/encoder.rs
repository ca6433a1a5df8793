//! Alert event → Logs Ingestion API record (the columns of the `PeergraphAlerts_CL` table the
//! data collection rule declares; see docs/connectors.md). Pure.
//! <https://learn.microsoft.com/azure/azure-monitor/logs/logs-ingestion-api-overview>

use peergraph_schemas::Alert;
use serde_json::{json, Value};

use crate::idempotency::{event_key, event_name, rfc3339_ms};

/// One record. `TimeGenerated` is required by every custom table.
pub fn encode_record(alert: &Alert) -> Value {
    json!({
        "TimeGenerated": rfc3339_ms(alert.event_time_ms),
        "AlertId": alert.alert_id,
        "EventKey": event_key(alert),
        "LifecycleEvent": event_name(alert.event),
        "Detector": alert.detector,
        "Severity": format!("{:?}", alert.severity),
        "Score": alert.score,
        "Entity": alert.entity,
        "PeerGroup": alert.peer_group,
        "Summary": alert.summary,
        "Techniques": alert.techniques,
        "Evidence": alert.evidence,
        "FirstSeen": rfc3339_ms(alert.first_seen_ms),
        "LastSeen": rfc3339_ms(alert.last_seen_ms),
    })
}

/// Splits records into JSON-array bodies of at most `max_bytes`; returns each body and its count.
pub fn array_bodies(records: &[Value], max_bytes: usize) -> Result<Vec<(Vec<u8>, usize)>, serde_json::Error> {
    let mut bodies: Vec<(Vec<u8>, usize)> = Vec::new();
    for record in records {
        let encoded = serde_json::to_vec(record)?;
        match bodies.last_mut() {
            // +1 for the comma, +1 for the closing bracket.
            Some((body, count)) if body.len() + encoded.len() + 2 <= max_bytes => {
                body.push(b',');
                body.extend_from_slice(&encoded);
                *count += 1;
            }
            _ => {
                let mut body = Vec::with_capacity(encoded.len() + 2);
                body.push(b'[');
                body.extend_from_slice(&encoded);
                bodies.push((body, 1));
            }
        }
    }
    for (body, _) in &mut bodies {
        body.push(b']');
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    #[test]
    fn a_record_has_time_generated_and_the_alert_columns() {
        let record = encode_record(&alert("1a2b", AlertEvent::Updated));
        assert_eq!(record["TimeGenerated"], "2023-11-14T22:13:50.000Z");
        assert_eq!(record["AlertId"], "1a2b");
        assert_eq!(record["LifecycleEvent"], "updated");
        assert_eq!(record["Severity"], "High");
        assert_eq!(record["Techniques"], json!(["T1071", "T1195.002"]));
    }

    #[test]
    fn bodies_are_json_arrays_under_the_limit() {
        let records: Vec<Value> =
            (0..50).map(|n| encode_record(&alert(&format!("a{n}"), AlertEvent::Raised))).collect();
        let bodies = array_bodies(&records, 4096).expect("encodes");
        assert!(bodies.len() > 1);
        let mut total = 0;
        for (body, count) in &bodies {
            assert!(body.len() <= 4096, "{}", body.len());
            let parsed: Vec<Value> = serde_json::from_slice(body).expect("a JSON array");
            assert_eq!(parsed.len(), *count);
            total += count;
        }
        assert_eq!(total, 50);
    }
}
