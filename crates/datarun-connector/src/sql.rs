//! A department's own SQL table as a connector source (SQLite or PostgreSQL), polled by
//! a watermark: the row's last-change column and its primary key.
//!
//! A poll reads every row changed at or after the watermark less a lag window, in
//! (change time, key) order, page by page. Re-reading the window is what catches the
//! two classic watermark-polling losses: a row changed in the same millisecond as the
//! watermark but committed after the poll that set it, and a row written by a long
//! transaction with a change time older than rows committed before it. Rows read again
//! are recognised by their record id (the connector keeps the ids it published within
//! the window) and not sent twice. A row committed later than the lag window after its
//! change time is missed: the window must be longer than the department's longest
//! transaction.
//!
//! The change column holds Unix milliseconds (`INTEGER`) on SQLite and is a `timestamptz`
//! (or `timestamp`) on PostgreSQL; every column is read as text, as JSON lines are.

use crate::{ConnectorError, Result};
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One row of the department's table: its change time, its key, its columns as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlRow {
    pub changed_millis: i64,
    pub key: String,
    pub columns: BTreeMap<String, String>,
}

/// Where a poll goes on from: rows after this (change time, key).
pub type Position = (i64, String);

enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// An open connection pool to the department's table.
pub struct SqlSource {
    pool: Pool,
    select: String,
    url_for_errors: PathBuf,
}

/// How a `sql` source polls.
#[derive(Debug, Clone)]
pub struct Polling {
    /// How far behind the watermark each poll reads again.
    pub lag_millis: i64,
    pub interval: std::time::Duration,
    /// The change column: its value, in milliseconds, is each row's version.
    pub changed_column: String,
}

/// Rows read per page (and published per batch).
const PAGE_ROWS: usize = 500;

/// A `sql` source's position, kept in the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    /// The newest change time read.
    pub changed_millis: Option<i64>,
    /// What was done with each row version read within the lag window below the
    /// watermark: the record ids published, and `refused:<key>@<millis>` for rows that
    /// could not be mapped; each with its change time, so it is forgotten once it falls
    /// out of the window.
    pub recent: BTreeMap<String, i64>,
}

impl Watermark {
    fn forget_before(&mut self, lag_millis: i64) {
        if let Some(newest) = self.changed_millis {
            let horizon = newest.saturating_sub(lag_millis);
            self.recent.retain(|_, changed| *changed >= horizon);
        }
    }
}

impl crate::Connector {
    /// Polls the department's table: each pass reads the window from the watermark
    /// less the lag, publishes what it has not published, and moves the watermark.
    pub(crate) async fn run_sql(
        &self,
        kafka: &datarun_kafka::KafkaSettings,
        options: &crate::RunOptions,
        keys: &mut crate::keys::KeyRing,
        source: &SqlSource,
        polling: &Polling,
    ) -> Result<crate::RunReport> {
        let topic = kafka.records_topic(self.record_type().as_str());
        let (mut checkpoint, on_topic) = self
            .recover(
                kafka,
                options,
                &topic,
                &source.url_for_errors.display().to_string(),
            )
            .await?;
        let mut watermark = checkpoint.watermark.clone().unwrap_or_default();
        // What a crashed run sent and did not checkpoint counts as published.
        let newest = watermark.changed_millis.unwrap_or(0);
        for id in on_topic {
            watermark.recent.entry(id).or_insert(newest);
        }
        let publisher = datarun_kafka::RecordPublisher::new(kafka)?;
        let mut report = crate::RunReport::default();
        let started = std::time::Instant::now();
        loop {
            let from = watermark
                .changed_millis
                .map_or(0, |newest| newest.saturating_sub(polling.lag_millis));
            let mut after: Position = (from.saturating_sub(1), String::new());
            loop {
                let page = source.read(from, &after, PAGE_ROWS).await?;
                let Some(last) = page.last() else { break };
                after = (last.changed_millis, last.key.clone());
                let full = page.len() == PAGE_ROWS;
                let signer = keys.current()?;
                let mut records = Vec::new();
                let mut published = Vec::new();
                let mut rejects = Vec::new();
                for row in page {
                    let mut columns = row.columns;
                    columns.insert(
                        polling.changed_column.clone(),
                        row.changed_millis.to_string(),
                    );
                    match self.sign_row_with(&columns, &signer) {
                        Ok(record) => {
                            let id = record.envelope.record_id.to_string();
                            if watermark.recent.contains_key(&id) {
                                report.already_done += 1;
                            } else {
                                published.push((id, row.changed_millis));
                                records.push(record);
                            }
                        }
                        Err(message) => {
                            let refused = format!("refused:{}@{}", row.key, row.changed_millis);
                            if let std::collections::btree_map::Entry::Vacant(entry) =
                                watermark.recent.entry(refused)
                            {
                                entry.insert(row.changed_millis);
                                rejects.push(format!(
                                    "{}@{},\"{}\"\n",
                                    row.key,
                                    row.changed_millis,
                                    message.replace('"', "'")
                                ));
                            }
                        }
                    }
                }
                if !records.is_empty() {
                    checkpoint.in_flight = true;
                    self.write_checkpoint(&options.state_dir, &checkpoint)?;
                    let placed = publisher.publish_all(&records).await?;
                    for (partition, offset) in placed {
                        let next = checkpoint.next_offsets.entry(partition).or_insert(0);
                        *next = (*next).max(offset + 1);
                    }
                }
                self.write_rejects(&options.state_dir, &rejects)?;
                report.published += records.len() as u64;
                report.rejected += rejects.len() as u64;
                watermark.recent.extend(published);
                watermark.changed_millis = Some(
                    watermark
                        .changed_millis
                        .map_or(after.0, |newest| newest.max(after.0)),
                );
                watermark.forget_before(polling.lag_millis);
                datarun_domain::faults::hit("connector.before_checkpoint");
                checkpoint.in_flight = false;
                checkpoint.watermark = Some(watermark.clone());
                self.write_checkpoint(&options.state_dir, &checkpoint)?;
                if let (Some(progress), false) = (options.progress, records.is_empty()) {
                    let seconds = started.elapsed().as_secs_f64().max(1e-3);
                    progress(&crate::Progress {
                        connector: self.name(),
                        done: report.published,
                        total: report.published,
                        rate: report.published as f64 / seconds,
                        eta: None,
                    });
                }
                if !full {
                    break;
                }
            }
            if options.once {
                return Ok(report);
            }
            tokio::time::sleep(polling.interval).await;
        }
    }
}

/// A table or column name from `connector.toml`: letters, digits and `_` (a table may
/// name its schema, `schema.table`), quoted in SQL.
fn identifier(name: &str, what: &str, config: &std::path::Path) -> Result<String> {
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
        return Err(ConnectorError::Config {
            path: config.to_owned(),
            message: format!(
                "source {what} {name:?} must be letters, digits and _ (a table may be schema.table)"
            ),
        });
    }
    Ok(parts
        .iter()
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join("."))
}

impl SqlSource {
    /// Connects to `url` (`sqlite:…` or `postgres://…`) and checks the table's columns.
    pub async fn connect(
        url: &str,
        table: &str,
        key: &str,
        changed: &str,
        config_path: &std::path::Path,
    ) -> Result<Self> {
        let table_sql = identifier(table, "table", config_path)?;
        let key_sql = identifier(key, "key", config_path)?;
        let changed_sql = identifier(changed, "changed_at column", config_path)?;
        let failed = |error: sqlx::Error| ConnectorError::Source {
            path: PathBuf::from(redact(url)),
            line: 0,
            message: error.to_string(),
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
                url_for_errors: PathBuf::from(redact(url)),
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
                return Err(ConnectorError::Config {
                    path: config_path.to_owned(),
                    message: format!("source table {table} does not exist"),
                });
            }
            let mut pairs = Vec::with_capacity(columns.len());
            for column in &columns {
                let quoted = identifier(column, "column", config_path)?;
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
                url_for_errors: PathBuf::from(redact(url)),
            })
        } else {
            Err(ConnectorError::Config {
                path: config_path.to_owned(),
                message: "source url must start with sqlite: or postgres://".into(),
            })
        }
    }

    /// Up to `limit` rows changed at or after `from_millis` and after `after`, in
    /// (change time, key) order.
    pub async fn read(
        &self,
        from_millis: i64,
        after: &Position,
        limit: usize,
    ) -> Result<Vec<SqlRow>> {
        let limit = limit as i64;
        let failed = |error: sqlx::Error| ConnectorError::Source {
            path: self.url_for_errors.clone(),
            line: 0,
            message: error.to_string(),
        };
        let raw: Vec<(String, i64, String)> = match &self.pool {
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
                    Ok((
                        row.try_get("row_json")?,
                        row.try_get("changed_millis")?,
                        row.try_get("row_key")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(failed)?,
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
                    Ok((
                        row.try_get("row_json")?,
                        row.try_get("changed_millis")?,
                        row.try_get("row_key")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(failed)?,
        };
        let mut rows = Vec::with_capacity(raw.len());
        for (json, changed_millis, key) in raw {
            let object = match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(serde_json::Value::Object(object)) => object,
                _ => {
                    return Err(ConnectorError::Source {
                        path: self.url_for_errors.clone(),
                        line: 0,
                        message: format!("row {key} could not be read as one object"),
                    })
                }
            };
            let columns =
                crate::columns_as_text(object).map_err(|message| ConnectorError::Source {
                    path: self.url_for_errors.clone(),
                    line: 0,
                    message: format!("row {key}: {message}"),
                })?;
            rows.push(SqlRow {
                changed_millis,
                key,
                columns,
            });
        }
        Ok(rows)
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
        let path = std::path::Path::new("connector.toml");
        assert_eq!(identifier("births", "table", path).unwrap(), "\"births\"");
        assert_eq!(
            identifier("health.births", "table", path).unwrap(),
            "\"health\".\"births\""
        );
        for bad in ["", "births; DROP TABLE x", "a\"b", "1abc", "a.b.c"] {
            assert!(identifier(bad, "table", path).is_err(), "{bad}");
        }
        assert!(identifier("a.b", "key", path).is_err());
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
