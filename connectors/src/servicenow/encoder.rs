//! Alert event → ServiceNow Table API record fields. Pure.
//! <https://docs.servicenow.com/bundle/latest/page/integrate/inbound-rest/concept/c_TableAPI.html>

use peergraph_schemas::{Alert, Severity};
use serde_json::{json, Map, Value};

use super::ServiceNowSinkConfig;
use crate::idempotency::{event_key, rfc3339_ms};

/// `short_description` is a 160-character field in the incident table.
const SHORT_DESCRIPTION_MAX_CHARS: usize = 160;

/// (impact, urgency), 1 = high; the incident's priority follows from both.
pub fn impact_and_urgency(severity: Severity) -> (&'static str, &'static str) {
    match severity {
        Severity::Critical => ("1", "1"),
        Severity::High => ("2", "1"),
        Severity::Medium => ("2", "2"),
        Severity::Low => ("3", "2"),
        Severity::Info => ("3", "3"),
    }
}

/// The human-readable body: summary, entity, evidence, techniques.
pub fn describe(alert: &Alert) -> String {
    let mut text = format!(
        "{}\n\nDetector: {}\nEntity: {}\nSeverity: {:?} (score {})\nFirst seen: {}\nLast seen: {}\n",
        alert.summary,
        alert.detector,
        alert.entity,
        alert.severity,
        alert.score,
        rfc3339_ms(alert.first_seen_ms),
        rfc3339_ms(alert.last_seen_ms)
    );
    if let Some(group) = &alert.peer_group {
        text.push_str(&format!("Peer group: {group}\n"));
    }
    if !alert.techniques.is_empty() {
        text.push_str(&format!("ATT&CK: {}\n", alert.techniques.join(", ")));
    }
    for (key, value) in &alert.evidence {
        text.push_str(&format!("Evidence {key}: {value}\n"));
    }
    text.push_str(&format!("peergraph alert id: {}\n", alert.alert_id));
    text
}

/// The fields of a new incident for a raised alert.
pub fn new_incident(alert: &Alert, config: &ServiceNowSinkConfig) -> Value {
    let (impact, urgency) = impact_and_urgency(alert.severity);
    let short: String = format!("[peergraph] {}: {}", alert.detector, alert.summary)
        .chars()
        .take(SHORT_DESCRIPTION_MAX_CHARS)
        .collect();
    let mut fields = Map::new();
    fields.insert("short_description".into(), short.into());
    fields.insert("description".into(), describe(alert).into());
    fields.insert("correlation_id".into(), alert.alert_id.clone().into());
    fields.insert("correlation_display".into(), "peergraph".into());
    fields.insert("category".into(), config.category.clone().into());
    fields.insert("impact".into(), impact.into());
    fields.insert("urgency".into(), urgency.into());
    if let Some(group) = &config.assignment_group {
        fields.insert("assignment_group".into(), group.clone().into());
    }
    Value::Object(fields)
}

/// The work note an update adds; it names the event, so a reader can tell repeats apart.
pub fn update_note(alert: &Alert) -> Value {
    json!({
        "work_notes": format!("peergraph update ({}):\n{}", event_key(alert), describe(alert)),
    })
}

/// The fields that resolve the incident of a cleared alert.
pub fn resolution(alert: &Alert, config: &ServiceNowSinkConfig) -> Value {
    json!({
        "state": config.resolved_state,
        "close_code": config.close_code,
        "close_notes": format!(
            "peergraph cleared the alert at {}: the finding no longer holds ({}).",
            rfc3339_ms(alert.event_time_ms),
            event_key(alert)
        ),
    })
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    #[test]
    fn a_new_incident_carries_the_alert_id_as_correlation_id() {
        let config = ServiceNowSinkConfig { assignment_group: Some("SOC".into()), ..Default::default() };
        let fields = new_incident(&alert("1a2b", AlertEvent::Raised), &config);
        assert_eq!(fields["correlation_id"], "1a2b");
        assert_eq!(fields["correlation_display"], "peergraph");
        assert_eq!((fields["impact"].as_str(), fields["urgency"].as_str()), (Some("2"), Some("1")));
        assert_eq!(fields["assignment_group"], "SOC");
        assert_eq!(fields["category"], "security");
        let short = fields["short_description"].as_str().expect("text");
        assert!(short.starts_with("[peergraph] peer_unique_destination: talks to"), "{short}");
        assert!(short.chars().count() <= 160);
        let description = fields["description"].as_str().expect("text");
        assert!(description.contains("ATT&CK: T1071, T1195.002") && description.contains("Evidence destination"));
    }

    #[test]
    fn a_resolution_sets_the_configured_state_and_close_code() {
        let fields = resolution(&alert("1a2b", AlertEvent::Cleared), &ServiceNowSinkConfig::default());
        assert_eq!((fields["state"].as_str(), fields["close_code"].as_str()), (Some("6"), Some("Resolved by caller")));
        assert!(fields["close_notes"].as_str().expect("notes").contains("1a2b:cleared"));
    }
}
