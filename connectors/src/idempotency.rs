//! What makes redelivery harmless: a key per alert event that a replay reproduces, and a memory of
//! the events a sink already got through, so a batch retried after a partial success does not repeat
//! its first events at the target (a second comment, a re-opened incident).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peergraph_schemas::{Alert, AlertEvent};

/// `<alert_id>:<event>:<event_time_ms>`: one lifecycle event of one alert; a replay reproduces it.
pub fn event_key(alert: &Alert) -> String {
    format!("{}:{}:{}", alert.alert_id, event_name(alert.event), alert.event_time_ms)
}

/// "raised", "updated" or "cleared".
pub fn event_name(event: AlertEvent) -> &'static str {
    match event {
        AlertEvent::Raised => "raised",
        AlertEvent::Updated => "updated",
        AlertEvent::Cleared => "cleared",
    }
}

/// RFC 3339 UTC with milliseconds, for ms since the Unix epoch (negative clamps to the epoch).
pub fn rfc3339_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// The last `capacity` event keys a sink delivered, oldest forgotten first.
#[derive(Debug)]
pub struct RecentlyDelivered {
    order: VecDeque<String>,
    keys: HashSet<String>,
    capacity: usize,
}

impl Default for RecentlyDelivered {
    fn default() -> Self {
        RecentlyDelivered::with_capacity(10_000)
    }
}

impl RecentlyDelivered {
    pub fn with_capacity(capacity: usize) -> Self {
        RecentlyDelivered { order: VecDeque::new(), keys: HashSet::new(), capacity: capacity.max(1) }
    }

    pub fn contains(&self, alert: &Alert) -> bool {
        self.keys.contains(&event_key(alert))
    }

    pub fn insert(&mut self, alert: &Alert) {
        let key = event_key(alert);
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.keys.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::alert;

    #[test]
    fn keys_name_the_alert_its_event_and_its_time() {
        assert_eq!(event_key(&alert("a1", AlertEvent::Cleared)), "a1:cleared:1700000060000");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_memory_forgets_the_oldest_keys_first() {
        let mut recent = RecentlyDelivered::with_capacity(2);
        let (a, b, c) =
            (alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised), alert("c", AlertEvent::Raised));
        recent.insert(&a);
        recent.insert(&b);
        recent.insert(&a);
        recent.insert(&c);
        assert!(!recent.contains(&a) && recent.contains(&b) && recent.contains(&c));
    }
}
