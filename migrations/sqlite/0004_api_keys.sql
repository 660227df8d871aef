-- API keys issued through the API (POST /v1/keys), beside those given by flags: the SHA-256
-- of each secret (hex), never the secret itself
CREATE TABLE api_keys (
    name          TEXT PRIMARY KEY,
    scope         TEXT NOT NULL CHECK (scope IN ('all', 'read', 'ingest')),
    -- JSON array of the datasets the key is limited to; NULL: every dataset
    datasets      TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL
);
