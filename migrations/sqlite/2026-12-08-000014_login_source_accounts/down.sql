DROP INDEX login_sources_by_account;
ALTER TABLE login_sources DROP COLUMN account;
