-- V2: pgrelay's own objects. The trigger function itself lives in triggers/000_notify_change.sql
-- (plain SQL that DBAs edit, re-applied at every start), not here: migrations are immutable.
--
-- Nothing in schema pgrelay is granted to PUBLIC. Application roles never need access: the
-- trigger function is SECURITY DEFINER and writes the change log as its owner (the relay's role).

CREATE SCHEMA pgrelay;
REVOKE ALL ON SCHEMA pgrelay FROM PUBLIC;

-- One row per relayed row change, written by pgrelay.notify_change() in the same transaction
-- as the change itself, so a row exists exactly when the change committed. The relay reads it
-- to resolve oversized ("ref") notifications and to catch up after its LISTEN connection
-- dropped (notifications are not durable). Pruned by age.
CREATE TABLE pgrelay.change_log (
    -- Orders the log and identifies a change; also carried in every notification, which makes
    -- each payload unique (Postgres merges identical payloads within one transaction).
    -- Sequence order is allocation order, not commit order: catch-up must use `xid` too.
    seq              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction, so a catch-up can tell which entries were still in flight
    -- (compare with pg_current_snapshot()'s xmin) instead of skipping past them.
    xid              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    schema_name      text        NOT NULL,
    table_name       text        NOT NULL,
    -- TG_OP: INSERT, UPDATE or DELETE.
    op               text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    -- Exactly the string sent as `commit_timestamp` in the notification, so a replayed change
    -- is byte-identical to the live one.
    commit_timestamp text        NOT NULL,
    -- to_jsonb(NEW) for INSERT/UPDATE, else NULL.
    record           jsonb,
    -- to_jsonb(OLD) for UPDATE/DELETE, else NULL.
    old_record       jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Pruning: `DELETE FROM pgrelay.change_log WHERE created_at < now() - retention`.
CREATE INDEX change_log_created_at_idx ON pgrelay.change_log (created_at);

COMMENT ON TABLE pgrelay.change_log IS
    'One row per relayed row change (written by pgrelay.notify_change()); resolves oversized notifications and lets the relay catch up after a LISTEN disconnect. Pruned by created_at.';
COMMENT ON COLUMN pgrelay.change_log.seq IS
    'Change id, sent in every notification; allocation order, not commit order.';
COMMENT ON COLUMN pgrelay.change_log.xid IS
    'Writing transaction; with pg_current_snapshot() tells a catch-up which entries may still commit.';
COMMENT ON COLUMN pgrelay.change_log.commit_timestamp IS
    'The exact commit_timestamp string sent in the notification.';

-- The NOTIFY channel the trigger sends on and the relay LISTENs to. The relay replaces this
-- function at start with its configured channel, so the two cannot disagree. The body is a
-- single literal and the function IMMUTABLE, so the planner folds it into a constant; a
-- replacement invalidates cached plans that folded it, so sessions pick up the new name.
CREATE FUNCTION pgrelay.channel() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 'pgrelay' $$;

COMMENT ON FUNCTION pgrelay.channel() IS
    'NOTIFY channel used by pgrelay.notify_change(); replaced by the relay at start with its configured channel.';
