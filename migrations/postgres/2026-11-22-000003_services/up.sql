-- Service identities and their grants (PostgreSQL). Keep in step with migrations/sqlite.
-- A service is known by the identity its verified client certificate carries: a SAN URI
-- (spiffe://...), a DNS name, or sha256:<hex fingerprint>.
CREATE TABLE services (
    id            BIGINT  PRIMARY KEY NOT NULL,
    name          TEXT    NOT NULL UNIQUE,
    identity      TEXT    NOT NULL UNIQUE,
    is_enabled    BOOLEAN NOT NULL,
    allowed_cidrs TEXT,
    created_at    BIGINT  NOT NULL
);

-- A grant lets a service read one owner's credentials, optionally narrowed to a provider
-- and an environment (NULL = any). Revoked grants stay for the record.
CREATE TABLE grants (
    id          BIGINT  PRIMARY KEY NOT NULL,
    service_id  BIGINT  NOT NULL REFERENCES services (id),
    owner_id    BIGINT  NOT NULL REFERENCES users (id),
    provider    TEXT,
    environment TEXT,
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX grants_by_service_owner ON grants (service_id, owner_id);
-- One live grant per (service, owner, provider, environment): a duplicate is a 409, and two
-- nodes racing to create the same grant cannot both succeed.
CREATE UNIQUE INDEX grants_one_live_per_scope
    ON grants (service_id, owner_id, COALESCE(provider, ''), COALESCE(environment, ''))
    WHERE revoked_at IS NULL;
