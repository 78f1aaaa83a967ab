//! Instant proofs (秒批) in the database: made from the subject's current certificates,
//! kept with their own identifier, audited as `proof_issued` (refusals too) and, when a
//! caseworker reads one back, `proof_read`.

use crate::audit::{append, reserve, NewAuditEvent};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_text, random_id, text, Actor, Result, RowExt,
    Store, StoreError,
};
use datarun_domain::date::CivilDate;
use datarun_domain::proof::{prove, ProofKind, ProofSource, PROOF_PERIOD_MAX_DAYS};
use datarun_domain::Role;
use serde_json::json;

impl Store {
    /// Issues a proof of `kind` about the citizen `citizen` from their stored
    /// certificates: the unsigned document (`proof_id`, `kind`, titles, `subject`,
    /// `issued_at_millis`, `facts`, `sources`). `nothing_to_prove` when the records state
    /// no such fact.
    pub async fn issue_proof(
        &self,
        citizen: &Actor,
        kind: ProofKind,
        period: Option<(CivilDate, CivilDate)>,
    ) -> Result<serde_json::Value> {
        let subject = citizen
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen asks for a proof".into()))?;
        match (kind.needs_period(), period) {
            (true, Some((from, to))) => {
                let days = to.days_since_epoch() - from.days_since_epoch();
                if !(0..=PROOF_PERIOD_MAX_DAYS).contains(&days) {
                    return Err(StoreError::Invalid(
                        "the period runs from `from` to `to`, at most five years".into(),
                    ));
                }
            }
            (true, None) => {
                return Err(StoreError::Invalid(format!(
                    "a {} proof needs a period: from and to",
                    kind.as_str()
                )))
            }
            (false, Some(_)) => {
                return Err(StoreError::Invalid(format!(
                    "a {} proof takes no period",
                    kind.as_str()
                )))
            }
            (false, None) => {}
        }
        let sources = self
            .current_sources(subject.as_str(), kind.record_type())
            .await?;
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let mut event = NewAuditEvent {
            kind: "proof_issued".into(),
            actor: citizen.actor_id.clone(),
            subject_ref: Some(self.pseudonym(subject.as_str())),
            outcome: "recorded".into(),
            detail: json!({ "kind": kind.as_str() }),
            ..NewAuditEvent::default()
        };
        let (facts, used) = match prove(kind, &sources, period) {
            Ok(proved) => proved,
            Err(code) => {
                event.outcome = "refused".into();
                event.reason = Some(code.into());
                append(&mut tx, place, event).await?;
                tx.commit().await?;
                return Err(StoreError::Refused {
                    code,
                    message: format!(
                        "the stored records state no {} for you{}",
                        kind.titles().1.to_lowercase(),
                        if kind.needs_period() {
                            " in that period"
                        } else {
                            ""
                        }
                    ),
                });
            }
        };
        let proof_id = random_id("proof")?;
        let (title_zh, title_en) = kind.titles();
        let document = json!({
            "proof_id": proof_id,
            "kind": kind.as_str(),
            "title_zh": title_zh,
            "title_en": title_en,
            "subject": subject.as_str(),
            "issued_at_millis": now,
            "facts": facts,
            "sources": used.iter().map(|s| json!({
                "certificate_id": s.certificate_id,
                "record_id": s.record_id,
                "issuing_department": s.issuing_department,
                "signed_at_millis": s.signed_at_millis,
            })).collect::<Vec<_>>(),
        });
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO proofs (proof_id, subject_id, kind, issued_at, document) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&proof_id)
            .bind(subject.as_str())
            .bind(kind.as_str())
            .bind(now)
            .bind(document.to_string())
            .execute(&mut *conn)
            .await?;
        });
        event.detail =
            json!({ "kind": kind.as_str(), "proof_id": proof_id, "sources": used.len() });
        append(&mut tx, place, event).await?;
        tx.commit().await?;
        Ok(document)
    }

    /// A proof as issued, for its subject, or for a caseworker checking one a citizen
    /// showed them (audited as `proof_read` about the subject); none for anyone else.
    pub async fn proof(&self, reader: &Actor, proof_id: &str) -> Result<Option<serde_json::Value>> {
        let well_formed = proof_id.len() == 38
            && proof_id.starts_with("proof_")
            && proof_id[6..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Ok(None);
        }
        let row = on_pool!(self, |pool| {
            let row = sqlx::query("SELECT subject_id, document FROM proofs WHERE proof_id = $1")
                .bind(proof_id)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Some((text(&row, "subject_id")?, text(&row, "document")?)),
                None => None,
            }
        });
        let Some((subject, document)) = row else {
            return Ok(None);
        };
        let own = reader
            .resident_id
            .as_ref()
            .is_some_and(|r| r.as_str() == subject);
        if !own && reader.role != Role::Caseworker {
            return Ok(None);
        }
        if !own {
            self.audit(NewAuditEvent {
                kind: "proof_read".into(),
                actor: reader.actor_id.clone(),
                department: reader.department.as_ref().map(|d| d.to_string()),
                subject_ref: Some(self.pseudonym(&subject)),
                outcome: "allowed".into(),
                detail: json!({ "proof_id": proof_id }),
                ..NewAuditEvent::default()
            })
            .await?;
        }
        serde_json::from_str(&document)
            .map(Some)
            .map_err(|error| StoreError::Corrupt(format!("proof document: {error}")))
    }

    /// The current version of each of `subject`'s certificates of `record_type`.
    async fn current_sources(&self, subject: &str, record_type: &str) -> Result<Vec<ProofSource>> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT c.certificate_id, c.current_record_id, c.department_id, c.signed_at, c.status, r.fields
                 FROM certificates c JOIN records r ON r.record_id = c.current_record_id
                 WHERE c.subject_id = $1 AND c.record_type = $2 ORDER BY c.signed_at LIMIT 1000",
            )
            .bind(subject)
            .bind(record_type)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(ProofSource {
                        certificate_id: text(row, "certificate_id")?,
                        record_id: text(row, "current_record_id")?,
                        issuing_department: text(row, "department_id")?,
                        signed_at_millis: integer(row, "signed_at")?,
                        status: optional_text(row, "status")?.unwrap_or_else(|| "VALID".into()),
                        fields: row.fields("fields")?,
                    })
                })
                .collect()
        })
    }
}
