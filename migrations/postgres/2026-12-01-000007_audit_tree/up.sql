-- The RFC 6962 Merkle tree over the audit log (postgres). Keep in step with migrations/sqlite.
-- Every complete subtree is stored once it exists: node (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level); leaf i is the entry with seq = i + 1, hashed as
-- SHA-256(0x00 || hash). Extended in the same transaction as each batch of entries; a log
-- from before this migration gets its tree built on the first start (see src/audit/merkle.rs),
-- from the stored hashes: nothing is re-hashed.
CREATE TABLE audit_tree (
    level INTEGER NOT NULL,
    idx   BIGINT  NOT NULL,
    hash  BYTEA   NOT NULL,
    PRIMARY KEY (level, idx)
);

-- The log's origin (the first line of its checkpoints): HAZINA_AUDIT_ORIGIN, else a random
-- name fixed at the first start. And the last checkpoint the signer signed, so that after a
-- restart it still refuses to sign a tree that does not extend it.
CREATE TABLE audit_signer (
    id              INTEGER PRIMARY KEY NOT NULL,
    origin          TEXT    NOT NULL,
    last_checkpoint TEXT
);
