DROP TABLE grants;
DROP TABLE services;
