-- One schema for SQLite and PostgreSQL: TEXT and BIGINT only, times in Unix milliseconds.

CREATE TABLE departments (
    department_id TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- The trust registry: departments' public keys with validity windows.
CREATE TABLE signing_keys (
    signing_key_id TEXT PRIMARY KEY,
    department_id  TEXT NOT NULL REFERENCES departments (department_id),
    algorithm      TEXT NOT NULL,
    public_key_hex TEXT NOT NULL,
    not_before     BIGINT NOT NULL,
    not_after      BIGINT,
    revoked_at     BIGINT,
    registered_at  BIGINT NOT NULL
);

-- Which department may publish which record type: policy, not naming convention.
CREATE TABLE publish_permissions (
    department_id TEXT NOT NULL REFERENCES departments (department_id),
    record_type   TEXT NOT NULL,
    granted_at    BIGINT NOT NULL,
    PRIMARY KEY (department_id, record_type)
);

CREATE TABLE record_schemas (
    record_type    TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    definition     TEXT NOT NULL,
    registered_at  BIGINT NOT NULL,
    PRIMARY KEY (record_type, schema_version)
);

CREATE TABLE purposes (
    purpose_code  TEXT PRIMARY KEY,
    description   TEXT NOT NULL,
    registered_at BIGINT NOT NULL
);

-- Every accepted record version (the history), keyed by the publisher's record id.
CREATE TABLE records (
    record_id      TEXT PRIMARY KEY,
    certificate_id TEXT NOT NULL,
    record_type    TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    department_id  TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    issued_at      BIGINT NOT NULL,
    signing_key_id TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    signature_hex  TEXT NOT NULL,
    fields_json    TEXT NOT NULL,
    stored_at      BIGINT NOT NULL
);
CREATE INDEX records_certificate ON records (certificate_id, issued_at);

-- The latest version of each certificate; its fields are the current record's.
CREATE TABLE certificates (
    certificate_id    TEXT PRIMARY KEY,
    record_type       TEXT NOT NULL,
    department_id     TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    current_record_id TEXT NOT NULL REFERENCES records (record_id),
    issued_at         BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX certificates_subject ON certificates (subject_id, record_type);

-- People who may act for a certificate's (minor) subject, taken from the certificate itself.
CREATE TABLE certificate_guardians (
    certificate_id TEXT NOT NULL REFERENCES certificates (certificate_id),
    guardian_id    TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    PRIMARY KEY (certificate_id, guardian_id)
);
CREATE INDEX certificate_guardians_guardian ON certificate_guardians (guardian_id, subject_id);

CREATE TABLE actors (
    actor_id      TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    department_id TEXT REFERENCES departments (department_id),
    resident_id   TEXT,
    display_name  TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- Bearer tokens, stored only as SHA-256.
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    actor_id   TEXT NOT NULL REFERENCES actors (actor_id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE consents (
    consent_id           TEXT PRIMARY KEY,
    subject_id           TEXT NOT NULL,
    granted_by           TEXT NOT NULL,
    requester_department TEXT NOT NULL REFERENCES departments (department_id),
    caseworker_id        TEXT,
    record_types         TEXT NOT NULL,
    fields_json          TEXT,
    purpose_code         TEXT NOT NULL REFERENCES purposes (purpose_code),
    max_uses             BIGINT NOT NULL,
    uses                 BIGINT NOT NULL,
    status               TEXT NOT NULL,
    expires_at           BIGINT NOT NULL,
    granted_at           BIGINT NOT NULL,
    revoked_at           BIGINT
);
CREATE INDEX consents_subject ON consents (subject_id);
CREATE INDEX consents_granted_by ON consents (granted_by);

-- The audit chain's head: the last sequence number and hash. Every auditing
-- transaction updates this row first, which serialises appends on both backends.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_events (
    seq           BIGINT PRIMARY KEY,
    occurred_at   BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    actor         TEXT NOT NULL,
    department_id TEXT,
    subject_ref   TEXT,
    consent_id    TEXT,
    purpose_code  TEXT,
    outcome       TEXT NOT NULL,
    reason        TEXT,
    detail_json   TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_events_subject ON audit_events (subject_ref, seq);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_consent ON audit_events (consent_id, seq);
CREATE INDEX audit_events_department ON audit_events (department_id, seq);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
