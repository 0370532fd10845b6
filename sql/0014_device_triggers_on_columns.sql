-- The heartbeat flush sets device_registrations.last_seen_at, and nothing else, for the devices of every
-- batch.  Each such UPDATE ran three row triggers although none of them has anything to do for it: the
-- audit trigger built the old and new rows as jsonb only to find that just last_seen_at differed (its
-- ignored column), the webhook trigger built the row as jsonb to find is_active unchanged, and the
-- device-changes trigger looked at is_active too.  They took two thirds of the flush's device update
-- (docs/performance.md, "Worker flush").  They now fire only for UPDATEs whose SET list names a column
-- they care about: for the audit trigger every column but last_seen_at, for the other two is_active.
-- An UPDATE that sets last_seen_at together with other columns (an activation) is audited as before.
--
-- A column added to device_registrations later must be added to the audit trigger's list below
-- (tests/heartline/test_schema.py fails until it is).
DROP TRIGGER device_registrations_audit ON device_registrations;
CREATE TRIGGER device_registrations_audit
    AFTER INSERT OR DELETE OR UPDATE OF id, license_id, hardware_fingerprint, device_name, device_type,
                                        first_activated_at, is_active, deactivated_at, deactivation_reason
    ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('last_seen_at');

DROP TRIGGER device_registrations_webhooks ON device_registrations;
CREATE TRIGGER device_registrations_webhooks AFTER INSERT OR UPDATE OF is_active ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_change();

DROP TRIGGER device_registrations_changes ON device_registrations;
CREATE TRIGGER device_registrations_changes AFTER UPDATE OF is_active ON device_registrations
    FOR EACH ROW EXECUTE FUNCTION device_change_on_deactivation();
