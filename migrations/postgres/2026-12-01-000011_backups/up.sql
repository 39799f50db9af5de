-- Backups made by `hazina backup` (postgres; keep in step with migrations/sqlite). A backup
-- opens only with the master-key versions it was sealed under; `keys retire` refuses to
-- remove one that a recorded backup still needs (unless --force). `key_versions` lists
-- them, comma-separated: every version that was not retired in the copy.
CREATE TABLE backups (
    id           BIGINT  PRIMARY KEY NOT NULL,
    taken_at     BIGINT NOT NULL,
    location     TEXT   NOT NULL,
    key_versions TEXT   NOT NULL
);
