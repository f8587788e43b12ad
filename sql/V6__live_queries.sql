-- V6: live aggregate topics. Each row is a named, read-only query whose result the relay
-- pushes to channel `realtime:<name>` (a `broadcast` event `update`), re-running it at most
-- once per `debounce_ms` after a change to one of `depends_on`, and only when the result
-- changed; a client joining the channel gets the current value at once. One query per change
-- burst for everyone, instead of one refetch per client per event.
--
-- DBAs own these rows: the SQL runs as the relay's role, so keep it read-only. Edit freely;
-- the relay reloads the definitions at start.
CREATE TABLE pgrelay.live_queries (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$'),
    sql          text NOT NULL,
    -- Tables (schema.table) whose changes make the result stale.
    depends_on   text[] NOT NULL,
    debounce_ms  int NOT NULL DEFAULT 250 CHECK (debounce_ms >= 0)
);

COMMENT ON TABLE pgrelay.live_queries IS
    'Live aggregate topics: realtime:<name> receives this query''s result (as JSON) whenever it changes.';

INSERT INTO pgrelay.live_queries (name, sql, depends_on) VALUES
    ('active-holds',
     $$SELECT coalesce(sum(holders), 0)::int AS total,
              coalesce(jsonb_object_agg(coalesce(poll_id::text, 'none'), holders)
                       FILTER (WHERE holders > 0), '{}') AS by_poll
       FROM (SELECT poll_id, count(*)::int AS holders
               FROM public.button_holds WHERE is_active GROUP BY poll_id) h$$,
     ARRAY['public.button_holds']),
    ('statistics',
     $$SELECT * FROM public.app_stats$$,
     ARRAY['public.user_votes', 'public.polls', 'public.profiles']);
