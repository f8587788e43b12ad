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

/// The loaded policies, by (schema, table).
#[derive(Debug, Default)]
pub struct Policies {
    rules: RwLock<HashMap<(String, String), Vec<Rule>>>,
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
                    hidden_columns: r
                        .try_get::<_, Option<Vec<String>>>(4)?
                        .unwrap_or_default(),
                });
        }
        let n = rows.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
        Ok(n)
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
}
