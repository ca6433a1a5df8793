//! Helpers for the tests beside each dataflow: build edges tersely and run a collection function
//! over a list of timed updates on one worker, returning the consolidated result.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;

use crate::detectors::DetectorInputs;
use crate::entity::Endpoint;
use crate::graph::Edge;
use crate::time::Epoch;
use crate::volume::Volume;

pub fn edge(src: &str, src_workload: Option<&str>, dst: &str, dst_workload: Option<&str>, port: u16) -> Edge {
    Edge {
        src: Endpoint { entity: src.to_owned(), workload: src_workload.map(str::to_owned) },
        dst: Endpoint { entity: dst.to_owned(), workload: dst_workload.map(str::to_owned) },
        dst_port: port,
        protocol: 6,
    }
}

/// Detector inputs derived from `contacts` alone (no indicators, no history).
pub fn detector_inputs<'s>(contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> DetectorInputs<'s> {
    let edges = contacts.clone().map(|(edge, _)| edge);
    let scope = contacts.scope();
    DetectorInputs {
        members: crate::peers::membership(edges.clone()),
        edges,
        contacts,
        indicators: differential_dataflow::collection::concatenate(scope, Vec::new()),
        history: differential_dataflow::collection::concatenate(scope, Vec::new()),
    }
}

/// Feeds `updates` (edge, time, flows) as contacts at their time into `logic` and returns the
/// output collection as it is at `until`, consolidated.
pub fn run_collection<D, R, F>(updates: Vec<(Edge, Epoch, isize)>, until: Epoch, logic: F) -> Vec<(D, R)>
where
    D: differential_dataflow::ExchangeData + Send,
    R: differential_dataflow::ExchangeData + Semigroup + Send,
    F: for<'s> FnOnce(VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> VecCollection<'s, Epoch, D, R>
        + Send
        + Sync
        + 'static,
{
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, edges) = scope.new_collection::<(Edge, Epoch), Volume>();
            let (probe, _) = logic(edges).inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
            (input, probe)
        });
        let mut updates = updates;
        updates.sort_by_key(|(_, time, _)| *time);
        for (edge, time, flows) in updates {
            let volume = Volume { flows: flows as i64, bytes_out: 100 * flows as i64, ..Volume::default() };
            input.update_at((edge, time), time, volume);
        }
        input.advance_to(until);
        input.flush();
        worker.step_while(|| probe.less_than(&until));
        let mut state: BTreeMap<D, R> = BTreeMap::new();
        for (datum, time, diff) in seen.borrow().iter() {
            if *time < until {
                match state.get_mut(datum) {
                    Some(acc) => acc.plus_equals(diff),
                    None => {
                        state.insert(datum.clone(), diff.clone());
                    }
                }
            }
        }
        state.into_iter().filter(|(_, r)| !r.is_zero()).collect()
    })
}

/// Feeds `updates` (edge, time, flows) as windowed contacts — in at their time, out `window`
/// later — into `logic`, and returns the output collection as it is at each of `times`.
pub fn run_collection_at<D, R, F>(
    updates: Vec<(Edge, Epoch, isize)>,
    window: Epoch,
    times: Vec<Epoch>,
    logic: F,
) -> Vec<Vec<(D, R)>>
where
    D: differential_dataflow::ExchangeData + Send,
    R: differential_dataflow::ExchangeData + Semigroup + Send,
    F: for<'s> FnOnce(VecCollection<'s, Epoch, (Edge, Epoch), Volume>) -> VecCollection<'s, Epoch, D, R>
        + Send
        + Sync
        + 'static,
{
    let until = times.iter().copied().max().unwrap_or(0) + 1;
    timely::execute_directly(move |worker| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sink = seen.clone();
        let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (input, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
            let (probe, _) = logic(contacts).inspect(move |update| sink.borrow_mut().push(update.clone())).probe();
            (input, probe)
        });
        for (edge, time, flows) in updates {
            let volume = Volume { flows: flows as i64, bytes_out: 100 * flows as i64, ..Volume::default() };
            input.update_at((edge.clone(), time), time, volume);
            input.update_at((edge, time), time + window, volume.negated());
        }
        input.advance_to(until);
        input.flush();
        worker.step_while(|| probe.less_than(&until));
        let seen = seen.borrow();
        times
            .iter()
            .map(|&at| {
                let mut state: BTreeMap<D, R> = BTreeMap::new();
                for (datum, time, diff) in seen.iter().filter(|(_, time, _)| *time <= at) {
                    let _ = time;
                    match state.get_mut(datum) {
                        Some(acc) => acc.plus_equals(diff),
                        None => {
                            state.insert(datum.clone(), diff.clone());
                        }
                    }
                }
                state.into_iter().filter(|(_, r)| !r.is_zero()).collect()
            })
            .collect()
    })
}
