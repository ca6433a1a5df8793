//! Alert event → Elastic Common Schema document and `_bulk` action lines. Pure.
//! <https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html>,
//! <https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html>

use peergraph_schemas::{Alert, AlertEvent, Severity};
use serde_json::{json, Value};

use crate::idempotency::{event_key, event_name, rfc3339_ms};
use crate::routing::namespace_of;

/// The document id: the same for every delivery of one alert event.
pub fn document_id(alert: &Alert) -> String {
    format!("{}-{}-{}", alert.alert_id, event_name(alert.event), alert.event_time_ms)
}

/// ECS `event.severity` (numeric) for a severity, on the 0–100 scale ECS risk scores use.
pub fn ecs_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 0,
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    }
}

/// The ECS document of one alert event.
pub fn ecs_document(alert: &Alert) -> Value {
    let mut document = json!({
        "@timestamp": rfc3339_ms(alert.event_time_ms),
        "message": alert.summary,
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "action": event_name(alert.event),
            "id": event_key(alert),
            "severity": ecs_severity(alert.severity),
            "risk_score": alert.score,
            "start": rfc3339_ms(alert.first_seen_ms),
            "dataset": "peergraph.alerts",
            "module": "peergraph",
            "provider": "peergraph",
        },
        "rule": {"id": alert.detector, "name": alert.detector, "ruleset": "peergraph"},
        "observer": {"vendor": "peergraph", "product": "peergraph", "type": "ndr"},
        "threat": {
            "framework": "MITRE ATT&CK",
            "technique": {"id": alert.techniques},
        },
        "peergraph": {
            "alert_id": alert.alert_id,
            "entity": alert.entity,
            "peer_group": alert.peer_group,
            "severity": format!("{:?}", alert.severity).to_lowercase(),
            "score": alert.score,
            "evidence": alert.evidence,
            "first_seen": rfc3339_ms(alert.first_seen_ms),
            "last_seen": rfc3339_ms(alert.last_seen_ms),
        },
    });
    if alert.event == AlertEvent::Cleared {
        document["event"]["end"] = Value::from(rfc3339_ms(alert.event_time_ms));
    }
    // The entity, in the ECS field that fits its kind.
    if let Some(namespace) = namespace_of(alert) {
        document["orchestrator"] = json!({"type": "kubernetes", "namespace": namespace});
    }
    if let Some(pod) = alert.entity.strip_prefix("pod:").and_then(|rest| rest.split_once('/')).map(|(_, pod)| pod) {
        document["orchestrator"]["resource"] = json!({"type": "pod", "name": pod});
    } else if let Some(ip) = alert.entity.strip_prefix("ip:") {
        document["host"] = json!({"ip": [ip]});
    } else if let Some(host) = alert.entity.strip_prefix("host:") {
        document["host"] = json!({"name": host});
    }
    document
}

/// The two NDJSON lines of one alert event in a `_bulk` body: `create` (so a replay cannot
/// overwrite) and the document.
pub fn bulk_lines(alert: &Alert, index: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let action = json!({"create": {"_index": index, "_id": document_id(alert)}});
    serde_json::to_writer(&mut *out, &action)?;
    out.push(b'\n');
    serde_json::to_writer(&mut *out, &ecs_document(alert))?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::alert;

    #[test]
    fn the_document_uses_ecs_fields_and_a_replayable_id() {
        let raised = alert("1a2b", AlertEvent::Raised);
        assert_eq!(document_id(&raised), "1a2b-raised-1700000000000");
        let document = ecs_document(&raised);
        assert_eq!(document["@timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(document["event"]["kind"], "alert");
        assert_eq!(document["event"]["action"], "raised");
        assert_eq!(document["event"]["severity"], 73);
        assert_eq!(document["event"]["risk_score"], 82.5);
        assert_eq!(document["rule"]["name"], "peer_unique_destination");
        assert_eq!(document["threat"]["technique"]["id"], json!(["T1071", "T1195.002"]));
        assert_eq!(document["orchestrator"]["namespace"], "shop");
        assert_eq!(document["orchestrator"]["resource"]["name"], "web-7d9f-x2");
        assert!(document["event"].get("end").is_none());
        let cleared = ecs_document(&alert("1a2b", AlertEvent::Cleared));
        assert_eq!(cleared["event"]["end"], "2023-11-14T22:14:20.000Z");
        let mut by_ip = alert("x", AlertEvent::Raised);
        by_ip.entity = "ip:10.0.0.5".into();
        by_ip.peer_group = None;
        assert_eq!(ecs_document(&by_ip)["host"]["ip"], json!(["10.0.0.5"]));
    }

    #[test]
    fn bulk_lines_are_an_action_and_a_source_each_ending_in_a_newline() {
        let mut out = Vec::new();
        bulk_lines(&alert("1a2b", AlertEvent::Raised), "peergraph-alerts", &mut out).expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], r#"{"create":{"_id":"1a2b-raised-1700000000000","_index":"peergraph-alerts"}}"#);
        assert!(text.ends_with('\n'));
    }
}
