-- Grace after a missed heartbeat (docs/licenses-policy.md#grace-after-a-missed-heartbeat).
-- resume_grace_s: for this long past a session's deadline the same device may bring the session back
-- (same token) when a seat is free; the lapsed session holds no seat meanwhile.  0 = none (a session
-- past its deadline is over).  session_history.lapses: how many times the session missed its deadline
-- (its revivals, plus the last one when it ended as timeout); history keeps one row per session.
ALTER TABLE licenses
    ADD COLUMN resume_grace_s integer NOT NULL DEFAULT 0
        CONSTRAINT licenses_resume_grace_range CHECK (resume_grace_s BETWEEN 0 AND 86400);

ALTER TABLE session_history
    ADD COLUMN lapses integer NOT NULL DEFAULT 0
        CONSTRAINT session_history_lapses_nonnegative CHECK (lapses >= 0);
