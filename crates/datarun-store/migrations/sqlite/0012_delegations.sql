-- Issue 9: delegation. A citizen (the principal) lets a delegate act for them within a
-- scope — record types and purposes, as JSON arrays — until an expiry; a consent a
-- delegate grants records the delegation it was granted under.
CREATE TABLE delegations (
    delegation_id TEXT PRIMARY KEY,
    principal_id  TEXT NOT NULL,
    delegate_id   TEXT NOT NULL,
    relation      TEXT NOT NULL,
    record_types  TEXT NOT NULL,
    purposes      TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX delegations_principal ON delegations (principal_id, delegate_id);
CREATE INDEX delegations_delegate ON delegations (delegate_id);
ALTER TABLE consents ADD COLUMN delegation_id TEXT;
