//! The operator's view of rejected messages: what was dead-lettered, why, and where
//! it came from — never a payload value.

use crate::{integer, on_pool, optional_integer, optional_text, text, Result, RowExt, Store};
use serde::Serialize;

/// What an operator may filter rejections on.
#[derive(Debug, Clone, Default)]
pub struct RejectionFilter {
    /// A reason code, e.g. `signature_invalid`.
    pub reason: Option<String>,
    /// Only rejections at or after this time, Unix milliseconds.
    pub since_millis: Option<i64>,
    pub limit: i64,
}

/// One rejected message as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionEntry {
    pub rejected_at_millis: i64,
    pub reason: String,
    pub field: Option<String>,
    pub message: String,
    /// As claimed by the envelope; `verified` says whether a valid signature backs it.
    pub record_id: Option<String>,
    pub department: Option<String>,
    pub record_type: Option<String>,
    pub verified: bool,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    /// `intact` or `digested` once published to the dead-letter topic; None until then.
    pub dead_letter_form: Option<String>,
    pub audit_seq: i64,
}

impl Store {
    /// Rejections matching `filter`, newest first, at most `limit` (1-1000).
    pub async fn rejections(&self, filter: &RejectionFilter) -> Result<Vec<RejectionEntry>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT rejected_at, reason, field, message, record_id, department_id, record_type, verified,
                        source_topic, source_partition, source_offset, dead_letter_form, dead_lettered_at, audit_seq
                 FROM ingest_rejections
                 WHERE ($1 = '' OR reason = $1) AND rejected_at >= $2
                 ORDER BY rejected_at DESC, audit_seq DESC LIMIT $3",
            )
            .bind(filter.reason.as_deref().unwrap_or_default())
            .bind(filter.since_millis.unwrap_or(0))
            .bind(filter.limit.clamp(1, 1000))
            .fetch_all(pool)
            .await?;
            rows.iter().map(rejection_from_row).collect()
        })
    }
}

fn rejection_from_row(row: &impl RowExt) -> Result<RejectionEntry> {
    Ok(RejectionEntry {
        rejected_at_millis: integer(row, "rejected_at")?,
        reason: text(row, "reason")?,
        field: optional_text(row, "field")?,
        message: text(row, "message")?,
        record_id: optional_text(row, "record_id")?,
        department: optional_text(row, "department_id")?,
        record_type: optional_text(row, "record_type")?,
        verified: row.boolean("verified")?,
        topic: text(row, "source_topic")?,
        partition: integer(row, "source_partition")?,
        offset: integer(row, "source_offset")?,
        dead_letter_form: optional_integer(row, "dead_lettered_at")?
            .and(optional_text(row, "dead_letter_form")?),
        audit_seq: integer(row, "audit_seq")?,
    })
}
