//! How new a workload edge is, shared by the new-edge and lateral-movement detectors: for each
//! workload edge in the window, how many coarse history epochs saw it before its presence in the
//! window began. The history holds `(workload edge, coarse epoch)` from the end of the coarse
//! tick it was seen in until its time to live runs out, so a coarse epoch before the first
//! contact in the window is a sighting from before the window; one at or after it is the
//! present sighting being recorded.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::DetectorInputs;
use crate::graph::WorkloadEdge;
use crate::time::Epoch;

/// What the history says of a workload edge present in the window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Novelty {
    /// Coarse history epochs that saw the edge before its first contact in the window.
    pub prior_epochs: usize,
    /// The latest of them.
    pub last_seen_before: Option<Epoch>,
}

/// A workload edge's marks: its contacts in the window and its coarse epochs in the history.
/// `Seen` sorts first, so a reduce sees the history before the window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum Mark {
    Seen(Epoch),
    InWindow(Epoch),
}

/// The novelty of every workload edge in the window that passes `keep` and was seen in at most
/// `max_prior_epochs` coarse epochs before, once its first contact in the window is at least
/// `learning_ms` after the earliest coarse epoch in the history (the end of the first coarse tick
/// the history remembers). Before the history holds anything, nothing is new.
pub fn novelty<'s>(
    inputs: &DetectorInputs<'s>,
    keep: impl Fn(&WorkloadEdge) -> bool + Clone + 'static,
    max_prior_epochs: usize,
    learning_ms: u64,
) -> VecCollection<'s, Epoch, (WorkloadEdge, Novelty)> {
    let keep_history = keep.clone();
    // Each workload edge's first contact in the window, shared with the service graph.
    let present = inputs
        .first_contacts
        .clone()
        .filter(move |(edge, _)| keep(edge))
        .map(|(edge, first)| (edge, Mark::InWindow(first)));
    let seen = inputs
        .history
        .clone()
        .filter(move |(edge, _)| keep_history(edge))
        .map(|(edge, coarse)| (edge, Mark::Seen(coarse)));

    // Per edge: one mark for the window and O(history ttl / history tick) for the history.
    let candidates = seen.concat(present).reduce(move |_edge, marks, output| {
        let first = marks.iter().find_map(|(mark, _)| match mark {
            Mark::InWindow(epoch) => Some(*epoch),
            Mark::Seen(_) => None,
        });
        let Some(first) = first else { return };
        let prior: Vec<Epoch> = marks
            .iter()
            .filter_map(|(mark, _)| match mark {
                Mark::Seen(coarse) if *coarse < first => Some(*coarse),
                _ => None,
            })
            .collect();
        if prior.len() <= max_prior_epochs {
            let novelty = Novelty { prior_epochs: prior.len(), last_seen_before: prior.last().copied() };
            output.push(((first, novelty), 1isize));
        }
    });

    // The learning gate joins on one key: the candidates (few, once learning is over) meet the
    // history's start on one worker.
    let start = inputs
        .history
        .clone()
        .map(|(_, coarse)| ((), coarse))
        .reduce(|_, coarse, output| output.push((*coarse[0].0, 1isize)));
    candidates
        .map(|(edge, (first, novelty))| ((), (edge, first, novelty)))
        .join(start)
        .filter(move |(_, ((_, first, _), start))| *first >= start.saturating_add(learning_ms))
        .map(|(_, ((edge, _, novelty), _))| (edge, novelty))
}
