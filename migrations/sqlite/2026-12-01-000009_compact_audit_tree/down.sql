-- The previous release stores every level; it rebuilds the whole tree from the entries' hashes
-- at its next start.
DELETE FROM audit_tree;
ALTER TABLE audit_head DROP COLUMN tree_size;
