//! The filter grammar: the client's `column=[not.]op.value,…` text to an untyped [`Filter`].
//!
//! Follows Supabase Realtime (PostgREST operators and quoting) down to its "Error parsing"
//! texts, which clients match on. Nothing here knows column types: values stay text until
//! `bind` casts them, so a filter string parses the same whatever table it is used on.

use crate::route::filter::error::{clip, FilterError};

const MAX_FILTER_BYTES: usize = 8192;
const MAX_CONDITIONS: usize = 100;

const EMPTY_SEGMENT: &str = "filter must not contain empty segments (check for extra commas)";
const IN_NEEDS_PARENS: &str = "`in` filter value must be wrapped by parentheses";

/// Parsed, untyped filter (result of the client's string).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub(super) conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    pub(super) column: String,
    pub(super) negated: bool,
    pub(super) predicate: Predicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    pub(super) fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Neq => "neq",
            CmpOp::Lt => "lt",
            CmpOp::Lte => "lte",
            CmpOp::Gt => "gt",
            CmpOp::Gte => "gte",
        }
    }
}

/// Operator plus its unquoted value text; `None` list items are unquoted `NULL`s, which (as in
/// a Postgres array literal) make `= ANY` unknown rather than matching the string "null".
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Predicate {
    Cmp(CmpOp, String),
    In(Vec<Option<String>>),
    Like { pattern: String, insensitive: bool },
    Match { pattern: String, insensitive: bool },
    Is(String),
    IsDistinct(String),
}

/// Parse a filter string. `Ok(None)` means "no filter" (empty or whitespace only).
pub fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
    if text.len() > MAX_FILTER_BYTES {
        return Err(FilterError::TooLong);
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    let segments = split_unquoted_commas(text);
    if segments.len() > MAX_CONDITIONS {
        return Err(FilterError::TooManyConditions);
    }
    let conditions = segments
        .into_iter()
        .map(parse_condition)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Filter { conditions }))
}

fn syntax(message: &str) -> FilterError {
    FilterError::Syntax(message.to_owned())
}

/// Supabase reports unparseable conditions as the Elixir `inspect` of the split parts.
fn syntax_parts(parts: &[&str]) -> FilterError {
    let items: Vec<String> = parts.iter().map(|p| inspect_str(&clip(p))).collect();
    FilterError::Syntax(format!("[{}]", items.join(", ")))
}

fn inspect_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '#' if chars.peek() == Some(&'{') => out.push_str("\\#"),
            c if c.is_control() => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Split on commas outside `"…"` (backslash escapes inside) and outside `(…)`, `{…}`, `[…]`,
/// so array literals and JSON need no quoting. Grouping is best effort: if the brackets are
/// unbalanced (a regex or a smiley in a raw value) we retry honouring only quotes, then with
/// plain commas; a quoted value broken by that is still rejected later by `unquote`.
fn split_unquoted_commas(text: &str) -> Vec<&str> {
    split_commas(text, true, true)
        .or_else(|| split_commas(text, true, false))
        .unwrap_or_else(|| text.split(',').collect())
}

/// `None` if a quote is left open or the grouping brackets don't balance.
fn split_commas(text: &str, quotes: bool, group: bool) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            '"' if quotes => in_quotes = true,
            '(' | '{' | '[' if group => depth += 1,
            ')' | '}' | ']' if group => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes || depth > 0 {
        return None;
    }
    parts.push(text.get(start..).unwrap_or_default());
    Some(parts)
}

fn parse_condition(segment: &str) -> Result<Condition, FilterError> {
    if segment.trim().is_empty() {
        return Err(syntax(EMPTY_SEGMENT));
    }
    let Some((column, rest)) = segment.split_once('=') else {
        return Err(syntax_parts(&[segment.trim()]));
    };
    let column = column.trim();
    if column.is_empty() {
        return Err(syntax("column name must not be empty"));
    }
    let rest = rest.trim_start();
    let (negated, body) = match rest.strip_prefix("not.") {
        Some(body) => (true, body),
        None => (false, rest),
    };
    let Some((op, value)) = body.split_once('.') else {
        return Err(if negated {
            syntax_parts(&["not", body])
        } else {
            syntax_parts(&[body])
        });
    };
    let predicate = match op {
        "eq" => Predicate::Cmp(CmpOp::Eq, scalar_value(value)?),
        "neq" => Predicate::Cmp(CmpOp::Neq, scalar_value(value)?),
        "lt" => Predicate::Cmp(CmpOp::Lt, scalar_value(value)?),
        "lte" => Predicate::Cmp(CmpOp::Lte, scalar_value(value)?),
        "gt" => Predicate::Cmp(CmpOp::Gt, scalar_value(value)?),
        "gte" => Predicate::Cmp(CmpOp::Gte, scalar_value(value)?),
        "in" => Predicate::In(in_list(value)?),
        "like" | "ilike" => Predicate::Like {
            pattern: scalar_value(value)?,
            insensitive: op == "ilike",
        },
        "match" | "imatch" => Predicate::Match {
            pattern: scalar_value(value)?,
            insensitive: op == "imatch",
        },
        "is" => Predicate::Is(scalar_value(value)?),
        "isdistinct" => Predicate::IsDistinct(scalar_value(value)?),
        _ if negated => return Err(syntax_parts(&["not", op, value])),
        _ => return Err(syntax_parts(&[op, value])),
    };
    Ok(Condition {
        column: column.to_owned(),
        negated,
        predicate,
    })
}

/// A value is raw text unless it starts with `"`, in which case it must be one complete
/// PostgREST-style quoted string (`\"` and `\\`; a backslash escapes any character).
fn scalar_value(value: &str) -> Result<String, FilterError> {
    if value.starts_with('"') {
        unquote(value)
    } else {
        Ok(value.to_owned())
    }
}

fn unquote(quoted: &str) -> Result<String, FilterError> {
    let mut chars = quoted.chars();
    chars.next();
    let mut out = String::new();
    let mut escaped = false;
    while let Some(c) = chars.next() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return if chars.as_str().trim().is_empty() {
                Ok(out)
            } else {
                Err(syntax("unexpected text after quoted value"))
            };
        } else {
            out.push(c);
        }
    }
    Err(syntax("unterminated quoted value"))
}

fn in_list(value: &str) -> Result<Vec<Option<String>>, FilterError> {
    let inner = value
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| syntax(IN_NEEDS_PARENS))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_unquoted_commas(inner)
        .into_iter()
        .map(|item| {
            let item = item.trim();
            if item.starts_with('"') {
                unquote(item).map(Some)
            } else if item.eq_ignore_ascii_case("null") {
                Ok(None)
            } else {
                Ok(Some(item.to_owned()))
            }
        })
        .collect()
}

impl Filter {
    /// Column names referenced, in order (may repeat).
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.column.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Filter {
        match parse(text) {
            Ok(Some(filter)) => filter,
            other => panic!("parse({text:?}) = {other:?}"),
        }
    }

    fn parse_err(text: &str) -> FilterError {
        match parse(text) {
            Err(e) => e,
            Ok(other) => panic!("parse({text:?}) unexpectedly gave {other:?}"),
        }
    }

    fn cond(column: &str, negated: bool, predicate: Predicate) -> Condition {
        Condition {
            column: column.to_owned(),
            negated,
            predicate,
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn empty_or_blank_filter_is_no_filter() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  \t\n "), Ok(None));
    }

    #[test]
    fn parses_every_operator() {
        let cases = [
            ("a=eq.1", Predicate::Cmp(CmpOp::Eq, s("1"))),
            ("a=neq.1", Predicate::Cmp(CmpOp::Neq, s("1"))),
            ("a=lt.1", Predicate::Cmp(CmpOp::Lt, s("1"))),
            ("a=lte.1", Predicate::Cmp(CmpOp::Lte, s("1"))),
            ("a=gt.1", Predicate::Cmp(CmpOp::Gt, s("1"))),
            ("a=gte.1", Predicate::Cmp(CmpOp::Gte, s("1"))),
            (
                "a=in.(1,2)",
                Predicate::In(vec![Some(s("1")), Some(s("2"))]),
            ),
            (
                "a=like.%x%",
                Predicate::Like {
                    pattern: s("%x%"),
                    insensitive: false,
                },
            ),
            (
                "a=ilike.%x%",
                Predicate::Like {
                    pattern: s("%x%"),
                    insensitive: true,
                },
            ),
            (
                "a=match.^x",
                Predicate::Match {
                    pattern: s("^x"),
                    insensitive: false,
                },
            ),
            (
                "a=imatch.^x",
                Predicate::Match {
                    pattern: s("^x"),
                    insensitive: true,
                },
            ),
            ("a=is.null", Predicate::Is(s("null"))),
            ("a=isdistinct.1", Predicate::IsDistinct(s("1"))),
        ];
        for (text, predicate) in cases {
            assert_eq!(
                parsed(text).conditions,
                vec![cond("a", false, predicate.clone())],
                "{text}"
            );
            let negated = text.replacen('=', "=not.", 1);
            assert_eq!(
                parsed(&negated).conditions,
                vec![cond("a", true, predicate)],
                "{negated}"
            );
        }
    }

    #[test]
    fn several_conditions_and_whitespace_around_columns() {
        let f = parsed("id=gt.0, id=lt.100 ,\tstatus =eq.active");
        assert_eq!(f.columns().collect::<Vec<_>>(), ["id", "id", "status"]);
        assert_eq!(
            f.conditions,
            vec![
                cond("id", false, Predicate::Cmp(CmpOp::Gt, s("0"))),
                cond("id", false, Predicate::Cmp(CmpOp::Lt, s("100 "))),
                cond("status", false, Predicate::Cmp(CmpOp::Eq, s("active"))),
            ]
        );
    }

    #[test]
    fn raw_values_keep_dots_and_equals_signs() {
        assert_eq!(
            parsed("title=eq.a.b=c").conditions,
            vec![cond("title", false, Predicate::Cmp(CmpOp::Eq, s("a.b=c")))]
        );
        // A raw value may contain balanced quotes; they stay literal.
        assert_eq!(
            parsed(r#"title=eq.say "hi""#).conditions,
            vec![cond(
                "title",
                false,
                Predicate::Cmp(CmpOp::Eq, s(r#"say "hi""#))
            )]
        );
    }

    #[test]
    fn brackets_group_commas_when_balanced() {
        let f = parsed(r#"meta=eq.{"a":[1,2]},nums=eq.{1,2},id=in.(1,2)"#);
        assert_eq!(
            f.conditions,
            vec![
                cond(
                    "meta",
                    false,
                    Predicate::Cmp(CmpOp::Eq, s(r#"{"a":[1,2]}"#))
                ),
                cond("nums", false, Predicate::Cmp(CmpOp::Eq, s("{1,2}"))),
                cond("id", false, Predicate::In(vec![Some(s("1")), Some(s("2"))])),
            ]
        );
        assert_eq!(
            parsed("nums=in.({1,2},{3})").conditions,
            vec![cond(
                "nums",
                false,
                Predicate::In(vec![Some(s("{1,2}")), Some(s("{3}"))])
            )]
        );
        // Unbalanced brackets or quotes in raw values fall back to plainer splitting.
        assert_eq!(
            parsed("title=like.%:)%,id=eq.1").conditions,
            vec![
                cond(
                    "title",
                    false,
                    Predicate::Like {
                        pattern: s("%:)%"),
                        insensitive: false
                    }
                ),
                cond("id", false, Predicate::Cmp(CmpOp::Eq, s("1"))),
            ]
        );
        assert_eq!(
            parsed(r#"title=eq.5" tall,id=eq.1"#).conditions,
            vec![
                cond("title", false, Predicate::Cmp(CmpOp::Eq, s(r#"5" tall"#))),
                cond("id", false, Predicate::Cmp(CmpOp::Eq, s("1"))),
            ]
        );
        assert_eq!(
            parsed(r#"title=match."(a,b",id=eq.1"#).conditions,
            vec![
                cond(
                    "title",
                    false,
                    Predicate::Match {
                        pattern: s("(a,b"),
                        insensitive: false
                    }
                ),
                cond("id", false, Predicate::Cmp(CmpOp::Eq, s("1"))),
            ]
        );
    }

    #[test]
    fn quoted_values_hide_commas_and_unescape() {
        let f = parsed(r#"title=eq."a,b \"c\" \\d",id=eq.1"#);
        assert_eq!(
            f.conditions,
            vec![
                cond(
                    "title",
                    false,
                    Predicate::Cmp(CmpOp::Eq, s(r#"a,b "c" \d"#))
                ),
                cond("id", false, Predicate::Cmp(CmpOp::Eq, s("1"))),
            ]
        );
        assert_eq!(
            parsed(r#"title=eq."x(y""#).conditions,
            vec![cond("title", false, Predicate::Cmp(CmpOp::Eq, s("x(y")))]
        );
    }

    #[test]
    fn in_list_items_are_trimmed_and_may_be_quoted() {
        let f = parsed(r#"name=in.( red , "blue, green" ,"x\"y", null, "null",NULL)"#);
        assert_eq!(
            f.conditions,
            vec![cond(
                "name",
                false,
                Predicate::In(vec![
                    Some(s("red")),
                    Some(s("blue, green")),
                    Some(s("x\"y")),
                    None,
                    Some(s("null")),
                    None,
                ])
            )]
        );
        assert_eq!(
            parsed("id=in.( )").conditions,
            vec![cond("id", false, Predicate::In(vec![]))]
        );
        assert_eq!(
            parsed("status=not.in.(draft,archived)").conditions,
            vec![cond(
                "status",
                true,
                Predicate::In(vec![Some(s("draft")), Some(s("archived"))])
            )]
        );
    }

    #[test]
    fn supabase_parse_error_texts() {
        let cases = [
            (
                "subject=foo.hey",
                r#"Error parsing `filter` params: ["foo", "hey"]"#,
            ),
            (
                "subject=not.foo.hey",
                r#"Error parsing `filter` params: ["not", "foo", "hey"]"#,
            ),
            ("undefined", r#"Error parsing `filter` params: ["undefined"]"#),
            ("id=eq", r#"Error parsing `filter` params: ["eq"]"#),
            ("id=not.eq", r#"Error parsing `filter` params: ["not", "eq"]"#),
            (
                r#"id=f\o"#,
                r#"Error parsing `filter` params: ["f\\o"]"#,
            ),
            (
                "id=in.1,2",
                "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
            ),
            (
                "id=in.(1,2",
                "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
            ),
            (
                "id=in.1)",
                "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
            ),
            (
                "a=eq.1,,b=eq.2",
                "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
            ),
            (
                "a=eq.1,",
                "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
            ),
            (
                ",a=eq.1",
                "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
            ),
            (
                "a=eq.1, ,b=eq.2",
                "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
            ),
            (
                "=eq.1",
                "Error parsing `filter` params: column name must not be empty",
            ),
            (
                " \t=eq.1",
                "Error parsing `filter` params: column name must not be empty",
            ),
            (
                r#"a=eq."abc"#,
                "Error parsing `filter` params: unterminated quoted value",
            ),
            (
                r#"a=eq."abc"x"#,
                "Error parsing `filter` params: unexpected text after quoted value",
            ),
            (
                r#"a=in.("x,y"z)"#,
                "Error parsing `filter` params: unexpected text after quoted value",
            ),
        ];
        for (text, message) in cases {
            let e = parse_err(text);
            assert_eq!(e.to_string(), message, "{text}");
            assert_eq!(e.code(), "InvalidFilter", "{text}");
        }
    }

    #[test]
    fn syntax_error_echo_is_clipped() {
        let long = format!("{}.x", "o".repeat(500));
        let message = parse_err(&format!("a={long}")).to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains('…'));
    }

    #[test]
    fn filter_length_limit() {
        let ok = format!("title=eq.{}", "x".repeat(MAX_FILTER_BYTES - 9));
        assert_eq!(ok.len(), MAX_FILTER_BYTES);
        assert!(parse(&ok).is_ok());
        let e = parse_err(&format!("{ok}x"));
        assert_eq!(e, FilterError::TooLong);
        assert_eq!(e.to_string(), "filter is too long. Maximum 8192 bytes");
        assert_eq!(e.code(), "FilterTooLong");
    }

    #[test]
    fn condition_count_limit() {
        let hundred = vec!["id=gt.0"; 100].join(",");
        assert_eq!(parsed(&hundred).columns().count(), 100);
        let e = parse_err(&format!("{hundred},id=gt.0"));
        assert_eq!(e.to_string(), "filter has too many conditions. Maximum 100");
        assert_eq!(e.code(), "TooManyConditions");
    }
}
