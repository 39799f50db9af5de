-- hazina core schema (SQLite). Keep in step with migrations/postgres: same names, same columns.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY NOT NULL,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('user', 'admin', 'auditor')),
    is_disabled   BOOLEAN NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);

-- One row per login. The refresh token that may be spent next is the only one whose jti
-- matches; spending it swaps in the next jti in the same UPDATE (compare-and-swap).
CREATE TABLE sessions (
    id          TEXT    PRIMARY KEY NOT NULL,
    user_id     BIGINT  NOT NULL REFERENCES users (id),
    refresh_jti TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Credential metadata. Deleted rows stay as tombstones (deleted_at set, no key material).
CREATE TABLE credentials (
    id              INTEGER PRIMARY KEY NOT NULL,
    owner_id        BIGINT  NOT NULL REFERENCES users (id),
    provider        TEXT    NOT NULL,
    environment     TEXT    NOT NULL,
    api_key         TEXT,
    is_active       BOOLEAN NOT NULL,
    current_version INTEGER NOT NULL,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    deleted_at      BIGINT
);
CREATE UNIQUE INDEX credentials_one_per_owner_provider_environment
    ON credentials (owner_id, provider, environment) WHERE deleted_at IS NULL;

-- One row per private-key version: the envelope (see src/crypto/envelope.rs).
CREATE TABLE credential_versions (
    credential_id BIGINT  NOT NULL REFERENCES credentials (id),
    version       INTEGER NOT NULL,
    environment   TEXT    NOT NULL,
    format        INTEGER NOT NULL,
    kek_version   INTEGER NOT NULL,
    wrapped_dek   BLOB    NOT NULL,
    ciphertext    BLOB    NOT NULL,
    verifier      BLOB    NOT NULL,
    created_at    BIGINT  NOT NULL,
    created_by    BIGINT  NOT NULL,
    PRIMARY KEY (credential_id, version)
);
CREATE INDEX credential_versions_by_kek ON credential_versions (kek_version);
