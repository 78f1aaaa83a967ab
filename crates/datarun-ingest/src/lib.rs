//! The broker's ingest pipeline. For each message: read the envelope, find the key in
//! the trust registry, verify the signature, check the publisher may publish the type,
//! decode and validate the payload against its registered schema, and store it. The
//! Kafka offset is acknowledged only after the database commit (or, for a rejected
//! record, after the dead-letter publish and its audit event), so a crash at any point
//! redelivers rather than loses, and redelivery is idempotent.

use datarun_domain::date::CivilDate;
use datarun_domain::{RejectReason, Rejection, SignedRecord};
use datarun_kafka::{DeadLetterPublisher, IncomingRecord, IngestConsumer};
use datarun_schema::RecordSchema;
use datarun_store::{NewAuditEvent, Store, StoreOutcome, StoredRecord};
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
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Stored,
    Duplicate,
    Rejected(Rejection),
}

/// Parsed schemas by (record type, version); registered versions never change.
type SchemaCache = HashMap<(String, u32), Arc<RecordSchema>>;

/// The verification and storage pipeline, independent of where messages come from.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    dead_letters: DeadLetterPublisher,
    schemas: Arc<Mutex<SchemaCache>>,
    pub stats: Arc<IngestStats>,
}

impl Ingest {
    pub fn new(store: Store, dead_letters: DeadLetterPublisher) -> Self {
        Self {
            store,
            dead_letters,
            schemas: Arc::default(),
            stats: Arc::default(),
        }
    }

    async fn schema(&self, record_type: &str, version: u32) -> Result<Option<Arc<RecordSchema>>> {
        let key = (record_type.to_owned(), version);
        if let Some(schema) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(schema.clone()));
        }
        let Some(definition) = self.store.schema_definition(record_type, version).await? else {
            return Ok(None);
        };
        let parsed_type = datarun_domain::RecordType::parse(record_type).map_err(|e| {
            IngestError::BrokenSchema {
                record_type: record_type.to_owned(),
                version,
                message: e.to_string(),
            }
        })?;
        let schema = RecordSchema::parse(parsed_type, version, &definition).map_err(|e| {
            IngestError::BrokenSchema {
                record_type: record_type.to_owned(),
                version,
                message: e.to_string(),
            }
        })?;
        let schema = Arc::new(schema);
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, schema.clone());
        Ok(Some(schema))
    }

    /// Checks everything short of storing; returns the row to store or why not.
    async fn verify(&self, record: &SignedRecord) -> Result<Result<StoredRecord, Rejection>> {
        let envelope = &record.envelope;
        let key_header = datarun_kafka::wire::KEY_ID;
        let Some(key) = self
            .store
            .trusted_key(envelope.signing_key_id.as_str())
            .await?
        else {
            return Ok(Err(Rejection::at(
                RejectReason::UnknownKey,
                key_header,
                "no such key in the trust registry",
            )));
        };
        if key.department != envelope.department.as_str() {
            return Ok(Err(Rejection::at(
                RejectReason::UnknownKey,
                key_header,
                "the key is registered to another department",
            )));
        }
        if let Err(message) = key.valid_at(envelope.issued_at_millis) {
            return Ok(Err(Rejection::at(
                RejectReason::KeyNotValid,
                key_header,
                message,
            )));
        }
        if !record.signature_is_valid(&key.public_key) {
            return Ok(Err(Rejection::at(
                RejectReason::SignatureInvalid,
                datarun_kafka::wire::SIGNATURE,
                "the signature does not verify against the registered key",
            )));
        }
        if !self
            .store
            .may_publish(envelope.department.as_str(), envelope.record_type.as_str())
            .await?
        {
            return Ok(Err(Rejection::at(
                RejectReason::PublisherNotAllowed,
                datarun_kafka::wire::RECORD_TYPE,
                format!(
                    "{} may not publish {}",
                    envelope.department, envelope.record_type
                ),
            )));
        }
        let Some(schema) = self
            .schema(envelope.record_type.as_str(), envelope.schema_version)
            .await?
        else {
            return Ok(Err(Rejection::at(
                RejectReason::SchemaUnknown,
                datarun_kafka::wire::SCHEMA_VERSION,
                format!(
                    "no schema registered for {} version {}",
                    envelope.record_type, envelope.schema_version
                ),
            )));
        };
        let today = CivilDate::from_unix_millis_cst(datarun_store::now_millis());
        let validated = match schema.validate(&record.payload, today) {
            Ok(validated) => validated,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if validated.subject != envelope.subject {
            return Ok(Err(Rejection::at(
                RejectReason::SubjectMismatch,
                datarun_kafka::wire::SUBJECT,
                "the envelope's subject is not the payload's subject",
            )));
        }
        let input = envelope.signing_input(&record.payload);
        Ok(Ok(StoredRecord {
            record_id: envelope.record_id.to_string(),
            certificate_id: validated.certificate_id.to_string(),
            record_type: envelope.record_type.to_string(),
            schema_version: envelope.schema_version,
            department: envelope.department.to_string(),
            subject: validated.subject,
            issued_at: envelope.issued_at_millis,
            signing_key_id: envelope.signing_key_id.to_string(),
            content_digest: hex::encode(ring::digest::digest(&ring::digest::SHA256, &input)),
            signature_hex: hex::encode(&record.signature),
            fields: validated.fields,
            guardians: validated
                .guardians
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
        }))
    }

    /// Handles one message completely. An `Err` means nothing durable happened and the
    /// message must be retried; it must not be acknowledged.
    pub async fn handle(&self, incoming: &IncomingRecord) -> Result<Handled> {
        let verdict = match &incoming.record {
            Err(rejection) => Err(rejection.clone()),
            Ok(record) => match self.verify(record).await? {
                Err(rejection) => Err(rejection),
                Ok(row) => match self.store.store_record(&row).await? {
                    StoreOutcome::Stored => Ok(Handled::Stored),
                    StoreOutcome::Duplicate => Ok(Handled::Duplicate),
                    StoreOutcome::Replayed => Err(Rejection::at(
                        RejectReason::Replayed,
                        datarun_kafka::wire::RECORD_ID,
                        "this record id was already used for a different record",
                    )),
                    StoreOutcome::Stale => Err(Rejection::at(
                        RejectReason::StaleVersion,
                        datarun_kafka::wire::ISSUED_AT,
                        "a version of this certificate issued at the same time or later is already stored",
                    )),
                    StoreOutcome::ForeignCertificate => Err(Rejection::at(
                        RejectReason::PublisherNotAllowed,
                        "certificate_id",
                        "the certificate belongs to another department",
                    )),
                },
            },
        };
        match verdict {
            Ok(handled) => {
                let counter = if handled == Handled::Stored {
                    &self.stats.stored
                } else {
                    &self.stats.duplicates
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(handled)
            }
            Err(rejection) => {
                self.reject(incoming, &rejection).await?;
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Ok(Handled::Rejected(rejection))
            }
        }
    }

    async fn reject(&self, incoming: &IncomingRecord, rejection: &Rejection) -> Result<()> {
        let record_id = incoming
            .record
            .as_ref()
            .ok()
            .map(|r| r.envelope.record_id.to_string());
        let department = incoming
            .record
            .as_ref()
            .ok()
            .map(|r| r.envelope.department.to_string());
        tracing::warn!(
            record_id = record_id.as_deref().unwrap_or("-"),
            topic = %incoming.topic,
            partition = incoming.partition,
            offset = incoming.offset,
            reason = rejection.reason.code(),
            field = rejection.field.as_deref().unwrap_or("-"),
            "record rejected"
        );
        self.dead_letters.publish(incoming, rejection).await?;
        self.store
            .audit(NewAuditEvent {
                kind: "ingest_rejected".into(),
                actor: "broker".into(),
                department,
                outcome: "rejected".into(),
                reason: Some(rejection.reason.code().into()),
                detail: serde_json::json!({
                    "record_id": record_id,
                    "field": rejection.field,
                    "message": rejection.message,
                    "topic": incoming.topic,
                    "partition": incoming.partition,
                    "offset": incoming.offset,
                }),
                ..NewAuditEvent::default()
            })
            .await?;
        Ok(())
    }

    /// Consumes until `shutdown` resolves. A message that cannot be handled (database
    /// or broker down) is retried with backoff, never skipped.
    pub async fn run(
        self,
        consumer: IngestConsumer,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                next = consumer.next() => match next {
                    Ok(incoming) => incoming,
                    Err(error) => {
                        tracing::warn!(%error, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                let attempt = tokio::select! {
                    _ = &mut shutdown => {
                        let _ = consumer.commit_now();
                        return;
                    }
                    attempt = self.handle(&incoming) => attempt,
                };
                match attempt {
                    Ok(handled) => {
                        if let Ok(record) = &incoming.record {
                            tracing::debug!(record_id = %record.envelope.record_id, outcome = ?std::mem::discriminant(&handled), "record handled");
                        }
                        if let Err(error) = consumer.acknowledge(&incoming) {
                            tracing::warn!(%error, "storing the offset failed; the record may be redelivered");
                        }
                        break;
                    }
                    Err(error) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, topic = %incoming.topic, offset = incoming.offset, "ingest failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        if let Err(error) = consumer.commit_now() {
            tracing::warn!(%error, "final offset commit failed; uncommitted records will be redelivered");
        }
    }
}
