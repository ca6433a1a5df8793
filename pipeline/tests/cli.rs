//! The `peergraph` binary as a user meets it: the README's demo shows the swapped-replica alert
//! with no setup, and `config --print` shows the effective configuration without secrets.

use std::process::Command;

fn peergraph() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peergraph"))
}

#[test]
fn demo_shows_the_swapped_replica_alert() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let output = peergraph()
        .args(["--log", "warn", "demo", "--seconds", "25", "--alerts-file"])
        .arg(&alerts)
        .current_dir(dir.path())
        .output()
        .expect("run peergraph demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // Other detectors may raise alerts too, and which comes first depends on the machine's load.
    let raised = stdout
        .lines()
        .find(|l| l.starts_with("RAISED") && l.contains("peer_unique_destination"))
        .unwrap_or_else(|| panic!("no swapped-replica alert shown:\n{stdout}"));
    assert!(raised.contains("ext:203.0.113.66"), "{raised}");
    let written = std::fs::read_to_string(&alerts).unwrap();
    let swapped: serde_json::Value = written
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a["detector"] == "peer_unique_destination")
        .expect("the swapped-replica alert in the file");
    assert_eq!(swapped["event"], "raised");
    assert_eq!(swapped["peer_group"], "workload:shop/Deployment/web");
}

#[test]
fn config_print_shows_overrides_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peergraph.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"security.protocol\" = \"SASL_SSL\"\n",
    )
    .unwrap();
    let output = peergraph()
        .args(["config", "--print", "--config"])
        .arg(&file)
        .env("PEERGRAPH__TOPICS__ALERTS", "soc.alerts")
        .output()
        .expect("run peergraph config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("alerts = \"soc.alerts\""), "{stdout}");
    assert!(stdout.contains("SASL_SSL"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peergraph.toml");
    std::fs::write(&file, "[time]\nwindow = \"90ms\"\n").unwrap();
    let output = peergraph().args(["config", "--print", "--config"]).arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("time.window"), "{stderr}");
}

#[test]
fn connect_check_builds_and_checks_every_sink_without_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let output = peergraph()
        .args(["connect", "--check", "--no-console", "--file"])
        .arg(&alerts)
        .env("PEERGRAPH__API__LISTEN", "")
        .output()
        .expect("run peergraph connect --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("healthy sinks: file"), "{stdout}");
}

#[test]
fn evaluate_prints_which_labelled_attacks_were_detected_and_the_false_positives() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.jsonl");
    let alerts = dir.path().join("alerts.jsonl");
    std::fs::write(
        &labels,
        concat!(
            r#"{"entity":"host:10.20.0.5","attack":"sweep","destination":"10.40.0.0","start_ms":1000,"end_ms":61000}"#,
            "\n",
            r#"{"entity":"pod:shop/web-1","attack":"swapped_image","destination":"ext:203.0.113.66","start_ms":1000,"end_ms":61000,"flows":3}"#,
            "\n"
        ),
    )
    .unwrap();
    let alert = |detector: &str, entity: &str, at: i64| {
        serde_json::json!({
            "alert_id": format!("{detector}-{entity}"), "event": "raised", "detector": detector,
            "severity": "high", "score": 80.0, "entity": entity, "peer_group": null, "summary": "s",
            "evidence": {}, "techniques": [], "first_seen_ms": at, "last_seen_ms": at, "event_time_ms": at
        })
        .to_string()
    };
    let lines = [alert("scan", "host:10.20.0.5", 20_000), alert("new_edge", "host:10.20.0.9", 30_000)];
    std::fs::write(&alerts, lines.join("\n")).unwrap();
    let output = peergraph()
        .args(["evaluate", "--labels"])
        .arg(&labels)
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .expect("run peergraph evaluate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("detected 1 of 2 attacks; 2 alerts raised, 1 false positives (new_edge 1)"), "{stdout}");
    let sweep = stdout.lines().find(|l| l.starts_with("sweep")).unwrap();
    assert!(sweep.contains("host:10.20.0.5") && sweep.contains("yes"), "{sweep}");
    let swap = stdout.lines().find(|l| l.starts_with("swapped_image")).unwrap();
    assert!(swap.contains("NO"), "{swap}");
}
