//! The schema registry's storage: global schema ids (one per distinct schema, whatever
//! record types register it), each record type's versions pointing at them, soft
//! deletion, and the compatibility configuration. Deciding whether a schema is valid or
//! compatible is the caller's (`datarun_schema`); this module runs that decision inside
//! the registering transaction, so two registrations cannot both pass against the same
//! latest version.

use crate::audit::{insert_event, lock_head, set_head, NewAuditEvent};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_integer, text, Result, RowExt, Store,
    WriteTransaction,
};
use datarun_domain::sensitivity::{field_defaults, field_sensitivities, FieldSensitivities};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// Ids and versions are assigned as max + 1, so registry writes go one at a time:
/// SQLite's writer lock already serialises them; PostgreSQL takes a table lock.
async fn lock_registry(tx: &mut WriteTransaction) -> Result<()> {
    if let WriteTransaction::Postgres(transaction) = tx {
        sqlx::query("LOCK TABLE registry_schemas IN EXCLUSIVE MODE")
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// The global id of the schema with `fingerprint`, assigning the next one (and storing
/// `definition`) when the registry does not hold it yet; true when it was new.
async fn schema_id_for(
    tx: &mut WriteTransaction,
    fingerprint: &[u8; 32],
    definition: &str,
    now: i64,
) -> Result<(i64, bool)> {
    Ok(on_tx!(tx, |conn| {
        let known = sqlx::query("SELECT schema_id FROM registry_schemas WHERE fingerprint = $1")
            .bind(&fingerprint[..])
            .fetch_optional(&mut *conn)
            .await?;
        match known {
            Some(row) => (integer(&row, "schema_id")?, false),
            None => {
                let row = sqlx::query(
                    "SELECT COALESCE(MAX(schema_id), 0) + 1 AS next FROM registry_schemas",
                )
                .fetch_one(&mut *conn)
                .await?;
                let id = integer(&row, "next")?;
                sqlx::query(
                    "INSERT INTO registry_schemas (schema_id, fingerprint, definition, registered_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(&fingerprint[..])
                .bind(definition)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                (id, true)
            }
        }
    }))
}

/// A stored version number, which the registry assigned from 1.
fn version_number(stored: i64) -> Result<u32> {
    u32::try_from(stored)
        .map_err(|_| crate::StoreError::Corrupt(format!("schema version {stored} out of range")))
}

/// Appends one registry change to the audit chain, in the change's transaction.
async fn audit_change(
    tx: &mut WriteTransaction,
    actor: &str,
    kind: &str,
    detail: serde_json::Value,
) -> Result<()> {
    let (seq, hash) = lock_head(tx).await?;
    let event = NewAuditEvent {
        kind: kind.into(),
        actor: actor.into(),
        outcome: "done".into(),
        detail,
        ..NewAuditEvent::default()
    };
    let audited = insert_event(tx, seq + 1, &hash, event).await?;
    set_head(tx, audited.seq, &audited.hash).await
}

/// One version of a record type's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    pub record_type: String,
    pub version: u32,
    pub schema_id: i64,
    pub definition: String,
    pub deleted: bool,
}

/// What registering a schema under a record type did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A new version; `new_schema` when the schema itself was new to the registry.
    Added {
        version: u32,
        schema_id: i64,
        new_schema: bool,
    },
    /// The record type already has this schema as a (live) version: nothing changed.
    Existing { version: u32, schema_id: i64 },
}

/// What deleting a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    NotFound,
    /// Stored records were written with it; it stays.
    InUse {
        records: i64,
    },
}

impl Store {
    /// Registers `definition` (whose fingerprint the caller computed) as the record
    /// type's next version, unless it is already a live version of it. `admit` sees the
    /// live versions, oldest first, inside the transaction, and refuses by returning
    /// `Err`; what it returns on admission is added to the audit event's detail (e.g.
    /// the sensitivity raises accepted with the version).
    pub async fn register_schema_version<E>(
        &self,
        actor: &str,
        record_type: &str,
        definition: &str,
        fingerprint: [u8; 32],
        admit: impl FnOnce(&[SchemaVersion]) -> std::result::Result<serde_json::Value, E>,
    ) -> Result<std::result::Result<Registration, E>> {
        let mut tx = self.begin_write().await?;
        lock_registry(&mut tx).await?;
        let versions = on_tx!(&mut tx, |conn| {
            let rows = sqlx::query(
                "SELECT v.record_type, v.schema_version, v.schema_id, v.deleted_at, s.definition, s.fingerprint
                 FROM record_schemas v JOIN registry_schemas s ON s.schema_id = v.schema_id
                 WHERE v.record_type = $1 ORDER BY v.schema_version",
            )
            .bind(record_type)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        SchemaVersion {
                            record_type: text(row, "record_type")?,
                            version: version_number(integer(row, "schema_version")?)?,
                            schema_id: integer(row, "schema_id")?,
                            definition: text(row, "definition")?,
                            deleted: optional_integer(row, "deleted_at")?.is_some(),
                        },
                        row.bytes("fingerprint")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        });
        if let Some((existing, _)) = versions
            .iter()
            .find(|(v, print)| !v.deleted && print[..] == fingerprint[..])
        {
            return Ok(Ok(Registration::Existing {
                version: existing.version,
                schema_id: existing.schema_id,
            }));
        }
        let live: Vec<SchemaVersion> = versions
            .iter()
            .filter(|(v, _)| !v.deleted)
            .map(|(v, _)| v.clone())
            .collect();
        let admitted = match admit(&live) {
            Ok(admitted) => admitted,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let version = versions.last().map_or(1, |(v, _)| v.version + 1);
        let now = now_millis();
        let (schema_id, new_schema) = schema_id_for(&mut tx, &fingerprint, definition, now).await?;
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO record_schemas (record_type, schema_version, definition, registered_at, schema_id)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(record_type)
            .bind(i64::from(version))
            .bind(definition)
            .bind(now)
            .bind(schema_id)
            .execute(&mut *conn)
            .await?;
        });
        audit_change(&mut tx, actor, "schema_registered", {
            let mut detail = serde_json::json!({
                "record_type": record_type, "version": version, "schema_id": schema_id,
                "new_schema": new_schema,
            });
            if let (Some(detail), serde_json::Value::Object(admitted)) =
                (detail.as_object_mut(), admitted)
            {
                detail.extend(admitted);
            }
            detail
        })
        .await?;
        tx.commit().await?;
        Ok(Ok(Registration::Added {
            version,
            schema_id,
            new_schema,
        }))
    }

    /// A record type's versions, oldest first; soft-deleted ones only when asked.
    pub async fn schema_versions(
        &self,
        record_type: &str,
        include_deleted: bool,
    ) -> Result<Vec<SchemaVersion>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT v.record_type, v.schema_version, v.schema_id, v.deleted_at, s.definition
                 FROM record_schemas v JOIN registry_schemas s ON s.schema_id = v.schema_id
                 WHERE v.record_type = $1 AND ($2 OR v.deleted_at IS NULL)
                 ORDER BY v.schema_version",
            )
            .bind(record_type)
            .bind(include_deleted)
            .fetch_all(pool)
            .await?;
            rows.iter().map(schema_version).collect()
        })
    }

    /// Record types with at least one version (live, or any when asked), sorted.
    pub async fn schema_record_types(&self, include_deleted: bool) -> Result<Vec<String>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT DISTINCT record_type FROM record_schemas
                 WHERE $1 OR deleted_at IS NULL ORDER BY record_type",
            )
            .bind(include_deleted)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| text(row, "record_type")).collect()
        })
    }

    /// A schema by its global id (deleted versions do not hide it: records written with
    /// it must stay readable).
    pub async fn schema_by_id(&self, schema_id: i64) -> Result<Option<String>> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT definition FROM registry_schemas WHERE schema_id = $1")
                .bind(schema_id)
                .fetch_optional(pool)
                .await?;
            row.map(|row| text(&row, "definition")).transpose()
        })
    }

    /// The version of `record_type` registered with schema `schema_id`, and its
    /// definition: how ingest resolves a value's writer schema. Soft-deleted versions
    /// still resolve (records written with them stay readable).
    pub async fn schema_of_record_type(
        &self,
        record_type: &str,
        schema_id: i64,
    ) -> Result<Option<(u32, String)>> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT v.schema_version, s.definition
                 FROM record_schemas v JOIN registry_schemas s ON s.schema_id = v.schema_id
                 WHERE v.record_type = $1 AND v.schema_id = $2
                 ORDER BY v.schema_version DESC LIMIT 1",
            )
            .bind(record_type)
            .bind(schema_id)
            .fetch_optional(pool)
            .await?;
            row.map(|row| {
                Ok((
                    version_number(integer(&row, "schema_version")?)?,
                    text(&row, "definition")?,
                ))
            })
            .transpose()
        })
    }

    /// Every (record type, version) registered with the schema `schema_id`.
    pub async fn versions_of_schema(
        &self,
        schema_id: i64,
        include_deleted: bool,
    ) -> Result<Vec<SchemaVersion>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT v.record_type, v.schema_version, v.schema_id, v.deleted_at, s.definition
                 FROM record_schemas v JOIN registry_schemas s ON s.schema_id = v.schema_id
                 WHERE v.schema_id = $1 AND ($2 OR v.deleted_at IS NULL)
                 ORDER BY v.record_type, v.schema_version",
            )
            .bind(schema_id)
            .bind(include_deleted)
            .fetch_all(pool)
            .await?;
            rows.iter().map(schema_version).collect()
        })
    }

    /// Soft-deletes a version, unless stored records were written with it. (Finding
    /// none scans the records of the type: deletion is a rare operator action.)
    pub async fn delete_schema_version(
        &self,
        actor: &str,
        record_type: &str,
        version: u32,
    ) -> Result<Deletion> {
        let mut tx = self.begin_write().await?;
        let outcome = on_tx!(&mut tx, |conn| {
            let live = sqlx::query(
                "SELECT COUNT(*) AS n FROM record_schemas
                 WHERE record_type = $1 AND schema_version = $2 AND deleted_at IS NULL",
            )
            .bind(record_type)
            .bind(i64::from(version))
            .fetch_one(&mut *conn)
            .await?;
            if integer(&live, "n")? == 0 {
                Deletion::NotFound
            } else {
                let used = sqlx::query(
                    "SELECT COUNT(*) AS n FROM records WHERE record_type = $1 AND schema_version = $2",
                )
                .bind(record_type)
                .bind(i64::from(version))
                .fetch_one(&mut *conn)
                .await?;
                let records = integer(&used, "n")?;
                if records > 0 {
                    Deletion::InUse { records }
                } else {
                    sqlx::query(
                        "UPDATE record_schemas SET deleted_at = $1 WHERE record_type = $2 AND schema_version = $3",
                    )
                    .bind(now_millis())
                    .bind(record_type)
                    .bind(i64::from(version))
                    .execute(&mut *conn)
                    .await?;
                    Deletion::Deleted
                }
            }
        });
        if outcome == Deletion::Deleted {
            audit_change(
                &mut tx,
                actor,
                "schema_deleted",
                serde_json::json!({ "record_type": record_type, "version": version }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// How many stored records name `version` of `record_type` as their writer's schema
    /// (a scan of the type's records: asked only before a deletion).
    pub async fn records_written_with(&self, record_type: &str, version: u32) -> Result<i64> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM records WHERE record_type = $1 AND schema_version = $2",
            )
            .bind(record_type)
            .bind(i64::from(version))
            .fetch_one(pool)
            .await?;
            integer(&row, "n")
        })
    }

    /// The compatibility mode set for `record_type`, or globally for `None`.
    pub async fn compatibility(&self, record_type: Option<&str>) -> Result<Option<String>> {
        on_pool!(self, |pool| {
            let row =
                sqlx::query("SELECT compatibility FROM registry_config WHERE record_type = $1")
                    .bind(record_type.unwrap_or(""))
                    .fetch_optional(pool)
                    .await?;
            row.map(|row| text(&row, "compatibility")).transpose()
        })
    }

    /// Sets the compatibility mode (a name the caller validated) of `record_type`, or
    /// globally for `None`.
    pub async fn set_compatibility(
        &self,
        actor: &str,
        record_type: Option<&str>,
        mode: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO registry_config (record_type, compatibility, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (record_type) DO UPDATE SET compatibility = excluded.compatibility,
                     updated_at = excluded.updated_at",
            )
            .bind(record_type.unwrap_or(""))
            .bind(mode)
            .bind(now_millis())
            .execute(&mut *conn)
            .await?;
        });
        audit_change(
            &mut tx,
            actor,
            "schema_compatibility_set",
            serde_json::json!({ "record_type": record_type, "compatibility": mode }),
        )
        .await?;
        tx.commit().await
    }

    /// Removes a record type's own compatibility mode (the global one applies again);
    /// returns the mode removed.
    pub async fn delete_compatibility(
        &self,
        actor: &str,
        record_type: &str,
    ) -> Result<Option<String>> {
        let previous = self.compatibility(Some(record_type)).await?;
        let mut tx = self.begin_write().await?;
        on_tx!(&mut tx, |conn| {
            sqlx::query("DELETE FROM registry_config WHERE record_type = $1")
                .bind(record_type)
                .execute(&mut *conn)
                .await?;
        });
        if previous.is_some() {
            audit_change(
                &mut tx,
                actor,
                "schema_compatibility_removed",
                serde_json::json!({ "record_type": record_type }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(previous)
    }

    /// Versions registered before the registry had ids (skeleton data directories):
    /// gives each its schema's id, with `fingerprint` computing what the registry
    /// computes for a new schema. Runs when the hub opens a database.
    pub async fn assign_schema_ids(&self, fingerprint: impl Fn(&str) -> [u8; 32]) -> Result<usize> {
        let pending = on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT record_type, schema_version, definition FROM record_schemas
                 WHERE schema_id IS NULL ORDER BY registered_at, record_type, schema_version",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        text(row, "record_type")?,
                        integer(row, "schema_version")?,
                        text(row, "definition")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?
        });
        if pending.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        lock_registry(&mut tx).await?;
        for (record_type, version, definition) in &pending {
            let (id, _) =
                schema_id_for(&mut tx, &fingerprint(definition), definition, now_millis()).await?;
            on_tx!(&mut tx, |conn| {
                // Another hub opening the database at once may have assigned it already.
                sqlx::query(
                    "UPDATE record_schemas SET schema_id = $1
                     WHERE record_type = $2 AND schema_version = $3 AND schema_id IS NULL",
                )
                .bind(id)
                .bind(record_type)
                .bind(*version)
                .execute(&mut *conn)
                .await?;
            });
        }
        tx.commit().await?;
        Ok(pending.len())
    }
}

fn schema_version<R: RowExt>(row: &R) -> Result<SchemaVersion> {
    Ok(SchemaVersion {
        record_type: row.text("record_type")?,
        version: version_number(row.integer("schema_version")?)?,
        schema_id: row.integer("schema_id")?,
        definition: row.text("definition")?,
        deleted: row.optional_integer("deleted_at")?.is_some(),
    })
}

/// What the lookup side reads of one schema version: its fields' tags and defaults.
#[derive(Debug)]
pub(crate) struct VersionFields {
    pub sensitivities: FieldSensitivities,
    pub defaults: Vec<(String, serde_json::Value)>,
}

/// Each schema version's fields, keyed by record type and version.
type VersionFieldMap = HashMap<(String, u32), Arc<VersionFields>>;

#[derive(Debug, Clone, Default)]
pub(crate) struct VersionFieldCache(Arc<RwLock<VersionFieldMap>>);

impl VersionFieldCache {
    /// The fields of `record_type` version `version`, read inside `tx` the first time;
    /// none when the version is not registered.
    pub(crate) async fn fields(
        &self,
        tx: &mut WriteTransaction,
        record_type: &str,
        version: u32,
    ) -> Result<Option<Arc<VersionFields>>> {
        let key = (record_type.to_owned(), version);
        let cached = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(found) = cached {
            return Ok(Some(found));
        }
        let definition = on_tx!(tx, |conn| {
            let row = sqlx::query(
                "SELECT definition FROM record_schemas WHERE record_type = $1 AND schema_version = $2",
            )
            .bind(record_type)
            .bind(i64::from(version))
            .fetch_optional(&mut *conn)
            .await?;
            row.map(|row| text(&row, "definition")).transpose()?
        });
        let Some(definition) = definition else {
            return Ok(None);
        };
        let corrupt = |message: String| {
            crate::StoreError::Corrupt(format!("{record_type} version {version}: {message}"))
        };
        let fields = Arc::new(VersionFields {
            sensitivities: field_sensitivities(&definition).map_err(corrupt)?,
            defaults: field_defaults(&definition).map_err(corrupt)?,
        });
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, fields.clone());
        Ok(Some(fields))
    }
}

/// The newest live version of `record_type`: what a consent granted now is granted
/// against.
pub(crate) async fn latest_live_version(
    tx: &mut WriteTransaction,
    record_type: &str,
) -> Result<Option<u32>> {
    on_tx!(tx, |conn| {
        let row = sqlx::query(
            "SELECT MAX(schema_version) AS version FROM record_schemas
             WHERE record_type = $1 AND deleted_at IS NULL",
        )
        .bind(record_type)
        .fetch_one(&mut *conn)
        .await?;
        optional_integer(&row, "version")?
            .map(version_number)
            .transpose()
    })
}

/// The version a consent granted at `granted_at` (before consents recorded theirs) was
/// granted against: the newest registered by then, else the first.
pub(crate) async fn version_at(
    tx: &mut WriteTransaction,
    record_type: &str,
    granted_at: i64,
) -> Result<Option<u32>> {
    on_tx!(tx, |conn| {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(CASE WHEN registered_at <= $2 THEN schema_version END), MIN(schema_version))
                 AS version
             FROM record_schemas WHERE record_type = $1",
        )
        .bind(record_type)
        .bind(granted_at)
        .fetch_one(&mut *conn)
        .await?;
        optional_integer(&row, "version")?
            .map(version_number)
            .transpose()
    })
}

/// The versions of `record_type` from `version` on (deleted ones too: a deleted
/// version's tags still held while records were written with it).
pub(crate) async fn versions_from(
    tx: &mut WriteTransaction,
    record_type: &str,
    version: u32,
) -> Result<Vec<u32>> {
    on_tx!(tx, |conn| {
        let rows = sqlx::query(
            "SELECT schema_version FROM record_schemas
             WHERE record_type = $1 AND schema_version >= $2 ORDER BY schema_version",
        )
        .bind(record_type)
        .bind(i64::from(version))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| version_number(integer(row, "schema_version")?))
            .collect::<Result<Vec<_>>>()
    })
}
