//! Lookup quotas and the bulk-harvesting alarm, per hub instance and in memory (no
//! database work on the hot path).
//!
//! Quotas are token buckets: each caseworker, and each purpose across all caseworkers,
//! may make `limit` lookups per window, refilled continuously; an empty bucket answers
//! 429 with `Retry-After` (seconds until the next token). The alarm watches each
//! caseworker's distinct subjects over a sliding window: a caseworker who looks up more
//! distinct people than a counter plausibly serves is reported once per window as an
//! audit event (`harvesting_suspected`). With several hub instances behind a load
//! balancer each counts what it serves: set the limits per instance.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limits, from configuration (`[lookups]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Lookups one caseworker may make per window.
    pub per_caseworker: u32,
    /// Lookups all caseworkers together may make for one purpose per window.
    pub per_purpose: u32,
    pub window: Duration,
    /// Distinct subjects one caseworker may look up within `harvest_window` before the
    /// alarm sounds.
    pub harvest_subjects: u32,
    pub harvest_window: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            per_caseworker: 120,
            per_purpose: 6_000,
            window: Duration::from_secs(60),
            harvest_subjects: 50,
            harvest_window: Duration::from_secs(600),
        }
    }
}

/// Buckets kept before idle ones are dropped.
const BUCKETS_MAX: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Why a lookup was not let through, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// `caseworker` or `purpose`.
    pub which: &'static str,
    pub retry_after_secs: u64,
    /// True the first time this bucket ran dry since it last had tokens: worth an audit
    /// event (the rest of a flood is not audited one by one).
    pub first: bool,
}

#[derive(Debug, Default)]
struct Harvest {
    seen: VecDeque<(Instant, u64)>,
    alarmed_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    buckets: Mutex<HashMap<(u8, String), (Bucket, bool)>>,
    harvest: Mutex<HashMap<String, Harvest>>,
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::default(),
            harvest: Mutex::default(),
        }
    }

    pub fn settings(&self) -> QuotaSettings {
        self.settings
    }

    /// Takes one lookup from the caseworker's and the purpose's buckets, or says which is
    /// empty and for how long. Nothing is taken from either when one is empty.
    pub fn take(&self, caseworker: &str, purpose: &str, now: Instant) -> Result<(), QuotaExceeded> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > BUCKETS_MAX {
            // Drop the full ones: they would start full again anyway.
            let window = self.settings.window;
            buckets.retain(|_, (bucket, _)| now.duration_since(bucket.updated) < window);
        }
        let limits = [
            (0u8, caseworker, self.settings.per_caseworker, "caseworker"),
            (1u8, purpose, self.settings.per_purpose, "purpose"),
        ];
        let rate = |limit: u32| f64::from(limit) / self.settings.window.as_secs_f64();
        for (kind, key, limit, which) in limits {
            let (bucket, dry) = buckets.entry((kind, key.to_owned())).or_insert_with(|| {
                (
                    Bucket {
                        tokens: f64::from(limit),
                        updated: now,
                    },
                    false,
                )
            });
            let elapsed = now.duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate(limit)).min(f64::from(limit));
            bucket.updated = now;
            if bucket.tokens < 1.0 {
                let wait = (1.0 - bucket.tokens) / rate(limit).max(f64::MIN_POSITIVE);
                let first = !*dry;
                *dry = true;
                return Err(QuotaExceeded {
                    which,
                    retry_after_secs: wait.ceil().max(1.0) as u64,
                    first,
                });
            }
        }
        for (kind, key, _, _) in limits {
            if let Some((bucket, dry)) = buckets.get_mut(&(kind, key.to_owned())) {
                bucket.tokens -= 1.0;
                *dry = false;
            }
        }
        Ok(())
    }

    /// Notes that `caseworker` looked up `subject`; returns how many distinct subjects
    /// they looked up within the harvest window when that crosses the threshold for the
    /// first time in the window (the alarm), none otherwise. Only a hash of the subject
    /// is kept, in memory.
    pub fn note_subject(&self, caseworker: &str, subject: &str, now: Instant) -> Option<usize> {
        let mut hasher = DefaultHasher::new();
        subject.hash(&mut hasher);
        let subject = hasher.finish();
        let window = self.settings.harvest_window;
        let threshold = self.settings.harvest_subjects as usize;
        let mut harvest = self
            .harvest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if harvest.len() > BUCKETS_MAX {
            harvest.retain(|_, h| {
                h.seen
                    .back()
                    .is_some_and(|(t, _)| now.duration_since(*t) < window)
            });
        }
        let entry = match harvest.entry(caseworker.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Harvest::default()),
        };
        while entry
            .seen
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            entry.seen.pop_front();
        }
        entry.seen.push_back((now, subject));
        // Bounded: past a few times the threshold the alarm has long sounded.
        while entry.seen.len() > threshold.saturating_mul(4).max(16) {
            entry.seen.pop_front();
        }
        let distinct = entry
            .seen
            .iter()
            .map(|(_, s)| *s)
            .collect::<HashSet<_>>()
            .len();
        let quiet = entry
            .alarmed_at
            .is_none_or(|at| now.duration_since(at) >= window);
        if distinct > threshold && quiet {
            entry.alarmed_at = Some(now);
            Some(distinct)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(per_caseworker: u32, per_purpose: u32) -> Quotas {
        Quotas::new(QuotaSettings {
            per_caseworker,
            per_purpose,
            window: Duration::from_secs(60),
            harvest_subjects: 3,
            harvest_window: Duration::from_secs(600),
        })
    }

    #[test]
    fn a_caseworker_gets_the_quota_then_waits_for_a_token() {
        let q = quotas(3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(q.take("cw1", "p", t0), Ok(()));
        }
        let refused = q.take("cw1", "p", t0).unwrap_err();
        assert_eq!(
            (refused.which, refused.retry_after_secs, refused.first),
            ("caseworker", 20, true)
        );
        assert!(
            !q.take("cw1", "p", t0).unwrap_err().first,
            "audited once per dry spell"
        );
        // Another caseworker is not held up.
        assert_eq!(q.take("cw2", "p", t0), Ok(()));
        // 20 s later one token is back.
        assert_eq!(q.take("cw1", "p", t0 + Duration::from_secs(20)), Ok(()));
    }

    #[test]
    fn a_purpose_quota_holds_across_caseworkers_and_takes_nothing_when_dry() {
        let q = quotas(100, 2);
        let t0 = Instant::now();
        assert_eq!(q.take("a", "p", t0), Ok(()));
        assert_eq!(q.take("b", "p", t0), Ok(()));
        assert_eq!(q.take("c", "p", t0).unwrap_err().which, "purpose");
        assert_eq!(q.take("c", "other", t0), Ok(()));
    }

    #[test]
    fn many_distinct_subjects_sound_the_alarm_once_per_window() {
        let q = quotas(100, 100);
        let t0 = Instant::now();
        // The same person again and again is not harvesting.
        for _ in 0..10 {
            assert_eq!(q.note_subject("cw1", "A", t0), None);
        }
        assert_eq!(q.note_subject("cw1", "B", t0), None);
        assert_eq!(q.note_subject("cw1", "C", t0), None);
        assert_eq!(q.note_subject("cw1", "D", t0), Some(4));
        assert_eq!(q.note_subject("cw1", "E", t0), None, "once per window");
        let later = t0 + Duration::from_secs(601);
        assert_eq!(
            q.note_subject("cw1", "F", later),
            None,
            "the window moved on"
        );
    }
}
