//! The change feed: every stored record in commit order (`records.feed_seq`), read by
//! the departments entitled to its record type, and the entitlements themselves.

use crate::audit::{insert_event, lock_head, set_head, NewAuditEvent};
use crate::{integer, on_pool, on_tx, text, Result, RowExt, Store, StoreError, WriteTransaction};
use datarun_domain::{DepartmentId, RecordType};

/// One stored record as the feed serves it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedEntry {
    /// Its place in the feed: a reader asks for what follows the last one it applied.
    pub seq: i64,
    pub record_id: String,
    pub certificate_id: String,
    pub record_type: String,
    pub schema_version: i64,
    pub issuing_department: String,
    pub subject: String,
    pub signed_at_millis: i64,
    /// The version's own status field (`VALID` when its schema has none).
    pub status: String,
    pub superseded_by: Option<String>,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Hands out `count` consecutive feed places in the ingest transaction; returns the
/// first. The head's row lock, held to commit, makes commit order the feed's order.
pub(crate) async fn allocate(tx: &mut WriteTransaction, count: usize) -> Result<i64> {
    if count == 0 {
        return Ok(0);
    }
    let count = count as i64;
    let last = on_tx!(tx, |conn| {
        let row = sqlx::query("UPDATE feed_head SET seq = seq + $1 WHERE id = 1 RETURNING seq")
            .bind(count)
            .fetch_one(&mut *conn)
            .await?;
        integer(&row, "seq")?
    });
    Ok(last - count + 1)
}

/// At most this many entries per feed read.
pub const FEED_PAGE_MAX: i64 = 1_000;

impl Store {
    /// Records of `record_types` after feed place `after`, oldest first, at most `limit`.
    pub async fn feed(
        &self,
        record_types: &[RecordType],
        after: i64,
        limit: i64,
    ) -> Result<Vec<FeedEntry>> {
        let types: Vec<&str> = record_types.iter().map(RecordType::as_str).collect();
        let limit = limit.clamp(1, FEED_PAGE_MAX);
        let rows = on_pool!(self, |pool| {
            let sql = format!(
                "SELECT feed_seq, record_id, certificate_id, record_type, schema_version, department_id,
                     subject_id, signed_at, fields
                 FROM records WHERE feed_seq > $1 AND record_type IN ({})
                 ORDER BY feed_seq LIMIT {limit}",
                (0..types.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(&sql).bind(after);
            for record_type in &types {
                query = query.bind(*record_type);
            }
            query
                .fetch_all(pool)
                .await?
                .iter()
                .map(entry_from_row)
                .collect::<Result<Vec<_>>>()?
        });
        Ok(rows)
    }

    /// Lets `department` pull `record_type` from the change feed; audited
    /// `entitlement_granted`. Granting again changes nothing.
    pub async fn grant_entitlement(
        &self,
        actor: &str,
        department: &DepartmentId,
        record_type: &RecordType,
    ) -> Result<()> {
        if !self.department_exists(department).await? {
            return Err(StoreError::NotFound(format!("department {department}")));
        }
        if self.entitled(department, record_type).await? {
            return Ok(());
        }
        self.change_entitlement(actor, department, record_type, true)
            .await
    }

    /// Ends `department`'s entitlement to `record_type`; audited `entitlement_revoked`.
    pub async fn revoke_entitlement(
        &self,
        actor: &str,
        department: &DepartmentId,
        record_type: &RecordType,
    ) -> Result<()> {
        if !self.entitled(department, record_type).await? {
            return Err(StoreError::NotFound(format!(
                "an entitlement of {department} to {record_type}"
            )));
        }
        self.change_entitlement(actor, department, record_type, false)
            .await
    }

    async fn change_entitlement(
        &self,
        actor: &str,
        department: &DepartmentId,
        record_type: &RecordType,
        grant: bool,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let (seq, hash) = lock_head(&mut tx).await?;
        on_tx!(&mut tx, |conn| {
            if grant {
                sqlx::query(
                    "INSERT INTO entitlements (department_id, record_type, granted_at) VALUES ($1, $2, $3)
                     ON CONFLICT (department_id, record_type) DO NOTHING",
                )
                .bind(department.as_str())
                .bind(record_type.as_str())
                .bind(crate::now_millis())
                .execute(&mut *conn)
                .await?;
            } else {
                sqlx::query(
                    "DELETE FROM entitlements WHERE department_id = $1 AND record_type = $2",
                )
                .bind(department.as_str())
                .bind(record_type.as_str())
                .execute(&mut *conn)
                .await?;
            }
        });
        let event = NewAuditEvent {
            kind: if grant {
                "entitlement_granted"
            } else {
                "entitlement_revoked"
            }
            .into(),
            actor: actor.into(),
            department: Some(department.to_string()),
            outcome: "done".into(),
            detail: serde_json::json!({ "record_type": record_type.as_str() }),
            ..NewAuditEvent::default()
        };
        let audited = insert_event(&mut tx, seq + 1, &hash, event).await?;
        set_head(&mut tx, audited.seq, &audited.hash).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `department` may pull `record_type` from the change feed.
    pub async fn entitled(
        &self,
        department: &DepartmentId,
        record_type: &RecordType,
    ) -> Result<bool> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM entitlements WHERE department_id = $1 AND record_type = $2",
            )
            .bind(department.as_str())
            .bind(record_type.as_str())
            .fetch_one(pool)
            .await?;
            Ok(integer(&row, "n")? > 0)
        })
    }
}

fn entry_from_row(row: &impl RowExt) -> Result<FeedEntry> {
    let fields = row.fields("fields")?;
    let status = fields
        .get("status")
        .and_then(|v| v.as_str())
        .unwrap_or("VALID")
        .to_owned();
    let superseded_by = fields
        .get("superseded_by")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(FeedEntry {
        seq: integer(row, "feed_seq")?,
        record_id: text(row, "record_id")?,
        certificate_id: text(row, "certificate_id")?,
        record_type: text(row, "record_type")?,
        schema_version: integer(row, "schema_version")?,
        issuing_department: text(row, "department_id")?,
        subject: text(row, "subject_id")?,
        signed_at_millis: integer(row, "signed_at")?,
        status,
        superseded_by,
        fields,
    })
}
