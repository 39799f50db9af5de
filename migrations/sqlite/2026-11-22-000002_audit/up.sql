-- The tamper-evident audit log (SQLite). Keep in step with migrations/postgres.
-- Each entry's hash covers its content and the previous entry's hash; audit_head holds the
-- chain head and is updated in the same transaction as the entries it covers, so several
-- writers (several nodes) extend one chain.
CREATE TABLE audit_log (
    seq              BIGINT  PRIMARY KEY NOT NULL,
    occurred_at      BIGINT  NOT NULL,
    actor_kind       TEXT    NOT NULL,
    actor_id         BIGINT,
    actor_name       TEXT,
    source_ip        TEXT,
    cert_fingerprint TEXT,
    action           TEXT    NOT NULL,
    credential_id    BIGINT,
    owner_id         BIGINT,
    provider         TEXT,
    environment      TEXT,
    outcome          TEXT    NOT NULL,
    reason           TEXT,
    request_id       TEXT,
    prev_hash        BLOB    NOT NULL,
    hash             BLOB    NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (occurred_at);
CREATE INDEX audit_log_by_credential ON audit_log (credential_id);
CREATE INDEX audit_log_by_owner ON audit_log (owner_id);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY NOT NULL,
    seq  BIGINT  NOT NULL,
    hash BLOB    NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, X'0000000000000000000000000000000000000000000000000000000000000000');
