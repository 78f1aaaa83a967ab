-- The pull side. `entitlements`: which record types a department may pull in bulk from
-- the change feed, registered by the operator. `records.feed_seq`: each stored record's
-- place in the change feed, handed out in commit order from `feed_head` inside the
-- ingest transaction, so a reader paging by it never skips a record that commits late.
-- Records stored before this migration get their rowid, which is their insert order.
CREATE TABLE entitlements (
    department_id TEXT NOT NULL REFERENCES departments (department_id),
    record_type   TEXT NOT NULL,
    granted_at    INTEGER NOT NULL,
    PRIMARY KEY (department_id, record_type)
) STRICT;

CREATE TABLE feed_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
) STRICT;

ALTER TABLE records ADD COLUMN feed_seq INTEGER;
UPDATE records SET feed_seq = rowid;
INSERT INTO feed_head (id, seq) SELECT 1, COALESCE(MAX(feed_seq), 0) FROM records;
CREATE UNIQUE INDEX records_feed ON records (feed_seq);
