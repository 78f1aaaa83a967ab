-- A certificate's status follows its current version: VALID unless the department
-- published a version that revokes (吊销, REVOKED), cancels (注销, CANCELLED) or
-- replaces it (SUPERSEDED, naming the certificate that replaced it). Certificates stored
-- before this migration came from schemas without a status: VALID.
ALTER TABLE certificates ADD COLUMN status TEXT NOT NULL DEFAULT 'VALID';
ALTER TABLE certificates ADD COLUMN superseded_by TEXT;
