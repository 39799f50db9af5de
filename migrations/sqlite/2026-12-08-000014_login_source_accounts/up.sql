-- Which account each known source belongs to (sqlite; keep in step with the other backend), so
-- that `users unlock` lifts the lockouts of an account's own sources too (issue 37).
-- `account` is the account's throttle subject (`account:<hmac of the name>`), never the
-- name. Sources remembered before this migration have none; they are forgotten 30 days
-- after their last sign-in, or refreshed with it at the next one.
ALTER TABLE login_sources ADD COLUMN account TEXT;
CREATE INDEX login_sources_by_account ON login_sources (account);
