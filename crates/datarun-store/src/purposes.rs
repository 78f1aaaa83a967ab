//! The purpose catalogue in the database: each purpose's titles, legal basis and the
//! fields of each record type it may need, checked against the registered schemas when
//! registered and read by every grant and lookup.

use crate::audit::{append, reserve, NewAuditEvent};
use crate::schemas::latest_live_version;
use crate::{now_millis, on_pool, on_tx, Result, RowExt, Store, StoreError, WriteTransaction};
use datarun_domain::{Purpose, PurposeCode};
use serde_json::json;

fn purpose_from_row(row: &impl RowExt) -> Result<Option<Purpose>> {
    let Ok(definition) = row.fields("definition") else {
        // Registered before the catalogue had definitions (migration 0010): it needs
        // nothing until `datarun purpose register` or `datarun up` gives it one.
        return Ok(None);
    };
    serde_json::from_value(serde_json::Value::Object(definition))
        .map(Some)
        .map_err(|error| StoreError::Corrupt(format!("purpose definition: {error}")))
}

/// The catalogue entry of `code` inside a write transaction.
pub(crate) async fn purpose_in(
    tx: &mut WriteTransaction,
    code: &PurposeCode,
) -> Result<Option<Purpose>> {
    on_tx!(tx, |conn| {
        let row = sqlx::query("SELECT definition FROM purposes WHERE purpose_code = $1")
            .bind(code.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(row) => purpose_from_row(&row),
            None => Ok(None),
        }
    })
}

impl Store {
    /// Adds or replaces a purpose, audited (`purpose_registered`); the same entry again is
    /// a no-op. Every record type it
    /// needs must have a registered schema, and every field must be a field of that
    /// record type's newest version.
    pub async fn register_purpose(&self, actor: &str, purpose: &Purpose) -> Result<()> {
        purpose.check().map_err(StoreError::Invalid)?;
        // Registering the same entry again (every `datarun up`) changes nothing and
        // audits nothing.
        if self.purpose(&purpose.code).await?.as_ref() == Some(purpose) {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (record_type, fields) in &purpose.needs {
            let known = match latest_live_version(&mut tx, record_type.as_str()).await? {
                Some(version) => {
                    self.version_fields
                        .fields(&mut tx, record_type.as_str(), version)
                        .await?
                }
                None => None,
            };
            let Some(known) = known else {
                return Err(StoreError::Invalid(format!(
                    "purpose {}: record type {record_type} has no registered schema",
                    purpose.code
                )));
            };
            if let Some(unknown) = fields
                .iter()
                .find(|f| !known.sensitivities.iter().any(|(name, _)| name == *f))
            {
                return Err(StoreError::Invalid(format!(
                    "purpose {}: {record_type} has no field {}",
                    purpose.code,
                    unknown.chars().take(64).collect::<String>()
                )));
            }
        }
        let place = reserve(&mut tx).await?;
        let description = format!("{} — {}", purpose.title_zh, purpose.title_en);
        let definition = sqlx::types::Json(purpose);
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO purposes (purpose_code, description, registered_at, definition) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (purpose_code) DO UPDATE SET description = excluded.description, definition = excluded.definition",
            )
            .bind(purpose.code.as_str())
            .bind(&description)
            .bind(now_millis())
            .bind(definition)
            .execute(&mut *conn)
            .await?;
        });
        append(
            &mut tx,
            place,
            NewAuditEvent {
                kind: "purpose_registered".into(),
                actor: actor.to_owned(),
                purpose: Some(purpose.code.to_string()),
                outcome: "done".into(),
                detail: json!({ "needs": purpose.needs }),
                ..NewAuditEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The catalogue entry of `code`, when registered with a definition.
    pub async fn purpose(&self, code: &PurposeCode) -> Result<Option<Purpose>> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT definition FROM purposes WHERE purpose_code = $1")
                .bind(code.as_str())
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => purpose_from_row(&row),
                None => Ok(None),
            }
        })
    }

    /// The whole catalogue, by code.
    pub async fn purposes(&self) -> Result<Vec<Purpose>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT definition FROM purposes ORDER BY purpose_code")
                .fetch_all(pool)
                .await?;
            let mut purposes = Vec::with_capacity(rows.len());
            for row in &rows {
                purposes.extend(purpose_from_row(row)?);
            }
            Ok(purposes)
        })
    }
}

/// A hub instance's public signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubKey {
    pub key_id: String,
    pub public_key: [u8; 32],
    pub registered_at_millis: i64,
}

impl Store {
    /// Registers a hub instance's public key (idempotent): documents it signs verify
    /// against the list any hub serves.
    pub async fn register_hub_key(&self, key_id: &str, public_key: &[u8; 32]) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO hub_keys (key_id, public_key, registered_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key_id) DO NOTHING",
            )
            .bind(key_id)
            .bind(&public_key[..])
            .bind(now_millis())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every hub instance's public key, oldest first.
    pub async fn hub_keys(&self) -> Result<Vec<HubKey>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT key_id, public_key, registered_at FROM hub_keys ORDER BY registered_at, key_id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(HubKey {
                        key_id: row.text("key_id")?,
                        public_key: row
                            .bytes("public_key")?
                            .try_into()
                            .map_err(|_| StoreError::Corrupt("hub key length".into()))?,
                        registered_at_millis: row.integer("registered_at")?,
                    })
                })
                .collect()
        })
    }
}
