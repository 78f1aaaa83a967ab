-- Issue 6: a certificate's guardians as one small index keyed by guardian. The table had
-- two indexes (by certificate, and by guardian), both taking a random key for each
-- guardian of each stored certificate, and every new version first deleted its
-- certificate's old rows. Now a row is the guardian and the change-feed position of
-- the stored version that names them (`records.feed_seq`, unique): storing a version
-- only inserts its rows. The guardians of a certificate are the rows of its current
-- version (readers join `records` and `certificates` on `current_record_id`); rows of
-- superseded versions stay as history, like the versions themselves.
CREATE TABLE new_certificate_guardians (
    guardian_id TEXT COLLATE "C" NOT NULL,
    feed_seq    BIGINT NOT NULL,
    PRIMARY KEY (guardian_id, feed_seq)
);
INSERT INTO new_certificate_guardians (guardian_id, feed_seq)
SELECT DISTINCT g.guardian_id, r.feed_seq
FROM certificate_guardians g
JOIN certificates c ON c.certificate_id = g.certificate_id
JOIN records r ON r.record_id = c.current_record_id;
DROP TABLE certificate_guardians;
ALTER TABLE new_certificate_guardians RENAME TO certificate_guardians;
ALTER INDEX new_certificate_guardians_pkey RENAME TO certificate_guardians_pkey;
