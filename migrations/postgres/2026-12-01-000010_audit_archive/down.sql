-- Archived entries are not brought back; the anchor goes with its columns.
ALTER TABLE audit_head DROP COLUMN archived_note;
ALTER TABLE audit_head DROP COLUMN archived_seq;
