-- Abuse resistance (PostgreSQL). Keep in step with migrations/sqlite.

-- A user's IP allowlist: comma-separated canonical CIDR ranges; NULL = any address.
ALTER TABLE users ADD COLUMN allowed_cidrs TEXT;

-- Failed-login counters, shared by every node. `subject` is `account:<hmac of the
-- attempted name>` (known and unknown names alike; the name itself is never stored) or
-- `address:<ip or IPv6 /64>`. A row is forgotten a day after its last failure.
CREATE TABLE login_throttle (
    subject         TEXT   PRIMARY KEY NOT NULL,
    failures        BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL,
    blocked_until   BIGINT
);
CREATE INDEX login_throttle_by_last_failure ON login_throttle (last_failure_at);
