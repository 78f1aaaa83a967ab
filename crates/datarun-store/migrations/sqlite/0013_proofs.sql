-- Issue 9: instant proofs (秒批). Each proof the hub issues is kept, unsigned, as the
-- JSON document it stated (`document`); the hub signs it whenever it hands it out.
CREATE TABLE proofs (
    proof_id   TEXT PRIMARY KEY,
    subject_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    document   TEXT NOT NULL
) STRICT;
CREATE INDEX proofs_subject ON proofs (subject_id, issued_at);
