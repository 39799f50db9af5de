-- Sources an account has signed in from (SPEC §15), SQLite. Keep in step with migrations/postgres.
-- `subject` is `source:<hmac of the account name and the address>` (never the name or the
-- address in the clear). Failures from other addresses do not lock out a source that signed
-- in within 30 days; such a source meets a limit of its own instead. Kept 30 days.
CREATE TABLE login_sources (
    subject         TEXT   PRIMARY KEY NOT NULL,
    last_success_at BIGINT NOT NULL
);
CREATE INDEX login_sources_by_last_success ON login_sources (last_success_at);
