//! The schema registry, in Confluent Schema Registry's REST dialect, under `/registry`:
//! a stock serializer or `SchemaRegistryClient` pointed at `http://<hub>/registry` finds
//! each record type's schema under its topic's subject (`<topic>-value`,
//! TopicNameStrategy). Bodies are `application/vnd.schemaregistry.v1+json`; errors are
//! `{"error_code", "message"}` with Confluent's codes. Reads are for department
//! systems, operators and auditors; writes for operators, and audited.
//!
//! [`register`] is the one way a schema version is added: the REST API, `datarun schema
//! register` and `datarun up` all call it.

use crate::routes::authenticate;
use crate::ApiState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use datarun_domain::{sensitivity, RecordType, Role};
use datarun_schema::compat::{self, Compatibility};
use datarun_store::{Actor, Deletion, Registration, Store};
use serde::Deserialize;
use serde_json::{json, Value};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A registry error: HTTP status and Confluent's `error_code`.
#[derive(Debug)]
pub struct RegistryError {
    pub status: StatusCode,
    pub error_code: u32,
    pub message: String,
}

impl RegistryError {
    fn new(status: StatusCode, error_code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error_code,
            message: message.into(),
        }
    }

    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{}' not found.", shown(subject)),
        )
    }

    fn version_not_found(subject: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }

    fn invalid_schema(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {message}"),
        )
    }

    fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42205, message)
    }
}

impl From<datarun_store::StoreError> for RegistryError {
    fn from(error: datarun_store::StoreError) -> Self {
        tracing::error!(%error, "registry request failed inside the hub");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend data store; the operator has the details",
        )
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({ "error_code": self.error_code, "message": self.message });
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

type Reply = Result<Response, RegistryError>;

fn reply(value: Value) -> Reply {
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.to_string(),
    )
        .into_response())
}

/// The authenticated caller, refused in the registry's error format.
pub struct RegistryCaller(pub Actor);

impl FromRequestParts<ApiState> for RegistryCaller {
    type Rejection = RegistryError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, RegistryError> {
        authenticate(parts, state)
            .await
            .map(RegistryCaller)
            .map_err(|error| RegistryError::new(error.status, 40101, error.message))
    }
}

impl RegistryCaller {
    fn may_read(&self) -> Result<(), RegistryError> {
        match self.0.role {
            Role::Department | Role::Operator | Role::Auditor => Ok(()),
            other => Err(RegistryError::new(
                StatusCode::FORBIDDEN,
                40301,
                format!(
                    "the registry is for department systems, operators and auditors; you are {}",
                    other.as_str()
                ),
            )),
        }
    }

    fn may_write(&self) -> Result<(), RegistryError> {
        if self.0.role == Role::Operator {
            Ok(())
        } else {
            Err(RegistryError::new(
                StatusCode::FORBIDDEN,
                40301,
                format!(
                    "changing the registry is for the operator role; you are {}",
                    self.0.role.as_str()
                ),
            ))
        }
    }
}

/// The subject of a record type: its topic's name and `-value`.
pub fn subject_of(state: &ApiState, record_type: &str) -> String {
    format!("{}{record_type}-value", state.records_topic_prefix)
}

/// A subject as an error message quotes it: at most 200 characters of whatever the
/// caller sent.
fn shown(subject: &str) -> String {
    subject.chars().take(200).collect()
}

/// The record type of a record type's subject, or 40401.
fn subject_record_type(state: &ApiState, subject: &str) -> Result<RecordType, RegistryError> {
    record_type_of(state, subject).ok_or_else(|| RegistryError::subject_not_found(subject))
}

/// The record type a subject names, if it is a record type's subject.
fn record_type_of(state: &ApiState, subject: &str) -> Option<RecordType> {
    let name = subject
        .strip_prefix(state.records_topic_prefix.as_str())?
        .strip_suffix("-value")?;
    RecordType::parse(name).ok()
}

/// The mode that applies to `record_type`: its own, else the global one, else BACKWARD.
pub async fn effective_compatibility(
    store: &Store,
    record_type: &str,
) -> Result<Compatibility, RegistryError> {
    let mode = match store.compatibility(Some(record_type)).await? {
        Some(mode) => Some(mode),
        None => store.compatibility(None).await?,
    };
    Ok(mode
        .as_deref()
        .and_then(Compatibility::parse)
        .unwrap_or_default())
}

/// Whether a registration may raise field sensitivity (`allowSensitive=true`,
/// `--allow-sensitive`): a version that adds a `sensitive` field or puts a field's
/// tag up is refused unless it says so, and the raises it was allowed are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensitivityRaises {
    Refuse,
    Allow,
}

/// Registers `definition` as `record_type`'s next version (or finds it registered):
/// bounded, valid Avro, valid under datarun's annotations, compatible under the record
/// type's mode with its live versions, and raising no field's sensitivity unless
/// `raises` allows it; audited as `actor`.
pub async fn register(
    store: &Store,
    actor: &str,
    record_type: &RecordType,
    definition: &str,
    raises: SensitivityRaises,
) -> Result<Registration, RegistryError> {
    if definition.len() > datarun_schema::MAX_DEFINITION_BYTES {
        return Err(RegistryError::invalid_schema(format!(
            "the schema is {} bytes, the limit is {}",
            definition.len(),
            datarun_schema::MAX_DEFINITION_BYTES
        )));
    }
    let candidate = datarun_schema::RecordSchema::parse(record_type.clone(), 0, definition)
        .map_err(RegistryError::invalid_schema)?
        .sensitivities();
    let fingerprint = datarun_schema::fingerprint(definition);
    let department = datarun_domain::DepartmentId::parse(record_type.department_part())
        .map_err(|e| RegistryError::not_permitted(e.to_string()))?;
    if !store.department_exists(&department).await? {
        return Err(RegistryError::not_permitted(format!(
            "department {department} is not registered"
        )));
    }
    let mode = effective_compatibility(store, record_type.as_str()).await?;
    let registered = store
        .register_schema_version(
            actor,
            record_type.as_str(),
            definition,
            fingerprint,
            |live| {
                let existing: Vec<(u32, &str)> = live
                    .iter()
                    .map(|v| (v.version, v.definition.as_str()))
                    .collect();
                let refusals = compat::check_definitions(mode, definition, &existing)
                    .map_err(RegistryError::invalid_schema)?;
                if !refusals.is_empty() {
                    return Err(incompatible(mode, &refusals));
                }
                let previous = live
                    .last()
                    .map(|v| sensitivity::field_sensitivities(&v.definition))
                    .transpose()
                    .map_err(RegistryError::invalid_schema)?;
                let raised = sensitivity::raises(previous.as_deref(), &candidate);
                if raised.is_empty() {
                    return Ok(Value::Null);
                }
                if raises == SensitivityRaises::Refuse {
                    let details: Vec<String> = raised.iter().map(ToString::to_string).collect();
                    return Err(RegistryError::not_permitted(format!(
                        "the schema {}: register it with allowSensitive=true (datarun schema register --allow-sensitive) to accept this",
                        details.join("; ")
                    )));
                }
                Ok(json!({ "sensitivity_raised": raised }))
            },
        )
        .await?;
    registered
}

fn incompatible(mode: Compatibility, refusals: &[compat::Refusal]) -> RegistryError {
    let details: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    RegistryError::new(
        StatusCode::CONFLICT,
        409,
        format!(
            "Schema being registered is incompatible with an earlier schema ({mode}): {}",
            details.join("; ")
        ),
    )
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/registry/subjects", get(list_subjects))
        .route(
            "/registry/subjects/{subject}",
            post(lookup_schema).delete(delete_subject),
        )
        .route(
            "/registry/subjects/{subject}/versions",
            get(list_versions).post(register_version),
        )
        .route(
            "/registry/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/registry/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/registry/schemas/ids/{id}", get(get_schema_by_id))
        .route(
            "/registry/schemas/ids/{id}/versions",
            get(get_schema_versions_by_id),
        )
        .route(
            "/registry/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route(
            "/registry/compatibility/subjects/{subject}/versions",
            post(check_compatibility_all),
        )
        .route(
            "/registry/config",
            get(get_global_config).put(put_global_config),
        )
        .route(
            "/registry/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/registry/mode", get(get_mode))
        .route("/registry/mode/{subject}", get(get_mode))
}

/// The query parameters the registry's endpoints read; others (`normalize`, `format`,
/// …) are accepted and ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    #[serde(default, deserialize_with = "flag")]
    deleted: bool,
    #[serde(default, deserialize_with = "flag")]
    verbose: bool,
    #[serde(default, deserialize_with = "flag")]
    default_to_global: bool,
    #[serde(default, deserialize_with = "flag")]
    permanent: bool,
    /// datarun's own: a registration may raise field sensitivity.
    #[serde(default, deserialize_with = "flag")]
    allow_sensitive: bool,
}

/// A boolean query parameter as Confluent's registry reads it: `true` in any case is
/// true, anything else false (Python's client sends `deleted=False`).
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(text.eq_ignore_ascii_case("true"))
}

/// The query string, refused in the registry's error format.
struct RegistryQuery(ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for RegistryQuery {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, RegistryError> {
        Query::<ListQuery>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| RegistryQuery(query))
            .map_err(|rejection| {
                RegistryError::new(StatusCode::BAD_REQUEST, 400, rejection.body_text())
            })
    }
}

/// A registration or lookup body: `{"schema": "...", "schemaType": "AVRO"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

fn schema_body(body: &[u8]) -> Result<SchemaBody, RegistryError> {
    if body.len() > datarun_schema::MAX_DEFINITION_BYTES + 4096 {
        return Err(RegistryError::invalid_schema(
            "the request body is too large",
        ));
    }
    let parsed: SchemaBody = serde_json::from_slice(body).map_err(|e| {
        RegistryError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: the body is not {{\"schema\": \"...\"}} ({e})"),
        )
    })?;
    if let Some(kind) = parsed.schema_type.as_deref().filter(|k| *k != "AVRO") {
        return Err(RegistryError::invalid_schema(format!(
            "schemaType {kind} is not supported; the hub's record types are Avro"
        )));
    }
    if parsed.references.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(RegistryError::invalid_schema(
            "schema references are not supported; a record type's schema is self-contained",
        ));
    }
    Ok(parsed)
}

/// The record type of a subject that must exist (have a version, live or as asked).
async fn existing_subject(
    state: &ApiState,
    subject: &str,
    include_deleted: bool,
) -> Result<(RecordType, Vec<datarun_store::SchemaVersion>), RegistryError> {
    let record_type = subject_record_type(state, subject)?;
    let versions = state
        .store
        .schema_versions(record_type.as_str(), include_deleted)
        .await?;
    if versions.is_empty() {
        return Err(RegistryError::subject_not_found(subject));
    }
    Ok((record_type, versions))
}

/// `latest`, `-1` or a version number from 1 to 2^31 - 1.
fn pick_version<'a>(
    subject: &str,
    versions: &'a [datarun_store::SchemaVersion],
    version: &str,
) -> Result<&'a datarun_store::SchemaVersion, RegistryError> {
    if version == "latest" || version == "-1" {
        return versions
            .last()
            .ok_or_else(|| RegistryError::version_not_found(subject, version));
    }
    let number: u32 = version
        .parse()
        .ok()
        .filter(|n| (1..=i32::MAX as u32).contains(n))
        .ok_or_else(|| {
            RegistryError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "The specified version '{}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"",
                    version.chars().take(32).collect::<String>()
                ),
            )
        })?;
    versions
        .iter()
        .find(|v| v.version == number)
        .ok_or_else(|| RegistryError::version_not_found(subject, version))
}

fn version_json(subject: &str, version: &datarun_store::SchemaVersion) -> Value {
    json!({
        "subject": subject,
        "id": version.schema_id,
        "version": version.version,
        "schema": version.definition,
        "metadata": sensitivity_metadata(&version.definition),
    })
}

/// Each field's sensitivity as Confluent's schema metadata tags: the field's full path
/// (`<namespace>.<Record>.<field>`) to its tag (`public`, `personal` or `sensitive`),
/// so a client reads them without parsing datarun's attributes out of the schema.
fn sensitivity_metadata(definition: &str) -> Value {
    let Ok(fields) = sensitivity::field_sensitivities(definition) else {
        return Value::Null;
    };
    let json: Value = serde_json::from_str(definition).unwrap_or_default();
    let name = json.get("name").and_then(Value::as_str).unwrap_or_default();
    let record = match json.get("namespace").and_then(Value::as_str) {
        Some(namespace) if !namespace.is_empty() && !name.contains('.') => {
            format!("{namespace}.{name}")
        }
        _ => name.to_owned(),
    };
    let tags: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(field, tag)| (format!("{record}.{field}"), json!([tag.as_str()])))
        .collect();
    json!({ "tags": tags })
}

async fn list_subjects(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_read()?;
    let subjects: Vec<String> = state
        .store
        .schema_record_types(query.deleted)
        .await?
        .iter()
        .map(|record_type| subject_of(&state, record_type))
        .collect();
    reply(json!(subjects))
}

async fn list_versions(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_read()?;
    let (_, versions) = existing_subject(&state, &subject, query.deleted).await?;
    reply(json!(versions
        .iter()
        .map(|v| v.version)
        .collect::<Vec<_>>()))
}

async fn register_version(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_write()?;
    let record_type = record_type_of(&state, &subject).ok_or_else(|| {
        RegistryError::not_permitted(format!(
            "subject '{}' is not a record type's subject: subjects are {}<department>.<record>-value",
            shown(&subject),
            state.records_topic_prefix
        ))
    })?;
    let body = schema_body(&body)?;
    let raises = if query.allow_sensitive {
        SensitivityRaises::Allow
    } else {
        SensitivityRaises::Refuse
    };
    let registration = register(
        &state.store,
        &caller.0.actor_id,
        &record_type,
        &body.schema,
        raises,
    )
    .await?;
    let (version, schema_id) = match registration {
        Registration::Added {
            version, schema_id, ..
        } => {
            tracing::info!(record_type = %record_type, version, schema_id, actor = %caller.0.actor_id, "schema registered");
            (version, schema_id)
        }
        Registration::Existing { version, schema_id } => (version, schema_id),
    };
    reply(json!({ "id": schema_id, "version": version }))
}

async fn get_version(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path((subject, version)): Path<(String, String)>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_read()?;
    let (_, versions) = existing_subject(&state, &subject, query.deleted).await?;
    let found = pick_version(&subject, &versions, &version)?;
    reply(version_json(&subject, found))
}

async fn get_version_schema(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    caller.may_read()?;
    let (_, versions) = existing_subject(&state, &subject, false).await?;
    let found = pick_version(&subject, &versions, &version)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.definition.clone(),
    )
        .into_response())
}

/// Is this schema registered under the subject? Its version, or 40403.
async fn lookup_schema(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_read()?;
    let body = schema_body(&body)?;
    let (_, versions) = existing_subject(&state, &subject, query.deleted).await?;
    let fingerprint = datarun_schema::fingerprint(&body.schema);
    let found = versions
        .iter()
        .rev()
        .find(|v| datarun_schema::fingerprint(&v.definition) == fingerprint);
    match found {
        Some(version) => reply(version_json(&subject, version)),
        None => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            40403,
            "Schema not found",
        )),
    }
}

async fn delete_version(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path((subject, version)): Path<(String, String)>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_write()?;
    refuse_permanent(query.permanent)?;
    let (record_type, versions) = existing_subject(&state, &subject, false).await?;
    let found = pick_version(&subject, &versions, &version)?.version;
    match state
        .store
        .delete_schema_version(&caller.0.actor_id, record_type.as_str(), found)
        .await?
    {
        Deletion::Deleted => reply(json!(found)),
        Deletion::NotFound => Err(RegistryError::version_not_found(&subject, &version)),
        Deletion::InUse { records } => Err(in_use(&subject, found, records)),
    }
}

async fn delete_subject(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_write()?;
    refuse_permanent(query.permanent)?;
    let (record_type, versions) = existing_subject(&state, &subject, false).await?;
    // All or nothing: refuse before deleting any when one is in use.
    for version in &versions {
        let used = state
            .store
            .records_written_with(record_type.as_str(), version.version)
            .await?;
        if used > 0 {
            return Err(in_use(&subject, version.version, used));
        }
    }
    let mut deleted = Vec::new();
    for version in &versions {
        match state
            .store
            .delete_schema_version(&caller.0.actor_id, record_type.as_str(), version.version)
            .await?
        {
            Deletion::Deleted => deleted.push(version.version),
            Deletion::NotFound => {}
            Deletion::InUse { records } => return Err(in_use(&subject, version.version, records)),
        }
    }
    reply(json!(deleted))
}

fn refuse_permanent(permanent: bool) -> Result<(), RegistryError> {
    if permanent {
        Err(RegistryError::not_permitted(
            "the hub never deletes a schema permanently: stored records and the audit trail refer to it; soft deletion hides a version",
        ))
    } else {
        Ok(())
    }
}

fn in_use(subject: &str, version: u32, records: i64) -> RegistryError {
    RegistryError::not_permitted(format!(
        "version {version} of subject '{subject}' is the writer's schema of {records} stored records and cannot be deleted"
    ))
}

async fn get_schema_by_id(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(id): Path<String>,
) -> Reply {
    caller.may_read()?;
    let id = schema_id(&id)?;
    match state.store.schema_by_id(id).await? {
        Some(definition) => reply(json!({
            "schema": definition,
            "metadata": sensitivity_metadata(&definition),
        })),
        None => Err(schema_not_found(id)),
    }
}

async fn get_schema_versions_by_id(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(id): Path<String>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_read()?;
    let id = schema_id(&id)?;
    if state.store.schema_by_id(id).await?.is_none() {
        return Err(schema_not_found(id));
    }
    let versions = state.store.versions_of_schema(id, query.deleted).await?;
    reply(json!(versions
        .iter()
        .map(|v| json!({ "subject": subject_of(&state, &v.record_type), "version": v.version }))
        .collect::<Vec<_>>()))
}

fn schema_id(text: &str) -> Result<i64, RegistryError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| (1..=i64::from(i32::MAX)).contains(id))
        .ok_or_else(|| {
            RegistryError::new(
                StatusCode::NOT_FOUND,
                40403,
                "Schema not found: an id is a number from 1",
            )
        })
}

fn schema_not_found(id: i64) -> RegistryError {
    RegistryError::new(
        StatusCode::NOT_FOUND,
        40403,
        format!("Schema {id} not found"),
    )
}

/// Checks a schema against one version of the subject, under the subject's mode (its
/// direction; the one version named, as Confluent's endpoint does).
async fn check_compatibility(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path((subject, version)): Path<(String, String)>,
    RegistryQuery(query): RegistryQuery,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_read()?;
    let body = schema_body(&body)?;
    let (record_type, versions) = existing_subject(&state, &subject, false).await?;
    let against = pick_version(&subject, &versions, &version)?;
    let mode = effective_compatibility(&state.store, record_type.as_str()).await?;
    compatibility_reply(
        mode,
        &body.schema,
        &[(against.version, against.definition.as_str())],
        query.verbose,
    )
}

/// Checks a schema against every version the subject's mode involves.
async fn check_compatibility_all(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_read()?;
    let body = schema_body(&body)?;
    let (record_type, versions) = existing_subject(&state, &subject, false).await?;
    let mode = effective_compatibility(&state.store, record_type.as_str()).await?;
    let existing: Vec<(u32, &str)> = versions
        .iter()
        .map(|v| (v.version, v.definition.as_str()))
        .collect();
    compatibility_reply(mode, &body.schema, &existing, query.verbose)
}

fn compatibility_reply(
    mode: Compatibility,
    schema: &str,
    existing: &[(u32, &str)],
    verbose: bool,
) -> Reply {
    if schema.len() > datarun_schema::MAX_DEFINITION_BYTES {
        return Err(RegistryError::invalid_schema("the schema is too large"));
    }
    let refusals =
        compat::check_definitions(mode, schema, existing).map_err(RegistryError::invalid_schema)?;
    let mut answer = json!({ "is_compatible": refusals.is_empty() });
    if verbose {
        answer["messages"] = json!(refusals.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    reply(answer)
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn config_body(body: &[u8]) -> Result<Compatibility, RegistryError> {
    let parsed: ConfigBody = serde_json::from_slice(body).map_err(|_| {
        RegistryError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level: send {\"compatibility\": \"BACKWARD\"}",
        )
    })?;
    Compatibility::parse(&parsed.compatibility).ok_or_else(|| {
        RegistryError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are {}",
                Compatibility::ALL.map(|m| m.as_str()).join(", ")
            ),
        )
    })
}

async fn get_global_config(State(state): State<ApiState>, caller: RegistryCaller) -> Reply {
    caller.may_read()?;
    let mode = state
        .store
        .compatibility(None)
        .await?
        .unwrap_or_else(|| Compatibility::default().as_str().to_owned());
    reply(json!({ "compatibilityLevel": mode }))
}

async fn put_global_config(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_write()?;
    let mode = config_body(&body)?;
    state
        .store
        .set_compatibility(&caller.0.actor_id, None, mode.as_str())
        .await?;
    reply(json!({ "compatibility": mode.as_str() }))
}

async fn get_subject_config(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    RegistryQuery(query): RegistryQuery,
) -> Reply {
    caller.may_read()?;
    let record_type = subject_record_type(&state, &subject)?;
    match state
        .store
        .compatibility(Some(record_type.as_str()))
        .await?
    {
        Some(mode) => reply(json!({ "compatibilityLevel": mode })),
        None if query.default_to_global => {
            let mode = effective_compatibility(&state.store, record_type.as_str()).await?;
            reply(json!({ "compatibilityLevel": mode.as_str() }))
        }
        None => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    caller.may_write()?;
    let record_type = subject_record_type(&state, &subject)?;
    let mode = config_body(&body)?;
    state
        .store
        .set_compatibility(
            &caller.0.actor_id,
            Some(record_type.as_str()),
            mode.as_str(),
        )
        .await?;
    reply(json!({ "compatibility": mode.as_str() }))
}

async fn delete_subject_config(
    State(state): State<ApiState>,
    caller: RegistryCaller,
    Path(subject): Path<String>,
) -> Reply {
    caller.may_write()?;
    let record_type = subject_record_type(&state, &subject)?;
    match state
        .store
        .delete_compatibility(&caller.0.actor_id, record_type.as_str())
        .await?
    {
        Some(mode) => reply(json!({ "compatibilityLevel": mode })),
        None => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

/// The hub's registry is always writable by operators (no IMPORT or READONLY mode).
async fn get_mode(caller: RegistryCaller) -> Reply {
    caller.may_read()?;
    reply(json!({ "mode": "READWRITE" }))
}
