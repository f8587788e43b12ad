-- pgrelay.notify_change(): the one trigger function behind every published table.
--
-- Attach it per table (see the other files here):
--   CREATE OR REPLACE TRIGGER pgrelay_notify
--       AFTER INSERT OR UPDATE OR DELETE ON public.t
--       FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change('housekeeping_col', ...);
--
-- For each row change it writes one row to pgrelay.change_log: that row is the change, and the
-- relay reads every change it delivers from there. Then, while the switch
-- pgrelay.ingest_state.notify is true (the trigger reads it as pgrelay.doorbell()), it rings
-- a doorbell: an empty NOTIFY on pgrelay.channel() (default 'pgrelay') that only says "read
-- the log now". The notification carries no row data, so a role that can
-- LISTEN learns nothing but that some published table changed, and one that can NOTIFY can at
-- most make the relay read the log early.
--
-- Why it is built this way (NOTIFY facts):
--   * Every notifying commit takes a cluster-wide lock and holds it through its WAL flush:
--     notifying commits are serialized and cannot share a flush. So the relay turns the
--     doorbell off when writes are busy (it reads the log every few milliseconds instead) and
--     back on when they are quiet. `PGRELAY_INGEST` in the README says how.
--   * Postgres delivers identical payloads sent on one channel in one transaction only once,
--     so a transaction that changes many rows rings once.
--   * Notifications are lost while the relay is disconnected; the change log is not. The
--     relay reads it by snapshot, so a change is delivered exactly once whatever rang.
--   * An UPDATE that changes nothing, or only the housekeeping columns named in the trigger
--     arguments (e.g. button_holds.last_heartbeat), emits nothing at all: no log row, no bell.
--
-- What it costs: this function runs once per row inside the application's transaction, so it
-- does as little as it can. The log row's seq, xid and created_at come from column defaults;
-- the relay formats created_at (the clock time of the change, not of the commit: PostgreSQL
-- shows a trigger no commit time) as the event's commit_timestamp. The switch is read through
-- pgrelay.doorbell(), a constant that PostgreSQL folds into this function's cached plan and
-- replans when the relay flips the switch, instead of a query per row. Adding work here (a
-- query, to_char, a CHECK constraint or index on the log) slows every published write.
--
-- SECURITY INVOKER: it runs as the role that writes the row, never with more rights. to_jsonb()
-- calls a column type's cast to json, which the table's owner may have written; run as a
-- privileged owner, that cast could do anything. The writer reaches the log through a narrow
-- grant (migration V11): it may add rows describing its own transaction's writes to tables it
-- may write, and nothing else.
--
-- Every name in the body resolves to a built-in whoever calls it: functions that another
-- schema could overload with a closer match (to_jsonb takes anyelement) are qualified with
-- pg_catalog, and pgrelay objects with pgrelay. That is instead of SET search_path, which
-- would cost a settings save and restore on every row.
--
-- Re-runnable: the relay applies this file at every start and on `pgrelay triggers apply`.

CREATE OR REPLACE FUNCTION pgrelay.notify_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY INVOKER
AS $function$
DECLARE
    -- Trigger arguments name housekeeping columns. TG_ARGV is NULL (not '{}') when the
    -- trigger has no arguments, and jsonb - NULL is NULL, hence the coalesce.
    housekeeping     text[] := coalesce(TG_ARGV, '{}');
    rec              jsonb;
    old_rec          jsonb;
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'pgrelay.notify_change() must run AFTER ... FOR EACH ROW (trigger % on %.%)',
            TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;

    IF TG_OP <> 'DELETE' THEN
        rec := pg_catalog.to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_rec := pg_catalog.to_jsonb(OLD);
    END IF;

    -- Nothing changed, or only housekeeping columns: emit nothing (see the header).
    IF TG_OP = 'UPDATE' AND (rec - housekeeping) = (old_rec - housekeeping) THEN
        RETURN NULL;
    END IF;

    INSERT INTO pgrelay.change_log (schema_name, table_name, op, record, old_record)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, rec, old_rec);

    -- The doorbell, while the relay wants it (see the header).
    IF pgrelay.doorbell() THEN
        PERFORM pg_catalog.pg_notify(pgrelay.channel(), '');
    END IF;
    RETURN NULL;  -- AFTER trigger: the return value is ignored.
END
$function$;

COMMENT ON FUNCTION pgrelay.notify_change() IS
    'pgrelay: log the row change to pgrelay.change_log and, while pgrelay.doorbell() (pgrelay.ingest_state.notify) is true, ring an empty NOTIFY on pgrelay.channel(). Arguments name housekeeping columns whose sole change emits nothing. See triggers/000_notify_change.sql.';
