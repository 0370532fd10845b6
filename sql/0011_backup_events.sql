-- Backups as they happen, written by whoever ran them: the worker's daily job, `heartline backup`,
-- `heartline migrate` (the backup before a schema change).  The worker's /metrics, `heartline status` and
-- the admin's banner read the newest of each kind to show how fresh the backups are.
-- Not audited: it records operations, not business data.  A restore brings the table back as it was when
-- that backup was taken (its own 'created' row is written after its snapshot), so after a restore the
-- newest backup shows as older than it is until the next one: take a fresh backup after restoring.
CREATE TABLE backup_events (
    id          bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL CHECK (kind IN ('created', 'uploaded', 'failed')),
    -- archive name (server_backup_YYYYMMDD_HHMMSS); NULL when a backup failed before it had one
    name        text,
    trigger     text NOT NULL CHECK (trigger IN ('scheduled', 'migrate', 'manual')),
    -- for 'failed': the step (create, push) and the error
    detail      text
);
CREATE INDEX backup_events_kind_time ON backup_events (kind, occurred_at DESC);
