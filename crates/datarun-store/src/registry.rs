//! The trust registry: departments, their signing keys, publish permissions,
//! registered schemas and the purpose catalogue.

use crate::audit::{insert_event, lock_head, set_head, NewAuditEvent};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_integer, text, Result, RowExt, Store, StoreError,
    WriteTransaction,
};
use datarun_domain::trust::KeyWindow;
use datarun_domain::{DepartmentId, KeyId, RecordType};

/// A registered public key and its validity.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub signing_key_id: String,
    pub department: String,
    pub public_key: Vec<u8>,
    pub not_before: i64,
    pub not_after: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TrustedKey {
    /// The key's validity, for `trust::KeyWindow::judge`.
    pub fn window(&self) -> KeyWindow {
        KeyWindow {
            not_before: self.not_before,
            not_after: self.not_after,
            revoked_at: self.revoked_at,
        }
    }
}

fn trusted_key_from_row(row: &impl RowExt) -> Result<TrustedKey> {
    Ok(TrustedKey {
        signing_key_id: text(row, "signing_key_id")?,
        department: text(row, "department_id")?,
        public_key: row.bytes("public_key")?,
        not_before: integer(row, "not_before")?,
        not_after: optional_integer(row, "not_after")?,
        revoked_at: optional_integer(row, "revoked_at")?,
    })
}

async fn insert_key(
    tx: &mut WriteTransaction,
    department: &DepartmentId,
    key_id: &KeyId,
    public_key: &[u8],
    not_before: i64,
    not_after: Option<i64>,
) -> Result<()> {
    on_tx!(tx, |conn| {
        sqlx::query(
            "INSERT INTO signing_keys (signing_key_id, department_id, algorithm, public_key, not_before, not_after, registered_at)
             VALUES ($1, $2, 'ed25519', $3, $4, $5, $6)",
        )
        .bind(key_id.as_str())
        .bind(department.as_str())
        .bind(public_key)
        .bind(not_before)
        .bind(not_after)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Appends a key change to the audit chain after `head` (from `lock_head`).
async fn audit_key_change(
    tx: &mut WriteTransaction,
    head: (i64, String),
    actor: &str,
    kind: &str,
    department: &DepartmentId,
    detail: serde_json::Value,
) -> Result<()> {
    let event = NewAuditEvent {
        kind: kind.into(),
        actor: actor.into(),
        department: Some(department.to_string()),
        outcome: "done".into(),
        detail,
        ..NewAuditEvent::default()
    };
    let audited = insert_event(tx, head.0 + 1, &head.1, event).await?;
    set_head(tx, audited.seq, &audited.hash).await
}

impl Store {
    pub async fn add_department(
        &self,
        department: &DepartmentId,
        display_name: &str,
    ) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO departments (department_id, display_name, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (department_id) DO UPDATE SET display_name = excluded.display_name",
        )
        .bind(department.as_str())
        .bind(display_name)
        .bind(now_millis())
        .execute(pool)
        .await?;
        });
        Ok(())
    }

    pub async fn department_exists(&self, department: &DepartmentId) -> Result<bool> {
        let n = on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM departments WHERE department_id = $1")
                .bind(department.as_str())
                .fetch_one(pool)
                .await?;
            integer(&row, "n")?
        });
        Ok(n > 0)
    }

    /// Registers a department's Ed25519 public key (32 bytes), audited as
    /// `key_registered` in the same transaction. Registering the same key again changes
    /// nothing.
    pub async fn add_signing_key(
        &self,
        actor: &str,
        department: &DepartmentId,
        key_id: &KeyId,
        public_key: &[u8],
        not_before: i64,
        not_after: Option<i64>,
    ) -> Result<()> {
        if !self.check_new_key(department, key_id, public_key).await? {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        insert_key(
            &mut tx, department, key_id, public_key, not_before, not_after,
        )
        .await?;
        audit_key_change(
            &mut tx,
            head,
            actor,
            "key_registered",
            department,
            serde_json::json!({
                "key_id": key_id.as_str(),
                "not_before": not_before,
                "not_after": not_after,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// False when exactly this key is registered already; an error when the key id is
    /// taken by another key, the key is not 32 bytes or the department is unknown.
    async fn check_new_key(
        &self,
        department: &DepartmentId,
        key_id: &KeyId,
        public_key: &[u8],
    ) -> Result<bool> {
        if public_key.len() != 32 {
            return Err(StoreError::Invalid(format!(
                "an Ed25519 public key is 32 bytes, got {}",
                public_key.len()
            )));
        }
        if !self.department_exists(department).await? {
            return Err(StoreError::NotFound(format!("department {department}")));
        }
        if let Some(existing) = self.trusted_key(key_id.as_str()).await? {
            if existing.department == department.as_str() && existing.public_key == public_key {
                return Ok(false);
            }
            return Err(StoreError::Conflict(format!(
                "key id {key_id} is already registered with another key; keys are never replaced, register a new key id"
            )));
        }
        Ok(true)
    }

    /// Rotates a department's key in one transaction: registers `key_id` valid from
    /// now, and ends every other live key of the department `overlap_millis` from now
    /// (a key already ending sooner keeps its end). Records under an ended key that
    /// reach the hub after its end are refused `key_expired`. Audited as `key_rotated`
    /// with the keys it ended. Returns them.
    pub async fn rotate_signing_key(
        &self,
        actor: &str,
        department: &DepartmentId,
        key_id: &KeyId,
        public_key: &[u8],
        overlap_millis: i64,
    ) -> Result<Vec<String>> {
        if !self.check_new_key(department, key_id, public_key).await? {
            return Err(StoreError::Conflict(format!(
                "key {key_id} is registered already; a rotation brings a new key"
            )));
        }
        let now = now_millis();
        let ends = now.saturating_add(overlap_millis.max(0));
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        let ended: Vec<String> = on_tx!(&mut tx, |conn| {
            sqlx::query(
                "UPDATE signing_keys SET not_after = $1
                 WHERE department_id = $2 AND revoked_at IS NULL AND (not_after IS NULL OR not_after > $1)
                 RETURNING signing_key_id",
            )
            .bind(ends)
            .bind(department.as_str())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| text(row, "signing_key_id"))
            .collect::<Result<_>>()?
        });
        insert_key(&mut tx, department, key_id, public_key, now, None).await?;
        audit_key_change(
            &mut tx,
            head,
            actor,
            "key_rotated",
            department,
            serde_json::json!({
                "key_id": key_id.as_str(),
                "not_before": now,
                "ended_keys": ended,
                "ended_at": ends,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Revokes a key from `at` on: records the hub receives from then on are refused,
    /// whatever signing time they claim. An earlier revocation is never moved later.
    /// Audited as `key_revoked`.
    pub async fn revoke_signing_key(&self, actor: &str, key_id: &KeyId, at: i64) -> Result<()> {
        let Some(key) = self.trusted_key(key_id.as_str()).await? else {
            return Err(StoreError::NotFound(format!("signing key {key_id}")));
        };
        let department = DepartmentId::parse(&key.department)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let mut tx = self.begin_write().await?;
        let head = lock_head(&mut tx).await?;
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "UPDATE signing_keys SET revoked_at = CASE WHEN revoked_at IS NULL OR revoked_at > $1 THEN $1 ELSE revoked_at END
                 WHERE signing_key_id = $2",
            )
            .bind(at)
            .bind(key_id.as_str())
            .execute(&mut *conn)
            .await?;
        });
        audit_key_change(
            &mut tx,
            head,
            actor,
            "key_revoked",
            &department,
            serde_json::json!({ "key_id": key_id.as_str(), "revoked_at": at }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The keys registered for `department`, oldest first.
    pub async fn department_keys(&self, department: &DepartmentId) -> Result<Vec<TrustedKey>> {
        on_pool!(self, |pool| {
            sqlx::query(
                "SELECT signing_key_id, department_id, public_key, not_before, not_after, revoked_at
                 FROM signing_keys WHERE department_id = $1 ORDER BY registered_at, signing_key_id",
            )
            .bind(department.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(trusted_key_from_row)
            .collect()
        })
    }

    pub async fn trusted_key(&self, key_id: &str) -> Result<Option<TrustedKey>> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT signing_key_id, department_id, public_key, not_before, not_after, revoked_at
                 FROM signing_keys WHERE signing_key_id = $1",
            )
            .bind(key_id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(trusted_key_from_row).transpose()
        })
    }

    pub async fn allow_publish(
        &self,
        department: &DepartmentId,
        record_type: &RecordType,
    ) -> Result<()> {
        if !self.department_exists(department).await? {
            return Err(StoreError::NotFound(format!("department {department}")));
        }
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO publish_permissions (department_id, record_type, granted_at) VALUES ($1, $2, $3)
             ON CONFLICT (department_id, record_type) DO NOTHING",
        )
        .bind(department.as_str())
        .bind(record_type.as_str())
        .bind(now_millis())
        .execute(pool)
        .await?;
        });
        Ok(())
    }

    pub async fn may_publish(&self, department: &str, record_type: &str) -> Result<bool> {
        let n = on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM publish_permissions WHERE department_id = $1 AND record_type = $2",
            )
            .bind(department)
            .bind(record_type)
            .fetch_one(pool)
            .await?;
            integer(&row, "n")?
        });
        Ok(n > 0)
    }

    pub async fn schema_definition(
        &self,
        record_type: &str,
        version: u32,
    ) -> Result<Option<String>> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT definition FROM record_schemas WHERE record_type = $1 AND schema_version = $2",
            )
            .bind(record_type)
            .bind(i64::from(version))
            .fetch_optional(pool)
            .await?;
            row.map(|row| text(&row, "definition")).transpose()
        })
    }
}
