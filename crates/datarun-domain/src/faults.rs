//! Fault injection for the crash-recovery suite: `DATARUN_FAULT_INJECT=<point>:<n>`
//! aborts the process (no destructors, no flushing, like `kill -9`) the n-th time
//! execution reaches `<point>`. Unset, each point costs one atomic load. The points
//! (`docs/ARCHITECTURE.md`) sit between the steps whose order makes ingest
//! exactly-once: checks, store commit, dead letters, offsets; and in a connector,
//! between the broker's acknowledgement of a batch and the checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms one fault point.
pub const FAULT_INJECT_ENV: &str = "DATARUN_FAULT_INJECT";

struct Armed {
    point: String,
    at_hit: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(FAULT_INJECT_ENV).ok()?;
            let (point, at_hit) = value.rsplit_once(':')?;
            Some(Armed {
                point: point.to_owned(),
                at_hit: at_hit.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks a fault point; aborts the process when it is armed and its hit count is reached.
pub fn hit(point: &str) {
    if let Some(armed) = armed() {
        if armed.point == point && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.at_hit {
            eprintln!(
                "datarun: fault injected at {point} (hit {}); aborting",
                armed.at_hit
            );
            std::process::abort();
        }
    }
}
