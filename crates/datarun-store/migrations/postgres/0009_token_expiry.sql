-- Issue 9: tokens expire and can be revoked, and every hub caches tokens instead of
-- reading them on each request. `expires_at`: Unix milliseconds; tokens issued before
-- this migration expire 30 days after it (an operator reissues them). `auth_state.epoch`
-- rises with every revocation: each hub polls it and drops its token cache when it moves.
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
UPDATE tokens SET expires_at = (extract(epoch FROM now()) * 1000)::bigint + 2592000000;
ALTER TABLE tokens ALTER COLUMN expires_at SET NOT NULL;
CREATE INDEX tokens_actor ON tokens (actor_id);

CREATE TABLE auth_state (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO auth_state (id, epoch) VALUES (1, 0);
