//! `connector.toml`: what a connector folder declares. Unknown keys are an error.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub department: String,
    pub record_type: String,
    pub schema_version: u32,
    /// The `.avsc` file, relative to the connector folder.
    pub schema: String,
    /// The key id registered for the department in the hub's trust registry.
    pub signing_key_id: String,
    /// What a source row that cannot be mapped does: `continue` (the default: it is
    /// written to the rejected-rows file with its reason and the run goes on) or `stop`
    /// (the run stops at it, naming it, before publishing it or anything after it).
    #[serde(default)]
    pub on_bad_row: OnBadRow,
    pub source: SourceConfig,
    pub mapping: MappingConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    #[default]
    Continue,
    Stop,
}

/// Where a connector's rows come from (`[source]`, chosen by `kind`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A header row, then one row per line.
    Csv {
        /// Relative to the connector folder unless absolute; `--source` overrides.
        path: String,
    },
    /// One JSON object per line; numbers and booleans are read as their text, null as empty.
    Jsonl { path: String },
    /// The department's own table, polled by a watermark (`crate::sql`).
    Sql {
        /// `sqlite:<file>` or `postgres://…`; `env:NAME` reads it from the environment
        /// variable NAME (keep passwords out of the file). `--source` overrides.
        url: String,
        /// `table` or `schema.table`.
        table: String,
        /// The primary-key column.
        key: String,
        /// The row's last-change column: Unix milliseconds on SQLite, `timestamptz` on
        /// PostgreSQL. Its value is the row version (`mapping.row_version` must name it).
        changed_at: String,
        /// How far behind the watermark each poll reads again, for rows committed late
        /// by long transactions: longer than the department's longest transaction.
        #[serde(default = "default_lag_seconds")]
        lag_seconds: u64,
        #[serde(default = "default_poll_millis")]
        poll_millis: u64,
    },
    /// An HTTP endpoint the department's system POSTs rows to (`crate::push`).
    Http {
        /// The address to listen on, e.g. `127.0.0.1:8181`.
        listen: String,
        /// How long a request waits for the broker's acknowledgement before it is
        /// answered 503 (the department then retries the same request).
        #[serde(default = "default_ack_timeout_seconds")]
        ack_timeout_seconds: u64,
        /// The environment variable holding the bearer token callers must present;
        /// without it the endpoint takes any caller (bind it to loopback then).
        #[serde(default)]
        token_env: Option<String>,
    },
}

fn default_lag_seconds() -> u64 {
    60
}

fn default_poll_millis() -> u64 {
    1000
}

fn default_ack_timeout_seconds() -> u64 {
    10
}

impl SourceConfig {
    /// The file a `csv` or `jsonl` source reads.
    pub fn file_path(&self) -> Option<&str> {
        match self {
            Self::Csv { path } | Self::Jsonl { path } => Some(path),
            Self::Sql { .. } | Self::Http { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The source column holding the row's last change, `YYYY-MM-DD HH:MM:SS` (UTC+8).
    /// It goes into the record id: a changed row is a new record, an unchanged row
    /// republished (after a crash, say) is the same record. It is not the signing time.
    pub row_version: String,
    /// Schema field → source column.
    pub fields: BTreeMap<String, String>,
    /// Per schema field, source value → schema value (e.g. 男 → MALE).
    #[serde(default)]
    pub values: BTreeMap<String, BTreeMap<String, String>>,
}
