//! The record wire format on Kafka: the Avro datum is the message value, the envelope
//! travels in headers (`docs/signing.md` lists them). Keys are the subject, so one
//! subject's records stay in order on one partition.

use datarun_domain::{
    DepartmentId, KeyId, RecordEnvelope, RecordId, RecordType, RejectReason, Rejection,
    SignedRecord,
};
use rdkafka::message::{Header, OwnedHeaders};

pub const RECORD_ID: &str = "datarun-record-id";
pub const DEPARTMENT: &str = "datarun-department";
pub const RECORD_TYPE: &str = "datarun-record-type";
pub const SCHEMA_VERSION: &str = "datarun-schema-version";
pub const SUBJECT: &str = "datarun-subject";
pub const ISSUED_AT: &str = "datarun-issued-at";
pub const KEY_ID: &str = "datarun-key-id";
/// Lower-case hex of the 64-byte Ed25519 signature.
pub const SIGNATURE: &str = "datarun-signature";

pub const REJECT_REASON: &str = "datarun-reject-reason";
pub const REJECT_FIELD: &str = "datarun-reject-field";
pub const REJECT_MESSAGE: &str = "datarun-reject-message";
pub const SOURCE_TOPIC: &str = "datarun-source-topic";
pub const SOURCE_PARTITION: &str = "datarun-source-partition";
pub const SOURCE_OFFSET: &str = "datarun-source-offset";

pub fn envelope_headers(record: &SignedRecord) -> OwnedHeaders {
    let envelope = &record.envelope;
    let version = envelope.schema_version.to_string();
    let issued_at = envelope.issued_at_millis.to_string();
    let signature = hex::encode(&record.signature);
    let pairs = [
        (RECORD_ID, envelope.record_id.as_str()),
        (DEPARTMENT, envelope.department.as_str()),
        (RECORD_TYPE, envelope.record_type.as_str()),
        (SCHEMA_VERSION, version.as_str()),
        (SUBJECT, envelope.subject.as_str()),
        (ISSUED_AT, issued_at.as_str()),
        (KEY_ID, envelope.signing_key_id.as_str()),
        (SIGNATURE, signature.as_str()),
    ];
    pairs.into_iter().fold(
        OwnedHeaders::new_with_capacity(8),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// Reads the envelope from headers; a missing or malformed header is `envelope_invalid`
/// with the header name as the field path.
pub fn decode_record(
    headers: &[(String, Vec<u8>)],
    payload: Vec<u8>,
) -> Result<SignedRecord, Rejection> {
    let header = |name: &'static str| -> Result<&str, Rejection> {
        let value = headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .ok_or_else(|| {
                Rejection::at(RejectReason::EnvelopeInvalid, name, "header is missing")
            })?;
        std::str::from_utf8(value)
            .map_err(|_| Rejection::at(RejectReason::EnvelopeInvalid, name, "header is not UTF-8"))
    };
    let parsed = |name: &'static str, error: datarun_domain::IdError| {
        Rejection::at(RejectReason::EnvelopeInvalid, name, error.to_string())
    };
    let number = |name: &'static str| -> Result<i64, Rejection> {
        header(name)?.parse::<i64>().map_err(|_| {
            Rejection::at(
                RejectReason::EnvelopeInvalid,
                name,
                "header is not a whole number",
            )
        })
    };
    let schema_version = u32::try_from(number(SCHEMA_VERSION)?).map_err(|_| {
        Rejection::at(
            RejectReason::EnvelopeInvalid,
            SCHEMA_VERSION,
            "version out of range",
        )
    })?;
    let signature = hex::decode(header(SIGNATURE)?)
        .ok()
        .filter(|bytes| bytes.len() == 64)
        .ok_or_else(|| {
            Rejection::at(
                RejectReason::SignatureInvalid,
                SIGNATURE,
                "signature is not 64 bytes of hex",
            )
        })?;
    let subject = header(SUBJECT)?;
    if subject.is_empty() || subject.len() > 64 {
        return Err(Rejection::at(
            RejectReason::EnvelopeInvalid,
            SUBJECT,
            "subject must be 1-64 characters",
        ));
    }
    Ok(SignedRecord {
        envelope: RecordEnvelope {
            record_id: RecordId::parse(header(RECORD_ID)?).map_err(|e| parsed(RECORD_ID, e))?,
            department: DepartmentId::parse(header(DEPARTMENT)?)
                .map_err(|e| parsed(DEPARTMENT, e))?,
            record_type: RecordType::parse(header(RECORD_TYPE)?)
                .map_err(|e| parsed(RECORD_TYPE, e))?,
            schema_version,
            subject: subject.to_owned(),
            issued_at_millis: number(ISSUED_AT)?,
            signing_key_id: KeyId::parse(header(KEY_ID)?).map_err(|e| parsed(KEY_ID, e))?,
        },
        payload,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn record() -> SignedRecord {
        SignedRecord {
            envelope: RecordEnvelope {
                record_id: RecordId::parse("r1").unwrap(),
                department: DepartmentId::parse("health").unwrap(),
                record_type: RecordType::parse("health.birth_certificate").unwrap(),
                schema_version: 1,
                subject: "440303201506303948".into(),
                issued_at_millis: 42,
                signing_key_id: KeyId::parse("health-2026").unwrap(),
            },
            payload: vec![1, 2, 3],
            signature: vec![9; 64],
        }
    }

    fn as_pairs(headers: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect()
    }

    #[test]
    fn headers_round_trip() {
        let record = record();
        let pairs = as_pairs(&envelope_headers(&record));
        assert_eq!(
            decode_record(&pairs, record.payload.clone()).unwrap(),
            record
        );
    }

    #[test]
    fn missing_or_bad_headers_are_named() {
        let record = record();
        let mut pairs = as_pairs(&envelope_headers(&record));
        pairs.retain(|(k, _)| k != KEY_ID);
        let rejection = decode_record(&pairs, vec![]).unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::EnvelopeInvalid, Some(KEY_ID))
        );
        let mut pairs = as_pairs(&envelope_headers(&record));
        pairs.push((ISSUED_AT.into(), b"yesterday".to_vec()));
        let rejection = decode_record(&pairs, vec![]).unwrap_err();
        assert_eq!(rejection.field.as_deref(), Some(ISSUED_AT));
        let mut pairs = as_pairs(&envelope_headers(&record));
        pairs.push((SIGNATURE.into(), b"abcd".to_vec()));
        assert_eq!(
            decode_record(&pairs, vec![]).unwrap_err().reason,
            RejectReason::SignatureInvalid
        );
    }
}
