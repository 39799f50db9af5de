-- Integrity against a database writer (SPEC §11). Master-key versions as the database knows them (postgres). Keep in step with migrations/sqlite.
-- The keys themselves live only in the keyring; each version's check value (an HMAC of a
-- fixed string under a key derived from that version) lets every process prove that the
-- keyring it holds is the one this database was sealed under, before it reads or writes a key.
-- Exactly one version is 'active' (new data keys are wrapped under it); 'retiring' versions
-- still open rows a rotation has not moved yet; 'retired' versions are gone from the keyring.
-- Rows are filled on the first start after this migration, once the keyring has proven it
-- opens the stored keys.
CREATE TABLE key_versions (
    version     INTEGER PRIMARY KEY NOT NULL,
    check_value BYTEA   NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at  BIGINT  NOT NULL,
    retired_at  BIGINT
);

-- The one lock every master-key decision (rotate, retire, registering a version) takes
-- first, inside its transaction: one decision at a time across every node and CLI process.
CREATE TABLE key_lock (
    id         INTEGER PRIMARY KEY NOT NULL,
    generation BIGINT  NOT NULL
);
INSERT INTO key_lock (id, generation) VALUES (1, 0);

-- Authorization rows carry a MAC under a keyring-derived key (src/crypto/rowmac.rs) and the
-- master-key version it was made under; every use checks it, so a row edited in the database
-- is refused, never obeyed. Rows from before this migration get theirs once, on the first
-- start, after the keyring has proven it opens the stored keys.
ALTER TABLE users ADD COLUMN mac BYTEA;
ALTER TABLE users ADD COLUMN mac_version INTEGER;
ALTER TABLE services ADD COLUMN mac BYTEA;
ALTER TABLE services ADD COLUMN mac_version INTEGER;
ALTER TABLE grants ADD COLUMN mac BYTEA;
ALTER TABLE grants ADD COLUMN mac_version INTEGER;

-- Client certificates revoked by their SHA-256 fingerprint (`hazina services
-- revoke-certificate`, `POST /admin/certificates/revoked/`), checked on every request a
-- service makes: a leaked certificate stops working at once, without disabling its service.
CREATE TABLE revoked_certificates (
    fingerprint TEXT   PRIMARY KEY NOT NULL,
    revoked_at  BIGINT NOT NULL
);
