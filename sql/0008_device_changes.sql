-- Device-churn limit: at most `device_change_limit` device changes (a deactivation followed by an
-- activation) per license in 30 days; NULL = unlimited.  docs/licenses-policy.md describes it.

ALTER TABLE licenses
    ADD COLUMN device_change_limit integer
        CONSTRAINT licenses_device_change_limit_range
        CHECK (device_change_limit IS NULL OR device_change_limit BETWEEN 0 AND 1000),
    -- an admin's reset: changes before this time no longer count
    ADD COLUMN device_changes_reset_at timestamptz;

-- One row per deactivation; the activation that takes its place fills replaced_at / replaced_by and is
-- the change that counts.  Written by a trigger, so admin, edge and psql deactivations all count.
CREATE TABLE device_changes (
    id              bigserial PRIMARY KEY,
    license_id      bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    device_id       bigint REFERENCES device_registrations (id) ON DELETE SET NULL,
    deactivated_at  timestamptz NOT NULL DEFAULT now(),
    replaced_at     timestamptz,
    replaced_by     bigint REFERENCES device_registrations (id) ON DELETE SET NULL,
    CONSTRAINT device_changes_order CHECK (replaced_at IS NULL OR replaced_at >= deactivated_at)
);
CREATE INDEX device_changes_open ON device_changes (license_id, deactivated_at) WHERE replaced_at IS NULL;
CREATE INDEX device_changes_replaced ON device_changes (license_id, replaced_at) WHERE replaced_at IS NOT NULL;

CREATE FUNCTION device_change_on_deactivation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.is_active AND NOT NEW.is_active THEN
        INSERT INTO device_changes (license_id, device_id) VALUES (NEW.license_id, NEW.id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER device_registrations_changes AFTER UPDATE ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION device_change_on_deactivation();
