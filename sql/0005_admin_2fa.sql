-- Admin two-factor state, beside Flask-AppBuilder's ab_user (which FAB creates itself, so no foreign key
-- here: the admin creates its tables after migrations and user_id refers to ab_user.id).

CREATE TABLE admin_totp (
    user_id          integer PRIMARY KEY,
    -- the TOTP secret, encrypted with a key derived from the admin's secret key (never stored in clear)
    secret_encrypted text,
    confirmed_at     timestamptz,
    -- last accepted time step: a code of this step or older is refused (replay)
    last_used_step   bigint NOT NULL DEFAULT 0,
    failed_attempts  integer NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE admin_recovery_codes (
    id         bigserial PRIMARY KEY,
    user_id    integer NOT NULL,
    code_hash  text NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_recovery_codes_user ON admin_recovery_codes (user_id) WHERE used_at IS NULL;

-- Audited without the secret columns' values: the trigger stores whole rows, so 2FA tables are left out
-- of the audit trigger on purpose and the admin writes its own 'totp.enrolled' / 'totp.reset' audit rows.
