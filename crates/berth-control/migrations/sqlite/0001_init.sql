-- berth control plane, initial schema (SQLite). Times are nanoseconds since the Unix epoch, UTC.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per owner key; a reused owner name gets the next generation in the same row.
CREATE TABLE workspaces (
    owner TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'closed', 'deleting', 'deleted')),
    volume TEXT NOT NULL UNIQUE,
    volume_state TEXT NOT NULL CHECK (volume_state IN ('pending', 'present', 'removed')),
    volume_removed_at INTEGER,
    volume_outcome TEXT,
    size_bytes INTEGER NOT NULL,
    storage_class TEXT,
    access_mode TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    repos TEXT NOT NULL DEFAULT '[]',
    lease_epoch INTEGER NOT NULL DEFAULT 0,
    lease_session TEXT,
    lease_instance TEXT,
    lease_expires INTEGER NOT NULL DEFAULT 0,
    latest_snapshot TEXT,
    delete_step TEXT,
    last_error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at INTEGER,
    claim_holder TEXT,
    claim_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    closed_at INTEGER
);

CREATE INDEX workspaces_gc ON workspaces (closed_at)
    WHERE state IN ('closed', 'deleted') AND volume_state <> 'removed';
CREATE INDEX workspaces_deleting ON workspaces (updated_at) WHERE state = 'deleting';
CREATE INDEX workspaces_leases ON workspaces (lease_expires) WHERE lease_session IS NOT NULL;

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES workspaces (owner),
    generation INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    instance TEXT NOT NULL,
    node TEXT,
    pool TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT
);

CREATE INDEX sessions_open ON sessions (owner) WHERE ended_at IS NULL;

CREATE TABLE snapshots (
    owner TEXT NOT NULL,
    generation INTEGER NOT NULL,
    snapshot_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}',
    retired_at INTEGER,
    PRIMARY KEY (owner, generation, snapshot_id)
);

CREATE TABLE drains (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'draining')),
    nonce TEXT,
    instance TEXT,
    since INTEGER,
    reason TEXT,
    cleared_at INTEGER,
    cleared_by TEXT,
    updated_at INTEGER NOT NULL
);

CREATE INDEX drains_draining ON drains (since) WHERE state = 'draining';

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT,
    generation INTEGER,
    session_id TEXT,
    scope TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX events_owner ON events (owner, id);

-- Volumes labelled as berth's that no record claims, and when the orphan sweep first saw them.
CREATE TABLE orphans (
    volume TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
);

-- Named leases that keep reconciler sweeps of several replicas from overlapping.
CREATE TABLE locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
