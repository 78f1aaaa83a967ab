//! Consent as an artefact, and the decision whether a lookup may use it.
//!
//! The decision is pure; the store makes it atomic by deciding and counting the use
//! inside one transaction.

use crate::ids::{DepartmentId, PurposeCode, RecordType};
use crate::sensitivity::Sensitivity;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Active,
    Revoked,
}

impl ConsentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// Who may see whose data, what, why, until when and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    pub consent_id: String,
    /// The person whose data is released.
    pub subject: String,
    /// The citizen who granted it: the subject, or a guardian of the subject.
    pub granted_by: String,
    pub requester_department: DepartmentId,
    /// When set, only this caseworker of the department may use it.
    pub caseworker: Option<String>,
    pub record_types: Vec<RecordType>,
    /// When set, only these payload fields are released.
    pub fields: Option<Vec<String>>,
    /// The schema version of each record type the consent was granted against: fields
    /// a later version adds are never released under it.
    pub schema_versions: BTreeMap<String, u32>,
    pub purpose: PurposeCode,
    pub max_uses: u32,
    pub uses: u32,
    pub status: ConsentStatus,
    pub expires_at_millis: i64,
    pub granted_at_millis: i64,
}

/// Whether `text` is a consent id as the hub issues them: `consent_` and 32 lowercase
/// hex digits. Checked before any lookup reaches SQL.
pub fn is_consent_id(text: &str) -> bool {
    text.len() == 40
        && text.starts_with("consent_")
        && text[8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a caseworker asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRequest<'a> {
    pub caseworker: &'a str,
    pub department: &'a DepartmentId,
    pub subject: &'a str,
    pub record_type: &'a RecordType,
    pub now_millis: i64,
}

/// Why a lookup was refused; `code` is stable and appears in audit events and API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupRefusal {
    /// Also for a consent granted to another department: a stranger learns neither
    /// which department holds it nor that it exists.
    #[error("no consent with that id was granted to your department")]
    ConsentNotFound,
    #[error("the consent names another caseworker of your department")]
    OtherCaseworker,
    #[error("the consent does not cover this subject")]
    OtherSubject,
    #[error("the consent does not cover record type {0}")]
    RecordTypeNotCovered(String),
    #[error("the consent is used up ({uses} of {max_uses} uses)")]
    UsedUp { uses: u32, max_uses: u32 },
    #[error("the consent was revoked")]
    Revoked,
    #[error("the consent expired")]
    Expired,
}

impl LookupRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::ConsentNotFound => "consent_not_found",
            Self::OtherCaseworker => "consent_other_caseworker",
            Self::OtherSubject => "consent_other_subject",
            Self::RecordTypeNotCovered(_) => "consent_record_type_not_covered",
            Self::UsedUp { .. } => "consent_used_up",
            Self::Revoked => "consent_revoked",
            Self::Expired => "consent_expired",
        }
    }
}

impl Consent {
    /// Decides whether `request` may use this consent once more. Scope is checked
    /// before state so that a stranger learns nothing about a consent's use count.
    pub fn check_lookup(&self, request: &LookupRequest<'_>) -> Result<(), LookupRefusal> {
        if &self.requester_department != request.department {
            return Err(LookupRefusal::ConsentNotFound);
        }
        if self
            .caseworker
            .as_deref()
            .is_some_and(|named| named != request.caseworker)
        {
            return Err(LookupRefusal::OtherCaseworker);
        }
        if self.subject != request.subject {
            return Err(LookupRefusal::OtherSubject);
        }
        if !self.record_types.contains(request.record_type) {
            return Err(LookupRefusal::RecordTypeNotCovered(
                request.record_type.to_string(),
            ));
        }
        if self.status == ConsentStatus::Revoked {
            return Err(LookupRefusal::Revoked);
        }
        if request.now_millis >= self.expires_at_millis {
            return Err(LookupRefusal::Expired);
        }
        if self.uses >= self.max_uses {
            return Err(LookupRefusal::UsedUp {
                uses: self.uses,
                max_uses: self.max_uses,
            });
        }
        Ok(())
    }

    /// Keeps only the fields this consent releases under `policy` (its record type's
    /// fields as of the version it was granted against): a consent that names fields
    /// releases those; one that does not releases every field but the sensitive ones.
    pub fn release_fields(
        &self,
        mut fields: serde_json::Map<String, serde_json::Value>,
        policy: &ReleasePolicy,
    ) -> serde_json::Map<String, serde_json::Value> {
        // A record written before its granted version reads as that version reads it:
        // a field it lacks takes the field's default.
        for (name, default) in &policy.defaults {
            if !fields.contains_key(name) {
                fields.insert(name.clone(), default.clone());
            }
        }
        fields
            .into_iter()
            .filter(|(name, _)| match (policy.sensitivity(name), &self.fields) {
                (None, _) => false,
                (Some(_), Some(named)) => named.iter().any(|n| n == name),
                (Some(sensitivity), None) => sensitivity < Sensitivity::Sensitive,
            })
            .collect()
    }
}

/// The fields of a record type that a consent can release: those of the schema version
/// it was granted against, each at the highest sensitivity any version since gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasePolicy {
    fields: HashMap<String, Sensitivity>,
    /// The granted version's defaults, for records written before a field existed.
    defaults: Vec<(String, serde_json::Value)>,
}

impl ReleasePolicy {
    /// From the granted version's fields and those of every later version.
    pub fn new<'a>(
        granted: &[(String, Sensitivity)],
        later: impl IntoIterator<Item = &'a [(String, Sensitivity)]>,
    ) -> Self {
        let mut fields: HashMap<String, Sensitivity> = granted.iter().cloned().collect();
        for version in later {
            for (name, sensitivity) in version {
                if let Some(known) = fields.get_mut(name) {
                    *known = (*known).max(*sensitivity);
                }
            }
        }
        Self {
            fields,
            defaults: Vec::new(),
        }
    }

    /// With the granted version's field defaults (`sensitivity::field_defaults`).
    pub fn with_defaults(mut self, defaults: Vec<(String, serde_json::Value)>) -> Self {
        self.defaults = defaults;
        self
    }

    /// The field's sensitivity, or none for a field the granted version did not have.
    pub fn sensitivity(&self, field: &str) -> Option<Sensitivity> {
        self.fields.get(field).copied()
    }
}

/// The longest a consent may last: one year.
pub const MAX_CONSENT_MILLIS: i64 = 366 * 24 * 3_600_000;
/// The most uses one consent may allow.
pub const MAX_CONSENT_USES: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn consent() -> Consent {
        Consent {
            consent_id: "c1".into(),
            subject: "440303201506303948".into(),
            granted_by: "440104198503125841".into(),
            requester_department: DepartmentId::parse("public_security").unwrap(),
            caseworker: None,
            record_types: vec![RecordType::parse("health.birth_certificate").unwrap()],
            fields: None,
            schema_versions: BTreeMap::from([("health.birth_certificate".into(), 1)]),
            purpose: PurposeCode::parse("household_registration").unwrap(),
            max_uses: 1,
            uses: 0,
            status: ConsentStatus::Active,
            expires_at_millis: 2_000,
            granted_at_millis: 0,
        }
    }

    fn check(
        consent: &Consent,
        department: &str,
        caseworker: &str,
        subject: &str,
        record_type: &str,
        now: i64,
        expected: Option<&str>,
    ) {
        let department = DepartmentId::parse(department).unwrap();
        let record_type = RecordType::parse(record_type).unwrap();
        let request = LookupRequest {
            caseworker,
            department: &department,
            subject,
            record_type: &record_type,
            now_millis: now,
        };
        let got = consent.check_lookup(&request).err().map(|e| e.code());
        assert_eq!(got, expected);
    }

    #[test]
    fn lookup_decisions() {
        let c = consent();
        let subject = "440303201506303948";
        check(
            &c,
            "public_security",
            "cw1",
            subject,
            "health.birth_certificate",
            1_000,
            None,
        );
        check(
            &c,
            "tax",
            "cw1",
            subject,
            "health.birth_certificate",
            1_000,
            Some("consent_not_found"),
        );
        check(
            &c,
            "public_security",
            "cw1",
            "440303201506306858",
            "health.birth_certificate",
            1_000,
            Some("consent_other_subject"),
        );
        check(
            &c,
            "public_security",
            "cw1",
            subject,
            "civil_affairs.marriage_certificate",
            1_000,
            Some("consent_record_type_not_covered"),
        );
        check(
            &c,
            "public_security",
            "cw1",
            subject,
            "health.birth_certificate",
            2_000,
            Some("consent_expired"),
        );
        let used = Consent {
            uses: 1,
            ..consent()
        };
        check(
            &used,
            "public_security",
            "cw1",
            subject,
            "health.birth_certificate",
            1_000,
            Some("consent_used_up"),
        );
        let revoked = Consent {
            status: ConsentStatus::Revoked,
            ..consent()
        };
        check(
            &revoked,
            "public_security",
            "cw1",
            subject,
            "health.birth_certificate",
            1_000,
            Some("consent_revoked"),
        );
        let named = Consent {
            caseworker: Some("cw2".into()),
            ..consent()
        };
        check(
            &named,
            "public_security",
            "cw1",
            subject,
            "health.birth_certificate",
            1_000,
            Some("consent_other_caseworker"),
        );
        check(
            &named,
            "public_security",
            "cw2",
            subject,
            "health.birth_certificate",
            1_000,
            None,
        );
    }

    #[test]
    fn used_up_message_says_so() {
        let refusal = LookupRefusal::UsedUp {
            uses: 1,
            max_uses: 1,
        };
        assert_eq!(refusal.to_string(), "the consent is used up (1 of 1 uses)");
    }

    fn fields(names: &[&str]) -> serde_json::Map<String, serde_json::Value> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), "x".into()))
            .collect()
    }

    fn released(consent: &Consent, policy: &ReleasePolicy, stored: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = consent
            .release_fields(fields(stored), policy)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn field_release_keeps_only_consented_fields() {
        let policy = ReleasePolicy::new(
            &[
                ("child_name".into(), Sensitivity::Personal),
                ("mother_id_number".into(), Sensitivity::Personal),
            ],
            [],
        );
        let limited = Consent {
            fields: Some(vec!["child_name".into()]),
            ..consent()
        };
        let stored = ["child_name", "mother_id_number"];
        assert_eq!(released(&limited, &policy, &stored), vec!["child_name"]);
        assert_eq!(released(&consent(), &policy, &stored).len(), 2);
    }

    #[test]
    fn sensitive_fields_need_a_consent_that_names_them() {
        let policy = ReleasePolicy::new(
            &[
                ("child_name".into(), Sensitivity::Personal),
                ("birth_weight_grams".into(), Sensitivity::Sensitive),
            ],
            [],
        );
        let stored = ["child_name", "birth_weight_grams"];
        assert_eq!(released(&consent(), &policy, &stored), vec!["child_name"]);
        let naming = Consent {
            fields: Some(vec!["birth_weight_grams".into()]),
            ..consent()
        };
        assert_eq!(
            released(&naming, &policy, &stored),
            vec!["birth_weight_grams"]
        );
    }

    #[test]
    fn fields_added_after_the_grant_are_never_released() {
        let granted = vec![("child_name".to_owned(), Sensitivity::Personal)];
        let later = vec![
            ("child_name".to_owned(), Sensitivity::Personal),
            ("blood_type".to_owned(), Sensitivity::Personal),
        ];
        let policy = ReleasePolicy::new(&granted, [later.as_slice()]);
        let stored = ["child_name", "blood_type"];
        assert_eq!(released(&consent(), &policy, &stored), vec!["child_name"]);
        // Not even when the consent names the field: it did not exist when granted.
        let naming = Consent {
            fields: Some(vec!["child_name".into(), "blood_type".into()]),
            ..consent()
        };
        assert_eq!(released(&naming, &policy, &stored), vec!["child_name"]);
    }

    #[test]
    fn records_older_than_the_granted_version_read_with_its_defaults() {
        let granted = vec![
            ("child_name".to_owned(), Sensitivity::Personal),
            ("blood_type".to_owned(), Sensitivity::Personal),
            ("diagnosis".to_owned(), Sensitivity::Sensitive),
        ];
        let policy = ReleasePolicy::new(&granted, []).with_defaults(vec![
            ("blood_type".into(), serde_json::Value::Null),
            ("diagnosis".into(), serde_json::Value::Null),
        ]);
        let mut old_record = fields(&["child_name"]);
        old_record.insert("child_name".into(), "A".into());
        let released = consent().release_fields(old_record, &policy);
        assert_eq!(released["blood_type"], serde_json::Value::Null);
        assert!(
            !released.contains_key("diagnosis"),
            "a default is released by the same rules"
        );
        // A value the record has is never replaced by the default.
        let newer = fields(&["child_name", "blood_type"]);
        assert_eq!(consent().release_fields(newer, &policy)["blood_type"], "x");
    }

    #[test]
    fn a_sensitivity_raised_after_the_grant_holds_back_the_field() {
        let granted = vec![("diagnosis".to_owned(), Sensitivity::Personal)];
        let later = vec![("diagnosis".to_owned(), Sensitivity::Sensitive)];
        let policy = ReleasePolicy::new(&granted, [later.as_slice()]);
        assert!(released(&consent(), &policy, &["diagnosis"]).is_empty());
    }
}
