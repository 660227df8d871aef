-- tandem catalog, Postgres dialect. Times are UTC microseconds since the epoch.
CREATE TABLE datasets (
    name          TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    -- last log sequence number compacted into the master dataset
    compacted_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE views (
    name            TEXT PRIMARY KEY,
    dataset         TEXT NOT NULL REFERENCES datasets (name),
    spec            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    -- the speed layer of a view holds events after this sequence number until its first version
    start_seq       BIGINT NOT NULL,
    current_version BIGINT
);

CREATE TABLE runs (
    id           BIGSERIAL PRIMARY KEY,
    view_name    TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    trigger_kind TEXT NOT NULL CHECK (trigger_kind IN ('schedule', 'manual', 'cli', 'create')),
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    heartbeat_at BIGINT NOT NULL,
    watermark    BIGINT,
    rows_in      BIGINT,
    rows_out     BIGINT,
    version      BIGINT,
    error        TEXT
);
-- at most one queued or running run per view, across every process sharing the catalog
CREATE UNIQUE INDEX runs_one_active ON runs (view_name) WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_view ON runs (view_name, id);

CREATE TABLE versions (
    view_name  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    run_id     BIGINT NOT NULL,
    watermark  BIGINT NOT NULL,
    -- JSON array of object-store paths
    files      TEXT NOT NULL,
    row_count  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (view_name, version)
);
