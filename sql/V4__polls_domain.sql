-- V4: the polling app's rules, owned by the DBAs: casting a vote (the hold-to-vote rule),
-- boosting a poll, and the statistics caches kept by triggers.
--
-- Everything here is plain SQL/plpgsql in schema public, so a DBA can read and replace it
-- (CREATE OR REPLACE FUNCTION in a later migration) without touching the relay. The relay's HTTP
-- API only calls public.cast_vote / public.boost_poll and reads the caches; it maps the SQLSTATEs
-- below to HTTP statuses (README "Polls, votes and statistics", ERROR_CODES.md).
--
-- Refusals raised by cast_vote / boost_poll (custom SQLSTATE class PV, one code per reason):
--   PV001  poll not found
--   PV002  poll not accepting votes: status is not 'active', or closes_at has passed
--   PV003  no such option (option_index outside the poll's options array)
--   PV004  this user already voted on this poll
--   PV005  no hold by this user on this poll lasted long enough (or there is none)
--   PV006  unknown user (no such profile)
--
-- Concurrency notes (READ COMMITTED, the default, is assumed throughout; under REPEATABLE READ
-- or SERIALIZABLE the same locks make a racing caller fail with 40001 instead of waiting, and it
-- should retry):
--   * One vote per user per poll is the UNIQUE (poll_id, user_id) constraint of user_votes, not
--     the pre-check: two concurrent cast_vote calls for the same (user, poll) both pass the
--     pre-check, the second INSERT waits on the first's uncommitted index entry, and then does
--     nothing (ON CONFLICT DO NOTHING) if the first committed, which cast_vote reports as PV004.
--   * A vote racing a close: cast_vote reads the poll FOR SHARE. Closing a poll is an UPDATE,
--     which needs a lock that conflicts with FOR SHARE, so the two are ordered: either the vote
--     commits first (and the close waits for it), or the close commits first and the vote's
--     FOR SHARE, after waiting, re-reads the newest row version, sees 'closed' and raises PV002.
--     A vote never commits against a poll that was closed before it committed. (FOR KEY SHARE,
--     what the foreign key takes, would not do: it does not conflict with non-key updates.)
--     The price: a boost (also an UPDATE of the poll row) waits for votes in flight on that poll.

-- ---------------------------------------------------------------------------------------------
-- Settings a DBA edits with plain UPDATEs.

CREATE TABLE public.app_settings (
    name        text  PRIMARY KEY,
    value       jsonb NOT NULL,
    description text,
    -- Known settings are type-checked here, so a typo fails the UPDATE, not every vote.
    CONSTRAINT app_settings_vote_hold_min_ms_check CHECK (
        name <> 'vote_hold_min_ms'
        OR (jsonb_typeof(value) = 'number'
            AND (value)::numeric >= 0
            AND (value)::numeric <= 2147483647
            AND (value)::numeric = trunc((value)::numeric)))
);

COMMENT ON TABLE public.app_settings IS
    'Settings of the polling app''s SQL rules, edited by DBAs with UPDATE (e.g. vote_hold_min_ms).';

INSERT INTO public.app_settings (name, value, description) VALUES
    ('vote_hold_min_ms', '3000',
     'cast_vote accepts a vote only after a button_holds row by that user on that poll lasting at least this many milliseconds');

-- The hold threshold. Reads the app_settings row, so
--   UPDATE public.app_settings SET value = '5000' WHERE name = 'vote_hold_min_ms';
-- takes effect for the next vote. A missing row means the default, 3000.
CREATE FUNCTION public.vote_hold_min_ms() RETURNS int
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
        SELECT coalesce(
            (SELECT (value)::int FROM public.app_settings WHERE name = 'vote_hold_min_ms'),
            3000)
    $$;

COMMENT ON FUNCTION public.vote_hold_min_ms() IS
    'Minimum hold for a vote in ms: app_settings row vote_hold_min_ms, default 3000.';

-- ---------------------------------------------------------------------------------------------
-- Statistics caches. Not published (no pgrelay trigger): every vote would otherwise cost two
-- more NOTIFYs. The live aggregate topics read them instead; a DBA who wants their row changes
-- streamed adds a file to triggers/ as for any table.

-- Votes per option of each poll. One row per (poll, option) that ever got a vote; rows are not
-- removed when they drop to 0 (removing them would race with a concurrent increment). Options
-- without a row have 0 votes. Votes on the same option of the same poll do serialize on its
-- row (for the length of their transactions); votes on different polls never share a row.
CREATE TABLE public.poll_option_counts (
    poll_id      bigint NOT NULL REFERENCES public.polls (id) ON DELETE CASCADE,
    option_index int    NOT NULL,
    votes        bigint NOT NULL DEFAULT 0 CHECK (votes >= 0),
    PRIMARY KEY (poll_id, option_index)
) WITH (fillfactor = 70);  -- room on the page for HOT updates of `votes`

COMMENT ON TABLE public.poll_option_counts IS
    'Cache: votes per (poll, option), kept by triggers on user_votes. Missing row = 0 votes.';

-- App totals, sharded. A single row per metric would be updated by every vote in the whole app
-- and hold its row lock from the update until commit, so all voting transactions would queue
-- on it. Instead each metric has app_stats_shard_count() rows; a writer adds its delta to the
-- first shard (starting at its backend's home shard) that no other transaction has locked
-- (FOR UPDATE SKIP LOCKED), so writers never wait on each other unless every shard is busy.
-- Readers sum the shards: public.app_stats.
CREATE TABLE public.app_stat_shards (
    metric text   NOT NULL
                  CHECK (metric IN ('polls', 'active_polls', 'votes', 'users', 'boosts')),
    shard  int    NOT NULL CHECK (shard >= 0),
    -- A single shard may go negative (a delete can land on a different shard than the insert);
    -- only the sum is meaningful.
    value  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (metric, shard)
) WITH (fillfactor = 50);  -- tiny, updated constantly: keep updates HOT

COMMENT ON TABLE public.app_stat_shards IS
    'Cache: app totals split into shards so concurrent writers do not queue on one row. Read public.app_stats.';

-- How many shards each metric gets. To change it: replace this function and insert (or delete)
-- the matching app_stat_shards rows (deleting: first add their values into shard 0).
CREATE FUNCTION public.app_stats_shard_count() RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 16 $$;

INSERT INTO public.app_stat_shards (metric, shard)
SELECT m, s
FROM unnest(ARRAY['polls', 'active_polls', 'votes', 'users', 'boosts']) AS m,
     generate_series(0, public.app_stats_shard_count() - 1) AS s;

-- The app totals, one row.
CREATE VIEW public.app_stats AS
SELECT coalesce(sum(value) FILTER (WHERE metric = 'polls'), 0)::bigint        AS polls,
       coalesce(sum(value) FILTER (WHERE metric = 'active_polls'), 0)::bigint AS active_polls,
       coalesce(sum(value) FILTER (WHERE metric = 'votes'), 0)::bigint        AS votes,
       coalesce(sum(value) FILTER (WHERE metric = 'users'), 0)::bigint        AS users,
       coalesce(sum(value) FILTER (WHERE metric = 'boosts'), 0)::bigint       AS boosts
FROM public.app_stat_shards;

COMMENT ON VIEW public.app_stats IS
    'App totals (polls, active polls, votes, users, boosts): the sum of public.app_stat_shards.';

-- Add `delta` to `metric`. Lock-free for the caller in the common case: the row is picked with
-- SKIP LOCKED, starting at this backend's home shard (so concurrent sessions start apart), and
-- only when every shard is locked by other transactions does it wait, on the home shard.
-- The UPDATE adds to whatever the row holds when it gets the lock (READ COMMITTED re-reads the
-- newest version), so no increment is lost.
CREATE FUNCTION public.app_stats_add(p_metric text, p_delta bigint) RETURNS void
    LANGUAGE plpgsql
AS $function$
DECLARE
    n    int := public.app_stats_shard_count();
    home int := pg_backend_pid() % n;
BEGIN
    IF p_delta = 0 THEN
        RETURN;
    END IF;
    UPDATE public.app_stat_shards
       SET value = value + p_delta
     WHERE metric = p_metric
       AND shard = (SELECT shard FROM public.app_stat_shards
                     WHERE metric = p_metric
                     ORDER BY (shard + n - home) % n, shard
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        -- Every shard is busy: queue on the home shard (or create it if a DBA removed it).
        INSERT INTO public.app_stat_shards AS s (metric, shard, value)
        VALUES (p_metric, home, p_delta)
        ON CONFLICT (metric, shard) DO UPDATE SET value = s.value + excluded.value;
    END IF;
END
$function$;

-- Recompute every cache from the tables: after a TRUNCATE (which fires no row triggers), or by
-- a DBA who suspects drift. Blocks writers of the source tables while it counts.
CREATE FUNCTION public.rebuild_stats() RETURNS void
    LANGUAGE plpgsql
AS $function$
BEGIN
    LOCK TABLE public.profiles, public.polls, public.user_votes IN SHARE MODE;
    LOCK TABLE public.poll_option_counts, public.app_stat_shards IN EXCLUSIVE MODE;

    DELETE FROM public.poll_option_counts;
    INSERT INTO public.poll_option_counts (poll_id, option_index, votes)
    SELECT poll_id, option_index, count(*) FROM public.user_votes GROUP BY 1, 2;

    UPDATE public.app_stat_shards SET value = 0 WHERE value <> 0;
    INSERT INTO public.app_stat_shards AS s (metric, shard, value)
    SELECT m, 0, v
    FROM (SELECT 'polls', count(*) FROM public.polls
          UNION ALL SELECT 'active_polls', count(*) FROM public.polls WHERE status = 'active'
          UNION ALL SELECT 'boosts', coalesce(sum(boost_count), 0) FROM public.polls
          UNION ALL SELECT 'votes', count(*) FROM public.user_votes
          UNION ALL SELECT 'users', count(*) FROM public.profiles) AS t(m, v)
    ON CONFLICT (metric, shard) DO UPDATE SET value = excluded.value;
END
$function$;

COMMENT ON FUNCTION public.rebuild_stats() IS
    'Recompute poll_option_counts and app_stat_shards from profiles, polls and user_votes.';

-- The cache triggers are statement-level with transition tables: a statement touching many
-- rows (a bulk insert, a poll deleted with its votes by ON DELETE CASCADE) costs one upsert
-- per (poll, option) and one shard update per metric, not one per row. PostgreSQL allows a
-- transition table only on a single-event trigger, hence one trigger per event, all running
-- the same function. AFTER STATEMENT triggers fire after the row-level pgrelay_notify ones, so
-- the (brief) cache row locks are taken as late as possible in the transaction.

-- user_votes → poll_option_counts and the 'votes' total.
--
-- Row locks on poll_option_counts are always taken in (poll_id, option_index) order, so two
-- statements touching several count rows (moving votes between options, say A→B and B→A)
-- cannot deadlock each other: the rows that exist are locked first, in order; then missing
-- rows are inserted, in order; then the deltas are applied. Increments add to whatever the
-- row holds once locked (READ COMMITTED re-reads the newest version), so none is lost.
-- Decrements never create rows, so a poll deleted together with its votes (ON DELETE CASCADE
-- also removes its count rows) leaves nothing behind.
CREATE FUNCTION public.user_votes_stats() RETURNS trigger
    LANGUAGE plpgsql
AS $function$
DECLARE
    k_poll   bigint[];
    k_option int[];
    k_delta  bigint[];
    net      bigint;
BEGIN
    -- The net change per (poll, option), in key order.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(poll_id ORDER BY poll_id, option_index),
               array_agg(option_index ORDER BY poll_id, option_index),
               array_agg(n ORDER BY poll_id, option_index), sum(n)
          INTO k_poll, k_option, k_delta, net
          FROM (SELECT poll_id, option_index, count(*) AS n FROM new_rows GROUP BY 1, 2) x;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(poll_id ORDER BY poll_id, option_index),
               array_agg(option_index ORDER BY poll_id, option_index),
               array_agg(-n ORDER BY poll_id, option_index), -sum(n)
          INTO k_poll, k_option, k_delta, net
          FROM (SELECT poll_id, option_index, count(*) AS n FROM old_rows GROUP BY 1, 2) x;
    ELSE
        -- UPDATE: only votes whose poll_id or option_index changed move between rows. (A
        -- transition table rules out a column list on the trigger, so it fires for every
        -- UPDATE statement; for most the net change is empty.)
        SELECT array_agg(poll_id ORDER BY poll_id, option_index),
               array_agg(option_index ORDER BY poll_id, option_index),
               array_agg(d ORDER BY poll_id, option_index), 0
          INTO k_poll, k_option, k_delta, net
          FROM (SELECT poll_id, option_index, sum(d) AS d
                FROM (SELECT poll_id, option_index, 1 AS d FROM new_rows
                      UNION ALL
                      SELECT poll_id, option_index, -1 FROM old_rows) u
                GROUP BY 1, 2 HAVING sum(d) <> 0) x;
    END IF;

    IF k_poll IS NOT NULL THEN
        IF cardinality(k_poll) > 1 THEN
            PERFORM 1
              FROM public.poll_option_counts c
              JOIN unnest(k_poll, k_option) AS k(poll_id, option_index)
                USING (poll_id, option_index)
             ORDER BY c.poll_id, c.option_index
               FOR UPDATE OF c;
        END IF;
        INSERT INTO public.poll_option_counts AS c (poll_id, option_index, votes)
        SELECT poll_id, option_index, d
          FROM unnest(k_poll, k_option, k_delta) AS k(poll_id, option_index, d)
         WHERE d > 0
         ORDER BY poll_id, option_index
        ON CONFLICT (poll_id, option_index) DO UPDATE SET votes = c.votes + excluded.votes;
        UPDATE public.poll_option_counts c
           SET votes = c.votes + k.d
          FROM unnest(k_poll, k_option, k_delta) AS k(poll_id, option_index, d)
         WHERE k.d < 0 AND c.poll_id = k.poll_id AND c.option_index = k.option_index;
    END IF;
    PERFORM public.app_stats_add('votes', coalesce(net, 0));
    RETURN NULL;
END
$function$;

CREATE TRIGGER stats_insert AFTER INSERT ON public.user_votes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_votes_stats();
CREATE TRIGGER stats_delete AFTER DELETE ON public.user_votes
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_votes_stats();
CREATE TRIGGER stats_update AFTER UPDATE ON public.user_votes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_votes_stats();

-- polls → the 'polls', 'active_polls' and 'boosts' totals. An UPDATE moves 'active_polls' when
-- a status enters or leaves 'active', and 'boosts' by the change of boost_count.
CREATE FUNCTION public.polls_stats() RETURNS trigger
    LANGUAGE plpgsql
AS $function$
DECLARE
    d_polls  bigint := 0;
    d_active bigint := 0;
    d_boosts bigint := 0;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*), count(*) FILTER (WHERE status = 'active'), coalesce(sum(boost_count), 0)
          INTO d_polls, d_active, d_boosts
          FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT -count(*), -count(*) FILTER (WHERE status = 'active'), -coalesce(sum(boost_count), 0)
          INTO d_polls, d_active, d_boosts
          FROM old_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT coalesce(sum(a), 0), coalesce(sum(b), 0)
          INTO d_active, d_boosts
          FROM (SELECT (status = 'active')::int AS a, boost_count AS b FROM new_rows
                UNION ALL
                SELECT -(status = 'active')::int, -boost_count FROM old_rows) x;
    END IF;
    PERFORM public.app_stats_add('polls', d_polls);
    PERFORM public.app_stats_add('active_polls', d_active);
    PERFORM public.app_stats_add('boosts', d_boosts);
    RETURN NULL;
END
$function$;

CREATE TRIGGER stats_insert AFTER INSERT ON public.polls
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.polls_stats();
CREATE TRIGGER stats_delete AFTER DELETE ON public.polls
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.polls_stats();
CREATE TRIGGER stats_update AFTER UPDATE ON public.polls
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.polls_stats();

-- profiles → the 'users' total.
CREATE FUNCTION public.profiles_stats() RETURNS trigger
    LANGUAGE plpgsql
AS $function$
DECLARE
    n bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO n FROM new_rows;
    ELSE
        SELECT -count(*) INTO n FROM old_rows;
    END IF;
    PERFORM public.app_stats_add('users', n);
    RETURN NULL;
END
$function$;

CREATE TRIGGER stats_insert AFTER INSERT ON public.profiles
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.profiles_stats();
CREATE TRIGGER stats_delete AFTER DELETE ON public.profiles
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.profiles_stats();

-- TRUNCATE fires no row or transition-table triggers: recount.
CREATE FUNCTION public.stats_after_truncate() RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM public.rebuild_stats();
    RETURN NULL;
END
$function$;

CREATE TRIGGER stats_truncate AFTER TRUNCATE ON public.user_votes
    FOR EACH STATEMENT EXECUTE FUNCTION public.stats_after_truncate();
CREATE TRIGGER stats_truncate AFTER TRUNCATE ON public.polls
    FOR EACH STATEMENT EXECUTE FUNCTION public.stats_after_truncate();
CREATE TRIGGER stats_truncate AFTER TRUNCATE ON public.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION public.stats_after_truncate();

-- Rows that existed before this migration.
SELECT public.rebuild_stats();

-- ---------------------------------------------------------------------------------------------
-- The rules.

-- Cast a vote: the hold-to-vote rule (APP.md "Vote hold"). Accepted only when
--   * the poll exists                                        else PV001
--   * it is 'active' and closes_at (if any) is in the future else PV002
--   * 0 <= p_option_index < jsonb_array_length(options)     else PV003
--   * the user exists                                        else PV006
--   * the user has not voted on this poll                    else PV004
--   * a button_holds row by this user on this poll has lasted at least vote_hold_min_ms(),
--     counting an active hold (ended_at NULL) up to now()    else PV005
-- The vote stores the longest such hold as hold_ms. The checks run in this order, so a caller
-- gets the most fundamental refusal (a second vote is PV004 whatever its hold).
-- See the header for why the poll row is read FOR SHARE and how duplicates are refused.
CREATE FUNCTION public.cast_vote(p_poll_id bigint, p_user_id uuid, p_option_index int)
    RETURNS public.user_votes
    LANGUAGE plpgsql
AS $function$
DECLARE
    poll    record;
    min_ms  int := public.vote_hold_min_ms();
    held_ms numeric;
    n_opts  int;
    vote    public.user_votes;
BEGIN
    SELECT status, closes_at, options INTO poll
      FROM public.polls WHERE id = p_poll_id
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'poll % not found', p_poll_id USING ERRCODE = 'PV001';
    END IF;
    IF poll.status <> 'active' THEN
        RAISE EXCEPTION 'poll % is %, not active', p_poll_id, poll.status
            USING ERRCODE = 'PV002';
    END IF;
    IF poll.closes_at IS NOT NULL AND poll.closes_at <= now() THEN
        RAISE EXCEPTION 'poll % closed at %', p_poll_id, poll.closes_at
            USING ERRCODE = 'PV002';
    END IF;

    n_opts := jsonb_array_length(poll.options);
    IF p_option_index IS NULL OR p_option_index < 0 OR p_option_index >= n_opts THEN
        RAISE EXCEPTION 'poll % has no option % (options are 0 to %)',
            p_poll_id, coalesce(p_option_index::text, 'NULL'), n_opts - 1
            USING ERRCODE = 'PV003';
    END IF;

    -- FOR KEY SHARE, as the foreign key check would: the profile cannot vanish before commit.
    PERFORM 1 FROM public.profiles WHERE id = p_user_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PV006';
    END IF;

    IF EXISTS (SELECT 1 FROM public.user_votes
                WHERE poll_id = p_poll_id AND user_id = p_user_id) THEN
        RAISE EXCEPTION 'user % already voted on poll %', p_user_id, p_poll_id
            USING ERRCODE = 'PV004';
    END IF;

    -- button_holds_user_poll_idx serves this.
    SELECT max(extract(epoch FROM coalesce(ended_at, now()) - started_at) * 1000)
      INTO held_ms
      FROM public.button_holds
     WHERE user_id = p_user_id AND poll_id = p_poll_id;
    IF held_ms IS NULL THEN
        RAISE EXCEPTION 'no hold by user % on poll %: hold the button for at least % ms',
            p_user_id, p_poll_id, min_ms
            USING ERRCODE = 'PV005';
    END IF;
    IF held_ms < min_ms THEN
        RAISE EXCEPTION 'hold of % ms on poll % is shorter than the required % ms',
            greatest(floor(held_ms), 0), p_poll_id, min_ms
            USING ERRCODE = 'PV005';
    END IF;

    -- The unique constraint is the real guard (see the header): a racing duplicate that
    -- committed first makes this insert do nothing.
    INSERT INTO public.user_votes (poll_id, user_id, option_index, hold_ms)
    VALUES (p_poll_id, p_user_id, p_option_index, least(floor(held_ms), 2147483647)::int)
    ON CONFLICT (poll_id, user_id) DO NOTHING
    RETURNING * INTO vote;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % already voted on poll %', p_user_id, p_poll_id
            USING ERRCODE = 'PV004';
    END IF;
    RETURN vote;
END
$function$;

COMMENT ON FUNCTION public.cast_vote(bigint, uuid, int) IS
    'Cast a vote if the poll is active, the option exists, the user has not voted and held the button long enough (vote_hold_min_ms()). Refusals: PV001 poll not found, PV002 not active or closed, PV003 no such option, PV004 already voted, PV005 hold too short or missing, PV006 unknown user.';

-- Boost a poll: boost_count + 1, only while it accepts votes (the same rule as cast_vote:
-- 'active' and not past closes_at). Returns the new boost_count. Refusals: PV001, PV002.
-- The UPDATE's own WHERE is re-checked against the newest row version if it waited on a
-- concurrent close, so a boost never lands on a poll closed before it committed.
CREATE FUNCTION public.boost_poll(p_poll_id bigint) RETURNS int
    LANGUAGE plpgsql
AS $function$
DECLARE
    boosts int;
    poll   record;
BEGIN
    UPDATE public.polls
       SET boost_count = boost_count + 1
     WHERE id = p_poll_id
       AND status = 'active'
       AND (closes_at IS NULL OR closes_at > now())
    RETURNING boost_count INTO boosts;
    IF FOUND THEN
        RETURN boosts;
    END IF;
    SELECT status, closes_at INTO poll FROM public.polls WHERE id = p_poll_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'poll % not found', p_poll_id USING ERRCODE = 'PV001';
    END IF;
    IF poll.status <> 'active' THEN
        RAISE EXCEPTION 'poll % is %, not active', p_poll_id, poll.status
            USING ERRCODE = 'PV002';
    END IF;
    RAISE EXCEPTION 'poll % closed at %', p_poll_id, poll.closes_at USING ERRCODE = 'PV002';
END
$function$;

COMMENT ON FUNCTION public.boost_poll(bigint) IS
    'Add one boost to an active, open poll; returns the new boost_count. Refusals: PV001 poll not found, PV002 not active or closed.';
