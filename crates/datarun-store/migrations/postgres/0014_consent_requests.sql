-- Issue 9: consent requests. A department asks for consent; the citizen previews exactly
-- what would be released and approves (which grants the consent) or declines.
CREATE TABLE consent_requests (
    request_id           TEXT COLLATE "C" PRIMARY KEY,
    subject_id           TEXT COLLATE "C" NOT NULL,
    requester_department TEXT NOT NULL REFERENCES departments (department_id),
    requested_by         TEXT NOT NULL,
    caseworker_id        TEXT,
    record_types         TEXT NOT NULL,
    fields_json          TEXT,
    purpose_code         TEXT NOT NULL,
    max_uses             BIGINT NOT NULL,
    valid_for_millis     BIGINT NOT NULL,
    note                 TEXT,
    status               TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    decided_at           BIGINT,
    decided_by           TEXT,
    consent_id           TEXT
);
CREATE INDEX consent_requests_subject ON consent_requests (subject_id, created_at);
