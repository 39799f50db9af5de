DROP TABLE provider_certificates;
DROP INDEX audit_log_by_reference;
ALTER TABLE audit_log DROP COLUMN reference;
ALTER TABLE audit_log DROP COLUMN operation;
ALTER TABLE grants DROP COLUMN operations;
ALTER TABLE credential_versions DROP COLUMN profile;
