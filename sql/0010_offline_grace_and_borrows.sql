-- Offline grace and seat borrowing (docs/client.md).
-- offline_grace_s: how long past an answer's expires_at a client may go on without reaching the edge
-- (signed into every session answer; the client never chooses it).  max_borrow_s: the longest a live
-- session may be turned into a borrowed seat held offline; 0 = borrowing not allowed.
ALTER TABLE licenses
    ADD COLUMN offline_grace_s integer NOT NULL DEFAULT 0
        CONSTRAINT licenses_offline_grace_range CHECK (offline_grace_s BETWEEN 0 AND 2592000),
    ADD COLUMN max_borrow_s integer NOT NULL DEFAULT 0
        CONSTRAINT licenses_max_borrow_range CHECK (max_borrow_s BETWEEN 0 AND 7776000);

ALTER TABLE session_history DROP CONSTRAINT session_history_end_reason_check;
ALTER TABLE session_history ADD CONSTRAINT session_history_end_reason_check CHECK (end_reason IN (
    'client_end', 'timeout', 'admin_terminated', 'device_deactivated', 'license_suspended',
    'license_expired', 'plane_lost', 'borrow_expired', 'borrow_returned'));

-- A borrow: the session (and so the seat) is held until `until` or its return, whether or not the
-- client beats.  The plane holds the seat; this row is the record the return call and the admin use.
-- Expired is not stored: a borrow is over once until has passed (the reaper ends its session then).
CREATE TABLE session_borrows (
    id                   uuid PRIMARY KEY,
    license_id           bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    session_token        uuid NOT NULL,
    hardware_fingerprint text NOT NULL,
    borrowed_at          timestamptz NOT NULL DEFAULT now(),
    until                timestamptz NOT NULL,
    returned_at          timestamptz,
    revoked_at           timestamptz,
    revoked_by           text,
    CONSTRAINT session_borrows_until_after_start CHECK (until > borrowed_at),
    CONSTRAINT session_borrows_one_ending CHECK (returned_at IS NULL OR revoked_at IS NULL)
);
CREATE INDEX session_borrows_license ON session_borrows (license_id, borrowed_at DESC);
CREATE INDEX session_borrows_open ON session_borrows (until) WHERE returned_at IS NULL AND revoked_at IS NULL;

CREATE TRIGGER session_borrows_audit AFTER INSERT OR UPDATE OR DELETE ON session_borrows
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
