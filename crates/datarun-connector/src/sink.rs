//! The pull side: a sink lands the record types its department is entitled to in the
//! department's own SQL table, from the hub's change feed (`GET /v1/feed`). A sink is
//! a folder with a `sink.toml` and no code; `datarun connector run <folder>` runs it.
//!
//! Each page of the feed and the cursor past it are written in one transaction of the
//! department's database, so a sink killed at any moment resumes after the last page it
//! applied: nothing skipped, nothing applied twice. A certificate's row holds its newest
//! version by signing time, so a status change or a correction replaces it and an
//! older version read late never does.

use crate::{ConnectorError, Result};
use datarun_store::department::{SinkRow, SinkTable};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `sink.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The department whose token reads the feed.
    pub department: String,
    /// The record types to land (each needs an entitlement).
    pub record_types: Vec<String>,
    /// The hub, e.g. `http://127.0.0.1:8080`.
    pub hub_url: String,
    /// The environment variable holding the department system's bearer token…
    #[serde(default)]
    pub token_env: Option<String>,
    /// …or a file holding it (one of the two).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_page_rows")]
    pub page_rows: u32,
    #[serde(default = "default_poll_millis")]
    pub poll_millis: u64,
    pub target: TargetConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `sqlite:<file>` or `postgres://…`; `env:NAME` reads it from the environment.
    pub url: String,
    pub table: String,
}

fn default_page_rows() -> u32 {
    500
}

fn default_poll_millis() -> u64 {
    1000
}

/// What a sink run applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub pages: u64,
    pub records: u64,
    /// The feed position after the last page applied.
    pub cursor: i64,
}

/// A sink folder, loaded and checked.
#[derive(Debug, Clone)]
pub struct Sink {
    pub folder: PathBuf,
    pub config: SinkConfig,
}

/// How long one feed request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Sink {
    /// True when `folder` holds a `sink.toml`.
    pub fn is_sink(folder: &Path) -> bool {
        folder.join("sink.toml").is_file()
    }

    pub fn load(folder: &Path) -> Result<Self> {
        let path = folder.join("sink.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ConnectorError::Io {
            path: path.clone(),
            source,
        })?;
        let config: SinkConfig = toml::from_str(&text).map_err(|e| ConnectorError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConnectorError::Config {
            path: path.clone(),
            message,
        };
        if config.record_types.is_empty() || config.record_types.len() > 20 {
            return Err(invalid("record_types: one to twenty record types".into()));
        }
        for record_type in &config.record_types {
            datarun_domain::RecordType::parse(record_type)
                .map_err(|e| invalid(format!("record_types: {e}")))?;
        }
        if config.token_env.is_some() == config.token_file.is_some() {
            return Err(invalid("give token_env or token_file (one of them)".into()));
        }
        if !(1..=1000).contains(&config.page_rows) {
            return Err(invalid("page_rows: from 1 to 1000".into()));
        }
        Ok(Self {
            folder: folder.to_owned(),
            config,
        })
    }

    /// The sink's name (its folder's), which keys its cursor.
    pub fn name(&self) -> String {
        self.folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sink".into())
    }

    fn setting(&self, value: &str) -> Result<String> {
        match value.strip_prefix("env:") {
            Some(name) => std::env::var(name).map_err(|_| ConnectorError::Config {
                path: self.folder.join("sink.toml"),
                message: format!("{name} is not set"),
            }),
            None => Ok(value.to_owned()),
        }
    }

    /// Applies the feed page by page; with `once`, stops when it has caught up,
    /// otherwise polls until the future is dropped. `target_override` replaces the
    /// target's URL.
    pub async fn run(&self, once: bool, target_override: Option<&str>) -> Result<SinkReport> {
        let config = &self.config;
        let token = self.token()?;
        let url = match target_override {
            Some(url) => url.to_owned(),
            None => self.setting(&config.target.url)?,
        };
        let table = SinkTable::open(&url, &config.target.table)
            .await
            .map_err(|error| self.target_error(error))?;
        let outcome = self.follow(&table, &token, once).await;
        table.close().await;
        outcome
    }

    /// The department system's bearer token, from the environment or a file.
    fn token(&self) -> Result<String> {
        let path = self.folder.join("sink.toml");
        match (&self.config.token_env, &self.config.token_file) {
            (Some(name), _) => std::env::var(name).map_err(|_| ConnectorError::Config {
                path,
                message: format!("{name} (the department's hub token) is not set"),
            }),
            (None, Some(file)) => {
                let file = self.folder.join(file);
                std::fs::read_to_string(&file)
                    .map(|text| text.trim().to_owned())
                    .map_err(|source| ConnectorError::Io { path: file, source })
            }
            (None, None) => Err(ConnectorError::Config {
                path,
                message: "give token_env or token_file".into(),
            }),
        }
    }

    fn target_error(&self, error: datarun_store::StoreError) -> ConnectorError {
        ConnectorError::Config {
            path: self.folder.join("sink.toml"),
            message: error.to_string(),
        }
    }

    async fn follow(&self, table: &SinkTable, token: &str, once: bool) -> Result<SinkReport> {
        let name = self.name();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| self.hub_error(e.to_string()))?;
        let mut report = SinkReport {
            cursor: table
                .cursor(&name)
                .await
                .map_err(|error| self.target_error(error))?,
            ..SinkReport::default()
        };
        let endpoint = format!("{}/v1/feed", self.config.hub_url.trim_end_matches('/'));
        let types = self.config.record_types.join(",");
        let mut failures = 0u32;
        loop {
            let response = client
                .get(&endpoint)
                .bearer_auth(token)
                .query(&[
                    ("record_types", types.as_str()),
                    ("after", &report.cursor.to_string()),
                    ("limit", &self.config.page_rows.to_string()),
                ])
                .send()
                .await;
            let page = match response {
                Ok(response) if response.status().is_success() => response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| self.hub_error(format!("the feed's answer: {e}")))?,
                Ok(response) if response.status().is_client_error() => {
                    // Not entitled, a bad token: retrying will not help.
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(self.hub_error(format!("{status}: {}", truncate(&body, 500))));
                }
                outcome => {
                    failures += 1;
                    let why = match outcome {
                        Ok(response) => response.status().to_string(),
                        Err(error) => error.to_string(),
                    };
                    tracing::warn!(sink = %name, failures, %why, "the change feed did not answer; retrying");
                    if failures >= 10 && once {
                        return Err(self.hub_error(why));
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(10))))
                        .await;
                    continue;
                }
            };
            failures = 0;
            let rows = sink_rows(&page).map_err(|message| self.hub_error(message))?;
            let next = page["next"].as_i64().unwrap_or(report.cursor);
            if next < report.cursor {
                return Err(self.hub_error(format!(
                    "the feed went back from {} to {next}",
                    report.cursor
                )));
            }
            if !rows.is_empty() {
                table
                    .apply(&name, &rows, next)
                    .await
                    .map_err(|error| self.target_error(error))?;
                datarun_domain::faults::hit("sink.after_apply");
                report.pages += 1;
                report.records += rows.len() as u64;
                report.cursor = next;
            }
            if page["more"].as_bool() != Some(true) {
                if once {
                    return Ok(report);
                }
                tokio::time::sleep(Duration::from_millis(self.config.poll_millis)).await;
            }
        }
    }

    fn hub_error(&self, message: String) -> ConnectorError {
        ConnectorError::Source {
            path: PathBuf::from(&self.config.hub_url),
            line: 0,
            message,
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The feed page's records as rows of the department's table.
fn sink_rows(page: &serde_json::Value) -> std::result::Result<Vec<SinkRow>, String> {
    let records = page["records"]
        .as_array()
        .ok_or("the feed's answer has no records")?;
    records
        .iter()
        .map(|record| {
            let text = |name: &str| {
                record[name]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("a feed record without {name}"))
            };
            let number = |name: &str| {
                record[name]
                    .as_i64()
                    .ok_or_else(|| format!("a feed record without {name}"))
            };
            Ok(SinkRow {
                feed_seq: number("seq")?,
                certificate_id: text("certificate_id")?,
                record_type: text("record_type")?,
                record_id: text("record_id")?,
                issuing_department: text("issuing_department")?,
                subject: text("subject")?,
                status: text("status")?,
                superseded_by: record["superseded_by"].as_str().map(str::to_owned),
                signed_at: number("signed_at_millis")?,
                fields: record["fields"].to_string(),
            })
        })
        .collect()
}
