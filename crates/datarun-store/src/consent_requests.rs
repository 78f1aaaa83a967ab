//! Consent requests: a department asks, the citizen previews exactly what would be
//! released — which fields of which certificates, to whom, why, until when — and
//! approves (which grants the consent through the same checks as a direct grant) or
//! declines. Requesting, previewing and declining are audited about the subject.

use crate::audit::{append, reserve, NewAuditEvent};
use crate::consents::{current_certificates, Policies};
use crate::purposes::purpose_in;
use crate::schemas::latest_live_version;
use crate::{
    integer, now_millis, on_pool, on_tx, optional_integer, optional_text, random_id, text, Actor,
    ConsentGrant, ReleasedCertificate, Result, RowExt, Store, StoreError,
};
use datarun_domain::consent::{MAX_CONSENT_MILLIS, MAX_CONSENT_USES};
use datarun_domain::date::CivilDate;
use datarun_domain::purpose::Whose;
use datarun_domain::{
    Consent, ConsentStatus, DepartmentId, Purpose, PurposeCode, RecordType, ResidentId, Role,
};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// A department's request, as it asks.
#[derive(Debug, Clone)]
pub struct NewConsentRequest {
    pub subject: ResidentId,
    pub record_types: Vec<RecordType>,
    pub fields: Option<Vec<String>>,
    pub purpose: PurposeCode,
    /// One caseworker of the department who alone may use the consent.
    pub caseworker: Option<String>,
    pub max_uses: u32,
    /// How long the consent lasts once approved.
    pub valid_for_millis: i64,
    /// A short note to the citizen.
    pub note: Option<String>,
}

/// A request and where it stands: `PENDING`, `APPROVED` (with the consent it granted)
/// or `DECLINED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentRequest {
    pub request_id: String,
    pub subject: String,
    pub requester_department: DepartmentId,
    pub requested_by: String,
    pub caseworker: Option<String>,
    pub record_types: Vec<RecordType>,
    pub fields: Option<Vec<String>>,
    pub purpose: PurposeCode,
    pub max_uses: u32,
    pub valid_for_millis: i64,
    pub note: Option<String>,
    pub status: String,
    pub created_at_millis: i64,
    pub decided_at_millis: Option<i64>,
    pub consent_id: Option<String>,
}

/// What approving a request would release, now.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub request: ConsentRequest,
    pub purpose: Purpose,
    /// When the consent would expire if approved now.
    pub expires_at_millis: i64,
    /// Each certificate with exactly the fields that would be released.
    pub certificates: Vec<ReleasedCertificate>,
}

/// Longest note a department may attach.
const NOTE_MAX: usize = 500;

const REQUEST_COLUMNS: &str = "request_id, subject_id, requester_department, requested_by, caseworker_id, record_types, fields_json, purpose_code, max_uses, valid_for_millis, note, status, created_at, decided_at, consent_id";

fn request_from_row(row: &impl RowExt) -> Result<ConsentRequest> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("consent request {what}"));
    Ok(ConsentRequest {
        request_id: text(row, "request_id")?,
        subject: text(row, "subject_id")?,
        requester_department: DepartmentId::parse(&text(row, "requester_department")?)
            .map_err(|_| corrupt("department"))?,
        requested_by: text(row, "requested_by")?,
        caseworker: optional_text(row, "caseworker_id")?,
        record_types: serde_json::from_str(&text(row, "record_types")?)
            .map_err(|_| corrupt("record types"))?,
        fields: optional_text(row, "fields_json")?
            .map(|f| serde_json::from_str(&f))
            .transpose()
            .map_err(|_| corrupt("fields"))?,
        purpose: PurposeCode::parse(&text(row, "purpose_code")?).map_err(|_| corrupt("purpose"))?,
        max_uses: integer(row, "max_uses")? as u32,
        valid_for_millis: integer(row, "valid_for_millis")?,
        note: optional_text(row, "note")?,
        status: text(row, "status")?,
        created_at_millis: integer(row, "created_at")?,
        decided_at_millis: optional_integer(row, "decided_at")?,
        consent_id: optional_text(row, "consent_id")?,
    })
}

fn is_request_id(text: &str) -> bool {
    text.len() == 40
        && text.starts_with("request_")
        && text[8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn not_found() -> StoreError {
    StoreError::Refused {
        code: "request_not_found",
        message: "no consent request with that id is yours to see".into(),
    }
}

impl Store {
    /// A department's system or caseworker asks `request.subject` for consent; audited
    /// as `consent_requested` about the subject.
    pub async fn request_consent(
        &self,
        requester: &Actor,
        request: NewConsentRequest,
    ) -> Result<ConsentRequest> {
        let department = requester
            .department
            .clone()
            .filter(|_| matches!(requester.role, Role::Caseworker | Role::Department))
            .ok_or_else(|| StoreError::Forbidden("only a department asks for consent".into()))?;
        if request.record_types.is_empty() || request.record_types.len() > 10 {
            return Err(StoreError::Invalid("record_types: 1 to 10".into()));
        }
        if request.max_uses == 0 || request.max_uses > MAX_CONSENT_USES {
            return Err(StoreError::Invalid(format!(
                "max_uses must be between 1 and {MAX_CONSENT_USES}"
            )));
        }
        if request.valid_for_millis < 60_000 || request.valid_for_millis > MAX_CONSENT_MILLIS {
            return Err(StoreError::Invalid(
                "a consent lasts from a minute to a year".into(),
            ));
        }
        if request
            .note
            .as_ref()
            .is_some_and(|n| n.chars().count() > NOTE_MAX)
        {
            return Err(StoreError::Invalid(format!(
                "note: at most {NOTE_MAX} characters"
            )));
        }
        if request.caseworker.as_ref().is_some_and(|c| c.len() > 64) {
            return Err(StoreError::Invalid("caseworker: an actor id".into()));
        }
        let Some(purpose) = self.purpose(&request.purpose).await? else {
            return Err(StoreError::Invalid(format!(
                "purpose {} is not in the purpose catalogue",
                request.purpose
            )));
        };
        if let Some(record_type) = request
            .record_types
            .iter()
            .find(|t| purpose.fields_for(t).is_none())
        {
            return Err(StoreError::Refused {
                code: "purpose_not_allowed",
                message: format!("purpose {} does not need {record_type}", purpose.code),
            });
        }
        if let Some(field) = request.fields.iter().flatten().find(|field| {
            !request
                .record_types
                .iter()
                .any(|t| purpose.needs_field(t, field))
        }) {
            return Err(StoreError::Refused {
                code: "purpose_not_allowed",
                message: format!(
                    "purpose {} does not need field {}",
                    purpose.code,
                    field.chars().take(64).collect::<String>()
                ),
            });
        }
        let created = ConsentRequest {
            request_id: random_id("request")?,
            subject: request.subject.as_str().to_owned(),
            requester_department: department,
            requested_by: requester.actor_id.clone(),
            caseworker: request.caseworker,
            record_types: request.record_types,
            fields: request.fields,
            purpose: request.purpose,
            max_uses: request.max_uses,
            valid_for_millis: request.valid_for_millis,
            note: request.note,
            status: "PENDING".into(),
            created_at_millis: now_millis(),
            decided_at_millis: None,
            consent_id: None,
        };
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let sql = format!(
            "INSERT INTO consent_requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL)"
        );
        on_tx!(&mut tx, |conn| {
            sqlx::query(&sql)
                .bind(&created.request_id)
                .bind(&created.subject)
                .bind(created.requester_department.as_str())
                .bind(&created.requested_by)
                .bind(&created.caseworker)
                .bind(json!(created.record_types).to_string())
                .bind(created.fields.as_ref().map(|f| json!(f).to_string()))
                .bind(created.purpose.as_str())
                .bind(i64::from(created.max_uses))
                .bind(created.valid_for_millis)
                .bind(&created.note)
                .bind(&created.status)
                .bind(created.created_at_millis)
                .execute(&mut *conn)
                .await?;
        });
        append(
            &mut tx,
            place,
            NewAuditEvent {
                kind: "consent_requested".into(),
                actor: requester.actor_id.clone(),
                department: Some(created.requester_department.to_string()),
                subject_ref: Some(self.pseudonym(&created.subject)),
                purpose: Some(created.purpose.to_string()),
                outcome: "recorded".into(),
                detail: json!({
                    "request_id": created.request_id,
                    "record_types": created.record_types,
                    "max_uses": created.max_uses,
                }),
                ..NewAuditEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Whether `citizen` may decide `request`: its subject, a guardian of the minor
    /// subject, or a delegate whose live delegation covers the request's record types
    /// and purpose (a delegate sees nothing of the principal beyond its scope).
    async fn may_decide(&self, citizen: &ResidentId, request: &ConsentRequest) -> Result<bool> {
        let subject = request.subject.as_str();
        if citizen.as_str() == subject {
            return Ok(true);
        }
        let now = now_millis();
        let today = CivilDate::from_unix_millis_cst(now);
        let minor = ResidentId::parse_on(subject, today)
            .is_ok_and(|id| id.birth_date().years_until(today) < 18);
        if minor && self.is_guardian_of(citizen.as_str(), subject).await? {
            return Ok(true);
        }
        let delegations = self.delegations_between(subject, citizen.as_str()).await?;
        Ok(datarun_domain::delegation::judge_delegated_grant(
            &delegations,
            &request.record_types,
            &request.purpose,
            now,
        )
        .is_ok())
    }

    async fn load_request(&self, request_id: &str) -> Result<Option<ConsentRequest>> {
        if !is_request_id(request_id) {
            return Ok(None);
        }
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM consent_requests WHERE request_id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(request_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(request_from_row).transpose()
        })
    }

    /// A request, for the department that made it or a citizen who may decide it.
    pub async fn consent_request(
        &self,
        viewer: &Actor,
        request_id: &str,
    ) -> Result<Option<ConsentRequest>> {
        let Some(request) = self.load_request(request_id).await? else {
            return Ok(None);
        };
        let visible = match (&viewer.resident_id, &viewer.department) {
            (Some(citizen), _) => self.may_decide(citizen, &request).await?,
            (None, Some(department)) => department == &request.requester_department,
            _ => false,
        };
        Ok(visible.then_some(request))
    }

    /// Requests awaiting `citizen` or already decided: about them, their minor wards, and
    /// whoever delegated to them; newest first.
    pub async fn consent_requests_for(&self, citizen: &ResidentId) -> Result<Vec<ConsentRequest>> {
        let mut subjects = vec![citizen.as_str().to_owned()];
        let today = CivilDate::from_unix_millis_cst(now_millis());
        for ward in self.wards_of(citizen.as_str()).await? {
            if ResidentId::parse_on(&ward, today)
                .is_ok_and(|id| id.birth_date().years_until(today) < 18)
            {
                subjects.push(ward);
            }
        }
        let now = now_millis();
        for delegation in self.delegations_of(citizen).await? {
            if delegation.delegate == citizen.as_str()
                && delegation.revoked_at_millis.is_none()
                && now < delegation.expires_at_millis
            {
                subjects.push(delegation.principal);
            }
        }
        subjects.sort();
        subjects.dedup();
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM consent_requests WHERE subject_id = $1 ORDER BY created_at DESC LIMIT 200"
        );
        let mut requests = Vec::new();
        for subject in subjects.iter().take(50) {
            if requests.len() >= 200 {
                break;
            }
            let found: Vec<ConsentRequest> = on_pool!(self, |pool| {
                let rows = sqlx::query(&sql).bind(subject).fetch_all(pool).await?;
                rows.iter()
                    .map(request_from_row)
                    .collect::<Result<Vec<_>>>()?
            });
            for request in found {
                if self.may_decide(citizen, &request).await? {
                    requests.push(request);
                }
            }
        }
        requests.sort_by_key(|r| std::cmp::Reverse(r.created_at_millis));
        requests.truncate(200);
        Ok(requests)
    }

    /// Requests `department` made, newest first.
    pub async fn consent_requests_by(
        &self,
        department: &DepartmentId,
    ) -> Result<Vec<ConsentRequest>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM consent_requests WHERE requester_department = $1 ORDER BY created_at DESC LIMIT 200"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(department.as_str())
                .fetch_all(pool)
                .await?;
            rows.iter().map(request_from_row).collect()
        })
    }

    /// Exactly what approving `request_id` would release now: each certificate with the
    /// fields a consent granted now would release (the purpose's fields, the request's
    /// named fields, no sensitive field it does not name). Audited as
    /// `consent_request_previewed` about the subject.
    pub async fn preview_consent_request(
        &self,
        citizen: &Actor,
        request_id: &str,
    ) -> Result<Preview> {
        let resident = citizen
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen previews a request".into()))?;
        let request = self
            .consent_request(citizen, request_id)
            .await?
            .ok_or_else(not_found)?;
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let purpose = purpose_in(&mut tx, &request.purpose)
            .await?
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "purpose {} is no longer in the catalogue",
                    request.purpose
                ))
            })?;
        let mut schema_versions = BTreeMap::new();
        for record_type in &request.record_types {
            if let Some(version) = latest_live_version(&mut tx, record_type.as_str()).await? {
                schema_versions.insert(record_type.to_string(), version);
            }
        }
        let would_be = Consent {
            consent_id: "preview".into(),
            subject: request.subject.clone(),
            granted_by: resident.as_str().to_owned(),
            delegation_id: None,
            requester_department: request.requester_department.clone(),
            caseworker: request.caseworker.clone(),
            record_types: request.record_types.clone(),
            fields: request.fields.clone(),
            schema_versions,
            purpose: request.purpose.clone(),
            max_uses: request.max_uses,
            uses: 0,
            status: ConsentStatus::Active,
            expires_at_millis: now + request.valid_for_millis,
            granted_at_millis: now,
        };
        let mut policies = Policies::new();
        let mut certificates = Vec::new();
        for record_type in &request.record_types {
            let whose = match purpose.whose(record_type) {
                Whose::Subject => request.subject.as_str(),
                Whose::Grantor => resident.as_str(),
            };
            let policy = self
                .release_policy(&mut tx, &would_be, record_type, &mut policies)
                .await?;
            for certificate in current_certificates(&mut tx, whose, record_type).await? {
                certificates.push(ReleasedCertificate {
                    fields: would_be.release_fields(
                        certificate.fields.clone(),
                        &policy,
                        &purpose,
                        record_type,
                        None,
                    ),
                    ..certificate
                });
            }
        }
        append(
            &mut tx,
            place,
            NewAuditEvent {
                kind: "consent_request_previewed".into(),
                actor: citizen.actor_id.clone(),
                department: Some(request.requester_department.to_string()),
                subject_ref: Some(self.pseudonym(&request.subject)),
                purpose: Some(request.purpose.to_string()),
                outcome: "recorded".into(),
                detail: json!({ "request_id": request.request_id, "certificates": certificates.len() }),
                ..NewAuditEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Preview {
            request,
            purpose,
            expires_at_millis: would_be.expires_at_millis,
            certificates,
        })
    }

    /// Approves (granting the consent, through every check a direct grant makes) or
    /// declines a pending request. A request is decided once: `request_not_pending`.
    pub async fn decide_consent_request(
        &self,
        citizen: &Actor,
        request_id: &str,
        approve: bool,
    ) -> Result<(ConsentRequest, Option<Consent>)> {
        let mut request = self
            .consent_request(citizen, request_id)
            .await?
            .ok_or_else(not_found)?;
        let now = now_millis();
        let status = if approve { "APPROVED" } else { "DECLINED" };
        // Claimed first, so two approvals cannot both grant.
        let claimed = on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE consent_requests SET status = $1, decided_at = $2, decided_by = $3
                 WHERE request_id = $4 AND status = 'PENDING'",
            )
            .bind(status)
            .bind(now)
            .bind(&citizen.actor_id)
            .bind(request_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if claimed != 1 {
            return Err(StoreError::Refused {
                code: "request_not_pending",
                message: format!("the request was already {}", request.status.to_lowercase()),
            });
        }
        request.status = status.into();
        request.decided_at_millis = Some(now);
        if !approve {
            self.audit(NewAuditEvent {
                kind: "consent_request_declined".into(),
                actor: citizen.actor_id.clone(),
                department: Some(request.requester_department.to_string()),
                subject_ref: Some(self.pseudonym(&request.subject)),
                purpose: Some(request.purpose.to_string()),
                outcome: "recorded".into(),
                detail: json!({ "request_id": request.request_id }),
                ..NewAuditEvent::default()
            })
            .await?;
            return Ok((request, None));
        }
        let subject = ResidentId::parse(&request.subject)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let granted = self
            .grant_consent(
                citizen,
                ConsentGrant {
                    subject,
                    requester_department: request.requester_department.clone(),
                    caseworker: request.caseworker.clone(),
                    record_types: request.record_types.clone(),
                    fields: request.fields.clone(),
                    purpose: request.purpose.clone(),
                    max_uses: request.max_uses,
                    expires_at_millis: now + request.valid_for_millis,
                },
            )
            .await;
        let consent_id = granted.as_ref().ok().map(|c| c.consent_id.clone());
        let (status, decided_at) = match &consent_id {
            Some(_) => ("APPROVED", Some(now)),
            None => ("PENDING", None),
        };
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE consent_requests SET status = $1, decided_at = $2, consent_id = $3,
                     decided_by = CASE WHEN $1 = 'PENDING' THEN NULL ELSE decided_by END
                 WHERE request_id = $4",
            )
            .bind(status)
            .bind(decided_at)
            .bind(&consent_id)
            .bind(request_id)
            .execute(pool)
            .await?;
        });
        let consent = granted?;
        request.consent_id = consent_id;
        Ok((request, Some(consent)))
    }
}
