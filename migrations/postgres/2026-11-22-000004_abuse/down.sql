DROP TABLE login_throttle;
ALTER TABLE users DROP COLUMN allowed_cidrs;
