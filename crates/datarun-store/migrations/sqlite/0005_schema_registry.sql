-- The schema registry (Confluent's model): every distinct schema has one global id,
-- shared by every subject (record type) that registers it; a record type's versions
-- point at ids and can be soft-deleted; compatibility is configured globally ('') or per
-- record type. Existing versions get their ids when the hub first opens the database
-- (the id's fingerprint is computed by the hub, not in SQL).
CREATE TABLE registry_schemas (
    schema_id     INTEGER PRIMARY KEY CHECK (schema_id > 0),
    fingerprint   BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
    definition    TEXT NOT NULL,
    registered_at INTEGER NOT NULL
) STRICT;

ALTER TABLE record_schemas ADD COLUMN schema_id INTEGER REFERENCES registry_schemas (schema_id);
ALTER TABLE record_schemas ADD COLUMN deleted_at INTEGER;
CREATE INDEX record_schemas_schema_id ON record_schemas (schema_id);

CREATE TABLE registry_config (
    record_type   TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL CHECK (compatibility IN ('BACKWARD', 'BACKWARD_TRANSITIVE',
        'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE', 'NONE')),
    updated_at    INTEGER NOT NULL
) STRICT;
