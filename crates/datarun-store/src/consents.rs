//! Consents and consented lookups. A lookup decides, counts the use, reads the
//! certificates and appends its audit event in one transaction, so concurrent uses of
//! a one-use consent cannot both succeed and no access goes unaudited.

use crate::audit::{
    append, chained, insert_chained, insert_event, lock_head, reserve, set_head, NewAuditEvent,
};
use crate::purposes::purpose_in;
use crate::schemas::{latest_live_version, version_at, versions_from};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_text, random_id, text, Actor, Result, RowExt,
    Store, StoreError, WriteTransaction,
};
use datarun_domain::consent::{MAX_CONSENT_MILLIS, MAX_CONSENT_USES};
use datarun_domain::date::CivilDate;
use datarun_domain::purpose::Whose;
use datarun_domain::{
    AuditEvent, Consent, ConsentStatus, DepartmentId, LookupRefusal, LookupRequest, Purpose,
    PurposeCode, RecordType, ReleasePolicy, ResidentId, StatusChange,
};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The release policies a lookup batch has read, by record type and granted version.
pub(crate) type Policies = HashMap<(String, u32), Arc<ReleasePolicy>>;

/// A citizen's grant, as asked for.
#[derive(Debug, Clone)]
pub struct ConsentGrant {
    pub subject: ResidentId,
    pub requester_department: DepartmentId,
    pub caseworker: Option<String>,
    pub record_types: Vec<RecordType>,
    pub fields: Option<Vec<String>>,
    pub purpose: PurposeCode,
    pub max_uses: u32,
    pub expires_at_millis: i64,
}

/// One certificate as released to a requester.
#[derive(Debug, Clone, Serialize)]
pub struct ReleasedCertificate {
    pub certificate_id: String,
    pub record_id: String,
    pub record_type: String,
    pub issuing_department: String,
    /// Whose certificate: the lookup's subject, or in a bundle the citizen who granted
    /// the consent, where the purpose needs their record.
    pub subject: String,
    /// When the issuing department signed this version.
    pub signed_at_millis: i64,
    /// `VALID`, or as the issuing department's latest version says: `REVOKED` (吊销),
    /// `CANCELLED` (注销), `SUPERSEDED` (replaced by `superseded_by`).
    pub status: String,
    pub superseded_by: Option<String>,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub enum LookupOutcome {
    Allowed {
        consent: Box<Consent>,
        certificates: Vec<ReleasedCertificate>,
        audit_seq: i64,
    },
    Refused {
        refusal: LookupRefusal,
        audit_seq: i64,
    },
}

/// The age under which a guardian named on a certificate may consent for its subject.
const AGE_OF_MAJORITY: i32 = 18;

const CONSENT_COLUMNS: &str = "consent_id, subject_id, granted_by, requester_department, caseworker_id, record_types, fields_json, purpose_code, max_uses, uses, status, expires_at, granted_at, schema_versions, delegation_id";

fn consent_from_row(row: &impl RowExt) -> Result<Consent> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("consent {what}"));
    let record_types = text(row, "record_types")?
        .split(',')
        .map(RecordType::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("record types"))?;
    let fields = optional_text(row, "fields_json")?
        .map(|f| serde_json::from_str::<Vec<String>>(&f))
        .transpose()
        .map_err(|_| corrupt("fields"))?;
    // None recorded (granted before migration 0006): resolved by grant time on use.
    let schema_versions = optional_text(row, "schema_versions")?
        .map(|v| serde_json::from_str::<BTreeMap<String, u32>>(&v))
        .transpose()
        .map_err(|_| corrupt("schema versions"))?
        .unwrap_or_default();
    Ok(Consent {
        consent_id: text(row, "consent_id")?,
        subject: text(row, "subject_id")?,
        granted_by: text(row, "granted_by")?,
        delegation_id: optional_text(row, "delegation_id")?,
        requester_department: DepartmentId::parse(&text(row, "requester_department")?)
            .map_err(|_| corrupt("department"))?,
        caseworker: optional_text(row, "caseworker_id")?,
        record_types,
        fields,
        schema_versions,
        purpose: PurposeCode::parse(&text(row, "purpose_code")?).map_err(|_| corrupt("purpose"))?,
        max_uses: integer(row, "max_uses")? as u32,
        uses: integer(row, "uses")? as u32,
        status: ConsentStatus::parse(&text(row, "status")?).ok_or_else(|| corrupt("status"))?,
        expires_at_millis: integer(row, "expires_at")?,
        granted_at_millis: integer(row, "granted_at")?,
    })
}

/// Reads a consent inside a write transaction.
async fn load_consent(tx: &mut WriteTransaction, consent_id: &str) -> Result<Option<Consent>> {
    let sql = format!("SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1");
    on_tx!(tx, |conn| {
        let row = sqlx::query(&sql)
            .bind(consent_id)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(consent_from_row).transpose()
    })
}

impl Store {
    /// What `consent` can release of `record_type`: the fields of the version it was
    /// granted against, at the highest sensitivity any version since gave them.
    pub(crate) async fn release_policy(
        &self,
        tx: &mut WriteTransaction,
        consent: &Consent,
        record_type: &RecordType,
        policies: &mut Policies,
    ) -> Result<Arc<ReleasePolicy>> {
        let granted = match consent.schema_versions.get(record_type.as_str()) {
            Some(version) => Some(*version),
            None => version_at(tx, record_type.as_str(), consent.granted_at_millis).await?,
        };
        let Some(granted) = granted else {
            return Ok(Arc::default());
        };
        let key = (record_type.as_str().to_owned(), granted);
        if let Some(policy) = policies.get(&key) {
            return Ok(policy.clone());
        }
        let mut versions = Vec::new();
        for version in versions_from(tx, record_type.as_str(), granted).await? {
            if let Some(fields) = self
                .version_fields
                .fields(tx, record_type.as_str(), version)
                .await?
            {
                versions.push((version, fields));
            }
        }
        let policy = match versions.iter().find(|(v, _)| *v == granted) {
            Some((_, granted_fields)) => Arc::new(
                ReleasePolicy::new(
                    &granted_fields.sensitivities,
                    versions
                        .iter()
                        .filter(|(v, _)| *v > granted)
                        .map(|(_, fields)| fields.sensitivities.as_slice()),
                )
                .with_defaults(granted_fields.defaults.clone()),
            ),
            None => Arc::default(),
        };
        policies.insert(key, policy.clone());
        Ok(policy)
    }

    /// The audit event for a change to `consent` made by `actor`.
    fn consent_event(
        &self,
        kind: &str,
        actor: &Actor,
        consent: &Consent,
        detail: serde_json::Value,
    ) -> NewAuditEvent {
        NewAuditEvent {
            kind: kind.into(),
            actor: actor.actor_id.clone(),
            department: Some(consent.requester_department.to_string()),
            subject_ref: Some(self.pseudonym(&consent.subject)),
            consent_id: Some(consent.consent_id.clone()),
            purpose: Some(consent.purpose.to_string()),
            outcome: "recorded".into(),
            reason: None,
            detail,
        }
    }

    /// Grants a consent on behalf of `grantor` (a citizen): the subject themself, or a
    /// guardian named on one of a minor subject's certificates. A refused grant is
    /// audited too (`consent_granted`, outcome `refused`, with the rule that failed), so
    /// the subject's access log shows a false claim to act for them.
    pub async fn grant_consent(&self, grantor: &Actor, grant: ConsentGrant) -> Result<Consent> {
        let subject_ref = self.pseudonym(grant.subject.as_str());
        let department = grant.requester_department.to_string();
        let purpose = grant.purpose.to_string();
        let outcome = self.grant_consent_checked(grantor, grant).await;
        let reason = match &outcome {
            Err(StoreError::Forbidden(_)) => "not_subject_or_guardian",
            Err(StoreError::Invalid(_)) => "grant_invalid",
            Err(StoreError::Refused { code, .. }) => code,
            _ => return outcome,
        };
        let message = outcome
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.audit(NewAuditEvent {
            kind: "consent_granted".into(),
            actor: grantor.actor_id.clone(),
            department: Some(department),
            subject_ref: Some(subject_ref),
            consent_id: None,
            purpose: Some(purpose),
            outcome: "refused".into(),
            reason: Some(reason.into()),
            detail: json!({ "message": message }),
        })
        .await?;
        outcome
    }

    async fn grant_consent_checked(&self, grantor: &Actor, grant: ConsentGrant) -> Result<Consent> {
        let grantor_id = grantor
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("only a citizen grants consent".into()))?;
        let now = now_millis();
        if grant.record_types.is_empty() {
            return Err(StoreError::Invalid(
                "a consent must name at least one record type".into(),
            ));
        }
        if grant.max_uses == 0 || grant.max_uses > MAX_CONSENT_USES {
            return Err(StoreError::Invalid(format!(
                "max_uses must be between 1 and {MAX_CONSENT_USES}"
            )));
        }
        if grant.expires_at_millis <= now || grant.expires_at_millis > now + MAX_CONSENT_MILLIS {
            return Err(StoreError::Invalid(
                "a consent must expire in the future and within a year".into(),
            ));
        }
        let Some(purpose) = self.purpose(&grant.purpose).await? else {
            return Err(StoreError::Invalid(format!(
                "purpose {} is not in the purpose catalogue",
                grant.purpose
            )));
        };
        if !self.department_exists(&grant.requester_department).await? {
            return Err(StoreError::Invalid(format!(
                "department {} is not registered",
                grant.requester_department
            )));
        }
        // Who may grant for whom: the subject; a guardian of a minor subject named on
        // one of the child's certificates (birth certificate, household register,
        // student status); or a delegate the subject registered, within its scope.
        let mut delegation_id = None;
        if grant.subject != *grantor_id {
            let today = CivilDate::from_unix_millis_cst(now);
            let minor = grant.subject.birth_date().years_until(today) < AGE_OF_MAJORITY;
            let guardian = minor
                && self
                    .is_guardian_of(grantor_id.as_str(), grant.subject.as_str())
                    .await?;
            if !guardian {
                let delegations = self
                    .delegations_between(grant.subject.as_str(), grantor_id.as_str())
                    .await?;
                match datarun_domain::delegation::judge_delegated_grant(
                    &delegations,
                    &grant.record_types,
                    &grant.purpose,
                    now,
                ) {
                    Ok(id) => delegation_id = Some(id),
                    Err("not_subject_or_guardian") => {
                        return Err(StoreError::Forbidden(
                            "you may grant consent only for yourself, for a minor whose certificate names you as guardian, or for someone who registered you as their delegate".into(),
                        ))
                    }
                    Err(code) => {
                        return Err(StoreError::Refused {
                            code,
                            message: match code {
                                "delegate_out_of_scope" => "your delegation does not cover these record types or this purpose".into(),
                                other => format!("your delegation cannot be used: {other}"),
                            },
                        })
                    }
                }
            }
        }
        let mut tx = self.begin_write().await?;
        // Granted against each record type's newest version: its fields are the most
        // the consent can ever release, and the fields it names must be among them.
        let mut schema_versions = BTreeMap::new();
        let mut known_fields = HashSet::new();
        for record_type in &grant.record_types {
            let fields = match latest_live_version(&mut tx, record_type.as_str()).await? {
                Some(version) => {
                    schema_versions.insert(record_type.to_string(), version);
                    self.version_fields
                        .fields(&mut tx, record_type.as_str(), version)
                        .await?
                }
                None => None,
            };
            let Some(fields) = fields else {
                return Err(StoreError::Invalid(format!(
                    "record type {record_type} has no registered schema"
                )));
            };
            known_fields.extend(fields.sensitivities.iter().map(|(name, _)| name.clone()));
        }
        if let Some(unknown) = grant
            .fields
            .iter()
            .flatten()
            .find(|field| !known_fields.contains(*field))
        {
            return Err(StoreError::Invalid(format!(
                "field {} is not a field of the consented record types",
                unknown.chars().take(64).collect::<String>()
            )));
        }
        // A consent never covers more than its purpose needs.
        if let Some(record_type) = grant
            .record_types
            .iter()
            .find(|t| purpose.fields_for(t).is_none())
        {
            return Err(StoreError::Refused {
                code: "purpose_not_allowed",
                message: format!("purpose {} does not need {record_type}", purpose.code),
            });
        }
        if let Some(field) = grant.fields.iter().flatten().find(|field| {
            !grant
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
        let consent = Consent {
            consent_id: random_id("consent")?,
            subject: grant.subject.as_str().to_owned(),
            granted_by: grantor_id.as_str().to_owned(),
            delegation_id,
            requester_department: grant.requester_department,
            caseworker: grant.caseworker,
            record_types: grant.record_types,
            fields: grant.fields,
            schema_versions,
            purpose: grant.purpose,
            max_uses: grant.max_uses,
            uses: 0,
            status: ConsentStatus::Active,
            expires_at_millis: grant.expires_at_millis,
            granted_at_millis: now,
        };
        let place = reserve(&mut tx).await?;
        let sql = format!(
            "INSERT INTO consents ({CONSENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        let record_types = consent
            .record_types
            .iter()
            .map(RecordType::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let fields = consent.fields.as_ref().map(|f| json!(f).to_string());
        on_tx!(&mut tx, |conn| {
            sqlx::query(&sql)
                .bind(&consent.consent_id)
                .bind(&consent.subject)
                .bind(&consent.granted_by)
                .bind(consent.requester_department.as_str())
                .bind(&consent.caseworker)
                .bind(&record_types)
                .bind(&fields)
                .bind(consent.purpose.as_str())
                .bind(i64::from(consent.max_uses))
                .bind(0i64)
                .bind(consent.status.as_str())
                .bind(consent.expires_at_millis)
                .bind(consent.granted_at_millis)
                .bind(json!(consent.schema_versions).to_string())
                .bind(&consent.delegation_id)
                .execute(&mut *conn)
                .await?;
        });
        append(
            &mut tx,
            place,
            self.consent_event(
                "consent_granted",
                grantor,
                &consent,
                json!({
                    "record_types": consent.record_types,
                    "schema_versions": consent.schema_versions,
                    "max_uses": consent.max_uses,
                    "expires_at_millis": consent.expires_at_millis,
                    "by_guardian": consent.granted_by != consent.subject && consent.delegation_id.is_none(),
                    "delegation_id": consent.delegation_id,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(consent)
    }

    /// Consents a citizen granted or that concern them, newest first.
    pub async fn consents_of(&self, resident: &ResidentId) -> Result<Vec<Consent>> {
        let sql = format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE granted_by = $1 OR subject_id = $1 ORDER BY granted_at DESC LIMIT 500"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(resident.as_str())
                .fetch_all(pool)
                .await?;
            rows.iter().map(consent_from_row).collect()
        })
    }

    /// Pauses, resumes or revokes a consent, effective from the very next lookup; only
    /// its grantor or its subject may. A refused change is audited too, with the rule
    /// that failed: `consent_not_found` (also for someone else's consent),
    /// `consent_revoked`, `consent_paused`, `consent_not_paused`, `consent_expired`,
    /// `consent_exhausted`.
    pub async fn change_consent_status(
        &self,
        citizen: &Actor,
        consent_id: &str,
        change: StatusChange,
    ) -> Result<Consent> {
        let not_found = || StoreError::Refused {
            code: "consent_not_found",
            message: "no consent with that id was granted by you or for you".into(),
        };
        let resident = citizen
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen changes a consent".into()))?;
        let consent_id = datarun_domain::consent::is_consent_id(consent_id)
            .then_some(consent_id)
            .ok_or_else(not_found)?;
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let consent = load_consent(&mut tx, consent_id)
            .await?
            .filter(|c| c.granted_by == resident.as_str() || c.subject == resident.as_str());
        let decided = match &consent {
            None => Err(not_found()),
            Some(consent) => {
                change
                    .apply(consent.status_at(now))
                    .map_err(|code| StoreError::Refused {
                        code,
                        message: format!(
                            "the consent cannot be {} now: {code}",
                            change.event_kind().trim_start_matches("consent_")
                        ),
                    })
            }
        };
        let mut event = NewAuditEvent {
            kind: change.event_kind().into(),
            actor: citizen.actor_id.clone(),
            department: consent.as_ref().map(|c| c.requester_department.to_string()),
            subject_ref: consent.as_ref().map(|c| self.pseudonym(&c.subject)),
            consent_id: Some(consent_id.to_owned()),
            purpose: consent.as_ref().map(|c| c.purpose.to_string()),
            outcome: "recorded".into(),
            reason: None,
            detail: json!({}),
        };
        match (decided, consent) {
            (Ok(status), Some(mut consent)) => {
                on_tx!(&mut tx, |conn| {
                    sqlx::query(
                        "UPDATE consents SET status = $1, revoked_at = CASE WHEN $1 = 'revoked' THEN $2 ELSE revoked_at END
                         WHERE consent_id = $3",
                    )
                    .bind(status.as_str())
                    .bind(now)
                    .bind(consent_id)
                    .execute(&mut *conn)
                    .await?;
                });
                event.detail = json!({ "status": status });
                append(&mut tx, place, event).await?;
                tx.commit().await?;
                consent.status = status;
                Ok(consent)
            }
            (decided, _) => {
                let error = decided.err().unwrap_or_else(not_found);
                if let StoreError::Refused { code, .. } = &error {
                    event.outcome = "refused".into();
                    event.reason = Some((*code).into());
                    append(&mut tx, place, event).await?;
                    tx.commit().await?;
                }
                Err(error)
            }
        }
    }

    /// A consent as its grantor, its subject or its requester department sees it, with
    /// its history (every change and every use, oldest first); none for anyone else.
    pub async fn consent_with_history(
        &self,
        viewer: &Actor,
        consent_id: &str,
    ) -> Result<Option<(Consent, Vec<AuditEvent>)>> {
        if !datarun_domain::consent::is_consent_id(consent_id) {
            return Ok(None);
        }
        let sql = format!("SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1");
        let consent = on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(consent_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(consent_from_row).transpose()?
        });
        let Some(consent) = consent else {
            return Ok(None);
        };
        let allowed = match (&viewer.resident_id, &viewer.department) {
            (Some(resident), _) => {
                consent.granted_by == resident.as_str() || consent.subject == resident.as_str()
            }
            (None, Some(department)) => {
                viewer.role == datarun_domain::Role::Caseworker
                    && &consent.requester_department == department
            }
            _ => false,
        };
        if !allowed {
            return Ok(None);
        }
        let history = self
            .audit_events(&crate::AuditFilter {
                consent_id: Some(consent_id.to_owned()),
                limit: 1_000,
                ..crate::AuditFilter::default()
            })
            .await?;
        Ok(Some((consent, history)))
    }

    /// A caseworker's lookup of `subject`'s certificates of `record_type` under
    /// `consent_id`. Lookups queue for one worker that runs whatever has queued (up to
    /// `LOOKUPS_PER_TRANSACTION`) in one transaction, in order: each is decided, counted
    /// and audited as if alone, and they commit together, so a one-use consent still
    /// serves exactly one of them and the chain head is written once per transaction.
    pub async fn lookup(&self, caseworker: &Actor, ask: LookupAsk) -> Result<LookupOutcome> {
        if caseworker.department.is_none() {
            return Err(StoreError::Forbidden(
                "only a caseworker of a department looks up".into(),
            ));
        }
        // Checked before the group-committed batch: a malformed id (a NUL byte, say)
        // that reached PostgreSQL would fail the whole batch of other callers' lookups.
        if !datarun_domain::consent::is_consent_id(&ask.consent_id) {
            return Err(StoreError::Invalid(
                "consent_id: consent_ followed by 32 lowercase hex digits".into(),
            ));
        }
        let mut seen = HashSet::new();
        if ask.record_types.is_empty()
            || ask.record_types.len() > RECORD_TYPES_MAX
            || !ask.record_types.iter().all(|t| seen.insert(t))
        {
            return Err(StoreError::Invalid(format!(
                "record_types: 1 to {RECORD_TYPES_MAX} different record types"
            )));
        }
        if ask.subject.len() > SUBJECT_MAX_LEN || ask.subject.contains('\0') {
            return Err(StoreError::Invalid("subject: an identifier".into()));
        }
        if ask.fields.as_ref().is_some_and(|fields| {
            fields.is_empty()
                || fields.len() > FIELDS_MAX
                || fields.iter().any(|f| {
                    f.is_empty()
                        || f.len() > 64
                        || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
        }) {
            return Err(StoreError::Invalid(format!(
                "fields: 1 to {FIELDS_MAX} field names (letters, digits, _)"
            )));
        }
        let queue = self.lookup_queue.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(self.clone().run_lookups(receiver));
            sender
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = LookupJob {
            caseworker: caseworker.clone(),
            consent_id: ask.consent_id,
            subject: ask.subject,
            record_types: ask.record_types,
            purpose: ask.purpose,
            fields: ask.fields,
            reply,
        };
        let stopped = || StoreError::System("the lookup worker stopped".into());
        queue.send(job).await.map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::System)
    }

    async fn run_lookups(self, mut receiver: tokio::sync::mpsc::Receiver<LookupJob>) {
        while let Some(first) = receiver.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < LOOKUPS_PER_TRANSACTION {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // Optimistically without savepoints (two round trips fewer per lookup); if
            // anything fails the transaction is rolled back whole and the batch runs
            // again with each lookup isolated in its own savepoint.
            let outcomes = match self.lookup_batch_fast(&jobs).await {
                Ok(outcomes) => Ok(outcomes),
                Err(error) => {
                    tracing::warn!(%error, lookups = jobs.len(), "a lookup batch failed; running it again with each lookup isolated");
                    self.lookup_batch(&jobs, true).await
                }
            };
            match outcomes {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(outcome);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, lookups = jobs.len(), "lookup transaction failed; nothing was released");
                    for job in jobs {
                        let _ = job.reply.send(Err(error.to_string()));
                    }
                }
            }
        }
    }

    /// The hot path: a batch in one transaction with a fixed number of statements
    /// whatever its size (on PostgreSQL, each a round trip): the batch's consents read
    /// (and locked) at once, every lookup decided in order in memory — a consent's uses
    /// counted as they go, so the second use of a one-use consent in the same batch is
    /// refused — the released certificates read at once, then the use counts and the
    /// chained audit events written at once. Same decisions and events as `lookup_in`;
    /// any failure fails the batch, which then runs again isolated (`lookup_batch`).
    async fn lookup_batch_fast(
        &self,
        jobs: &[LookupJob],
    ) -> Result<Vec<std::result::Result<LookupOutcome, String>>> {
        let mut tx = self.begin_write().await?;
        let (mut seq, mut hash) = lock_head(&mut tx).await?;
        let mut ids: Vec<&str> = jobs.iter().map(|j| j.consent_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut consents = load_consents(&mut tx, &ids).await?;
        let mut policies = Policies::new();
        let mut purposes = Purposes::new();
        let now = now_millis();
        // Pass 1: decide, in order.
        let mut decided = Vec::with_capacity(jobs.len());
        let mut used: HashMap<String, i64> = HashMap::new();
        for job in jobs {
            let department = job.caseworker.department.as_ref().ok_or_else(|| {
                StoreError::Forbidden("only a caseworker of a department looks up".into())
            })?;
            let consent = consents.get(&job.consent_id).cloned();
            let purpose = match &consent {
                Some(consent) => match purposes.get(&consent.purpose) {
                    Some(purpose) => purpose.clone(),
                    None => {
                        let purpose = purpose_in(&mut tx, &consent.purpose).await?.map(Arc::new);
                        purposes.insert(consent.purpose.clone(), purpose.clone());
                        purpose
                    }
                },
                None => None,
            };
            let mut decision = Ok(());
            for record_type in &job.record_types {
                let request = LookupRequest {
                    caseworker: &job.caseworker.actor_id,
                    department,
                    subject: &job.subject,
                    record_type,
                    purpose: &job.purpose,
                    fields: job.fields.as_deref(),
                    now_millis: now,
                };
                decision = match &consent {
                    None => Err(LookupRefusal::ConsentNotFound),
                    Some(consent) => consent.check_lookup(&request, purpose.as_deref()),
                };
                if decision.is_err() {
                    break;
                }
            }
            let consent = match (&decision, consent) {
                (Ok(()), Some(mut consent)) => {
                    consent.uses += 1;
                    if let Some(stored) = consents.get_mut(&job.consent_id) {
                        stored.uses += 1;
                    }
                    *used.entry(job.consent_id.clone()).or_default() += 1;
                    Some(consent)
                }
                (_, consent) => consent,
            };
            decided.push((department, consent, purpose, decision));
        }
        // Pass 2: the certificates the allowed lookups release, read at once.
        let mut whose_of = Vec::with_capacity(jobs.len());
        let mut subjects: Vec<String> = Vec::new();
        for (job, (_, consent, purpose, decision)) in jobs.iter().zip(&decided) {
            let mut whose = Vec::new();
            if let (Ok(()), Some(consent), Some(purpose)) = (decision, consent, purpose) {
                for record_type in &job.record_types {
                    let person = match purpose.whose(record_type) {
                        Whose::Subject => job.subject.clone(),
                        Whose::Grantor => consent.granted_by.clone(),
                    };
                    subjects.push(person.clone());
                    whose.push(person);
                }
            }
            whose_of.push(whose);
        }
        subjects.sort_unstable();
        subjects.dedup();
        let certificates = current_certificates_of(&mut tx, &subjects).await?;
        // Pass 3: release and audit, in order.
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for ((job, (department, consent, purpose, decision)), whose) in
            jobs.iter().zip(decided).zip(whose_of)
        {
            let audit_purpose = consent
                .as_ref()
                .filter(|c| &c.requester_department == department)
                .map(|c| c.purpose.to_string());
            let event = |subject: &str, detail: serde_json::Value| NewAuditEvent {
                kind: "lookup".into(),
                actor: job.caseworker.actor_id.clone(),
                department: Some(department.to_string()),
                subject_ref: Some(self.pseudonym(subject)),
                consent_id: Some(job.consent_id.clone()),
                purpose: audit_purpose.clone(),
                outcome: "allowed".into(),
                reason: None,
                detail,
            };
            match (decision, consent, purpose) {
                (Ok(()), Some(consent), Some(purpose)) => {
                    let mut released = Vec::new();
                    for (record_type, person) in job.record_types.iter().zip(&whose) {
                        let policy = self
                            .release_policy(&mut tx, &consent, record_type, &mut policies)
                            .await?;
                        let found: Vec<ReleasedCertificate> = certificates
                            .get(&(person.clone(), record_type.to_string()))
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|certificate| ReleasedCertificate {
                                fields: consent.release_fields(
                                    certificate.fields,
                                    &policy,
                                    &purpose,
                                    record_type,
                                    job.fields.as_deref(),
                                ),
                                ..certificate
                            })
                            .collect();
                        let mut detail = json!({
                            "record_type": record_type,
                            "certificate_ids": found.iter().map(|c| &c.certificate_id).collect::<Vec<_>>(),
                        });
                        if job.record_types.len() > 1 {
                            detail["bundle"] = json!(job.record_types);
                        }
                        let audited = chained(event(person, detail), seq + 1, &hash);
                        (seq, hash) = (audited.seq, audited.hash.clone());
                        events.push(audited);
                        released.extend(found);
                    }
                    outcomes.push(Ok(LookupOutcome::Allowed {
                        consent: Box::new(consent),
                        certificates: released,
                        audit_seq: seq,
                    }));
                }
                (decision, _, _) => {
                    let refusal = decision.err().unwrap_or(LookupRefusal::ConsentNotFound);
                    let mut refused =
                        event(&job.subject, json!({ "record_types": job.record_types }));
                    refused.outcome = "refused".into();
                    refused.reason = Some(refusal.code().into());
                    let audited = chained(refused, seq + 1, &hash);
                    (seq, hash) = (audited.seq, audited.hash.clone());
                    events.push(audited);
                    outcomes.push(Ok(LookupOutcome::Refused {
                        refusal,
                        audit_seq: seq,
                    }));
                }
            }
        }
        // Pass 4: the writes.
        add_uses(&mut tx, &used).await?;
        insert_chained(&mut tx, &events).await?;
        set_head(&mut tx, seq, &hash).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Runs a batch in one transaction. `isolate`: each lookup inside its own savepoint,
    /// so one that fails (a database error on its rows, say) is rolled back alone and
    /// audited as `failed`, and the others of the batch commit as if it had never been
    /// there. Without it, the first failure fails the batch (and nothing is committed).
    async fn lookup_batch(
        &self,
        jobs: &[LookupJob],
        isolate: bool,
    ) -> Result<Vec<std::result::Result<LookupOutcome, String>>> {
        let mut tx = self.begin_write().await?;
        let (mut seq, mut hash) = lock_head(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Release policies are read once per batch: the registry cannot change under
        // the transaction's view of it.
        let mut policies = Policies::new();
        let mut purposes = Purposes::new();
        for job in jobs {
            if !isolate {
                let (outcome, event) = self
                    .lookup_in(&mut tx, job, seq + 1, &hash, &mut policies, &mut purposes)
                    .await?;
                seq = event.seq;
                hash = event.hash;
                outcomes.push(Ok(outcome));
                continue;
            }
            tx.savepoint().await?;
            match self
                .lookup_in(&mut tx, job, seq + 1, &hash, &mut policies, &mut purposes)
                .await
            {
                Ok((outcome, event)) => {
                    tx.release_savepoint().await?;
                    seq = event.seq;
                    hash = event.hash;
                    outcomes.push(Ok(outcome));
                }
                Err(error) => {
                    tx.rollback_to_savepoint().await?;
                    tracing::error!(%error, actor = %job.caseworker.actor_id, "one lookup failed; the rest of its batch goes on");
                    let event = NewAuditEvent {
                        kind: "lookup".into(),
                        actor: job.caseworker.actor_id.clone(),
                        department: job.caseworker.department.as_ref().map(|d| d.to_string()),
                        subject_ref: Some(self.pseudonym(&job.subject)),
                        consent_id: Some(job.consent_id.clone()),
                        purpose: None,
                        outcome: "failed".into(),
                        reason: Some("internal_error".into()),
                        detail: json!({ "record_types": job.record_types }),
                    };
                    let audited = insert_event(&mut tx, seq + 1, &hash, event).await?;
                    seq = audited.seq;
                    hash = audited.hash;
                    outcomes.push(Err(error.to_string()));
                }
            }
        }
        set_head(&mut tx, seq, &hash).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// One lookup inside the batch's transaction, audited from event `seq` after
    /// `prev_hash`: one event per record type asked for (a bundle of several record
    /// types is several events, each about the person whose record it is), or one
    /// refusal. The consent's use is counted once per request.
    async fn lookup_in(
        &self,
        tx: &mut WriteTransaction,
        job: &LookupJob,
        seq: i64,
        prev_hash: &str,
        policies: &mut Policies,
        purposes: &mut Purposes,
    ) -> Result<(LookupOutcome, AuditEvent)> {
        let LookupJob {
            caseworker,
            consent_id,
            subject,
            record_types,
            purpose: asked_purpose,
            fields: asked_fields,
            ..
        } = job;
        let (consent_id, subject) = (consent_id.as_str(), subject.as_str());
        let department = caseworker.department.as_ref().ok_or_else(|| {
            StoreError::Forbidden("only a caseworker of a department looks up".into())
        })?;
        let now = now_millis();
        let consent = load_consent(tx, consent_id).await?;
        let purpose = match &consent {
            Some(consent) => match purposes.get(&consent.purpose) {
                Some(purpose) => purpose.clone(),
                None => {
                    let purpose = purpose_in(tx, &consent.purpose).await?.map(Arc::new);
                    purposes.insert(consent.purpose.clone(), purpose.clone());
                    purpose
                }
            },
            None => None,
        };
        // Every record type of the request must pass; the first that fails refuses it.
        let mut decision = Ok(());
        for record_type in record_types {
            let request = LookupRequest {
                caseworker: &caseworker.actor_id,
                department,
                subject,
                record_type,
                purpose: asked_purpose,
                fields: asked_fields.as_deref(),
                now_millis: now,
            };
            decision = match &consent {
                None => Err(LookupRefusal::ConsentNotFound),
                Some(consent) => consent.check_lookup(&request, purpose.as_deref()),
            };
            if decision.is_err() {
                break;
            }
        }
        let decision = match decision {
            Ok(()) => {
                // The guard repeats the count check inside the write: the second of two
                // concurrent uses finds the consent used up.
                let used = on_tx!(tx, |conn| {
                    sqlx::query(
                    "UPDATE consents SET uses = uses + 1 WHERE consent_id = $1 AND uses < max_uses AND status = 'active'",
                )
                .bind(consent_id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                });
                if used == 1 {
                    Ok(())
                } else {
                    let max_uses = consent.as_ref().map(|c| c.max_uses).unwrap_or(1);
                    Err(LookupRefusal::Exhausted {
                        uses: max_uses,
                        max_uses,
                    })
                }
            }
            Err(refusal) => Err(refusal),
        };
        let audit_purpose = consent
            .as_ref()
            .filter(|c| &c.requester_department == department)
            .map(|c| c.purpose.to_string());
        let event = |subject: &str, detail: serde_json::Value| NewAuditEvent {
            kind: "lookup".into(),
            actor: caseworker.actor_id.clone(),
            department: Some(department.to_string()),
            subject_ref: Some(self.pseudonym(subject)),
            consent_id: Some(consent_id.to_owned()),
            purpose: audit_purpose.clone(),
            outcome: "allowed".into(),
            reason: None,
            detail,
        };
        let outcome = match (decision, consent, purpose) {
            (Ok(()), Some(mut consent), Some(purpose)) => {
                let mut released = Vec::new();
                let (mut next_seq, mut prev) = (seq, prev_hash.to_owned());
                let mut last = None;
                for record_type in record_types {
                    // A bundle's record types are each about the subject or, where the
                    // purpose says so, about the citizen who granted the consent (a
                    // parent's household register for a child's school enrolment).
                    let whose = match purpose.whose(record_type) {
                        Whose::Subject => subject,
                        Whose::Grantor => consent.granted_by.as_str(),
                    };
                    let current = current_certificates(tx, whose, record_type).await?;
                    let policy = self
                        .release_policy(tx, &consent, record_type, policies)
                        .await?;
                    let certificates: Vec<ReleasedCertificate> = current
                        .into_iter()
                        .map(|certificate| ReleasedCertificate {
                            fields: consent.release_fields(
                                certificate.fields,
                                &policy,
                                &purpose,
                                record_type,
                                asked_fields.as_deref(),
                            ),
                            ..certificate
                        })
                        .collect();
                    let mut detail = json!({
                        "record_type": record_type,
                        "certificate_ids": certificates.iter().map(|c| &c.certificate_id).collect::<Vec<_>>(),
                    });
                    if record_types.len() > 1 {
                        detail["bundle"] = json!(record_types);
                    }
                    let audited = insert_event(tx, next_seq, &prev, event(whose, detail)).await?;
                    next_seq = audited.seq + 1;
                    prev = audited.hash.clone();
                    last = Some(audited);
                    released.extend(certificates);
                }
                let audited = last.ok_or_else(|| {
                    StoreError::Invalid("a lookup names at least one record type".into())
                })?;
                consent.uses += 1;
                let outcome = LookupOutcome::Allowed {
                    consent: Box::new(consent),
                    certificates: released,
                    audit_seq: audited.seq,
                };
                (outcome, audited)
            }
            (decision, _, _) => {
                let refusal = decision.err().unwrap_or(LookupRefusal::ConsentNotFound);
                let mut refused = event(subject, json!({ "record_types": record_types }));
                refused.outcome = "refused".into();
                refused.reason = Some(refusal.code().into());
                let audited = insert_event(tx, seq, prev_hash, refused).await?;
                let outcome = LookupOutcome::Refused {
                    refusal,
                    audit_seq: audited.seq,
                };
                (outcome, audited)
            }
        };
        Ok(outcome)
    }
}

/// The consents named `ids`, read in one statement; on PostgreSQL locked until the
/// transaction ends, so a hub's batch decides on counts no other hub can move.
async fn load_consents(
    tx: &mut WriteTransaction,
    ids: &[&str],
) -> Result<HashMap<String, Consent>> {
    let rows: Vec<Consent> = match tx {
        WriteTransaction::Postgres(transaction) => {
            let sql = format!(
                "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = ANY($1) ORDER BY consent_id FOR UPDATE"
            );
            let rows = sqlx::query(&sql)
                .bind(ids)
                .fetch_all(&mut **transaction)
                .await?;
            rows.iter().map(consent_from_row).collect::<Result<_>>()?
        }
        WriteTransaction::Sqlite { transaction, .. } => {
            let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in ids {
                query = query.bind(*id);
            }
            let rows = query.fetch_all(&mut **transaction).await?;
            rows.iter().map(consent_from_row).collect::<Result<_>>()?
        }
    };
    Ok(rows
        .into_iter()
        .map(|consent| (consent.consent_id.clone(), consent))
        .collect())
}

/// Counts the uses a batch made of each consent, in one statement on PostgreSQL.
async fn add_uses(tx: &mut WriteTransaction, used: &HashMap<String, i64>) -> Result<()> {
    if used.is_empty() {
        return Ok(());
    }
    match tx {
        WriteTransaction::Postgres(transaction) => {
            let (ids, counts): (Vec<&str>, Vec<i64>) =
                used.iter().map(|(id, n)| (id.as_str(), *n)).unzip();
            sqlx::query(
                "UPDATE consents SET uses = consents.uses + u.n
                 FROM UNNEST($1::text[], $2::bigint[]) AS u(id, n) WHERE consents.consent_id = u.id",
            )
            .bind(ids)
            .bind(counts)
            .execute(&mut **transaction)
            .await?;
        }
        WriteTransaction::Sqlite { transaction, .. } => {
            for (id, n) in used {
                sqlx::query("UPDATE consents SET uses = uses + $1 WHERE consent_id = $2")
                    .bind(n)
                    .bind(id)
                    .execute(&mut **transaction)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The current version of every certificate of `subjects`, by (subject, record type).
async fn current_certificates_of(
    tx: &mut WriteTransaction,
    subjects: &[String],
) -> Result<HashMap<(String, String), Vec<ReleasedCertificate>>> {
    let mut found: HashMap<(String, String), Vec<ReleasedCertificate>> = HashMap::new();
    if subjects.is_empty() {
        return Ok(found);
    }
    const COLUMNS: &str =
        "SELECT c.certificate_id, c.current_record_id, c.record_type, c.department_id, c.signed_at,
                 c.status, c.superseded_by, c.subject_id, r.fields
             FROM certificates c JOIN records r ON r.record_id = c.current_record_id";
    let rows: Vec<ReleasedCertificate> = match tx {
        WriteTransaction::Postgres(transaction) => {
            let rows = sqlx::query(&format!(
                "{COLUMNS} WHERE c.subject_id = ANY($1) ORDER BY c.signed_at"
            ))
            .bind(subjects)
            .fetch_all(&mut **transaction)
            .await?;
            rows.iter().map(released_from_row).collect::<Result<_>>()?
        }
        WriteTransaction::Sqlite { transaction, .. } => {
            let placeholders: Vec<String> = (1..=subjects.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "{COLUMNS} WHERE c.subject_id IN ({}) ORDER BY c.signed_at",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for subject in subjects {
                query = query.bind(subject);
            }
            let rows = query.fetch_all(&mut **transaction).await?;
            rows.iter().map(released_from_row).collect::<Result<_>>()?
        }
    };
    for certificate in rows {
        found
            .entry((certificate.subject.clone(), certificate.record_type.clone()))
            .or_default()
            .push(certificate);
    }
    Ok(found)
}

fn released_from_row(row: &impl RowExt) -> Result<ReleasedCertificate> {
    Ok(ReleasedCertificate {
        certificate_id: text(row, "certificate_id")?,
        record_id: text(row, "current_record_id")?,
        record_type: text(row, "record_type")?,
        issuing_department: text(row, "department_id")?,
        subject: text(row, "subject_id")?,
        signed_at_millis: integer(row, "signed_at")?,
        status: text(row, "status")?,
        superseded_by: optional_text(row, "superseded_by")?,
        fields: row.fields("fields")?,
    })
}

/// The current version of each of `subject`'s certificates of `record_type`.
pub(crate) async fn current_certificates(
    tx: &mut WriteTransaction,
    subject: &str,
    record_type: &RecordType,
) -> Result<Vec<ReleasedCertificate>> {
    on_tx!(tx, |conn| {
        let rows = sqlx::query(
            "SELECT c.certificate_id, c.current_record_id, c.record_type, c.department_id, c.signed_at,
                 c.status, c.superseded_by, c.subject_id, r.fields
             FROM certificates c JOIN records r ON r.record_id = c.current_record_id
             WHERE c.subject_id = $1 AND c.record_type = $2 ORDER BY c.signed_at",
        )
        .bind(subject)
        .bind(record_type.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReleasedCertificate {
                    certificate_id: text(row, "certificate_id")?,
                    record_id: text(row, "current_record_id")?,
                    record_type: text(row, "record_type")?,
                    issuing_department: text(row, "department_id")?,
                    subject: text(row, "subject_id")?,
                    signed_at_millis: integer(row, "signed_at")?,
                    status: text(row, "status")?,
                    superseded_by: optional_text(row, "superseded_by")?,
                    fields: row.fields("fields")?,
                })
            })
            .collect()
    })
}

/// The catalogue entries a lookup batch has read.
type Purposes = HashMap<PurposeCode, Option<Arc<Purpose>>>;

/// Longest subject identifier a lookup may name.
const SUBJECT_MAX_LEN: usize = 64;
/// Most record types one lookup (a bundle) may name.
const RECORD_TYPES_MAX: usize = 10;
/// Most fields one lookup may name.
const FIELDS_MAX: usize = 100;

/// What a caseworker asks for in one lookup.
#[derive(Debug, Clone)]
pub struct LookupAsk {
    pub consent_id: String,
    /// The subject's identifier as the caseworker has it.
    pub subject: String,
    /// One record type, or several for a bundle (一件事一次办), all under the consent.
    pub record_types: Vec<RecordType>,
    /// Why: must be the consent's purpose.
    pub purpose: PurposeCode,
    /// Only these fields, when named.
    pub fields: Option<Vec<String>>,
}

/// The most lookups one transaction serves.
const LOOKUPS_PER_TRANSACTION: usize = 64;

/// A queued lookup and where its answer goes.
#[derive(Debug)]
pub(crate) struct LookupJob {
    caseworker: Actor,
    consent_id: String,
    subject: String,
    record_types: Vec<RecordType>,
    purpose: PurposeCode,
    fields: Option<Vec<String>>,
    reply: tokio::sync::oneshot::Sender<std::result::Result<LookupOutcome, String>>,
}
