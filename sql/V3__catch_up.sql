-- V3: what catch-up after a LISTEN disconnect needs.

-- Catch-up reads the changes of transactions that committed after the relay's last watermark
-- snapshot: `xid >= pg_snapshot_xmin(watermark) AND NOT pg_visible_in_snapshot(xid, …)`.
-- Without this index that is a scan of the whole retention window.
CREATE INDEX change_log_xid_idx ON pgrelay.change_log (xid);

-- Pruning records the newest transaction whose changes it deleted. A catch-up from a watermark
-- whose xmin is not newer than this may have lost changes, and says so instead of pretending.
CREATE TABLE pgrelay.prune_state (
    only_row        boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    max_pruned_xid  xid8
);
INSERT INTO pgrelay.prune_state DEFAULT VALUES;

COMMENT ON TABLE pgrelay.prune_state IS
    'One row: the newest xid whose change_log rows were pruned (lets catch-up detect gaps).';
