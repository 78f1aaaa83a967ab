//! The record wire format on Kafka: the Avro datum is the message value, the envelope
//! travels in headers (`docs/signing.md` lists them). Keys are the subject, so one
//! subject's records stay in order on one partition.

use datarun_domain::{
    DepartmentId, KeyId, RecordEnvelope, RecordId, RecordType, RejectReason, Rejection,
    SignedRecord,
};
use rdkafka::message::{Header, OwnedHeaders};

pub use datarun_domain::envelope::header::{
    DEPARTMENT, KEY_ID, RECORD_ID, RECORD_TYPE, SIGNATURE, SIGNED_AT, SUBJECT,
};

/// The field path of rejections about the Kafka value itself (its framing, its schema
/// id); fields inside the Avro body are named by their own paths.
pub const VALUE: &str = "value";

pub const REJECT_REASON: &str = "datarun-reject-reason";
pub const REJECT_FIELD: &str = "datarun-reject-field";
pub const REJECT_MESSAGE: &str = "datarun-reject-message";
pub const SOURCE_TOPIC: &str = "datarun-source-topic";
pub const SOURCE_PARTITION: &str = "datarun-source-partition";
pub const SOURCE_OFFSET: &str = "datarun-source-offset";
/// `intact` when the dead letter carries the original key, value and headers; `digested`
/// when they were too large to forward and were replaced by their SHA-256 digests.
pub const ORIGINAL: &str = "datarun-original";
/// On a digested dead letter: the SHA-256 (hex) and length of the original value.
pub const ORIGINAL_VALUE_SHA256: &str = "datarun-original-value-sha256";
pub const ORIGINAL_VALUE_BYTES: &str = "datarun-original-value-bytes";

pub fn envelope_headers(record: &SignedRecord) -> OwnedHeaders {
    let envelope = &record.envelope;
    let signed_at = envelope.signed_at_millis.to_string();
    let signature = hex::encode(&record.signature);
    let pairs = [
        (RECORD_ID, envelope.record_id.as_str()),
        (DEPARTMENT, envelope.department.as_str()),
        (RECORD_TYPE, envelope.record_type.as_str()),
        (SUBJECT, envelope.subject.as_str()),
        (SIGNED_AT, signed_at.as_str()),
        (KEY_ID, envelope.signing_key_id.as_str()),
        (SIGNATURE, signature.as_str()),
    ];
    pairs.into_iter().fold(
        OwnedHeaders::new_with_capacity(7),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// Reads the envelope from headers after checking every bound (`limits`); a missing,
/// repeated or malformed header is `envelope_invalid` with the header name as the field
/// path, and a record id that does not start with its department's id is refused.
pub fn decode_record(
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
) -> Result<SignedRecord, Rejection> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_bytes(), value.as_slice()))
        .collect();
    datarun_domain::limits::check_message(key, payload, &pairs)?;
    if let Err(problem) = datarun_domain::envelope::framing::unframe(payload) {
        return Err(Rejection::at(
            RejectReason::WireFormatInvalid,
            VALUE,
            problem,
        ));
    }
    let header = |name: &'static str| -> Result<&str, Rejection> {
        let value = headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .ok_or_else(|| {
                Rejection::at(RejectReason::EnvelopeInvalid, name, "header is missing")
            })?;
        std::str::from_utf8(value)
            .map_err(|_| Rejection::at(RejectReason::EnvelopeInvalid, name, "header is not UTF-8"))
    };
    let parsed = |name: &'static str, error: datarun_domain::IdError| {
        Rejection::at(RejectReason::EnvelopeInvalid, name, error.without_values())
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
    let record = SignedRecord {
        envelope: RecordEnvelope {
            record_id: RecordId::parse(header(RECORD_ID)?).map_err(|e| parsed(RECORD_ID, e))?,
            department: DepartmentId::parse(header(DEPARTMENT)?)
                .map_err(|e| parsed(DEPARTMENT, e))?,
            record_type: RecordType::parse(header(RECORD_TYPE)?)
                .map_err(|e| parsed(RECORD_TYPE, e))?,
            subject: subject.to_owned(),
            signed_at_millis: number(SIGNED_AT)?,
            signing_key_id: KeyId::parse(header(KEY_ID)?).map_err(|e| parsed(KEY_ID, e))?,
        },
        payload: payload.to_vec(),
        signature,
    };
    if !record.envelope.record_id_belongs_to_department() {
        return Err(Rejection::at(
            RejectReason::EnvelopeInvalid,
            RECORD_ID,
            format!(
                "a record id must start with its department's id: {}-",
                record.envelope.department
            ),
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn record() -> SignedRecord {
        SignedRecord {
            envelope: RecordEnvelope {
                record_id: RecordId::parse("health-r1").unwrap(),
                department: DepartmentId::parse("health").unwrap(),
                record_type: RecordType::parse("health.birth_certificate").unwrap(),
                subject: "440303201506303948".into(),
                signed_at_millis: 42,
                signing_key_id: KeyId::parse("health-2026").unwrap(),
            },
            payload: vec![0, 0, 0, 0, 7, 1, 2, 3],
            signature: vec![9; 64],
        }
    }

    fn as_pairs(headers: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect()
    }

    fn decode(pairs: &[(String, Vec<u8>)]) -> Result<SignedRecord, Rejection> {
        decode_record(
            Some(b"440303201506303948"),
            pairs,
            &[0, 0, 0, 0, 7, 1, 2, 3],
        )
    }

    #[test]
    fn values_outside_the_wire_format_are_refused() {
        let pairs = as_pairs(&envelope_headers(&record()));
        for (value, says) in [
            (&[1u8, 2, 3][..], "magic byte 0"),
            (&[0, 0, 1][..], "shorter"),
            (&[][..], "empty"),
        ] {
            let rejection = decode_record(Some(b"k"), &pairs, value).unwrap_err();
            assert_eq!(
                (rejection.reason, rejection.field.as_deref()),
                (RejectReason::WireFormatInvalid, Some(VALUE))
            );
            assert!(rejection.message.contains(says), "{}", rejection.message);
        }
    }

    #[test]
    fn headers_round_trip() {
        let record = record();
        let pairs = as_pairs(&envelope_headers(&record));
        assert_eq!(decode(&pairs).unwrap(), record);
    }

    #[test]
    fn missing_or_bad_headers_are_named() {
        let record = record();
        let mut pairs = as_pairs(&envelope_headers(&record));
        pairs.retain(|(k, _)| k != KEY_ID);
        let rejection = decode(&pairs).unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::EnvelopeInvalid, Some(KEY_ID))
        );
        let replace = |name: &str, value: &[u8]| {
            let mut pairs = as_pairs(&envelope_headers(&record));
            for pair in pairs.iter_mut().filter(|(k, _)| k == name) {
                pair.1 = value.to_vec();
            }
            decode(&pairs).unwrap_err()
        };
        let rejection = replace(SIGNED_AT, b"yesterday");
        assert_eq!(rejection.field.as_deref(), Some(SIGNED_AT));
        assert_eq!(
            replace(SIGNATURE, b"abcd").reason,
            RejectReason::SignatureInvalid
        );
        // Another department's record id.
        let rejection = replace(RECORD_ID, b"tax-r1");
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::EnvelopeInvalid, Some(RECORD_ID))
        );
        // A second signature header, even a valid-looking one, makes the envelope ambiguous.
        let mut pairs = as_pairs(&envelope_headers(&record));
        pairs.insert(0, (SIGNATURE.to_owned(), vec![b'0'; 128]));
        let rejection = decode(&pairs).unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::EnvelopeInvalid, Some(SIGNATURE))
        );
        // A giant header is refused before it is read.
        let rejection = replace(RECORD_ID, &vec![b'a'; 600_000]);
        assert_eq!(
            (rejection.reason, rejection.field.as_deref()),
            (RejectReason::Oversized, Some(RECORD_ID))
        );
    }
}
