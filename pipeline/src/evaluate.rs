//! `peergraph evaluate`: detection efficacy against the simulator's ground truth. Each label (an
//! injected attack) is detected when the detector made for its class raised an alert on the
//! label's entity between the attack's start and one slack (a window) after its end. A raised
//! alert is explained when some label has its entity and time; every other raised alert is a
//! false positive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use peergraph_schemas::{Alert, AlertEvent};
use serde::Serialize;

use crate::simulate::Label;

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The simulator's labels file (JSON lines).
    #[arg(long)]
    pub labels: PathBuf,
    /// The alerts, as JSON lines (what `peergraph connect --file` writes).
    #[arg(long)]
    pub alerts: PathBuf,
    /// How long after an attack's end its alerts still count (the detection window).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub slack: Duration,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The detector made for an attack class.
pub fn expected_detector(attack: &str) -> Option<&'static str> {
    Some(match attack {
        "swapped_image" => "peer_unique_destination",
        "port_scan" | "sweep" => "scan",
        "beacon" => "beaconing",
        "exfiltration" => "exfiltration",
        "lateral_movement" => "lateral_movement",
        "intel_hit" => "threat_intel",
        _ => return None,
    })
}

/// How one label fared.
#[derive(Clone, Debug, Serialize)]
pub struct LabelResult {
    pub label: Label,
    pub expected_detector: Option<&'static str>,
    /// Whether the expected detector raised an alert on the entity in time.
    pub detected: bool,
    /// From the attack's start to the first such alert.
    pub delay_ms: Option<i64>,
    /// Every detector that raised an alert on the entity in time.
    pub detectors: Vec<String>,
}

/// Efficacy of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Efficacy {
    pub results: Vec<LabelResult>,
    /// Raised alerts (lifecycle `raised` events).
    pub raised: usize,
    /// Raised alerts no label explains, as (detector, entity, event time, summary).
    pub false_positives: Vec<(String, String, i64, String)>,
}

impl Efficacy {
    pub fn detected(&self) -> usize {
        self.results.iter().filter(|r| r.detected).count()
    }

    /// False positives per detector.
    pub fn false_positives_by_detector(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for (detector, ..) in &self.false_positives {
            *counts.entry(detector.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// The efficacy table, times relative to `origin_ms`.
    pub fn table(&self, origin_ms: i64) -> String {
        let at = |ms: i64| {
            let s = (ms - origin_ms) / 1000;
            format!("+{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        };
        let mut out = format!(
            "{:<17} {:<34} {:>9} {:>9} {:>6} {:<24} {:<8} {:>7}  {}\n",
            "attack",
            "entity",
            "start",
            "end",
            "flows",
            "expected detector",
            "detected",
            "delay",
            "alerts on the entity"
        );
        for r in &self.results {
            out += &format!(
                "{:<17} {:<34} {:>9} {:>9} {:>6} {:<24} {:<8} {:>7}  {}\n",
                r.label.attack,
                r.label.entity,
                at(r.label.start_ms),
                at(r.label.end_ms),
                r.label.flows,
                r.expected_detector.unwrap_or("-"),
                if r.detected { "yes" } else { "NO" },
                r.delay_ms.map(|d| format!("{}s", d / 1000)).unwrap_or_else(|| "-".into()),
                r.detectors.join(", "),
            );
        }
        out += &format!(
            "\ndetected {} of {} attacks; {} alerts raised, {} false positives",
            self.detected(),
            self.results.len(),
            self.raised,
            self.false_positives.len()
        );
        let by_detector = self.false_positives_by_detector();
        if !by_detector.is_empty() {
            let list: Vec<String> = by_detector.iter().map(|(d, n)| format!("{d} {n}")).collect();
            out += &format!(" ({})", list.join(", "));
        }
        out += "\n";
        for (detector, entity, time, summary) in &self.false_positives {
            out += &format!("  false positive: {detector} {entity} {}: {summary}\n", at(*time));
        }
        out
    }
}

/// Judges `alerts` against `labels`; an alert counts for a label from its start to `slack_ms`
/// after its end.
pub fn evaluate(labels: &[Label], alerts: &[Alert], slack_ms: i64) -> Efficacy {
    let raised: Vec<&Alert> = alerts.iter().filter(|a| a.event == AlertEvent::Raised).collect();
    let explains = |label: &Label, alert: &Alert| {
        alert.entity == label.entity
            && alert.event_time_ms >= label.start_ms
            && alert.event_time_ms <= label.end_ms + slack_ms
    };
    let results = labels
        .iter()
        .map(|label| {
            let expected = expected_detector(&label.attack);
            let on_entity: Vec<&&Alert> = raised.iter().filter(|a| explains(label, a)).collect();
            let first =
                on_entity.iter().filter(|a| Some(a.detector.as_str()) == expected).map(|a| a.event_time_ms).min();
            let mut detectors: Vec<String> = on_entity.iter().map(|a| a.detector.clone()).collect();
            detectors.sort();
            detectors.dedup();
            LabelResult {
                label: label.clone(),
                expected_detector: expected,
                detected: first.is_some(),
                delay_ms: first.map(|t| t - label.start_ms),
                detectors,
            }
        })
        .collect();
    let false_positives = raised
        .iter()
        .filter(|a| !labels.iter().any(|label| explains(label, a)))
        .map(|a| (a.detector.clone(), a.entity.clone(), a.event_time_ms, a.summary.clone()))
        .collect();
    Efficacy { results, raised: raised.len(), false_positives }
}

/// Reads a JSON-lines alerts file.
pub fn read_alerts(path: &std::path::Path) -> anyhow::Result<Vec<Alert>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading alerts file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}: not an alert", path.display(), n + 1))
        })
        .collect()
}

/// `peergraph evaluate`: prints the efficacy table (or JSON).
pub fn run(args: &EvaluateArgs) -> anyhow::Result<Efficacy> {
    let labels = crate::simulate::labels::read(&args.labels)?;
    let alerts = read_alerts(&args.alerts)?;
    let efficacy = evaluate(&labels, &alerts, args.slack.as_millis() as i64);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&efficacy)?);
    } else {
        let origin = labels.iter().map(|l| l.start_ms).chain(alerts.iter().map(|a| a.event_time_ms)).min();
        let origin = origin.unwrap_or(0);
        println!(
            "times from {}",
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(origin.max(0) as u64))
        );
        print!("{}", efficacy.table(origin));
    }
    Ok(efficacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(detector: &str, entity: &str, at: i64, event: AlertEvent) -> Alert {
        Alert {
            alert_id: format!("{detector}/{entity}/{at}"),
            event,
            detector: detector.into(),
            severity: peergraph_schemas::Severity::High,
            score: 80.0,
            entity: entity.into(),
            peer_group: None,
            summary: "s".into(),
            evidence: BTreeMap::new(),
            techniques: Vec::new(),
            first_seen_ms: at,
            last_seen_ms: at,
            event_time_ms: at,
        }
    }

    #[test]
    fn a_label_is_detected_by_its_detector_on_its_entity_in_time_and_the_rest_are_false_positives() {
        let label = |attack: &str, entity: &str| Label {
            entity: entity.into(),
            attack: attack.into(),
            start_ms: 1_000,
            end_ms: 2_000,
            ..Label::default()
        };
        let labels = [label("beacon", "host:10.0.0.1"), label("port_scan", "host:10.0.0.2")];
        let alerts = [
            alert("beaconing", "host:10.0.0.1", 1_500, AlertEvent::Raised),
            alert("beaconing", "host:10.0.0.1", 1_600, AlertEvent::Updated),
            alert("new_edge", "host:10.0.0.1", 1_700, AlertEvent::Raised),
            // The right detector on the right entity, too late.
            alert("scan", "host:10.0.0.2", 2_600, AlertEvent::Raised),
            alert("scan", "host:10.0.0.3", 1_500, AlertEvent::Raised),
        ];
        let efficacy = evaluate(&labels, &alerts, 500);
        assert_eq!(efficacy.raised, 4);
        assert!(efficacy.results[0].detected);
        assert_eq!(efficacy.results[0].delay_ms, Some(500));
        assert_eq!(efficacy.results[0].detectors, ["beaconing", "new_edge"]);
        assert!(!efficacy.results[1].detected);
        let fps: Vec<(&str, &str)> =
            efficacy.false_positives.iter().map(|(d, e, ..)| (d.as_str(), e.as_str())).collect();
        assert_eq!(fps, [("scan", "host:10.0.0.2"), ("scan", "host:10.0.0.3")]);
        assert!(efficacy.table(0).contains("detected 1 of 2 attacks; 4 alerts raised, 2 false positives"));
    }
}
