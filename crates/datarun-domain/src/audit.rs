//! Audit events and the hash chain that makes the log tamper-evident.
//!
//! Each event's hash covers its own fields and the previous event's hash, so changing
//! or deleting any stored event breaks every hash after it.

use ring::{digest, hmac};
use serde::Serialize;

/// The hash of the (non-existent) event before the first one.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event as stored. `subject_ref` is a keyed hash, never an identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub occurred_at_millis: i64,
    /// e.g. `lookup`, `consent_granted`, `ingest_rejected`.
    pub kind: String,
    /// The actor id, or `broker` for ingest.
    pub actor: String,
    pub department: Option<String>,
    pub subject_ref: Option<String>,
    pub consent_id: Option<String>,
    pub purpose: Option<String>,
    /// `allowed`, `refused`, `rejected`, `recorded`.
    pub outcome: String,
    /// A refusal or rejection code, when there is one.
    pub reason: Option<String>,
    /// Further non-personal detail as a JSON object (record ids, field paths).
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Hex SHA-256 of an event's canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHash(pub String);

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn push_optional(out: &mut Vec<u8>, value: &Option<String>) {
    match value {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            push_field(out, text.as_bytes());
        }
    }
}

impl AuditEvent {
    /// The hash this event must carry, from its fields and `prev_hash`.
    pub fn compute_hash(&self) -> AuditHash {
        let mut bytes = Vec::with_capacity(256 + self.detail.len());
        bytes.extend_from_slice(b"datarun-audit-v1\n");
        push_field(&mut bytes, self.seq.to_string().as_bytes());
        push_field(&mut bytes, self.occurred_at_millis.to_string().as_bytes());
        push_field(&mut bytes, self.kind.as_bytes());
        push_field(&mut bytes, self.actor.as_bytes());
        push_optional(&mut bytes, &self.department);
        push_optional(&mut bytes, &self.subject_ref);
        push_optional(&mut bytes, &self.consent_id);
        push_optional(&mut bytes, &self.purpose);
        push_field(&mut bytes, self.outcome.as_bytes());
        push_optional(&mut bytes, &self.reason);
        push_field(&mut bytes, self.detail.as_bytes());
        push_field(&mut bytes, self.prev_hash.as_bytes());
        AuditHash(hex::encode(digest::digest(&digest::SHA256, &bytes)))
    }

    /// Sets `prev_hash` and `hash` so the event extends a chain whose head is `prev_hash`.
    pub fn chain_after(mut self, seq: i64, prev_hash: &str) -> Self {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash().0;
        self
    }
}

/// Where a chain stops being intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("audit event {seq}: its stored hash does not match its contents (altered)")]
    Altered { seq: i64 },
    #[error("audit event {seq}: it does not point at the hash of event {previous} (altered or reordered)")]
    Unlinked { seq: i64, previous: i64 },
    #[error("audit event {expected} is missing (deleted); the next stored event is {found}")]
    Missing { expected: i64, found: i64 },
    #[error("the chain ends at event {last} but the head records {head} events (events deleted at the end)")]
    Truncated { last: i64, head: i64 },
    #[error("the chain head's hash does not match event {seq} (altered)")]
    HeadMismatch { seq: i64 },
}

/// Walks events in `seq` order and checks each link; `verify_chain` keeps state between
/// batches so a large log can be verified without holding it in memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        if event.seq != self.next_seq {
            return Err(ChainBreak::Missing {
                expected: self.next_seq,
                found: event.seq,
            });
        }
        if event.compute_hash().0 != event.hash {
            return Err(ChainBreak::Altered { seq: event.seq });
        }
        if event.prev_hash != self.prev_hash {
            return Err(ChainBreak::Unlinked {
                seq: event.seq,
                previous: event.seq - 1,
            });
        }
        self.next_seq += 1;
        self.prev_hash.clone_from(&event.hash);
        Ok(())
    }

    /// Checks the chain's end against the separately stored head (count and hash).
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<i64, ChainBreak> {
        let last = self.next_seq - 1;
        if last != head_seq {
            return Err(ChainBreak::Truncated {
                last,
                head: head_seq,
            });
        }
        if head_hash != self.prev_hash {
            return Err(ChainBreak::HeadMismatch { seq: last });
        }
        Ok(last)
    }
}

/// A keyed hash of a personal identifier (HMAC-SHA256, hex, 32 characters): lets the
/// audit log and application logs be searched by person without containing the number.
pub fn pseudonym(key: &[u8], identifier: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, identifier.as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> AuditEvent {
        AuditEvent {
            seq: 0,
            occurred_at_millis: 1_000,
            kind: kind.into(),
            actor: "cw1".into(),
            department: Some("public_security".into()),
            subject_ref: Some(pseudonym(b"k", "440303201506303948")),
            consent_id: None,
            purpose: None,
            outcome: "allowed".into(),
            reason: None,
            detail: "{}".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn chain(n: usize) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n as i64)
            .map(|seq| {
                let e = event("lookup").chain_after(seq, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(events: &[AuditEvent], head_seq: i64, head_hash: &str) -> Result<i64, ChainBreak> {
        let mut verifier = ChainVerifier::default();
        for e in events {
            verifier.check(e)?;
        }
        verifier.finish(head_seq, head_hash)
    }

    #[test]
    fn intact_chain_verifies() {
        let events = chain(5);
        assert_eq!(verify(&events, 5, &events[4].hash), Ok(5));
    }

    #[test]
    fn altered_event_is_named() {
        let mut events = chain(5);
        events[2].outcome = "refused".into();
        assert_eq!(
            verify(&events, 5, &events[4].hash.clone()),
            Err(ChainBreak::Altered { seq: 3 })
        );
    }

    #[test]
    fn rehashed_event_breaks_the_next_link() {
        let mut events = chain(5);
        events[2].outcome = "refused".into();
        events[2].hash = events[2].compute_hash().0;
        assert_eq!(
            verify(&events, 5, &events[4].hash.clone()),
            Err(ChainBreak::Unlinked {
                seq: 4,
                previous: 3
            })
        );
    }

    #[test]
    fn deleted_events_are_found_in_the_middle_and_at_the_end() {
        let mut events = chain(5);
        let head = events[4].hash.clone();
        events.remove(1);
        assert_eq!(
            verify(&events, 5, &head),
            Err(ChainBreak::Missing {
                expected: 2,
                found: 3
            })
        );
        let mut events = chain(5);
        events.pop();
        assert_eq!(
            verify(&events, 5, &head),
            Err(ChainBreak::Truncated { last: 4, head: 5 })
        );
    }

    #[test]
    fn pseudonyms_are_keyed() {
        assert_ne!(pseudonym(b"a", "x"), pseudonym(b"b", "x"));
        assert_eq!(pseudonym(b"a", "x"), pseudonym(b"a", "x"));
        assert_eq!(pseudonym(b"a", "x").len(), 32);
    }
}
