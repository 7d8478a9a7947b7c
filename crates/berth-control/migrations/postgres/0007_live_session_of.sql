-- The live session of a sandbox instance (a container's death ends it: `live_session_of`), found
-- through an index instead of a scan of every session ever recorded.

CREATE INDEX sessions_live_instance ON sessions (instance) WHERE ended_at IS NULL;
