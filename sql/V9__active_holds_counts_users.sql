-- V9: `active-holds` counts holders as the HTTP API does (GET /api/v1/holds/active): distinct
-- users, so one user holding in two tabs is one holder (a row without a user counts as its
-- own holder). V6 counted rows, which made the live figure and the fallback figure disagree.
UPDATE pgrelay.live_queries
   SET sql = $$SELECT (SELECT count(DISTINCT coalesce(user_id::text, id::text))
                         FROM public.button_holds WHERE is_active)::int AS total,
                      coalesce((SELECT jsonb_object_agg(coalesce(poll_id::text, 'none'), holders)
                                  FROM (SELECT poll_id,
                                               count(DISTINCT coalesce(user_id::text, id::text))::int AS holders
                                          FROM public.button_holds WHERE is_active
                                         GROUP BY poll_id) h), '{}') AS by_poll$$
 WHERE name = 'active-holds';
