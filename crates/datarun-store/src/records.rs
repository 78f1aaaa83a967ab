//! Accepted records: the history of every version and the latest version of each certificate.

use crate::{integer, now_millis, text, Result, Store};
use std::collections::HashMap;

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

/// Rows per multi-row statement: far below SQLite's and PostgreSQL's parameter limits.
const ROWS_PER_STATEMENT: usize = 200;

/// `$1, $2, …, $n`, for an `IN (…)` list.
fn parameter_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns)
                .map(|c| format!("${}", row * columns + c))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Stores a batch of records in one transaction, in order, and returns what happened
    /// to each. Every new record joins the history; the newest version of each
    /// certificate becomes its current version. A record whose id was seen before is a
    /// duplicate (same content) or a replay (other content); a version not newer than the
    /// stored one is stale; a certificate of another department is refused.
    pub async fn store_records(&self, records: &[StoredRecord]) -> Result<Vec<StoreOutcome>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        // What is already stored, for every record id and certificate in the batch.
        let mut digests: HashMap<String, String> = HashMap::new();
        let mut current: HashMap<String, (String, i64)> = HashMap::new();
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let list = parameter_list(chunk.len());
            let sql = format!(
                "SELECT record_id, content_digest FROM records WHERE record_id IN ({list})"
            );
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query.bind(&record.record_id);
            }
            for row in query.fetch_all(&mut **tx).await? {
                digests.insert(text(&row, "record_id")?, text(&row, "content_digest")?);
            }
            let sql = format!(
                "SELECT certificate_id, department_id, issued_at FROM certificates WHERE certificate_id IN ({list})"
            );
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query.bind(&record.certificate_id);
            }
            for row in query.fetch_all(&mut **tx).await? {
                current.insert(
                    text(&row, "certificate_id")?,
                    (text(&row, "department_id")?, integer(&row, "issued_at")?),
                );
            }
        }
        // Decide in order, so later records in the batch see earlier ones.
        let mut outcomes = Vec::with_capacity(records.len());
        let mut accepted: Vec<&StoredRecord> = Vec::new();
        let mut newest: HashMap<&str, &StoredRecord> = HashMap::new();
        for record in records {
            let outcome = if let Some(digest) = digests.get(&record.record_id) {
                if *digest == record.content_digest {
                    StoreOutcome::Duplicate
                } else {
                    StoreOutcome::Replayed
                }
            } else {
                match current.get(&record.certificate_id) {
                    Some((department, _)) if *department != record.department => {
                        StoreOutcome::ForeignCertificate
                    }
                    Some((_, issued_at)) if *issued_at >= record.issued_at => StoreOutcome::Stale,
                    _ => StoreOutcome::Stored,
                }
            };
            if outcome == StoreOutcome::Stored {
                digests.insert(record.record_id.clone(), record.content_digest.clone());
                current.insert(
                    record.certificate_id.clone(),
                    (record.department.clone(), record.issued_at),
                );
                accepted.push(record);
                newest.insert(&record.certificate_id, record);
            }
            outcomes.push(outcome);
        }
        let now = now_millis();
        for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO records (record_id, certificate_id, record_type, schema_version, department_id, subject_id,
                     issued_at, signing_key_id, content_digest, signature_hex, fields_json, stored_at)
                 VALUES {}",
                placeholders(chunk.len(), 12)
            );
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query
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
                    .bind(serde_json::Value::Object(record.fields.clone()).to_string())
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        let latest: Vec<&StoredRecord> = newest.into_values().collect();
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
                     issued_at, updated_at)
                 VALUES {}
                 ON CONFLICT (certificate_id) DO UPDATE SET
                     record_type = excluded.record_type, subject_id = excluded.subject_id,
                     current_record_id = excluded.current_record_id, issued_at = excluded.issued_at,
                     updated_at = excluded.updated_at",
                placeholders(chunk.len(), 7)
            );
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query
                    .bind(&record.certificate_id)
                    .bind(&record.record_type)
                    .bind(&record.department)
                    .bind(&record.subject)
                    .bind(&record.record_id)
                    .bind(record.issued_at)
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
            let list = parameter_list(chunk.len());
            let sql = format!("DELETE FROM certificate_guardians WHERE certificate_id IN ({list})");
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query.bind(&record.certificate_id);
            }
            query.execute(&mut **tx).await?;
            let guardians: Vec<(&str, &str, &str)> = chunk
                .iter()
                .flat_map(|r| {
                    let mut unique: Vec<&String> = r.guardians.iter().collect();
                    unique.sort();
                    unique.dedup();
                    unique
                        .into_iter()
                        .map(move |g| (r.certificate_id.as_str(), g.as_str(), r.subject.as_str()))
                })
                .collect();
            if !guardians.is_empty() {
                let sql = format!(
                    "INSERT INTO certificate_guardians (certificate_id, guardian_id, subject_id) VALUES {}",
                    placeholders(guardians.len(), 3)
                );
                let mut query = sqlx::query(&sql);
                for (certificate, guardian, subject) in guardians {
                    query = query.bind(certificate).bind(guardian).bind(subject);
                }
                query.execute(&mut **tx).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
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
