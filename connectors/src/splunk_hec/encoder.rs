//! Alert event → HEC event JSON; batches are these objects concatenated. Pure.
//! <https://docs.splunk.com/Documentation/Splunk/latest/Data/FormateventsforHTTPEventCollector>

use peergraph_schemas::Alert;
use serde_json::{json, Value};

use super::SplunkHecSinkConfig;
use crate::idempotency::{event_key, event_name};

/// One HEC event: `time` in epoch seconds (with ms), metadata, the alert as `event`, and indexed
/// `fields` (string values only) for fast searches and `| dedup event_key`.
pub fn encode_event(alert: &Alert, config: &SplunkHecSinkConfig) -> Value {
    let mut event = json!({
        "time": alert.event_time_ms as f64 / 1000.0,
        "host": config.host.clone().unwrap_or_else(|| alert.entity.clone()),
        "source": config.source,
        "sourcetype": config.sourcetype,
        "event": alert,
        "fields": {
            "alert_id": alert.alert_id,
            "event_key": event_key(alert),
            "lifecycle_event": event_name(alert.event),
            "detector": alert.detector,
            "techniques": alert.techniques,
        },
    });
    if let Some(index) = &config.index {
        event["index"] = Value::from(index.as_str());
    }
    event
}

/// Splits the encoded events into request bodies of at most `max_bytes` (an event larger than that
/// goes alone). Returns, per body, the positions of its events.
pub fn split_bodies(events: &[Vec<u8>], max_bytes: usize) -> Vec<(Vec<u8>, Vec<usize>)> {
    let mut bodies: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
    for (position, event) in events.iter().enumerate() {
        match bodies.last_mut() {
            Some((body, members)) if body.len() + event.len() <= max_bytes => {
                body.extend_from_slice(event);
                members.push(position);
            }
            _ => bodies.push((event.clone(), vec![position])),
        }
    }
    bodies
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    #[test]
    fn an_event_has_the_documented_metadata_keys_and_the_alert_as_its_event() {
        let config = SplunkHecSinkConfig { index: Some("ndr".into()), ..Default::default() };
        let event = encode_event(&alert("1a2b", AlertEvent::Raised), &config);
        assert_eq!(event["time"], 1_700_000_000.0);
        assert_eq!(event["host"], "pod:shop/web-7d9f-x2");
        assert_eq!(
            (event["source"].as_str(), event["sourcetype"].as_str()),
            (Some("peergraph"), Some("peergraph:alert"))
        );
        assert_eq!(event["index"], "ndr");
        assert_eq!(event["event"]["alert_id"], "1a2b");
        assert_eq!(event["fields"]["event_key"], "1a2b:raised:1700000000000");
        let keys: Vec<&String> = event.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["event", "fields", "host", "index", "source", "sourcetype", "time"]);
    }

    #[test]
    fn bodies_stay_under_the_byte_limit() {
        let events: Vec<Vec<u8>> = [400, 400, 400, 1500, 10].iter().map(|&n| vec![b'x'; n]).collect();
        let bodies = split_bodies(&events, 1000);
        let members: Vec<Vec<usize>> = bodies.iter().map(|(_, members)| members.clone()).collect();
        assert_eq!(members, [vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(bodies[0].0.len(), 800);
    }
}
