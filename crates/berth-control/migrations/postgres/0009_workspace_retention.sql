-- A workspace's own retention policy (`keep-last=N,hourly=N,daily=N,weekly=N[,monthly=N]`), applied
-- by scheduled retention instead of the server's; NULL: the server's.

ALTER TABLE workspaces ADD COLUMN retention TEXT;
