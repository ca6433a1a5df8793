//! A partition's event time, which no single record can push.
//!
//! The watermark of a partition used to be its greatest epoch minus the allowed lateness: one flow
//! stamped ten minutes ahead (forged, or from a sensor whose clock is wrong) moved it ten minutes
//! and made every honest record after it late. Here the partition's time follows its records
//! only while they stay within `input.max_skew` of it. A record further ahead is refused
//! ("ahead_of_partition": counted per sensor, dead-lettered) and does not move the time, unless
//! it is corroborated: when `input.skew_support` of the partition's last [`HORIZON`] records all
//! ran ahead, the stream itself has moved on (a sensor back from an outage, a gap in a replayed
//! capture) and the time jumps to the earliest of them. A jump therefore refuses the
//! `skew_support − 1` records that announced it (they are in the dead-letter topic); an attacker
//! must place `skew_support` forged records among any [`HORIZON`] consecutive ones of a
//! partition to move it.
//!
//! A partition's first record cannot be judged against anything, and row 1 of the hostile-input
//! probes put the forged record first: the time is therefore established by the first two
//! records, at the earlier of them when they are further apart than the skew (and the later one,
//! if it is the outlier, is refused). Until then the partition holds the frontier back, as an
//! empty one does.

use std::collections::VecDeque;

use peergraph_topology::Epoch;

/// How many of a partition's most recent records a jump's corroboration is counted over.
pub const HORIZON: u64 = 1000;

/// The limits a partition's time is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewPolicy {
    /// How far ahead of the partition's time a record may be and still move it, in ms; 0 turns
    /// the check off (the time is the greatest epoch seen).
    pub max_skew_ms: u64,
    /// How many records ahead (among the last [`HORIZON`]) make the time jump to them.
    pub support: usize,
}

/// What a record's epoch means for its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The record counts (its lateness is judged against the time it found).
    Within,
    /// The record ran further than the skew ahead of the partition's time, uncorroborated.
    Ahead { time: Epoch },
}

/// One partition's event time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventClock {
    /// The established time: the greatest epoch of a record that stayed within the skew.
    time: Option<Epoch>,
    /// While not established: the epoch of the one record seen.
    first: Option<Epoch>,
    /// Records observed.
    seen: u64,
    /// Recent records that ran ahead: (position among the records observed, epoch).
    ahead: VecDeque<(u64, Epoch)>,
}

impl EventClock {
    /// A clock at `time`, as a checkpoint recorded it (`None`: nothing seen yet).
    pub fn restored(time: Option<Epoch>) -> EventClock {
        EventClock { time, ..EventClock::default() }
    }

    /// The partition's event time, once established.
    pub fn time(&self) -> Option<Epoch> {
        self.time
    }

    /// The established time, else the one record seen (for a partition that ends, or goes idle,
    /// with a single record).
    pub fn provisional(&self) -> Option<Epoch> {
        self.time.or(self.first)
    }

    /// Judges a record at `epoch` and moves the time if the record may move it.
    pub fn observe(&mut self, epoch: Epoch, policy: SkewPolicy) -> Judgement {
        self.seen += 1;
        let skew = if policy.max_skew_ms == 0 { u64::MAX } else { policy.max_skew_ms };
        let Some(time) = self.time else {
            let Some(first) = self.first.take() else {
                self.first = Some(epoch);
                return Judgement::Within;
            };
            // Two records establish the time: together if they agree, else at the earlier, and
            // the later one is the outlier (refused when it is this one).
            let (early, late) = (first.min(epoch), first.max(epoch));
            if late - early <= skew {
                self.time = Some(late);
                return Judgement::Within;
            }
            self.time = Some(early);
            return if epoch == late { Judgement::Ahead { time: early } } else { Judgement::Within };
        };
        if epoch <= time.saturating_add(skew) {
            self.time = Some(time.max(epoch));
            return Judgement::Within;
        }
        let seen = self.seen;
        self.ahead.push_back((seen, epoch));
        while self.ahead.front().is_some_and(|(at, _)| seen - at >= HORIZON) {
            self.ahead.pop_front();
        }
        if self.ahead.len() < policy.support.max(1) {
            return Judgement::Ahead { time };
        }
        // Corroborated: the stream has moved on. Jump to the earliest of the records that said
        // so, and forget those the jump covers.
        let jumped = self.ahead.iter().rev().take(policy.support.max(1)).map(|(_, e)| *e).min().unwrap_or(epoch);
        let within: Option<Epoch> =
            self.ahead.iter().map(|(_, e)| *e).filter(|e| *e >= jumped && *e <= jumped.saturating_add(skew)).max();
        let time = within.unwrap_or(jumped).max(time);
        self.time = Some(time);
        self.ahead.retain(|(_, e)| *e > time.saturating_add(skew));
        if epoch <= time.saturating_add(skew) {
            Judgement::Within
        } else {
            Judgement::Ahead { time }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SkewPolicy = SkewPolicy { max_skew_ms: 60_000, support: 3 };
    const T: Epoch = 1_796_256_000_000;
    const AHEAD: Epoch = T + 600_000;

    fn clock_after(epochs: &[Epoch]) -> (EventClock, Vec<Judgement>) {
        let mut clock = EventClock::default();
        let judged = epochs.iter().map(|e| clock.observe(*e, POLICY)).collect();
        (clock, judged)
    }

    #[test]
    fn in_order_records_move_the_time_to_the_greatest_epoch() {
        let (clock, judged) = clock_after(&[T, T + 1000, T + 500, T + 3000]);
        assert_eq!(clock.time(), Some(T + 3000));
        assert!(judged.iter().all(|j| *j == Judgement::Within));
    }

    #[test]
    fn one_record_far_ahead_does_not_move_the_time() {
        let mut epochs: Vec<Epoch> = (0..50).map(|i| T + i * 1000).collect();
        epochs.insert(20, AHEAD);
        let (clock, judged) = clock_after(&epochs);
        assert_eq!(clock.time(), Some(T + 49_000));
        assert_eq!(judged[20], Judgement::Ahead { time: T + 19_000 });
        assert_eq!(judged.iter().filter(|j| **j != Judgement::Within).count(), 1);
    }

    #[test]
    fn a_forged_first_record_does_not_set_the_time() {
        let (clock, judged) = clock_after(&[AHEAD, T, T + 1000]);
        assert_eq!(clock.time(), Some(T + 1000));
        assert_eq!(judged, vec![Judgement::Within; 3], "the first record cannot be judged, the second sets the time");
        let (clock, judged) = clock_after(&[T, AHEAD, T + 1000]);
        assert_eq!(clock.time(), Some(T + 1000));
        assert_eq!(judged[1], Judgement::Ahead { time: T });
    }

    #[test]
    fn isolated_forged_records_never_add_up_to_a_jump() {
        // One forged record every 500 honest ones: never `support` within the horizon.
        let mut clock = EventClock::default();
        for i in 0..5000u64 {
            let epoch = if i % 500 == 250 { T + i * 10 + 600_000 } else { T + i * 10 };
            clock.observe(epoch, POLICY);
        }
        assert_eq!(clock.time(), Some(T + 4999 * 10));
    }

    #[test]
    fn a_stream_that_moved_on_is_followed_after_the_support() {
        let mut epochs: Vec<Epoch> = (0..10).map(|i| T + i * 1000).collect();
        epochs.extend((0..10).map(|i| AHEAD + i * 1000));
        let (clock, judged) = clock_after(&epochs);
        assert_eq!(clock.time(), Some(AHEAD + 9000));
        let refused = judged.iter().filter(|j| matches!(j, Judgement::Ahead { .. })).count();
        assert_eq!(refused, POLICY.support - 1, "the records that announced the jump are refused");
    }

    #[test]
    fn a_zero_skew_follows_the_greatest_epoch() {
        let mut clock = EventClock::default();
        let off = SkewPolicy { max_skew_ms: 0, support: 3 };
        for epoch in [T, AHEAD, T + 1000] {
            assert_eq!(clock.observe(epoch, off), Judgement::Within);
        }
        assert_eq!(clock.time(), Some(AHEAD));
    }
}
