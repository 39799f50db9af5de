-- Integrity, second pass (SPEC §14; sqlite, keep in step with migrations/postgres): nothing the
-- database holds vouches for itself.
--
-- Every audit entry that changes a signed row names it among its `subjects` (hashed into the
-- chain, src/audit/chain.rs); `audit_subjects` indexes them. Each signed row binds in its MAC
-- a `generation`: the sequence number of the entry of its last change, so a genuine older
-- row written back names an older entry than the latest one naming it, and is refused. Rows
-- signed before this migration get generation 0 (and a MAC of the new format) once, on the
-- first start, when the keyring has proven their old MACs (src/db/integrity.rs).
ALTER TABLE audit_log ADD COLUMN subjects TEXT;
CREATE TABLE IF NOT EXISTS audit_subjects (
    subject TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (subject, seq)
) WITHOUT ROWID;
-- Verification compares the index with the entries, a batch of sequence numbers at a time.
CREATE INDEX IF NOT EXISTS audit_subjects_by_seq ON audit_subjects (seq);

ALTER TABLE users ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE provider_certificates ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- A credential's state (owner, provider, environment, api key, active flag, current version,
-- deletion, and the current version's time) is signed too.
ALTER TABLE credentials ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN mac BLOB;
ALTER TABLE credentials ADD COLUMN mac_version INTEGER;

-- Sessions: revoking one, or spending its refresh token, is a signed change.
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN mac BLOB;
ALTER TABLE sessions ADD COLUMN mac_version INTEGER;

ALTER TABLE key_wear ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE key_wear ADD COLUMN mac BLOB;
ALTER TABLE key_wear ADD COLUMN mac_version INTEGER;

-- The keyring-MAC'd marker that the one-time upgrade ran (or that the database was created
-- with row generations). A database with rows and no valid marker is refused.
CREATE TABLE IF NOT EXISTS integrity_marker (
    id          INTEGER PRIMARY KEY NOT NULL,
    format      INTEGER NOT NULL,
    marked_at   BIGINT  NOT NULL,
    mac         BLOB    NOT NULL,
    mac_version INTEGER NOT NULL
);

-- What this migration's down step kept (nothing, on a first upgrade): down then up loses
-- nothing, so a row's MAC and generation, and an entry's hashed subjects, come back as they
-- were. The tables exist here only while this migration runs.
CREATE TABLE IF NOT EXISTS generations_kept (
    tbl         TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    mac         BLOB,
    mac_version INTEGER
);
CREATE TABLE IF NOT EXISTS audit_subjects_kept (
    seq      BIGINT NOT NULL,
    subjects TEXT   NOT NULL
);
UPDATE audit_log SET subjects = (SELECT k.subjects FROM audit_subjects_kept k WHERE k.seq = audit_log.seq)
    WHERE seq IN (SELECT seq FROM audit_subjects_kept);
UPDATE users SET generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'users' AND k.id = CAST(users.id AS TEXT))
    WHERE CAST(id AS TEXT) IN (SELECT id FROM generations_kept WHERE tbl = 'users');
UPDATE services SET generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'services' AND k.id = CAST(services.id AS TEXT))
    WHERE CAST(id AS TEXT) IN (SELECT id FROM generations_kept WHERE tbl = 'services');
UPDATE grants SET generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'grants' AND k.id = CAST(grants.id AS TEXT))
    WHERE CAST(id AS TEXT) IN (SELECT id FROM generations_kept WHERE tbl = 'grants');
UPDATE provider_certificates SET generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'provider_certificates' AND k.id = provider_certificates.provider || '/' || provider_certificates.environment)
    WHERE provider || '/' || environment IN (SELECT id FROM generations_kept WHERE tbl = 'provider_certificates');
UPDATE credentials SET
    generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'credentials' AND k.id = CAST(credentials.id AS TEXT)),
    mac = (SELECT k.mac FROM generations_kept k WHERE k.tbl = 'credentials' AND k.id = CAST(credentials.id AS TEXT)),
    mac_version = (SELECT k.mac_version FROM generations_kept k WHERE k.tbl = 'credentials' AND k.id = CAST(credentials.id AS TEXT))
    WHERE CAST(id AS TEXT) IN (SELECT id FROM generations_kept WHERE tbl = 'credentials');
UPDATE sessions SET
    generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'sessions' AND k.id = sessions.id),
    mac = (SELECT k.mac FROM generations_kept k WHERE k.tbl = 'sessions' AND k.id = sessions.id),
    mac_version = (SELECT k.mac_version FROM generations_kept k WHERE k.tbl = 'sessions' AND k.id = sessions.id)
    WHERE id IN (SELECT id FROM generations_kept WHERE tbl = 'sessions');
UPDATE key_wear SET
    generation = (SELECT k.generation FROM generations_kept k WHERE k.tbl = 'key_wear' AND k.id = CAST(key_wear.kek_version AS TEXT)),
    mac = (SELECT k.mac FROM generations_kept k WHERE k.tbl = 'key_wear' AND k.id = CAST(key_wear.kek_version AS TEXT)),
    mac_version = (SELECT k.mac_version FROM generations_kept k WHERE k.tbl = 'key_wear' AND k.id = CAST(key_wear.kek_version AS TEXT))
    WHERE CAST(kek_version AS TEXT) IN (SELECT id FROM generations_kept WHERE tbl = 'key_wear');
DROP TABLE generations_kept;
DROP TABLE audit_subjects_kept;
