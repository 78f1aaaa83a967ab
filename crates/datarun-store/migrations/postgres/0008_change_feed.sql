-- The pull side. `entitlements`: which record types a department may pull in bulk from
-- the change feed, registered by the operator. `records.feed_seq`: each stored record's
-- place in the change feed, handed out in commit order from `feed_head` inside the
-- ingest transaction (its row lock orders concurrent hubs), so a reader paging by it
-- never skips a record that commits late. Records stored before this migration are
-- numbered in the order they were stored.
CREATE TABLE entitlements (
    department_id TEXT NOT NULL REFERENCES departments (department_id),
    record_type   TEXT NOT NULL,
    granted_at    BIGINT NOT NULL,
    PRIMARY KEY (department_id, record_type)
);

CREATE TABLE feed_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);

ALTER TABLE records ADD COLUMN feed_seq BIGINT;
UPDATE records r SET feed_seq = n.seq
FROM (SELECT record_id, row_number() OVER (ORDER BY stored_at, record_id) AS seq FROM records) n
WHERE n.record_id = r.record_id;
INSERT INTO feed_head (id, seq) SELECT 1, COALESCE(MAX(feed_seq), 0) FROM records;
CREATE UNIQUE INDEX records_feed ON records (feed_seq);
