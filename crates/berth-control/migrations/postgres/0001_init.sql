-- berth control plane, initial schema (PostgreSQL). Times are nanoseconds since the Unix epoch, UTC.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per owner key; a reused owner name gets the next generation in the same row.
CREATE TABLE workspaces (
    owner TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'closed', 'deleting', 'deleted')),
    volume TEXT NOT NULL UNIQUE,
    volume_state TEXT NOT NULL CHECK (volume_state IN ('pending', 'present', 'removed')),
    volume_removed_at BIGINT,
    volume_outcome TEXT,
    size_bytes BIGINT NOT NULL,
    storage_class TEXT,
    access_mode TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    repos TEXT NOT NULL DEFAULT '[]',
    lease_epoch BIGINT NOT NULL DEFAULT 0,
    lease_session TEXT,
    lease_instance TEXT,
    lease_expires BIGINT NOT NULL DEFAULT 0,
    latest_snapshot TEXT,
    delete_step TEXT,
    last_error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    retry_at BIGINT,
    claim_holder TEXT,
    claim_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    closed_at BIGINT
);

CREATE INDEX workspaces_gc ON workspaces (closed_at)
    WHERE state IN ('closed', 'deleted') AND volume_state <> 'removed';
CREATE INDEX workspaces_deleting ON workspaces (updated_at) WHERE state = 'deleting';
CREATE INDEX workspaces_leases ON workspaces (lease_expires) WHERE lease_session IS NOT NULL;

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES workspaces (owner),
    generation BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    instance TEXT NOT NULL,
    node TEXT,
    pool TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT
);

CREATE INDEX sessions_open ON sessions (owner) WHERE ended_at IS NULL;

CREATE TABLE snapshots (
    owner TEXT NOT NULL,
    generation BIGINT NOT NULL,
    snapshot_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}',
    retired_at BIGINT,
    PRIMARY KEY (owner, generation, snapshot_id)
);

CREATE TABLE drains (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'draining')),
    nonce TEXT,
    instance TEXT,
    since BIGINT,
    reason TEXT,
    cleared_at BIGINT,
    cleared_by TEXT,
    updated_at BIGINT NOT NULL
);

CREATE INDEX drains_draining ON drains (since) WHERE state = 'draining';

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT,
    generation BIGINT,
    session_id TEXT,
    scope TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX events_owner ON events (owner, id);

-- Volumes labelled as berth's that no record claims, and when the orphan sweep first saw them.
CREATE TABLE orphans (
    volume TEXT PRIMARY KEY,
    first_seen BIGINT NOT NULL
);

-- Named leases that keep reconciler sweeps of several replicas from overlapping.
CREATE TABLE locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until BIGINT NOT NULL
);
