//! The exchange's rules with no I/O: identifiers that check themselves, the signed
//! record envelope and its canonical signing input, consent decisions, rejection
//! reasons and audit-chain hashing. Nothing here knows Kafka, SQL, HTTP or Avro exist.

pub mod audit;
pub mod consent;
pub mod date;
pub mod delegation;
pub mod envelope;
pub mod faults;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod proof;
pub mod purpose;
pub mod reason;
pub mod sensitivity;
pub mod signed;
pub mod token;
pub mod trust;
pub mod versions;

pub use audit::{pseudonym, AuditEvent, AuditHash, ChainBreak, ChainVerifier};
pub use consent::{
    Consent, ConsentStatus, LookupRefusal, LookupRequest, ReleasePolicy, StatusChange,
};
pub use envelope::{RecordEnvelope, SignedRecord};
pub use ids::{
    CertificateId, CreditCode, DepartmentId, IdError, KeyId, PurposeCode, RecordId, RecordType,
    ResidentId,
};
pub use purpose::Purpose;
pub use reason::{RejectReason, Rejection};
pub use sensitivity::Sensitivity;
pub use token::{Role, TokenHash};
