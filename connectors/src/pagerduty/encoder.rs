//! Alert event → PagerDuty Events API v2 event. Pure.
//! <https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>

use peergraph_schemas::{Alert, AlertEvent, Severity};
use serde_json::{json, Value};

use crate::idempotency::{event_name, rfc3339_ms};

/// PagerDuty's limit on `payload.summary`.
const SUMMARY_MAX_CHARS: usize = 1024;

/// The Events API severity for an alert severity.
pub fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// The event for `alert`: `trigger` for raised and updated (PagerDuty folds repeated triggers with
/// one `dedup_key` into one alert), `resolve` for cleared.
pub fn encode_event(alert: &Alert, routing_key: &str, client_url: Option<&str>) -> Value {
    if alert.event == AlertEvent::Cleared {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": alert.alert_id,
        });
    }
    let summary: String = format!("[peergraph] {} on {}: {}", alert.detector, alert.entity, alert.summary)
        .chars()
        .take(SUMMARY_MAX_CHARS)
        .collect();
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.alert_id,
        "client": "peergraph",
        "payload": {
            "summary": summary,
            "source": alert.entity,
            "severity": severity(alert.severity),
            "timestamp": rfc3339_ms(alert.event_time_ms),
            "component": alert.entity,
            "group": alert.peer_group,
            "class": alert.detector,
            "custom_details": {
                "alert_id": alert.alert_id,
                "lifecycle_event": event_name(alert.event),
                "score": alert.score,
                "techniques": alert.techniques,
                "evidence": alert.evidence,
                "first_seen": rfc3339_ms(alert.first_seen_ms),
                "last_seen": rfc3339_ms(alert.last_seen_ms),
            },
        },
    });
    if let Some(url) = client_url {
        event["client_url"] = Value::from(url);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::alert;

    #[test]
    fn a_raised_alert_is_a_trigger_shaped_like_the_documented_example() {
        let event = encode_event(&alert("1a2b", AlertEvent::Raised), "R0UT1NGK3Y", Some("https://peergraph/a/1a2b"));
        assert_eq!(
            event,
            json!({
                "routing_key": "R0UT1NGK3Y",
                "event_action": "trigger",
                "dedup_key": "1a2b",
                "client": "peergraph",
                "client_url": "https://peergraph/a/1a2b",
                "payload": {
                    "summary": "[peergraph] peer_unique_destination on pod:shop/web-7d9f-x2: talks to 203.0.113.9:443, which no other web replica does",
                    "source": "pod:shop/web-7d9f-x2",
                    "severity": "error",
                    "timestamp": "2023-11-14T22:13:20.000Z",
                    "component": "pod:shop/web-7d9f-x2",
                    "group": "workload:shop/Deployment/web",
                    "class": "peer_unique_destination",
                    "custom_details": {
                        "alert_id": "1a2b",
                        "lifecycle_event": "raised",
                        "score": 82.5,
                        "techniques": ["T1071", "T1195.002"],
                        "evidence": {"destination": "203.0.113.9:443"},
                        "first_seen": "2023-11-14T22:13:20.000Z",
                        "last_seen": "2023-11-14T22:14:20.000Z",
                    },
                },
            })
        );
    }

    #[test]
    fn a_cleared_alert_resolves_by_dedup_key_only() {
        let event = encode_event(&alert("1a2b", AlertEvent::Cleared), "K", None);
        assert_eq!(event, json!({"routing_key": "K", "event_action": "resolve", "dedup_key": "1a2b"}));
    }

    #[test]
    fn summaries_are_cut_at_the_documented_limit() {
        let mut long = alert("x", AlertEvent::Raised);
        long.summary = "é".repeat(5000);
        let event = encode_event(&long, "K", None);
        assert_eq!(event["payload"]["summary"].as_str().expect("summary").chars().count(), 1024);
        assert_eq!(severity(Severity::Critical), "critical");
        assert_eq!(severity(Severity::Info), "info");
    }
}
