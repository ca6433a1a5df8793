//! The long-horizon history of what every entity sends to external addresses: one record per
//! `(entity, coarse tick)` whose multiplicity is the bytes that left the entity towards `ext:`
//! destinations in that tick (as [`exfil::leaving`] counts them). It is the entity's own baseline
//! for the exfiltration detector, next to its peer group's.
//!
//! A tick's record is derived here, inside the dataflow, from the resolved contacts as they enter
//! (each contact at its own epoch, so a replay of the same flows derives the same records). It
//! enters the history when the tick has ended **and** one window has passed, so the window a
//! detector compares is never part of the baseline it is compared with, and leaves it
//! `time.history_ttl` later. The records are also an output: the pipeline persists them in the
//! state topic and feeds them back as `restored` after a restart, when the flows they came from are
//! no longer read. A tick is counted once: from its restored record when there is one, otherwise
//! derived, and derived only when this run read all of its flows (its start is at or after
//! `complete_from`, the newest epoch any checkpoint says was read before the replay point). A tick
//! in progress at a restart is therefore left out rather than counted in part; a fresh start's first
//! tick is counted from the flows the run read.
//!
//! [`exfil::leaving`]: crate::detectors::exfil::leaving

use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::VecCollection;
use timely::dataflow::operators::vec::Map;

use crate::detectors::exfil::leaving;
use crate::graph::Edge;
use crate::name::Name;
use crate::time::{Epoch, TimeConfig};
use crate::volume::Volume;

/// `(entity, coarse epoch)` with the bytes the entity sent to external addresses in the coarse tick
/// ending at that epoch as its multiplicity.
pub type VolumeHistory<'s> = VecCollection<'s, Epoch, (Name, Epoch)>;

/// When the record of the coarse tick ending at `coarse` enters the history: one window after the
/// tick's end.
pub fn settles_at(time: &TimeConfig, coarse: Epoch) -> Epoch {
    coarse.saturating_add(time.window_ms())
}

/// When it leaves the history again.
pub fn expires_at(time: &TimeConfig, coarse: Epoch) -> Epoch {
    settles_at(time, coarse).saturating_add(time.history_ttl_ms())
}

/// Whether this run derives the tick ending at `coarse` itself: it read every flow of the tick.
pub fn derived_here(time: &TimeConfig, coarse: Epoch, complete_from: Epoch) -> bool {
    coarse.saturating_sub(time.history_tick_ms()) >= complete_from
}

/// The volume history (derived and restored, see the module documentation), and the derived
/// records alone, consolidated, for the pipeline to persist (each enters once at its
/// [`settles_at`] with its bytes, and is retracted at its [`expires_at`]).
pub fn volume_history<'s>(
    contacts: VecCollection<'s, Epoch, (Edge, Epoch), Volume>,
    restored: VolumeHistory<'s>,
    time: &TimeConfig,
    complete_from: Epoch,
) -> (VolumeHistory<'s>, VolumeHistory<'s>) {
    let config = time.clone();
    // Each contact's bytes out of its internal end, at the contact's own epoch: the update that
    // brought the contact in (its window retraction, and any rename by a later relabel, happen at
    // other times).
    let sent = VecCollection::new(contacts.inner.flat_map(move |((edge, epoch), time, volume)| {
        let coarse = config.history_epoch_of(epoch);
        (time == epoch && derived_here(&config, coarse, complete_from))
            .then(|| leaving(&edge, &volume))
            .flatten()
            .filter(|(_, _, bytes)| *bytes != 0)
            .map(|(entity, _, bytes)| ((entity, coarse), time, bytes as isize))
    }));
    // Monotone in the contact's epoch (its time), as `delay` requires.
    let (enter, leave) = (time.clone(), time.clone());
    let timed = sent
        .clone()
        .delay(move |epoch| settles_at(&enter, enter.history_epoch_of(*epoch)))
        .concat(sent.negate().delay(move |epoch| expires_at(&leave, leave.history_epoch_of(*epoch))));
    let derived =
        timed.map(|tick| (tick, ())).antijoin(restored.clone().distinct_total()).map(|(tick, ())| tick).consolidate();
    (derived.clone().concat(restored), derived)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use differential_dataflow::input::Input;
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{edge, vol};

    fn time() -> TimeConfig {
        TimeConfig {
            tick: Duration::from_millis(1),
            window: Duration::from_millis(4),
            history_tick: Duration::from_millis(5),
            history_ttl: Duration::from_millis(20),
            ..TimeConfig::default()
        }
    }

    type Contact = (Edge, Epoch, Volume);
    type Record = ((Name, Epoch), Epoch, isize);

    /// Runs the history over `contacts` (fed as the pipeline feeds them) and `restored` records
    /// (fed at their own times before anything else), and returns it at every time in `1..=until`.
    fn run(
        contacts: Vec<Contact>,
        restored: Vec<Record>,
        complete_from: Epoch,
        until: Epoch,
    ) -> BTreeMap<Epoch, BTreeMap<(Name, Epoch), isize>> {
        let time = time();
        timely::execute_directly(move |worker| {
            let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let sink = seen.clone();
            let (mut contacts_in, mut restored_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (contacts_in, contacts) = scope.new_collection::<(Edge, Epoch), Volume>();
                let (restored_in, restored) = scope.new_collection::<(Name, Epoch), isize>();
                let (history, _) = volume_history(contacts, restored, &time, complete_from);
                let (probe, _) = history.inspect(move |u| sink.borrow_mut().push(u.clone())).probe();
                (contacts_in, restored_in, probe)
            });
            for (tick, at, bytes) in restored {
                restored_in.update_at(tick, at, bytes);
            }
            restored_in.advance_to(until + 1);
            restored_in.flush();
            let mut by_epoch: BTreeMap<Epoch, Vec<(Edge, Volume)>> = BTreeMap::new();
            for (edge, epoch, volume) in contacts {
                by_epoch.entry(epoch).or_default().push((edge, volume));
            }
            for (epoch, batch) in by_epoch {
                contacts_in.advance_to(epoch);
                for (edge, volume) in batch {
                    contacts_in.update_at((edge.clone(), epoch), epoch + time.window_ms(), volume.negated());
                    contacts_in.update_at((edge, epoch), epoch, volume);
                }
                contacts_in.flush();
                worker.step_while(|| probe.less_than(&epoch));
            }
            contacts_in.advance_to(until + 1);
            contacts_in.flush();
            worker.step_while(|| probe.less_than(&(until + 1)));
            let mut state: BTreeMap<(Name, Epoch), isize> = BTreeMap::new();
            let mut updates = seen.borrow().clone();
            updates.sort_by_key(|(_, t, _)| *t);
            let mut next = updates.into_iter().peekable();
            (1..=until)
                .map(|at| {
                    while let Some((tick, _, bytes)) = next.next_if(|(_, t, _)| *t <= at) {
                        *state.entry(tick).or_default() += bytes;
                    }
                    state.retain(|_, b| *b != 0);
                    (at, state.clone())
                })
                .collect()
        })
    }

    /// The plain version: sum every tick from scratch and keep the ones alive at `at`.
    fn oracle(
        contacts: &[Contact],
        restored: &[Record],
        complete_from: Epoch,
        at: Epoch,
    ) -> BTreeMap<(Name, Epoch), isize> {
        let time = time();
        let mut restored_at: BTreeMap<(Name, Epoch), isize> = BTreeMap::new();
        for (tick, t, bytes) in restored {
            if *t <= at {
                *restored_at.entry(tick.clone()).or_default() += bytes;
            }
        }
        restored_at.retain(|_, b| *b != 0);
        let mut derived: BTreeMap<(Name, Epoch), isize> = BTreeMap::new();
        for (edge, epoch, volume) in contacts {
            let coarse = time.history_epoch_of(*epoch);
            if let Some((entity, _, bytes)) = leaving(edge, volume) {
                let alive = settles_at(&time, coarse) <= at && at < expires_at(&time, coarse);
                if alive && derived_here(&time, coarse, complete_from) && bytes != 0 {
                    *derived.entry((entity, coarse)).or_default() += bytes as isize;
                }
            }
        }
        derived.retain(|tick, _| !restored_at.contains_key(tick));
        derived.extend(restored_at);
        derived
    }

    fn upload(src: &str, dst: &str, epoch: Epoch, bytes: i64) -> Contact {
        (edge(src, None, dst, None, 443), epoch, vol(1, 0, bytes, 10))
    }

    #[test]
    fn a_tick_enters_one_window_after_it_ends_and_leaves_after_the_ttl() {
        let contacts = vec![
            upload("host:10.0.0.8", "ext:198.51.100.7", 2, 300),
            upload("host:10.0.0.8", "ext:198.51.100.9", 5, 200),
            upload("host:10.0.0.8", "host:10.0.0.9", 5, 9000),
            // Bytes in on a flow an external client opened leave the host too.
            (edge("ext:203.0.113.1", None, "host:10.0.0.8", None, 21), 7, vol(1, 0, 10, 4000)),
        ];
        let history = run(contacts, Vec::new(), 0, 40);
        let tick = |coarse: Epoch| (Name::new("host:10.0.0.8"), coarse);
        // Tick (0, 5] ends at 5 and enters at 5 + 4.
        assert!(history[&8].is_empty());
        assert_eq!(history[&9], BTreeMap::from([(tick(5), 500)]));
        assert_eq!(history[&14], BTreeMap::from([(tick(5), 500), (tick(10), 4000)]));
        // 20 ms later each leaves.
        assert_eq!(history[&29], BTreeMap::from([(tick(10), 4000)]));
        assert!(history[&34].is_empty());
    }

    #[test]
    fn a_restored_tick_counts_once_and_an_incomplete_one_not_at_all() {
        let contacts = vec![
            upload("host:10.0.0.8", "ext:198.51.100.7", 2, 300),
            upload("host:10.0.0.8", "ext:198.51.100.7", 7, 50),
            upload("host:10.0.0.8", "ext:198.51.100.7", 12, 70),
        ];
        // The tick ending at 5 was persisted whole before the restart (with flows not replayed);
        // the replay reads everything after epoch 6, so the tick ending at 10 is incomplete.
        let restored = vec![((Name::new("host:10.0.0.8"), 5), 9, 900), ((Name::new("host:10.0.0.8"), 5), 29, -900)];
        let history = run(contacts, restored, 6, 30);
        assert_eq!(history[&9], BTreeMap::from([((Name::new("host:10.0.0.8"), 5), 900)]));
        assert_eq!(
            history[&19],
            BTreeMap::from([((Name::new("host:10.0.0.8"), 5), 900), ((Name::new("host:10.0.0.8"), 15), 70)])
        );
    }

    fn contact() -> impl Strategy<Value = Contact> {
        let ends = prop::sample::select(vec!["host:10.0.0.1", "host:10.0.0.2", "ext:198.51.100.1", "ext:198.51.100.2"]);
        (ends.clone(), ends, 1..30u64, prop::sample::select(vec![0i64, 10, 700]), 0..50i64)
            .prop_map(|(src, dst, epoch, out, inb)| (edge(src, None, dst, None, 443), epoch, vol(1, 0, out, inb)))
    }

    fn restored() -> impl Strategy<Value = Vec<Record>> {
        let tick = (prop::sample::select(vec!["host:10.0.0.1", "host:10.0.0.3"]), 1..6u64, 1..900isize);
        prop::collection::vec(tick, 0..4).prop_map(|ticks| {
            let time = time();
            let mut seen = std::collections::BTreeSet::new();
            let mut records = Vec::new();
            for (entity, n, bytes) in ticks {
                let coarse = n * 5;
                if seen.insert((entity, coarse)) {
                    let key = (Name::new(entity), coarse);
                    records.push((key.clone(), settles_at(&time, coarse), bytes));
                    records.push((key, expires_at(&time, coarse), -bytes));
                }
            }
            records
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn the_history_matches_a_from_scratch_sum_at_every_epoch(
            contacts in prop::collection::vec(contact(), 0..30),
            restored in restored(),
            complete_from in prop::sample::select(vec![0u64, 3, 5, 11]),
        ) {
            let until = 60;
            let history = run(contacts.clone(), restored.clone(), complete_from, until);
            for at in 1..=until {
                prop_assert_eq!(&history[&at], &oracle(&contacts, &restored, complete_from, at), "at {}", at);
            }
        }
    }
}
