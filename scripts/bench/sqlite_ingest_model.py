#!/usr/bin/env python3
"""A model of the SQLite ingest transaction's writes, for comparing index shapes.

`datarun bench ingest` measures the whole hub, and on a shared 2-core machine its
ratio moves by +-0.07 from run to run: too much to see a change worth a tenth of the
SQLite writer's time. This model runs only the part such a change touches, on one
thread: the tables and indexes the ingest writes (`records` with its record-id and
change-feed indexes, `certificates` WITHOUT ROWID with its index by subject, and
`certificate_guardians`), written as the hub writes them (batches of 4,000 records in
one `BEGIN IMMEDIATE` transaction, multi-row statements of 200 rows, certificates and
guardians in key order, a `PASSIVE` checkpoint every 8 batches, the hub's pragmas), with
the sample data's key shapes (record ids of 32 hex digits, resident ids, certificate
numbers that grow per city and year). It prints the CPU time per record and the
write-ahead-log frames written per record, which does not vary from run to run.

Usage: sqlite_ingest_model.py before|after|without [records]
  before   the index shapes of migrations 0001-0017 (subject and record type; guardians
           by resident id as text)
  after    migrations 0018 and 0019 (subject alone; guardians by number)
  without  neither an index by subject nor guardians: what the two cost at most
Environment: PAGE_SIZE (default 8192, the hub's `SQLITE_PAGE_BYTES`; SQLite's own default
is 4096), DIR (default /tmp).
"""

import hashlib
import os
import random
import sqlite3
import sys
import time

BATCH = 4000
ROWS_PER_STATEMENT = 200
CHECKPOINT_EVERY = 8


def resident_id(rnd):
    division = rnd.choice([440103, 440104, 440105, 440106, 440111, 440303, 440304, 445102])
    return "%06d%08d%03d%s" % (
        division,
        rnd.randint(19700101, 20251231),
        rnd.randint(0, 999),
        rnd.choice("0123456789X"),
    )


def guardian_number(resident):
    return int(resident[:17]) * 11 + (10 if resident[17] == "X" else int(resident[17]))


def insert(db, table, rows, columns):
    for k in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[k : k + ROWS_PER_STATEMENT]
        values = ",".join(["(" + ",".join("?" * columns) + ")"] * len(chunk))
        db.execute(f"INSERT OR FAIL INTO {table} VALUES {values}", [v for row in chunk for v in row])


def main():
    variant = sys.argv[1]
    if variant not in ("before", "after", "without"):
        sys.exit(__doc__)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
    path = os.path.join(os.environ.get("DIR", "/tmp"), f"sqlite_ingest_model_{variant}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=%d" % int(os.environ.get("PAGE_SIZE", "8192")))
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536",
                   "mmap_size=268435456", "wal_autocheckpoint=0", "temp_store=MEMORY"):
        db.execute("PRAGMA " + pragma)
    db.execute("""CREATE TABLE records (record_id TEXT PRIMARY KEY, certificate_id TEXT NOT NULL,
        record_type TEXT NOT NULL, department_id TEXT NOT NULL, subject_id TEXT NOT NULL,
        signed_at INTEGER NOT NULL, fields TEXT NOT NULL, feed_seq INTEGER) STRICT""")
    db.execute("CREATE UNIQUE INDEX records_feed ON records (feed_seq)")
    db.execute("""CREATE TABLE certificates (certificate_id TEXT PRIMARY KEY, record_type TEXT NOT NULL,
        department_id TEXT NOT NULL, subject_id TEXT NOT NULL, current_record_id TEXT NOT NULL,
        signed_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, status TEXT NOT NULL,
        superseded_by TEXT) STRICT, WITHOUT ROWID""")
    if variant == "before":
        db.execute("CREATE INDEX certificates_subject ON certificates (subject_id, record_type)")
    elif variant == "after":
        db.execute("CREATE INDEX certificates_subject ON certificates (subject_id)")
    guardian_type = "INTEGER" if variant == "after" else "TEXT"
    db.execute(f"""CREATE TABLE certificate_guardians (guardian {guardian_type} NOT NULL,
        feed_seq INTEGER NOT NULL, PRIMARY KEY (guardian, feed_seq)) STRICT, WITHOUT ROWID""")

    rnd = random.Random(1)
    rows = [
        (
            "health-" + hashlib.md5(str(i).encode()).hexdigest(),
            "CSZM%04d%04d%08d" % (rnd.choice([4401, 4403, 4451]), rnd.randint(2010, 2025), i + 1),
            resident_id(rnd),
            resident_id(rnd),
            resident_id(rnd),
        )
        for i in range(count)
    ]
    fields = "x" * 600
    feed_seq, frames, batches = 0, 0, 0
    started = time.process_time()
    for first in range(0, count, BATCH):
        batch = rows[first : first + BATCH]
        db.execute("BEGIN IMMEDIATE")
        records, guardians = [], set()
        for record_id, certificate_id, subject, mother, father in batch:
            feed_seq += 1
            records.append((record_id, certificate_id, "health.birth_certificate", "health", subject,
                            1700000000000, fields, feed_seq))
            for guardian in (mother, father):
                guardians.add((guardian_number(guardian) if variant == "after" else guardian, feed_seq))
        insert(db, "records", records, 8)
        certificates = sorted(
            (certificate_id, "health.birth_certificate", "health", subject, record_id,
             1700000000000, 1700000000001, "VALID", None)
            for record_id, certificate_id, subject, _, _ in batch
        )
        insert(db, "certificates", certificates, 9)
        if variant != "without":
            insert(db, "certificate_guardians", sorted(guardians), 2)
        db.execute("COMMIT")
        batches += 1
        if batches % CHECKPOINT_EVERY == 0:
            # The log starts again at the next transaction once every frame is copied,
            # so each pass reports the frames written since the one before.
            frames += db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    cpu = time.process_time() - started
    frames += db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    print(f"{variant}: {cpu / count * 1e6:.1f} us CPU per record, "
          f"{frames / count:.2f} log frames per record ({count} records)")


if __name__ == "__main__":
    main()
