-- V8: who may use a private channel (a join with config.private = true), by topic pattern.
--
-- Public channels stay open to every client, as in Supabase. A private channel is open only
-- to what a row here grants: `can_read` to join it (and receive its broadcasts and presence),
-- `can_send` to broadcast on it (socket or REST), `can_track` to track presence on it. With no
-- matching row a join is refused with Supabase's text (`Unauthorized: You do not have
-- permissions to read from this Channel topic: <name>`). Enforced only when the relay
-- verifies tokens (auth on); the relay reloads the rows when they change.
--
-- topic_pattern: the channel name (without `realtime:`); `*` matches any run of characters
-- and `{sub}` stands for the token's sub claim, so 'user:{sub}' is each user's own channel.
-- role: anon, authenticated, service_role, or * for any role.
CREATE TABLE pgrelay.channel_policies (
    topic_pattern text    NOT NULL,
    role          text    NOT NULL,
    can_read      boolean NOT NULL DEFAULT true,
    can_send      boolean NOT NULL DEFAULT false,
    can_track     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (topic_pattern, role)
);

COMMENT ON TABLE pgrelay.channel_policies IS
    'Who may join (can_read), broadcast on (can_send) and track presence on (can_track) private channels; * globs, {sub} = token sub.';

-- Shipped: the service role may do anything on any private channel; a signed-in user owns the
-- private channel named after it.
INSERT INTO pgrelay.channel_policies (topic_pattern, role, can_read, can_send, can_track) VALUES
    ('*', 'service_role', true, true, true),
    ('user:{sub}', 'authenticated', true, true, true);
