-- The schema registry (Confluent's model): every distinct schema has one global id,
-- shared by every subject (record type) that registers it; a record type's versions
-- point at ids and can be soft-deleted; compatibility is configured globally ('') or per
-- record type. Existing versions get their ids when the hub first opens the database
-- (the id's fingerprint is computed by the hub, not in SQL).
CREATE TABLE registry_schemas (
    schema_id     bigint PRIMARY KEY CHECK (schema_id > 0),
    fingerprint   bytea NOT NULL UNIQUE CHECK (octet_length(fingerprint) = 32),
    definition    text NOT NULL,
    registered_at bigint NOT NULL
);

ALTER TABLE record_schemas
    ADD COLUMN schema_id bigint REFERENCES registry_schemas (schema_id),
    ADD COLUMN deleted_at bigint;
CREATE INDEX record_schemas_schema_id ON record_schemas (schema_id);

CREATE TABLE registry_config (
    record_type   text COLLATE "C" PRIMARY KEY,
    compatibility text NOT NULL CHECK (compatibility IN ('BACKWARD', 'BACKWARD_TRANSITIVE',
        'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE', 'NONE')),
    updated_at    bigint NOT NULL
);
