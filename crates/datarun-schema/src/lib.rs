//! Avro schemas for record types: the only crate that knows Avro exists.
//!
//! A [`RecordSchema`] is an `.avsc` file plus datarun's field annotations
//! (`datarun.identifier`, `datarun.role`, `datarun.rule`, `datarun.sensitivity`).
//! It decodes a payload and checks every rule the schema states, so a payload that
//! merely parses is not enough to be stored.

pub mod compat;

use apache_avro::types::Value;
use apache_avro::Schema;
use datarun_domain::date::CivilDate;
use datarun_domain::sensitivity::FieldSensitivities;
use datarun_domain::{
    CertificateId, CreditCode, RecordType, RejectReason, Rejection, ResidentId, Sensitivity,
};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema is not valid Avro: {0}")]
    Avro(String),
    #[error("schema must be an Avro record with fields")]
    NotARecord,
    #[error("field {field}: {message}")]
    Field { field: String, message: String },
    #[error("schema has no field marked \"datarun.role\": \"{0}\"")]
    MissingRole(&'static str),
    #[error("row value for {field}: {message}")]
    Row { field: String, message: String },
}

pub type Result<T, E = SchemaError> = std::result::Result<T, E>;

/// The largest payload the broker decodes (bytes): the bound every message is held to.
pub const MAX_PAYLOAD_BYTES: usize = datarun_domain::limits::MAX_VALUE_BYTES;

/// The largest schema definition the registry accepts (bytes).
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// What identifies a schema in the registry: the SHA-256 of its JSON without
/// insignificant whitespace, so the same schema sent with other formatting gets the same
/// id, while any difference in fields, order, defaults or datarun's annotations (which
/// Avro's parsing canonical form would drop) makes another schema. Text that is not JSON
/// (never registered: registration parses first) is hashed as it is.
pub fn fingerprint(definition: &str) -> [u8; 32] {
    let normalized = serde_json::from_str::<Json>(definition)
        .map(|json| json.to_string())
        .unwrap_or_else(|_| definition.to_owned());
    let digest = ring::digest::digest(&ring::digest::SHA256, normalized.as_bytes());
    let mut print = [0u8; 32];
    print.copy_from_slice(digest.as_ref());
    print
}

/// Which identifier parser a string field must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind {
    ResidentId,
    CreditCode,
    CertificateId,
    /// A taxpayer: a citizen's resident ID or a business's unified social credit code.
    TaxpayerId,
}

/// What a field means to the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRole {
    /// The certificate's own identifier; one per schema.
    Certificate,
    /// The person or business the record is about; one per schema.
    Subject,
    /// A person who may act for a minor subject (parents on a birth certificate).
    Guardian,
    /// The certificate's status: an enum with `VALID` among its symbols (and, as the
    /// reference schemas have it, `REVOKED` 吊销, `CANCELLED` 注销, `SUPERSEDED`). A
    /// department changes a certificate's status by publishing a new version with it.
    Status,
    /// The certificate that replaced this one, when its status is `SUPERSEDED`.
    SupersededBy,
}

/// A certificate's status when its schema has no status field.
pub const STATUS_VALID: &str = "VALID";

/// The field types datarun's schemas use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Int,
    Long,
    Boolean,
    Date,
    TimestampMillis,
    Enum(Vec<String>),
    Nullable(Box<FieldKind>),
}

#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    pub identifier: Option<IdentifierKind>,
    pub role: Option<FieldRole>,
    pub not_in_future: bool,
    /// From `datarun.sensitivity`; `personal` when the field does not say.
    pub sensitivity: Sensitivity,
    /// The field has an Avro default, so a connector may leave it unmapped.
    pub has_default: bool,
    /// That default as source text (a string, enum symbol, number or boolean; a null
    /// default is empty text).
    pub default_text: Option<String>,
}

/// A payload that passed every rule, rendered as JSON for storage and release.
#[derive(Debug, Clone)]
pub struct ValidatedPayload {
    pub certificate_id: CertificateId,
    pub subject: String,
    pub guardians: Vec<ResidentId>,
    /// The status field's value, `VALID` when the schema has none.
    pub status: String,
    pub superseded_by: Option<String>,
    pub fields: Map<String, Json>,
}

#[derive(Debug, Clone)]
pub struct RecordSchema {
    pub record_type: RecordType,
    pub version: u32,
    pub definition: String,
    avro: Schema,
    fields: Vec<FieldSpec>,
}

/// The kind of an Avro decoding failure, without the values apache-avro may quote: its
/// message up to the first colon, when that part is plain words.
fn decode_failure(error: &apache_avro::Error) -> String {
    let message = error.to_string();
    let head = message.split(':').next().unwrap_or_default().trim();
    let plain = !head.is_empty()
        && head.len() <= 80
        && head
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '-');
    if plain {
        head.to_lowercase()
    } else {
        "malformed data".into()
    }
}

fn field_error(field: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Field {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn kind_of(field: &str, json: &Json) -> Result<FieldKind> {
    match json {
        Json::String(name) => match name.as_str() {
            "string" => Ok(FieldKind::String),
            "int" => Ok(FieldKind::Int),
            "long" => Ok(FieldKind::Long),
            "boolean" => Ok(FieldKind::Boolean),
            other => Err(field_error(field, format!("type {other} is not supported"))),
        },
        Json::Array(variants) => match variants.as_slice() {
            [Json::String(null), other] if null == "null" => {
                Ok(FieldKind::Nullable(Box::new(kind_of(field, other)?)))
            }
            _ => Err(field_error(
                field,
                "only [\"null\", T] unions are supported",
            )),
        },
        Json::Object(object) => {
            let logical = object.get("logicalType").and_then(Json::as_str);
            match (object.get("type").and_then(Json::as_str), logical) {
                (Some("int"), Some("date")) => Ok(FieldKind::Date),
                (Some("long"), Some("timestamp-millis")) => Ok(FieldKind::TimestampMillis),
                (Some("enum"), _) => Ok(FieldKind::Enum(
                    object
                        .get("symbols")
                        .and_then(Json::as_array)
                        .map(|s| {
                            s.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                )),
                (Some(inner), None) => kind_of(field, &Json::String(inner.to_owned())),
                _ => Err(field_error(field, "this logical type is not supported")),
            }
        }
        _ => Err(field_error(
            field,
            "type must be a name, a union or an object",
        )),
    }
}

impl RecordSchema {
    /// Parses an `.avsc` definition for `record_type` version `version`.
    pub fn parse(record_type: RecordType, version: u32, definition: &str) -> Result<Self> {
        let avro = Schema::parse_str(definition).map_err(|e| SchemaError::Avro(e.to_string()))?;
        let json: Json = serde_json::from_str(definition)?;
        let raw_fields = json
            .get("fields")
            .and_then(Json::as_array)
            .filter(|_| json.get("type").and_then(Json::as_str) == Some("record"))
            .ok_or(SchemaError::NotARecord)?;
        let mut fields = Vec::with_capacity(raw_fields.len());
        for raw in raw_fields {
            let name = raw
                .get("name")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned();
            let kind = kind_of(&name, raw.get("type").unwrap_or(&Json::Null))?;
            let identifier = match raw.get("datarun.identifier").and_then(Json::as_str) {
                None => None,
                Some("resident_id") => Some(IdentifierKind::ResidentId),
                Some("credit_code") => Some(IdentifierKind::CreditCode),
                Some("certificate_id") => Some(IdentifierKind::CertificateId),
                Some("taxpayer_id") => Some(IdentifierKind::TaxpayerId),
                Some(other) => {
                    return Err(field_error(
                        &name,
                        format!("unknown identifier kind {other}"),
                    ))
                }
            };
            let role = match raw.get("datarun.role").and_then(Json::as_str) {
                None => None,
                Some("certificate") => Some(FieldRole::Certificate),
                Some("subject") => Some(FieldRole::Subject),
                Some("guardian") => Some(FieldRole::Guardian),
                Some("status") => match &kind {
                    FieldKind::Enum(symbols) if symbols.iter().any(|s| s == STATUS_VALID) => {
                        Some(FieldRole::Status)
                    }
                    _ => {
                        return Err(field_error(
                            &name,
                            "a status field is an enum with VALID among its symbols",
                        ))
                    }
                },
                Some("superseded_by") => match &kind {
                    FieldKind::Nullable(inner) if **inner == FieldKind::String => {
                        Some(FieldRole::SupersededBy)
                    }
                    _ => {
                        return Err(field_error(
                            &name,
                            "a superseded_by field is a [\"null\", \"string\"] union",
                        ))
                    }
                },
                Some(other) => return Err(field_error(&name, format!("unknown role {other}"))),
            };
            let not_in_future = match raw.get("datarun.rule").and_then(Json::as_str) {
                None => false,
                Some("not_in_future") => true,
                Some(other) => return Err(field_error(&name, format!("unknown rule {other}"))),
            };
            let sensitivity =
                Sensitivity::of_field(raw).map_err(|message| field_error(&name, message))?;
            let default = raw.get("default");
            let default_text = default.and_then(|value| match value {
                Json::String(text) => Some(text.clone()),
                Json::Number(number) => Some(number.to_string()),
                Json::Bool(flag) => Some(flag.to_string()),
                _ => None,
            });
            fields.push(FieldSpec {
                name,
                kind,
                identifier,
                role,
                not_in_future,
                sensitivity,
                has_default: default.is_some(),
                default_text,
            });
        }
        for (role, label) in [
            (FieldRole::Status, "status"),
            (FieldRole::SupersededBy, "superseded_by"),
        ] {
            if fields.iter().filter(|f| f.role == Some(role)).count() > 1 {
                return Err(SchemaError::Field {
                    field: label.into(),
                    message: format!("at most one field has the {label} role"),
                });
            }
        }
        for (role, label) in [
            (FieldRole::Certificate, "certificate"),
            (FieldRole::Subject, "subject"),
        ] {
            if !fields.iter().any(|f| f.role == Some(role)) {
                return Err(SchemaError::MissingRole(label));
            }
        }
        Ok(Self {
            record_type,
            version,
            definition: definition.to_owned(),
            avro,
            fields,
        })
    }

    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// Each top-level field's name and sensitivity, in schema order.
    pub fn sensitivities(&self) -> FieldSensitivities {
        self.fields
            .iter()
            .map(|f| (f.name.clone(), f.sensitivity))
            .collect()
    }

    /// The first top-level field whose bytes do not decode, for a payload that does
    /// not: the record's fields are decoded one after the other, as they are laid out.
    fn undecodable_field(&self, payload: &[u8]) -> Option<String> {
        let Schema::Record(record) = &self.avro else {
            return None;
        };
        let mut reader = payload;
        for field in &record.fields {
            let decoded = apache_avro::from_avro_datum_schemata(
                &field.schema,
                vec![&self.avro],
                &mut reader,
                None,
            );
            // A string cut short decodes as null (see `validate`): that field broke.
            let cut_short = matches!(decoded, Ok(Value::Null))
                && !matches!(field.schema, Schema::Null | Schema::Union(_));
            if decoded.is_err() || cut_short {
                return Some(field.name.clone());
            }
        }
        None
    }

    /// Decodes an Avro binary datum and checks every rule, with `today` for date rules.
    pub fn validate(
        &self,
        payload: &[u8],
        today: CivilDate,
    ) -> Result<ValidatedPayload, Rejection> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Rejection::new(
                RejectReason::Oversized,
                format!(
                    "payload is {} bytes, the limit is {MAX_PAYLOAD_BYTES}",
                    payload.len()
                ),
            ));
        }
        let mut reader = payload;
        let value = match apache_avro::from_avro_datum(&self.avro, &mut reader, None) {
            Ok(value) => value,
            Err(error) => {
                // apache-avro's messages can quote the bytes or values it choked on:
                // only the kind of failure leaves the hub, at the field where it failed.
                let message = format!(
                    "payload does not decode as {} version {} ({})",
                    self.record_type,
                    self.version,
                    decode_failure(&error)
                );
                return Err(match self.undecodable_field(payload) {
                    Some(field) => Rejection::at(RejectReason::SchemaInvalid, field, message),
                    None => Rejection::new(RejectReason::SchemaInvalid, message),
                });
            }
        };
        if !reader.is_empty() {
            return Err(Rejection::new(
                RejectReason::SchemaInvalid,
                format!("{} bytes left over after the record", reader.len()),
            ));
        }
        let Value::Record(values) = value else {
            return Err(Rejection::new(
                RejectReason::SchemaInvalid,
                "payload is not a record",
            ));
        };
        let mut fields = Map::new();
        let mut certificate_id = None;
        let mut subject = None;
        let mut guardians = Vec::new();
        let mut status = STATUS_VALID.to_owned();
        let mut superseded_by = None;
        for (spec, (_, value)) in self.fields.iter().zip(values) {
            if matches!(value, Value::Null) && !matches!(spec.kind, FieldKind::Nullable(_)) {
                // apache-avro decodes a string cut short by the end of the payload as
                // null rather than failing: a required field is never null.
                return Err(Rejection::at(
                    RejectReason::SchemaInvalid,
                    &spec.name,
                    "the payload ends inside this field",
                ));
            }
            let json = to_json(value);
            if holds_nul(&json) {
                // Valid Avro, but no certificate text holds one, and PostgreSQL's text
                // type cannot hold it; a reader taking the text as a C string would stop
                // there.
                return Err(Rejection::at(
                    RejectReason::SchemaInvalid,
                    &spec.name,
                    "text contains the character U+0000 (NUL)",
                ));
            }
            if let Some(kind) = spec.identifier {
                if let Some(text) = json.as_str() {
                    let parsed = match kind {
                        IdentifierKind::ResidentId => ResidentId::parse_on(text, today).map(|id| {
                            if spec.role == Some(FieldRole::Guardian) {
                                guardians.push(id);
                            }
                        }),
                        IdentifierKind::CreditCode => CreditCode::parse(text).map(drop),
                        // Only the certificate's own identifier names it (another field,
                        // like superseded_by, may hold a certificate id too).
                        IdentifierKind::CertificateId => CertificateId::parse(text).map(|id| {
                            if spec.role == Some(FieldRole::Certificate) {
                                certificate_id = Some(id);
                            }
                        }),
                        // A resident ID is all digits but perhaps a final X; a credit code
                        // starts with its registering authority's code and is checked as one.
                        IdentifierKind::TaxpayerId => match ResidentId::parse_on(text, today) {
                            Ok(_) => Ok(()),
                            Err(_) if !text.bytes().take(17).all(|b| b.is_ascii_digit()) => {
                                CreditCode::parse(text).map(drop)
                            }
                            Err(error) => match CreditCode::parse(text) {
                                Ok(_) => Ok(()),
                                Err(_) => Err(error),
                            },
                        },
                    };
                    parsed.map_err(|error| {
                        Rejection::at(
                            RejectReason::IdentifierInvalid,
                            &spec.name,
                            error.without_values(),
                        )
                    })?;
                }
            }
            match spec.role {
                Some(FieldRole::Subject) => subject = json.as_str().map(str::to_owned),
                Some(FieldRole::Status) => {
                    if let Some(symbol) = json.as_str() {
                        symbol.clone_into(&mut status);
                    }
                }
                Some(FieldRole::SupersededBy) => {
                    if let Some(id) = json.as_str() {
                        CertificateId::parse(id).map_err(|error| {
                            Rejection::at(
                                RejectReason::IdentifierInvalid,
                                &spec.name,
                                error.without_values(),
                            )
                        })?;
                        superseded_by = Some(id.to_owned());
                    }
                }
                _ => {}
            }
            if spec.not_in_future {
                if let Some(date) = json.as_str().and_then(CivilDate::parse_iso) {
                    if date > today {
                        return Err(Rejection::at(
                            RejectReason::SchemaInvalid,
                            &spec.name,
                            "date is in the future",
                        ));
                    }
                }
            }
            fields.insert(spec.name.clone(), json);
        }
        let (Some(certificate_id), Some(subject)) = (certificate_id, subject) else {
            return Err(Rejection::new(
                RejectReason::SchemaInvalid,
                "payload lacks its certificate identifier or subject",
            ));
        };
        let names_successor = self
            .fields
            .iter()
            .any(|f| f.role == Some(FieldRole::SupersededBy));
        if status == "SUPERSEDED" && names_successor && superseded_by.is_none() {
            return Err(Rejection::new(
                RejectReason::SchemaInvalid,
                "a superseded certificate names the certificate that replaced it",
            ));
        }
        Ok(ValidatedPayload {
            certificate_id,
            subject,
            guardians,
            status,
            superseded_by,
            fields,
        })
    }

    /// Encodes one source row (field name → text, empty = null) as an Avro datum; a
    /// field the row does not name takes its schema default.
    pub fn encode_row(&self, row: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let mut values = Vec::with_capacity(self.fields.len());
        for spec in &self.fields {
            let text = row
                .get(&spec.name)
                .or(spec.default_text.as_ref())
                .map(String::as_str)
                .unwrap_or("");
            let value = to_avro(&spec.kind, text).map_err(|message| SchemaError::Row {
                field: spec.name.clone(),
                message,
            })?;
            values.push((spec.name.clone(), value));
        }
        apache_avro::to_avro_datum(&self.avro, Value::Record(values))
            .map_err(|error| SchemaError::Avro(error.to_string()))
    }
}

fn to_avro(kind: &FieldKind, text: &str) -> std::result::Result<Value, String> {
    let number = |text: &str| {
        text.parse::<i64>()
            .map_err(|_| format!("'{text}' is not a whole number"))
    };
    Ok(match kind {
        FieldKind::Nullable(inner) if text.is_empty() => {
            let _ = inner;
            Value::Union(0, Box::new(Value::Null))
        }
        FieldKind::Nullable(inner) => Value::Union(1, Box::new(to_avro(inner, text)?)),
        FieldKind::String => Value::String(text.to_owned()),
        FieldKind::Int => {
            Value::Int(i32::try_from(number(text)?).map_err(|_| "out of int range".to_owned())?)
        }
        FieldKind::Long => Value::Long(number(text)?),
        FieldKind::Boolean => match text {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err("must be true or false".into()),
        },
        FieldKind::Date => {
            let date =
                CivilDate::parse_iso(text).ok_or_else(|| "must be a date YYYY-MM-DD".to_owned())?;
            Value::Date(date.days_since_epoch() as i32)
        }
        FieldKind::TimestampMillis => Value::TimestampMillis(number(text)?),
        FieldKind::Enum(symbols) => {
            let index = symbols
                .iter()
                .position(|s| s == text)
                .ok_or_else(|| format!("must be one of {}", symbols.join(", ")))?;
            Value::Enum(index as u32, text.to_owned())
        }
    })
}

/// Whether any text in `json` holds U+0000.
fn holds_nul(json: &Json) -> bool {
    match json {
        Json::String(text) => text.contains('\0'),
        Json::Array(items) => items.iter().any(holds_nul),
        Json::Object(fields) => fields.values().any(holds_nul),
        Json::Null | Json::Bool(_) | Json::Number(_) => false,
    }
}

fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Long(i) | Value::TimestampMillis(i) => Json::from(i),
        Value::Float(f) => Json::from(f),
        Value::Double(f) => Json::from(f),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Date(days) => {
            Json::String(CivilDate::from_days_since_epoch(i64::from(days)).to_string())
        }
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Record(fields) => {
            Json::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIRTH: &str = include_str!("../../../schemas/health/birth_certificate.v1.avsc");

    fn schema() -> RecordSchema {
        RecordSchema::parse(
            RecordType::parse("health.birth_certificate").unwrap(),
            1,
            BIRTH,
        )
        .unwrap()
    }

    fn today() -> CivilDate {
        CivilDate::new(2026, 11, 22).unwrap()
    }

    fn row() -> BTreeMap<String, String> {
        [
            (
                "certificate_id",
                CertificateId::build("H001", "440100", 2015, 7)
                    .unwrap()
                    .to_string(),
            ),
            ("child_name", "王小明".into()),
            ("child_sex", "MALE".into()),
            ("child_id_number", "440303201506303948".into()),
            ("date_of_birth", "2015-06-30".into()),
            ("place_of_birth", "广东省广州市越秀区".into()),
            ("birth_weight_grams", "3300".into()),
            ("institution", "广州市妇女儿童医疗中心".into()),
            ("mother_name", "李芳".into()),
            ("mother_id_number", "440104198503125841".into()),
            ("father_name", "".into()),
            ("father_id_number", "".into()),
            ("issue_date", "2015-07-02".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn a_row_round_trips_through_avro() {
        let schema = schema();
        let payload = schema.encode_row(&row()).unwrap();
        let valid = schema.validate(&payload, today()).unwrap();
        assert_eq!(valid.subject, "440303201506303948");
        assert_eq!(valid.guardians.len(), 1);
        assert_eq!(valid.fields["date_of_birth"], "2015-06-30");
        assert_eq!(valid.fields["child_sex"], "MALE");
        assert_eq!(valid.fields["father_name"], Json::Null);
    }

    #[test]
    fn a_body_that_does_not_decode_names_the_field_where_it_breaks() {
        let schema = schema();
        let row = row();
        let payload = schema.encode_row(&row).unwrap();
        // The enum's index follows two strings (each a one-byte length and its bytes).
        let sex_at = 1 + row["certificate_id"].len() + 1 + row["child_name"].len();
        let mut bad_enum = payload.clone();
        bad_enum[sex_at] = 0x7e; // index 63 of two symbols
        let truncated = payload[..payload.len() - 1].to_vec();
        let cut_in_first_string = payload[..3].to_vec();
        for (body, field) in [
            (bad_enum, "child_sex"),
            (truncated, "issue_date"),
            (cut_in_first_string, "certificate_id"),
        ] {
            let rejection = schema.validate(&body, today()).unwrap_err();
            assert_eq!(
                (rejection.reason, rejection.field.as_deref()),
                (RejectReason::SchemaInvalid, Some(field)),
                "{rejection}"
            );
            assert!(rejection.message.contains("does not decode"), "{rejection}");
        }
    }

    /// apache-avro reads a string cut short by the end of the payload as null; a payload
    /// whose last field is such a string must still be refused.
    #[test]
    fn a_required_string_cut_short_at_the_end_is_refused() {
        let schema = RecordSchema::parse(
            RecordType::parse("health.test").unwrap(),
            1,
            r#"{"type": "record", "name": "T", "fields": [
                {"name": "id", "type": "string", "datarun.role": "certificate"},
                {"name": "who", "type": "string", "datarun.role": "subject"}]}"#,
        )
        .unwrap();
        // "ab" then a string that says 5 bytes and has 2.
        let rejection = schema
            .validate(&[4, b'a', b'b', 10, b'x', b'y'], today())
            .unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::SchemaInvalid, Some("who")),
            "{rejection}"
        );
    }

    fn check(change: (&str, &str), reason: RejectReason, field: Option<&str>) {
        let schema = schema();
        let mut row = row();
        row.insert(change.0.to_owned(), change.1.to_owned());
        let payload = schema.encode_row(&row).unwrap();
        let rejection = schema.validate(&payload, today()).unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (reason, field),
            "{rejection}"
        );
    }

    #[test]
    fn rule_violations_name_the_field() {
        check(
            ("child_id_number", "440303201506303940"),
            RejectReason::IdentifierInvalid,
            Some("child_id_number"),
        );
        check(
            ("mother_id_number", "440104199002300116"),
            RejectReason::IdentifierInvalid,
            Some("mother_id_number"),
        );
        check(
            ("father_id_number", "44010419850312123"),
            RejectReason::IdentifierInvalid,
            Some("father_id_number"),
        );
        check(
            ("certificate_id", "H001-440100-2015-00000007-0"),
            RejectReason::IdentifierInvalid,
            Some("certificate_id"),
        );
        check(
            ("issue_date", "2031-01-01"),
            RejectReason::SchemaInvalid,
            Some("issue_date"),
        );
        check(
            ("father_name", "王\0明"),
            RejectReason::SchemaInvalid,
            Some("father_name"),
        );
    }

    #[test]
    fn garbage_and_truncated_payloads_are_schema_invalid() {
        let schema = schema();
        let payload = schema.encode_row(&row()).unwrap();
        for bad in [
            &payload[..payload.len() / 2],
            &[0xff, 0xff, 0xff][..],
            &[][..],
        ] {
            assert_eq!(
                schema.validate(bad, today()).unwrap_err().reason,
                RejectReason::SchemaInvalid
            );
        }
        let mut trailing = payload.clone();
        trailing.push(0);
        assert_eq!(
            schema.validate(&trailing, today()).unwrap_err().reason,
            RejectReason::SchemaInvalid
        );
        let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            schema.validate(&huge, today()).unwrap_err().reason,
            RejectReason::Oversized
        );
    }

    #[test]
    fn bad_rows_are_refused_before_signing() {
        let schema = schema();
        let mut bad = row();
        bad.insert("child_sex".into(), "UNKNOWN".into());
        assert!(schema
            .encode_row(&bad)
            .unwrap_err()
            .to_string()
            .contains("child_sex"));
        let mut bad = row();
        bad.insert("date_of_birth".into(), "2015-02-30".into());
        assert!(schema
            .encode_row(&bad)
            .unwrap_err()
            .to_string()
            .contains("date_of_birth"));
    }

    #[test]
    fn schema_without_subject_is_refused() {
        let definition = r#"{"type":"record","name":"X","fields":[{"name":"a","type":"string","datarun.role":"certificate"}]}"#;
        let error =
            RecordSchema::parse(RecordType::parse("a.b").unwrap(), 1, definition).unwrap_err();
        assert_eq!(
            error.to_string(),
            "schema has no field marked \"datarun.role\": \"subject\""
        );
    }
}
