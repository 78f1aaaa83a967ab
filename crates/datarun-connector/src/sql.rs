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
use datarun_store::department::{DepartmentTable, Position};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One row of the department's table, its columns as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlRow {
    pub changed_millis: i64,
    pub key: String,
    pub columns: BTreeMap<String, String>,
}

/// A department's table, read through the store crate (`datarun_store::department`).
pub struct SqlSource {
    table: DepartmentTable,
}

impl SqlSource {
    pub async fn connect(
        url: &str,
        table: &str,
        key: &str,
        changed: &str,
        config_path: &std::path::Path,
    ) -> Result<Self> {
        DepartmentTable::connect(url, table, key, changed)
            .await
            .map(|table| Self { table })
            .map_err(|error| ConnectorError::Config {
                path: config_path.to_owned(),
                message: error.to_string(),
            })
    }

    /// The database, without its password.
    pub fn location(&self) -> &str {
        &self.table.location
    }

    /// Up to `limit` rows changed at or after `from_millis` and after `after`, in
    /// (change time, key) order, their columns as text.
    pub async fn read(
        &self,
        from_millis: i64,
        after: &Position,
        limit: usize,
    ) -> Result<Vec<SqlRow>> {
        let source_error = |message: String| ConnectorError::Source {
            path: PathBuf::from(self.location()),
            line: 0,
            message,
        };
        let rows = self
            .table
            .read(from_millis, after, limit)
            .await
            .map_err(|error| source_error(error.to_string()))?;
        let mut read = Vec::with_capacity(rows.len());
        for row in rows {
            let object = match serde_json::from_str::<serde_json::Value>(&row.json) {
                Ok(serde_json::Value::Object(object)) => object,
                _ => return Err(source_error(format!("row {} is not one object", row.key))),
            };
            let columns = crate::columns_as_text(object)
                .map_err(|message| source_error(format!("row {}: {message}", row.key)))?;
            read.push(SqlRow {
                changed_millis: row.changed_millis,
                key: row.key,
                columns,
            });
        }
        Ok(read)
    }

    pub async fn close(&self) {
        self.table.close().await;
    }
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
            .recover(kafka, options, &topic, source.location())
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
                        Err(message) if self.config.on_bad_row == crate::config::OnBadRow::Stop => {
                            // Nothing of this page is published; the next run reads it again.
                            return Err(ConnectorError::Source {
                                path: PathBuf::from(source.location()),
                                line: 0,
                                message: format!(
                                    "row {} changed at {}: {message}; the connector stops here (on_bad_row = \"stop\")",
                                    row.key, row.changed_millis
                                ),
                            });
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
                checkpoint.published_total += records.len() as u64;
                checkpoint.rejected_total += rejects.len() as u64;
                checkpoint.rate =
                    report.published as f64 / started.elapsed().as_secs_f64().max(1e-3);
                checkpoint.updated_at_millis = crate::now_millis();
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
