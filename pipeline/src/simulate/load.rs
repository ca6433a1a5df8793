//! Load profiles: how busy a call pattern is at a moment of the week, as a factor of its
//! full-load rate. Office work follows working hours (quiet nights, quieter weekends, a lunch
//! dip); a customer-facing shop peaks in the evening and never sleeps; infrastructure is flat.

use serde::{Deserialize, Serialize};

/// Which daily curve a call pattern follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Always at full rate (infrastructure, replication, scrapes).
    Flat,
    /// Working hours on weekdays; nights and weekends near silent.
    Office,
    /// Customers: busy afternoons and evenings, every day, quieter at night.
    Customer,
}

/// Office load per local hour on a weekday (the factor at the start of the hour; linear in between).
const OFFICE: [f64; 24] = [
    0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.08, 0.35, 0.8, 1.0, 1.0, 1.0, 0.7, 0.85, 1.0, 1.0, 0.9, 0.6, 0.3, 0.15, 0.1,
    0.06, 0.04, 0.03,
];
/// Customer load per local hour.
const CUSTOMER: [f64; 24] = [
    0.35, 0.25, 0.2, 0.2, 0.2, 0.25, 0.35, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.8, 0.75, 0.75, 0.8, 0.85, 0.9, 1.0, 1.0,
    0.9, 0.7, 0.5,
];

/// Whether `ms` falls on a weekday (Monday to Friday) in local time.
pub fn is_weekday(ms: i64, utc_offset_hours: i32) -> bool {
    let day = (ms + utc_offset_hours as i64 * 3_600_000).div_euclid(86_400_000);
    // 1970-01-01 was a Thursday: day 0 is weekday 3 counting from Monday = 0.
    (day + 3).rem_euclid(7) < 5
}

impl Load {
    /// The factor (0..=1) at `ms` since the Unix epoch, with local time `utc_offset_hours` ahead of UTC.
    pub fn factor(self, ms: i64, utc_offset_hours: i32) -> f64 {
        let local_ms = ms + utc_offset_hours as i64 * 3_600_000;
        let hour = local_ms.rem_euclid(86_400_000) as f64 / 3_600_000.0;
        let weekend = !is_weekday(ms, utc_offset_hours);
        let curve = |table: &[f64; 24]| {
            let (h, frac) = (hour.floor() as usize % 24, hour.fract());
            table[h] * (1.0 - frac) + table[(h + 1) % 24] * frac
        };
        match self {
            Load::Flat => 1.0,
            Load::Office if weekend => curve(&OFFICE) * 0.08,
            Load::Office => curve(&OFFICE),
            Load::Customer if weekend => (curve(&CUSTOMER) * 1.15).min(1.0),
            Load::Customer => curve(&CUSTOMER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-01-05 00:00 UTC.
    const MONDAY: i64 = 1_767_571_200_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn offices_are_busy_on_weekday_mornings_and_quiet_at_night_and_on_weekends() {
        let at = |day: i64, hour: i64| Load::Office.factor(MONDAY + day * 24 * HOUR + hour * HOUR, 0);
        assert_eq!(at(0, 10), 1.0);
        assert!(at(0, 3) < 0.05);
        assert!(at(0, 12) < at(0, 10));
        assert!(at(5, 10) < 0.1, "Saturday: {}", at(5, 10));
        assert!(at(7, 10) == 1.0, "the next Monday");
        // Local time: at UTC+2, 08:00 UTC is 10:00 local.
        assert_eq!(Load::Office.factor(MONDAY + 8 * HOUR, 2), 1.0);
    }

    #[test]
    fn customers_peak_in_the_evening_and_infrastructure_is_flat() {
        let at = |hour: i64| Load::Customer.factor(MONDAY + hour * HOUR, 0);
        assert!(at(19) > at(10) && at(10) > at(3));
        assert_eq!(Load::Flat.factor(MONDAY + 3 * HOUR, 0), 1.0);
    }
}
