//! How sensitive a record field is, as its schema declares it, and what a new schema
//! version changes about that.
//!
//! Each top-level field of a record type's schema carries `"datarun.sensitivity"`:
//! `public`, `personal` or `sensitive`. A field without the attribute is `personal`, the
//! cautious reading: released under an ordinary consent, never treated as public.
//! `health`, which schemas before the registry used, reads as `sensitive`.

use serde::Serialize;
use serde_json::Value;

/// The schema attribute that carries a field's sensitivity.
pub const ATTRIBUTE: &str = "datarun.sensitivity";

/// A field's sensitivity, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// May be shown to anyone the record type is shown to (a certificate's status).
    Public,
    /// About a person: released under a consent that covers the record type.
    Personal,
    /// Health, criminal, financial or similar: released only under a consent that
    /// names the field.
    Sensitive,
}

impl Sensitivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Personal => "personal",
            Self::Sensitive => "sensitive",
        }
    }

    /// `public`, `personal`, `sensitive`; the legacy `health` is `sensitive`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "public" => Some(Self::Public),
            "personal" => Some(Self::Personal),
            "sensitive" | "health" => Some(Self::Sensitive),
            _ => None,
        }
    }

    /// The sensitivity a field's JSON declares; `personal` when it declares none.
    pub fn of_field(field: &Value) -> Result<Self, String> {
        match field.get(ATTRIBUTE) {
            None => Ok(Self::Personal),
            Some(Value::String(text)) => Self::parse(text).ok_or_else(|| {
                format!(
                    "{ATTRIBUTE} must be public, personal or sensitive, not {}",
                    text.chars().take(40).collect::<String>()
                )
            }),
            Some(_) => Err(format!("{ATTRIBUTE} must be a string")),
        }
    }
}

impl std::fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record schema's top-level fields with their sensitivity, in schema order.
pub type FieldSensitivities = Vec<(String, Sensitivity)>;

/// The `fields` of a record schema definition (JSON).
fn top_level_fields(definition: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str::<Value>(definition) {
        Ok(Value::Object(mut record)) => match record.remove("fields") {
            Some(Value::Array(fields)) => Ok(fields),
            _ => Err("schema is not a record with fields".into()),
        },
        Ok(_) => Err("schema is not a record with fields".into()),
        Err(e) => Err(format!("schema is not JSON: {e}")),
    }
}

/// The top-level fields of a record schema definition (JSON) and their sensitivity.
pub fn field_sensitivities(definition: &str) -> Result<FieldSensitivities, String> {
    top_level_fields(definition)?
        .iter()
        .map(|field| {
            let name = field
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a field has no name")?;
            let sensitivity = Sensitivity::of_field(field)
                .map_err(|message| format!("field {name}: {message}"))?;
            Ok((name.to_owned(), sensitivity))
        })
        .collect()
}

/// The defaults of a record schema definition's top-level fields that have one, as a
/// reader of that version sees a record written before the field existed (Avro's
/// schema resolution): a `date` field's default (days since 1970) reads as its ISO date,
/// as stored fields are; any other default as written.
pub fn field_defaults(definition: &str) -> Result<Vec<(String, Value)>, String> {
    Ok(top_level_fields(definition)?
        .iter()
        .filter_map(|field| {
            let name = field.get("name")?.as_str()?;
            let default = field.get("default")?;
            let is_date = |t: &Value| t.get("logicalType").and_then(Value::as_str) == Some("date");
            let date = match field.get("type") {
                Some(Value::Array(variants)) => variants.first().is_some_and(is_date),
                Some(other) => is_date(other),
                None => false,
            };
            let value = match default.as_i64() {
                Some(days) if date => {
                    Value::String(crate::date::CivilDate::from_days_since_epoch(days).to_string())
                }
                _ => default.clone(),
            };
            Some((name.to_owned(), value))
        })
        .collect())
}

/// What a new schema version raises: a field it adds as `sensitive`, or one whose
/// sensitivity it puts up. Registering a raise must be accepted explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SensitivityRaise {
    pub field: String,
    /// The field's sensitivity in the previous version; none for a new field.
    pub from: Option<Sensitivity>,
    pub to: Sensitivity,
}

impl std::fmt::Display for SensitivityRaise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.from {
            None => write!(f, "adds {} field {}", self.to, self.field),
            Some(from) => write!(f, "raises field {} from {from} to {}", self.field, self.to),
        }
    }
}

/// What `next` raises against `previous` (the subject's latest version; none for its
/// first version, where every sensitive field is added).
pub fn raises(
    previous: Option<&[(String, Sensitivity)]>,
    next: &[(String, Sensitivity)],
) -> Vec<SensitivityRaise> {
    next.iter()
        .filter_map(|(field, to)| {
            let from = previous.and_then(|fields| {
                fields
                    .iter()
                    .find(|(name, _)| name == field)
                    .map(|(_, sensitivity)| *sensitivity)
            });
            let raised = match from {
                None => *to == Sensitivity::Sensitive,
                Some(from) => *to > from,
            };
            raised.then(|| SensitivityRaise {
                field: field.clone(),
                from,
                to: *to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, Sensitivity)]) -> FieldSensitivities {
        list.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
    }

    #[test]
    fn a_field_without_the_attribute_is_personal_and_health_is_sensitive() {
        let parsed = field_sensitivities(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"string"},
                {"name":"b","type":"string","datarun.sensitivity":"public"},
                {"name":"c","type":"int","datarun.sensitivity":"health"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            fields(&[
                ("a", Sensitivity::Personal),
                ("b", Sensitivity::Public),
                ("c", Sensitivity::Sensitive)
            ])
        );
    }

    #[test]
    fn an_unknown_tag_is_refused_with_the_field_named() {
        let error = field_sensitivities(
            r#"{"type":"record","name":"R","fields":[{"name":"x","type":"string","datarun.sensitivity":"secret"}]}"#,
        )
        .unwrap_err();
        assert!(error.contains("field x") && error.contains("public, personal or sensitive"));
        let error = field_sensitivities(
            r#"{"type":"record","name":"R","fields":[{"name":"x","type":"string","datarun.sensitivity":3}]}"#,
        )
        .unwrap_err();
        assert!(error.contains("must be a string"));
    }

    #[test]
    fn defaults_read_as_stored_fields_are() {
        let defaults = field_defaults(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"string"},
                {"name":"b","type":["null","string"],"default":null},
                {"name":"c","type":"int","default":7},
                {"name":"d","type":{"type":"int","logicalType":"date"},"default":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            defaults,
            vec![
                ("b".to_owned(), Value::Null),
                ("c".to_owned(), serde_json::json!(7)),
                ("d".to_owned(), serde_json::json!("1970-01-01")),
            ]
        );
    }

    #[test]
    fn raises_are_new_sensitive_fields_and_higher_tags_only() {
        let v1 = fields(&[
            ("name", Sensitivity::Personal),
            ("status", Sensitivity::Public),
            ("weight", Sensitivity::Sensitive),
        ]);
        let v2 = fields(&[
            ("name", Sensitivity::Personal),
            ("status", Sensitivity::Personal),
            ("weight", Sensitivity::Personal),
            ("diagnosis", Sensitivity::Sensitive),
            ("nickname", Sensitivity::Personal),
        ]);
        assert_eq!(
            raises(Some(&v1), &v2),
            vec![
                SensitivityRaise {
                    field: "status".into(),
                    from: Some(Sensitivity::Public),
                    to: Sensitivity::Personal
                },
                SensitivityRaise {
                    field: "diagnosis".into(),
                    from: None,
                    to: Sensitivity::Sensitive
                },
            ]
        );
        assert_eq!(raises(Some(&v2), &v2), vec![]);
        // A first version adds every field: only its sensitive ones are raises.
        assert_eq!(
            raises(None, &v1)
                .iter()
                .map(|r| r.field.as_str())
                .collect::<Vec<_>>(),
            vec!["weight"]
        );
    }
}
