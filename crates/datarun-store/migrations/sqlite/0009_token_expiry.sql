-- Issue 9: tokens expire and can be revoked, and every hub caches tokens instead of
-- reading them on each request. `expires_at`: Unix milliseconds; tokens issued before
-- this migration expire 30 days after it (an operator reissues them). `auth_state.epoch`
-- rises with every revocation: each hub polls it and drops its token cache when it moves.
ALTER TABLE tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET expires_at = CAST(unixepoch('subsec') * 1000 AS INTEGER) + 2592000000;
CREATE INDEX tokens_actor ON tokens (actor_id);

CREATE TABLE auth_state (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
) STRICT;
INSERT INTO auth_state (id, epoch) VALUES (1, 0);
