-- Core business tables: customers, licenses, devices, API keys, and the generic audit trigger.

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    table_name  text        NOT NULL,
    operation   text        NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    row_id      text,
    old_values  jsonb,
    new_values  jsonb
);
CREATE INDEX audit_log_table_time ON audit_log (table_name, occurred_at DESC);
CREATE INDEX audit_log_actor_time ON audit_log (actor, occurred_at DESC);
CREATE INDEX audit_log_time ON audit_log (occurred_at DESC);

-- One trigger for every audited table, so no code path can forget the audit row.  The actor comes from
-- the transaction-local setting heartline.actor ('admin:<user>', 'edge', 'worker'); without it the
-- database role is recorded.  Trigger arguments name columns whose changes alone are not worth a row
-- (e.g. last_seen_at, which the worker bumps on every flush).
CREATE FUNCTION audit_row_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
    ignored text[] := TG_ARGV;
    actor   text := coalesce(nullif(current_setting('heartline.actor', true), ''), 'db:' || current_user);
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN new_row := to_jsonb(NEW); END IF;
    IF TG_OP = 'UPDATE' THEN
        IF (old_row - ignored) = (new_row - ignored) THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO audit_log (actor, table_name, operation, row_id, old_values, new_values)
    VALUES (actor, TG_TABLE_NAME, TG_OP,
            coalesce(new_row ->> 'id', old_row ->> 'id'), old_row, new_row);
    RETURN NULL;
END;
$$;

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) > 0),
    email       text,
    company     text,
    phone       text,
    notes       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE licenses (
    id                        bigserial PRIMARY KEY,
    customer_id               bigint NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    license_key               text NOT NULL UNIQUE CHECK (length(license_key) BETWEEN 8 AND 64),
    product                   text NOT NULL DEFAULT 'default',
    status                    text NOT NULL DEFAULT 'active'
                                  CHECK (status IN ('active', 'suspended', 'revoked')),
    valid_from                timestamptz NOT NULL DEFAULT now(),
    valid_until               timestamptz,
    device_limit              integer NOT NULL DEFAULT 1
                                  CONSTRAINT licenses_device_limit_range CHECK (device_limit BETWEEN 1 AND 10),
    concurrent_sessions_limit integer NOT NULL DEFAULT 1
                                  CONSTRAINT licenses_sessions_limit_range
                                  CHECK (concurrent_sessions_limit >= 1 AND concurrent_sessions_limit <= device_limit),
    heartbeat_interval_s      integer CONSTRAINT licenses_heartbeat_interval_positive
                                  CHECK (heartbeat_interval_s IS NULL OR heartbeat_interval_s >= 1),
    heartbeat_timeout_s       integer CONSTRAINT licenses_heartbeat_timeout_positive
                                  CHECK (heartbeat_timeout_s IS NULL OR heartbeat_timeout_s >= 2),
    quota_domains             integer NOT NULL DEFAULT 0 CHECK (quota_domains >= 0),
    quota_ipv4                integer NOT NULL DEFAULT 0 CHECK (quota_ipv4 >= 0),
    quota_phones              integer NOT NULL DEFAULT 0 CHECK (quota_phones >= 0),
    notes                     text,
    -- bumped on every change; the edge's Redis license cache compares it to notice edits
    version                   integer NOT NULL DEFAULT 1,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    -- the timeout must exceed the interval, whichever of the two comes from the defaults (30 / 60)
    CONSTRAINT licenses_timeout_exceeds_interval
        CHECK (coalesce(heartbeat_timeout_s, 60) > coalesce(heartbeat_interval_s, 30)),
    CONSTRAINT licenses_valid_range CHECK (valid_until IS NULL OR valid_until > valid_from)
);
CREATE INDEX licenses_customer ON licenses (customer_id);
CREATE INDEX licenses_valid_until ON licenses (valid_until) WHERE valid_until IS NOT NULL;

CREATE FUNCTION touch_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF TG_TABLE_NAME = 'licenses' THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TABLE device_registrations (
    id                   bigserial PRIMARY KEY,
    license_id           bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    hardware_fingerprint text NOT NULL CHECK (length(hardware_fingerprint) BETWEEN 1 AND 256),
    device_name          text,
    device_type          text,
    first_activated_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz,
    is_active            boolean NOT NULL DEFAULT true,
    deactivated_at       timestamptz,
    deactivation_reason  text,
    CONSTRAINT device_registrations_fingerprint_per_license UNIQUE (license_id, hardware_fingerprint),
    CONSTRAINT device_registrations_deactivation
        CHECK (is_active OR deactivated_at IS NOT NULL)
);
CREATE INDEX device_registrations_active ON device_registrations (license_id) WHERE is_active;

CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (length(btrim(name)) > 0),
    -- 'AF-YYYY-' plus the first 4 characters of the secret part, for display only
    display_prefix text NOT NULL,
    -- sha256 of the whole key; keys are 32 random characters, so a fast hash is not brute-forceable
    key_hash      bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER licenses_touch BEFORE UPDATE ON licenses FOR EACH ROW EXECUTE FUNCTION touch_row();

CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('updated_at');
CREATE TRIGGER licenses_audit AFTER INSERT OR UPDATE OR DELETE ON licenses
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('updated_at', 'version');
CREATE TRIGGER device_registrations_audit AFTER INSERT OR UPDATE OR DELETE ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('last_seen_at');
CREATE TRIGGER api_keys_audit AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('last_used_at');
