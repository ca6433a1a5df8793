//! Updates that take effect later, held by the feeder until their time. A flow's contact leaves
//! the window one window after it entered, and a history sighting leaves after the TTL: handed to
//! differential at once, such a future retraction would wait in the batcher of *every*
//! arrangement downstream (a copy each), and every tick's seal would walk all of them, so that a
//! quiet tick cost as much as the whole window. Held here instead, each waits once, compactly,
//! and enters the dataflow only when the input reaches its time: the dataflow then sees the same
//! updates at the same times (so every result is exactly the same), but its per-tick work follows
//! what changes in that tick.

use std::collections::BTreeMap;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::input::InputSession;
use differential_dataflow::Data;

use crate::time::Epoch;

/// An input session that holds updates for future epochs until the input advances to them.
pub struct ScheduledInput<D: Data, R: Semigroup + 'static> {
    session: InputSession<Epoch, D, R>,
    /// Updates for epochs after the session's time, by epoch.
    pending: BTreeMap<Epoch, Vec<(D, R)>>,
    held: usize,
}

impl<D: Data, R: Semigroup + 'static> ScheduledInput<D, R> {
    pub fn new(session: InputSession<Epoch, D, R>) -> Self {
        ScheduledInput { session, pending: BTreeMap::new(), held: 0 }
    }

    /// `data` changes by `diff` at `time`: now if `time` is the input's current epoch, else when
    /// the input advances to it. `time` must not be before the current epoch.
    pub fn update_at(&mut self, data: D, time: Epoch, diff: R) {
        if time <= *self.session.time() {
            self.session.update_at(data, time, diff);
        } else {
            self.pending.entry(time).or_default().push((data, diff));
            self.held += 1;
        }
    }

    /// `data` changes by `diff` at the current epoch.
    pub fn update(&mut self, data: D, diff: R) {
        self.session.update(data, diff);
    }

    /// Advances the input to `time`, first handing the dataflow every held update due at or
    /// before it, each at its own epoch.
    pub fn advance_to(&mut self, time: Epoch) {
        let later = self.pending.split_off(&time.saturating_add(1));
        for (at, updates) in std::mem::replace(&mut self.pending, later) {
            self.held -= updates.len();
            for (data, diff) in updates {
                self.session.update_at(data, at, diff);
            }
        }
        self.session.advance_to(time);
    }

    pub fn flush(&mut self) {
        self.session.flush();
    }

    pub fn time(&self) -> &Epoch {
        self.session.time()
    }

    /// How many updates wait for a later epoch.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The epoch of the next held update, if any.
    pub fn next_due(&self) -> Option<Epoch> {
        self.pending.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::*;

    /// The same updates as handing every future update to differential at once, at the same times.
    #[test]
    fn held_updates_arrive_at_their_own_epochs() {
        let seen = timely::execute_directly(|worker| {
            let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let sink = seen.clone();
            let (input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, collection) = scope.new_collection::<&'static str, isize>();
                let (probe, _) = collection.inspect(move |update| sink.borrow_mut().push(*update)).probe();
                (input, probe)
            });
            let mut input = ScheduledInput::new(input);
            input.update_at("a", 0, 1);
            input.update_at("a", 30, -1);
            input.update_at("b", 10, 1);
            assert_eq!(input.held(), 2);
            assert_eq!(input.next_due(), Some(10));
            // Advancing past both: each enters at its own epoch, not at the advance's.
            input.advance_to(35);
            input.flush();
            assert_eq!(input.held(), 0);
            worker.step_while(|| probe.less_than(&35));
            let mut seen = seen.borrow().clone();
            seen.sort_by_key(|(_, time, _)| *time);
            seen
        });
        assert_eq!(seen, vec![("a", 0, 1), ("b", 10, 1), ("a", 30, -1)]);
    }
}
