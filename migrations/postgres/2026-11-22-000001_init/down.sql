DROP TABLE credential_versions;
DROP TABLE credentials;
DROP TABLE sessions;
DROP TABLE users;
