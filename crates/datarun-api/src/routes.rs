//! Route handlers. Each starts by authenticating and checking the role.

use crate::{ApiError, ApiState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use datarun_domain::{
    AuditEvent, Consent, DepartmentId, PurposeCode, RecordType, ResidentId, Role, StatusChange,
};
use datarun_store::{
    Actor, AuditFilter, Authentication, ConsentGrant, DelegationGrant, LookupAsk, LookupOutcome,
    NewConsentRequest, RevokeTarget,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Caller(pub Actor);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authenticate(parts, state).await.map(Caller)
    }
}

/// The actor whose token `Authorization: Bearer <token>` carries.
pub(crate) async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Actor, ApiError> {
    let unauthenticated = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            message.to_owned(),
        )
    };
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("send Authorization: Bearer <token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| unauthenticated("the Authorization header must be Bearer <token>"))?;
    match state.store.authenticate(token.trim()).await? {
        Authentication::Valid(actor) => Ok(actor),
        Authentication::Expired => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "the token expired; ask for a new one",
        )),
        Authentication::Unknown => Err(unauthenticated("unknown or revoked token")),
    }
}

/// The bearer token of an authenticated request.
fn bearer(parts: &axum::http::HeaderMap) -> Option<&str> {
    parts
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Ends the caller's own token (logging out), at once on every hub.
pub async fn logout(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    state
        .store
        .revoke_tokens(&caller.actor_id, &RevokeTarget::Token(token))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeTokensBody {
    /// One token, by its text (a leaked token).
    token: Option<String>,
    /// Every live token of one actor (a caseworker who left).
    actor_id: Option<String>,
}

/// Revokes a token or all of an actor's tokens; when it answers, no hub honours them.
pub async fn revoke_tokens(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<RevokeTokensBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Operator)?;
    let target = match body(payload)? {
        RevokeTokensBody {
            token: Some(token),
            actor_id: None,
        } => RevokeTarget::Token(token),
        RevokeTokensBody {
            token: None,
            actor_id: Some(actor_id),
        } => RevokeTarget::Actor(actor_id),
        _ => return Err(ApiError::bad_request("name either token or actor_id")),
    };
    let revoked = state.store.revoke_tokens(&caller.actor_id, &target).await?;
    tracing::info!(actor = %caller.actor_id, revoked, "tokens revoked");
    Ok(Json(json!({ "revoked": revoked })))
}

fn require(caller: &Actor, role: Role) -> Result<(), ApiError> {
    if caller.role == role {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "wrong_role",
            format!(
                "this endpoint is for the {} role; you are {}",
                role.as_str(),
                caller.role.as_str()
            ),
        ))
    }
}

/// The caller's resident ID number, when the caller is a citizen.
fn citizen_id(caller: &Actor) -> Result<&ResidentId, ApiError> {
    require(caller, Role::Citizen)?;
    caller
        .resident_id
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("citizen without ID"))
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers; otherwise 503 naming what is down (the error
/// text of the driver, which names no personal data).
pub async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "ready": true, "checks": { "database": "ok" } })),
        ),
        Err(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "checks": { "database": format!("unavailable: {problem}") },
            })),
        ),
    }
}

pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        (state.metrics)(),
    )
}

/// A JSON object signed by this hub instance (`datarun_domain::signed`).
fn signed(state: &ApiState, value: Value) -> Value {
    match value {
        Value::Object(mut document) => {
            state.signer.sign(&mut document);
            Value::Object(document)
        }
        other => other,
    }
}

/// The public keys of every hub instance on this database, for checking signed
/// documents offline; no token needed.
pub async fn hub_keys(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let keys = state.store.hub_keys().await?;
    Ok(Json(json!({
        "keys": keys
            .iter()
            .map(|k| json!({
                "key_id": k.key_id,
                "algorithm": "Ed25519",
                "public_key": hex_lower(&k.public_key),
                "registered_at_millis": k.registered_at_millis,
            }))
            .collect::<Vec<_>>(),
    })))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn whoami(Caller(caller): Caller) -> Json<Value> {
    Json(json!({
        "actor_id": caller.actor_id,
        "role": caller.role,
        "department": caller.department,
        "display_name": caller.display_name,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Whose data: the citizen themself or a minor child of theirs.
    subject: ResidentId,
    requester_department: DepartmentId,
    #[serde(default)]
    caseworker: Option<String>,
    record_types: Vec<RecordType>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    purpose: PurposeCode,
    /// Defaults to 1: a per-use consent.
    #[serde(default)]
    max_uses: Option<u32>,
    /// Defaults to 24 hours.
    #[serde(default)]
    expires_in_hours: Option<u32>,
}

fn consent_json(consent: &Consent) -> Value {
    json!({
        "consent_id": consent.consent_id,
        "subject": consent.subject,
        "granted_by": consent.granted_by,
        "delegation_id": consent.delegation_id,
        "requester_department": consent.requester_department,
        "caseworker": consent.caseworker,
        "record_types": consent.record_types,
        "fields": consent.fields,
        "schema_versions": consent.schema_versions,
        "purpose": consent.purpose,
        "max_uses": consent.max_uses,
        "uses": consent.uses,
        "status": consent.status_at(datarun_store::now_millis()),
        "expires_at_millis": consent.expires_at_millis,
        "granted_at_millis": consent.granted_at_millis,
        "granted_by_guardian": consent.granted_by != consent.subject && consent.delegation_id.is_none(),
    })
}

pub async fn grant_consent(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<GrantBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&caller, Role::Citizen)?;
    let grant = body(payload)?;
    let hours = i64::from(grant.expires_in_hours.unwrap_or(24));
    let consent = state
        .store
        .grant_consent(
            &caller,
            ConsentGrant {
                subject: grant.subject,
                requester_department: grant.requester_department,
                caseworker: grant.caseworker,
                record_types: grant.record_types,
                fields: grant.fields,
                purpose: grant.purpose,
                max_uses: grant.max_uses.unwrap_or(1),
                expires_at_millis: datarun_store::now_millis() + hours * 3_600_000,
            },
        )
        .await?;
    tracing::info!(actor = %caller.actor_id, consent_id = %consent.consent_id, "consent granted");
    Ok((
        StatusCode::CREATED,
        Json(signed(&state, consent_json(&consent))),
    ))
}

pub async fn list_consents(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    let resident = citizen_id(&caller)?;
    let consents = state.store.consents_of(resident).await?;
    Ok(Json(
        json!({ "consents": consents.iter().map(consent_json).collect::<Vec<_>>() }),
    ))
}

async fn change_consent(
    state: &ApiState,
    caller: &Actor,
    consent_id: &str,
    change: StatusChange,
) -> Result<Json<Value>, ApiError> {
    require(caller, Role::Citizen)?;
    let consent = state
        .store
        .change_consent_status(caller, consent_id, change)
        .await?;
    tracing::info!(actor = %caller.actor_id, consent_id = %consent.consent_id, change = change.event_kind(), "consent changed");
    Ok(Json(signed(state, consent_json(&consent))))
}

/// Revokes a consent for good, from the very next lookup: one call, as granting is.
pub async fn revoke_consent(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(consent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change_consent(&state, &caller, &consent_id, StatusChange::Revoke).await
}

/// Holds a consent: lookups are refused (`consent_paused`) until it is resumed.
pub async fn pause_consent(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(consent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change_consent(&state, &caller, &consent_id, StatusChange::Pause).await
}

pub async fn resume_consent(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(consent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change_consent(&state, &caller, &consent_id, StatusChange::Resume).await
}

/// One consent with its history, for its grantor, its subject, or a caseworker of the
/// department it was granted to; 404 for anyone else.
pub async fn consent_detail(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(consent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some((consent, history)) = state
        .store
        .consent_with_history(&caller, &consent_id)
        .await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "consent_not_found",
            "no consent with that id is yours to see",
        ));
    };
    // The artefact, signed as it stands now; its history beside it.
    let mut body = json!({ "consent": signed(&state, consent_json(&consent)) });
    body["history"] = history
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "occurred_at_millis": e.occurred_at_millis,
                "kind": e.kind,
                "actor": e.actor,
                "outcome": e.outcome,
                "reason": e.reason,
            })
        })
        .collect();
    Ok(Json(body))
}

/// The purpose catalogue: what each purpose may need, and on what legal basis. Any
/// authenticated caller may read it (a citizen's app shows it before a grant).
pub async fn purposes(
    State(state): State<ApiState>,
    Caller(_caller): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "purposes": state.store.purposes().await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequestBody {
    subject: ResidentId,
    record_types: Vec<RecordType>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    purpose: PurposeCode,
    #[serde(default)]
    caseworker: Option<String>,
    /// Defaults to 1.
    #[serde(default)]
    max_uses: Option<u32>,
    /// How long the consent lasts once approved; defaults to 24 hours.
    #[serde(default)]
    expires_in_hours: Option<u32>,
    #[serde(default)]
    note: Option<String>,
}

/// A department (its system or a caseworker) asks a citizen for consent.
pub async fn request_consent(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<ConsentRequestBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !matches!(caller.role, Role::Caseworker | Role::Department) {
        return Err(ApiError::forbidden(
            "wrong_role",
            "this endpoint is for a department's caseworkers and systems",
        ));
    }
    let request = body(payload)?;
    let created = state
        .store
        .request_consent(
            &caller,
            NewConsentRequest {
                subject: request.subject,
                record_types: request.record_types,
                fields: request.fields,
                purpose: request.purpose,
                caseworker: request.caseworker,
                max_uses: request.max_uses.unwrap_or(1),
                valid_for_millis: i64::from(request.expires_in_hours.unwrap_or(24)) * 3_600_000,
                note: request.note,
            },
        )
        .await?;
    tracing::info!(actor = %caller.actor_id, request_id = %created.request_id, "consent requested");
    Ok((StatusCode::CREATED, Json(json!(created))))
}

/// A citizen's requests to decide (about them, their minor children, whoever delegated
/// to them), or a department's own requests.
pub async fn list_consent_requests(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    let requests = match (&caller.resident_id, &caller.department) {
        (Some(citizen), _) => state.store.consent_requests_for(citizen).await?,
        (None, Some(department)) => state.store.consent_requests_by(department).await?,
        _ => {
            return Err(ApiError::forbidden(
                "wrong_role",
                "for citizens and departments",
            ))
        }
    };
    Ok(Json(json!({ "requests": requests })))
}

pub async fn consent_request(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(request_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.consent_request(&caller, &request_id).await? {
        Some(request) => Ok(Json(json!(request))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "request_not_found",
            "no consent request with that id is yours to see",
        )),
    }
}

/// Exactly what approving would release: each certificate with its fields, to whom,
/// why (the purpose's titles and legal basis), until when.
pub async fn preview_consent_request(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(request_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Citizen)?;
    let preview = state
        .store
        .preview_consent_request(&caller, &request_id)
        .await?;
    Ok(Json(json!(preview)))
}

pub async fn approve_consent_request(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(request_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require(&caller, Role::Citizen)?;
    let (request, consent) = state
        .store
        .decide_consent_request(&caller, &request_id, true)
        .await?;
    let consent = consent.map(|c| signed(&state, consent_json(&c)));
    Ok((
        StatusCode::CREATED,
        Json(json!({ "request": request, "consent": consent })),
    ))
}

pub async fn decline_consent_request(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(request_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Citizen)?;
    let (request, _) = state
        .store
        .decide_consent_request(&caller, &request_id, false)
        .await?;
    Ok(Json(json!({ "request": request })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBody {
    /// `social_insurance_enrolment` or `tax_paid`.
    kind: String,
    /// For `tax_paid`: the period, `YYYY-MM-DD`.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// 秒批: a citizen asks for a proof and gets it at once, signed, with its own id.
pub async fn issue_proof(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<ProofBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&caller, Role::Citizen)?;
    let request = body(payload)?;
    let kind = datarun_domain::proof::ProofKind::parse(&request.kind)
        .ok_or_else(|| ApiError::bad_request("kind: social_insurance_enrolment or tax_paid"))?;
    let date = |name: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                datarun_domain::date::CivilDate::parse_iso(t)
                    .ok_or_else(|| ApiError::bad_request(format!("{name}: a date, YYYY-MM-DD")))
            })
            .transpose()
    };
    let period = match (date("from", &request.from)?, date("to", &request.to)?) {
        (Some(from), Some(to)) => Some((from, to)),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("a period names both from and to")),
    };
    let document = state.store.issue_proof(&caller, kind, period).await?;
    tracing::info!(actor = %caller.actor_id, proof_id = %document["proof_id"], "proof issued");
    Ok((StatusCode::CREATED, Json(signed(&state, document))))
}

/// A proof as issued, signed: for its subject, or for a caseworker it was shown to.
pub async fn proof(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(proof_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.proof(&caller, &proof_id).await? {
        Some(document) => Ok(Json(signed(&state, document))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "proof_not_found",
            "no proof with that id is yours to see",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationBody {
    /// The delegate's resident ID number.
    delegate: ResidentId,
    /// `guardian`, `agent` or `relative`.
    relation: String,
    record_types: Vec<RecordType>,
    purposes: Vec<PurposeCode>,
    /// Defaults to 365 days; at most five years.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

fn delegation_json(delegation: &datarun_domain::delegation::Delegation) -> Value {
    json!({
        "delegation_id": delegation.delegation_id,
        "principal": delegation.principal,
        "delegate": delegation.delegate,
        "relation": delegation.relation,
        "record_types": delegation.record_types,
        "purposes": delegation.purposes,
        "expires_at_millis": delegation.expires_at_millis,
        "created_at_millis": delegation.created_at_millis,
        "revoked_at_millis": delegation.revoked_at_millis,
    })
}

/// A citizen registers someone to act for them, within a scope and until an expiry.
pub async fn register_delegation(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<DelegationBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&caller, Role::Citizen)?;
    let request = body(payload)?;
    let relation = datarun_domain::delegation::Relation::parse(&request.relation)
        .ok_or_else(|| ApiError::bad_request("relation: guardian, agent or relative"))?;
    let days = i64::from(request.expires_in_days.unwrap_or(365));
    let delegation = state
        .store
        .register_delegation(
            &caller,
            DelegationGrant {
                delegate: request.delegate,
                relation,
                record_types: request.record_types,
                purposes: request.purposes,
                expires_at_millis: datarun_store::now_millis() + days * 86_400_000,
            },
        )
        .await?;
    tracing::info!(actor = %caller.actor_id, delegation_id = %delegation.delegation_id, "delegation registered");
    Ok((
        StatusCode::CREATED,
        Json(signed(&state, delegation_json(&delegation))),
    ))
}

/// Delegations the caller registered or is named in.
pub async fn list_delegations(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    let resident = citizen_id(&caller)?;
    let delegations = state.store.delegations_of(resident).await?;
    Ok(Json(
        json!({ "delegations": delegations.iter().map(delegation_json).collect::<Vec<_>>() }),
    ))
}

/// The principal revokes, or the delegate renounces, a delegation: at once.
pub async fn revoke_delegation(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    Path(delegation_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Citizen)?;
    let delegation = state
        .store
        .revoke_delegation(&caller, &delegation_id)
        .await?;
    Ok(Json(delegation_json(&delegation)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    consent_id: String,
    /// The subject's identifier as the caseworker has it (from the citizen or the form).
    subject: String,
    /// One record type…
    #[serde(default)]
    record_type: Option<RecordType>,
    /// …or several, for a bundle (一件事一次办): each the subject's, or the grantor's
    /// where the purpose says so.
    #[serde(default)]
    record_types: Option<Vec<RecordType>>,
    /// Why: the consent's purpose.
    purpose: PurposeCode,
    /// Only these fields (each consented and needed by the purpose); default: all the
    /// consent and the purpose allow.
    #[serde(default)]
    fields: Option<Vec<String>>,
}

pub async fn lookup(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    payload: Result<Json<LookupBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Caseworker)?;
    let request = body(payload)?;
    if !datarun_domain::consent::is_consent_id(&request.consent_id) {
        return Err(ApiError::bad_request(
            "consent_id: consent_ followed by 32 lowercase hex digits",
        ));
    }
    let subject = ResidentId::parse(&request.subject)
        .map_err(|error| ApiError::bad_request(format!("subject: {error}")))?;
    let now = std::time::Instant::now();
    if let Err(exceeded) = state
        .quotas
        .take(&caller.actor_id, request.purpose.as_str(), now)
    {
        if exceeded.first {
            // Audited once per dry spell, not once per refused request of a flood.
            state
                .store
                .audit(datarun_store::NewAuditEvent {
                    kind: "quota_exceeded".into(),
                    actor: caller.actor_id.clone(),
                    department: caller.department.as_ref().map(|d| d.to_string()),
                    purpose: Some(request.purpose.to_string()),
                    outcome: "refused".into(),
                    reason: Some(format!("{}_quota", exceeded.which)),
                    detail: json!({ "window_seconds": state.quotas.settings().window.as_secs() }),
                    ..Default::default()
                })
                .await?;
        }
        tracing::warn!(actor = %caller.actor_id, quota = exceeded.which, "lookup quota exceeded");
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "the {} lookup quota is used up; try again in {} s",
                exceeded.which, exceeded.retry_after_secs
            ),
        );
        error.retry_after = Some(exceeded.retry_after_secs);
        return Err(error);
    }
    if let Some(distinct) = state
        .quotas
        .note_subject(&caller.actor_id, subject.as_str(), now)
    {
        let window = state.quotas.settings().harvest_window.as_secs();
        tracing::warn!(actor = %caller.actor_id, distinct_subjects = distinct, window_seconds = window, "possible bulk harvesting");
        state
            .store
            .audit(datarun_store::NewAuditEvent {
                kind: "harvesting_suspected".into(),
                actor: caller.actor_id.clone(),
                department: caller.department.as_ref().map(|d| d.to_string()),
                purpose: Some(request.purpose.to_string()),
                outcome: "alarm".into(),
                detail: json!({
                    "distinct_subjects": distinct,
                    "window_seconds": window,
                    "threshold": state.quotas.settings().harvest_subjects,
                }),
                ..Default::default()
            })
            .await?;
    }
    let record_types = match (request.record_type, request.record_types) {
        (Some(one), None) => vec![one],
        (None, Some(several)) => several,
        _ => {
            return Err(ApiError::bad_request(
                "name either record_type or record_types",
            ))
        }
    };
    match state
        .store
        .lookup(
            &caller,
            LookupAsk {
                consent_id: request.consent_id,
                subject: subject.as_str().to_owned(),
                record_types,
                purpose: request.purpose,
                fields: request.fields,
            },
        )
        .await?
    {
        LookupOutcome::Allowed {
            consent,
            certificates,
            audit_seq,
        } => {
            tracing::info!(actor = %caller.actor_id, consent_id = %consent.consent_id, audit_seq, released = certificates.len(), "lookup allowed");
            Ok(Json(signed(
                &state,
                json!({
                    "audit_seq": audit_seq,
                    "issued_at_millis": datarun_store::now_millis(),
                    "requester": { "department": caller.department, "caseworker": caller.actor_id },
                    "subject": subject.as_str(),
                    "consent": { "consent_id": consent.consent_id, "purpose": consent.purpose, "uses": consent.uses, "max_uses": consent.max_uses },
                    "certificates": certificates,
                }),
            )))
        }
        LookupOutcome::Refused { refusal, audit_seq } => {
            tracing::info!(actor = %caller.actor_id, code = refusal.code(), audit_seq, "lookup refused");
            let mut error = ApiError::forbidden(refusal.code(), refusal.to_string());
            error.audit_seq = Some(audit_seq);
            Err(error)
        }
    }
}

fn event_json(event: &AuditEvent) -> Value {
    let detail: Value = serde_json::from_str(&event.detail).unwrap_or(Value::Null);
    json!({
        "seq": event.seq,
        "occurred_at_millis": event.occurred_at_millis,
        "kind": event.kind,
        "actor": event.actor,
        "department": event.department,
        "subject_ref": event.subject_ref,
        "consent_id": event.consent_id,
        "purpose": event.purpose,
        "outcome": event.outcome,
        "reason": event.reason,
        "detail": detail,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// A resident ID number; the hub turns it into the pseudonym the log stores.
    subject: Option<String>,
    actor: Option<String>,
    department: Option<String>,
    consent_id: Option<String>,
    purpose: Option<String>,
    kind: Option<String>,
    from_millis: Option<i64>,
    to_millis: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit_events(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Auditor)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let subject_ref = match &query.subject {
        Some(subject) => Some(
            state.store.pseudonym(
                ResidentId::parse(subject)
                    .map_err(|error| ApiError::bad_request(format!("subject: {error}")))?
                    .as_str(),
            ),
        ),
        None => None,
    };
    let filter = AuditFilter {
        subject_ref,
        actor: query.actor,
        department: query.department,
        consent_id: query.consent_id,
        purpose: query.purpose,
        kind: query.kind,
        from_millis: query.from_millis,
        to_millis: query.to_millis,
        after_seq: query.after_seq,
        limit: query.limit.unwrap_or(100),
        ..AuditFilter::default()
    };
    let events = state.store.audit_events(&filter).await?;
    Ok(Json(
        json!({ "events": events.iter().map(event_json).collect::<Vec<_>>() }),
    ))
}

pub async fn audit_verify(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Auditor)?;
    Ok(Json(match state.store.verify_audit_chain().await? {
        Ok(events) => json!({ "intact": true, "events": events }),
        Err(chain_break) => json!({ "intact": false, "problem": chain_break.to_string() }),
    }))
}

/// A citizen's access log: who looked at their data (and their minor children's,
/// for whom a certificate names them guardian), when, why, and the outcome.
#[derive(Debug, Deserialize)]
pub struct AccessLogQuery {
    /// Events older than this sequence number (the `next_before` of the previous page).
    before: Option<i64>,
    limit: Option<i64>,
}

/// Most events one access-log page holds.
const ACCESS_LOG_PAGE_MAX: i64 = 500;

/// A citizen's access log: every audit event about them, and about each child whose
/// certificate names them as parent while that child is a minor; newest first, a page
/// at a time, through any number of events.
pub async fn my_access_log(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    query: Result<Query<AccessLogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let resident = citizen_id(&caller)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=ACCESS_LOG_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: from 1 to {ACCESS_LOG_PAGE_MAX}"
        )));
    }
    if query.before.is_some_and(|before| before < 1) {
        return Err(ApiError::bad_request(
            "before: a sequence number from a page",
        ));
    }
    let today = datarun_domain::date::CivilDate::from_unix_millis_cst(datarun_store::now_millis());
    let mut subjects = vec![(resident.as_str().to_owned(), "self")];
    for ward in state.store.wards_of(resident.as_str()).await? {
        // A parent sees a child's entries only while the child is a minor.
        let minor = ResidentId::parse_on(&ward, today)
            .is_ok_and(|id| id.birth_date().years_until(today) < ADULT_AGE);
        if minor {
            subjects.push((ward, "child"));
        }
    }
    let mut entries: Vec<(i64, Value)> = Vec::new();
    for (subject, relation) in subjects {
        let filter = AuditFilter {
            subject_ref: Some(state.store.pseudonym(&subject)),
            before_seq: query.before,
            newest_first: true,
            limit,
            ..AuditFilter::default()
        };
        for e in state.store.audit_events(&filter).await? {
            entries.push((
                e.seq,
                json!({
                    "seq": e.seq,
                    "about": relation,
                    "occurred_at_millis": e.occurred_at_millis,
                    "kind": e.kind,
                    "actor": e.actor,
                    "department": e.department,
                    "purpose": e.purpose,
                    "consent_id": e.consent_id,
                    "outcome": e.outcome,
                    "reason": e.reason,
                }),
            ));
        }
    }
    entries.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    entries.truncate(limit as usize);
    let next_before = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|(seq, _)| *seq))
        .flatten();
    Ok(Json(json!({
        "entries": entries.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        "next_before": next_before,
    })))
}

/// The age from which a child's access log is their own alone.
const ADULT_AGE: i32 = 18;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionQuery {
    reason: Option<String>,
    since_millis: Option<i64>,
    limit: Option<i64>,
}

/// Dead-lettered messages for operators: reason, field path, claimed record id and
/// department, source position and time — never a payload value.
pub async fn rejections(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    query: Result<Query<RejectionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Operator)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    if let Some(reason) = &query.reason {
        if datarun_domain::RejectReason::from_code(reason).is_none() {
            return Err(ApiError::bad_request(format!(
                "reason: {reason:.40} is not a rejection reason code (docs/dead-letter.md)"
            )));
        }
    }
    let filter = datarun_store::RejectionFilter {
        reason: query.reason,
        since_millis: query.since_millis,
        limit: query.limit.unwrap_or(100),
    };
    let entries = state.store.rejections(&filter).await?;
    Ok(Json(json!({ "rejections": entries })))
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Comma-separated record types.
    record_types: String,
    after: Option<i64>,
    limit: Option<i64>,
}

/// Record types one feed read may name.
const FEED_TYPES_MAX: usize = 20;

/// The change feed, for a department's system: every stored record of the record
/// types it is entitled to, in commit order, after a cursor. Every read is audited,
/// refused or not.
pub async fn feed(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Role::Department)?;
    let department = caller
        .department
        .clone()
        .ok_or_else(|| ApiError::bad_request("department system without department"))?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let mut record_types: Vec<RecordType> = Vec::new();
    for name in query.record_types.split(',').take(FEED_TYPES_MAX + 1) {
        let record_type = RecordType::parse(name.trim())
            .map_err(|error| ApiError::bad_request(format!("record_types: {error}")))?;
        if !record_types.contains(&record_type) {
            record_types.push(record_type);
        }
    }
    if record_types.len() > FEED_TYPES_MAX {
        return Err(ApiError::bad_request(format!(
            "record_types: at most {FEED_TYPES_MAX}"
        )));
    }
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("after: a feed position, 0 or more"));
    }
    let limit = query.limit.unwrap_or(500);
    if !(1..=datarun_store::FEED_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: from 1 to {}",
            datarun_store::FEED_PAGE_MAX
        )));
    }
    let mut not_entitled = Vec::new();
    for record_type in &record_types {
        if !state.store.entitled(&department, record_type).await? {
            not_entitled.push(record_type.as_str());
        }
    }
    let names: Vec<&str> = record_types.iter().map(RecordType::as_str).collect();
    let mut event = datarun_store::NewAuditEvent {
        kind: "feed_read".into(),
        actor: caller.actor_id.clone(),
        department: Some(department.to_string()),
        outcome: "allowed".into(),
        ..Default::default()
    };
    if !not_entitled.is_empty() {
        event.outcome = "refused".into();
        event.reason = Some("not_entitled".into());
        event.detail = json!({ "record_types": names, "not_entitled": not_entitled });
        state.store.audit(event).await?;
        return Err(ApiError::forbidden(
            "not_entitled",
            format!(
                "{department} is not entitled to {}; the operator grants entitlements (datarun entitlement grant)",
                not_entitled.join(", ")
            ),
        ));
    }
    let entries = state.store.feed(&record_types, after, limit).await?;
    let next = entries.last().map_or(after, |entry| entry.seq);
    event.detail = json!({
        "record_types": names,
        "after": after,
        "next": next,
        "records": entries.len(),
    });
    state.store.audit(event).await?;
    tracing::info!(actor = %caller.actor_id, %department, after, next, records = entries.len(), "change feed read");
    Ok(Json(json!({
        "records": entries,
        "next": next,
        "more": entries.len() as i64 == limit,
    })))
}
