DROP TABLE key_wear;
DROP TABLE key_rotations;
