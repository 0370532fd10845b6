-- Entitlements: named features (code, name) attached to licenses, with optional defaults per product.
-- A license's entitlements are its own plus those of its product (docs/licenses-policy.md); the edge
-- caches them in the plane with the license and returns them from validate and session start.

CREATE TABLE entitlements (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL
                    CONSTRAINT entitlements_code_format CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    name        text NOT NULL CONSTRAINT entitlements_name_present CHECK (length(btrim(name)) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entitlements_code_unique UNIQUE (code)
);

CREATE TABLE license_entitlements (
    id              bigserial PRIMARY KEY,
    license_id      bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    entitlement_id  bigint NOT NULL REFERENCES entitlements (id) ON DELETE RESTRICT,
    CONSTRAINT license_entitlements_once UNIQUE (license_id, entitlement_id)
);
CREATE INDEX license_entitlements_entitlement ON license_entitlements (entitlement_id);

CREATE TABLE product_entitlements (
    id              bigserial PRIMARY KEY,
    product         text NOT NULL CONSTRAINT product_entitlements_product_present
                        CHECK (length(btrim(product)) > 0),
    entitlement_id  bigint NOT NULL REFERENCES entitlements (id) ON DELETE RESTRICT,
    CONSTRAINT product_entitlements_once UNIQUE (product, entitlement_id)
);
CREATE INDEX product_entitlements_entitlement ON product_entitlements (entitlement_id);

-- The codes stay what clients were given: an entitlement's code cannot change once created.
CREATE FUNCTION entitlements_code_fixed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.code IS DISTINCT FROM OLD.code THEN
        RAISE EXCEPTION 'an entitlement code cannot change (create a new entitlement instead)'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entitlements_code_fixed';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER entitlements_code_fixed BEFORE UPDATE ON entitlements
    FOR EACH ROW EXECUTE FUNCTION entitlements_code_fixed();

CREATE TRIGGER entitlements_audit AFTER INSERT OR UPDATE OR DELETE ON entitlements
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
CREATE TRIGGER license_entitlements_audit AFTER INSERT OR UPDATE OR DELETE ON license_entitlements
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
CREATE TRIGGER product_entitlements_audit AFTER INSERT OR UPDATE OR DELETE ON product_entitlements
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
