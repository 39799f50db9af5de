-- Master-key rotation state and key wear (SQLite). Keep in step with migrations/postgres.
-- Rotation state lives here, not in a process, so any node (or the CLI) can resume it.
CREATE TABLE key_rotations (
    id             INTEGER PRIMARY KEY NOT NULL,
    target_version INTEGER NOT NULL,
    started_at     BIGINT  NOT NULL,
    finished_at    BIGINT,
    rows_rewrapped BIGINT  NOT NULL
);

-- How many times each master-key version has encrypted (wrapped) a data key: AES-GCM with
-- random nonces must stay far below 2^32 encryptions per key.
CREATE TABLE key_wear (
    kek_version INTEGER PRIMARY KEY NOT NULL,
    encryptions BIGINT  NOT NULL
);
