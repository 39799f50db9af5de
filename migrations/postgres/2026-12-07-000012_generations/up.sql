-- Integrity, second pass (SPEC §14; postgres, keep in step with migrations/sqlite): nothing the
-- database holds vouches for itself.
--
-- Every audit entry that changes a signed row names it among its `subjects` (hashed into the
-- chain, src/audit/chain.rs); `audit_subjects` indexes them. Each signed row binds in its MAC
-- a `generation`: the sequence number of the entry of its last change, so a genuine older
-- row written back names an older entry than the latest one naming it, and is refused. Rows
-- signed before this migration get generation 0 (and a MAC of the new format) once, on the
-- first start, when the keyring has proven their old MACs (src/db/integrity.rs).
ALTER TABLE audit_log ADD COLUMN subjects TEXT;
CREATE TABLE audit_subjects (
    subject TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (subject, seq)
);

ALTER TABLE users ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE provider_certificates ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- A credential's state (owner, provider, environment, api key, active flag, current version,
-- deletion, and the current version's time) is signed too.
ALTER TABLE credentials ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN mac BYTEA;
ALTER TABLE credentials ADD COLUMN mac_version INTEGER;

-- Sessions: revoking one, or spending its refresh token, is a signed change.
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN mac BYTEA;
ALTER TABLE sessions ADD COLUMN mac_version INTEGER;

ALTER TABLE key_wear ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE key_wear ADD COLUMN mac BYTEA;
ALTER TABLE key_wear ADD COLUMN mac_version INTEGER;

-- The keyring-MAC'd marker that the one-time upgrade ran (or that the database was created
-- with row generations). A database with rows and no valid marker is refused.
CREATE TABLE integrity_marker (
    id          INTEGER PRIMARY KEY NOT NULL,
    format      INTEGER NOT NULL,
    marked_at   BIGINT  NOT NULL,
    mac         BYTEA    NOT NULL,
    mac_version INTEGER NOT NULL
);
