-- Resource pools (domains, IPv4 addresses, phone numbers) allocated to licenses.

CREATE TABLE resource_pools (
    id            bigserial PRIMARY KEY,
    resource_type text NOT NULL CHECK (resource_type IN ('domain', 'ipv4', 'phone')),
    value         text NOT NULL CHECK (length(value) BETWEEN 1 AND 253),
    status        text NOT NULL DEFAULT 'available'
                      CHECK (status IN ('available', 'allocated', 'quarantined', 'retired')),
    license_id    bigint REFERENCES licenses (id) ON DELETE SET NULL,
    allocated_at  timestamptz,
    quarantined_until timestamptz,
    notes         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resource_pools_value_per_type UNIQUE (resource_type, value),
    CONSTRAINT resource_pools_allocation_consistent
        CHECK ((status = 'allocated') = (license_id IS NOT NULL)),
    CONSTRAINT resource_pools_quarantine_consistent
        CHECK (status <> 'quarantined' OR quarantined_until IS NOT NULL)
);
CREATE INDEX resource_pools_free ON resource_pools (resource_type, id) WHERE status = 'available';
CREATE INDEX resource_pools_license ON resource_pools (license_id) WHERE license_id IS NOT NULL;

CREATE TABLE resource_allocations (
    id            bigserial PRIMARY KEY,
    resource_id   bigint NOT NULL REFERENCES resource_pools (id) ON DELETE CASCADE,
    license_id    bigint NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    allocated_at  timestamptz NOT NULL DEFAULT now(),
    released_at   timestamptz,
    allocated_by  text,
    released_by   text,
    CONSTRAINT resource_allocations_order CHECK (released_at IS NULL OR released_at >= allocated_at)
);
CREATE INDEX resource_allocations_resource ON resource_allocations (resource_id, allocated_at DESC);
CREATE INDEX resource_allocations_license ON resource_allocations (license_id, allocated_at DESC);
-- At most one open allocation per resource.
CREATE UNIQUE INDEX resource_allocations_one_open ON resource_allocations (resource_id) WHERE released_at IS NULL;

CREATE TRIGGER resource_pools_audit AFTER INSERT OR UPDATE OR DELETE ON resource_pools
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
CREATE TRIGGER resource_allocations_audit AFTER INSERT OR UPDATE OR DELETE ON resource_allocations
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
