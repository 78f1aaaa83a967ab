-- Issue 5: versions are ordered by when the department signed (bounded by the hub's
-- clock), rejections are recorded once per message, and the hub remembers which
-- pseudonym key it was set up with.

ALTER TABLE records RENAME COLUMN issued_at TO signed_at;
ALTER TABLE certificates RENAME COLUMN issued_at TO signed_at;

-- Every dead-lettered message, once: a retried batch finds its rejections here instead
-- of auditing them again. Claimed envelope fields are the publisher's word unless
-- `verified` (signature and key checked).
CREATE TABLE ingest_rejections (
    source_topic      TEXT NOT NULL,
    source_partition  BIGINT NOT NULL,
    source_offset     BIGINT NOT NULL,
    message_digest    TEXT NOT NULL,
    reason            TEXT NOT NULL,
    field             TEXT,
    message           TEXT NOT NULL,
    record_id         TEXT,
    department_id     TEXT,
    record_type       TEXT,
    verified          BIGINT NOT NULL,
    rejected_at       BIGINT NOT NULL,
    audit_seq         BIGINT NOT NULL,
    dead_lettered_at  BIGINT,
    dead_letter_form  TEXT,
    PRIMARY KEY (source_topic, source_partition, source_offset, message_digest)
);
CREATE INDEX ingest_rejections_time ON ingest_rejections (rejected_at);
CREATE INDEX ingest_rejections_reason ON ingest_rejections (reason, rejected_at);

-- Hub-wide settings every instance must agree on.
CREATE TABLE hub_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
