-- Issue 6, SQLite: every table rebuilt as a STRICT table, so a value of the wrong
-- type is an error instead of being stored as whatever it was. Digests, signatures,
-- keys and token hashes become BLOBs (half the size of hex, compared as bytes); a
-- record's fields are JSON text in `fields`. Small rows keyed by an id the
-- publisher chose (certificates, guardians) are WITHOUT ROWID tables: the key is the
-- table, so an insert at a random key updates one B-tree instead of a table and an
-- index. Existing rows are copied over.
-- The hub runs this migration on a connection with foreign keys off (SQLite's own
-- procedure for rebuilding tables), inside the migration's transaction, and checks
-- the foreign keys before it commits.

CREATE TABLE new_departments (
    department_id TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;
INSERT INTO new_departments SELECT department_id, display_name, created_at FROM departments;

CREATE TABLE new_signing_keys (
    signing_key_id TEXT PRIMARY KEY,
    department_id  TEXT NOT NULL REFERENCES departments (department_id),
    algorithm      TEXT NOT NULL,
    public_key     BLOB NOT NULL CHECK (length(public_key) = 32),
    not_before     INTEGER NOT NULL,
    not_after      INTEGER,
    revoked_at     INTEGER,
    registered_at  INTEGER NOT NULL
) STRICT;
INSERT INTO new_signing_keys
SELECT signing_key_id, department_id, algorithm, unhex(public_key_hex), not_before, not_after, revoked_at, registered_at
FROM signing_keys;

CREATE TABLE new_publish_permissions (
    department_id TEXT NOT NULL REFERENCES departments (department_id),
    record_type   TEXT NOT NULL,
    granted_at    INTEGER NOT NULL,
    PRIMARY KEY (department_id, record_type)
) STRICT;
INSERT INTO new_publish_permissions SELECT department_id, record_type, granted_at FROM publish_permissions;

CREATE TABLE new_record_schemas (
    record_type    TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    definition     TEXT NOT NULL,
    registered_at  INTEGER NOT NULL,
    PRIMARY KEY (record_type, schema_version)
) STRICT;
INSERT INTO new_record_schemas SELECT record_type, schema_version, definition, registered_at FROM record_schemas;

CREATE TABLE new_purposes (
    purpose_code  TEXT PRIMARY KEY,
    description   TEXT NOT NULL,
    registered_at INTEGER NOT NULL
) STRICT;
INSERT INTO new_purposes SELECT purpose_code, description, registered_at FROM purposes;

CREATE TABLE new_records (
    record_id      TEXT PRIMARY KEY,
    certificate_id TEXT NOT NULL,
    record_type    TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    department_id  TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    signed_at      INTEGER NOT NULL,
    signing_key_id TEXT NOT NULL,
    content_digest BLOB NOT NULL CHECK (length(content_digest) = 32),
    signature      BLOB NOT NULL,
    fields         TEXT NOT NULL,
    stored_at      INTEGER NOT NULL
) STRICT;
INSERT INTO new_records
SELECT record_id, certificate_id, record_type, schema_version, department_id, subject_id, signed_at,
       signing_key_id, unhex(content_digest), unhex(signature_hex), fields_json, stored_at
FROM records;

CREATE TABLE new_certificates (
    certificate_id    TEXT PRIMARY KEY,
    record_type       TEXT NOT NULL,
    department_id     TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    current_record_id TEXT NOT NULL REFERENCES records (record_id),
    signed_at         INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO new_certificates
SELECT certificate_id, record_type, department_id, subject_id, current_record_id, signed_at, updated_at
FROM certificates;

CREATE TABLE new_certificate_guardians (
    certificate_id TEXT NOT NULL REFERENCES certificates (certificate_id),
    guardian_id    TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    PRIMARY KEY (certificate_id, guardian_id)
) STRICT, WITHOUT ROWID;
INSERT INTO new_certificate_guardians SELECT certificate_id, guardian_id, subject_id FROM certificate_guardians;

CREATE TABLE new_actors (
    actor_id      TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    department_id TEXT REFERENCES departments (department_id),
    resident_id   TEXT,
    display_name  TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;
INSERT INTO new_actors SELECT actor_id, role, department_id, resident_id, display_name, created_at FROM actors;

CREATE TABLE new_tokens (
    token_hash BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
    actor_id   TEXT NOT NULL REFERENCES actors (actor_id),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
INSERT INTO new_tokens SELECT unhex(token_hash), actor_id, created_at, revoked_at FROM tokens;

CREATE TABLE new_consents (
    consent_id           TEXT PRIMARY KEY,
    subject_id           TEXT NOT NULL,
    granted_by           TEXT NOT NULL,
    requester_department TEXT NOT NULL REFERENCES departments (department_id),
    caseworker_id        TEXT,
    record_types         TEXT NOT NULL,
    fields_json          TEXT,
    purpose_code         TEXT NOT NULL REFERENCES purposes (purpose_code),
    max_uses             INTEGER NOT NULL,
    uses                 INTEGER NOT NULL,
    status               TEXT NOT NULL,
    expires_at           INTEGER NOT NULL,
    granted_at           INTEGER NOT NULL,
    revoked_at           INTEGER
) STRICT;
INSERT INTO new_consents
SELECT consent_id, subject_id, granted_by, requester_department, caseworker_id, record_types, fields_json,
       purpose_code, max_uses, uses, status, expires_at, granted_at, revoked_at
FROM consents;

CREATE TABLE new_audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT;
INSERT INTO new_audit_head SELECT id, seq, hash FROM audit_head;

-- The chain hashes these columns as exact text: they stay TEXT.
CREATE TABLE new_audit_events (
    seq           INTEGER PRIMARY KEY,
    occurred_at   INTEGER NOT NULL,
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
) STRICT;
INSERT INTO new_audit_events
SELECT seq, occurred_at, kind, actor, department_id, subject_ref, consent_id, purpose_code, outcome, reason,
       detail_json, prev_hash, hash
FROM audit_events;

CREATE TABLE new_ingest_rejections (
    source_topic      TEXT NOT NULL,
    source_partition  INTEGER NOT NULL,
    source_offset     INTEGER NOT NULL,
    message_digest    BLOB NOT NULL CHECK (length(message_digest) = 32),
    reason            TEXT NOT NULL,
    field             TEXT,
    message           TEXT NOT NULL,
    record_id         TEXT,
    department_id     TEXT,
    record_type       TEXT,
    verified          INTEGER NOT NULL CHECK (verified IN (0, 1)),
    rejected_at       INTEGER NOT NULL,
    audit_seq         INTEGER NOT NULL,
    dead_lettered_at  INTEGER,
    dead_letter_form  TEXT,
    PRIMARY KEY (source_topic, source_partition, source_offset, message_digest)
) STRICT;
INSERT INTO new_ingest_rejections
SELECT source_topic, source_partition, source_offset, unhex(message_digest), reason, field, message, record_id,
       department_id, record_type, verified, rejected_at, audit_seq, dead_lettered_at, dead_letter_form
FROM ingest_rejections;

CREATE TABLE new_hub_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
INSERT INTO new_hub_settings SELECT name, value FROM hub_settings;

DROP TABLE hub_settings;
DROP TABLE ingest_rejections;
DROP TABLE audit_events;
DROP TABLE audit_head;
DROP TABLE consents;
DROP TABLE tokens;
DROP TABLE actors;
DROP TABLE certificate_guardians;
DROP TABLE certificates;
DROP TABLE records;
DROP TABLE purposes;
DROP TABLE record_schemas;
DROP TABLE publish_permissions;
DROP TABLE signing_keys;
DROP TABLE departments;

ALTER TABLE new_departments RENAME TO departments;
ALTER TABLE new_signing_keys RENAME TO signing_keys;
ALTER TABLE new_publish_permissions RENAME TO publish_permissions;
ALTER TABLE new_record_schemas RENAME TO record_schemas;
ALTER TABLE new_purposes RENAME TO purposes;
ALTER TABLE new_records RENAME TO records;
ALTER TABLE new_certificates RENAME TO certificates;
ALTER TABLE new_certificate_guardians RENAME TO certificate_guardians;
ALTER TABLE new_actors RENAME TO actors;
ALTER TABLE new_tokens RENAME TO tokens;
ALTER TABLE new_consents RENAME TO consents;
ALTER TABLE new_audit_head RENAME TO audit_head;
ALTER TABLE new_audit_events RENAME TO audit_events;
ALTER TABLE new_ingest_rejections RENAME TO ingest_rejections;
ALTER TABLE new_hub_settings RENAME TO hub_settings;

CREATE INDEX records_certificate ON records (certificate_id, signed_at);
CREATE INDEX certificates_subject ON certificates (subject_id, record_type);
CREATE INDEX certificate_guardians_guardian ON certificate_guardians (guardian_id, subject_id);
CREATE INDEX consents_subject ON consents (subject_id);
CREATE INDEX consents_granted_by ON consents (granted_by);
CREATE INDEX audit_events_subject ON audit_events (subject_ref, seq);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_consent ON audit_events (consent_id, seq);
CREATE INDEX audit_events_department ON audit_events (department_id, seq);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
CREATE INDEX ingest_rejections_time ON ingest_rejections (rejected_at);
CREATE INDEX ingest_rejections_reason ON ingest_rejections (reason, rejected_at);
