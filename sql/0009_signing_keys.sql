-- Ed25519 keys that sign the edge's answers (RFC 9421), published as a JWKS at /v1/keys.
-- status: 'active' signs (at most one), 'published' is served in the JWKS and verifies but does not sign
-- (a key announced before a rotation, or the previous key after one), 'retired' is neither.

CREATE TABLE signing_keys (
    id           bigserial PRIMARY KEY,
    kid          text NOT NULL UNIQUE CONSTRAINT signing_keys_kid_format CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    algorithm    text NOT NULL DEFAULT 'ed25519' CONSTRAINT signing_keys_algorithm CHECK (algorithm = 'ed25519'),
    public_key   bytea NOT NULL CONSTRAINT signing_keys_public_key_length CHECK (octet_length(public_key) = 32),
    status       text NOT NULL DEFAULT 'published'
                 CONSTRAINT signing_keys_status CHECK (status IN ('active', 'published', 'retired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    CONSTRAINT signing_keys_retired_at CHECK ((status = 'retired') = (retired_at IS NOT NULL)),
    CONSTRAINT signing_keys_activated_at CHECK (status <> 'active' OR activated_at IS NOT NULL)
);
-- At most one signing key: two edges creating the first key at once cannot both activate theirs.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE status = 'active';

CREATE TRIGGER signing_keys_audit AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION audit_row_change();

-- The private halves, sealed (AES-256-GCM, key derived from HEARTLINE_SIGNING_KEY_SECRET, the kid as
-- associated data).  A table of their own so the audit trigger, which stores whole rows, never copies them.
CREATE TABLE signing_key_secrets (
    kid         text PRIMARY KEY REFERENCES signing_keys (kid) ON DELETE CASCADE,
    sealed      bytea NOT NULL CONSTRAINT signing_key_secrets_sealed_length CHECK (octet_length(sealed) > 12)
);
