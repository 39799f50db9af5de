-- Back to the previous schema without losing anything: every generation, MAC and hashed
-- subject list moves to a holding table that the up migration restores from (a row's MAC,
-- and the chain hash of an entry with subjects, need them). `audit_subjects` and the
-- integrity marker stay; the previous release ignores them.
CREATE TABLE generations_kept (
    tbl         TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    mac         BLOB,
    mac_version INTEGER
);
CREATE TABLE audit_subjects_kept (
    seq      BIGINT NOT NULL,
    subjects TEXT   NOT NULL
);
INSERT INTO audit_subjects_kept (seq, subjects) SELECT seq, subjects FROM audit_log WHERE subjects IS NOT NULL;
INSERT INTO generations_kept (tbl, id, generation) SELECT 'users', CAST(id AS TEXT), generation FROM users;
INSERT INTO generations_kept (tbl, id, generation) SELECT 'services', CAST(id AS TEXT), generation FROM services;
INSERT INTO generations_kept (tbl, id, generation) SELECT 'grants', CAST(id AS TEXT), generation FROM grants;
INSERT INTO generations_kept (tbl, id, generation) SELECT 'provider_certificates', provider || '/' || environment, generation FROM provider_certificates;
INSERT INTO generations_kept (tbl, id, generation, mac, mac_version) SELECT 'credentials', CAST(id AS TEXT), generation, mac, mac_version FROM credentials;
INSERT INTO generations_kept (tbl, id, generation, mac, mac_version) SELECT 'sessions', id, generation, mac, mac_version FROM sessions;
INSERT INTO generations_kept (tbl, id, generation, mac, mac_version) SELECT 'key_wear', CAST(kek_version AS TEXT), generation, mac, mac_version FROM key_wear;
ALTER TABLE key_wear DROP COLUMN mac_version;
ALTER TABLE key_wear DROP COLUMN mac;
ALTER TABLE key_wear DROP COLUMN generation;
ALTER TABLE sessions DROP COLUMN mac_version;
ALTER TABLE sessions DROP COLUMN mac;
ALTER TABLE sessions DROP COLUMN generation;
ALTER TABLE credentials DROP COLUMN mac_version;
ALTER TABLE credentials DROP COLUMN mac;
ALTER TABLE credentials DROP COLUMN generation;
ALTER TABLE provider_certificates DROP COLUMN generation;
ALTER TABLE grants DROP COLUMN generation;
ALTER TABLE services DROP COLUMN generation;
ALTER TABLE users DROP COLUMN generation;
ALTER TABLE audit_log DROP COLUMN subjects;
