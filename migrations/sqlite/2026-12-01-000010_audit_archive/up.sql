-- Audit retention (sqlite; keep in step with migrations/postgres): `hazina audit archive`
-- moves the oldest entries to a verifiable file and deletes them. The log then starts after
-- `archived_seq`; `archived_note` is the anchor, a note signed with the checkpoint key that
-- names that sequence number and its entry's hash, so that neither can be moved (more
-- entries deleted) without the keyring. The tree keeps every stored node.
ALTER TABLE audit_head ADD COLUMN archived_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN archived_note TEXT;
