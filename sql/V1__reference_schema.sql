-- V1: the reference application's tables (APP.md). pgrelay relays changes on these; the relay
-- itself does not depend on their columns (it reads column types from the catalog), but the
-- end-to-end tests, the cleanup loop and the vote rule do.
--
-- PostgreSQL >= 14: gen_random_uuid() is core since 13, CREATE OR REPLACE TRIGGER (used by
-- triggers/) since 14.

-- Users. `username` is what the app shows and looks people up by, hence unique.
CREATE TABLE public.profiles (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    username     text        NOT NULL UNIQUE,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Questions. `options` is a JSON array of labels; `user_votes.option_index` points into it.
CREATE TABLE public.polls (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    question    text        NOT NULL,
    options     jsonb       NOT NULL DEFAULT '[]'
                            CHECK (jsonb_typeof(options) = 'array'),
    status      text        NOT NULL DEFAULT 'draft'
                            CHECK (status IN ('draft', 'active', 'closed')),
    -- A poll outlives its author's profile.
    created_by  uuid        REFERENCES public.profiles (id) ON DELETE SET NULL,
    boost_count int         NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    closes_at   timestamptz
);

-- Deleting a profile sets polls.created_by to NULL: without this index that is a full scan.
CREATE INDEX polls_created_by_idx ON public.polls (created_by) WHERE created_by IS NOT NULL;
-- "Active polls" is the hot read (lists, fallback polling snapshots); it is a small subset.
CREATE INDEX polls_active_idx ON public.polls (created_at DESC) WHERE status = 'active';

-- One vote per user per poll (the unique constraint enforces it and its index, which leads
-- with poll_id, also serves "votes of poll N" and the ON DELETE CASCADE from polls, so there is
-- no separate poll_id index).
CREATE TABLE public.user_votes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    poll_id      bigint      NOT NULL REFERENCES public.polls (id) ON DELETE CASCADE,
    user_id      uuid        NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
    option_index int         NOT NULL CHECK (option_index >= 0),
    -- How long the vote button was held; the vote rule requires >= 3000.
    hold_ms      int         NOT NULL DEFAULT 0 CHECK (hold_ms >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (poll_id, user_id)
);

-- ON DELETE CASCADE from profiles and "my votes" lookups.
CREATE INDEX user_votes_user_id_idx ON public.user_votes (user_id);

-- Press-and-hold sessions. A client inserts a row on press, bumps last_heartbeat every 3 s,
-- and sets ended_at/is_active on release; the cleanup loop marks rows whose heartbeat went
-- stale as inactive. poll_id is NULL for the plain (non-vote) button.
CREATE TABLE public.button_holds (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid        REFERENCES public.profiles (id) ON DELETE CASCADE,
    poll_id        bigint      REFERENCES public.polls (id) ON DELETE CASCADE,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    is_active      boolean     NOT NULL DEFAULT true
);

-- The cleanup sweep: `UPDATE ... WHERE is_active AND last_heartbeat < now() - threshold`.
-- Partial, so it only holds the (few) live sessions however many ended ones accumulate, and
-- it also serves counting active holders.
CREATE INDEX button_holds_stale_idx ON public.button_holds (last_heartbeat) WHERE is_active;
-- ON DELETE CASCADE from profiles, and the vote rule's "this user's hold on this poll".
CREATE INDEX button_holds_user_poll_idx ON public.button_holds (user_id, poll_id);
-- ON DELETE CASCADE from polls; plain-button rows (poll_id NULL) never match it.
CREATE INDEX button_holds_poll_id_idx ON public.button_holds (poll_id) WHERE poll_id IS NOT NULL;
