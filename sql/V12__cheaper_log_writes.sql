-- V12: make the trigger's write into pgrelay.change_log cheaper.
--
-- The trigger runs once per published row change, inside the application's transaction, and
-- its cost is what publishing a table costs the application's writes. Timed per row (100,000
-- single-row trigger calls on PostgreSQL 15), four things cost about half of it:
--
--   * The CHECK constraint on `op`: PostgreSQL rebuilds a table's CHECK expressions every time
--     an INSERT statement starts, and the trigger's INSERT starts once per row. Gone; the
--     writers' row-level policy checks `op` instead (policies are part of the cached plan),
--     and the relay refuses a row with any other op.
--   * The index on created_at, which only pruning used. Pruning now walks the primary key
--     (rows are pruned oldest seq first, see the relay's pruner).
--   * Reading the doorbell switch from pgrelay.ingest_state: a query per row. The trigger now
--     calls pgrelay.doorbell(), a function whose body is the switch's value as a constant:
--     PostgreSQL folds it into the trigger's cached plan, and replacing it replans every
--     session's next call. A trigger on pgrelay.ingest_state replaces it whenever the row
--     changes, in the same transaction, so the row stays the one switch to set and read.
--   * Formatting commit_timestamp with to_char(): created_at now defaults to
--     clock_timestamp(), the same instant, and the relay formats it. commit_timestamp stays
--     for rows written before this migration (and by an older trigger file).

ALTER TABLE pgrelay.change_log DROP CONSTRAINT IF EXISTS change_log_op_check;
DROP INDEX IF EXISTS pgrelay.change_log_created_at_idx;

ALTER TABLE pgrelay.change_log ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE pgrelay.change_log ALTER COLUMN commit_timestamp DROP NOT NULL;

COMMENT ON COLUMN pgrelay.change_log.created_at IS
    'Clock time of the change (clock_timestamp() when the trigger logged it); sent as commit_timestamp, and pruning goes by it.';
COMMENT ON COLUMN pgrelay.change_log.commit_timestamp IS
    'Legacy: the formatted commit_timestamp written by triggers before V12; NULL since, when created_at is sent instead.';

DROP POLICY change_log_writers_log_their_own_writes ON pgrelay.change_log;
CREATE POLICY change_log_writers_log_their_own_writes ON pgrelay.change_log
    FOR INSERT TO PUBLIC
    WITH CHECK (
        op IN ('INSERT', 'UPDATE', 'DELETE')
        AND xid = pg_current_xact_id()
        AND has_table_privilege(format('%I.%I', schema_name, table_name), op)
    );
COMMENT ON POLICY change_log_writers_log_their_own_writes ON pgrelay.change_log IS
    'pgrelay.notify_change() runs as the writer; a writer may log only op (INSERT, UPDATE or DELETE) on a table it may write, in its own transaction.';

-- The switch as the triggers read it. Its body is one constant, so the planner folds the call
-- into a constant; replacing the function invalidates every plan that folded it, so each
-- session's next trigger call sees the new value. Only its owner (the relay's role) or a
-- superuser can replace it.
DO $$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION pgrelay.doorbell() RETURNS boolean
             LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $b$ SELECT %L::boolean $b$',
        (SELECT notify FROM pgrelay.ingest_state));
END
$$;
COMMENT ON FUNCTION pgrelay.doorbell() IS
    'Whether pgrelay.notify_change() rings the NOTIFY doorbell: pgrelay.ingest_state.notify as a constant, replaced by a trigger on that table whenever it changes.';

-- The row stays the switch that the relay (and a DBA) sets and reads; this trigger makes the
-- function follow it in the same transaction. Replacing the function needs its ownership, so
-- it runs as whoever updates the row: the relay's role, or a superuser.
CREATE FUNCTION pgrelay.ingest_state_changed() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY INVOKER
AS $function$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION pgrelay.doorbell() RETURNS boolean
             LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $b$ SELECT %L::boolean $b$',
        NEW.notify);
    RETURN NULL;
END
$function$;
REVOKE EXECUTE ON FUNCTION pgrelay.ingest_state_changed() FROM PUBLIC;
COMMENT ON FUNCTION pgrelay.ingest_state_changed() IS
    'Keeps pgrelay.doorbell() equal to pgrelay.ingest_state.notify.';

CREATE TRIGGER pgrelay_doorbell
    AFTER UPDATE OF notify ON pgrelay.ingest_state
    FOR EACH ROW
    WHEN (OLD.notify IS DISTINCT FROM NEW.notify)
    EXECUTE FUNCTION pgrelay.ingest_state_changed();
