-- Issue 9: the hub signs lookup responses and consent artefacts. Each hub instance
-- signs with its own Ed25519 key and registers the public half here at start, so a
-- verifier that fetched the keys from any hub (GET /v1/hub/keys) can check a document
-- signed by any other.
CREATE TABLE hub_keys (
    key_id        TEXT PRIMARY KEY,
    public_key    bytea NOT NULL CHECK (octet_length(public_key) = 32),
    registered_at BIGINT NOT NULL
);
