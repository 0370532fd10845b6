-- Durable side of the session plane: the live-session mirror, ended sessions, and heartbeats.

-- Mirror of the live sessions in Redis, written by the worker from session events; lags the plane by at
-- most a flush interval.  Not audited: it is telemetry, and session_history keeps every session.
CREATE TABLE license_sessions (
    session_token     uuid PRIMARY KEY,
    license_id        bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    device_id         bigint REFERENCES device_registrations (id) ON DELETE SET NULL,
    hardware_fingerprint text,
    started_at        timestamptz NOT NULL,
    last_heartbeat_at timestamptz,
    heartbeat_count   bigint NOT NULL DEFAULT 0,
    client_version    text,
    client_ip         inet
);
CREATE INDEX license_sessions_license ON license_sessions (license_id);

CREATE TABLE session_history (
    session_token   uuid PRIMARY KEY,     -- primary key: a replayed "ended" event writes nothing twice
    license_id      bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    device_id       bigint REFERENCES device_registrations (id) ON DELETE SET NULL,
    hardware_fingerprint text,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL,
    end_reason      text NOT NULL CHECK (end_reason IN (
                        'client_end', 'timeout', 'admin_terminated', 'device_deactivated',
                        'license_suspended', 'license_expired', 'plane_lost')),
    heartbeat_count bigint NOT NULL DEFAULT 0,
    client_version  text,
    client_ip       inet,
    CONSTRAINT session_history_order CHECK (ended_at >= started_at)
);
CREATE INDEX session_history_license_ended ON session_history (license_id, ended_at DESC);
CREATE INDEX session_history_ended ON session_history (ended_at DESC);
CREATE INDEX session_history_reason ON session_history (end_reason, ended_at DESC);

-- One row per accepted heartbeat, partitioned by month of received_at.  event_id is the Redis stream
-- entry it came from ('<shard>-<ms>-<seq>'); received_at is derived from that id, so a re-delivered
-- batch hits the same (received_at, event_id) key and is not stored twice.  No DEFAULT partition: it
-- would block creating the month partitions that the worker adds ahead of time.
CREATE TABLE license_heartbeats (
    received_at   timestamptz NOT NULL,
    event_id      text        NOT NULL,
    license_id    bigint      NOT NULL,
    session_token uuid        NOT NULL,
    device_id     bigint,
    PRIMARY KEY (received_at, event_id)
) PARTITION BY RANGE (received_at);
CREATE INDEX license_heartbeats_license_time ON license_heartbeats (license_id, received_at DESC);

-- Creates the partition for the (UTC) month containing `month_start`; safe to call repeatedly.
CREATE FUNCTION ensure_heartbeat_partition(month_start date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month_start)::date;
    name      text := format('license_heartbeats_%s', to_char(first_day, 'YYYY_MM'));
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF license_heartbeats FOR VALUES FROM (%L) TO (%L)',
            name, first_day::timestamp AT TIME ZONE 'UTC',
            (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END;
$$;
