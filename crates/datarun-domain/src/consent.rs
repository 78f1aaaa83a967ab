//! Consent as an artefact, and the decision whether a lookup may use it.
//!
//! The decision is pure; the store makes it atomic by deciding and counting the use
//! inside one transaction.

use crate::ids::{DepartmentId, PurposeCode, RecordType};
use crate::purpose::Purpose;
use crate::sensitivity::Sensitivity;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Where a consent stands. `Active`, `Paused` and `Revoked` are stored; `Expired` and
/// `Exhausted` follow from the clock and the use count (`Consent::status_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentStatus {
    Active,
    /// Held by the citizen: refused until resumed.
    Paused,
    /// Ended by the citizen; never comes back.
    Revoked,
    Expired,
    /// Every allowed use is spent.
    Exhausted,
}

impl ConsentStatus {
    /// The stored form (`active`, `paused`, `revoked`); the derived ones for completeness.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }

    /// A stored status.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// A change a citizen makes to a consent's stored status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Pause,
    Resume,
    Revoke,
}

impl StatusChange {
    /// The audit event kind: `consent_paused`, `consent_resumed`, `consent_revoked`.
    pub fn event_kind(self) -> &'static str {
        match self {
            Self::Pause => "consent_paused",
            Self::Resume => "consent_resumed",
            Self::Revoke => "consent_revoked",
        }
    }

    /// The stored status after the change, or why it cannot be made from `status`
    /// (the status as of now, `Consent::status_at`).
    pub fn apply(self, status: ConsentStatus) -> Result<ConsentStatus, &'static str> {
        match (self, status) {
            (_, ConsentStatus::Revoked) => Err("consent_revoked"),
            (Self::Revoke, _) => Ok(ConsentStatus::Revoked),
            (_, ConsentStatus::Expired) => Err("consent_expired"),
            (_, ConsentStatus::Exhausted) => Err("consent_exhausted"),
            (Self::Pause, ConsentStatus::Active) => Ok(ConsentStatus::Paused),
            (Self::Resume, ConsentStatus::Paused) => Ok(ConsentStatus::Active),
            (Self::Pause, _) => Err("consent_paused"),
            (Self::Resume, _) => Err("consent_not_paused"),
        }
    }
}

/// Who may see whose data, what, why, until when and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    pub consent_id: String,
    /// The person whose data is released.
    pub subject: String,
    /// The citizen who granted it: the subject, a guardian of the subject, or a
    /// delegate the subject registered.
    pub granted_by: String,
    /// The delegation it was granted under, when a delegate granted it.
    pub delegation_id: Option<String>,
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
    /// The stored status: `Active`, `Paused` or `Revoked`.
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
    /// Why, as the requester states it: must be the consent's purpose.
    pub purpose: &'a PurposeCode,
    /// Only these fields, when named.
    pub fields: Option<&'a [String]>,
    pub now_millis: i64,
}

/// Why a lookup was refused; `code` is stable and appears in audit events and API errors.
/// No refusal says whether the subject has any data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupRefusal {
    /// Also for a consent granted to another department: a stranger learns neither
    /// which department holds it nor that it exists.
    #[error("no consent with that id was granted to your department")]
    ConsentNotFound,
    #[error("the consent names another caseworker of your department")]
    WrongRequester,
    #[error("the consent does not cover this subject")]
    SubjectNotConsented,
    #[error("the consent was granted for another purpose")]
    PurposeMismatch,
    #[error("the consent does not cover record type {0}")]
    RecordTypeNotConsented(String),
    #[error("purpose {purpose} does not need {what}")]
    PurposeNotAllowed { purpose: String, what: String },
    #[error("the consent does not name field {0}")]
    FieldNotConsented(String),
    #[error("the consent was revoked")]
    Revoked,
    #[error("the consent is paused by the citizen")]
    Paused,
    #[error("the consent expired")]
    Expired,
    #[error("the consent is used up ({uses} of {max_uses} uses)")]
    Exhausted { uses: u32, max_uses: u32 },
}

impl LookupRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::ConsentNotFound => "consent_not_found",
            Self::WrongRequester => "wrong_requester",
            Self::SubjectNotConsented => "subject_not_consented",
            Self::PurposeMismatch | Self::PurposeNotAllowed { .. } => "purpose_not_allowed",
            Self::RecordTypeNotConsented(_) => "record_type_not_consented",
            Self::FieldNotConsented(_) => "field_not_consented",
            Self::Revoked => "consent_revoked",
            Self::Paused => "consent_paused",
            Self::Expired => "consent_expired",
            Self::Exhausted { .. } => "consent_exhausted",
        }
    }
}

impl Consent {
    /// The status as of `now_millis`: revoked, then expired, then exhausted, then the
    /// stored one (active or paused).
    pub fn status_at(&self, now_millis: i64) -> ConsentStatus {
        if self.status == ConsentStatus::Revoked {
            ConsentStatus::Revoked
        } else if now_millis >= self.expires_at_millis {
            ConsentStatus::Expired
        } else if self.uses >= self.max_uses {
            ConsentStatus::Exhausted
        } else {
            self.status
        }
    }

    /// Decides whether `request` may use this consent once more, given the catalogue
    /// entry of the consent's purpose (none when it left the catalogue). Who asks and
    /// for what is checked before the consent's state, so that a requester learns
    /// nothing about a consent that is not theirs to use.
    pub fn check_lookup(
        &self,
        request: &LookupRequest<'_>,
        purpose: Option<&Purpose>,
    ) -> Result<(), LookupRefusal> {
        if &self.requester_department != request.department {
            return Err(LookupRefusal::ConsentNotFound);
        }
        if self
            .caseworker
            .as_deref()
            .is_some_and(|named| named != request.caseworker)
        {
            return Err(LookupRefusal::WrongRequester);
        }
        if self.subject != request.subject {
            return Err(LookupRefusal::SubjectNotConsented);
        }
        if &self.purpose != request.purpose {
            return Err(LookupRefusal::PurposeMismatch);
        }
        if !self.record_types.contains(request.record_type) {
            return Err(LookupRefusal::RecordTypeNotConsented(
                request.record_type.to_string(),
            ));
        }
        let not_needed = |what: String| LookupRefusal::PurposeNotAllowed {
            purpose: self.purpose.to_string(),
            what,
        };
        let Some(purpose) = purpose.filter(|p| p.fields_for(request.record_type).is_some()) else {
            return Err(not_needed(request.record_type.to_string()));
        };
        for field in request.fields.into_iter().flatten() {
            if !purpose.needs_field(request.record_type, field) {
                return Err(not_needed(format!("field {field}")));
            }
            if self
                .fields
                .as_ref()
                .is_some_and(|named| !named.contains(field))
            {
                return Err(LookupRefusal::FieldNotConsented(field.clone()));
            }
        }
        match self.status_at(request.now_millis) {
            ConsentStatus::Active => Ok(()),
            ConsentStatus::Paused => Err(LookupRefusal::Paused),
            ConsentStatus::Revoked => Err(LookupRefusal::Revoked),
            ConsentStatus::Expired => Err(LookupRefusal::Expired),
            ConsentStatus::Exhausted => Err(LookupRefusal::Exhausted {
                uses: self.uses,
                max_uses: self.max_uses,
            }),
        }
    }

    /// Keeps only the fields this consent releases of `record_type` under `policy` (its
    /// fields as of the version the consent was granted against) and `purpose`: a field
    /// the purpose needs, that the consent names (or, when it names none, that is not
    /// sensitive), and that the request asked for when it named fields.
    pub fn release_fields(
        &self,
        mut fields: serde_json::Map<String, serde_json::Value>,
        policy: &ReleasePolicy,
        purpose: &Purpose,
        record_type: &RecordType,
        requested: Option<&[String]>,
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
            .filter(|(name, _)| purpose.needs_field(record_type, name))
            .filter(|(name, _)| requested.is_none_or(|asked| asked.contains(name)))
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

    const CHILD: &str = "440303201506303948";
    const BIRTH: &str = "health.birth_certificate";

    fn purpose() -> Purpose {
        Purpose {
            code: PurposeCode::parse("household_registration").unwrap(),
            title_zh: "新生儿入户".into(),
            title_en: "Registering a newborn".into(),
            legal_basis: "户口登记条例 第七条".into(),
            whose: Default::default(),
            needs: BTreeMap::from([(
                RecordType::parse(BIRTH).unwrap(),
                vec![
                    "child_name".into(),
                    "birth_weight_grams".into(),
                    "blood_type".into(),
                    "diagnosis".into(),
                ],
            )]),
        }
    }

    fn consent() -> Consent {
        Consent {
            consent_id: "c1".into(),
            subject: CHILD.into(),
            granted_by: "440104198503125841".into(),
            delegation_id: None,
            requester_department: DepartmentId::parse("public_security").unwrap(),
            caseworker: None,
            record_types: vec![
                RecordType::parse(BIRTH).unwrap(),
                RecordType::parse("tax.tax_payment_certificate").unwrap(),
            ],
            fields: None,
            schema_versions: BTreeMap::from([(BIRTH.into(), 1)]),
            purpose: PurposeCode::parse("household_registration").unwrap(),
            max_uses: 1,
            uses: 0,
            status: ConsentStatus::Active,
            expires_at_millis: 2_000,
            granted_at_millis: 0,
        }
    }

    /// A lookup by caseworker `cw1` of public_security at time 1,000, changed by `edit`.
    struct Ask {
        department: &'static str,
        caseworker: &'static str,
        subject: &'static str,
        record_type: &'static str,
        purpose: &'static str,
        fields: Option<Vec<String>>,
        now: i64,
    }

    fn ask() -> Ask {
        Ask {
            department: "public_security",
            caseworker: "cw1",
            subject: CHILD,
            record_type: BIRTH,
            purpose: "household_registration",
            fields: None,
            now: 1_000,
        }
    }

    fn check(consent: Consent, ask: Ask, expected: Option<&str>) {
        let department = DepartmentId::parse(ask.department).unwrap();
        let record_type = RecordType::parse(ask.record_type).unwrap();
        let purpose_code = PurposeCode::parse(ask.purpose).unwrap();
        let request = LookupRequest {
            caseworker: ask.caseworker,
            department: &department,
            subject: ask.subject,
            record_type: &record_type,
            purpose: &purpose_code,
            fields: ask.fields.as_deref(),
            now_millis: ask.now,
        };
        let got = consent
            .check_lookup(&request, Some(&purpose()))
            .err()
            .map(|e| e.code());
        assert_eq!(got, expected);
    }

    fn named(fields: &[&str]) -> Option<Vec<String>> {
        Some(fields.iter().map(|f| (*f).to_owned()).collect())
    }

    #[test]
    fn every_refusal_code_has_a_case() {
        check(consent(), ask(), None);
        #[rustfmt::skip]
        let cases: Vec<(Consent, Ask, &str)> = vec![
            (consent(), Ask { department: "tax", ..ask() }, "consent_not_found"),
            (Consent { caseworker: Some("cw2".into()), ..consent() }, ask(), "wrong_requester"),
            (consent(), Ask { subject: "440303201506306858", ..ask() }, "subject_not_consented"),
            (consent(), Ask { purpose: "school_enrolment", ..ask() }, "purpose_not_allowed"),
            (consent(), Ask { record_type: "civil_affairs.marriage_certificate", ..ask() }, "record_type_not_consented"),
            // Consented, but the purpose does not need the record type or the field.
            (consent(), Ask { record_type: "tax.tax_payment_certificate", ..ask() }, "purpose_not_allowed"),
            (consent(), Ask { fields: named(&["mother_id_number"]), ..ask() }, "purpose_not_allowed"),
            (Consent { fields: named(&["child_name"]), ..consent() }, Ask { fields: named(&["birth_weight_grams"]), ..ask() }, "field_not_consented"),
            (Consent { status: ConsentStatus::Revoked, ..consent() }, ask(), "consent_revoked"),
            (Consent { status: ConsentStatus::Paused, ..consent() }, ask(), "consent_paused"),
            (consent(), Ask { now: 2_000, ..ask() }, "consent_expired"),
            (Consent { uses: 1, ..consent() }, ask(), "consent_exhausted"),
            // Who asks is checked before state: a stranger learns nothing of its use.
            (Consent { uses: 1, ..consent() }, Ask { department: "tax", ..ask() }, "consent_not_found"),
            (Consent { status: ConsentStatus::Revoked, ..consent() }, Ask { subject: "440303201506306858", ..ask() }, "subject_not_consented"),
            // Revoked outranks expired; expired outranks used up.
            (Consent { status: ConsentStatus::Revoked, ..consent() }, Ask { now: 5_000, ..ask() }, "consent_revoked"),
            (Consent { uses: 1, ..consent() }, Ask { now: 5_000, ..ask() }, "consent_expired"),
        ];
        for (consent, ask, expected) in cases {
            check(consent, ask, Some(expected));
        }
        let cw2 = Consent {
            caseworker: Some("cw2".into()),
            ..consent()
        };
        check(
            cw2,
            Ask {
                caseworker: "cw2",
                ..ask()
            },
            None,
        );
        check(
            Consent {
                fields: named(&["child_name"]),
                ..consent()
            },
            Ask {
                fields: named(&["child_name"]),
                ..ask()
            },
            None,
        );
    }

    #[test]
    fn status_changes() {
        use ConsentStatus::*;
        use StatusChange::*;
        #[rustfmt::skip]
        let cases = [
            (Pause, Active, Ok(Paused)),
            (Resume, Paused, Ok(Active)),
            (Revoke, Active, Ok(Revoked)),
            (Revoke, Paused, Ok(Revoked)),
            (Revoke, Exhausted, Ok(Revoked)),
            (Revoke, Expired, Ok(Revoked)),
            (Revoke, Revoked, Err("consent_revoked")),
            (Pause, Paused, Err("consent_paused")),
            (Resume, Active, Err("consent_not_paused")),
            (Pause, Expired, Err("consent_expired")),
            (Resume, Exhausted, Err("consent_exhausted")),
        ];
        for (change, from, expected) in cases {
            assert_eq!(change.apply(from), expected, "{change:?} from {from:?}");
        }
        let c = consent();
        assert_eq!(c.status_at(1_000), Active);
        assert_eq!(c.status_at(2_000), Expired);
        assert_eq!(
            Consent {
                uses: 1,
                ..consent()
            }
            .status_at(1_000),
            Exhausted
        );
    }

    #[test]
    fn exhausted_message_says_so() {
        let refusal = LookupRefusal::Exhausted {
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

    fn released_asking(
        consent: &Consent,
        policy: &ReleasePolicy,
        stored: &[&str],
        requested: Option<&[String]>,
    ) -> Vec<String> {
        let birth = RecordType::parse(BIRTH).unwrap();
        let mut names: Vec<String> = consent
            .release_fields(fields(stored), policy, &purpose(), &birth, requested)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    }

    fn released(consent: &Consent, policy: &ReleasePolicy, stored: &[&str]) -> Vec<String> {
        released_asking(consent, policy, stored, None)
    }

    #[test]
    fn only_fields_the_purpose_needs_are_released() {
        // The skeleton's defect: household registration got both parents' ID numbers.
        let policy = ReleasePolicy::new(
            &[
                ("child_name".into(), Sensitivity::Personal),
                ("mother_id_number".into(), Sensitivity::Personal),
            ],
            [],
        );
        let stored = ["child_name", "mother_id_number"];
        assert_eq!(released(&consent(), &policy, &stored), vec!["child_name"]);
        let naming = Consent {
            fields: named(&["child_name", "mother_id_number"]),
            ..consent()
        };
        assert_eq!(released(&naming, &policy, &stored), vec!["child_name"]);
    }

    #[test]
    fn a_lookup_that_names_fields_gets_only_those() {
        let policy = ReleasePolicy::new(
            &[
                ("child_name".into(), Sensitivity::Personal),
                ("blood_type".into(), Sensitivity::Personal),
            ],
            [],
        );
        let asked = vec!["blood_type".to_owned()];
        assert_eq!(
            released_asking(
                &consent(),
                &policy,
                &["child_name", "blood_type"],
                Some(&asked)
            ),
            vec!["blood_type"]
        );
    }

    #[test]
    fn field_release_keeps_only_consented_fields() {
        let policy = ReleasePolicy::new(
            &[
                ("child_name".into(), Sensitivity::Personal),
                ("blood_type".into(), Sensitivity::Personal),
            ],
            [],
        );
        let limited = Consent {
            fields: named(&["child_name"]),
            ..consent()
        };
        let stored = ["child_name", "blood_type"];
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
            fields: named(&["birth_weight_grams"]),
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
            fields: named(&["child_name", "blood_type"]),
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
        let birth = RecordType::parse(BIRTH).unwrap();
        let mut old_record = fields(&["child_name"]);
        old_record.insert("child_name".into(), "A".into());
        let released = consent().release_fields(old_record, &policy, &purpose(), &birth, None);
        assert_eq!(released["blood_type"], serde_json::Value::Null);
        assert!(
            !released.contains_key("diagnosis"),
            "a default is released by the same rules"
        );
        // A value the record has is never replaced by the default.
        let newer = fields(&["child_name", "blood_type"]);
        assert_eq!(
            consent().release_fields(newer, &policy, &purpose(), &birth, None)["blood_type"],
            "x"
        );
    }

    #[test]
    fn a_sensitivity_raised_after_the_grant_holds_back_the_field() {
        let granted = vec![("diagnosis".to_owned(), Sensitivity::Personal)];
        let later = vec![("diagnosis".to_owned(), Sensitivity::Sensitive)];
        let policy = ReleasePolicy::new(&granted, [later.as_slice()]);
        assert!(released(&consent(), &policy, &["diagnosis"]).is_empty());
    }
}
