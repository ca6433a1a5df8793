//! Ground truth: one label per injected attack, with the entity that attacked, the attack class,
//! its time range and the facts of the flows it injected. Written as JSON lines on every run.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use peergraph_schemas::Flow;
use serde::{Deserialize, Serialize};

/// A ground-truth label: which entity attacked how, when (event time, ms), and what it sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The attacking entity as the pipeline resolves it: "host:<addr>" or "pod:<ns>/<pod>".
    pub entity: String,
    /// The attack class: "port_scan", "sweep", "beacon", "exfiltration", "lateral_movement",
    /// "intel_hit", "swapped_image".
    pub attack: String,
    /// The attack's target or destination as configured (an address, a base address for sweeps
    /// and lateral movement, "ext:<addr>" for a swapped image).
    pub destination: String,
    /// The time range: every injected flow ends in `start_ms..end_ms`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// How the attacker was chosen ("office[3]", "shop/api[1]").
    #[serde(default)]
    pub attacker: String,
    /// The injected flows: how many, bytes sent by the attacker, distinct destination addresses,
    /// the distinct destination ports (at most 16 listed), the first and last flow's end.
    #[serde(default)]
    pub flows: u64,
    #[serde(default)]
    pub bytes_out: i64,
    #[serde(default)]
    pub destinations: u64,
    #[serde(default)]
    pub ports: Vec<i32>,
    #[serde(default)]
    pub first_flow_ms: i64,
    #[serde(default)]
    pub last_flow_ms: i64,
}

/// A label with the sets its facts are counted from.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub label: Label,
    destinations: BTreeSet<String>,
    ports: BTreeSet<i32>,
}

impl Tally {
    pub fn new(label: Label) -> Tally {
        Tally { label, ..Tally::default() }
    }

    /// Counts one injected flow.
    pub fn add(&mut self, flow: &Flow) {
        let label = &mut self.label;
        if label.flows == 0 || flow.end_ms < label.first_flow_ms {
            label.first_flow_ms = flow.end_ms;
        }
        label.last_flow_ms = label.last_flow_ms.max(flow.end_ms);
        label.flows += 1;
        label.bytes_out += flow.bytes_out;
        self.destinations.insert(flow.dst_addr.clone());
        self.ports.insert(flow.dst_port);
        label.destinations = self.destinations.len() as u64;
        label.ports = self.ports.iter().take(16).copied().collect();
    }
}

/// Writes labels as JSON lines.
pub fn write(path: &Path, labels: &[Label]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("creating labels file {}", path.display()))?;
    for label in labels {
        writeln!(file, "{}", serde_json::to_string(label)?)?;
    }
    Ok(())
}

/// Reads a JSON-lines labels file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Label>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading labels file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| format!("{} line {}: not a label", path.display(), n + 1))
        })
        .collect()
}
