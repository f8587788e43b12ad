-- V7: read policies may hide columns. A subscriber whose role's policy lists a column in
-- hidden_columns receives that table's events without it: the column is removed from
-- `record`, `old_record` and `columns`, and its filters may not name it (a filter would reveal
-- the value by what it lets through). Evaluated in memory by the relay like the row filters.
ALTER TABLE pgrelay.read_policies
    ADD COLUMN hidden_columns text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN pgrelay.read_policies.hidden_columns IS
    'Columns this role never receives for this table (removed from record, old_record and columns).';
