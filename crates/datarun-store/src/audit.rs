//! The audit chain in SQL: append inside the caller's transaction, query, verify.

use crate::{
    integer, now_millis, on_pool, on_tx, optional_text, text, Result, RowExt, Store,
    WriteTransaction,
};
use datarun_domain::audit::{ChainBreak, ChainVerifier};
use datarun_domain::AuditEvent;

/// An event before it has a place in the chain.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub kind: String,
    pub actor: String,
    pub department: Option<String>,
    /// Already a pseudonym (keyed hash), never a raw identifier.
    pub subject_ref: Option<String>,
    pub consent_id: Option<String>,
    pub purpose: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// What an auditor may filter on; all present filters must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject_ref: Option<String>,
    pub actor: Option<String>,
    pub department: Option<String>,
    pub consent_id: Option<String>,
    pub purpose: Option<String>,
    pub kind: Option<String>,
    pub from_millis: Option<i64>,
    pub to_millis: Option<i64>,
    /// Only events with a larger sequence number (for paging).
    pub after_seq: Option<i64>,
    /// Only events with a smaller sequence number (for paging back from the newest).
    pub before_seq: Option<i64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    pub limit: i64,
}

/// Reserves the next place in the chain. Must be the first statement of its transaction.
pub(crate) async fn reserve(tx: &mut WriteTransaction) -> Result<(i64, String)> {
    on_tx!(tx, |conn| {
        let row =
            sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
                .fetch_one(&mut *conn)
                .await?;
        Ok((integer(&row, "seq")?, text(&row, "hash")?))
    })
}

/// Locks the chain head for a run of appends and returns it as (seq, hash). Must be the
/// first statement of its transaction; finish with [`set_head`].
pub(crate) async fn lock_head(tx: &mut WriteTransaction) -> Result<(i64, String)> {
    on_tx!(tx, |conn| {
        let row = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *conn)
            .await?;
        Ok((integer(&row, "seq")?, text(&row, "hash")?))
    })
}

/// Moves the chain head to the last appended event.
pub(crate) async fn set_head(tx: &mut WriteTransaction, seq: i64, hash: &str) -> Result<()> {
    on_tx!(tx, |conn| {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(hash)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Appends `event` at the place `reserve` returned.
pub(crate) async fn append(
    tx: &mut WriteTransaction,
    place: (i64, String),
    event: NewAuditEvent,
) -> Result<AuditEvent> {
    let (seq, prev_hash) = place;
    let event = insert_event(tx, seq, &prev_hash, event).await?;
    set_head(tx, event.seq, &event.hash).await?;
    Ok(event)
}

/// `event` as number `seq` after `prev_hash`, hashed, not yet written.
pub(crate) fn chained(event: NewAuditEvent, seq: i64, prev_hash: &str) -> AuditEvent {
    AuditEvent {
        seq,
        occurred_at_millis: now_millis(),
        kind: event.kind,
        actor: event.actor,
        department: event.department,
        subject_ref: event.subject_ref,
        consent_id: event.consent_id,
        purpose: event.purpose,
        outcome: event.outcome,
        reason: event.reason,
        detail: event.detail.to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    }
    .chain_after(seq, prev_hash)
}

/// Writes already chained events (`chained`), in one statement on PostgreSQL, without
/// moving the head.
pub(crate) async fn insert_chained(tx: &mut WriteTransaction, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    match tx {
        WriteTransaction::Postgres(transaction) => {
            let column =
                |f: fn(&AuditEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
            sqlx::query(
                "INSERT INTO audit_events (seq, occurred_at, kind, actor, department_id, subject_ref, consent_id,
                     purpose_code, outcome, reason, detail_json, prev_hash, hash)
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])",
            )
            .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.occurred_at_millis).collect::<Vec<_>>())
            .bind(column(|e| Some(e.kind.clone())))
            .bind(column(|e| Some(e.actor.clone())))
            .bind(column(|e| e.department.clone()))
            .bind(column(|e| e.subject_ref.clone()))
            .bind(column(|e| e.consent_id.clone()))
            .bind(column(|e| e.purpose.clone()))
            .bind(column(|e| Some(e.outcome.clone())))
            .bind(column(|e| e.reason.clone()))
            .bind(column(|e| Some(e.detail.clone())))
            .bind(column(|e| Some(e.prev_hash.clone())))
            .bind(column(|e| Some(e.hash.clone())))
            .execute(&mut **transaction)
            .await?;
        }
        WriteTransaction::Sqlite { transaction, .. } => {
            for event in events {
                write_event(transaction, event).await?;
            }
        }
    }
    Ok(())
}

async fn write_event(conn: &mut sqlx::SqliteConnection, event: &AuditEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (seq, occurred_at, kind, actor, department_id, subject_ref, consent_id,
             purpose_code, outcome, reason, detail_json, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(event.seq)
    .bind(event.occurred_at_millis)
    .bind(&event.kind)
    .bind(&event.actor)
    .bind(&event.department)
    .bind(&event.subject_ref)
    .bind(&event.consent_id)
    .bind(&event.purpose)
    .bind(&event.outcome)
    .bind(&event.reason)
    .bind(&event.detail)
    .bind(&event.prev_hash)
    .bind(&event.hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `event` as number `seq` after `prev_hash`, without moving the head.
pub(crate) async fn insert_event(
    tx: &mut WriteTransaction,
    seq: i64,
    prev_hash: &str,
    event: NewAuditEvent,
) -> Result<AuditEvent> {
    let event = AuditEvent {
        seq,
        occurred_at_millis: now_millis(),
        kind: event.kind,
        actor: event.actor,
        department: event.department,
        subject_ref: event.subject_ref,
        consent_id: event.consent_id,
        purpose: event.purpose,
        outcome: event.outcome,
        reason: event.reason,
        detail: event.detail.to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    }
    .chain_after(seq, prev_hash);
    on_tx!(tx, |conn| {
        sqlx::query(
            "INSERT INTO audit_events (seq, occurred_at, kind, actor, department_id, subject_ref, consent_id,
                 purpose_code, outcome, reason, detail_json, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(event.seq)
        .bind(event.occurred_at_millis)
        .bind(&event.kind)
        .bind(&event.actor)
        .bind(&event.department)
        .bind(&event.subject_ref)
        .bind(&event.consent_id)
        .bind(&event.purpose)
        .bind(&event.outcome)
        .bind(&event.reason)
        .bind(&event.detail)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(&mut *conn)
        .await?;
    });
    Ok(event)
}

fn event_from_row(row: &impl RowExt) -> Result<AuditEvent> {
    Ok(AuditEvent {
        seq: integer(row, "seq")?,
        occurred_at_millis: integer(row, "occurred_at")?,
        kind: text(row, "kind")?,
        actor: text(row, "actor")?,
        department: optional_text(row, "department_id")?,
        subject_ref: optional_text(row, "subject_ref")?,
        consent_id: optional_text(row, "consent_id")?,
        purpose: optional_text(row, "purpose_code")?,
        outcome: text(row, "outcome")?,
        reason: optional_text(row, "reason")?,
        detail: text(row, "detail_json")?,
        prev_hash: text(row, "prev_hash")?,
        hash: text(row, "hash")?,
    })
}

const EVENT_COLUMNS: &str = "seq, occurred_at, kind, actor, department_id, subject_ref, consent_id, purpose_code, outcome, reason, detail_json, prev_hash, hash";

impl Store {
    /// Appends one event in a transaction of its own.
    pub async fn audit(&self, event: NewAuditEvent) -> Result<AuditEvent> {
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let event = append(&mut tx, place, event).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Appends several events in one transaction, in order.
    pub async fn audit_all(&self, events: Vec<NewAuditEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for event in events {
            let place = reserve(&mut tx).await?;
            append(&mut tx, place, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events matching `filter`, oldest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut texts: Vec<&str> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        // Texts are bound first ($1..), then numbers, so placeholders are numbered in that order.
        let text_filters = [
            ("subject_ref", &filter.subject_ref),
            ("actor", &filter.actor),
            ("department_id", &filter.department),
            ("consent_id", &filter.consent_id),
            ("purpose_code", &filter.purpose),
            ("kind", &filter.kind),
        ];
        for (column, value) in text_filters {
            if let Some(value) = value {
                texts.push(value);
                sql.push_str(&format!(" AND {column} = ${}", texts.len()));
            }
        }
        let number_filters = [
            ("occurred_at >=", filter.from_millis),
            ("occurred_at <", filter.to_millis),
            ("seq >", filter.after_seq),
            ("seq <", filter.before_seq),
        ];
        for (condition, value) in number_filters {
            if let Some(value) = value {
                numbers.push(value);
                sql.push_str(&format!(
                    " AND {condition} ${}",
                    texts.len() + numbers.len()
                ));
            }
        }
        numbers.push(filter.limit.clamp(1, 1000));
        sql.push_str(&format!(
            " ORDER BY seq{} LIMIT ${}",
            if filter.newest_first { " DESC" } else { "" },
            texts.len() + numbers.len()
        ));
        on_pool!(self, |pool| {
            let mut query = sqlx::query(&sql);
            for value in &texts {
                query = query.bind(*value);
            }
            for value in &numbers {
                query = query.bind(*value);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// Walks the whole chain in batches; returns the number of intact events or the first break.
    pub async fn verify_audit_chain(&self) -> Result<Result<i64, ChainBreak>> {
        let (head_seq, head_hash) = on_pool!(self, |pool| {
            let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(pool)
                .await?;
            (integer(&head, "seq")?, text(&head, "hash")?)
        });
        let mut verifier = ChainVerifier::default();
        let mut after = 0i64;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT 5000"
        );
        loop {
            let events = on_pool!(self, |pool| {
                let rows = sqlx::query(&sql).bind(after).fetch_all(pool).await?;
                rows.iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>>>()?
            });
            if events.is_empty() {
                break;
            }
            for event in &events {
                if let Err(chain_break) = verifier.check(event) {
                    return Ok(Err(chain_break));
                }
                after = event.seq;
            }
        }
        Ok(verifier.finish(head_seq, &head_hash))
    }
}
