//! Binding: a parsed [`Filter`] checked against its table's column types into a
//! [`BoundFilter`], once per subscription.
//!
//! Everything that can go wrong after parsing is found here, at join time: unknown columns,
//! values that do not cast to the column's type, operators the type does not have, patterns
//! that do not compile or go over their budget. What is left to do for each row cannot fail.
//! Binding also decides whether the filter is a single `eq` the router can index.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

use crate::route::filter::error::{clip, FilterError};
use crate::route::filter::eval::{BoundCondition, BoundFilter, Test};
use crate::route::filter::grammar::{CmpOp, Filter, Predicate};
use crate::route::filter::index::key_of;
use crate::route::filter::typed::{ColType, TextKind};

const MAX_IN_VALUES: usize = 100;
/// Bounds both the compiled program and the lazy DFA cache, so a hostile pattern such as
/// `(a{1000}){1000}` is rejected at subscribe time instead of eating memory per row.
const REGEX_SIZE_LIMIT: usize = 1 << 18;
/// Regex-backed conditions (`like`, `ilike`, `match`, `imatch`) one filter may hold. Each
/// compiles into up to [`REGEX_SIZE_LIMIT`] bytes on the joining socket's task: the budget per
/// filter, not only per regex, is what keeps a hostile join from tying up a worker.
const MAX_REGEX_CONDITIONS: usize = 8;

impl Filter {
    /// Type-check against the table's columns (`column_type` maps a column name to its
    /// `pg_type.typname`), casting every value and compiling every pattern once.
    pub fn bind<'t>(
        &self,
        column_type: impl Fn(&str) -> Option<&'t str>,
    ) -> Result<BoundFilter, FilterError> {
        // Check the regex budget before compiling anything.
        let regexes = self
            .conditions
            .iter()
            .filter(|c| {
                matches!(
                    c.predicate,
                    Predicate::Like { .. } | Predicate::Match { .. }
                )
            })
            .count();
        if regexes > MAX_REGEX_CONDITIONS {
            return Err(FilterError::InvalidRegex {
                op: "match",
                message: format!(
                    "too many pattern conditions ({regexes}); at most {MAX_REGEX_CONDITIONS} like/ilike/match/imatch per filter"
                ),
            });
        }
        let conditions = self
            .conditions
            .iter()
            .map(|c| {
                let typname = column_type(&c.column)
                    .ok_or_else(|| FilterError::UnknownColumn(clip(&c.column)))?;
                let ty = ColType::from_typname(typname);
                let test = bind_predicate(&c.predicate, &ty, typname)?;
                Ok(BoundCondition {
                    column: c.column.clone(),
                    negated: c.negated,
                    ty,
                    test,
                })
            })
            .collect::<Result<Vec<_>, FilterError>>()?;
        let eq_index = match conditions.as_slice() {
            [only] if !only.negated => match &only.test {
                Test::Cmp(CmpOp::Eq, value) => {
                    key_of(&only.ty, value).map(|key| (only.column.clone(), key))
                }
                _ => None,
            },
            _ => None,
        };
        Ok(BoundFilter {
            conditions,
            eq_index,
        })
    }
}

fn bind_predicate(predicate: &Predicate, ty: &ColType, typname: &str) -> Result<Test, FilterError> {
    let cast = |text: &str| {
        ty.cast(text).ok_or_else(|| FilterError::InvalidValue {
            typname: typname.to_owned(),
            value: clip(text),
        })
    };
    let text_kind = |op: &'static str| match ty {
        ColType::Text(kind) => Ok(*kind),
        _ => Err(FilterError::NotTextCompatible {
            op,
            typname: typname.to_owned(),
        }),
    };
    Ok(match predicate {
        Predicate::Cmp(op, value) => {
            let ordering = !matches!(op, CmpOp::Eq | CmpOp::Neq);
            if ordering && !ty.is_ordered() {
                return Err(FilterError::UnsupportedOperator {
                    op: op.name(),
                    typname: typname.to_owned(),
                });
            }
            Test::Cmp(*op, cast(value)?)
        }
        Predicate::In(items) => {
            if items.len() > MAX_IN_VALUES {
                return Err(FilterError::TooManyInValues);
            }
            let values = items
                .iter()
                .map(|item| item.as_deref().map(cast).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            Test::In(values)
        }
        Predicate::Like {
            pattern,
            insensitive,
        } => {
            let op = if *insensitive { "ilike" } else { "like" };
            let kind = text_kind(op)?;
            // citext overrides LIKE and regex matching to be case-insensitive.
            let fold = *insensitive || kind == TextKind::Citext;
            Test::Like {
                regex: like_regex(pattern, fold, op)?,
                fold,
            }
        }
        Predicate::Match {
            pattern,
            insensitive,
        } => {
            let op = if *insensitive { "imatch" } else { "match" };
            let kind = text_kind(op)?;
            let fold = *insensitive || kind == TextKind::Citext;
            // Postgres AREs let `.` match newlines by default.
            let regex = RegexBuilder::new(pattern)
                .case_insensitive(fold)
                .dot_matches_new_line(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| regex_error(op, &e))?;
            Test::Match(regex)
        }
        Predicate::Is(value) => match value.trim().to_ascii_lowercase().as_str() {
            "null" => Test::IsNull,
            word @ ("true" | "false" | "unknown") => {
                if *ty != ColType::Bool {
                    return Err(FilterError::IsRequiresBool {
                        value: word.to_owned(),
                        typname: typname.to_owned(),
                    });
                }
                match word {
                    "true" => Test::IsBool(true),
                    "false" => Test::IsBool(false),
                    _ => Test::IsNull,
                }
            }
            _ => return Err(FilterError::InvalidIsValue(clip(value))),
        },
        Predicate::IsDistinct(value) => Test::IsDistinct(cast(value)?),
    })
}

fn regex_error(op: &'static str, e: &regex::Error) -> FilterError {
    FilterError::InvalidRegex {
        op,
        message: clip(&e.to_string()),
    }
}

/// Translate SQL LIKE (`%`/`*`, `_`, backslash escape) into an anchored regex with every
/// literal escaped. When `fold`, both pattern and text are lowercased instead of using the
/// regex engine's case folding, matching Postgres' `lower()`-based ILIKE.
fn like_regex(pattern: &str, fold: bool, op: &'static str) -> Result<Regex, FilterError> {
    let pattern = if fold {
        Cow::Owned(pattern.to_lowercase())
    } else {
        Cow::Borrowed(pattern)
    };
    let mut re = String::with_capacity(pattern.len() * 2 + 8);
    re.push_str("(?s)\\A");
    let mut chars = pattern.chars();
    let mut after_any = false;
    while let Some(c) = chars.next() {
        match c {
            '%' | '*' => {
                if !after_any {
                    re.push_str(".*");
                }
                after_any = true;
                continue;
            }
            '_' => re.push('.'),
            '\\' => match chars.next() {
                Some(escaped) => push_literal(&mut re, escaped),
                None => return Err(FilterError::LikeTrailingEscape),
            },
            c => push_literal(&mut re, c),
        }
        after_any = false;
    }
    re.push_str("\\z");
    RegexBuilder::new(&re)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| regex_error(op, &e))
}

fn push_literal(re: &mut String, c: char) {
    let mut buf = [0u8; 4];
    re.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::filter::index::{index_key, IndexKey};
    use crate::route::filter::testing::{bind_err, on, parsed, row, typname};
    use serde_json::{json, Map, Value};

    fn bound(text: &str) -> BoundFilter {
        match parsed(text).bind(typname) {
            Ok(filter) => filter,
            Err(e) => panic!("bind({text:?}) failed: {e}"),
        }
    }

    #[test]
    fn bind_error_texts_and_codes() {
        let cases = [
            ("foo=eq.1", "invalid column for filter foo", "UnknownColumn"),
            (
                "id=eq.abc",
                r#"invalid input for type int8: "abc""#,
                "InvalidFilterValue",
            ),
            (
                "i4=eq.3000000000",
                r#"invalid input for type int4: "3000000000""#,
                "InvalidFilterValue",
            ),
            (
                "i2=in.(1,40000)",
                r#"invalid input for type int2: "40000""#,
                "InvalidFilterValue",
            ),
            (
                "oid=eq.-1",
                r#"invalid input for type oid: "-1""#,
                "InvalidFilterValue",
            ),
            (
                "id=eq.1.5",
                r#"invalid input for type int8: "1.5""#,
                "InvalidFilterValue",
            ),
            (
                "n=eq.1.2.3",
                r#"invalid input for type numeric: "1.2.3""#,
                "InvalidFilterValue",
            ),
            (
                "f8=eq.1e999",
                r#"invalid input for type float8: "1e999""#,
                "InvalidFilterValue",
            ),
            (
                "done=eq.maybe",
                r#"invalid input for type bool: "maybe""#,
                "InvalidFilterValue",
            ),
            (
                "u=eq.not-a-uuid",
                r#"invalid input for type uuid: "not-a-uuid""#,
                "InvalidFilterValue",
            ),
            (
                "tz=gt.2025-02-30",
                r#"invalid input for type timestamptz: "2025-02-30""#,
                "InvalidFilterValue",
            ),
            (
                "d=eq.yesterday",
                r#"invalid input for type date: "yesterday""#,
                "InvalidFilterValue",
            ),
            (
                "t=lt.25:00",
                r#"invalid input for type time: "25:00""#,
                "InvalidFilterValue",
            ),
            (
                r#"nums=eq.{1,abc}"#,
                r#"invalid input for type _int4: "{1,abc}""#,
                "InvalidFilterValue",
            ),
            (
                r#"nums=eq."{1,{2}}""#,
                r#"invalid input for type _int4: "{1,{2}}""#,
                "InvalidFilterValue",
            ),
            (
                "id=isdistinct.x",
                r#"invalid input for type int8: "x""#,
                "InvalidFilterValue",
            ),
            (
                "id=is.maybe",
                "invalid value for is filter: maybe",
                "InvalidFilterValue",
            ),
            (
                "id=is.true",
                "is.true requires a boolean column, got int8",
                "UnsupportedOperator",
            ),
            (
                "title=is.unknown",
                "is.unknown requires a boolean column, got text",
                "UnsupportedOperator",
            ),
            (
                "i4=like.1%",
                "operator like requires a text-compatible column type, got int4",
                "UnsupportedOperator",
            ),
            (
                "u=ilike.a%",
                "operator ilike requires a text-compatible column type, got uuid",
                "UnsupportedOperator",
            ),
            (
                "meta=match.x",
                "operator match requires a text-compatible column type, got jsonb",
                "UnsupportedOperator",
            ),
            (
                "tags=imatch.x",
                "operator imatch requires a text-compatible column type, got _text",
                "UnsupportedOperator",
            ),
            (
                "meta=gt.1",
                "operator gt is not supported for column type jsonb",
                "UnsupportedOperator",
            ),
            (
                "nums=lte.{1}",
                "operator lte is not supported for column type _int4",
                "UnsupportedOperator",
            ),
            (
                "mood=lt.happy",
                "operator lt is not supported for column type mood",
                "UnsupportedOperator",
            ),
            (
                r"title=like.abc\",
                "LIKE pattern must not end with escape character",
                "InvalidFilterValue",
            ),
        ];
        for (text, message, code) in cases {
            let e = bind_err(text);
            assert_eq!(e.to_string(), message, "{text}");
            assert_eq!(e.code(), code, "{text}");
        }
    }

    #[test]
    fn unknown_column_is_reported_before_later_conditions() {
        assert_eq!(
            bind_err("id=eq.1,nope=eq.2,id=eq.x"),
            FilterError::UnknownColumn("nope".to_owned())
        );
    }

    #[test]
    fn in_value_limit() {
        let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let f = bound(&format!("id=in.({})", list(100)));
        assert!(f.matches(&row(json!({"id": 99}))));
        let e = bind_err(&format!("id=in.({})", list(101)));
        assert_eq!(
            e.to_string(),
            "too many values for `in` filter. Maximum 100"
        );
        assert_eq!(e.code(), "TooManyInValues");
    }

    #[test]
    fn invalid_and_oversized_regexes_fail_at_bind() {
        let e = bind_err("title=match.(unclosed");
        assert_eq!(e.code(), "InvalidRegex");
        assert!(e
            .to_string()
            .starts_with("invalid regular expression for match filter: "));
        let e = bind_err(r"title=imatch.(?:\w{200}){200}");
        assert_eq!(e.code(), "InvalidRegex");
        assert!(e
            .to_string()
            .starts_with("invalid regular expression for imatch filter: "));
    }

    #[test]
    fn bind_echo_is_clipped() {
        let e = bind_err(&format!("id=eq.{}", "9".repeat(5000)));
        assert!(e.to_string().len() < 200);
    }

    #[test]
    fn like_and_ilike() {
        let table = [
            ("like.%milk", "buy milk", true),
            ("like.%MILK", "buy milk", false),
            ("ilike.%MILK", "buy milk", true),
            ("like.buy%", "buy milk", true),
            ("like.buy", "buy milk", false),
            ("like.%uy m%", "buy milk", true),
            ("like.b_y milk", "buy milk", true),
            ("like.b_ milk", "buy milk", false),
            ("like.*milk", "buy milk", true),
            (r"like.100\%", "100%", true),
            (r"like.100\%", "1000", false),
            (r"like.a\_b", "a_b", true),
            (r"like.a\_b", "axb", false),
            (r"like.a\\b", r"a\b", true),
            (r"like.a\*", "a*", true),
            (r"like.a\*", "ab", false),
            ("like.a.c", "abc", false),
            ("like.a.c", "a.c", true),
            ("like.(x)+", "(x)+", true),
            ("like.%", "", true),
            ("like._", "é", true),
            ("like.a%z", "a\nz", true),
            ("ilike.ÉTÉ%", "été 2025", true),
            ("like.%%%a", "ba", true),
        ];
        for (op, text, expected) in table {
            assert_eq!(
                on(&format!("title={op}"), "title", json!(text)),
                expected,
                "{op} {text:?}"
            );
            assert_eq!(
                on(&format!("title=not.{op}"), "title", json!(text)),
                !expected,
                "not.{op} {text:?}"
            );
        }
    }

    #[test]
    fn match_and_imatch_are_unanchored() {
        assert!(on("title=match.^post-", "title", json!("post-1")));
        assert!(!on("title=match.^post-", "title", json!("a post-1")));
        assert!(on("title=match.ost", "title", json!("a post-1")));
        assert!(!on("title=match.POST", "title", json!("post")));
        assert!(on("title=imatch.POST", "title", json!("post")));
        assert!(on("title=not.match.^x", "title", json!("post")));
        assert!(on("title=match.a.b", "title", json!("a\nb")));
        assert!(on(r#"title=match."a{1,2},b""#, "title", json!("aa,b")));
        assert!(!on("title=match.x", "title", json!(1)));
        assert!(!on("title=not.match.x", "title", json!(1)));
    }

    #[test]
    fn eq_index_only_for_single_plain_eq_on_indexable_types() {
        let f = bound("id=eq.7");
        assert_eq!(f.eq_index(), Some(("id", &IndexKey::Int(7))));
        for filter in [
            "id=not.eq.7",
            "id=neq.7",
            "id=in.(7)",
            "id=gte.7",
            "id=eq.7,id=eq.7",
            "id=eq.7,title=eq.x",
            "ci=eq.x",
            "n=eq.7",
            "f8=eq.7",
            "tz=eq.2025-05-01",
            "d=eq.2025-05-01",
            "meta=eq.7",
            "nums=eq.{7}",
            "mood=eq.happy",
            "t=eq.12:00",
        ] {
            assert_eq!(bound(filter).eq_index(), None, "{filter}");
        }
        assert_eq!(
            bound("title=eq.x").eq_index(),
            Some(("title", &IndexKey::Text("x".to_owned())))
        );
        assert_eq!(
            bound("done=eq.yes").eq_index(),
            Some(("done", &IndexKey::Bool(true)))
        );
    }

    /// For every indexable type: the eq key equals the row key exactly when SQL `=` holds.
    #[test]
    fn eq_index_agrees_with_index_key_and_matches() {
        let cases: &[(&str, &str, Value, bool)] = &[
            ("id", "7", json!(7), true),
            ("id", "7", json!(8), false),
            ("id", "+07", json!(7), true),
            ("id", "7", json!("7"), true),
            ("i2", "-3", json!(-3), true),
            ("i4", "2147483647", json!(2_147_483_647), true),
            ("oid", "42", json!(42), true),
            ("title", "abc", json!("abc"), true),
            ("title", "abc", json!("abc "), false),
            ("title", "abc", json!("ABC"), false),
            ("vc", "é", json!("é"), true),
            ("bp", "ab", json!("ab   "), true),
            ("bp", "ab  ", json!("ab"), true),
            ("bp", "ab", json!(" ab"), false),
            ("nm", &"q".repeat(70), json!("q".repeat(63)), true),
            (
                "u",
                "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                true,
            ),
            (
                "u",
                "a0eebc999c0b4ef8bb6d6bb9bd380a11",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                true,
            ),
            (
                "u",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"),
                false,
            ),
            ("done", "true", json!(true), true),
            ("done", "f", json!(false), true),
            ("done", "true", json!(false), false),
        ];
        for (column, value, row_value, equal) in cases {
            let filter = bound(&format!("{column}=eq.{value}"));
            let Some((col, key)) = filter.eq_index() else {
                panic!("{column}=eq.{value} not indexable");
            };
            assert_eq!(col, *column);
            let type_name = typname(column).unwrap_or_default();
            let row_key = index_key(type_name, row_value);
            assert_eq!(
                row_key.as_ref() == Some(key),
                *equal,
                "{column}={value} vs {row_value}"
            );
            let mut r = Map::new();
            r.insert((*column).to_owned(), row_value.clone());
            assert_eq!(
                filter.matches(&r),
                *equal,
                "matches {column}={value} vs {row_value}"
            );
        }
    }
}
