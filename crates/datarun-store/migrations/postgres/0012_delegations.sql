-- Issue 9: delegation. A citizen (the principal) lets a delegate act for them within a
-- scope — record types and purposes, as JSON arrays — until an expiry; a consent a
-- delegate grants records the delegation it was granted under.
CREATE TABLE delegations (
    delegation_id TEXT COLLATE "C" PRIMARY KEY,
    principal_id  TEXT COLLATE "C" NOT NULL,
    delegate_id   TEXT COLLATE "C" NOT NULL,
    relation      TEXT NOT NULL,
    record_types  TEXT NOT NULL,
    purposes      TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX delegations_principal ON delegations (principal_id, delegate_id);
CREATE INDEX delegations_delegate ON delegations (delegate_id);
ALTER TABLE consents ADD COLUMN delegation_id TEXT;
