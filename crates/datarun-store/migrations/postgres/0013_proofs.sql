-- Issue 9: instant proofs (秒批). Each proof the hub issues is kept, unsigned, as the
-- JSON document it stated (`document`, text: kept exactly as issued); the hub signs it
-- whenever it hands it out.
CREATE TABLE proofs (
    proof_id   TEXT COLLATE "C" PRIMARY KEY,
    subject_id TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    document   TEXT NOT NULL
);
CREATE INDEX proofs_subject ON proofs (subject_id, issued_at);
