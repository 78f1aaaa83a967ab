-- Issue 6, SQLite: a guardian row holds the guardian's resident id as a number. Every
-- guardian is a resident id the ingest validated (17 digits and a check character,
-- a digit or X), and `guardian_number` in `records.rs` maps it one to one onto an
-- integer: the 17 digits times 11, plus the check character's value (X is 10). An
-- entry is then about 18 bytes against 30 in the tree a batch changes at random keys
-- (two rows a birth certificate), and a key compares as an integer rather than as
-- text. Lookups by guardian map the id they are given the same
-- way. Existing rows are converted.
CREATE TABLE new_certificate_guardians (
    guardian_number INTEGER NOT NULL,
    feed_seq        INTEGER NOT NULL,
    PRIMARY KEY (guardian_number, feed_seq)
) STRICT, WITHOUT ROWID;
INSERT INTO new_certificate_guardians (guardian_number, feed_seq)
SELECT DISTINCT CAST(substr(guardian_id, 1, 17) AS INTEGER) * 11
         + CASE substr(guardian_id, 18, 1) WHEN 'X' THEN 10 ELSE CAST(substr(guardian_id, 18, 1) AS INTEGER) END,
       feed_seq
FROM certificate_guardians;
DROP TABLE certificate_guardians;
ALTER TABLE new_certificate_guardians RENAME TO certificate_guardians;
