//! Which version of a certificate wins. Record ids are unique per department; versions
//! of one certificate are ordered by their signing time, which the hub has already
//! bounded by its own clock (`trust`), so no signer can park a version in the future.

use crate::envelope::header;
use crate::reason::{RejectReason, Rejection};

/// What is stored already, as far as one incoming record is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored<'a> {
    /// The content digest stored under the incoming record's id, if the id was used.
    pub digest_under_record_id: Option<&'a [u8]>,
    /// The certificate's current version: its department and signing time.
    pub current: Option<(&'a str, i64)>,
}

/// What to do with an incoming, verified record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDecision {
    /// Store it as the certificate's newest version.
    Store,
    /// The very same record is stored already (a redelivery or a re-signed retry).
    Duplicate,
    Reject(Rejection),
}

/// Decides for a record with `digest`, from `department`, signed at `signed_at`.
pub fn decide(
    stored: Stored<'_>,
    digest: &[u8],
    department: &str,
    signed_at: i64,
) -> VersionDecision {
    if let Some(existing) = stored.digest_under_record_id {
        return if existing == digest {
            VersionDecision::Duplicate
        } else {
            VersionDecision::Reject(Rejection::at(
                RejectReason::Replayed,
                header::RECORD_ID,
                "this record id was already used for a different record",
            ))
        };
    }
    match stored.current {
        Some((owner, _)) if owner != department => VersionDecision::Reject(Rejection::at(
            RejectReason::PublisherNotAllowed,
            "certificate_id",
            "the certificate belongs to another department",
        )),
        Some((_, current)) if current >= signed_at => VersionDecision::Reject(Rejection::at(
            RejectReason::StaleVersion,
            header::SIGNED_AT,
            "a version of this certificate signed at the same time or later is already stored",
        )),
        _ => VersionDecision::Store,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stored: Stored<'_>, signed_at: i64, expected: Option<RejectReason>, duplicate: bool) {
        let got = decide(stored, b"d1", "health", signed_at);
        match (&got, expected) {
            (VersionDecision::Reject(r), Some(reason)) => assert_eq!(r.reason, reason),
            (VersionDecision::Duplicate, None) => assert!(duplicate),
            (VersionDecision::Store, None) => assert!(!duplicate),
            _ => panic!("{stored:?} at {signed_at}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn versions() {
        use RejectReason::*;
        let none = Stored::default();
        check(none, 10, None, false);
        let same_id = |digest: &'static [u8]| Stored {
            digest_under_record_id: Some(digest),
            current: Some(("health", 10)),
        };
        check(same_id(b"d1"), 10, None, true);
        check(same_id(b"d1"), 5, None, true);
        check(same_id(b"d2"), 20, Some(Replayed), false);
        let current = |department, signed_at| Stored {
            digest_under_record_id: None,
            current: Some((department, signed_at)),
        };
        check(current("health", 10), 11, None, false);
        check(current("health", 10), 10, Some(StaleVersion), false);
        check(current("health", 10), 9, Some(StaleVersion), false);
        check(current("tax", 10), 11, Some(PublisherNotAllowed), false);
    }
}
