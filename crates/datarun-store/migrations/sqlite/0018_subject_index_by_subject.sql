-- Issue 6, SQLite: the index of certificates by subject holds the subject alone. It
-- held the subject and the record type, and, the certificates being a WITHOUT ROWID
-- table, the certificate id as well: about 77 bytes an entry at random keys, the
-- largest tree an ingest batch changed pages all over. Without the record type an
-- entry is about 58 bytes, and a subject's certificates of one type are found by
-- reading the few certificates the subject has. With 0019, a model of the ingest's
-- writes (`scripts/bench/sqlite_ingest_model.py`) writes a fifth fewer log frames per
-- record (`docs/benchmarks.md`).
DROP INDEX certificates_subject;
CREATE INDEX certificates_subject ON certificates (subject_id);
