-- Issue 9: consent requests. A department asks for consent; the citizen previews exactly
-- what would be released and approves (which grants the consent) or declines.
CREATE TABLE consent_requests (
    request_id           TEXT PRIMARY KEY,
    subject_id           TEXT NOT NULL,
    requester_department TEXT NOT NULL REFERENCES departments (department_id),
    requested_by         TEXT NOT NULL,
    caseworker_id        TEXT,
    record_types         TEXT NOT NULL,
    fields_json          TEXT,
    purpose_code         TEXT NOT NULL,
    max_uses             INTEGER NOT NULL,
    valid_for_millis     INTEGER NOT NULL,
    note                 TEXT,
    status               TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    decided_at           INTEGER,
    decided_by           TEXT,
    consent_id           TEXT
) STRICT;
CREATE INDEX consent_requests_subject ON consent_requests (subject_id, created_at);
