-- Retention and row horizons: the purge finds rows past their horizon by index, and retention
-- finds each live session's last publish without scanning every pointer.

CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX snapshots_retired ON snapshots (retired_at) WHERE retired_at IS NOT NULL;
CREATE INDEX snapshots_session ON snapshots (session_id, recorded_at);
CREATE INDEX drains_cleared ON drains (cleared_at) WHERE state = 'open';
