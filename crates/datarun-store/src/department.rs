//! A department's own tables: read for a connector's `sql` source, written by a sink
//! from the hub's change feed. The hub's store crate is the one that speaks SQL, also
//! to a department's database; each with its own small pool (the source's read-only on
//! SQLite); table and column names come from the connector's configuration and are
//! checked and quoted.
//!
//! The change column holds Unix milliseconds (`INTEGER`) on SQLite and is a
//! `timestamptz` (or `timestamp`) on PostgreSQL; every row is read as one JSON object.

use crate::{Result, StoreError};
use sqlx::Row;

/// One row of the department's table: its change time in milliseconds, its key as
/// text, and the whole row as a JSON object's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    pub changed_millis: i64,
    pub key: String,
    pub json: String,
}

/// Where a read goes on from: rows after this (change time, key).
pub type Position = (i64, String);

enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// An open, read-only pool to a department's table.
pub struct DepartmentTable {
    pool: Pool,
    select: String,
    /// The database URL without its password.
    pub location: String,
}

/// A table or column name from `connector.toml`: letters, digits and `_` (a table may
/// name its schema, `schema.table`), quoted in SQL.
fn identifier(name: &str, what: &str) -> Result<String> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    let allowed = if what == "table" { 2 } else { 1 };
    if parts.len() > allowed || !parts.iter().all(|part| valid_part(part)) {
        return Err(StoreError::Invalid(format!(
            "source {what} {name:?} must be letters, digits and _ (a table may be schema.table)"
        )));
    }
    Ok(parts
        .iter()
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join("."))
}

impl DepartmentTable {
    /// Connects to `url` (`sqlite:…` or `postgres://…`) and checks the table's columns.
    pub async fn connect(url: &str, table: &str, key: &str, changed: &str) -> Result<Self> {
        let table_sql = identifier(table, "table")?;
        let key_sql = identifier(key, "key")?;
        let changed_sql = identifier(changed, "changed_at column")?;
        let failed = |error: sqlx::Error| {
            StoreError::Invalid(format!("department database {}: {error}", redact(url)))
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(failed)?;
            // Change times in whole milliseconds, so pages and the watermark agree
            // with what a JSON client sees; the first condition lets an index on the
            // change column narrow the read to the window.
            let millis = format!(
                "(extract(epoch FROM date_trunc('milliseconds', t.{changed_sql})) * 1000)::bigint"
            );
            let select = format!(
                "SELECT to_jsonb(t)::text AS row_json, {millis} AS changed_millis, t.{key_sql}::text AS row_key
                 FROM {table_sql} t
                 WHERE t.{changed_sql} >= to_timestamp($1::double precision / 1000) - interval '1 millisecond'
                   AND ({millis}, t.{key_sql}::text) > ($2::bigint, $3::text)
                 ORDER BY 2, 3
                 LIMIT $4"
            );
            Ok(Self {
                pool: Pool::Postgres(pool),
                select,
                location: redact(url),
            })
        } else if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().map_err(failed)?;
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.read_only(true))
                .await
                .map_err(failed)?;
            // SQLite has no row-to-JSON: name the columns.
            let pragma = format!("PRAGMA table_info({table_sql})");
            let columns: Vec<String> = sqlx::query(&pragma)
                .fetch_all(&pool)
                .await
                .map_err(failed)?
                .iter()
                .map(|row| row.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()
                .map_err(failed)?;
            if columns.is_empty() {
                return Err(StoreError::NotFound(format!("source table {table}")));
            }
            let mut pairs = Vec::with_capacity(columns.len());
            for column in &columns {
                let quoted = identifier(column, "column")?;
                pairs.push(format!("'{column}', {quoted}"));
            }
            let select = format!(
                "SELECT json_object({}) AS row_json, {changed_sql} AS changed_millis, CAST({key_sql} AS TEXT) AS row_key
                 FROM {table_sql}
                 WHERE {changed_sql} >= ?1
                   AND ({changed_sql}, CAST({key_sql} AS TEXT)) > (?2, ?3)
                 ORDER BY 2, 3
                 LIMIT ?4",
                pairs.join(", ")
            );
            Ok(Self {
                pool: Pool::Sqlite(pool),
                select,
                location: redact(url),
            })
        } else {
            Err(StoreError::Invalid(
                "source url must start with sqlite: or postgres://".into(),
            ))
        }
    }

    /// Up to `limit` rows changed at or after `from_millis` and after `after`, in
    /// (change time, key) order.
    pub async fn read(
        &self,
        from_millis: i64,
        after: &Position,
        limit: usize,
    ) -> Result<Vec<TableRow>> {
        let limit = limit as i64;
        let failed = |error: sqlx::Error| {
            StoreError::Invalid(format!("department database {}: {error}", self.location))
        };
        let rows = match &self.pool {
            Pool::Postgres(pool) => sqlx::query(&self.select)
                .bind(from_millis as f64)
                .bind(after.0)
                .bind(&after.1)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(failed)?
                .iter()
                .map(|row| {
                    Ok(TableRow {
                        json: row.try_get("row_json")?,
                        changed_millis: row.try_get("changed_millis")?,
                        key: row.try_get("row_key")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>(),
            Pool::Sqlite(pool) => sqlx::query(&self.select)
                .bind(from_millis)
                .bind(after.0)
                .bind(&after.1)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(failed)?
                .iter()
                .map(|row| {
                    Ok(TableRow {
                        json: row.try_get("row_json")?,
                        changed_millis: row.try_get("changed_millis")?,
                        key: row.try_get("row_key")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>(),
        };
        rows.map_err(failed)
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

/// One certificate version as a sink writes it into the department's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRow {
    pub feed_seq: i64,
    pub certificate_id: String,
    pub record_type: String,
    pub record_id: String,
    pub issuing_department: String,
    pub subject: String,
    pub status: String,
    pub superseded_by: Option<String>,
    pub signed_at: i64,
    /// The version's fields, a JSON object's text.
    pub fields: String,
}

/// The department's table a sink fills, and its cursor in the hub's change feed, kept
/// in the same database so a page and the cursor past it commit together.
pub struct SinkTable {
    pool: Pool,
    table_sql: String,
    pub location: String,
}

impl SinkTable {
    /// Connects and creates the table and the cursor table if they do not exist.
    pub async fn open(url: &str, table: &str) -> Result<Self> {
        let table_sql = identifier(table, "table")?;
        let failed = |error: sqlx::Error| {
            StoreError::Invalid(format!("department database {}: {error}", redact(url)))
        };
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(failed)?,
            )
        } else if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().map_err(failed)?;
            Pool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.create_if_missing(true))
                    .await
                    .map_err(failed)?,
            )
        } else {
            return Err(StoreError::Invalid(
                "target url must start with sqlite: or postgres://".into(),
            ));
        };
        let ddl = [
            format!(
                "CREATE TABLE IF NOT EXISTS {table_sql} (
                     certificate_id TEXT PRIMARY KEY,
                     record_type TEXT NOT NULL,
                     record_id TEXT NOT NULL,
                     issuing_department TEXT NOT NULL,
                     subject TEXT NOT NULL,
                     status TEXT NOT NULL,
                     superseded_by TEXT,
                     signed_at BIGINT NOT NULL,
                     fields TEXT NOT NULL,
                     feed_seq BIGINT NOT NULL)"
            ),
            "CREATE TABLE IF NOT EXISTS datarun_sink_cursors (sink TEXT PRIMARY KEY, after BIGINT NOT NULL)"
                .to_owned(),
        ];
        for statement in &ddl {
            match &pool {
                Pool::Postgres(pool) => sqlx::query(statement).execute(pool).await.map(drop),
                Pool::Sqlite(pool) => sqlx::query(statement).execute(pool).await.map(drop),
            }
            .map_err(failed)?;
        }
        Ok(Self {
            pool,
            table_sql,
            location: redact(url),
        })
    }

    fn failed(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |error| StoreError::Invalid(format!("department database {}: {error}", self.location))
    }

    /// The feed position after the last page `sink` applied (0 before the first).
    pub async fn cursor(&self, sink: &str) -> Result<i64> {
        let sql = "SELECT after FROM datarun_sink_cursors WHERE sink = $1";
        let after: Option<i64> = match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(sql)
                .bind(sink)
                .fetch_optional(pool)
                .await
                .map_err(self.failed())?,
            Pool::Sqlite(pool) => sqlx::query_scalar(sql)
                .bind(sink)
                .fetch_optional(pool)
                .await
                .map_err(self.failed())?,
        };
        Ok(after.unwrap_or(0))
    }

    /// Writes a page in one transaction with the cursor past it: each certificate's row
    /// becomes this version unless a newer one (by signing time) is there already.
    pub async fn apply(&self, sink: &str, rows: &[SinkRow], next: i64) -> Result<()> {
        let upsert = format!(
            "INSERT INTO {table} (certificate_id, record_type, record_id, issuing_department, subject, status,
                 superseded_by, signed_at, fields, feed_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (certificate_id) DO UPDATE SET record_type = excluded.record_type,
                 record_id = excluded.record_id, issuing_department = excluded.issuing_department,
                 subject = excluded.subject, status = excluded.status,
                 superseded_by = excluded.superseded_by, signed_at = excluded.signed_at,
                 fields = excluded.fields, feed_seq = excluded.feed_seq
             WHERE {table}.signed_at < excluded.signed_at",
            table = self.table_sql
        );
        let cursor = "INSERT INTO datarun_sink_cursors (sink, after) VALUES ($1, $2)
                      ON CONFLICT (sink) DO UPDATE SET after = excluded.after";
        macro_rules! apply_on {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(self.failed())?;
                for row in rows {
                    sqlx::query(&upsert)
                        .bind(&row.certificate_id)
                        .bind(&row.record_type)
                        .bind(&row.record_id)
                        .bind(&row.issuing_department)
                        .bind(&row.subject)
                        .bind(&row.status)
                        .bind(&row.superseded_by)
                        .bind(row.signed_at)
                        .bind(&row.fields)
                        .bind(row.feed_seq)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.failed())?;
                }
                sqlx::query(cursor)
                    .bind(sink)
                    .bind(next)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.failed())?;
                tx.commit().await.map_err(self.failed())?;
            }};
        }
        match &self.pool {
            Pool::Postgres(pool) => apply_on!(pool),
            Pool::Sqlite(pool) => apply_on!(pool),
        }
        Ok(())
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

/// A database URL without its password, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert_eq!(identifier("births", "table").unwrap(), "\"births\"");
        assert_eq!(
            identifier("health.births", "table").unwrap(),
            "\"health\".\"births\""
        );
        for bad in ["", "births; DROP TABLE x", "a\"b", "1abc", "a.b.c"] {
            assert!(identifier(bad, "table").is_err(), "{bad}");
        }
        assert!(identifier("a.b", "key").is_err());
    }

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            redact("postgres://his:secret@db.health.gd:5432/his"),
            "postgres://his:***@db.health.gd:5432/his"
        );
        assert_eq!(redact("sqlite:/var/his.db"), "sqlite:/var/his.db");
    }
}
