//! Alert → one human-readable console line. Pure; the writing is in `mod.rs`.

use std::fmt::Write as _;

use peergraph_schemas::{Alert, AlertEvent, Severity};

/// How many characters of the alert id the line shows; enough to find the alert, short enough to read.
const SHOWN_ID_CHARS: usize = 8;

/// One line, newline-terminated:
/// `RAISED   high      peer_unique_destination  pod:shop/web-2  <summary>  [id 1a2b3c4d…]`.
///
/// Entity names and summaries carry attacker-influenced text (labels, hostnames), so control and
/// bidirectional-override characters are escaped: one event is always exactly one line, and nothing
/// in it can move the terminal's cursor or reorder what is shown.
pub fn encode_line(alert: &Alert, out: &mut String) {
    let event = match alert.event {
        AlertEvent::Raised => "RAISED",
        AlertEvent::Updated => "UPDATED",
        AlertEvent::Cleared => "CLEARED",
    };
    let severity = match alert.severity {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    };
    // Writing to a String cannot fail.
    let _ = write!(out, "{event:<7}  {severity:<8}  ");
    push_escaped(out, &alert.detector);
    out.push_str("  ");
    push_escaped(out, &alert.entity);
    out.push_str("  ");
    push_escaped(out, &alert.summary);
    out.push_str("  [id ");
    let mut id = alert.alert_id.chars();
    push_escaped(out, &id.by_ref().take(SHOWN_ID_CHARS).collect::<String>());
    if id.next().is_some() {
        out.push('…');
    }
    out.push_str("]\n");
}

/// Whether showing `c` raw could break the line or spoof what the terminal displays.
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if is_unsafe_for_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alert(event: AlertEvent, severity: Severity) -> Alert {
        Alert {
            alert_id: "1a2b3c4d5e6f7081".into(),
            event,
            detector: "peer_unique_destination".into(),
            severity,
            score: 82.0,
            entity: "pod:shop/web-2".into(),
            peer_group: Some("workload:shop/Deployment/web".into()),
            summary: "talks to 203.0.113.9:443, which no other web replica does".into(),
            evidence: BTreeMap::new(),
            techniques: vec!["T1071".into()],
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_060_000,
            event_time_ms: 1_700_000_060_000,
        }
    }

    fn line(alert: &Alert) -> String {
        let mut out = String::new();
        encode_line(alert, &mut out);
        out
    }

    #[test]
    fn raised_alert_reads_as_one_aligned_line() {
        assert_eq!(
            line(&alert(AlertEvent::Raised, Severity::High)),
            "RAISED   high      peer_unique_destination  pod:shop/web-2  \
             talks to 203.0.113.9:443, which no other web replica does  [id 1a2b3c4d…]\n"
        );
    }

    #[test]
    fn event_and_severity_columns_have_fixed_width() {
        let cleared = line(&alert(AlertEvent::Cleared, Severity::Critical));
        let updated = line(&alert(AlertEvent::Updated, Severity::Info));
        assert!(cleared.starts_with("CLEARED  critical  peer_unique_destination"), "{cleared}");
        assert!(updated.starts_with("UPDATED  info      peer_unique_destination"), "{updated}");
    }

    #[test]
    fn short_ids_are_shown_whole() {
        let mut short = alert(AlertEvent::Raised, Severity::Low);
        short.alert_id = "abc".into();
        assert!(line(&short).ends_with("  [id abc]\n"));
    }

    #[test]
    fn control_and_bidi_characters_cannot_break_or_spoof_the_line() {
        let mut hostile = alert(AlertEvent::Raised, Severity::Medium);
        hostile.entity = "pod:x\n\u{1b}[2Jfake".into();
        hostile.summary = "evil\u{202E}gpj.exe\r".into();
        let shown = line(&hostile);
        assert_eq!(shown.matches('\n').count(), 1, "{shown:?}");
        assert!(shown.ends_with("]\n"));
        assert!(!shown.contains('\u{1b}') && !shown.contains('\u{202E}') && !shown.contains('\r'), "{shown:?}");
        assert!(shown.contains(r"pod:x\n\u{1b}[2Jfake") && shown.contains(r"evil\u{202e}gpj.exe\r"), "{shown:?}");
    }
}
