-- The session a workspace drain evicts: it may not acknowledge its own drain.

ALTER TABLE drains ADD COLUMN session TEXT;
