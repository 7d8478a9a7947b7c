-- At-risk workspaces: how each session ended, the final snapshot a session published, and the
-- session whose unclean end left a workspace's volume holding work no snapshot has.

ALTER TABLE sessions ADD COLUMN outcome TEXT
    CHECK (outcome IN ('clean', 'drained', 'unclean', 'expired', 'fenced', 'deleted'));
ALTER TABLE sessions ADD COLUMN final_snapshot TEXT;

ALTER TABLE workspaces ADD COLUMN at_risk_since INTEGER;
ALTER TABLE workspaces ADD COLUMN at_risk_outcome TEXT;
ALTER TABLE workspaces ADD COLUMN at_risk_session TEXT;

CREATE INDEX workspaces_at_risk ON workspaces (at_risk_since) WHERE at_risk_since IS NOT NULL;
