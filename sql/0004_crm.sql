-- Lead CRM: institutions moving through a sales pipeline, their contacts and activities.

CREATE TABLE crm_institutions (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) > 0),
    kind        text,
    city        text,
    country     text,
    website     text,
    stage       text NOT NULL DEFAULT 'lead'
                    CHECK (stage IN ('lead', 'contacted', 'qualified', 'proposal', 'won', 'lost')),
    owner       text,
    customer_id bigint UNIQUE REFERENCES customers (id) ON DELETE SET NULL,
    notes       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_institutions_stage ON crm_institutions (stage);
CREATE INDEX crm_institutions_name ON crm_institutions (lower(name));

CREATE TABLE crm_contacts (
    id             bigserial PRIMARY KEY,
    institution_id bigint NOT NULL REFERENCES crm_institutions (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (length(btrim(name)) > 0),
    email          text,
    phone          text,
    role           text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_contacts_institution ON crm_contacts (institution_id);

CREATE TABLE crm_activities (
    id             bigserial PRIMARY KEY,
    institution_id bigint NOT NULL REFERENCES crm_institutions (id) ON DELETE CASCADE,
    contact_id     bigint REFERENCES crm_contacts (id) ON DELETE SET NULL,
    kind           text NOT NULL CHECK (kind IN ('call', 'email', 'meeting', 'note', 'task')),
    subject        text NOT NULL CHECK (length(btrim(subject)) > 0),
    body           text,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    due_at         timestamptz,
    done           boolean NOT NULL DEFAULT false,
    owner          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT crm_activities_due_only_for_tasks CHECK (kind = 'task' OR due_at IS NULL)
);
CREATE INDEX crm_activities_timeline ON crm_activities (institution_id, occurred_at DESC);
CREATE INDEX crm_activities_open_tasks ON crm_activities (owner, due_at) WHERE kind = 'task' AND NOT done;

CREATE TRIGGER crm_institutions_touch BEFORE UPDATE ON crm_institutions FOR EACH ROW EXECUTE FUNCTION touch_row();
CREATE TRIGGER crm_institutions_audit AFTER INSERT OR UPDATE OR DELETE ON crm_institutions
    FOR EACH ROW EXECUTE FUNCTION audit_row_change('updated_at');
CREATE TRIGGER crm_contacts_audit AFTER INSERT OR UPDATE OR DELETE ON crm_contacts
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
CREATE TRIGGER crm_activities_audit AFTER INSERT OR UPDATE OR DELETE ON crm_activities
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();
