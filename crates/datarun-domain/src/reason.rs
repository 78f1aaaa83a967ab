//! Why the broker refused a record: a stable, machine-readable code plus the field path.

use serde::Serialize;

/// A rejection reason. The `code` strings are a public contract (dead-letter headers,
/// audit events, `docs/dead-letter.md`): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// A required envelope header is missing or malformed.
    EnvelopeInvalid,
    /// The value is not in the Confluent wire format: magic byte 0, then a 4-byte
    /// big-endian schema id, then the Avro body.
    WireFormatInvalid,
    /// The message, its key, a header or the number of headers exceeds its bound.
    Oversized,
    /// The signing key id is not in the trust registry for that department.
    UnknownKey,
    /// The key was revoked before the hub received the record.
    KeyRevoked,
    /// The key's validity ended before the hub received the record.
    KeyExpired,
    /// The key's validity has not begun, or the record claims a signing time before it.
    KeyNotYetValid,
    /// The record claims a signing time further ahead of the hub's clock than allowed.
    SignedInFuture,
    /// The signature does not verify against the registered public key.
    SignatureInvalid,
    /// The department is not allowed to publish this record type.
    PublisherNotAllowed,
    /// Retired: no schema registered for the record type and version a header named
    /// (before the value carried its schema id). Kept so recorded rejections still read.
    SchemaUnknown,
    /// The value's schema id is not a registered schema of the record type.
    UnknownSchema,
    /// The payload does not decode against the schema, or a value breaks a schema rule.
    SchemaInvalid,
    /// An identifier field fails its format or check character.
    IdentifierInvalid,
    /// The envelope's subject is not the subject named inside the payload.
    SubjectMismatch,
    /// The record id was already used for different content.
    Replayed,
    /// A newer version of the same certificate is already stored.
    StaleVersion,
}

impl RejectReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::EnvelopeInvalid => "envelope_invalid",
            Self::WireFormatInvalid => "wire_format_invalid",
            Self::Oversized => "oversized",
            Self::UnknownKey => "unknown_key",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::KeyNotYetValid => "key_not_yet_valid",
            Self::SignedInFuture => "signed_in_future",
            Self::SignatureInvalid => "signature_invalid",
            Self::PublisherNotAllowed => "publisher_not_allowed",
            Self::SchemaUnknown => "schema_unknown",
            Self::UnknownSchema => "unknown_schema",
            Self::SchemaInvalid => "schema_invalid",
            Self::IdentifierInvalid => "identifier_invalid",
            Self::SubjectMismatch => "subject_mismatch",
            Self::Replayed => "replayed",
            Self::StaleVersion => "stale_version",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused record: reason code, the field path it concerns (if any) and a message
/// that never contains a personal identifier or payload value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}{}: {message}", field.as_ref().map(|f| format!(" at {f}")).unwrap_or_default())]
pub struct Rejection {
    pub reason: RejectReason,
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: None,
            message: message.into(),
        }
    }

    pub fn at(reason: RejectReason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl RejectReason {
    /// Every reason, for documentation checks and exhaustive tests.
    pub const ALL: [RejectReason; 17] = [
        Self::EnvelopeInvalid,
        Self::WireFormatInvalid,
        Self::Oversized,
        Self::UnknownKey,
        Self::KeyRevoked,
        Self::KeyExpired,
        Self::KeyNotYetValid,
        Self::SignedInFuture,
        Self::SignatureInvalid,
        Self::PublisherNotAllowed,
        Self::SchemaUnknown,
        Self::UnknownSchema,
        Self::SchemaInvalid,
        Self::IdentifierInvalid,
        Self::SubjectMismatch,
        Self::Replayed,
        Self::StaleVersion,
    ];

    /// The reason with this code, for operators' filters.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_and_round_trips() {
        let documented = include_str!("../../../docs/dead-letter.md");
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::from_code(reason.code()), Some(reason));
            assert!(
                documented.contains(&format!("| `{}` |", reason.code())),
                "docs/dead-letter.md lacks {}",
                reason.code()
            );
        }
    }
}
