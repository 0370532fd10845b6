-- Denial analytics (docs/admin.md#denials): refused starts and activations, rolled up per license, UTC
-- day and refusal code by the worker from the plane's `refused` events (heartline/plane/events.py).
-- Not audited: like the session mirror it is telemetry written by the worker, not a change of business
-- data.
CREATE TABLE license_refusals_daily (
    license_id bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    day        date   NOT NULL,
    code       text   NOT NULL CONSTRAINT license_refusals_daily_code CHECK (code IN (
                   'SESSION_LIMIT_REACHED', 'DEVICE_LIMIT_REACHED', 'DEVICE_CHANGE_LIMIT_REACHED',
                   'LICENSE_SUSPENDED', 'LICENSE_REVOKED', 'LICENSE_EXPIRED', 'LICENSE_NOT_YET_VALID')),
    refusals   bigint NOT NULL CONSTRAINT license_refusals_daily_positive CHECK (refusals > 0),
    last_at    timestamptz NOT NULL,
    PRIMARY KEY (license_id, day, code)
);
CREATE INDEX license_refusals_daily_day ON license_refusals_daily (day);

-- The `refused` events already counted, by event id ('<shard>-<stream id>'): a batch the worker reads
-- again (a crash between its commit and its acknowledgement) counts nothing twice.  Only needed until
-- the entries are acknowledged; the worker deletes rows older than a day.
CREATE TABLE license_refusal_events (
    event_id    text PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX license_refusal_events_recorded ON license_refusal_events (recorded_at);
