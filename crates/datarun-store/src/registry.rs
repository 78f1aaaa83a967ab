//! The trust registry: departments, their signing keys, publish permissions,
//! registered schemas and the purpose catalogue.

use crate::{
    integer, now_millis, on_pool, optional_integer, text, Result, RowExt, Store, StoreError,
};
use datarun_domain::trust::KeyWindow;
use datarun_domain::{DepartmentId, KeyId, PurposeCode, RecordType};

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

    /// Registers a department's Ed25519 public key (32 bytes).
    pub async fn add_signing_key(
        &self,
        department: &DepartmentId,
        key_id: &KeyId,
        public_key: &[u8],
        not_before: i64,
        not_after: Option<i64>,
    ) -> Result<()> {
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
                return Ok(());
            }
            return Err(StoreError::Conflict(format!(
                "key id {key_id} is already registered with another key; keys are never replaced, register a new key id"
            )));
        }
        on_pool!(self, |pool| {
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
        .execute(pool)
        .await?;
        });
        Ok(())
    }

    /// Revokes a key from `at` on: records the hub receives from then on are refused,
    /// whatever signing time they claim. An earlier revocation is never moved later.
    pub async fn revoke_signing_key(&self, key_id: &KeyId, at: i64) -> Result<()> {
        let done = on_pool!(self, |pool| {
            sqlx::query(
            "UPDATE signing_keys SET revoked_at = CASE WHEN revoked_at IS NULL OR revoked_at > $1 THEN $1 ELSE revoked_at END
             WHERE signing_key_id = $2"
        )
        .bind(at)
        .bind(key_id.as_str())
        .execute(pool)
        .await?
        .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound(format!("signing key {key_id}")));
        }
        Ok(())
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
            row.map(|row| {
                Ok(TrustedKey {
                    signing_key_id: text(&row, "signing_key_id")?,
                    department: text(&row, "department_id")?,
                    public_key: row.bytes("public_key")?,
                    not_before: integer(&row, "not_before")?,
                    not_after: optional_integer(&row, "not_after")?,
                    revoked_at: optional_integer(&row, "revoked_at")?,
                })
            })
            .transpose()
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

    pub async fn add_purpose(&self, purpose: &PurposeCode, description: &str) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO purposes (purpose_code, description, registered_at) VALUES ($1, $2, $3)
             ON CONFLICT (purpose_code) DO UPDATE SET description = excluded.description",
        )
        .bind(purpose.as_str())
        .bind(description)
        .bind(now_millis())
        .execute(pool)
        .await?;
        });
        Ok(())
    }

    pub async fn purpose_exists(&self, purpose: &PurposeCode) -> Result<bool> {
        let n = on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM purposes WHERE purpose_code = $1")
                .bind(purpose.as_str())
                .fetch_one(pool)
                .await?;
            integer(&row, "n")?
        });
        Ok(n > 0)
    }
}
