//! Whether a registered key may sign a record the hub is receiving now, and whether the
//! record's claimed signing time is believable. Both are judged by the hub's clock at
//! receipt and fail closed: a time the signer chooses can condemn a record, never save it.

use crate::envelope::header::{KEY_ID as KEY_FIELD, SIGNED_AT as SIGNED_AT_FIELD};
use crate::reason::{RejectReason, Rejection};

/// How far ahead of the hub's clock a department's `signed_at` may be, by default.
pub const DEFAULT_MAX_CLOCK_SKEW_MILLIS: i64 = 5 * 60 * 1000;

/// A registered key's validity window and revocation, Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWindow {
    pub not_before: i64,
    pub not_after: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl KeyWindow {
    /// Judges a record signed with this key, claiming `signed_at`, received at
    /// `received_at` by the hub's clock. Revocation and expiry count from when the hub
    /// receives the record, whatever it claims; a claimed signing time before the key's
    /// validity began, or more than `max_skew` ahead of the hub's clock, is refused too.
    pub fn judge(&self, signed_at: i64, received_at: i64, max_skew: i64) -> Result<(), Rejection> {
        if let Some(revoked_at) = self.revoked_at {
            if received_at >= revoked_at {
                return Err(Rejection::at(
                    RejectReason::KeyRevoked,
                    KEY_FIELD,
                    "the signing key was revoked before the hub received this record",
                ));
            }
        }
        if self.not_after.is_some_and(|end| received_at >= end) {
            return Err(Rejection::at(
                RejectReason::KeyExpired,
                KEY_FIELD,
                "the signing key's validity ended before the hub received this record",
            ));
        }
        if received_at < self.not_before {
            return Err(Rejection::at(
                RejectReason::KeyNotYetValid,
                KEY_FIELD,
                "the signing key's validity has not begun",
            ));
        }
        if signed_at < self.not_before.saturating_sub(max_skew) {
            return Err(Rejection::at(
                RejectReason::KeyNotYetValid,
                SIGNED_AT_FIELD,
                "the record claims it was signed before the signing key's validity began",
            ));
        }
        if signed_at > received_at.saturating_add(max_skew) {
            return Err(Rejection::at(
                RejectReason::SignedInFuture,
                SIGNED_AT_FIELD,
                format!(
                    "the record claims it was signed {} s ahead of the hub's clock; at most {} s are allowed",
                    (signed_at - received_at) / 1000,
                    max_skew / 1000
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: i64 = 300_000;
    const NOW: i64 = 1_800_000_000_000;

    fn check(window: KeyWindow, signed_at: i64, expected: Option<RejectReason>) {
        let got = window.judge(signed_at, NOW, SKEW).err().map(|r| r.reason);
        assert_eq!(got, expected, "{window:?} signed_at {signed_at}");
    }

    fn window(not_before: i64, not_after: Option<i64>, revoked_at: Option<i64>) -> KeyWindow {
        KeyWindow {
            not_before,
            not_after,
            revoked_at,
        }
    }

    #[test]
    fn key_windows() {
        use RejectReason::*;
        let always = window(0, None, None);
        check(always, NOW, None);
        check(always, NOW - 10 * 365 * 86_400_000, None);
        check(always, NOW + SKEW, None);
        check(always, NOW + SKEW + 1, Some(SignedInFuture));
        check(always, NOW + 10 * 365 * 86_400_000, Some(SignedInFuture));
        // Revoked an hour ago: a back-dated signing time does not help.
        let revoked = window(0, None, Some(NOW - 3_600_000));
        check(revoked, NOW - 10 * 365 * 86_400_000, Some(KeyRevoked));
        check(revoked, NOW, Some(KeyRevoked));
        check(window(0, None, Some(NOW)), NOW - 1, Some(KeyRevoked));
        check(window(0, None, Some(NOW + 1)), NOW, None);
        // Expired: the same, whatever the record claims.
        let expired = window(0, Some(NOW - 1), None);
        check(expired, NOW - 86_400_000, Some(KeyExpired));
        check(window(0, Some(NOW + 1), None), NOW, None);
        // Not yet valid: by the hub's clock, or by the record's own claim.
        check(window(NOW + 1, None, None), NOW, Some(KeyNotYetValid));
        check(
            window(NOW - 1_000, None, None),
            NOW - 1_000 - SKEW - 1,
            Some(KeyNotYetValid),
        );
        check(window(NOW - 1_000, None, None), NOW - 1_000 - SKEW, None);
        // Revocation is reported before expiry.
        check(
            window(0, Some(NOW - 1), Some(NOW - 1)),
            NOW,
            Some(KeyRevoked),
        );
    }
}
