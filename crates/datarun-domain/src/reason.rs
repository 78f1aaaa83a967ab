//! Why the broker refused a record: a stable, machine-readable code plus the field path.

use serde::Serialize;

/// A rejection reason. The `code` strings are a public contract (dead-letter headers,
/// audit events, `docs/dead-letter.md`): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// A required envelope header is missing or malformed.
    EnvelopeInvalid,
    /// The message is larger than the broker accepts.
    Oversized,
    /// The signing key id is not in the trust registry for that department.
    UnknownKey,
    /// The key exists but was revoked or was not valid at the record's issue time.
    KeyNotValid,
    /// The signature does not verify against the registered public key.
    SignatureInvalid,
    /// The department is not allowed to publish this record type.
    PublisherNotAllowed,
    /// No schema is registered for this record type and version.
    SchemaUnknown,
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
            Self::Oversized => "oversized",
            Self::UnknownKey => "unknown_key",
            Self::KeyNotValid => "key_not_valid",
            Self::SignatureInvalid => "signature_invalid",
            Self::PublisherNotAllowed => "publisher_not_allowed",
            Self::SchemaUnknown => "schema_unknown",
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
