//! The purpose catalogue: why a department may ask for a citizen's data, on what legal
//! basis, and which fields of which record types that purpose may need. A consent is
//! granted for one purpose and can never release more than the purpose needs, whatever
//! the consent names. The reference services' catalogue is `config/purposes.toml`.

use crate::ids::{PurposeCode, RecordType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One entry of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    pub code: PurposeCode,
    /// The title a citizen reads in Chinese, e.g. 新生儿入户.
    pub title_zh: String,
    pub title_en: String,
    /// The law or regulation that allows the processing.
    pub legal_basis: String,
    /// The fields of each record type the purpose may need.
    pub needs: BTreeMap<RecordType, Vec<String>>,
    /// Whose record each record type is, where not the subject's: for school enrolment,
    /// the parent's household register and residence permit, under the consent the
    /// parent grants for the child.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub whose: BTreeMap<RecordType, Whose>,
}

/// Whose record a purpose needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whose {
    /// The person the consent is about.
    Subject,
    /// The citizen who granted the consent (the subject, or their guardian).
    Grantor,
}

/// Longest title or legal basis, in characters.
pub const PURPOSE_TEXT_MAX: usize = 500;
/// Most record types one purpose may need.
pub const PURPOSE_RECORD_TYPES_MAX: usize = 20;

impl Purpose {
    /// The fields of `record_type` this purpose may need; none when it needs none.
    pub fn fields_for(&self, record_type: &RecordType) -> Option<&[String]> {
        self.needs.get(record_type).map(Vec::as_slice)
    }

    /// Whose record of `record_type` the purpose needs.
    pub fn whose(&self, record_type: &RecordType) -> Whose {
        self.whose
            .get(record_type)
            .copied()
            .unwrap_or(Whose::Subject)
    }

    /// Whether the purpose may need `field` of `record_type`.
    pub fn needs_field(&self, record_type: &RecordType, field: &str) -> bool {
        self.fields_for(record_type)
            .is_some_and(|fields| fields.iter().any(|f| f == field))
    }

    /// The entry's own limits: texts present and bounded, at least one record type,
    /// each with at least one field. Whether the fields exist is the registry's check.
    pub fn check(&self) -> Result<(), String> {
        for (name, text) in [
            ("title_zh", &self.title_zh),
            ("title_en", &self.title_en),
            ("legal_basis", &self.legal_basis),
        ] {
            if text.trim().is_empty() || text.chars().count() > PURPOSE_TEXT_MAX {
                return Err(format!(
                    "purpose {}: {name} must be 1 to {PURPOSE_TEXT_MAX} characters",
                    self.code
                ));
            }
        }
        if self.needs.is_empty() || self.needs.len() > PURPOSE_RECORD_TYPES_MAX {
            return Err(format!(
                "purpose {}: needs 1 to {PURPOSE_RECORD_TYPES_MAX} record types",
                self.code
            ));
        }
        if let Some(record_type) = self.whose.keys().find(|t| !self.needs.contains_key(*t)) {
            return Err(format!(
                "purpose {}: whose names {record_type}, which it does not need",
                self.code
            ));
        }
        if let Some((record_type, _)) = self.needs.iter().find(|(_, f)| f.is_empty()) {
            return Err(format!(
                "purpose {}: {record_type} lists no fields",
                self.code
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purpose_needs_only_the_fields_it_lists() {
        let birth = RecordType::parse("health.birth_certificate").unwrap();
        let purpose = Purpose {
            code: PurposeCode::parse("household_registration").unwrap(),
            title_zh: "新生儿入户".into(),
            title_en: "Registering a newborn".into(),
            legal_basis: "户口登记条例 第七条".into(),
            needs: BTreeMap::from([(birth.clone(), vec!["child_name".into()])]),
            whose: BTreeMap::new(),
        };
        assert!(purpose.check().is_ok());
        assert!(purpose.needs_field(&birth, "child_name"));
        assert!(!purpose.needs_field(&birth, "mother_id_number"));
        let other = RecordType::parse("tax.tax_payment_certificate").unwrap();
        assert!(purpose.fields_for(&other).is_none());
        let empty = Purpose {
            needs: BTreeMap::new(),
            ..purpose.clone()
        };
        assert!(empty.check().is_err());
        let untitled = Purpose {
            title_zh: " ".into(),
            ..purpose
        };
        assert!(untitled.check().is_err());
    }
}
