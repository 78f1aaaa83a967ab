//! Delegations in the database: registered by the principal, revoked by the principal or
//! renounced by the delegate, each change audited about the principal (it shows in their
//! access log), refused ones too.

use crate::audit::{append, reserve, NewAuditEvent};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_integer, random_id, text, Actor, Result, RowExt,
    Store, StoreError,
};
use datarun_domain::delegation::{
    Delegation, Relation, DELEGATION_SCOPE_MAX, MAX_DELEGATION_MILLIS,
};
use datarun_domain::{PurposeCode, RecordType, ResidentId};
use serde_json::json;

/// A delegation as the principal asks for it.
#[derive(Debug, Clone)]
pub struct DelegationGrant {
    pub delegate: ResidentId,
    pub relation: Relation,
    pub record_types: Vec<RecordType>,
    pub purposes: Vec<PurposeCode>,
    pub expires_at_millis: i64,
}

const DELEGATION_COLUMNS: &str = "delegation_id, principal_id, delegate_id, relation, record_types, purposes, expires_at, created_at, revoked_at";

fn delegation_from_row(row: &impl RowExt) -> Result<Delegation> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("delegation {what}"));
    let record_types: Vec<RecordType> =
        serde_json::from_str(&text(row, "record_types")?).map_err(|_| corrupt("record types"))?;
    let purposes: Vec<PurposeCode> =
        serde_json::from_str(&text(row, "purposes")?).map_err(|_| corrupt("purposes"))?;
    Ok(Delegation {
        delegation_id: text(row, "delegation_id")?,
        principal: text(row, "principal_id")?,
        delegate: text(row, "delegate_id")?,
        relation: Relation::parse(&text(row, "relation")?).ok_or_else(|| corrupt("relation"))?,
        record_types,
        purposes,
        expires_at_millis: integer(row, "expires_at")?,
        created_at_millis: integer(row, "created_at")?,
        revoked_at_millis: optional_integer(row, "revoked_at")?,
    })
}

/// Whether `text` is a delegation id as the hub issues them.
fn is_delegation_id(text: &str) -> bool {
    text.len() == 43
        && text.starts_with("delegation_")
        && text[11..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// Registers a delegation from `principal` (a citizen acting for themself), audited
    /// as `delegation_registered` about the principal.
    pub async fn register_delegation(
        &self,
        principal: &Actor,
        grant: DelegationGrant,
    ) -> Result<Delegation> {
        let principal_id = principal
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen registers a delegate".into()))?;
        let now = now_millis();
        if &grant.delegate == principal_id {
            return Err(StoreError::Invalid("a delegate is someone else".into()));
        }
        for (what, count) in [
            ("record_types", grant.record_types.len()),
            ("purposes", grant.purposes.len()),
        ] {
            if count == 0 || count > DELEGATION_SCOPE_MAX {
                return Err(StoreError::Invalid(format!(
                    "{what}: 1 to {DELEGATION_SCOPE_MAX}"
                )));
            }
        }
        if grant.expires_at_millis <= now || grant.expires_at_millis > now + MAX_DELEGATION_MILLIS {
            return Err(StoreError::Invalid(
                "a delegation must expire in the future and within five years".into(),
            ));
        }
        for purpose in &grant.purposes {
            if self.purpose(purpose).await?.is_none() {
                return Err(StoreError::Invalid(format!(
                    "purpose {purpose} is not in the purpose catalogue"
                )));
            }
        }
        let delegation = Delegation {
            delegation_id: random_id("delegation")?,
            principal: principal_id.as_str().to_owned(),
            delegate: grant.delegate.as_str().to_owned(),
            relation: grant.relation,
            record_types: grant.record_types,
            purposes: grant.purposes,
            expires_at_millis: grant.expires_at_millis,
            created_at_millis: now,
            revoked_at_millis: None,
        };
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let sql = format!(
            "INSERT INTO delegations ({DELEGATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)"
        );
        on_tx!(&mut tx, |conn| {
            sqlx::query(&sql)
                .bind(&delegation.delegation_id)
                .bind(&delegation.principal)
                .bind(&delegation.delegate)
                .bind(delegation.relation.as_str())
                .bind(json!(delegation.record_types).to_string())
                .bind(json!(delegation.purposes).to_string())
                .bind(delegation.expires_at_millis)
                .bind(delegation.created_at_millis)
                .execute(&mut *conn)
                .await?;
        });
        append(
            &mut tx,
            place,
            NewAuditEvent {
                kind: "delegation_registered".into(),
                actor: principal.actor_id.clone(),
                subject_ref: Some(self.pseudonym(&delegation.principal)),
                outcome: "recorded".into(),
                detail: json!({
                    "delegation_id": delegation.delegation_id,
                    "delegate_ref": self.pseudonym(&delegation.delegate),
                    "relation": delegation.relation,
                    "record_types": delegation.record_types,
                    "purposes": delegation.purposes,
                    "expires_at_millis": delegation.expires_at_millis,
                }),
                ..NewAuditEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(delegation)
    }

    /// Ends a delegation at once: its principal revokes it or its delegate renounces
    /// it. Anyone else, or an unknown id, is refused `delegation_not_found`; a second
    /// revocation `delegation_already_revoked`. Refusals are audited too.
    pub async fn revoke_delegation(
        &self,
        citizen: &Actor,
        delegation_id: &str,
    ) -> Result<Delegation> {
        let resident = citizen
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen revokes a delegation".into()))?;
        let not_found = || StoreError::Refused {
            code: "delegation_not_found",
            message: "no delegation with that id names you".into(),
        };
        if !is_delegation_id(delegation_id) {
            return Err(not_found());
        }
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let sql = format!("SELECT {DELEGATION_COLUMNS} FROM delegations WHERE delegation_id = $1");
        let found = on_tx!(&mut tx, |conn| {
            let row = sqlx::query(&sql)
                .bind(delegation_id)
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(delegation_from_row).transpose()?
        })
        .filter(|d| d.principal == resident.as_str() || d.delegate == resident.as_str());
        let mut event = NewAuditEvent {
            kind: "delegation_revoked".into(),
            actor: citizen.actor_id.clone(),
            subject_ref: found.as_ref().map(|d| self.pseudonym(&d.principal)),
            outcome: "recorded".into(),
            detail: json!({ "delegation_id": delegation_id }),
            ..NewAuditEvent::default()
        };
        let refusal = match &found {
            None => Some(not_found()),
            Some(d) if d.revoked_at_millis.is_some() => Some(StoreError::Refused {
                code: "delegation_already_revoked",
                message: "the delegation was already revoked".into(),
            }),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            if let StoreError::Refused { code, .. } = &refusal {
                event.outcome = "refused".into();
                event.reason = Some((*code).into());
            }
            append(&mut tx, place, event).await?;
            tx.commit().await?;
            return Err(refusal);
        }
        on_tx!(&mut tx, |conn| {
            sqlx::query("UPDATE delegations SET revoked_at = $1 WHERE delegation_id = $2")
                .bind(now)
                .bind(delegation_id)
                .execute(&mut *conn)
                .await?;
        });
        append(&mut tx, place, event).await?;
        tx.commit().await?;
        let mut delegation = found.ok_or_else(not_found)?;
        delegation.revoked_at_millis = Some(now);
        Ok(delegation)
    }

    /// Delegations `resident` registered or was named in, newest first.
    pub async fn delegations_of(&self, resident: &ResidentId) -> Result<Vec<Delegation>> {
        let sql = format!(
            "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE principal_id = $1 OR delegate_id = $1 ORDER BY created_at DESC LIMIT 500"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(resident.as_str())
                .fetch_all(pool)
                .await?;
            rows.iter().map(delegation_from_row).collect()
        })
    }

    /// Every delegation from `principal` to `delegate`, live or not.
    pub(crate) async fn delegations_between(
        &self,
        principal: &str,
        delegate: &str,
    ) -> Result<Vec<Delegation>> {
        let sql = format!(
            "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE principal_id = $1 AND delegate_id = $2 ORDER BY created_at LIMIT 100"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(principal)
                .bind(delegate)
                .fetch_all(pool)
                .await?;
            rows.iter().map(delegation_from_row).collect()
        })
    }
}
