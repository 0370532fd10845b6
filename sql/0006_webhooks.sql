-- Webhooks (Standard Webhooks): endpoints with their signing secrets and event filters, the messages the
-- worker sends, one delivery per message and endpoint, and every attempt of each delivery.
-- docs/webhooks.md describes the events, the retry schedule and the delivery guarantees.

CREATE TABLE webhook_endpoints (
    id               bigserial PRIMARY KEY,
    url              text NOT NULL
                         CONSTRAINT webhook_endpoints_url_http CHECK (url ~ '^https?://[^/\s]+' AND length(url) <= 2000),
    description      text,
    -- empty: every event; otherwise the event types sent to this endpoint
    event_types      text[] NOT NULL DEFAULT '{}'
                         CONSTRAINT webhook_endpoints_event_types_known CHECK (event_types <@ ARRAY[
                             'session.started', 'session.ended', 'session.refused',
                             'device.activated', 'device.deactivated',
                             'license.created', 'license.updated', 'license.suspended', 'license.revoked',
                             'license.expired', 'resource.allocated', 'resource.released',
                             'backup.failed']::text[]),
    -- the whsec_ signing secret, Fernet-encrypted with a key derived from HEARTLINE_WEBHOOK_SECRET_KEY
    secret_encrypted text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_at      timestamptz,
    disabled_reason  text,
    -- first failed attempt since the last success; the worker disables the endpoint when this is older
    -- than HEARTLINE_WEBHOOK_DISABLE_AFTER_S
    failing_since    timestamptz,
    last_success_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_disabled CHECK (enabled OR disabled_at IS NOT NULL)
);

-- One message per event: `id` is the webhook-id header, derived from the event's source so a replayed
-- source (a stream entry read twice) maps onto the same message; `payload` is the exact body signed.
CREATE TABLE webhook_messages (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    event_type  text NOT NULL,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    message_id      text NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- due time of the next attempt; while an attempt is in flight, the end of the sender's lease
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    -- an admin asked for this delivery to be sent again; its next attempt is logged as manual
    manual_resend   boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_once UNIQUE (message_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);

CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    latency_ms       integer NOT NULL CHECK (latency_ms >= 0),
    -- the first characters of the response body, or of the error when there was no response
    response_excerpt text,
    error            text,
    manual           boolean NOT NULL DEFAULT false
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at DESC);

-- Changes made in PostgreSQL (devices, licenses, resources) become webhook events through this outbox:
-- a trigger adds a row in the same transaction as the change, the worker takes rows out (DELETE ...
-- RETURNING, so each is handed on exactly once) and turns them into messages.
CREATE TABLE webhook_outbox (
    id          bigserial PRIMARY KEY,
    event_type  text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Small worker state, e.g. up to which valid_until license expiries have been announced.
CREATE TABLE webhook_cursors (
    name     text PRIMARY KEY,
    position timestamptz NOT NULL
);

CREATE FUNCTION webhook_outbox_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    row_data jsonb := to_jsonb(coalesce(NEW, OLD));
BEGIN
    IF TG_TABLE_NAME = 'device_registrations' THEN
        IF TG_OP = 'INSERT' AND NEW.is_active THEN kind := 'device.activated';
        ELSIF TG_OP = 'UPDATE' AND NEW.is_active AND NOT OLD.is_active THEN kind := 'device.activated';
        ELSIF TG_OP = 'UPDATE' AND OLD.is_active AND NOT NEW.is_active THEN kind := 'device.deactivated';
        END IF;
    ELSIF TG_TABLE_NAME = 'licenses' THEN
        IF TG_OP = 'INSERT' THEN kind := 'license.created';
        ELSIF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'suspended' THEN
            kind := 'license.suspended';
        ELSIF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'revoked' THEN
            kind := 'license.revoked';
        ELSIF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'updated_at' - 'version')
                                   <> (to_jsonb(NEW) - 'updated_at' - 'version') THEN
            kind := 'license.updated';
        END IF;
    ELSIF TG_TABLE_NAME = 'resource_pools' THEN
        IF NEW.status = 'allocated' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'allocated'
                                         OR OLD.license_id IS DISTINCT FROM NEW.license_id) THEN
            kind := 'resource.allocated';
        ELSIF TG_OP = 'UPDATE' AND OLD.status = 'allocated' AND NEW.status <> 'allocated' THEN
            kind := 'resource.released';
            row_data := row_data || jsonb_build_object('license_id', OLD.license_id);
        END IF;
    END IF;
    IF kind IS NOT NULL THEN
        INSERT INTO webhook_outbox (event_type, data) VALUES (kind, row_data);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER device_registrations_webhooks AFTER INSERT OR UPDATE ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_change();
CREATE TRIGGER licenses_webhooks AFTER INSERT OR UPDATE ON licenses
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_change();
CREATE TRIGGER resource_pools_webhooks AFTER INSERT OR UPDATE ON resource_pools
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_change();

CREATE TRIGGER webhook_endpoints_touch BEFORE UPDATE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION touch_row();
-- Endpoint settings are audited; the worker's bookkeeping columns alone are not worth a row.
CREATE TRIGGER webhook_endpoints_audit AFTER INSERT OR UPDATE OR DELETE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('updated_at', 'failing_since', 'last_success_at');
