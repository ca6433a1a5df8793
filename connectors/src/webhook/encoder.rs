//! Alert batch → webhook body, its signature and its idempotency key. Pure.

use hmac::{Hmac, Mac};
use peergraph_schemas::Alert;
use sha2::{Digest, Sha256};

use crate::idempotency::event_key;

/// `{"alerts": [<alert>, ...]}`, each alert as on the alerts topic.
pub fn encode_body(batch: &[Alert]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&serde_json::json!({ "alerts": batch }))
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the timestamp is signed with the body,
/// so a captured request cannot be replayed later with a fresh timestamp.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The same for every delivery of the same batch (a hash of its events' keys), so a receiver can
/// drop a retried batch it already processed.
pub fn idempotency_key(batch: &[Alert]) -> String {
    let mut hash = Sha256::new();
    for alert in batch {
        hash.update(event_key(alert).as_bytes());
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use peergraph_schemas::AlertEvent;

    use super::*;
    use crate::test_support::alert;

    #[test]
    fn the_signature_matches_an_independent_hmac_sha256_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Ours is the same HMAC over "<timestamp>.<body>".
        let mut expected = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
        expected.update(b"1.x");
        assert_eq!(signature(b"Jefe", 1, b"x"), format!("sha256={}", hex::encode(expected.finalize().into_bytes())));
    }

    #[test]
    fn the_body_lists_the_alerts_and_the_key_depends_only_on_their_events() {
        let batch = vec![alert("a", AlertEvent::Raised), alert("b", AlertEvent::Raised)];
        let body: serde_json::Value = serde_json::from_slice(&encode_body(&batch).expect("json")).expect("parses");
        assert_eq!(body["alerts"][1]["alert_id"], "b");
        let mut changed = batch.clone();
        changed[0].summary = "other words".into();
        assert_eq!(idempotency_key(&batch), idempotency_key(&changed));
        assert_ne!(idempotency_key(&batch), idempotency_key(&batch[..1]));
    }
}
