DROP TABLE login_sources;
