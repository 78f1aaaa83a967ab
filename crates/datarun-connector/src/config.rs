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
    pub source: SourceConfig,
    pub mapping: MappingConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `csv` (a header row, then one row per line) or `jsonl` (one JSON object per line;
    /// numbers and booleans are read as their text, null as empty).
    pub kind: SourceKind,
    /// Relative to the connector folder unless absolute; `datarun connector run --source` overrides.
    pub path: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Csv,
    Jsonl,
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
