-- V11: pgrelay.notify_change() runs as the role that writes the row, not as its owner.
--
-- As SECURITY DEFINER it ran to_jsonb(NEW) with its owner's rights (usually the relay's
-- superuser), and to_jsonb calls a column type's cast to json, a function the table's owner
-- may have written: a table owner could become superuser by inserting a row. Now the function
-- is SECURITY INVOKER (triggers/000_notify_change.sql), so nothing it calls runs with more
-- rights than the writer has, and every writer needs the narrow path below into the log.
--
-- What a writer may do in schema pgrelay: read the doorbell switch, and add change-log rows
-- that describe its own transaction's writes to tables it may write. It cannot read the log,
-- choose a row's seq or xid, update or delete rows, or touch anything else here.

GRANT USAGE ON SCHEMA pgrelay TO PUBLIC;
GRANT SELECT ON pgrelay.ingest_state TO PUBLIC;
GRANT INSERT (schema_name, table_name, op, commit_timestamp, record, old_record)
    ON pgrelay.change_log TO PUBLIC;

-- Row-level security applies to writers only: the relay owns the table and reads it freely.
ALTER TABLE pgrelay.change_log ENABLE ROW LEVEL SECURITY;

-- A writer logs only changes it could have made: `op` on the named table, in its own
-- transaction (xid is its default, pg_current_xact_id(), and not writable). A name that is not
-- a table makes the insert fail.
CREATE POLICY change_log_writers_log_their_own_writes ON pgrelay.change_log
    FOR INSERT TO PUBLIC
    WITH CHECK (
        xid = pg_current_xact_id()
        AND has_table_privilege(format('%I.%I', schema_name, table_name), op)
    );

COMMENT ON POLICY change_log_writers_log_their_own_writes ON pgrelay.change_log IS
    'pgrelay.notify_change() runs as the writer; a writer may log only op on a table it may write, in its own transaction.';
