//! Consents and consented lookups. A lookup decides, counts the use, reads the
//! certificates and appends its audit event in one transaction, so concurrent uses of
//! a one-use consent cannot both succeed and no access goes unaudited.

use crate::audit::{append, insert_event, lock_head, reserve, set_head, NewAuditEvent};
use crate::schemas::{latest_live_version, version_at, versions_from};
use crate::{
    integer, now_millis, on_pool, on_tx, optional_text, random_id, text, Actor, Result, RowExt,
    Store, StoreError, WriteTransaction,
};
use datarun_domain::consent::{MAX_CONSENT_MILLIS, MAX_CONSENT_USES};
use datarun_domain::date::CivilDate;
use datarun_domain::{
    AuditEvent, Consent, ConsentStatus, DepartmentId, LookupRefusal, LookupRequest, PurposeCode,
    RecordType, ReleasePolicy, ResidentId,
};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The release policies a lookup batch has read, by record type and granted version.
type Policies = HashMap<(String, u32), Arc<ReleasePolicy>>;

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

const CONSENT_COLUMNS: &str = "consent_id, subject_id, granted_by, requester_department, caseworker_id, record_types, fields_json, purpose_code, max_uses, uses, status, expires_at, granted_at, schema_versions";

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
    async fn release_policy(
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
        if !self.purpose_exists(&grant.purpose).await? {
            return Err(StoreError::Invalid(format!(
                "purpose {} is not in the purpose catalogue",
                grant.purpose
            )));
        }
        if !self.department_exists(&grant.requester_department).await? {
            return Err(StoreError::Invalid(format!(
                "department {} is not registered",
                grant.requester_department
            )));
        }
        if grant.subject != *grantor_id {
            let today = CivilDate::from_unix_millis_cst(now);
            let minor = grant.subject.birth_date().years_until(today) < AGE_OF_MAJORITY;
            if !minor
                || !self
                    .is_guardian_of(grantor_id.as_str(), grant.subject.as_str())
                    .await?
            {
                return Err(StoreError::Forbidden(
                    "you may grant consent only for yourself or for a minor whose certificate names you as parent".into(),
                ));
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
        let consent = Consent {
            consent_id: random_id("consent")?,
            subject: grant.subject.as_str().to_owned(),
            granted_by: grantor_id.as_str().to_owned(),
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
            "INSERT INTO consents ({CONSENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
                    "by_guardian": consent.granted_by != consent.subject,
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

    /// Revokes a consent at once; only its grantor or its subject may.
    pub async fn revoke_consent(&self, citizen: &Actor, consent_id: &str) -> Result<Consent> {
        let resident = citizen
            .resident_id
            .as_ref()
            .ok_or_else(|| StoreError::Forbidden("only a citizen revokes consent".into()))?;
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let Some(mut consent) = load_consent(&mut tx, consent_id).await? else {
            return Err(StoreError::NotFound("consent".into()));
        };
        if consent.granted_by != resident.as_str() && consent.subject != resident.as_str() {
            return Err(StoreError::NotFound("consent".into()));
        }
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "UPDATE consents SET status = 'revoked', revoked_at = $1 WHERE consent_id = $2",
            )
            .bind(now_millis())
            .bind(consent_id)
            .execute(&mut *conn)
            .await?;
        });
        append(
            &mut tx,
            place,
            self.consent_event("consent_revoked", citizen, &consent, json!({})),
        )
        .await?;
        tx.commit().await?;
        consent.status = ConsentStatus::Revoked;
        Ok(consent)
    }

    /// A caseworker's lookup of `subject`'s certificates of `record_type` under
    /// `consent_id`. Lookups queue for one worker that runs whatever has queued (up to
    /// `LOOKUPS_PER_TRANSACTION`) in one transaction, in order: each is decided, counted
    /// and audited as if alone, and they commit together, so a one-use consent still
    /// serves exactly one of them and the chain head is written once per transaction.
    pub async fn lookup(
        &self,
        caseworker: &Actor,
        consent_id: &str,
        subject: &str,
        record_type: &RecordType,
    ) -> Result<LookupOutcome> {
        if caseworker.department.is_none() {
            return Err(StoreError::Forbidden(
                "only a caseworker of a department looks up".into(),
            ));
        }
        // Checked before the group-committed batch: a malformed id (a NUL byte, say)
        // that reached PostgreSQL would fail the whole batch of other callers' lookups.
        if !datarun_domain::consent::is_consent_id(consent_id) {
            return Err(StoreError::Invalid(
                "consent_id: consent_ followed by 32 lowercase hex digits".into(),
            ));
        }
        let queue = self.lookup_queue.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(self.clone().run_lookups(receiver));
            sender
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = LookupJob {
            caseworker: caseworker.clone(),
            consent_id: consent_id.to_owned(),
            subject: subject.to_owned(),
            record_type: record_type.clone(),
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
            match self.lookup_batch(&jobs).await {
                Ok(outcomes) => {
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
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

    async fn lookup_batch(&self, jobs: &[LookupJob]) -> Result<Vec<LookupOutcome>> {
        let mut tx = self.begin_write().await?;
        let (mut seq, mut hash) = lock_head(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Release policies are read once per batch: the registry cannot change under
        // the transaction's view of it.
        let mut policies = Policies::new();
        for job in jobs {
            let (outcome, event) = self
                .lookup_in(&mut tx, job, seq + 1, &hash, &mut policies)
                .await?;
            seq = event.seq;
            hash = event.hash;
            outcomes.push(outcome);
        }
        set_head(&mut tx, seq, &hash).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// One lookup inside the batch's transaction, audited as event `seq` after `prev_hash`.
    async fn lookup_in(
        &self,
        tx: &mut WriteTransaction,
        job: &LookupJob,
        seq: i64,
        prev_hash: &str,
        policies: &mut Policies,
    ) -> Result<(LookupOutcome, AuditEvent)> {
        let LookupJob {
            caseworker,
            consent_id,
            subject,
            record_type,
            ..
        } = job;
        let (consent_id, subject) = (consent_id.as_str(), subject.as_str());
        let department = caseworker.department.as_ref().ok_or_else(|| {
            StoreError::Forbidden("only a caseworker of a department looks up".into())
        })?;
        let now = now_millis();
        let consent = load_consent(tx, consent_id).await?;
        let request = LookupRequest {
            caseworker: &caseworker.actor_id,
            department,
            subject,
            record_type,
            now_millis: now,
        };
        let decision = match &consent {
            None => Err(LookupRefusal::ConsentNotFound),
            Some(consent) => consent.check_lookup(&request),
        };
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
                    Err(LookupRefusal::UsedUp {
                        uses: max_uses,
                        max_uses,
                    })
                }
            }
            Err(refusal) => Err(refusal),
        };
        let purpose = consent
            .as_ref()
            .filter(|c| &c.requester_department == department)
            .map(|c| c.purpose.to_string());
        let mut event = NewAuditEvent {
            kind: "lookup".into(),
            actor: caseworker.actor_id.clone(),
            department: Some(department.to_string()),
            subject_ref: Some(self.pseudonym(subject)),
            consent_id: Some(consent_id.to_owned()),
            purpose,
            outcome: "allowed".into(),
            reason: None,
            detail: json!({ "record_type": record_type }),
        };
        let outcome = match (decision, consent) {
            (Ok(()), Some(mut consent)) => {
                let current = on_tx!(tx, |conn| {
                    let rows = sqlx::query(
                        "SELECT c.certificate_id, c.current_record_id, c.record_type, c.department_id, c.signed_at,
                             c.status, c.superseded_by, r.fields
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
                                signed_at_millis: integer(row, "signed_at")?,
                                status: text(row, "status")?,
                                superseded_by: optional_text(row, "superseded_by")?,
                                fields: row.fields("fields")?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?
                });
                let policy = self
                    .release_policy(tx, &consent, record_type, policies)
                    .await?;
                let certificates: Vec<ReleasedCertificate> = current
                    .into_iter()
                    .map(|certificate| ReleasedCertificate {
                        fields: consent.release_fields(certificate.fields, &policy),
                        ..certificate
                    })
                    .collect();
                event.detail = json!({
                    "record_type": record_type,
                    "certificate_ids": certificates.iter().map(|c| &c.certificate_id).collect::<Vec<_>>(),
                });
                let audited = insert_event(tx, seq, prev_hash, event).await?;
                consent.uses += 1;
                let outcome = LookupOutcome::Allowed {
                    consent: Box::new(consent),
                    certificates,
                    audit_seq: audited.seq,
                };
                (outcome, audited)
            }
            (decision, _) => {
                let refusal = decision.err().unwrap_or(LookupRefusal::ConsentNotFound);
                event.outcome = "refused".into();
                event.reason = Some(refusal.code().into());
                let audited = insert_event(tx, seq, prev_hash, event).await?;
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

/// The most lookups one transaction serves.
const LOOKUPS_PER_TRANSACTION: usize = 64;

/// A queued lookup and where its answer goes.
#[derive(Debug)]
pub(crate) struct LookupJob {
    caseworker: Actor,
    consent_id: String,
    subject: String,
    record_type: RecordType,
    reply: tokio::sync::oneshot::Sender<std::result::Result<LookupOutcome, String>>,
}
