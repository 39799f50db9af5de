-- Provider fluency (SPEC §9): profiles, provider certificates, purpose-bound grants and the
-- operation and reference of each audit entry (sqlite). Keep in step with migrations/postgres.

-- A version's profile: the canonical JSON {"secrets":[names],"settings":{...}} of a version
-- sealed in envelope format 2 (its secrets live inside the ciphertext; this column says which
-- are set, and holds the non-secret settings). It is part of the envelope's associated data,
-- so a setting edited here makes the version fail to open. NULL for format 1 (two fields).
ALTER TABLE credential_versions ADD COLUMN profile TEXT;

-- What a grant allows: a comma-separated, sorted subset of reveal, stk-password,
-- security-credential, webhook-verify, access-token. Grants from before allow reveal only.
-- Covered by the grant's row MAC.
ALTER TABLE grants ADD COLUMN operations TEXT NOT NULL DEFAULT 'reveal';

-- The operation an entry records (credential.operation) and the caller's payment reference.
-- Covered by the entry's hash when present; entries from before hash exactly as they did.
ALTER TABLE audit_log ADD COLUMN operation TEXT;
ALTER TABLE audit_log ADD COLUMN reference TEXT;
CREATE INDEX audit_log_by_reference ON audit_log (reference);

-- Safaricom's public certificate per environment, for the SecurityCredential. The MAC (under
-- a keyring-derived key, over every column) means a certificate swapped here is refused,
-- never used to encrypt an initiator password.
CREATE TABLE provider_certificates (
    provider    TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    pem         TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    not_before  BIGINT  NOT NULL,
    not_after   BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    updated_by  TEXT    NOT NULL,
    mac         BLOB   NOT NULL,
    mac_version INTEGER NOT NULL,
    PRIMARY KEY (provider, environment)
);
