-- Issue 6: a certificate's guardians as one small tree keyed by guardian. The table was
-- two B-trees (by certificate, and an index by guardian) of about 60 bytes a row, both
-- taking a random key for each guardian of each stored certificate, and every new
-- version first deleted its certificate's old rows. Now a row is the guardian and the
-- change-feed position of the stored version that names them (`records.feed_seq`,
-- unique), about 25 bytes: storing a version only inserts its rows. The guardians of a
-- certificate are the rows of its current version (readers join `records` and
-- `certificates` on `current_record_id`); rows of superseded versions stay as history,
-- like the versions themselves. The reference to `records` is checked by
-- `Store::dangling_references` rather than a foreign key, as on PostgreSQL.
CREATE TABLE new_certificate_guardians (
    guardian_id TEXT NOT NULL,
    feed_seq    INTEGER NOT NULL,
    PRIMARY KEY (guardian_id, feed_seq)
) STRICT, WITHOUT ROWID;
INSERT INTO new_certificate_guardians (guardian_id, feed_seq)
SELECT DISTINCT g.guardian_id, r.feed_seq
FROM certificate_guardians g
JOIN certificates c ON c.certificate_id = g.certificate_id
JOIN records r ON r.record_id = c.current_record_id;
DROP TABLE certificate_guardians;
ALTER TABLE new_certificate_guardians RENAME TO certificate_guardians;
