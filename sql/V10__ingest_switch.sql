-- V10: the switch that tells the triggers whether to NOTIFY.
--
-- Every committed change is in pgrelay.change_log, and the relay reads every change from there.
-- A NOTIFY is only a doorbell that says "read the log now". It is worth its price while writes
-- are quiet (the relay need not poll), but each notifying commit takes a cluster-wide lock
-- through its WAL flush, so under write load the relay turns the doorbell off and tails the log
-- instead. The relay owns this row; application roles cannot read or write it (schema pgrelay
-- is not granted to them).
CREATE TABLE pgrelay.ingest_state (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    -- Whether pgrelay.notify_change() sends a doorbell NOTIFY at all.
    notify      boolean     NOT NULL DEFAULT true,
    -- Which relay set it last, when, and why: for DBAs reading the table.
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text
);
INSERT INTO pgrelay.ingest_state DEFAULT VALUES;

COMMENT ON TABLE pgrelay.ingest_state IS
    'One row, owned by the relay: whether pgrelay.notify_change() rings the NOTIFY doorbell (true while writes are quiet) or the relay tails pgrelay.change_log (false under write load).';
