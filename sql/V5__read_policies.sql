-- V5: read policies — which rows of a published table a subscriber's role may receive.
--
-- The relay evaluates these in memory for every change (no query per subscriber): at join
-- time each subscriber's policy filter is combined with its own filter, with `{sub}` replaced
-- by the `sub` claim of its token. A table with no rows here is readable by everyone; a table
-- with rows is readable only by the roles listed (`*` = any role). Policies apply only when the
-- relay verifies tokens (PGRELAY_JWT_SECRET / PGRELAY_JWT_PUBLIC_KEY / PGRELAY_JWKS_FILE).
-- Edit the rows; the relay reloads them when they change (this table is published to it).
CREATE TABLE pgrelay.read_policies (
    schema_name text NOT NULL DEFAULT 'public',
    table_name  text NOT NULL,
    -- anon, authenticated, service_role, or * for any role.
    role        text NOT NULL,
    -- pgrelay's filter grammar (as in postgres_changes), `{sub}` = the token's sub claim;
    -- NULL = every row.
    row_filter  text,
    PRIMARY KEY (schema_name, table_name, role)
);

COMMENT ON TABLE pgrelay.read_policies IS
    'Which rows of a published table each role may receive (filter grammar, {sub} = token sub). No rows for a table: open to all.';

-- The reference app: a vote is visible to its owner and to the service role only.
INSERT INTO pgrelay.read_policies (schema_name, table_name, role, row_filter) VALUES
    ('public', 'user_votes', 'authenticated', 'user_id=eq.{sub}'),
    ('public', 'user_votes', 'service_role', NULL);
