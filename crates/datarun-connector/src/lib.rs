//! The connector runtime. A connector is a folder under `connectors/` holding a
//! `connector.toml` (source, record type, field mapping, signing key id) and no code.
//! The runtime reads source rows, maps them to the record type's Avro schema, signs each
//! record with the department's key, publishes with an idempotent producer, and records
//! how far the broker has acknowledged, so a rerun or a restart after a crash resumes
//! there. Record ids come from the row's content and version column, so a republished
//! row is the very same record (the hub counts it as a duplicate even though it was
//! signed again, at a later time).

pub mod config;
pub mod keys;
pub mod population;
pub mod push;
pub mod sample;
pub mod sink;
pub mod sql;

use config::ConnectorConfig;
use datarun_domain::date::CivilDate;
use datarun_domain::{DepartmentId, KeyId, RecordEnvelope, RecordId, RecordType, SignedRecord};
use datarun_kafka::{KafkaSettings, RecordPublisher};
use datarun_schema::RecordSchema;
use ring::signature::Ed25519KeyPair;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("schema: {0}")]
    Schema(#[from] datarun_schema::SchemaError),
    #[error("signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("source {path} line {line}: {message}")]
    Source {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error(transparent)]
    Kafka(#[from] datarun_kafka::KafkaError),
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// Where a connector reads its secrets and keeps its position.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The department's private key (PKCS#8 v1 or v2, DER or PEM).
    pub signing_key_file: PathBuf,
    /// The department's key directory, when the connector follows key rotations: the
    /// key named by `<department>.current` there replaces `signing_key_file` (see
    /// [`keys`]), looked up again before every batch.
    pub key_dir: Option<PathBuf>,
    /// Where the checkpoint and the rejected-rows file live.
    pub state_dir: PathBuf,
    /// Overrides the source path in `connector.toml`.
    pub source_override: Option<PathBuf>,
    pub batch_size: usize,
    /// Called after each acknowledged batch.
    pub progress: Option<fn(&Progress)>,
    /// A `sql` source stops once it has caught up instead of polling on (file sources
    /// always stop at the end of the file; an `http` source serves until stopped).
    pub once: bool,
}

/// How far a run is, after an acknowledged batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The connector's name.
    pub connector: String,
    /// Rows acknowledged by the broker, this run and earlier ones.
    pub done: u64,
    pub total: u64,
    /// Rows acknowledged per second in this run.
    pub rate: f64,
    /// At this run's rate, how long the rest will take.
    pub eta: Option<std::time::Duration>,
}

impl Progress {
    /// One line: name, bar, counts, rate and time left, e.g.
    /// `health.birth_certificate [######--------------]  3,000/10,000  2,412/s  ETA 3s`.
    pub fn line(&self) -> String {
        const WIDTH: u64 = 20;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH) as usize;
        let eta = match self.eta {
            Some(eta) if self.done < self.total => format!("ETA {}s", eta.as_secs()),
            _ => "done".into(),
        };
        format!(
            "{} [{}{}] {:>9}/{} {:>7}/s  {eta}",
            self.connector,
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled.min(WIDTH as usize)),
            thousands(self.done),
            thousands(self.total),
            thousands(self.rate as u64),
        )
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Rows the broker acknowledged in this run.
    pub published: u64,
    /// Rows skipped because an earlier run already had them acknowledged.
    pub already_done: u64,
    /// Rows that could not be mapped (written to the rejected-rows file).
    pub rejected: u64,
    /// Rows a crashed run had sent that the topic holds: found there, not sent again.
    pub recovered: u64,
}

/// A connector folder, loaded and checked.
#[derive(Debug, Clone)]
pub struct Connector {
    pub folder: PathBuf,
    pub config: ConnectorConfig,
    pub schema: RecordSchema,
    department: DepartmentId,
    record_type: RecordType,
    signing_key_id: KeyId,
    /// The registry's id of `schema`, written into every value (Confluent's wire
    /// format); set by [`Connector::set_schema_id`] once the registry was asked.
    schema_id: Option<u32>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectorError + '_ {
    move |source| ConnectorError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unix milliseconds now, by this machine's clock: the signing time.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DD HH:MM:SS` in China Standard Time (UTC+8) to Unix milliseconds.
pub fn parse_cst_timestamp(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(' ')?;
    let date = CivilDate::parse_iso(date)?;
    let parts: Vec<u32> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [hour, minute, second] = parts[..] else {
        return None;
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds =
        date.days_since_epoch() * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - 8 * 3600;
    Some(seconds * 1000)
}

/// A row version: `YYYY-MM-DD HH:MM:SS` in China Standard Time, or Unix milliseconds
/// (what a `sql` source's change column gives).
fn row_version_millis(text: &str) -> Option<i64> {
    if !text.is_empty() && text.len() <= 15 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    parse_cst_timestamp(text)
}

impl Connector {
    pub fn load(folder: &Path) -> Result<Self> {
        let config_path = folder.join("connector.toml");
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config: ConnectorConfig =
            toml::from_str(&text).map_err(|e| ConnectorError::Config {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        let invalid = |message: String| ConnectorError::Config {
            path: config_path.clone(),
            message,
        };
        let department =
            DepartmentId::parse(&config.department).map_err(|e| invalid(e.to_string()))?;
        let record_type =
            RecordType::parse(&config.record_type).map_err(|e| invalid(e.to_string()))?;
        let signing_key_id =
            KeyId::parse(&config.signing_key_id).map_err(|e| invalid(e.to_string()))?;
        let schema_path = folder.join(&config.schema);
        let definition = std::fs::read_to_string(&schema_path).map_err(io_error(&schema_path))?;
        let schema = RecordSchema::parse(record_type.clone(), config.schema_version, &definition)?;
        // A field with a default may stay unmapped (a department whose source has no
        // status column publishes every certificate VALID, say).
        for field in schema.fields() {
            if !field.has_default && !config.mapping.fields.contains_key(&field.name) {
                return Err(invalid(format!(
                    "mapping has no source column for schema field {}",
                    field.name
                )));
            }
        }
        for field in config.mapping.fields.keys() {
            if !schema.fields().iter().any(|f| &f.name == field) {
                return Err(invalid(format!(
                    "mapping names {field}, which the schema does not have"
                )));
            }
        }
        Ok(Self {
            folder: folder.to_owned(),
            config,
            schema,
            department,
            record_type,
            signing_key_id,
            schema_id: None,
        })
    }

    /// The connector's name: its folder name.
    pub fn name(&self) -> String {
        self.folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "connector".into())
    }

    fn checkpoint_path(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{}.checkpoint.json", self.name()))
    }

    /// The connector's checkpoint, if it has one.
    pub fn checkpoint(&self, state_dir: &Path) -> Result<Option<Checkpoint>> {
        let path = self.checkpoint_path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|error| ConnectorError::Config {
                        path,
                        message: format!("checkpoint is corrupt: {error}"),
                    })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(ConnectorError::Io {
                path,
                source: error,
            }),
        }
    }

    /// Rows already acknowledged by the broker, from the checkpoint.
    pub fn acknowledged_rows(&self, state_dir: &Path) -> Result<u64> {
        Ok(self
            .checkpoint(state_dir)?
            .map_or(0, |checkpoint| checkpoint.rows_acknowledged))
    }

    fn write_checkpoint(&self, state_dir: &Path, checkpoint: &Checkpoint) -> Result<()> {
        use std::io::Write;
        let path = self.checkpoint_path(state_dir);
        let temporary = path.with_extension("json.tmp");
        let body = serde_json::to_vec(checkpoint).map_err(|error| ConnectorError::Config {
            path: path.clone(),
            message: error.to_string(),
        })?;
        let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
        file.write_all(&body).map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        // Rename is atomic: a crash leaves the old checkpoint or the new one, never half.
        std::fs::rename(&temporary, &path).map_err(io_error(&path))
    }

    /// The registry's id of the connector's schema, which every value names.
    pub fn set_schema_id(&mut self, schema_id: u32) {
        self.schema_id = Some(schema_id);
    }

    pub fn record_type(&self) -> &RecordType {
        &self.record_type
    }

    /// Maps one source row to a record signed now.
    pub fn sign_row(
        &self,
        row: &BTreeMap<String, String>,
        key_pair: &Ed25519KeyPair,
    ) -> Result<SignedRecord, String> {
        self.sign_row_at(row, key_pair, now_millis())
    }

    /// Maps one source row to a record signed now by `signer`.
    pub fn sign_row_with(
        &self,
        row: &BTreeMap<String, String>,
        signer: &keys::Signer,
    ) -> Result<SignedRecord, String> {
        self.sign_row_as(row, &signer.key_pair, &signer.key_id, now_millis())
    }

    /// Maps one source row to a record signed at `signed_at_millis`.
    pub fn sign_row_at(
        &self,
        row: &BTreeMap<String, String>,
        key_pair: &Ed25519KeyPair,
        signed_at_millis: i64,
    ) -> Result<SignedRecord, String> {
        self.sign_row_as(row, key_pair, &self.signing_key_id, signed_at_millis)
    }

    fn sign_row_as(
        &self,
        row: &BTreeMap<String, String>,
        key_pair: &Ed25519KeyPair,
        key_id: &KeyId,
        signed_at_millis: i64,
    ) -> Result<SignedRecord, String> {
        let mapping = &self.config.mapping;
        let mut mapped = BTreeMap::new();
        for (field, column) in &mapping.fields {
            let raw = row
                .get(column)
                .ok_or_else(|| format!("column {column} is missing"))?
                .trim();
            let value = mapping
                .values
                .get(field)
                .and_then(|translation| translation.get(raw))
                .map(String::as_str)
                .unwrap_or(raw);
            mapped.insert(field.clone(), value.to_owned());
        }
        let schema_id = self.schema_id.ok_or_else(|| {
            format!(
                "the registry's id of {} version {} is not known (Connector::set_schema_id)",
                self.record_type, self.config.schema_version
            )
        })?;
        let body = self.schema.encode_row(&mapped).map_err(|e| e.to_string())?;
        let version_text = row
            .get(&mapping.row_version)
            .ok_or_else(|| format!("column {} is missing", mapping.row_version))?;
        let row_version_millis = row_version_millis(version_text.trim()).ok_or_else(|| {
            format!(
                "column {} must be YYYY-MM-DD HH:MM:SS or Unix milliseconds",
                mapping.row_version
            )
        })?;
        let subject_field = self
            .schema
            .fields()
            .iter()
            .find(|f| f.role == Some(datarun_schema::FieldRole::Subject))
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let subject = mapped.get(&subject_field).cloned().unwrap_or_default();
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(self.record_type.as_str().as_bytes());
        digest.update(&row_version_millis.to_be_bytes());
        digest.update(&body);
        let record_id = format!(
            "{}-{}",
            self.department,
            hex::encode(&digest.finish().as_ref()[..16])
        );
        let envelope = RecordEnvelope {
            record_id: RecordId::parse(&record_id).map_err(|e| e.to_string())?,
            department: self.department.clone(),
            record_type: self.record_type.clone(),
            subject,
            signed_at_millis,
            signing_key_id: key_id.clone(),
        };
        Ok(envelope.sign(
            datarun_domain::envelope::framing::frame(schema_id, &body),
            key_pair,
        ))
    }

    /// Publishes the source's rows that are not yet on the topic, batch by batch,
    /// checkpointing after each, and never a row twice: after a crash between the
    /// broker's acknowledgement and the checkpoint, the rows the topic already holds are
    /// found there (by record id, past the offsets the checkpoint names) and not sent
    /// again. A file source stops at its end; a `sql` source polls on (unless
    /// `options.once`); an `http` source serves until the future is dropped.
    pub async fn run(&self, kafka: &KafkaSettings, options: &RunOptions) -> Result<RunReport> {
        let outcome = self.run_source(kafka, options).await;
        // What `datarun connector status` shows: the failure, or that the run finished.
        if let Ok(Some(mut checkpoint)) = self.checkpoint(&options.state_dir) {
            checkpoint.last_error = outcome.as_ref().err().map(|error| LastError {
                at_millis: now_millis(),
                message: error.to_string(),
            });
            if let Err(error) = self.write_checkpoint(&options.state_dir, &checkpoint) {
                tracing::warn!(%error, "the connector's status could not be written");
            }
        }
        outcome
    }

    async fn run_source(&self, kafka: &KafkaSettings, options: &RunOptions) -> Result<RunReport> {
        if self.schema_id.is_none() {
            return Err(ConnectorError::Config {
                path: self.folder.join("connector.toml"),
                message: format!(
                    "the registry's id of {} version {} is not known; nothing was published",
                    self.record_type, self.config.schema_version
                ),
            });
        }
        let mut keys = keys::KeyRing::open(
            &options.signing_key_file,
            &self.signing_key_id,
            options.key_dir.as_deref(),
            &self.department,
        )?;
        std::fs::create_dir_all(&options.state_dir).map_err(io_error(&options.state_dir))?;
        match &self.config.source {
            config::SourceConfig::Csv { path } | config::SourceConfig::Jsonl { path } => {
                let source = options
                    .source_override
                    .clone()
                    .unwrap_or_else(|| self.folder.join(path));
                let rows = if matches!(self.config.source, config::SourceConfig::Csv { .. }) {
                    read_csv(&source)?
                } else {
                    read_json_lines(&source)?
                };
                self.run_rows(
                    kafka,
                    options,
                    &mut keys,
                    &source.display().to_string(),
                    rows,
                )
                .await
            }
            config::SourceConfig::Sql {
                url,
                table,
                key,
                changed_at,
                lag_seconds,
                poll_millis,
            } => {
                let url = match &options.source_override {
                    Some(url) => url.display().to_string(),
                    None => self.resolve_setting(url)?,
                };
                let sql = sql::SqlSource::connect(
                    &url,
                    table,
                    key,
                    changed_at,
                    &self.folder.join("connector.toml"),
                )
                .await?;
                let polling = sql::Polling {
                    lag_millis: (*lag_seconds as i64).saturating_mul(1000),
                    interval: std::time::Duration::from_millis(*poll_millis),
                    changed_column: changed_at.clone(),
                };
                let outcome = self
                    .run_sql(kafka, options, &mut keys, &sql, &polling)
                    .await;
                sql.close().await;
                outcome
            }
            config::SourceConfig::Http {
                listen,
                ack_timeout_seconds,
                token_env,
            } => {
                let token = match token_env {
                    Some(name) => {
                        Some(std::env::var(name).map_err(|_| ConnectorError::Config {
                            path: self.folder.join("connector.toml"),
                            message: format!("source.token_env names {name}, which is not set"),
                        })?)
                    }
                    None => None,
                };
                push::serve(
                    self,
                    kafka,
                    keys,
                    push::PushSettings {
                        listen: listen.clone(),
                        ack_timeout: std::time::Duration::from_secs(*ack_timeout_seconds),
                        token,
                    },
                )
                .await
            }
        }
    }

    /// Appends rows that could not be mapped (`<row>,"<reason>"` lines) to the
    /// connector's rejected-rows file.
    fn write_rejects(&self, state_dir: &Path, rejects: &[String]) -> Result<()> {
        use std::io::Write;
        if rejects.is_empty() {
            return Ok(());
        }
        let path = state_dir.join(format!("{}.rejected.csv", self.name()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        for reject in rejects {
            file.write_all(reject.as_bytes()).map_err(io_error(&path))?;
        }
        tracing::warn!(rows = rejects.len(), file = %path.display(), "source rows could not be mapped");
        Ok(())
    }

    /// Where the connector is, from its checkpoint, and how far behind its source:
    /// rows of the file not yet acknowledged, or rows of the table changed after the
    /// watermark (counted up to 10,000).
    pub async fn status(
        &self,
        state_dir: &Path,
        source_override: Option<&Path>,
    ) -> Result<ConnectorStatus> {
        let checkpoint = self.checkpoint(state_dir)?;
        let acknowledged = checkpoint.as_ref().map_or(0, |c| c.rows_acknowledged);
        let (source_kind, position, lag_rows) = match &self.config.source {
            config::SourceConfig::Csv { path } | config::SourceConfig::Jsonl { path } => {
                let file = source_override
                    .map(Path::to_owned)
                    .unwrap_or_else(|| self.folder.join(path));
                let csv = matches!(self.config.source, config::SourceConfig::Csv { .. });
                let rows = if csv {
                    read_csv(&file)
                } else {
                    read_json_lines(&file)
                };
                let total = rows.ok().map(|rows| rows.len() as u64);
                (
                    if csv { "csv" } else { "jsonl" },
                    match total {
                        Some(total) => format!("{acknowledged}/{total} rows"),
                        None => format!("{acknowledged} rows (source unreadable)"),
                    },
                    total.map(|total| total.saturating_sub(acknowledged)),
                )
            }
            config::SourceConfig::Sql {
                url,
                table,
                key,
                changed_at,
                ..
            } => {
                let watermark = checkpoint
                    .as_ref()
                    .and_then(|c| c.watermark.as_ref())
                    .and_then(|w| w.changed_millis);
                let url = match source_override {
                    Some(url) => Some(url.display().to_string()),
                    None => self.resolve_setting(url).ok(),
                };
                let mut lag = None;
                if let Some(url) = url {
                    let config_path = self.folder.join("connector.toml");
                    if let Ok(source) =
                        sql::SqlSource::connect(&url, table, key, changed_at, &config_path).await
                    {
                        let from = watermark.map_or(0, |w| w.saturating_add(1));
                        if let Ok(rows) = source
                            .read(from, &(from.saturating_sub(1), String::new()), 10_000)
                            .await
                        {
                            lag = Some(rows.len() as u64);
                        }
                        source.close().await;
                    }
                }
                (
                    "sql",
                    match watermark {
                        Some(millis) => format!("changed at or before {millis}"),
                        None => "nothing read yet".into(),
                    },
                    lag,
                )
            }
            config::SourceConfig::Http { listen, .. } => {
                ("http", format!("push endpoint on {listen}"), None)
            }
        };
        Ok(ConnectorStatus {
            name: self.name(),
            source_kind,
            position,
            lag_rows,
            published_total: checkpoint.as_ref().map_or(0, |c| c.published_total),
            rejected_total: checkpoint.as_ref().map_or(0, |c| c.rejected_total),
            rate: checkpoint.as_ref().map_or(0.0, |c| c.rate),
            updated_at_millis: checkpoint.as_ref().map_or(0, |c| c.updated_at_millis),
            last_error: checkpoint.and_then(|c| c.last_error),
        })
    }

    /// A setting given as `env:NAME` is read from that environment variable.
    fn resolve_setting(&self, value: &str) -> Result<String> {
        match value.strip_prefix("env:") {
            Some(name) => std::env::var(name).map_err(|_| ConnectorError::Config {
                path: self.folder.join("connector.toml"),
                message: format!("{name} is not set (the source names env:{name})"),
            }),
            None => Ok(value.to_owned()),
        }
    }

    async fn run_rows(
        &self,
        kafka: &KafkaSettings,
        options: &RunOptions,
        keys: &mut keys::KeyRing,
        source: &str,
        rows: Vec<(u64, BTreeMap<String, String>)>,
    ) -> Result<RunReport> {
        let total = rows.len() as u64;
        let topic = kafka.records_topic(self.record_type.as_str());
        let (mut checkpoint, on_topic) = self.recover(kafka, options, &topic, source).await?;
        let done = checkpoint.rows_acknowledged.min(total);
        let publisher = RecordPublisher::new(kafka)?;
        let mut report = RunReport {
            already_done: done,
            ..RunReport::default()
        };
        let started = std::time::Instant::now();
        let batch_size = options.batch_size.max(1) as u64;
        // The first batch reaches as far as the crashed run may have sent rows, so every
        // row found on the topic is passed by the time the checkpoint moves on.
        let mut next = done;
        while next < total {
            let through = if next == done {
                (next + batch_size).max(checkpoint.publishing_through)
            } else {
                next + batch_size
            }
            .min(total);
            let batch = &rows[next as usize..through as usize];
            checkpoint.publishing_through = through;
            checkpoint.in_flight = true;
            self.write_checkpoint(&options.state_dir, &checkpoint)?;
            let signer = keys.current()?;
            let mut records = Vec::with_capacity(batch.len());
            let mut rejects = Vec::new();
            let mut stopped_at = None;
            for (index, (line, row)) in batch.iter().enumerate() {
                match self.sign_row_with(row, &signer) {
                    Ok(record) if on_topic.contains(record.envelope.record_id.as_str()) => {
                        report.recovered += 1;
                    }
                    Ok(record) => records.push(record),
                    Err(message) if self.config.on_bad_row == config::OnBadRow::Stop => {
                        stopped_at = Some((next + index as u64, *line, message));
                        break;
                    }
                    Err(message) => {
                        rejects.push(format!("{line},\"{}\"\n", message.replace('"', "'")))
                    }
                }
            }
            // Stopping at a bad row: what came before it is published and checkpointed,
            // the row itself and everything after it are not.
            let through = stopped_at.as_ref().map_or(through, |(row, _, _)| *row);
            let placed = publisher.publish_all(&records).await?;
            self.write_rejects(&options.state_dir, &rejects)?;
            for (partition, offset) in placed {
                let next_offset = checkpoint.next_offsets.entry(partition).or_insert(0);
                *next_offset = (*next_offset).max(offset + 1);
            }
            datarun_domain::faults::hit("connector.before_checkpoint");
            checkpoint.rows_acknowledged = through;
            checkpoint.in_flight = false;
            report.published += records.len() as u64;
            report.rejected += rejects.len() as u64;
            checkpoint.published_total += records.len() as u64;
            checkpoint.rejected_total += rejects.len() as u64;
            checkpoint.rate = (through - done) as f64 / started.elapsed().as_secs_f64().max(1e-3);
            checkpoint.updated_at_millis = now_millis();
            self.write_checkpoint(&options.state_dir, &checkpoint)?;
            if let Some((_, line, message)) = stopped_at {
                return Err(ConnectorError::Source {
                    path: PathBuf::from(source),
                    line,
                    message: format!(
                        "{message}; the connector stops here (on_bad_row = \"stop\"): fix the row and run it again"
                    ),
                });
            }
            next = through;
            if let Some(progress) = options.progress {
                let seconds = started.elapsed().as_secs_f64().max(1e-3);
                let rate = (next - done) as f64 / seconds;
                progress(&Progress {
                    connector: self.name(),
                    done: next,
                    total,
                    rate,
                    eta: (rate > 0.0)
                        .then(|| std::time::Duration::from_secs_f64((total - next) as f64 / rate)),
                });
            }
        }
        Ok(report)
    }

    /// The checkpoint to go on from, and the record ids the topic holds past it. A
    /// first run notes where the topic ends before it sends anything, so a crash in its
    /// first batch is recovered from there.
    async fn recover(
        &self,
        kafka: &KafkaSettings,
        options: &RunOptions,
        topic: &str,
        source: &str,
    ) -> Result<(Checkpoint, std::collections::HashSet<String>)> {
        match self.checkpoint(&options.state_dir)? {
            None => {
                let checkpoint = Checkpoint {
                    rows_acknowledged: 0,
                    publishing_through: 0,
                    in_flight: false,
                    topic: topic.to_owned(),
                    source: source.to_owned(),
                    next_offsets: datarun_kafka::end_offsets(kafka, topic).await?,
                    watermark: None,
                    published_total: 0,
                    rejected_total: 0,
                    rate: 0.0,
                    updated_at_millis: now_millis(),
                    last_error: None,
                };
                self.write_checkpoint(&options.state_dir, &checkpoint)?;
                Ok((checkpoint, Default::default()))
            }
            Some(checkpoint) => {
                if checkpoint.topic != topic {
                    return Err(ConnectorError::Config {
                        path: self.checkpoint_path(&options.state_dir),
                        message: format!(
                            "the checkpoint is for topic {}, this run publishes to {topic}",
                            checkpoint.topic
                        ),
                    });
                }
                if !checkpoint.in_flight {
                    return Ok((checkpoint, Default::default()));
                }
                let (on_topic, ends) = datarun_kafka::record_ids_since(
                    kafka,
                    topic,
                    &checkpoint.next_offsets,
                    RECOVERY_SCAN_LIMIT,
                )
                .await?;
                tracing::info!(
                    connector = %self.name(),
                    messages_found = on_topic.len(),
                    from = ?checkpoint.next_offsets,
                    to = ?ends,
                    "resuming after an unfinished batch: rows already on the topic are not sent again"
                );
                Ok((checkpoint, on_topic))
            }
        }
    }
}

/// How long a restarted connector may spend reading what its crashed run left on the
/// topic.
const RECOVERY_SCAN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where a connector is: rows the broker acknowledged, how far the batch in flight
/// reached, and the offset past the connector's last acknowledged message in each
/// partition (anything it sent later lies beyond).
///
/// A file source counts rows; a `sql` source keeps its watermark instead.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub rows_acknowledged: u64,
    pub publishing_through: u64,
    /// A batch was sent and not yet checkpointed: a restart reads the topic first.
    #[serde(default)]
    pub in_flight: bool,
    pub topic: String,
    pub source: String,
    pub next_offsets: BTreeMap<i32, i64>,
    #[serde(default)]
    pub watermark: Option<sql::Watermark>,
    /// Rows published, and rows that could not be mapped, over every run.
    #[serde(default)]
    pub published_total: u64,
    #[serde(default)]
    pub rejected_total: u64,
    /// Rows per second of the latest run, and when the checkpoint last moved.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub updated_at_millis: i64,
    /// The latest run's failure, with its time; cleared by a run that finishes.
    #[serde(default)]
    pub last_error: Option<LastError>,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    pub at_millis: i64,
    pub message: String,
}

/// What `datarun connector status` shows of a connector.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorStatus {
    pub name: String,
    pub source_kind: &'static str,
    /// Rows acknowledged of the source's rows (files), or the watermark (sql).
    pub position: String,
    /// How far behind its source it is, in rows (None when it cannot be told).
    pub lag_rows: Option<u64>,
    pub published_total: u64,
    pub rejected_total: u64,
    pub rate: f64,
    pub updated_at_millis: i64,
    pub last_error: Option<LastError>,
}

/// A JSON object's members as text columns: text as it is, numbers and booleans as
/// their text, null as empty; an array or an object is refused.
pub(crate) fn columns_as_text(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, String> {
    let mut row = BTreeMap::new();
    for (key, value) in object {
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Null => String::new(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => return Err(format!("{key} holds an array or an object")),
        };
        row.insert(key, text);
    }
    Ok(row)
}

/// Reads a CSV with a header row into (line number, column → value) rows.
fn read_csv(path: &Path) -> Result<Vec<(u64, BTreeMap<String, String>)>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| ConnectorError::Source {
        path: path.to_owned(),
        line: 0,
        message: e.to_string(),
    })?;
    let headers = reader
        .headers()
        .map_err(|e| ConnectorError::Source {
            path: path.to_owned(),
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ConnectorError::Source {
            path: path.to_owned(),
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        rows.push((
            line,
            headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect(),
        ));
    }
    Ok(rows)
}

/// Reads JSON lines, one object per line, into (line number, key → value) rows: text
/// as it is, numbers and booleans as their text, null as empty. Blank lines are skipped.
fn read_json_lines(path: &Path) -> Result<Vec<(u64, BTreeMap<String, String>)>> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |message: String| ConnectorError::Source {
            path: path.to_owned(),
            line: line_number,
            message,
        };
        let object = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err(invalid("a line must be one JSON object".into())),
            Err(error) => return Err(invalid(format!("not JSON: {error}"))),
        };
        rows.push((line_number, columns_as_text(object).map_err(invalid)?));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cst_timestamps() {
        assert_eq!(parse_cst_timestamp("1970-01-01 08:00:00"), Some(0));
        assert_eq!(
            parse_cst_timestamp("2026-01-01 08:00:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_cst_timestamp("2026-02-30 08:00:00"), None);
        assert_eq!(parse_cst_timestamp("2026-01-01 24:00:00"), None);
        assert_eq!(parse_cst_timestamp("2026-01-01"), None);
    }

    fn connector() -> Connector {
        let folder =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors/health.birth_certificate");
        let mut connector = Connector::load(&folder).unwrap();
        connector.set_schema_id(7);
        connector
    }

    #[test]
    fn the_health_connector_maps_generated_rows_deterministically() {
        let connector = connector();
        let rows = sample::birth_certificates(5, 42);
        let seed = [3u8; 32];
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        use ring::signature::KeyPair;
        for row in &rows {
            let first = connector.sign_row_at(row, &key_pair, 1_000).unwrap();
            let second = connector.sign_row_at(row, &key_pair, 1_000).unwrap();
            assert_eq!(
                first, second,
                "signing a row twice at one time must give the same record"
            );
            let later = connector.sign_row_at(row, &key_pair, 9_000).unwrap();
            assert_eq!(later.envelope.record_id, first.envelope.record_id);
            assert_eq!(
                later.envelope.content_digest(&later.payload),
                first.envelope.content_digest(&first.payload),
                "a row signed again later is the same record"
            );
            assert!(first.signature_is_valid(key_pair.public_key().as_ref()));
            let today = CivilDate::new(2026, 11, 22).unwrap();
            let (schema_id, body) = first.unframed().unwrap();
            assert_eq!(schema_id, 7, "every value names the registry's schema id");
            let valid = connector.schema.validate(body, today).unwrap();
            assert_eq!(valid.subject, first.envelope.subject);
            assert!(matches!(
                valid.fields["child_sex"].as_str(),
                Some("MALE" | "FEMALE")
            ));
        }
    }

    /// Every connector under `connectors/` maps every row the population generator
    /// writes for its record type into a payload its schema accepts.
    #[test]
    fn every_connector_maps_its_generated_rows() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors");
        let population = population::generate(300, 5);
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let mut covered = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let folder = entry.unwrap().path();
            if !folder.join("connector.toml").is_file() {
                continue;
            }
            let mut connector = Connector::load(&folder).unwrap();
            connector.set_schema_id(1);
            let file = population
                .files
                .iter()
                .find(|f| f.record_type == connector.record_type().as_str())
                .unwrap_or_else(|| panic!("no sample data for {}", connector.name()));
            let path = connector
                .config
                .source
                .file_path()
                .unwrap_or_else(|| panic!("{} reads a file", connector.name()));
            assert!(
                file.path.ends_with(path.trim_start_matches("sample/")),
                "{} reads {path}, the generator writes {}",
                connector.name(),
                file.path
            );
            let kind_matches = match file.format {
                population::Format::Csv => {
                    matches!(connector.config.source, config::SourceConfig::Csv { .. })
                }
                population::Format::JsonLines => {
                    matches!(connector.config.source, config::SourceConfig::Jsonl { .. })
                }
            };
            assert!(
                kind_matches,
                "{}: the source kind matches the file",
                connector.name()
            );
            for row in &file.rows {
                let signed = connector
                    .sign_row(row, &key_pair)
                    .unwrap_or_else(|e| panic!("{}: {e}: {row:?}", connector.name()));
                let (_, body) = signed.unframed().unwrap();
                let valid = connector
                    .schema
                    .validate(body, population::AS_OF)
                    .unwrap_or_else(|e| panic!("{}: {e:?}: {row:?}", connector.name()));
                assert_eq!(valid.subject, signed.envelope.subject);
            }
            covered.push(connector.record_type().to_string());
        }
        covered.sort();
        let mut generated: Vec<String> = population
            .files
            .iter()
            .map(|f| f.record_type.to_owned())
            .collect();
        generated.sort();
        assert_eq!(
            covered, generated,
            "one connector per generated record type"
        );
    }

    #[test]
    fn json_lines_read_text_numbers_and_nulls() {
        let dir = std::env::temp_dir().join(format!("datarun-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.jsonl");
        std::fs::write(
            &path,
            "{\"a\": \"x\", \"b\": 42, \"c\": null, \"d\": true}\n\n{\"a\": \"y\"}\n",
        )
        .unwrap();
        let rows = read_json_lines(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 1);
        assert_eq!(rows[0].1["b"], "42");
        assert_eq!(rows[0].1["c"], "");
        assert_eq!(rows[0].1["d"], "true");
        assert_eq!(rows[1].0, 3, "line numbers count blank lines");
        std::fs::write(&path, "{\"a\": 1}\n[1, 2]\n").unwrap();
        let error = read_json_lines(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("one JSON object"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn progress_shows_bar_counts_rate_and_time_left() {
        let progress = Progress {
            connector: "health.birth_certificate".into(),
            done: 3_000,
            total: 10_000,
            rate: 2_412.7,
            eta: Some(std::time::Duration::from_secs(3)),
        };
        assert_eq!(
            progress.line(),
            "health.birth_certificate [######--------------]     3,000/10,000   2,412/s  ETA 3s"
        );
        let finished = Progress {
            done: 10_000,
            eta: Some(std::time::Duration::ZERO),
            ..progress
        };
        assert!(finished.line().ends_with("done"), "{}", finished.line());
        assert!(finished.line().contains("[####################]"));
    }

    #[test]
    fn unmappable_rows_say_which_field() {
        let connector = connector();
        let mut row = sample::birth_certificates(1, 1).remove(0);
        row.insert("birth_date".into(), "2015-02-30".into());
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
        let error = connector.sign_row(&row, &key_pair).unwrap_err();
        assert!(error.contains("date_of_birth"), "{error}");
    }

    #[test]
    fn no_record_is_signed_without_its_schema_id() {
        let folder =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors/health.birth_certificate");
        let connector = Connector::load(&folder).unwrap();
        let row = sample::birth_certificates(1, 1).remove(0);
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
        let error = connector.sign_row(&row, &key_pair).unwrap_err();
        assert!(error.contains("registry's id"), "{error}");
    }
}
