//! Accepted records: the history of every version and the latest version of each certificate.

use crate::{integer, now_millis, text, Result, Store};

/// A record that passed verification and validation, ready to store.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub record_id: String,
    pub certificate_id: String,
    pub record_type: String,
    pub schema_version: u32,
    pub department: String,
    pub subject: String,
    pub issued_at: i64,
    pub signing_key_id: String,
    /// SHA-256 of the signing input: equal digests mean the very same record.
    pub content_digest: String,
    pub signature_hex: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub guardians: Vec<String>,
}

/// What storing a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored as the certificate's current version.
    Stored,
    /// The same record was stored before (a redelivery): nothing changed.
    Duplicate,
    /// The record id was used before for different content.
    Replayed,
    /// A version issued at the same time or later is already stored.
    Stale,
    /// The certificate id belongs to another department's certificate.
    ForeignCertificate,
}

impl Store {
    /// Stores a record and makes it the certificate's current version, atomically.
    pub async fn store_record(&self, record: &StoredRecord) -> Result<StoreOutcome> {
        let mut tx = self.pool.begin().await?;
        let fields_json = serde_json::Value::Object(record.fields.clone()).to_string();
        let inserted = sqlx::query(
            "INSERT INTO records (record_id, certificate_id, record_type, schema_version, department_id, subject_id,
                 issued_at, signing_key_id, content_digest, signature_hex, fields_json, stored_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (record_id) DO NOTHING",
        )
        .bind(&record.record_id)
        .bind(&record.certificate_id)
        .bind(&record.record_type)
        .bind(i64::from(record.schema_version))
        .bind(&record.department)
        .bind(&record.subject)
        .bind(record.issued_at)
        .bind(&record.signing_key_id)
        .bind(&record.content_digest)
        .bind(&record.signature_hex)
        .bind(&fields_json)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let row = sqlx::query("SELECT content_digest FROM records WHERE record_id = $1")
                .bind(&record.record_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(if text(&row, "content_digest")? == record.content_digest {
                StoreOutcome::Duplicate
            } else {
                StoreOutcome::Replayed
            });
        }
        let current = sqlx::query(
            "SELECT department_id, issued_at FROM certificates WHERE certificate_id = $1",
        )
        .bind(&record.certificate_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(current) = current {
            if text(&current, "department_id")? != record.department {
                tx.rollback().await?;
                return Ok(StoreOutcome::ForeignCertificate);
            }
            if integer(&current, "issued_at")? >= record.issued_at {
                tx.rollback().await?;
                return Ok(StoreOutcome::Stale);
            }
        }
        sqlx::query(
            "INSERT INTO certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
                 issued_at, fields_json, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (certificate_id) DO UPDATE SET
                 record_type = excluded.record_type, subject_id = excluded.subject_id,
                 current_record_id = excluded.current_record_id, issued_at = excluded.issued_at,
                 fields_json = excluded.fields_json, updated_at = excluded.updated_at",
        )
        .bind(&record.certificate_id)
        .bind(&record.record_type)
        .bind(&record.department)
        .bind(&record.subject)
        .bind(&record.record_id)
        .bind(record.issued_at)
        .bind(&fields_json)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM certificate_guardians WHERE certificate_id = $1")
            .bind(&record.certificate_id)
            .execute(&mut *tx)
            .await?;
        for guardian in &record.guardians {
            sqlx::query(
                "INSERT INTO certificate_guardians (certificate_id, guardian_id, subject_id) VALUES ($1, $2, $3)
                 ON CONFLICT (certificate_id, guardian_id) DO NOTHING",
            )
            .bind(&record.certificate_id)
            .bind(guardian)
            .bind(&record.subject)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(StoreOutcome::Stored)
    }

    /// How many record versions and current certificates are stored.
    pub async fn record_counts(&self) -> Result<(i64, i64)> {
        let records = sqlx::query("SELECT COUNT(*) AS n FROM records")
            .fetch_one(&self.pool)
            .await?;
        let certificates = sqlx::query("SELECT COUNT(*) AS n FROM certificates")
            .fetch_one(&self.pool)
            .await?;
        Ok((integer(&records, "n")?, integer(&certificates, "n")?))
    }

    /// True when `guardian` is named as a guardian on a stored certificate of `subject`.
    pub async fn is_guardian_of(&self, guardian: &str, subject: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM certificate_guardians WHERE guardian_id = $1 AND subject_id = $2",
        )
        .bind(guardian)
        .bind(subject)
        .fetch_one(&self.pool)
        .await?;
        Ok(integer(&row, "n")? > 0)
    }

    /// Subjects whose certificates name `guardian` as guardian.
    pub async fn wards_of(&self, guardian: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT subject_id FROM certificate_guardians WHERE guardian_id = $1",
        )
        .bind(guardian)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| text(row, "subject_id")).collect()
    }
}
