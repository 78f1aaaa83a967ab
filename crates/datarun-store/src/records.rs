//! Accepted records (the history of every version and the latest version of each
//! certificate) and rejected messages, written together for one ingest batch.

use crate::audit::{insert_event, lock_head, set_head, NewAuditEvent};
use crate::copy::{copy_in, CopyRows};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_integer, optional_text, text, Pool, Result,
    RowExt, Store, StoreError, WriteTransaction,
};
use datarun_domain::versions::{decide, Stored, VersionDecision};
use datarun_domain::{RejectReason, Rejection};
use std::collections::{BTreeMap, HashMap};

/// A record that passed verification and validation, ready to store.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub record_id: String,
    pub certificate_id: String,
    pub record_type: String,
    pub schema_version: u32,
    pub department: String,
    pub subject: String,
    /// When the department signed, already bounded by the hub's clock.
    pub signed_at: i64,
    pub signing_key_id: String,
    /// The record's content digest (`RecordEnvelope::content_digest`): equal digests
    /// under one record id mean the very same record.
    pub content_digest: [u8; 32],
    pub signature: Vec<u8>,
    /// The decoded fields as a JSON object, serialised by the checks (which run in
    /// parallel) rather than inside the store's transaction.
    pub fields_json: String,
    pub guardians: Vec<String>,
    /// The certificate's status as this version states it (`VALID` when its schema
    /// has no status field).
    pub status: String,
    pub superseded_by: Option<String>,
}

/// Where a message was read, and the SHA-256 of all of it (key, value and headers), so a
/// message is recognised when a batch is retried, and told apart from another message
/// at a reused position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message_digest: String,
}

/// A message the checks refused, with what its envelope claims.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    pub rejection: Rejection,
    pub record_id: Option<String>,
    pub department: Option<String>,
    pub record_type: Option<String>,
    /// True when the signature verified under a key valid at receipt: the claims are
    /// then the department's own. False: they are unverified claims.
    pub verified: bool,
    /// Set when the signature verified (even under a key revoked since): the record's
    /// content digest. A redelivery of a record stored before its key was revoked is
    /// then a duplicate, not a rejection.
    pub content_digest: Option<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    Accept(StoredRecord),
    Reject(RejectedRecord),
}

/// One consumed message and what the checks said about it.
#[derive(Debug, Clone)]
pub struct IngestItem {
    pub source: MessageSource,
    pub verdict: Verdict,
}

/// What storing one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored as its certificate's current version.
    Stored,
    /// The same record was stored before: nothing changed.
    Duplicate,
    /// Refused, recorded and audited (now or by an earlier attempt, whose decision
    /// stands); `dead_lettered` once its dead letter was published.
    Rejected {
        rejection: Rejection,
        dead_lettered: bool,
    },
}

/// Rows per multi-row statement: far below SQLite's and PostgreSQL's parameter limits.
const ROWS_PER_STATEMENT: usize = 200;

/// `n` anonymous parameters for a SQLite `IN (…)` list. Anonymous, because sqlx reads
/// each numbered parameter's name back from SQLite, which walks its list of names, so a
/// 2,400-parameter `$n` statement costs quadratic time (a fifth of all ingest CPU time
/// before this). PostgreSQL gets one array parameter instead (`= ANY($1)`).
fn parameter_list(n: usize) -> String {
    placeholders(n, 1).replace(['(', ')'], "")
}

/// `(?, ?), (?, ?)`: `rows` rows of `columns` anonymous SQLite parameters, for a
/// multi-row `VALUES` (see [`parameter_list`] for why anonymous). PostgreSQL writes a
/// batch by binary `COPY` instead (`copy`).
fn placeholders(rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * (columns * 3 + 2));
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql
}

/// A rejection recorded by an earlier attempt.
struct RecordedRejection {
    rejection: Rejection,
    dead_lettered: bool,
}

/// What a rejection is recorded with, for the rejection row and its audit event.
struct NewRejection<'a> {
    source: &'a MessageSource,
    rejected: RejectedRecord,
}

/// The envelope fields of a rejection's audit event that are the publisher's unverified word.
const UNVERIFIED_FIELDS: [&str; 7] = [
    "record_id",
    "department",
    "record_type",
    "schema_version",
    "subject",
    "signed_at",
    "key_id",
];

impl Store {
    /// Stores one ingest batch in one transaction and returns what happened to each
    /// message, in order. Accepted records join the history and the newest version of
    /// each certificate becomes current (`versions::decide`; records later in the batch
    /// see earlier ones). Rejected messages are recorded and audited once: a message
    /// already recorded by an earlier attempt keeps that decision and is not audited
    /// again. On PostgreSQL the batch's stored certificates are read `FOR UPDATE`, in
    /// id order, so hub instances deciding on versions of one certificate at once
    /// decide one after the other; for a certificate not stored yet, the upsert's guard
    /// keeps the newest version current whichever hub commits first.
    pub async fn store_batch(&self, items: &[IngestItem]) -> Result<Vec<IngestOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Two writers storing versions of the same certificates at once can deadlock on
        // PostgreSQL: a certificate first committed by a third writer after this batch
        // read its stored versions is locked by the upsert, out of id order. Or the batch
        // inserts as new a certificate (or record, or rejection) another writer has just
        // committed, and fails on its key. PostgreSQL rolls the batch back whole; it is
        // decided again from what is stored then. A key conflict is progress (what
        // conflicted is stored now, and the next try finds it), so it is retried at once,
        // up to `KEY_CONFLICT_ATTEMPTS` times; a deadlock up to `CONFLICT_ATTEMPTS`.
        let (mut deadlocks, mut key_conflicts) = (1, 0);
        loop {
            match self.store_batch_once(items).await {
                Err(error) if key_conflicts < KEY_CONFLICT_ATTEMPTS && is_key_conflict(&error) => {
                    key_conflicts += 1;
                    tracing::debug!(%error, key_conflicts, "ingest batch met a writer storing the same key; retrying");
                }
                Err(error) if deadlocks < CONFLICT_ATTEMPTS && is_transient_conflict(&error) => {
                    tracing::warn!(%error, attempt = deadlocks, "ingest batch met a conflicting writer; retrying");
                    tokio::time::sleep(conflict_backoff(deadlocks)).await;
                    deadlocks += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn store_batch_once(&self, items: &[IngestItem]) -> Result<Vec<IngestOutcome>> {
        let mut tx = self.begin_write().await?;
        let accepted: Vec<&StoredRecord> = items
            .iter()
            .filter_map(|item| match &item.verdict {
                Verdict::Accept(record) => Some(record),
                Verdict::Reject(_) => None,
            })
            .collect();
        let recorded = self.recorded_rejections(&mut tx, items).await?;
        // What is stored already, for every record id and certificate the batch names.
        let mut record_ids: Vec<&str> = accepted.iter().map(|r| r.record_id.as_str()).collect();
        record_ids.extend(items.iter().filter_map(|item| match &item.verdict {
            Verdict::Reject(rejected) if rejected.content_digest.is_some() => {
                rejected.record_id.as_deref()
            }
            _ => None,
        }));
        let certificate_ids: Vec<&str> =
            accepted.iter().map(|r| r.certificate_id.as_str()).collect();
        let (mut digests, mut current) =
            stored_versions(&mut tx, &record_ids, &certificate_ids).await?;
        // Certificates stored before this batch (SQLite inserts the first version of the
        // others without an upsert).
        let stored_certificates: std::collections::HashSet<String> =
            current.keys().cloned().collect();
        // Decide in order, so later messages in the batch see earlier ones.
        let mut outcomes = Vec::with_capacity(items.len());
        let mut to_store: Vec<&StoredRecord> = Vec::new();
        let mut newest: BTreeMap<&str, &StoredRecord> = BTreeMap::new();
        let mut new_rejections: Vec<NewRejection<'_>> = Vec::new();
        for item in items {
            let earlier = if recorded.is_empty() {
                None
            } else {
                recorded.get(&source_key(&item.source))
            };
            if let Some(earlier) = earlier {
                outcomes.push(IngestOutcome::Rejected {
                    rejection: earlier.rejection.clone(),
                    dead_lettered: earlier.dead_lettered,
                });
                continue;
            }
            let rejected = match &item.verdict {
                Verdict::Accept(record) => {
                    let stored = Stored {
                        digest_under_record_id: digests.get(&record.record_id).map(Vec::as_slice),
                        current: current
                            .get(&record.certificate_id)
                            .map(|(department, signed_at)| (department.as_str(), *signed_at)),
                    };
                    match decide(
                        stored,
                        &record.content_digest,
                        &record.department,
                        record.signed_at,
                    ) {
                        VersionDecision::Store => {
                            digests
                                .insert(record.record_id.clone(), record.content_digest.to_vec());
                            current.insert(
                                record.certificate_id.clone(),
                                (record.department.clone(), record.signed_at),
                            );
                            to_store.push(record);
                            newest.insert(&record.certificate_id, record);
                            outcomes.push(IngestOutcome::Stored);
                            continue;
                        }
                        VersionDecision::Duplicate => {
                            outcomes.push(IngestOutcome::Duplicate);
                            continue;
                        }
                        VersionDecision::Reject(rejection) => RejectedRecord {
                            rejection,
                            record_id: Some(record.record_id.clone()),
                            department: Some(record.department.clone()),
                            record_type: Some(record.record_type.clone()),
                            verified: true,
                            content_digest: Some(record.content_digest),
                        },
                    }
                }
                Verdict::Reject(rejected) => {
                    let stored_same = rejected
                        .record_id
                        .as_ref()
                        .and_then(|id| digests.get(id))
                        .zip(rejected.content_digest.as_ref())
                        .is_some_and(|(stored, claimed)| stored[..] == claimed[..]);
                    if stored_same {
                        outcomes.push(IngestOutcome::Duplicate);
                        continue;
                    }
                    rejected.clone()
                }
            };
            outcomes.push(IngestOutcome::Rejected {
                rejection: rejected.rejection.clone(),
                dead_lettered: false,
            });
            new_rejections.push(NewRejection {
                source: &item.source,
                rejected,
            });
        }
        let now = now_millis();
        let first_feed_seq = crate::feed::allocate(&mut tx, to_store.len()).await?;
        self.insert_records(
            &mut tx,
            &to_store,
            newest.into_values().collect(),
            &stored_certificates,
            first_feed_seq,
            now,
        )
        .await?;
        if !new_rejections.is_empty() {
            self.record_rejections(&mut tx, new_rejections, now).await?;
        }
        crate::faults::hit("store.before_commit");
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Rejections an earlier attempt recorded for messages of this batch.
    async fn recorded_rejections(
        &self,
        tx: &mut WriteTransaction,
        items: &[IngestItem],
    ) -> Result<HashMap<(String, i32, i64, String), RecordedRejection>> {
        let mut ranges: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        for item in items {
            let range = ranges
                .entry((item.source.topic.as_str(), item.source.partition))
                .or_insert((item.source.offset, item.source.offset));
            range.0 = range.0.min(item.source.offset);
            range.1 = range.1.max(item.source.offset);
        }
        let mut recorded = HashMap::new();
        for ((topic, partition), (first, last)) in ranges {
            let rows = on_tx!(tx, |conn| {
                let rows = sqlx::query(
                    "SELECT source_offset, message_digest, reason, field, message, dead_lettered_at
                     FROM ingest_rejections
                     WHERE source_topic = $1 AND source_partition = $2 AND source_offset BETWEEN $3 AND $4",
                )
                .bind(topic)
                .bind(i64::from(partition))
                .bind(first)
                .bind(last)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            integer(row, "source_offset")?,
                            hex::encode(row.bytes("message_digest")?),
                            text(row, "reason")?,
                            optional_text(row, "field")?,
                            text(row, "message")?,
                            optional_integer(row, "dead_lettered_at")?.is_some(),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?
            });
            for (offset, digest, code, field, message, dead_lettered) in rows {
                let reason = RejectReason::from_code(&code).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown rejection reason {code}"))
                })?;
                recorded.insert(
                    (topic.to_owned(), partition, offset, digest),
                    RecordedRejection {
                        rejection: Rejection {
                            reason,
                            field,
                            message,
                        },
                        dead_lettered,
                    },
                );
            }
        }
        Ok(recorded)
    }

    /// Writes the batch's new record versions, makes the newest of each certificate
    /// current and adds the guardians each version names. A guardian row names the
    /// version by its change-feed position and counts only while that version is
    /// current, so nothing is deleted here. Certificates and guardians are written in
    /// key order (each insert then lands next to the one before in the B-tree). SQLite:
    /// multi-row `VALUES`; PostgreSQL: a binary `COPY` per table for new rows.
    async fn insert_records(
        &self,
        tx: &mut WriteTransaction,
        records: &[&StoredRecord],
        latest: Vec<&StoredRecord>,
        stored_certificates: &std::collections::HashSet<String>,
        first_feed_seq: i64,
        now: i64,
    ) -> Result<()> {
        let mut guardians: Vec<(&str, i64)> = records
            .iter()
            .zip(first_feed_seq..)
            .flat_map(|(r, feed_seq)| r.guardians.iter().map(move |g| (g.as_str(), feed_seq)))
            .collect();
        guardians.sort_unstable();
        guardians.dedup();
        match tx {
            WriteTransaction::Sqlite { transaction, .. } => {
                // A certificate's first version is a plain insert (see
                // `insert_records_sqlite`), the others an upsert.
                let (replacing, first): (Vec<&StoredRecord>, Vec<&StoredRecord>) = latest
                    .into_iter()
                    .partition(|record| stored_certificates.contains(&record.certificate_id));
                insert_records_sqlite(
                    transaction,
                    records,
                    &first,
                    &replacing,
                    &guardians,
                    first_feed_seq,
                    now,
                )
                .await
            }
            WriteTransaction::Postgres(transaction) => {
                // As on SQLite, a certificate's first version is a plain insert (here a
                // `COPY`): a speculative insertion (`ON CONFLICT`) costs the server more
                // for each row. Another writer storing the same certificate's first version at
                // the same time makes this insert fail on the primary key; the batch
                // rolls back and runs again (`store_batch`), and then finds the
                // certificate stored and upserts it.
                let (replacing, first): (Vec<&StoredRecord>, Vec<&StoredRecord>) = latest
                    .into_iter()
                    .partition(|record| stored_certificates.contains(&record.certificate_id));
                insert_records_postgres(
                    transaction,
                    records,
                    &first,
                    &replacing,
                    &guardians,
                    first_feed_seq,
                    now,
                )
                .await
            }
        }
    }

    /// Records and audits new rejections, in order, at the end of the chain.
    async fn record_rejections(
        &self,
        tx: &mut WriteTransaction,
        rejections: Vec<NewRejection<'_>>,
        now: i64,
    ) -> Result<()> {
        let (mut seq, mut hash) = lock_head(tx).await?;
        for NewRejection { source, rejected } in rejections {
            let rejection = &rejected.rejection;
            let event = NewAuditEvent {
                kind: "ingest_rejected".into(),
                actor: "broker".into(),
                // Only a verified department is attributed; a claim stays in the detail.
                department: rejected.department.clone().filter(|_| rejected.verified),
                outcome: "rejected".into(),
                reason: Some(rejection.reason.code().into()),
                detail: serde_json::json!({
                    "record_id": rejected.record_id,
                    "claimed_department": rejected.department,
                    "record_type": rejected.record_type,
                    "envelope_verified": rejected.verified,
                    "unverified_fields": if rejected.verified { &[][..] } else { &UNVERIFIED_FIELDS[..] },
                    "field": rejection.field,
                    "message": rejection.message,
                    "topic": source.topic,
                    "partition": source.partition,
                    "offset": source.offset,
                    "message_sha256": source.message_digest,
                }),
                ..NewAuditEvent::default()
            };
            let audited = insert_event(tx, seq + 1, &hash, event).await?;
            (seq, hash) = (audited.seq, audited.hash);
            let message_digest = digest_bytes(&source.message_digest)?;
            on_tx!(tx, |conn| {
                sqlx::query(
                    "INSERT INTO ingest_rejections (source_topic, source_partition, source_offset, message_digest,
                         reason, field, message, record_id, department_id, record_type, verified, rejected_at, audit_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&source.topic)
                .bind(i64::from(source.partition))
                .bind(source.offset)
                .bind(&message_digest[..])
                .bind(rejection.reason.code())
                .bind(&rejection.field)
                .bind(&rejection.message)
                .bind(&rejected.record_id)
                .bind(&rejected.department)
                .bind(&rejected.record_type)
                .bind(rejected.verified)
                .bind(now)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
            });
        }
        set_head(tx, seq, &hash).await
    }

    /// Marks rejected messages as dead-lettered, in `form` (`intact` or `digested`).
    pub async fn mark_dead_lettered(&self, sources: &[(&MessageSource, &str)]) -> Result<()> {
        if sources.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let now = now_millis();
        for (source, form) in sources {
            let message_digest = digest_bytes(&source.message_digest)?;
            on_tx!(&mut tx, |conn| {
                sqlx::query(
                    "UPDATE ingest_rejections SET dead_lettered_at = $1, dead_letter_form = $2
                     WHERE source_topic = $3 AND source_partition = $4 AND source_offset = $5 AND message_digest = $6",
                )
                .bind(now)
                .bind(*form)
                .bind(&source.topic)
                .bind(i64::from(source.partition))
                .bind(source.offset)
                .bind(&message_digest[..])
                .execute(&mut *conn)
                .await?;
            });
        }
        tx.commit().await
    }

    /// How many record versions and current certificates are stored.
    pub async fn record_counts(&self) -> Result<(i64, i64)> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM records) AS records, (SELECT COUNT(*) FROM certificates) AS certificates",
            )
            .fetch_one(pool)
            .await?;
            Ok((integer(&row, "records")?, integer(&row, "certificates")?))
        })
    }

    /// How many current certificates each record type has.
    /// Stored records per signing key id.
    pub async fn records_per_key(&self) -> Result<BTreeMap<String, i64>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT signing_key_id, COUNT(*) AS n FROM records GROUP BY signing_key_id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((text(row, "signing_key_id")?, integer(row, "n")?)))
                .collect()
        })
    }

    pub async fn certificate_counts(&self) -> Result<BTreeMap<String, i64>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT record_type, COUNT(*) AS n FROM certificates GROUP BY record_type",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((text(row, "record_type")?, integer(row, "n")?)))
                .collect()
        })
    }

    /// Which of `record_ids` are stored (a connector's or an operator's reconciliation).
    pub async fn stored_record_ids(
        &self,
        record_ids: &[String],
    ) -> Result<std::collections::BTreeSet<String>> {
        let mut stored = std::collections::BTreeSet::new();
        match &self.pool {
            crate::Pool::Sqlite(pool) => {
                for chunk in record_ids.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "SELECT record_id FROM records WHERE record_id IN ({})",
                        parameter_list(chunk.len())
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    for row in query.fetch_all(pool).await? {
                        stored.insert(text(&row, "record_id")?);
                    }
                }
            }
            crate::Pool::Postgres(pool) => {
                for chunk in record_ids.chunks(10_000) {
                    let rows =
                        sqlx::query("SELECT record_id FROM records WHERE record_id = ANY($1)")
                            .bind(chunk)
                            .fetch_all(pool)
                            .await?;
                    for row in rows {
                        stored.insert(text(&row, "record_id")?);
                    }
                }
            }
        }
        Ok(stored)
    }

    /// The current version of a certificate: its record id and signing time.
    pub async fn current_version(&self, certificate_id: &str) -> Result<Option<(String, i64)>> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT current_record_id, signed_at FROM certificates WHERE certificate_id = $1",
            )
            .bind(certificate_id)
            .fetch_optional(pool)
            .await?;
            row.map(|row| {
                Ok((
                    text(&row, "current_record_id")?,
                    integer(&row, "signed_at")?,
                ))
            })
            .transpose()
        })
    }

    /// How many messages were rejected, and how many of those are dead-lettered.
    pub async fn rejection_counts(&self) -> Result<(i64, i64)> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, COUNT(dead_lettered_at) AS lettered FROM ingest_rejections",
            )
            .fetch_one(pool)
            .await?;
            Ok((integer(&row, "n")?, integer(&row, "lettered")?))
        })
    }

    /// Rows that point at nothing: certificates whose current record is not stored, and
    /// guardians of versions that are not stored. Always 0; these
    /// references are not foreign keys (PostgreSQL migration 0003 and migration 0015
    /// say why).
    pub async fn dangling_references(&self) -> Result<i64> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM certificates c
                         WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.record_id = c.current_record_id))
                      + (SELECT COUNT(*) FROM certificate_guardians g
                         WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.feed_seq = g.feed_seq))
                      AS n",
            )
            .fetch_one(pool)
            .await?;
            integer(&row, "n")
        })
    }

    /// True when `guardian` is named as a guardian on a stored certificate of `subject`.
    pub async fn is_guardian_of(&self, guardian: &str, subject: &str) -> Result<bool> {
        let sql = |column: &str| {
            format!(
                "SELECT COUNT(*) AS n FROM certificate_guardians g
                 JOIN records r ON r.feed_seq = g.feed_seq
                 JOIN certificates c ON c.certificate_id = r.certificate_id AND c.current_record_id = r.record_id
                 WHERE g.{column} = $1 AND r.subject_id = $2"
            )
        };
        // The rows differ in type by engine: each arm counts its own.
        let named = match &self.pool {
            Pool::Sqlite(pool) => {
                let Some(number) = guardian_number(guardian) else {
                    return Ok(false);
                };
                let row = sqlx::query(&sql("guardian_number"))
                    .bind(number)
                    .bind(subject)
                    .fetch_one(pool)
                    .await?;
                integer(&row, "n")?
            }
            Pool::Postgres(pool) => {
                let row = sqlx::query(&sql("guardian_id"))
                    .bind(guardian)
                    .bind(subject)
                    .fetch_one(pool)
                    .await?;
                integer(&row, "n")?
            }
        };
        Ok(named > 0)
    }

    /// Subjects whose certificates name `guardian` as guardian.
    pub async fn wards_of(&self, guardian: &str) -> Result<Vec<String>> {
        let sql = |column: &str| {
            format!(
                "SELECT DISTINCT r.subject_id FROM certificate_guardians g
                 JOIN records r ON r.feed_seq = g.feed_seq
                 JOIN certificates c ON c.certificate_id = r.certificate_id AND c.current_record_id = r.record_id
                 WHERE g.{column} = $1"
            )
        };
        match &self.pool {
            Pool::Sqlite(pool) => {
                let Some(number) = guardian_number(guardian) else {
                    return Ok(Vec::new());
                };
                let rows = sqlx::query(&sql("guardian_number"))
                    .bind(number)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(|row| text(row, "subject_id")).collect()
            }
            Pool::Postgres(pool) => {
                let rows = sqlx::query(&sql("guardian_id"))
                    .bind(guardian)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(|row| text(row, "subject_id")).collect()
            }
        }
    }
}

/// A resident id as the number SQLite keys guardians by (migration 0019): its 17
/// digits times 11, plus its check character's value (a digit, or 10 for `X`). One
/// to one on resident ids, and below 2^61. `None` for text that is not 17 digits and
/// a check character: such a guardian is named on no stored certificate (the ingest
/// stores only resident ids as guardians).
pub(crate) fn guardian_number(id: &str) -> Option<i64> {
    let bytes = id.as_bytes();
    let (digits, check) = match bytes {
        [digits @ .., check] if digits.len() == 17 => (digits, *check),
        _ => return None,
    };
    let mut number: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        number = number * 10 + i64::from(digit - b'0');
    }
    let check = match check {
        b'0'..=b'9' => i64::from(check - b'0'),
        b'X' => 10,
        _ => return None,
    };
    Some(number * 11 + check)
}

/// How many times a batch is tried when PostgreSQL rolls it back for a conflict.
const CONFLICT_ATTEMPTS: u32 = 6;

/// How many times a batch is run again at once after a key conflict: each writer that
/// committed one of its keys first costs one, and several hubs rarely do within one
/// batch. Past it, the ingest's own retry takes over, with backoff.
const KEY_CONFLICT_ATTEMPTS: u32 = 16;

/// A growing, jittered pause before the next try, so the writers that met do not meet
/// again in step.
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.subsec_nanos() % 20);
    std::time::Duration::from_millis(u64::from(attempt * 10 + jitter))
}

/// PostgreSQL's deadlock (40P01) and serialization failure (40001): the transaction was
/// rolled back whole and can be run again.
fn is_transient_conflict(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Database(error)) => {
            matches!(error.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

/// PostgreSQL's unique violation (23505): another writer committed a row this batch
/// inserts as new (a certificate's first version, the same record or rejection).
fn is_key_conflict(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Database(error)) => {
            error.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// A message digest as stored: 32 bytes from the hex of `MessageSource`.
fn digest_bytes(digest_hex: &str) -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digest_hex, &mut bytes)
        .map_err(|_| StoreError::Invalid("a message digest is 64 hex digits".into()))?;
    Ok(bytes)
}

/// Content digests stored under `record_ids`, and the current version (department,
/// signing time) of `certificate_ids`, read inside the batch's transaction.
async fn stored_versions(
    tx: &mut WriteTransaction,
    record_ids: &[&str],
    certificate_ids: &[&str],
) -> Result<(HashMap<String, Vec<u8>>, HashMap<String, (String, i64)>)> {
    let mut digests = HashMap::with_capacity(record_ids.len());
    let mut current = HashMap::with_capacity(certificate_ids.len());
    match tx {
        WriteTransaction::Sqlite { transaction, .. } => {
            for chunk in record_ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT record_id, content_digest FROM records WHERE record_id IN ({})",
                    parameter_list(chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for record_id in chunk {
                    query = query.bind(*record_id);
                }
                for row in query.fetch_all(&mut **transaction).await? {
                    digests.insert(text(&row, "record_id")?, row.bytes("content_digest")?);
                }
            }
            for chunk in certificate_ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT certificate_id, department_id, signed_at FROM certificates WHERE certificate_id IN ({})",
                    parameter_list(chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for certificate_id in chunk {
                    query = query.bind(*certificate_id);
                }
                for row in query.fetch_all(&mut **transaction).await? {
                    current.insert(
                        text(&row, "certificate_id")?,
                        (text(&row, "department_id")?, integer(&row, "signed_at")?),
                    );
                }
            }
        }
        WriteTransaction::Postgres(transaction) => {
            let rows = sqlx::query(
                "SELECT record_id, content_digest FROM records WHERE record_id = ANY($1)",
            )
            .bind(record_ids)
            .fetch_all(&mut **transaction)
            .await?;
            for row in rows {
                digests.insert(text(&row, "record_id")?, row.bytes("content_digest")?);
            }
            let rows = sqlx::query(
                "SELECT certificate_id, department_id, signed_at FROM certificates WHERE certificate_id = ANY($1)
                 ORDER BY certificate_id FOR UPDATE",
            )
            .bind(certificate_ids)
            .fetch_all(&mut **transaction)
            .await?;
            for row in rows {
                current.insert(
                    text(&row, "certificate_id")?,
                    (text(&row, "department_id")?, integer(&row, "signed_at")?),
                );
            }
        }
    }
    Ok((digests, current))
}

/// SQLite: multi-row statements are `INSERT OR FAIL`. With the default (`ABORT`), a
/// multi-row statement inside a transaction runs under a statement journal, so that it
/// alone can be undone: SQLite then checks every page the statement changes, and copies
/// it the first time (about 2 % of ingest's CPU, most of it the certificate upsert).
/// Nothing here needs one statement undone alone: any error fails the batch, and its
/// transaction rolls back whole.
async fn insert_records_sqlite(
    conn: &mut sqlx::SqliteConnection,
    records: &[&StoredRecord],
    first: &[&StoredRecord],
    replacing: &[&StoredRecord],
    guardians: &[(&str, i64)],
    first_feed_seq: i64,
    now: i64,
) -> Result<()> {
    let mut feed_seq = first_feed_seq;
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT OR FAIL INTO records (record_id, certificate_id, record_type, schema_version, department_id, subject_id,
                 signed_at, signing_key_id, content_digest, signature, fields, stored_at, feed_seq)
             VALUES {}",
            placeholders(chunk.len(), 13)
        );
        let mut query = sqlx::query(&sql);
        for record in chunk {
            let seq = feed_seq;
            feed_seq += 1;
            query = query
                .bind(&record.record_id)
                .bind(&record.certificate_id)
                .bind(&record.record_type)
                .bind(i64::from(record.schema_version))
                .bind(&record.department)
                .bind(&record.subject)
                .bind(record.signed_at)
                .bind(&record.signing_key_id)
                .bind(&record.content_digest[..])
                .bind(&record.signature)
                .bind(&record.fields_json)
                .bind(now)
                .bind(seq);
        }
        query.execute(&mut *conn).await?;
    }
    // A plain insert for a certificate's first version: the upsert's update clause
    // aborts on a conflict, and so needs a statement journal (see above).
    for chunk in first.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT OR FAIL INTO certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
                 signed_at, updated_at, status, superseded_by)
             VALUES {}",
            placeholders(chunk.len(), 9)
        );
        bind_certificates(sqlx::query(&sql), chunk, now)
            .execute(&mut *conn)
            .await?;
    }
    for chunk in replacing.chunks(ROWS_PER_STATEMENT) {
        // The WHERE guard keeps the newest version current, as on PostgreSQL (here the
        // writer lock, held since the batch read the stored versions, ensures it too).
        let sql = format!(
            "INSERT OR FAIL INTO certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
                 signed_at, updated_at, status, superseded_by)
             VALUES {}
             ON CONFLICT (certificate_id) DO UPDATE SET
                 record_type = excluded.record_type, subject_id = excluded.subject_id,
                 current_record_id = excluded.current_record_id, signed_at = excluded.signed_at,
                 updated_at = excluded.updated_at, status = excluded.status,
                 superseded_by = excluded.superseded_by
             WHERE certificates.signed_at < excluded.signed_at",
            placeholders(chunk.len(), 9)
        );
        bind_certificates(sqlx::query(&sql), chunk, now)
            .execute(&mut *conn)
            .await?;
    }
    // By number (`guardian_number`), in key order.
    let mut numbers = guardians
        .iter()
        .map(|(guardian, feed_seq)| {
            guardian_number(guardian)
                .map(|number| (number, *feed_seq))
                .ok_or_else(|| StoreError::Invalid("a guardian is not a resident id".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    numbers.sort_unstable();
    for chunk in numbers.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT OR FAIL INTO certificate_guardians (guardian_number, feed_seq) VALUES {}",
            placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for (number, feed_seq) in chunk {
            query = query.bind(*number).bind(*feed_seq);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Binds the nine certificate columns of each of `records`, in the order of
/// `insert_records_sqlite`'s statements.
fn bind_certificates<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    records: &[&'q StoredRecord],
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for record in records {
        query = query
            .bind(&record.certificate_id)
            .bind(&record.record_type)
            .bind(&record.department)
            .bind(&record.subject)
            .bind(&record.record_id)
            .bind(record.signed_at)
            .bind(now)
            .bind(&record.status)
            .bind(&record.superseded_by);
    }
    query
}

/// PostgreSQL: new rows by binary `COPY` (see `copy`): the batch's records, its
/// certificates' first versions and their guardians. Replacing a stored certificate's
/// version is an upsert from `UNNEST` arrays, under its guard.
async fn insert_records_postgres(
    conn: &mut sqlx::PgConnection,
    records: &[&StoredRecord],
    first: &[&StoredRecord],
    replacing: &[&StoredRecord],
    guardians: &[(&str, i64)],
    first_feed_seq: i64,
    now: i64,
) -> Result<()> {
    if !records.is_empty() {
        let bytes: usize = records
            .iter()
            .map(|r| 240 + r.fields_json.len() + r.signature.len())
            .sum();
        let mut rows = CopyRows::new(13, bytes);
        for (record, feed_seq) in records.iter().zip(first_feed_seq..) {
            rows.row()
                .text(&record.record_id)?
                .text(&record.certificate_id)?
                .text(&record.record_type)?
                .int8(i64::from(record.schema_version))
                .text(&record.department)?
                .text(&record.subject)?
                .int8(record.signed_at)
                .text(&record.signing_key_id)?
                .bytes(&record.content_digest)?
                .bytes(&record.signature)?
                .json(&record.fields_json)?
                .int8(now)
                .int8(feed_seq);
        }
        copy_in(
            conn,
            "COPY records (record_id, certificate_id, record_type, schema_version, department_id, subject_id,
                 signed_at, signing_key_id, content_digest, signature, fields, stored_at, feed_seq)
             FROM STDIN (FORMAT binary)",
            rows,
        )
        .await?;
    }
    // A certificate's first version: a plain insert.
    if !first.is_empty() {
        let mut rows = CopyRows::new(9, first.len() * 200);
        for record in first {
            rows.row()
                .text(&record.certificate_id)?
                .text(&record.record_type)?
                .text(&record.department)?
                .text(&record.subject)?
                .text(&record.record_id)?
                .int8(record.signed_at)
                .int8(now)
                .text(&record.status)?
                .optional_text(record.superseded_by.as_deref())?;
        }
        copy_in(
            conn,
            "COPY certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
                 signed_at, updated_at, status, superseded_by)
             FROM STDIN (FORMAT binary)",
            rows,
        )
        .await?;
    }
    if !replacing.is_empty() {
        // The WHERE guard keeps the newest version current even if a writer that did
        // not take the certificate's lock got here first.
        sqlx::query(
            "INSERT INTO certificates (certificate_id, record_type, department_id, subject_id,
                 current_record_id, signed_at, updated_at, status, superseded_by)
             SELECT certificate_id, record_type, department_id, subject_id, current_record_id, signed_at, $7,
                 status, superseded_by
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $8::text[], $9::text[])
                 AS u(certificate_id, record_type, department_id, subject_id, current_record_id, signed_at,
                 status, superseded_by)
             ON CONFLICT (certificate_id) DO UPDATE SET
                 record_type = excluded.record_type, subject_id = excluded.subject_id,
                 current_record_id = excluded.current_record_id, signed_at = excluded.signed_at,
                 updated_at = excluded.updated_at, status = excluded.status,
                 superseded_by = excluded.superseded_by
             WHERE certificates.signed_at < excluded.signed_at",
        )
        .bind(column(replacing, |r| r.certificate_id.as_str()))
        .bind(column(replacing, |r| r.record_type.as_str()))
        .bind(column(replacing, |r| r.department.as_str()))
        .bind(column(replacing, |r| r.subject.as_str()))
        .bind(column(replacing, |r| r.record_id.as_str()))
        .bind(replacing.iter().map(|r| r.signed_at).collect::<Vec<_>>())
        .bind(now)
        .bind(column(replacing, |r| r.status.as_str()))
        .bind(
            replacing
                .iter()
                .map(|r| r.superseded_by.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    if !guardians.is_empty() {
        let mut rows = CopyRows::new(2, guardians.len() * 40);
        for (guardian, feed_seq) in guardians {
            rows.row().text(guardian)?.int8(*feed_seq);
        }
        copy_in(
            conn,
            "COPY certificate_guardians (guardian_id, feed_seq) FROM STDIN (FORMAT binary)",
            rows,
        )
        .await?;
    }
    Ok(())
}

/// PostgreSQL: one field of each of `records`, as the array bound for its column.
fn column<'a, T: ?Sized + 'a>(
    records: &[&'a StoredRecord],
    field: impl Fn(&'a StoredRecord) -> &'a T,
) -> Vec<&'a T> {
    records.iter().map(|r| field(r)).collect()
}

fn source_key(source: &MessageSource) -> (String, i32, i64, String) {
    (
        source.topic.clone(),
        source.partition,
        source.offset,
        source.message_digest.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::{guardian_number, parameter_list, placeholders};

    #[test]
    fn sqlite_placeholders_are_anonymous() {
        assert_eq!(placeholders(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(parameter_list(3), "?, ?, ?");
    }

    #[test]
    fn guardian_numbers_are_one_to_one_on_resident_ids() {
        assert_eq!(
            guardian_number("440104198503125841"),
            Some(44_010_419_850_312_584 * 11 + 1)
        );
        // The check character is part of the number (X is 10): ids that differ only
        // there do not meet, nor does X meet the next body's 0.
        assert_eq!(
            guardian_number("44010419850312584X"),
            Some(44_010_419_850_312_584 * 11 + 10)
        );
        assert_ne!(
            guardian_number("440104198503125840"),
            guardian_number("440104198503125841")
        );
        assert!(guardian_number("44010419850312584X") < guardian_number("440104198503125850"));
        assert_eq!(
            guardian_number("99999999999999999X"),
            Some(99_999_999_999_999_999 * 11 + 10)
        );
        for not_an_id in [
            "",
            "44010419850312584",
            "4401041985031258411",
            "44010419850312584x",
            "4401041985031258a1",
            "44010419850312584\u{ff11}",
        ] {
            assert_eq!(guardian_number(not_an_id), None, "{not_an_id:?}");
        }
    }
}
