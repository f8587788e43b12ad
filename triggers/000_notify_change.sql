-- pgrelay.notify_change(): the one trigger function behind every published table.
--
-- Attach it per table (see the other files here):
--   CREATE OR REPLACE TRIGGER pgrelay_notify
--       AFTER INSERT OR UPDATE OR DELETE ON public.t
--       FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change('housekeeping_col', ...);
--
-- For each row change it writes one row to pgrelay.change_log and sends one NOTIFY on
-- pgrelay.channel() (default 'pgrelay'). The payload is the contract with the relay; keep its
-- keys and their order:
--
--   {"v":1,"seq":1042,"schema":"public","table":"polls","type":"UPDATE",
--    "commit_timestamp":"2026-11-27T10:00:00.123Z","record":{...},"old_record":{...}}
--
--   record      to_jsonb(NEW), the full row; INSERT and UPDATE only (no key on DELETE)
--   old_record  to_jsonb(OLD), the full row; UPDATE and DELETE only (no key on INSERT)
--   seq         pgrelay.change_log.seq of this change
--
-- If that payload would be 7900 bytes or more, the keys record/old_record are replaced by
-- "ref":true and the relay reads the rows from pgrelay.change_log by seq.
--
-- Why it is built this way (NOTIFY facts):
--   * A NOTIFY payload must be under 8000 bytes, otherwise pg_notify() raises and, inside a
--     trigger, aborts the user's write. A write must never fail because a row is large, so big
--     changes travel by reference (7900 leaves margin).
--   * Postgres delivers identical payloads sent on one channel in one transaction only once.
--     seq makes every payload unique, so two identical updates are two events.
--   * Every notifying commit takes a cluster-wide lock, serializing such commits. So an UPDATE
--     that changes nothing, or only the housekeeping columns named in the trigger arguments
--     (e.g. button_holds.last_heartbeat), emits nothing at all: no notify, no log row.
--   * Notifications are delivered only at commit, and are lost if the relay is disconnected;
--     the change_log row (same transaction) is what the relay replays from after a reconnect.
--
-- commit_timestamp is the clock time of the change, not the commit (Postgres exposes no commit
-- time to a trigger), in the Supabase format: UTC, milliseconds, trailing Z.
--
-- SECURITY DEFINER: it runs as its owner (the role that applied this file), so application
-- roles need no privileges on schema pgrelay, and cannot write change_log rows themselves.
-- search_path is pinned as for any SECURITY DEFINER function; pgrelay objects are qualified.
--
-- Re-runnable: the relay applies this file at every start and on `pgrelay triggers apply`.

CREATE OR REPLACE FUNCTION pgrelay.notify_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    -- Trigger arguments name housekeeping columns. TG_ARGV is NULL (not '{}') when the
    -- trigger has no arguments, and jsonb - NULL is NULL, hence the coalesce.
    housekeeping     text[] := coalesce(TG_ARGV, '{}');
    rec              jsonb;
    old_rec          jsonb;
    change_seq       bigint;
    ts               text;    -- the commit_timestamp string
    payload          text;
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'pgrelay.notify_change() must run AFTER ... FOR EACH ROW (trigger % on %.%)',
            TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;

    IF TG_OP <> 'DELETE' THEN
        rec := to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_rec := to_jsonb(OLD);
    END IF;

    -- Nothing changed, or only housekeeping columns: emit nothing (see the header).
    IF TG_OP = 'UPDATE' AND (rec - housekeeping) = (old_rec - housekeeping) THEN
        RETURN NULL;
    END IF;

    ts := to_char(clock_timestamp() AT TIME ZONE 'UTC',
              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

    INSERT INTO pgrelay.change_log
        (schema_name, table_name, op, commit_timestamp, record, old_record)
    VALUES
        (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, ts, rec, old_rec)
    RETURNING seq INTO change_seq;

    -- json_build_object (not jsonb_build_object, which reorders keys) keeps the key order.
    payload := CASE TG_OP
        WHEN 'INSERT' THEN json_build_object(
            'v', 1, 'seq', change_seq, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'type', TG_OP, 'commit_timestamp', ts,
            'record', rec)
        WHEN 'UPDATE' THEN json_build_object(
            'v', 1, 'seq', change_seq, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'type', TG_OP, 'commit_timestamp', ts,
            'record', rec, 'old_record', old_rec)
        ELSE json_build_object(
            'v', 1, 'seq', change_seq, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'type', TG_OP, 'commit_timestamp', ts,
            'old_record', old_rec)
    END::text;

    -- Too big for NOTIFY (limit 8000 bytes): send a reference; the rows are in change_log.
    IF octet_length(payload) >= 7900 THEN
        payload := json_build_object(
            'v', 1, 'seq', change_seq, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'type', TG_OP, 'commit_timestamp', ts,
            'ref', true)::text;
    END IF;

    PERFORM pg_notify(pgrelay.channel(), payload);
    RETURN NULL;  -- AFTER trigger: the return value is ignored.
END
$function$;

COMMENT ON FUNCTION pgrelay.notify_change() IS
    'pgrelay: log the row change to pgrelay.change_log and NOTIFY it on pgrelay.channel(). Arguments name housekeeping columns whose sole change emits nothing. See triggers/000_notify_change.sql.';
