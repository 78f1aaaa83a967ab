//! Delegation (授权代理、亲友代办): a citizen lets someone else act for them — an agent, a
//! relative, a guardian appointed for an adult — within a scope (record types, purposes)
//! and until an expiry. A parent needs no registered delegation for a minor child: the
//! household register or the birth certificate names them guardian, until the child
//! comes of age. Who may grant a consent for whom is decided here.

use crate::ids::{PurposeCode, RecordType};
use serde::{Deserialize, Serialize};

/// What the delegate is to the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Appointed to act for an adult (e.g. an elderly person's 监护人).
    Guardian,
    /// An authorised agent (授权代理人).
    Agent,
    /// A relative helping out (亲友代办).
    Relative,
}

impl Relation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guardian => "guardian",
            Self::Agent => "agent",
            Self::Relative => "relative",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "guardian" => Some(Self::Guardian),
            "agent" => Some(Self::Agent),
            "relative" => Some(Self::Relative),
            _ => None,
        }
    }
}

/// A registered delegation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delegation {
    pub delegation_id: String,
    /// Whose data: the citizen who registered it.
    pub principal: String,
    /// Who may act.
    pub delegate: String,
    pub relation: Relation,
    pub record_types: Vec<RecordType>,
    pub purposes: Vec<PurposeCode>,
    pub expires_at_millis: i64,
    pub created_at_millis: i64,
    pub revoked_at_millis: Option<i64>,
}

/// The longest a delegation may last: five years.
pub const MAX_DELEGATION_MILLIS: i64 = 5 * 366 * 24 * 3_600_000;
/// Most record types or purposes one delegation may name.
pub const DELEGATION_SCOPE_MAX: usize = 50;

impl Delegation {
    /// Whether the delegation lets its delegate grant a consent for `record_types` and
    /// `purpose` at `now_millis`; the refusal code otherwise.
    pub fn allows(
        &self,
        record_types: &[RecordType],
        purpose: &PurposeCode,
        now_millis: i64,
    ) -> Result<(), &'static str> {
        if self.revoked_at_millis.is_some() {
            return Err("delegation_revoked");
        }
        if now_millis >= self.expires_at_millis {
            return Err("delegation_expired");
        }
        if !self.purposes.contains(purpose)
            || !record_types.iter().all(|t| self.record_types.contains(t))
        {
            return Err("delegate_out_of_scope");
        }
        Ok(())
    }
}

/// Of the delegations from the consent's subject to the grantor, the first that allows
/// the grant; or the refusal that says most: out of scope before expired before
/// revoked, and `not_subject_or_guardian` when there is none at all.
pub fn judge_delegated_grant(
    delegations: &[Delegation],
    record_types: &[RecordType],
    purpose: &PurposeCode,
    now_millis: i64,
) -> Result<String, &'static str> {
    let mut refusal = "not_subject_or_guardian";
    for delegation in delegations {
        match delegation.allows(record_types, purpose, now_millis) {
            Ok(()) => return Ok(delegation.delegation_id.clone()),
            Err(code) => {
                let rank = |c: &str| match c {
                    "delegate_out_of_scope" => 3,
                    "delegation_expired" => 2,
                    "delegation_revoked" => 1,
                    _ => 0,
                };
                if rank(code) > rank(refusal) {
                    refusal = code;
                }
            }
        }
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delegation() -> Delegation {
        Delegation {
            delegation_id: "delegation_1".into(),
            principal: "440104194005060012".into(),
            delegate: "440104197001010011".into(),
            relation: Relation::Relative,
            record_types: vec![RecordType::parse("public_security.resident_id_card").unwrap()],
            purposes: vec![PurposeCode::parse("medical_insurance_enrolment").unwrap()],
            expires_at_millis: 2_000,
            created_at_millis: 0,
            revoked_at_millis: None,
        }
    }

    fn judge(
        delegations: &[Delegation],
        record_type: &str,
        purpose: &str,
        now: i64,
    ) -> Result<String, &'static str> {
        judge_delegated_grant(
            delegations,
            &[RecordType::parse(record_type).unwrap()],
            &PurposeCode::parse(purpose).unwrap(),
            now,
        )
    }

    /// Delegations, record type, purpose, time, and the delegation that serves or the code.
    type Case = (
        Vec<Delegation>,
        &'static str,
        &'static str,
        i64,
        Result<&'static str, &'static str>,
    );

    #[test]
    fn a_delegate_grants_only_within_scope_and_time() {
        let id_card = "public_security.resident_id_card";
        let medical = "medical_insurance_enrolment";
        let d = delegation();
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (vec![d.clone()], id_card, medical, 1_000, Ok("delegation_1")),
            (vec![d.clone()], "tax.tax_payment_certificate", medical, 1_000, Err("delegate_out_of_scope")),
            (vec![d.clone()], id_card, "school_enrolment", 1_000, Err("delegate_out_of_scope")),
            (vec![d.clone()], id_card, medical, 2_000, Err("delegation_expired")),
            (vec![Delegation { revoked_at_millis: Some(500), ..d.clone() }], id_card, medical, 1_000, Err("delegation_revoked")),
            (vec![], id_card, medical, 1_000, Err("not_subject_or_guardian")),
            // A revoked one and a live one: the live one serves.
            (vec![Delegation { revoked_at_millis: Some(500), delegation_id: "old".into(), ..d.clone() }, d.clone()], id_card, medical, 1_000, Ok("delegation_1")),
            // Out of scope says more than expired.
            (vec![Delegation { expires_at_millis: 10, ..d.clone() }, Delegation { purposes: vec![], ..d.clone() }], id_card, medical, 1_000, Err("delegate_out_of_scope")),
        ];
        for (delegations, record_type, purpose, now, expected) in cases {
            assert_eq!(
                judge(&delegations, record_type, purpose, now)
                    .as_deref()
                    .map_err(|e| *e),
                expected,
                "{record_type} {purpose} at {now}"
            );
        }
        assert_eq!(Relation::parse("agent"), Some(Relation::Agent));
        assert_eq!(Relation::parse("friend"), None);
    }
}
