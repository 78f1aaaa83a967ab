//! The signed record envelope and its canonical signing input (`docs/signing.md`).
//!
//! The signing input is length-prefixed rather than JSON so that any language can
//! reproduce it byte for byte without a canonicalisation library.
//!
//! `signed_at` is when the department signed, not when the certificate was issued (that
//! date is a payload field). The hub bounds it by its own clock (`trust`), so a signer
//! cannot push a version of a certificate into the future.

use crate::ids::{DepartmentId, KeyId, RecordId, RecordType};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

/// The first bytes of every signing input: the format and its version.
pub const SIGNING_INPUT_DOMAIN: &[u8] = b"datarun-record-v3\n";

/// The first bytes of a record's content digest (see [`RecordEnvelope::content_digest`]).
pub const CONTENT_DIGEST_DOMAIN: &[u8] = b"datarun-content-v2\n";

/// Confluent's wire format of a Kafka value: magic byte 0, the writer's schema id as a
/// 4-byte big-endian number (a registry id), then the Avro binary body. Serializers and
/// deserializers of every Kafka shop read and write it.
pub mod framing {
    /// The first byte of every framed value.
    pub const MAGIC: u8 = 0;
    /// Magic byte and schema id.
    pub const HEADER_BYTES: usize = 5;

    /// The framed value of an Avro `body` written with schema `schema_id`.
    pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEADER_BYTES + body.len());
        value.push(MAGIC);
        value.extend_from_slice(&schema_id.to_be_bytes());
        value.extend_from_slice(body);
        value
    }

    /// The schema id and Avro body of a framed value, or why it is not one.
    pub fn unframe(value: &[u8]) -> Result<(u32, &[u8]), &'static str> {
        match value {
            [] => Err("the value is empty; it must start with magic byte 0 and a 4-byte schema id"),
            [magic, ..] if *magic != MAGIC => {
                Err("the value does not start with magic byte 0 (Confluent wire format)")
            }
            _ if value.len() < HEADER_BYTES => {
                Err("the value is shorter than magic byte 0 and a 4-byte schema id")
            }
            _ => {
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                Ok((id, &value[HEADER_BYTES..]))
            }
        }
    }
}

/// The Kafka header names of the envelope (`docs/signing.md`). They are also the field
/// paths of envelope rejections.
pub mod header {
    pub const RECORD_ID: &str = "datarun-record-id";
    pub const DEPARTMENT: &str = "datarun-department";
    pub const RECORD_TYPE: &str = "datarun-record-type";
    pub const SUBJECT: &str = "datarun-subject";
    /// Decimal Unix milliseconds when the department signed.
    pub const SIGNED_AT: &str = "datarun-signed-at";
    pub const KEY_ID: &str = "datarun-key-id";
    /// Lower-case hex of the 64-byte Ed25519 signature.
    pub const SIGNATURE: &str = "datarun-signature";
    /// Every envelope header; each must appear exactly once.
    pub const ALL: [&str; 7] = [
        RECORD_ID,
        DEPARTMENT,
        RECORD_TYPE,
        SUBJECT,
        SIGNED_AT,
        KEY_ID,
        SIGNATURE,
    ];
}

/// Everything about a record except its value (which names its schema) and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEnvelope {
    pub record_id: RecordId,
    pub department: DepartmentId,
    pub record_type: RecordType,
    /// The identifier of the person or business the record is about.
    pub subject: String,
    /// When the department signed the record, Unix milliseconds (by its own clock).
    pub signed_at_millis: i64,
    pub signing_key_id: KeyId,
}

/// An envelope, its Kafka value (framed: schema id and Avro body, see [`framing`]) and
/// the publisher's Ed25519 signature over both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    pub envelope: RecordEnvelope,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl RecordEnvelope {
    /// The exact bytes that are signed: the domain line, then each field as a
    /// 4-byte big-endian length followed by its UTF-8 bytes, the Kafka value last (all of
    /// it, so the schema id in its header is signed too).
    pub fn signing_input(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_INPUT_DOMAIN.len() + payload.len() + 256);
        out.extend_from_slice(SIGNING_INPUT_DOMAIN);
        push_field(&mut out, self.record_id.as_str().as_bytes());
        push_field(&mut out, self.department.as_str().as_bytes());
        push_field(&mut out, self.record_type.as_str().as_bytes());
        push_field(&mut out, self.subject.as_bytes());
        push_field(&mut out, self.signed_at_millis.to_string().as_bytes());
        push_field(&mut out, self.signing_key_id.as_str().as_bytes());
        push_field(&mut out, payload);
        out
    }

    /// SHA-256 of what the record says, without when or with which key it was signed:
    /// the same content re-signed later (a connector retrying after a crash) or with a
    /// rotated key is the same record, a duplicate; other content under a used record id
    /// is a replay.
    pub fn content_digest(&self, payload: &[u8]) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(CONTENT_DIGEST_DOMAIN);
        for part in [
            self.record_id.as_str().as_bytes(),
            self.department.as_str().as_bytes(),
            self.record_type.as_str().as_bytes(),
            self.subject.as_bytes(),
            payload,
        ] {
            context.update(&(part.len() as u32).to_be_bytes());
            context.update(part);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(context.finish().as_ref());
        digest
    }

    /// A record id belongs to its department: it starts with `<department>-`, so one
    /// department can never claim (and so block) another's record id.
    pub fn record_id_belongs_to_department(&self) -> bool {
        self.record_id
            .as_str()
            .strip_prefix(self.department.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'))
    }

    pub fn sign(self, payload: Vec<u8>, key_pair: &Ed25519KeyPair) -> SignedRecord {
        let signature = key_pair
            .sign(&self.signing_input(&payload))
            .as_ref()
            .to_vec();
        SignedRecord {
            envelope: self,
            payload,
            signature,
        }
    }
}

impl SignedRecord {
    /// The writer's schema id and the Avro body, from the framed value.
    pub fn unframed(&self) -> Result<(u32, &[u8]), &'static str> {
        framing::unframe(&self.payload)
    }

    /// True when `signature` is this record's Ed25519 signature by `public_key` (32 bytes).
    pub fn signature_is_valid(&self, public_key: &[u8]) -> bool {
        let input = self.envelope.signing_input(&self.payload);
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&input, &self.signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    #[test]
    fn content_digest_ignores_signing_time_and_key_only() {
        let (_, envelope, payload) = test_vector();
        let digest = envelope.content_digest(&payload);
        let mut resigned = envelope.clone();
        resigned.signed_at_millis += 60_000;
        resigned.signing_key_id = KeyId::parse("health-2027").unwrap();
        assert_eq!(resigned.content_digest(&payload), digest);
        let mut other = envelope.clone();
        other.subject = "440303201506306858".into();
        assert_ne!(other.content_digest(&payload), digest);
        assert_ne!(
            envelope.content_digest(&framing::frame(1, b"payload bytez")),
            digest
        );
        assert_ne!(
            envelope.content_digest(&framing::frame(2, b"payload bytes")),
            digest,
            "the same body under another schema id is other content"
        );
    }

    #[test]
    fn values_are_framed_as_confluent_serializers_frame_them() {
        let value = framing::frame(0x0102_0304, b"body");
        assert_eq!(value, [0, 1, 2, 3, 4, b'b', b'o', b'd', b'y']);
        assert_eq!(framing::unframe(&value), Ok((0x0102_0304, &b"body"[..])));
        assert_eq!(framing::unframe(&[0, 0, 0, 0, 7]), Ok((7, &b""[..])));
        assert!(framing::unframe(b"").unwrap_err().contains("empty"));
        assert!(framing::unframe(&[1, 0, 0, 0, 1, 9])
            .unwrap_err()
            .contains("magic byte 0"));
        assert!(framing::unframe(&[0, 0, 1])
            .unwrap_err()
            .contains("shorter"));
    }

    #[test]
    fn record_ids_carry_their_department() {
        let (_, envelope, _) = test_vector();
        assert!(envelope.record_id_belongs_to_department());
        for (department, record_id, owned) in [
            ("health", "health-1", true),
            ("health", "health-", false),
            ("health", "healthy-1", false),
            ("tax", "health-1", false),
            ("health", "tax-health-1", false),
        ] {
            let mut changed = envelope.clone();
            changed.department = DepartmentId::parse(department).unwrap();
            changed.record_id = RecordId::parse(record_id).unwrap();
            assert_eq!(
                changed.record_id_belongs_to_department(),
                owned,
                "{department} {record_id}"
            );
        }
    }

    /// The test vector published in `docs/signing.md`.
    pub(crate) fn test_vector() -> (Ed25519KeyPair, RecordEnvelope, Vec<u8>) {
        let seed: Vec<u8> = (0u8..32).collect();
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let envelope = RecordEnvelope {
            record_id: RecordId::parse("health-0001").unwrap(),
            department: DepartmentId::parse("health").unwrap(),
            record_type: RecordType::parse("health.birth_certificate").unwrap(),
            subject: "440303201506303948".into(),
            signed_at_millis: 1_767_225_600_000,
            signing_key_id: KeyId::parse("health-2026").unwrap(),
        };
        (key_pair, envelope, framing::frame(1, b"payload bytes"))
    }

    #[test]
    fn test_vector_signature_is_stable() {
        let (key_pair, envelope, payload) = test_vector();
        assert_eq!(
            hex::encode(key_pair.public_key().as_ref()),
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        );
        let input = envelope.signing_input(&payload);
        assert_eq!(
            hex::encode(&input),
            include_str!("../../../docs/signing-vector-input.hex").trim()
        );
        let record = envelope.sign(payload, &key_pair);
        assert_eq!(
            hex::encode(&record.signature),
            include_str!("../../../docs/signing-vector-signature.hex").trim()
        );
        assert!(record.signature_is_valid(key_pair.public_key().as_ref()));
    }

    #[test]
    fn any_flipped_byte_breaks_the_signature() {
        let (key_pair, envelope, payload) = test_vector();
        let record = envelope.sign(payload, &key_pair);
        let public_key = key_pair.public_key().as_ref().to_vec();
        for index in 0..record.payload.len() {
            let mut forged = record.clone();
            forged.payload[index] ^= 0x01;
            assert!(!forged.signature_is_valid(&public_key));
        }
        let mut forged = record.clone();
        forged.signature[0] ^= 0x01;
        assert!(!forged.signature_is_valid(&public_key));
        let mut forged = record.clone();
        forged.envelope.signed_at_millis += 1;
        assert!(!forged.signature_is_valid(&public_key));
        let mut forged = record;
        forged.envelope.subject = "440303201506306858".into();
        assert!(!forged.signature_is_valid(&public_key));
    }
}
