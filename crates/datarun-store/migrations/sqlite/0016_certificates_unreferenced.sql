-- Issue 6, SQLite: a certificate's reference to its current record is no longer a
-- foreign key, as on PostgreSQL since migration 0003. The ingest transaction writes the
-- record and then its certificate, and the foreign key made each certificate insert
-- look the record up again, and made every multi-row certificate statement keep a
-- statement journal (a copy of each page it changes, to undo that one statement).
-- Ingest statements are now `INSERT OR FAIL`, which needs no statement journal: any
-- failure rolls the whole batch's transaction back. `Store::dangling_references`
-- checks the reference in the store and fault suites. Existing rows are copied over.
CREATE TABLE new_certificates (
    certificate_id    TEXT PRIMARY KEY,
    record_type       TEXT NOT NULL,
    department_id     TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    current_record_id TEXT NOT NULL,
    signed_at         INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    status            TEXT NOT NULL DEFAULT 'VALID',
    superseded_by     TEXT
) STRICT, WITHOUT ROWID;
INSERT INTO new_certificates (certificate_id, record_type, department_id, subject_id, current_record_id,
    signed_at, updated_at, status, superseded_by)
SELECT certificate_id, record_type, department_id, subject_id, current_record_id,
    signed_at, updated_at, status, superseded_by
FROM certificates;
DROP TABLE certificates;
ALTER TABLE new_certificates RENAME TO certificates;
CREATE INDEX certificates_subject ON certificates (subject_id, record_type);
