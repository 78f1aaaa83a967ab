//! The broker's ingest pipeline. For each message: check its bounds and read the
//! envelope, find the key in the trust registry, verify the signature, judge the key and
//! the claimed signing time by the hub's clock, check the publisher may publish the type,
//! decode and validate the payload against its registered schema. One transaction then
//! stores the batch's accepted records and records (and audits, once) its rejections;
//! dead letters follow, and the Kafka offsets only after all of that. A crash at any
//! point redelivers rather than loses, and redelivery is idempotent.

mod checkers;

use checkers::CheckPool;
pub use checkers::CHECK_NICENESS;
use datarun_domain::date::CivilDate;
use datarun_domain::{RejectReason, Rejection, SignedRecord};
use datarun_kafka::{DeadLetterPublisher, IncomingRecord, IngestConsumer};
use datarun_schema::RecordSchema;
use datarun_store::faults;
use datarun_store::{
    IngestItem, IngestOutcome, MessageSource, RejectedRecord, Store, StoredRecord, TrustedKey,
    Verdict,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] datarun_store::StoreError),
    #[error(transparent)]
    Kafka(#[from] datarun_kafka::KafkaError),
    #[error("ingest worker failed: {0}")]
    Worker(String),
    #[error("registered schema {record_type} v{version} does not parse: {message}")]
    BrokenSchema {
        record_type: String,
        version: u32,
        message: String,
    },
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// Counters an operator watches (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub retries: AtomicU64,
    /// Batches stored, and the time spent in each pipeline stage, in microseconds:
    /// where a batch's time goes (the store stage is serial, the checks are not).
    pub batches: AtomicU64,
    pub check_micros: AtomicU64,
    pub store_micros: AtomicU64,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Stored,
    Duplicate,
    Rejected(Rejection),
}

/// Writer schemas by (record type, schema id), parsed; a registered schema never
/// changes, and its id stays resolvable after a soft deletion.
type SchemaCache = HashMap<(String, u32), Arc<RecordSchema>>;

/// What an operator tunes about ingest.
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    /// How far ahead of the hub's clock a record's `signed_at` may be.
    pub max_clock_skew_millis: i64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_clock_skew_millis: datarun_domain::trust::DEFAULT_MAX_CLOCK_SKEW_MILLIS,
        }
    }
}

/// The verification and storage pipeline, independent of where messages come from.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    dead_letters: DeadLetterPublisher,
    settings: IngestSettings,
    schemas: Arc<Mutex<SchemaCache>>,
    pub stats: Arc<IngestStats>,
    /// The threads that run the checks' CPU work, below the rest of the hub's priority.
    checkers: Arc<CheckPool>,
}

impl Ingest {
    pub fn new(store: Store, dead_letters: DeadLetterPublisher, settings: IngestSettings) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        Self {
            store,
            dead_letters,
            settings,
            schemas: Arc::default(),
            stats: Arc::default(),
            checkers: Arc::new(CheckPool::start(cores)),
        }
    }

    /// The writer's schema a value names by its id, as a version of `record_type`.
    async fn schema(&self, record_type: &str, schema_id: u32) -> Result<Option<Arc<RecordSchema>>> {
        let key = (record_type.to_owned(), schema_id);
        if let Some(schema) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(schema.clone()));
        }
        let Some((version, definition)) = self
            .store
            .schema_of_record_type(record_type, i64::from(schema_id))
            .await?
        else {
            return Ok(None);
        };
        let broken = |message: String| IngestError::BrokenSchema {
            record_type: record_type.to_owned(),
            version,
            message,
        };
        let parsed_type =
            datarun_domain::RecordType::parse(record_type).map_err(|e| broken(e.to_string()))?;
        let schema = RecordSchema::parse(parsed_type, version, &definition)
            .map_err(|e| broken(e.to_string()))?;
        let schema = Arc::new(schema);
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, schema.clone());
        Ok(Some(schema))
    }

    /// Looks up, once per batch, the keys, permissions and schemas its records need.
    async fn resolve(&self, batch: &[IncomingRecord]) -> Result<TrustContext> {
        let mut context = TrustContext::default();
        for record in batch
            .iter()
            .filter_map(|incoming| incoming.record.as_ref().ok())
        {
            let envelope = &record.envelope;
            let key_id = envelope.signing_key_id.as_str();
            if !context.keys.contains_key(key_id) {
                context
                    .keys
                    .insert(key_id.to_owned(), self.store.trusted_key(key_id).await?);
            }
            let permission = (
                envelope.department.to_string(),
                envelope.record_type.to_string(),
            );
            if let std::collections::hash_map::Entry::Vacant(entry) =
                context.permissions.entry(permission)
            {
                let (department, record_type) = entry.key();
                let allowed = self.store.may_publish(department, record_type).await?;
                entry.insert(allowed);
            }
            let Ok((schema_id, _)) = record.unframed() else {
                continue;
            };
            let schema_key = (envelope.record_type.to_string(), schema_id);
            if let std::collections::hash_map::Entry::Vacant(entry) =
                context.schemas.entry(schema_key)
            {
                let (record_type, schema_id) = entry.key();
                let schema = self.schema(record_type, *schema_id).await?;
                entry.insert(schema);
            }
        }
        Ok(context)
    }

    /// Everything short of storing, for each message of a batch: bounds and envelope,
    /// key, signature, key window and signing time, permission, schema and payload. Reads
    /// the trust registry once per batch and spreads the CPU work over the check threads.
    pub async fn check_batch(&self, batch: Arc<Vec<IncomingRecord>>) -> Result<Vec<IngestItem>> {
        let context = Arc::new(self.resolve(&batch).await?);
        let received_at = datarun_store::now_millis();
        let today = CivilDate::from_unix_millis_cst(received_at);
        let max_skew = self.settings.max_clock_skew_millis;
        // Signature and payload checks are CPU work, done in small pieces by the check
        // pool's threads, one per core, at a lower scheduling priority than the rest of
        // the hub: they take every core the store stage, the reader and the HTTP API
        // leave idle, and yield the core when one of those has work (see `CheckPool`).
        let piece = batch.len().div_ceil(self.checkers.threads * 8).max(16);
        let pieces = batch.len().div_ceil(piece);
        let mut running = Vec::with_capacity(pieces);
        for index in 0..pieces {
            let (batch, context) = (batch.clone(), context.clone());
            running.push(self.checkers.run(move || {
                let end = ((index + 1) * piece).min(batch.len());
                batch[index * piece..end]
                    .iter()
                    .map(|incoming| IngestItem {
                        source: message_source(incoming),
                        verdict: match &incoming.record {
                            Err(rejection) => {
                                Verdict::Reject(unreadable(incoming, rejection.clone()))
                            }
                            Ok(record) => context.check(record, received_at, max_skew, today),
                        },
                    })
                    .collect::<Vec<_>>()
            })?);
        }
        let mut pieces_done = Vec::with_capacity(pieces);
        for piece in running {
            pieces_done.push(piece.await.map_err(|_| {
                IngestError::Worker("a check thread failed while checking a batch".into())
            })?);
        }
        let mut items = Vec::with_capacity(batch.len());
        for piece_items in pieces_done {
            items.extend(piece_items);
        }
        Ok(items)
    }

    /// Stores a checked batch: verified records are stored and rejections recorded and
    /// audited in one transaction, then rejections are dead-lettered. An `Err` means the
    /// batch must be retried and not acknowledged; retrying is safe (stored records come
    /// back as duplicates, recorded rejections keep their decision and audit event).
    pub async fn store_checked(
        &self,
        batch: &[IncomingRecord],
        items: &[IngestItem],
    ) -> Result<Vec<Handled>> {
        let outcomes = self.store.store_batch(items).await?;
        if outcomes.len() != items.len() {
            return Err(IngestError::Worker(
                "store returned another number of outcomes than messages".into(),
            ));
        }
        faults::hit("ingest.after_store_commit");
        let mut handled = Vec::with_capacity(batch.len());
        for ((incoming, item), outcome) in batch.iter().zip(items).zip(outcomes) {
            match outcome {
                IngestOutcome::Stored => handled.push(Handled::Stored),
                IngestOutcome::Duplicate => handled.push(Handled::Duplicate),
                IngestOutcome::Rejected {
                    rejection,
                    dead_lettered,
                } => {
                    if !dead_lettered {
                        self.dead_letter(incoming, &item.source, &rejection).await?;
                    }
                    handled.push(Handled::Rejected(rejection));
                }
            }
        }
        for outcome in &handled {
            let counter = match outcome {
                Handled::Stored => &self.stats.stored,
                Handled::Duplicate => &self.stats.duplicates,
                Handled::Rejected(_) => &self.stats.rejected,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(handled)
    }

    /// Publishes one rejection's dead letter, then marks it published.
    async fn dead_letter(
        &self,
        incoming: &IncomingRecord,
        source: &MessageSource,
        rejection: &Rejection,
    ) -> Result<()> {
        let record_id = incoming
            .record
            .as_ref()
            .ok()
            .map(|r| r.envelope.record_id.as_str());
        tracing::warn!(
            record_id = record_id.unwrap_or("-"),
            topic = %incoming.topic,
            partition = incoming.partition,
            offset = incoming.offset,
            reason = rejection.reason.code(),
            field = rejection.field.as_deref().unwrap_or("-"),
            "record rejected"
        );
        let form = self.dead_letters.publish(incoming, rejection).await?;
        faults::hit("ingest.after_dead_letter");
        self.store
            .mark_dead_lettered(&[(source, form.as_str())])
            .await?;
        Ok(())
    }

    /// Consumes until `shutdown` resolves, in batches of up to `MAX_BATCH` messages
    /// (whatever has arrived, never waiting to fill one), as a pipeline of three stages
    /// joined by bounded queues: one reads batches (`READ_AHEAD` may wait), one checks
    /// them (signatures and payloads on the check threads; `CHECKED_AHEAD` may wait),
    /// and one stores them in the order read. The reader and the store stage are tasks
    /// of their own: a batch of messages that have already arrived is parsed without
    /// yielding, and on the store's task that held up its statements, leaving a core
    /// idle for the time it takes to read a batch. Checking never waits for a store
    /// transaction unless it is that far ahead, so the cores the store leaves idle go
    /// to the checks. Offsets are acknowledged only after the commit of the batch that
    /// holds them, and a batch that cannot be checked or stored (database or broker
    /// down) is retried with backoff, never skipped.
    pub async fn run(
        self,
        consumer: IngestConsumer,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let consumer = Arc::new(consumer);
        let (read, mut to_check) =
            tokio::sync::mpsc::channel::<Arc<Vec<IncomingRecord>>>(READ_AHEAD);
        let (checked, mut to_store) = tokio::sync::mpsc::channel::<Checked>(CHECKED_AHEAD);
        let reader = AbortOnDrop(tokio::spawn({
            let consumer = consumer.clone();
            async move {
                loop {
                    let batch = read_batch(&consumer).await;
                    if read.send(Arc::new(batch)).await.is_err() {
                        break;
                    }
                }
            }
        }));
        let store = AbortOnDrop(tokio::spawn({
            let (ingest, consumer) = (self.clone(), consumer.clone());
            async move {
                while let Some(batch) = to_store.recv().await {
                    ingest.store_with_retry(&consumer, batch).await;
                }
            }
        }));
        let checking = async {
            while let Some(batch) = to_check.recv().await {
                if checked
                    .send(self.check_with_retry(batch).await)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = checking => {}
        }
        // Stop reading, and stop a store transaction still running (it rolls back, and
        // its batch is redelivered) before the final commit of the offsets stored. A stage
        // that panicked panics the pipeline, as it did when the stages shared its task.
        for stage in [reader, store] {
            stage.0.abort();
            if let Err(ended) = stage.join().await {
                if ended.is_panic() {
                    std::panic::resume_unwind(ended.into_panic());
                }
            }
        }
        if let Err(error) = consumer.commit_now() {
            tracing::warn!(%error, "final offset commit failed; uncommitted records will be redelivered");
        }
    }

    /// Counts a retry and waits `backoff`, doubling it up to 5 s for the next one.
    async fn back_off(&self, backoff: &mut Duration) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }

    /// Checks a batch, retrying the checks with backoff while the trust registry cannot
    /// be read.
    async fn check_with_retry(&self, batch: Arc<Vec<IncomingRecord>>) -> Checked {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            match self.check_batch(batch.clone()).await {
                Ok(items) => {
                    add_micros(&self.stats.check_micros, started);
                    faults::hit("ingest.after_checks");
                    return Checked { batch, items };
                }
                Err(error) => {
                    tracing::warn!(%error, messages = batch.len(), "checking a batch failed; retrying");
                    self.back_off(&mut backoff).await;
                }
            }
        }
    }

    /// Stores a checked batch, retrying with backoff until it is stored, then
    /// acknowledges its offsets.
    async fn store_with_retry(&self, consumer: &IngestConsumer, checked: Checked) {
        let Checked { batch, items } = checked;
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            match self.store_checked(&batch, &items).await {
                Ok(handled) => {
                    add_micros(&self.stats.store_micros, started);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        messages = batch.len(),
                        stored = handled.iter().filter(|h| **h == Handled::Stored).count(),
                        positions = %positions(&batch),
                        "batch handled"
                    );
                    faults::hit("ingest.before_offsets");
                    if let Err(error) = consumer.acknowledge(&batch) {
                        tracing::warn!(%error, "storing the offsets failed; the batch's records may be redelivered");
                    }
                    faults::hit("ingest.after_offsets_stored");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, messages = batch.len(), "ingest failed; retrying the batch");
                    self.back_off(&mut backoff).await;
                }
            }
        }
    }
}

fn add_micros(counter: &AtomicU64, since: std::time::Instant) {
    counter.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// A spawned stage, aborted when dropped (when `run` is, say), so that no stage
/// outlives the pipeline it belongs to.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn join(mut self) -> std::result::Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A batch read and checked, waiting for its store transaction.
struct Checked {
    batch: Arc<Vec<IncomingRecord>>,
    items: Vec<IngestItem>,
}

/// Waits for a message, then takes whatever else has arrived, up to `MAX_BATCH`.
async fn read_batch(consumer: &IngestConsumer) -> Vec<IncomingRecord> {
    let first = loop {
        match consumer.next().await {
            Ok(incoming) => break incoming,
            Err(error) => {
                tracing::warn!(%error, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut bytes = first.size();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match tokio::time::timeout(Duration::from_millis(1), consumer.next()).await {
            Ok(Ok(incoming)) => {
                bytes += incoming.size();
                batch.push(incoming);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "kafka consume error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// A batch's positions for the log: `topic[partition]first..=last(count)` per partition.
fn positions(batch: &[IncomingRecord]) -> String {
    let mut ranges: std::collections::BTreeMap<(&str, i32), (i64, i64, usize)> =
        std::collections::BTreeMap::new();
    for incoming in batch {
        let range = ranges
            .entry((incoming.topic.as_str(), incoming.partition))
            .or_insert((incoming.offset, incoming.offset, 0));
        range.0 = range.0.min(incoming.offset);
        range.1 = range.1.max(incoming.offset);
        range.2 += 1;
    }
    ranges
        .iter()
        .map(|((topic, partition), (first, last, count))| {
            format!("{topic}[{partition}]{first}..={last}({count})")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The most messages handled in one batch (one database transaction). Larger batches
/// write each index page touched once for more records (4,000 against 1,000: 9,600/s
/// against 6,900/s into SQLite at 200,000 records), but SQLite's one writer lock is
/// held for the whole transaction, and a consented lookup writes its audit event
/// behind it: 4,000 keeps that wait near a third of a second on a 2-core machine.
pub const MAX_BATCH: usize = 4000;

/// The most message bytes (key, value and headers) in one batch, so that batches of
/// large messages stay bounded in memory while they wait to be stored.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// How many batches read may wait for the checks: one, so the next batch is read while
/// one is checked.
const READ_AHEAD: usize = 1;

/// How many checked batches may wait for the store: enough that the checks keep the
/// cores busy while a transaction commits, few enough to bound memory (each holds up to
/// `MAX_BATCH` messages of at most `limits::MAX_VALUE_BYTES`).
const CHECKED_AHEAD: usize = 2;

/// What a batch's records are checked against, resolved once per batch.
#[derive(Default)]
struct TrustContext {
    keys: HashMap<String, Option<TrustedKey>>,
    permissions: HashMap<(String, String), bool>,
    schemas: HashMap<(String, u32), Option<Arc<RecordSchema>>>,
}

impl TrustContext {
    /// Everything short of storing: the row to store, or why not.
    fn check(
        &self,
        record: &SignedRecord,
        received_at: i64,
        max_skew: i64,
        today: CivilDate,
    ) -> Verdict {
        let mut signature_verified = false;
        let mut key_valid = false;
        match self.verify(
            record,
            received_at,
            max_skew,
            today,
            &mut signature_verified,
            &mut key_valid,
        ) {
            Ok(row) => Verdict::Accept(row),
            Err(rejection) => {
                let envelope = &record.envelope;
                Verdict::Reject(RejectedRecord {
                    rejection,
                    record_id: Some(envelope.record_id.to_string()),
                    department: Some(envelope.department.to_string()),
                    record_type: Some(envelope.record_type.to_string()),
                    verified: signature_verified && key_valid,
                    content_digest: signature_verified
                        .then(|| envelope.content_digest(&record.payload)),
                })
            }
        }
    }

    fn verify(
        &self,
        record: &SignedRecord,
        received_at: i64,
        max_skew: i64,
        today: CivilDate,
        signature_verified: &mut bool,
        key_valid: &mut bool,
    ) -> Result<StoredRecord, Rejection> {
        let envelope = &record.envelope;
        let key_header = datarun_kafka::wire::KEY_ID;
        let Some(Some(key)) = self.keys.get(envelope.signing_key_id.as_str()) else {
            return Err(Rejection::at(
                RejectReason::UnknownKey,
                key_header,
                "no such key in the trust registry",
            ));
        };
        if key.department != envelope.department.as_str() {
            return Err(Rejection::at(
                RejectReason::UnknownKey,
                key_header,
                "the key is registered to another department",
            ));
        }
        if !record.signature_is_valid(&key.public_key) {
            return Err(Rejection::at(
                RejectReason::SignatureInvalid,
                datarun_kafka::wire::SIGNATURE,
                "the signature does not verify against the registered key",
            ));
        }
        *signature_verified = true;
        if let Err(rejection) = key
            .window()
            .judge(envelope.signed_at_millis, received_at, max_skew)
        {
            // A key valid at receipt vouches for the envelope even when the signing time
            // it states is refused (too far ahead, or before the key's validity).
            *key_valid = rejection.field.as_deref() == Some(datarun_kafka::wire::SIGNED_AT);
            return Err(rejection);
        }
        *key_valid = true;
        let permission = (
            envelope.department.to_string(),
            envelope.record_type.to_string(),
        );
        if self.permissions.get(&permission) != Some(&true) {
            return Err(Rejection::at(
                RejectReason::PublisherNotAllowed,
                datarun_kafka::wire::RECORD_TYPE,
                format!(
                    "{} may not publish {}",
                    envelope.department, envelope.record_type
                ),
            ));
        }
        let (schema_id, body) = record.unframed().map_err(|problem| {
            Rejection::at(
                RejectReason::WireFormatInvalid,
                datarun_kafka::wire::VALUE,
                problem,
            )
        })?;
        let schema_key = (envelope.record_type.to_string(), schema_id);
        let Some(Some(schema)) = self.schemas.get(&schema_key) else {
            return Err(Rejection::at(
                RejectReason::UnknownSchema,
                datarun_kafka::wire::VALUE,
                format!(
                    "schema id {schema_id} is not a registered version of {}",
                    envelope.record_type
                ),
            ));
        };
        let validated = schema.validate(body, today)?;
        if validated.subject != envelope.subject {
            return Err(Rejection::at(
                RejectReason::SubjectMismatch,
                datarun_kafka::wire::SUBJECT,
                "the envelope's subject is not the payload's subject",
            ));
        }
        Ok(StoredRecord {
            record_id: envelope.record_id.to_string(),
            certificate_id: validated.certificate_id.to_string(),
            record_type: envelope.record_type.to_string(),
            schema_version: schema.version,
            department: envelope.department.to_string(),
            subject: validated.subject,
            signed_at: envelope.signed_at_millis,
            signing_key_id: envelope.signing_key_id.to_string(),
            content_digest: envelope.content_digest(&record.payload),
            signature: record.signature.clone(),
            status: validated.status,
            superseded_by: validated.superseded_by,
            fields_json: serde_json::Value::Object(validated.fields).to_string(),
            guardians: validated
                .guardians
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
        })
    }
}

/// Where a message was read, with the SHA-256 of its key, value and headers.
fn message_source(incoming: &IncomingRecord) -> MessageSource {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    match &incoming.key {
        Some(key) => {
            part(b"k");
            part(key);
        }
        None => part(b"-"),
    }
    part(&incoming.payload);
    for (name, value) in &incoming.headers {
        part(name.as_bytes());
        part(value);
    }
    MessageSource {
        topic: incoming.topic.clone(),
        partition: incoming.partition,
        offset: incoming.offset,
        message_digest: hex::encode(digest.finish()),
    }
}

/// A message whose envelope could not be read: what its headers claim, where readable.
fn unreadable(incoming: &IncomingRecord, rejection: Rejection) -> RejectedRecord {
    use datarun_domain::{DepartmentId, RecordId, RecordType};
    let claimed = |name: &str| {
        incoming
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    };
    let wire = datarun_kafka::wire::RECORD_ID;
    RejectedRecord {
        rejection,
        record_id: claimed(wire)
            .and_then(|v| RecordId::parse(v).ok())
            .map(|v| v.to_string()),
        department: claimed(datarun_kafka::wire::DEPARTMENT)
            .and_then(|v| DepartmentId::parse(v).ok())
            .map(|v| v.to_string()),
        record_type: claimed(datarun_kafka::wire::RECORD_TYPE)
            .and_then(|v| RecordType::parse(v).ok())
            .map(|v| v.to_string()),
        verified: false,
        content_digest: None,
    }
}
