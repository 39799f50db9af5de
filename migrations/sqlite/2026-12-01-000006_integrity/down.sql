ALTER TABLE grants DROP COLUMN mac_version;
ALTER TABLE grants DROP COLUMN mac;
ALTER TABLE services DROP COLUMN mac_version;
ALTER TABLE services DROP COLUMN mac;
ALTER TABLE users DROP COLUMN mac_version;
ALTER TABLE users DROP COLUMN mac;
DROP TABLE revoked_certificates;
DROP TABLE key_lock;
DROP TABLE key_versions;
