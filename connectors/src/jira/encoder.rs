//! Alert event → Jira issue fields and comment bodies, plain text for API v2 and Atlassian Document
//! Format for v3. Pure.
//! <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-post>

use peergraph_schemas::Alert;
use serde_json::{json, Value};

use super::JiraSinkConfig;
use crate::idempotency::event_key;
use crate::servicenow::describe;

/// Jira's limit on `summary`.
const SUMMARY_MAX_CHARS: usize = 255;

/// The label that finds the alert's issue again: `peergraph-<alert id>`, with anything a label
/// cannot hold (whitespace, quotes) replaced by `_`.
pub fn alert_label(alert_id: &str) -> String {
    let safe: String = alert_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    format!("peergraph-{safe}")
}

/// The JQL that finds the alert's issue.
pub fn search_jql(project_key: &str, alert_id: &str) -> String {
    format!("project = \"{}\" AND labels = \"{}\"", project_key.replace('"', ""), alert_label(alert_id))
}

/// A text body: a plain string for v2, an ADF document with one paragraph per line for v3.
pub fn body(api_version: u8, text: &str) -> Value {
    if api_version == 2 {
        return Value::from(text);
    }
    let paragraphs: Vec<Value> = text
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| json!({"type": "paragraph", "content": [{"type": "text", "text": line}]}))
        .collect();
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

/// The create-issue request for a raised alert.
pub fn new_issue(alert: &Alert, config: &JiraSinkConfig) -> Value {
    let summary: String = format!("[peergraph] {} on {}: {}", alert.detector, alert.entity, alert.summary)
        .chars()
        .filter(|c| *c != '\n' && *c != '\r')
        .take(SUMMARY_MAX_CHARS)
        .collect();
    let mut labels = vec!["peergraph".to_owned(), alert_label(&alert.alert_id)];
    labels.extend(config.labels.iter().cloned());
    json!({
        "fields": {
            "project": {"key": config.project_key},
            "issuetype": {"name": config.issue_type},
            "summary": summary,
            "description": body(config.api_version, &describe(alert)),
            "labels": labels,
        }
    })
}

/// The comment an update (or a clear) adds.
pub fn comment(alert: &Alert, api_version: u8) -> Value {
    json!({"body": body(api_version, &format!("peergraph {}\n{}", event_key(alert), describe(alert)))})
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    fn config(api_version: u8) -> JiraSinkConfig {
        JiraSinkConfig { project_key: "SEC".into(), api_version, labels: vec!["ndr".into()], ..Default::default() }
    }

    #[test]
    fn labels_and_jql_find_the_alert_again_and_cannot_be_injected() {
        assert_eq!(alert_label("1a2b"), "peergraph-1a2b");
        assert_eq!(alert_label("x\" OR 1=1"), "peergraph-x__OR_1_1");
        assert_eq!(search_jql("SEC", "1a2b"), "project = \"SEC\" AND labels = \"peergraph-1a2b\"");
    }

    #[test]
    fn v2_issues_have_text_descriptions_and_v3_issues_adf_documents() {
        let v2 = new_issue(&alert("1a2b", AlertEvent::Raised), &config(2));
        assert_eq!(v2["fields"]["project"]["key"], "SEC");
        assert_eq!(v2["fields"]["issuetype"]["name"], "Task");
        assert_eq!(v2["fields"]["labels"], json!(["peergraph", "peergraph-1a2b", "ndr"]));
        assert!(v2["fields"]["description"].as_str().expect("text").contains("Detector: peer_unique_destination"));
        let v3 = new_issue(&alert("1a2b", AlertEvent::Raised), &config(3));
        let description = &v3["fields"]["description"];
        assert_eq!((description["type"].as_str(), description["version"].as_i64()), (Some("doc"), Some(1)));
        assert_eq!(description["content"][0]["type"], "paragraph");
        assert_eq!(description["content"][0]["content"][0]["type"], "text");
        assert!(v3["fields"]["summary"].as_str().expect("summary").chars().count() <= 255);
    }
}
