//! Instant proofs (秒批): a citizen asks, and the hub states a fact from the issuing
//! departments' stored records — enrolled in social insurance, tax paid over a period —
//! with no human approval, because the data is already there. What each proof states and
//! from which records is decided here; the hub signs and stores the result.

use crate::date::CivilDate;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// What a proof states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKind {
    /// 社会保险参保证明: current enrolments, by employer.
    SocialInsuranceEnrolment,
    /// 完税证明: tax paid over a period, by tax type.
    TaxPaid,
}

impl ProofKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "social_insurance_enrolment" => Some(Self::SocialInsuranceEnrolment),
            "tax_paid" => Some(Self::TaxPaid),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SocialInsuranceEnrolment => "social_insurance_enrolment",
            Self::TaxPaid => "tax_paid",
        }
    }

    /// The record type the proof is made from.
    pub fn record_type(self) -> &'static str {
        match self {
            Self::SocialInsuranceEnrolment => "human_resources.social_insurance_enrolment",
            Self::TaxPaid => "tax.tax_payment_certificate",
        }
    }

    pub fn titles(self) -> (&'static str, &'static str) {
        match self {
            Self::SocialInsuranceEnrolment => {
                ("社会保险参保证明", "Proof of social insurance enrolment")
            }
            Self::TaxPaid => ("完税证明", "Proof of tax paid"),
        }
    }

    /// Whether the proof covers a period the citizen names.
    pub fn needs_period(self) -> bool {
        self == Self::TaxPaid
    }
}

/// The longest period one tax proof may cover: five years.
pub const PROOF_PERIOD_MAX_DAYS: i64 = 5 * 366;

/// One stored certificate a proof may be made from (its current version).
#[derive(Debug, Clone)]
pub struct ProofSource {
    pub certificate_id: String,
    pub record_id: String,
    pub issuing_department: String,
    pub signed_at_millis: i64,
    pub status: String,
    pub fields: Map<String, Value>,
}

/// The facts of a proof and the sources it was made from, or `nothing_to_prove` when
/// the stored records state no such fact (no valid enrolment; no tax paid in the period).
pub fn prove(
    kind: ProofKind,
    sources: &[ProofSource],
    period: Option<(CivilDate, CivilDate)>,
) -> Result<(Value, Vec<&ProofSource>), &'static str> {
    let valid = sources.iter().filter(|s| s.status == "VALID");
    let text = |s: &ProofSource, name: &str| s.fields.get(name).cloned().unwrap_or(Value::Null);
    match kind {
        ProofKind::SocialInsuranceEnrolment => {
            let used: Vec<&ProofSource> = valid.collect();
            if used.is_empty() {
                return Err("nothing_to_prove");
            }
            // The contribution base reveals income and is sensitive: never stated.
            let enrolments: Vec<Value> = used
                .iter()
                .map(|s| {
                    let mut enrolment = Map::new();
                    for name in [
                        "employer_name",
                        "pension",
                        "medical",
                        "unemployment",
                        "work_injury",
                        "enrolled_since",
                        "months_contributed",
                        "enrolment_status",
                    ] {
                        enrolment.insert(name.into(), text(s, name));
                    }
                    Value::Object(enrolment)
                })
                .collect();
            Ok((json!({ "enrolments": enrolments }), used))
        }
        ProofKind::TaxPaid => {
            let (from, to) = period.ok_or("period_required")?;
            let (from_text, to_text) = (from.to_string(), to.to_string());
            let used: Vec<&ProofSource> = valid
                .filter(|s| {
                    let within = |name: &str, test: &dyn Fn(&str) -> bool| {
                        s.fields.get(name).and_then(Value::as_str).is_some_and(test)
                    };
                    within("period_start", &|d| d >= from_text.as_str())
                        && within("period_end", &|d| d <= to_text.as_str())
                })
                .collect();
            if used.is_empty() {
                return Err("nothing_to_prove");
            }
            let mut by_tax_type: BTreeMap<String, i64> = BTreeMap::new();
            let mut total: i64 = 0;
            let mut payments = Vec::new();
            for s in &used {
                let amount = s
                    .fields
                    .get("amount_paid_fen")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let tax_type = s
                    .fields
                    .get("tax_type")
                    .and_then(Value::as_str)
                    .unwrap_or("UNKNOWN")
                    .to_owned();
                total = total.saturating_add(amount);
                let sum = by_tax_type.entry(tax_type.clone()).or_default();
                *sum = sum.saturating_add(amount);
                payments.push(json!({
                    "tax_type": tax_type,
                    "period_start": text(s, "period_start"),
                    "period_end": text(s, "period_end"),
                    "amount_paid_fen": amount,
                }));
            }
            Ok((
                json!({
                    "period": { "from": from_text, "to": to_text },
                    "total_paid_fen": total,
                    "by_tax_type": by_tax_type,
                    "payments": payments,
                }),
                used,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(status: &str, fields: Value) -> ProofSource {
        ProofSource {
            certificate_id: "c".into(),
            record_id: "tax-1".into(),
            issuing_department: "tax".into(),
            signed_at_millis: 0,
            status: status.into(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    fn tax(start: &str, end: &str, fen: i64, status: &str) -> ProofSource {
        source(
            status,
            json!({"tax_type": "INDIVIDUAL_INCOME_TAX", "period_start": start, "period_end": end, "amount_paid_fen": fen}),
        )
    }

    fn date(text: &str) -> CivilDate {
        CivilDate::parse_iso(text).unwrap()
    }

    #[test]
    fn tax_paid_sums_valid_payments_within_the_period() {
        let sources = vec![
            tax("2026-01-01", "2026-01-31", 10_000, "VALID"),
            tax("2026-02-01", "2026-02-28", 12_000, "VALID"),
            tax("2026-03-01", "2026-03-31", 99_000, "REVOKED"),
            tax("2025-12-01", "2025-12-31", 50_000, "VALID"),
        ];
        let period = Some((date("2026-01-01"), date("2026-06-30")));
        let (facts, used) = prove(ProofKind::TaxPaid, &sources, period).unwrap();
        assert_eq!(facts["total_paid_fen"], 22_000);
        assert_eq!(facts["by_tax_type"]["INDIVIDUAL_INCOME_TAX"], 22_000);
        assert_eq!(used.len(), 2);
        let none = Some((date("2024-01-01"), date("2024-12-31")));
        assert_eq!(
            prove(ProofKind::TaxPaid, &sources, none).err(),
            Some("nothing_to_prove")
        );
        assert_eq!(
            prove(ProofKind::TaxPaid, &sources, None).err(),
            Some("period_required")
        );
    }

    #[test]
    fn enrolment_proof_states_no_contribution_base() {
        let enrolled = source(
            "VALID",
            json!({"employer_name": "广州某公司", "pension": true, "monthly_base_fen": 800_000, "months_contributed": 40}),
        );
        let sources = [enrolled];
        let (facts, used) = prove(ProofKind::SocialInsuranceEnrolment, &sources, None).unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(facts["enrolments"][0]["employer_name"], "广州某公司");
        assert!(facts["enrolments"][0].get("monthly_base_fen").is_none());
        let ended = source("CANCELLED", json!({}));
        assert_eq!(
            prove(ProofKind::SocialInsuranceEnrolment, &[ended], None).err(),
            Some("nothing_to_prove")
        );
    }
}
