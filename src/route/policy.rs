//! Read policies: which rows of a table a subscriber may receive and which of their columns it
//! may not see, by role and claims, kept in `pgrelay.read_policies` where DBAs edit them and
//! evaluated in memory.
//!
//! A policy is a filter in the `postgres_changes` grammar with `{sub}` standing for the
//! subscriber's `sub` claim. At join time it is combined (AND) with the subscriber's own
//! filter, so it costs what a filter costs: once per distinct binding per change, and a policy
//! such as `user_id=eq.{sub}` on its own is found by hash lookup. Hidden columns are removed
//! from the rows and the column list of every event the subscriber gets, rendered once per
//! change for each distinct set of hidden columns; a subscriber's filter may not name them
//! (it would reveal their values by what it lets through).

use std::collections::HashMap;
use std::sync::RwLock;

use deadpool_postgres::Pool;

use crate::auth::Claims;
use crate::db::{self, DbError};

#[derive(Debug, Clone)]
struct Rule {
    role: String,
    row_filter: Option<String>,
    hidden_columns: Vec<String>,
}

/// What a subscriber may read of a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The rows: `None` for every row, else a filter in the `postgres_changes` grammar.
    pub row_filter: Option<String>,
    /// Columns removed from what it receives, sorted, without duplicates.
    pub hidden: Vec<String>,
}

/// What a private channel allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAction {
    /// Join it, and receive its broadcasts and presence.
    Read,
    /// Broadcast on it.
    Send,
    /// Track presence on it.
    Track,
}

#[derive(Debug, Clone)]
struct ChannelRule {
    pattern: String,
    role: String,
    read: bool,
    send: bool,
    track: bool,
}

/// The loaded policies: read policies by (schema, table), and the private channel rules.
#[derive(Debug, Default)]
pub struct Policies {
    rules: RwLock<HashMap<(String, String), Vec<Rule>>>,
    channels: RwLock<Vec<ChannelRule>>,
}

impl Policies {
    /// (Re)load every policy from the database.
    ///
    /// # Errors
    /// The database did not answer.
    pub async fn load(&self, pool: &Pool) -> Result<usize, DbError> {
        let client = db::client(pool).await?;
        let rows = client
            .query(
                "SELECT schema_name, table_name, role, row_filter, hidden_columns \
                 FROM pgrelay.read_policies",
                &[],
            )
            .await?;
        let mut rules: HashMap<(String, String), Vec<Rule>> = HashMap::new();
        for r in &rows {
            rules
                .entry((r.try_get(0)?, r.try_get(1)?))
                .or_default()
                .push(Rule {
                    role: r.try_get(2)?,
                    row_filter: r.try_get(3)?,
                    hidden_columns: r.try_get::<_, Option<Vec<String>>>(4)?.unwrap_or_default(),
                });
        }
        let mut n = rows.len();
        let rows = client
            .query(
                "SELECT topic_pattern, role, can_read, can_send, can_track \
                 FROM pgrelay.channel_policies",
                &[],
            )
            .await?;
        let mut channels = Vec::with_capacity(rows.len());
        for r in &rows {
            channels.push(ChannelRule {
                pattern: r.try_get(0)?,
                role: r.try_get(1)?,
                read: r.try_get(2)?,
                send: r.try_get(3)?,
                track: r.try_get(4)?,
            });
        }
        n += channels.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
        *self.channels.write().unwrap_or_else(|p| p.into_inner()) = channels;
        Ok(n)
    }

    /// Whether `claims` may do `action` on the private channel `name` (without `realtime:`):
    /// some rule for its role (or `*`) whose pattern matches grants it.
    pub fn channel_allows(&self, name: &str, claims: &Claims, action: ChannelAction) -> bool {
        let rules = self.channels.read().unwrap_or_else(|p| p.into_inner());
        rules.iter().any(|r| {
            (r.role == claims.role || r.role == "*")
                && match action {
                    ChannelAction::Read => r.read,
                    ChannelAction::Send => r.send,
                    ChannelAction::Track => r.track,
                }
                && topic_matches(&r.pattern, name, claims.sub.as_deref())
        })
    }

    /// `Ok` when `claims` may do `action` on the private channel `name`, else Supabase's
    /// refusal text (`Unauthorized: You do not have permissions to … this Channel topic: …`).
    pub fn check_channel(
        &self,
        name: &str,
        claims: &Claims,
        action: ChannelAction,
    ) -> Result<(), String> {
        if self.channel_allows(name, claims, action) {
            return Ok(());
        }
        let what = match action {
            ChannelAction::Read => "read from",
            ChannelAction::Send => "write to",
            ChannelAction::Track => "track presence on",
        };
        Err(format!(
            "Unauthorized: You do not have permissions to {what} this Channel topic: {}",
            crate::protocol::truncate(name, 200)
        ))
    }

    /// What a subscriber may read of a table: the filter it is held to and the columns it
    /// does not see.
    ///
    /// # Errors
    /// The role may not read the table at all (the reason, for the subscriber).
    pub fn grant(&self, schema: &str, table: &str, claims: &Claims) -> Result<Grant, String> {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = rules.get(&(schema.to_owned(), table.to_owned())) else {
            return Ok(Grant::default());
        };
        let rule = list
            .iter()
            .find(|r| r.role == claims.role)
            .or_else(|| list.iter().find(|r| r.role == "*"))
            .ok_or_else(|| {
                format!(
                    "Unauthorized: role {} may not read {schema}.{table}",
                    claims.role
                )
            })?;
        let mut hidden = rule.hidden_columns.clone();
        hidden.sort_unstable();
        hidden.dedup();
        let Some(filter) = &rule.row_filter else {
            return Ok(Grant {
                row_filter: None,
                hidden,
            });
        };
        if !filter.contains("{sub}") {
            return Ok(Grant {
                row_filter: Some(filter.clone()),
                hidden,
            });
        }
        let sub = claims.sub.as_deref().ok_or_else(|| {
            format!("Unauthorized: reading {schema}.{table} needs a token with a sub claim")
        })?;
        // Quoted, so a sub with commas or quotes stays one value.
        let quoted = format!("\"{}\"", sub.replace('\\', "\\\\").replace('"', "\\\""));
        Ok(Grant {
            row_filter: Some(filter.replace("{sub}", &quoted)),
            hidden,
        })
    }

    /// Whether any table of `schema` (any schema for `None`) has policies: wildcard
    /// subscriptions cannot be held to per-table policies and are refused there.
    pub fn any_in(&self, schema: Option<&str>) -> bool {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        rules
            .keys()
            .any(|(s, _)| schema.is_none_or(|want| want == s))
    }
}

/// `pattern` against a channel name: `*` matches any run of characters, `{sub}` the token's
/// `sub` exactly (a pattern naming `{sub}` never matches for a token without one).
fn topic_matches(pattern: &str, name: &str, sub: Option<&str>) -> bool {
    let expanded;
    let pattern = if pattern.contains("{sub}") {
        // A sub holding `*` must not widen the pattern: such a token matches nothing.
        let Some(sub) = sub.filter(|s| !s.is_empty() && !s.contains('*')) else {
            return false;
        };
        expanded = pattern.replace("{sub}", sub);
        expanded.as_str()
    } else {
        pattern
    };
    glob(pattern.as_bytes(), name.as_bytes())
}

/// Iterative glob with `*` only: linear backtracking to the last star, no recursion.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: &str, sub: Option<&str>) -> Claims {
        Claims {
            sub: sub.map(str::to_owned),
            role: role.into(),
            exp: i64::MAX,
        }
    }

    #[test]
    fn rules_by_role_with_sub_substitution() {
        let p = Policies::default();
        p.rules.write().unwrap().insert(
            ("public".into(), "user_votes".into()),
            vec![
                Rule {
                    role: "authenticated".into(),
                    row_filter: Some("user_id=eq.{sub}".into()),
                    hidden_columns: vec!["hold_ms".into(), "created_at".into(), "hold_ms".into()],
                },
                Rule {
                    role: "service_role".into(),
                    row_filter: None,
                    hidden_columns: vec![],
                },
            ],
        );
        let rows = |g: Result<Grant, String>| g.map(|g| g.row_filter);
        assert_eq!(
            p.grant("public", "user_votes", &claims("authenticated", Some("u1"))),
            Ok(Grant {
                row_filter: Some("user_id=eq.\"u1\"".into()),
                hidden: vec!["created_at".into(), "hold_ms".into()],
            })
        );
        assert_eq!(
            rows(p.grant("public", "user_votes", &claims("service_role", None))),
            Ok(None)
        );
        assert!(p
            .grant("public", "user_votes", &claims("anon", None))
            .is_err());
        assert!(p
            .grant("public", "user_votes", &claims("authenticated", None))
            .is_err());
        assert_eq!(
            rows(p.grant("public", "polls", &claims("anon", None))),
            Ok(None)
        );
        assert_eq!(
            rows(p.grant(
                "public",
                "user_votes",
                &claims("authenticated", Some("a\",b"))
            )),
            Ok(Some("user_id=eq.\"a\\\",b\"".into()))
        );
        assert!(p.any_in(Some("public")) && !p.any_in(Some("other")));
    }

    #[test]
    fn private_channels_by_pattern_role_and_sub() {
        let p = Policies::default();
        *p.channels.write().unwrap() = vec![
            ChannelRule {
                pattern: "*".into(),
                role: "service_role".into(),
                read: true,
                send: true,
                track: true,
            },
            ChannelRule {
                pattern: "user:{sub}".into(),
                role: "authenticated".into(),
                read: true,
                send: true,
                track: false,
            },
            ChannelRule {
                pattern: "room-*-lobby".into(),
                role: "*".into(),
                read: true,
                send: false,
                track: false,
            },
        ];
        let u1 = claims("authenticated", Some("u1"));
        use ChannelAction::*;
        assert!(p.channel_allows("user:u1", &u1, Read));
        assert!(p.channel_allows("user:u1", &u1, Send));
        assert!(!p.channel_allows("user:u1", &u1, Track));
        assert!(!p.channel_allows("user:u2", &u1, Read));
        assert!(!p.channel_allows("user:u1x", &u1, Read));
        assert!(!p.channel_allows("user:", &claims("authenticated", None), Read));
        assert!(!p.channel_allows("user:*", &claims("authenticated", Some("*")), Read));
        assert!(p.channel_allows("anything", &claims("service_role", None), Track));
        assert!(p.channel_allows("room-7-lobby", &claims("anon", None), Read));
        assert!(p.channel_allows("room--lobby", &claims("anon", None), Read));
        assert!(!p.channel_allows("room-7-lobby", &claims("anon", None), Send));
        assert!(!p.channel_allows("room-7-lobbyx", &claims("anon", None), Read));
        assert!(!p.channel_allows("other", &u1, Read));
    }

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("abc", "abd", false),
            ("", "", true),
            ("", "a", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} ~ {s}");
        }
    }
}
