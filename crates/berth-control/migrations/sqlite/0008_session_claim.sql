-- The claim of a session handed to a warm sandbox that fetches it (kubernetes): the supervisor's
-- spec without its token (the sandbox holds that from its start), the agent command and its
-- environment, as JSON.

ALTER TABLE sessions ADD COLUMN claim TEXT;
