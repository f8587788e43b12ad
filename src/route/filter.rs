//! Parse and evaluate Supabase `postgres_changes` filter strings (`id=gt.5,status=in.(a,b)`)
//! against `to_jsonb` row images with Postgres comparison semantics for each column type.
//!
//! This module owns the filter grammar, its limits and error texts, the typed evaluation and
//! the canonical equality keys the router uses to index single `eq` subscriptions. Client text
//! never reaches SQL: every comparison happens here, so everything is written to be total on
//! hostile input (no panics, bounded sizes, size-limited regexes).

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{Datelike, NaiveDate};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

const MAX_FILTER_BYTES: usize = 8192;
const MAX_CONDITIONS: usize = 100;
const MAX_IN_VALUES: usize = 100;
/// Bounds both the compiled program and the lazy DFA cache, so a hostile pattern such as
/// `(a{1000}){1000}` is rejected at subscribe time instead of eating memory per row.
const REGEX_SIZE_LIMIT: usize = 1 << 18;
/// Regex-backed conditions (`like`, `ilike`, `match`, `imatch`) one filter may hold. Each
/// compiles into up to [`REGEX_SIZE_LIMIT`] bytes on the joining socket's task: the budget per
/// filter, not only per regex, is what keeps a hostile join from tying up a worker.
const MAX_REGEX_CONDITIONS: usize = 8;
/// Postgres' MAXDIM; also bounds recursion when parsing array literals and JSON arrays.
const MAX_ARRAY_DEPTH: usize = 6;
/// Client text echoed in error messages is clipped so an 8 KiB filter can't bloat replies.
const ERROR_ECHO_CHARS: usize = 100;
/// `NAMEDATALEN - 1`: Postgres silently truncates `name` input to this many bytes.
const NAME_MAX_BYTES: usize = 63;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// `NaiveDate::num_days_from_ce()` of 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

const EMPTY_SEGMENT: &str = "filter must not contain empty segments (check for extra commas)";
const IN_NEEDS_PARENS: &str = "`in` filter value must be wrapped by parentheses";

/// Why a filter was rejected. `Display` is the text shown to the client. `parse` returns only
/// `Syntax`, `TooLong` and `TooManyConditions` (Supabase's "Error parsing" family); everything
/// else comes from `bind` and is the inner text of Supabase's P0001 exception message.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FilterError {
    /// Unknown operator, missing `=`/`.`, `in` without parentheses, empty segment, bad quoting.
    #[error("Error parsing `filter` params: {0}")]
    Syntax(String),
    #[error("filter is too long. Maximum 8192 bytes")]
    TooLong,
    #[error("filter has too many conditions. Maximum 100")]
    TooManyConditions,
    #[error("invalid column for filter {0}")]
    UnknownColumn(String),
    #[error("invalid input for type {typname}: \"{value}\"")]
    InvalidValue { typname: String, value: String },
    #[error("invalid value for is filter: {0}")]
    InvalidIsValue(String),
    #[error("is.{value} requires a boolean column, got {typname}")]
    IsRequiresBool { value: String, typname: String },
    #[error("too many values for `in` filter. Maximum 100")]
    TooManyInValues,
    #[error("operator {op} requires a text-compatible column type, got {typname}")]
    NotTextCompatible { op: &'static str, typname: String },
    #[error("operator {op} is not supported for column type {typname}")]
    UnsupportedOperator { op: &'static str, typname: String },
    #[error("invalid regular expression for {op} filter: {message}")]
    InvalidRegex { op: &'static str, message: String },
    #[error("LIKE pattern must not end with escape character")]
    LikeTrailingEscape,
}

impl FilterError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FilterError::Syntax(_) => "InvalidFilter",
            FilterError::TooLong => "FilterTooLong",
            FilterError::TooManyConditions => "TooManyConditions",
            FilterError::UnknownColumn(_) => "UnknownColumn",
            FilterError::InvalidValue { .. }
            | FilterError::InvalidIsValue(_)
            | FilterError::LikeTrailingEscape => "InvalidFilterValue",
            FilterError::TooManyInValues => "TooManyInValues",
            FilterError::IsRequiresBool { .. }
            | FilterError::NotTextCompatible { .. }
            | FilterError::UnsupportedOperator { .. } => "UnsupportedOperator",
            FilterError::InvalidRegex { .. } => "InvalidRegex",
        }
    }
}

/// Parsed, untyped filter (result of the client's string).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: String,
    negated: bool,
    predicate: Predicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn name(self) -> &'static str {
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
enum Predicate {
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

fn clip(s: &str) -> String {
    match s.char_indices().nth(ERROR_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
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

/// A filter bound to column types, ready to evaluate rows.
#[derive(Debug, Clone)]
pub struct BoundFilter {
    conditions: Vec<BoundCondition>,
    eq_index: Option<(String, IndexKey)>,
}

#[derive(Debug, Clone)]
struct BoundCondition {
    column: String,
    negated: bool,
    ty: ColType,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Cmp(CmpOp, Typed<'static>),
    In(Vec<Option<Typed<'static>>>),
    Like {
        regex: Regex,
        fold: bool,
    },
    Match(Regex),
    /// `is.null` and `is.unknown`.
    IsNull,
    IsBool(bool),
    IsDistinct(Typed<'static>),
}

/// SQL three-valued logic: only `True` lets a row through, and `NOT Unknown` stays `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn of(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl BoundFilter {
    /// True iff every condition holds for this row. Missing columns and values of the wrong
    /// JSON shape fail closed whatever the operator.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| c.holds(row))
    }

    /// `(column, key)` when the filter is exactly one non-negated `eq` on an indexable type,
    /// so the router can use a hash lookup instead of evaluating it.
    pub fn eq_index(&self) -> Option<(&str, &IndexKey)> {
        self.eq_index.as_ref().map(|(col, key)| (col.as_str(), key))
    }
}

impl BoundCondition {
    fn holds(&self, row: &Map<String, Value>) -> bool {
        let Some(value) = row.get(&self.column) else {
            return false;
        };
        let truth = if value.is_null() {
            self.on_null()
        } else {
            match self.on_value(value) {
                Some(truth) => truth,
                None => return false,
            }
        };
        let truth = if self.negated { truth.not() } else { truth };
        truth == Truth::True
    }

    fn on_null(&self) -> Truth {
        match self.test {
            Test::IsNull | Test::IsDistinct(_) => Truth::True,
            Test::IsBool(_) => Truth::False,
            Test::Cmp(..) | Test::In(_) | Test::Like { .. } | Test::Match(_) => Truth::Unknown,
        }
    }

    /// `None` when the row value does not have the column type's shape.
    fn on_value(&self, value: &Value) -> Option<Truth> {
        Some(match &self.test {
            Test::IsNull => Truth::False,
            Test::IsBool(want) => match self.ty.row_value(value)? {
                Typed::Bool(b) => Truth::of(b == *want),
                _ => return None,
            },
            Test::IsDistinct(target) => Truth::of(!typed_eq(&self.ty.row_value(value)?, target)),
            Test::Cmp(op, target) => {
                let v = self.ty.row_value(value)?;
                Truth::of(match op {
                    CmpOp::Eq => typed_eq(&v, target),
                    CmpOp::Neq => !typed_eq(&v, target),
                    CmpOp::Lt => typed_cmp(&v, target) == Some(Ordering::Less),
                    CmpOp::Lte => matches!(
                        typed_cmp(&v, target),
                        Some(Ordering::Less | Ordering::Equal)
                    ),
                    CmpOp::Gt => typed_cmp(&v, target) == Some(Ordering::Greater),
                    CmpOp::Gte => matches!(
                        typed_cmp(&v, target),
                        Some(Ordering::Greater | Ordering::Equal)
                    ),
                })
            }
            Test::In(items) => {
                let v = self.ty.row_value(value)?;
                let mut saw_null = false;
                for item in items {
                    match item {
                        Some(item) if typed_eq(&v, item) => return Some(Truth::True),
                        Some(_) => {}
                        None => saw_null = true,
                    }
                }
                if saw_null {
                    Truth::Unknown
                } else {
                    Truth::False
                }
            }
            Test::Like { regex, fold } => {
                let text = self.ty.pattern_text(value)?;
                Truth::of(if *fold {
                    regex.is_match(&text.to_lowercase())
                } else {
                    regex.is_match(text)
                })
            }
            Test::Match(regex) => Truth::of(regex.is_match(self.ty.pattern_text(value)?)),
        })
    }
}

/// Canonical hashable key for equality on indexable types: two values are equal under the
/// column's SQL `=` iff their keys are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Int(i64),
    /// Text-like value; `bpchar` has trailing spaces removed.
    Text(String),
    /// UUID as its 128-bit value, so case and hyphenation don't matter.
    Uuid(u128),
    Bool(bool),
}

/// Key of a row value (as found in `to_jsonb` output) for a column of type `typname`; `None`
/// if the type is not indexable or the value is NULL or not of the column's shape.
pub fn index_key(typname: &str, value: &Value) -> Option<IndexKey> {
    if value.is_null() {
        return None;
    }
    let ty = ColType::from_typname(typname);
    key_of(&ty, &ty.row_value(value)?)
}

/// Shared by `index_key` and `bind` so the two sides agree by construction.
fn key_of(ty: &ColType, value: &Typed) -> Option<IndexKey> {
    match (ty, value) {
        (ColType::Int { .. }, Typed::Int(i)) => Some(IndexKey::Int(*i)),
        (ColType::Text(kind), Typed::Text(s)) if *kind != TextKind::Citext => {
            Some(IndexKey::Text(s.clone().into_owned()))
        }
        (ColType::Uuid, Typed::Uuid(u)) => Some(IndexKey::Uuid(*u)),
        (ColType::Bool, Typed::Bool(b)) => Some(IndexKey::Bool(*b)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Plain,
    /// Trailing spaces are insignificant.
    Bpchar,
    /// Input is truncated to 63 bytes.
    Name,
    /// Compared case-insensitively.
    Citext,
}

/// Comparison semantics derived from a `typname`.
#[derive(Debug, Clone, PartialEq)]
enum ColType {
    Int {
        min: i64,
        max: i64,
    },
    Float4,
    Float8,
    Numeric,
    Bool,
    Text(TextKind),
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Json,
    Array(Box<ColType>),
    /// Anything else (enums, timetz, interval, inet, …): equality on the text form only,
    /// because text order would silently disagree with e.g. enum declaration order.
    Other,
}

/// A value in comparable form. Filter values are `Typed<'static>`; row values borrow.
#[derive(Debug, Clone)]
enum Typed<'a> {
    Int(i64),
    Float(f64),
    Numeric(Decimal),
    Bool(bool),
    /// Already normalised for comparison (bpchar trimmed, citext lowercased, name clipped).
    Text(Cow<'a, str>),
    Uuid(u128),
    /// Microseconds since the Unix epoch (dates, timestamps) or since midnight (time).
    Micros(i64),
    Json(Cow<'a, Value>),
    Array(Vec<Elem<'a>>),
}

#[derive(Debug, Clone)]
enum Elem<'a> {
    Null,
    Value(Typed<'a>),
    Nested(Vec<Elem<'a>>),
}

impl ColType {
    fn from_typname(typname: &str) -> ColType {
        match typname {
            "int2" => ColType::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            "int4" => ColType::Int {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            "int8" => ColType::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            "oid" => ColType::Int {
                min: 0,
                max: u32::MAX.into(),
            },
            "float4" => ColType::Float4,
            "float8" => ColType::Float8,
            "numeric" => ColType::Numeric,
            "bool" => ColType::Bool,
            "text" | "varchar" | "char" => ColType::Text(TextKind::Plain),
            "bpchar" => ColType::Text(TextKind::Bpchar),
            "name" => ColType::Text(TextKind::Name),
            "citext" => ColType::Text(TextKind::Citext),
            "uuid" => ColType::Uuid,
            "date" => ColType::Date,
            "timestamp" => ColType::Timestamp,
            "timestamptz" => ColType::Timestamptz,
            "time" => ColType::Time,
            "json" | "jsonb" => ColType::Json,
            _ => match typname.strip_prefix('_') {
                Some(elem) if !elem.is_empty() && !elem.starts_with('_') => {
                    ColType::Array(Box::new(ColType::from_typname(elem)))
                }
                _ => ColType::Other,
            },
        }
    }

    fn is_ordered(&self) -> bool {
        !matches!(self, ColType::Json | ColType::Array(_) | ColType::Other)
    }

    /// Cast filter text to this type, as `'text'::type` would (`None` = invalid input).
    fn cast(&self, text: &str) -> Option<Typed<'static>> {
        Some(match self {
            ColType::Int { min, max } => Typed::Int(
                text.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|v| (*min..=*max).contains(v))?,
            ),
            ColType::Float4 => Typed::Float(parse_float(text, true)?),
            ColType::Float8 => Typed::Float(parse_float(text, false)?),
            ColType::Numeric => Typed::Numeric(Decimal::parse(text)?),
            ColType::Bool => Typed::Bool(parse_bool(text)?),
            ColType::Text(kind) => {
                Typed::Text(Cow::Owned(normalize_text(*kind, text).into_owned()))
            }
            ColType::Uuid => Typed::Uuid(parse_uuid(text)?),
            ColType::Date | ColType::Timestamp | ColType::Timestamptz => {
                Typed::Micros(self.moment_micros(parse_moment(text)?)?)
            }
            ColType::Time => Typed::Micros(parse_time_only(text)?),
            // Not JSON (e.g. `eq.hello`) means the JSON string "hello".
            ColType::Json => Typed::Json(Cow::Owned(
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
            )),
            ColType::Array(elem) => Typed::Array(cast_literal(elem, parse_array_literal(text)?)?),
            ColType::Other => Typed::Text(Cow::Owned(text.to_owned())),
        })
    }

    /// Convert a non-null `to_jsonb` value. Strings are accepted for scalar types too, since a
    /// relay may ship Postgres text output (`"5"`, `"t"`, `"{a,b}"`).
    fn row_value<'a>(&self, value: &'a Value) -> Option<Typed<'a>> {
        Some(match self {
            ColType::Int { .. } => Typed::Int(match value {
                Value::Number(n) => n.as_i64()?,
                Value::String(s) => s.trim().parse().ok()?,
                _ => return None,
            }),
            ColType::Float4 | ColType::Float8 => {
                let single = *self == ColType::Float4;
                Typed::Float(match value {
                    Value::Number(n) if single => f64::from(n.as_f64()? as f32),
                    Value::Number(n) => n.as_f64()?,
                    Value::String(s) => parse_float(s, single)?,
                    _ => return None,
                })
            }
            ColType::Numeric => Typed::Numeric(match value {
                Value::Number(n) => Decimal::parse(&n.to_string())?,
                Value::String(s) => Decimal::parse(s)?,
                _ => return None,
            }),
            ColType::Bool => Typed::Bool(match value {
                Value::Bool(b) => *b,
                Value::String(s) => parse_bool(s)?,
                _ => return None,
            }),
            ColType::Text(kind) => Typed::Text(normalize_text(*kind, value.as_str()?)),
            ColType::Uuid => Typed::Uuid(parse_uuid(value.as_str()?)?),
            ColType::Date | ColType::Timestamp | ColType::Timestamptz => {
                Typed::Micros(self.moment_micros(parse_moment(value.as_str()?)?)?)
            }
            ColType::Time => Typed::Micros(parse_time_only(value.as_str()?)?),
            ColType::Json => Typed::Json(Cow::Borrowed(value)),
            ColType::Array(elem) => Typed::Array(match value {
                Value::Array(items) => json_elems(elem, items, 1)?,
                Value::String(s) => cast_literal(elem, parse_array_literal(s)?)?,
                _ => return None,
            }),
            ColType::Other => Typed::Text(match value {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            }),
        })
    }

    /// Text seen by LIKE and regex operators (bpchar is cast to text, dropping padding).
    fn pattern_text<'a>(&self, value: &'a Value) -> Option<&'a str> {
        match self {
            ColType::Text(TextKind::Bpchar) => Some(value.as_str()?.trim_end_matches(' ')),
            ColType::Text(_) => value.as_str(),
            _ => None,
        }
    }

    fn moment_micros(&self, moment: Moment) -> Option<i64> {
        match moment {
            Moment::NegInfinity => Some(i64::MIN),
            Moment::PosInfinity => Some(i64::MAX),
            Moment::At {
                days,
                time_us,
                offset_s,
            } => {
                let midnight = days.checked_mul(MICROS_PER_DAY)?;
                match self {
                    ColType::Date => Some(midnight),
                    // Postgres silently ignores a zone written in a `timestamp` literal.
                    ColType::Timestamp => midnight.checked_add(time_us),
                    _ => midnight
                        .checked_add(time_us)?
                        .checked_sub(offset_s.checked_mul(MICROS_PER_SECOND)?),
                }
            }
        }
    }
}

fn normalize_text(kind: TextKind, text: &str) -> Cow<'_, str> {
    match kind {
        TextKind::Plain => Cow::Borrowed(text),
        TextKind::Bpchar => Cow::Borrowed(text.trim_end_matches(' ')),
        TextKind::Name => {
            let mut end = text.len().min(NAME_MAX_BYTES);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Cow::Borrowed(text.get(..end).unwrap_or_default())
        }
        TextKind::Citext => Cow::Owned(text.to_lowercase()),
    }
}

fn typed_cmp(a: &Typed, b: &Typed) -> Option<Ordering> {
    match (a, b) {
        (Typed::Int(x), Typed::Int(y)) => Some(x.cmp(y)),
        (Typed::Float(x), Typed::Float(y)) => Some(float_cmp(*x, *y)),
        (Typed::Numeric(x), Typed::Numeric(y)) => Some(x.compare(y)),
        (Typed::Bool(x), Typed::Bool(y)) => Some(x.cmp(y)),
        (Typed::Text(x), Typed::Text(y)) => Some(x.cmp(y)),
        (Typed::Uuid(x), Typed::Uuid(y)) => Some(x.cmp(y)),
        (Typed::Micros(x), Typed::Micros(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn typed_eq(a: &Typed, b: &Typed) -> bool {
    match (a, b) {
        (Typed::Json(x), Typed::Json(y)) => json_eq(x, y),
        (Typed::Array(x), Typed::Array(y)) => elems_eq(x, y),
        _ => typed_cmp(a, b) == Some(Ordering::Equal),
    }
}

/// Postgres array equality treats NULL elements as equal to each other.
fn elems_eq(a: &[Elem], b: &[Elem]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Elem::Null, Elem::Null) => true,
            (Elem::Value(x), Elem::Value(y)) => typed_eq(x, y),
            (Elem::Nested(x), Elem::Nested(y)) => elems_eq(x, y),
            _ => false,
        })
}

/// jsonb equality: structural, key order irrelevant, numbers compared numerically (1 = 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (
                Decimal::parse(&x.to_string()),
                Decimal::parse(&y.to_string()),
            ) {
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Postgres float order: NaN equals NaN and sorts above everything; -0 equals 0.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn parse_float(text: &str, single: bool) -> Option<f64> {
    let t = text.trim();
    let v = if single {
        f64::from(t.parse::<f32>().ok()?)
    } else {
        t.parse::<f64>().ok()?
    };
    // Rust saturates overflow to infinity where Postgres reports "out of range".
    if v.is_infinite() && !t.to_ascii_lowercase().contains("inf") {
        return None;
    }
    Some(v)
}

/// Postgres `boolin`: t/true/y/yes/on/1 and f/false/n/no/off/0, any unique prefix.
fn parse_bool(text: &str) -> Option<bool> {
    let word = text.trim().to_ascii_lowercase();
    match word.as_str() {
        "" => None,
        "1" | "on" => Some(true),
        "0" | "of" | "off" => Some(false),
        w if "true".starts_with(w) || "yes".starts_with(w) => Some(true),
        w if "false".starts_with(w) || "no".starts_with(w) => Some(false),
        _ => None,
    }
}

/// Postgres `uuid_in`: 32 hex digits, optional braces, a hyphen allowed after any group of 4.
fn parse_uuid(text: &str) -> Option<u128> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut value: u128 = 0;
    let mut digits = 0u32;
    let mut hyphen_ok = false;
    for c in inner.chars() {
        if c == '-' {
            if !hyphen_ok || digits == 32 {
                return None;
            }
            hyphen_ok = false;
            continue;
        }
        let d = c.to_digit(16)?;
        if digits == 32 {
            return None;
        }
        value = (value << 4) | u128::from(d);
        digits += 1;
        hyphen_ok = digits % 4 == 0;
    }
    (digits == 32).then_some(value)
}

/// Exact decimal for `numeric`, so `1.10 = 1.1` and large values keep their digits.
/// Finite values are normalised (no leading/trailing zeros; zero is non-negative), which
/// makes the derived equality numeric equality.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decimal {
    NegInfinity,
    /// Value = ±0.DIGITS × 10^exponent.
    Finite {
        negative: bool,
        exponent: i64,
        digits: Vec<u8>,
    },
    PosInfinity,
    /// Postgres sorts NaN above everything and considers it equal to itself.
    NaN,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "nan" => return Some(Decimal::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Decimal::PosInfinity),
            "-infinity" | "-inf" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        let mut cur = Cursor::new(t);
        let negative = if cur.eat(b'-') {
            true
        } else {
            cur.eat(b'+');
            false
        };
        let mut digits = Vec::new();
        let mut int_len: i64 = 0;
        let mut seen_point = false;
        while let Some(c) = cur.peek() {
            match c {
                b'0'..=b'9' => {
                    digits.push(c - b'0');
                    if !seen_point {
                        int_len += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => break,
            }
            cur.pos += 1;
        }
        if digits.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if cur.eat(b'e') || cur.eat(b'E') {
            let exp_negative = if cur.eat(b'-') {
                true
            } else {
                cur.eat(b'+');
                false
            };
            exp = cur.number(1, 6)?;
            if exp_negative {
                exp = -exp;
            }
        }
        if !cur.at_end() {
            return None;
        }
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Decimal::Finite {
                negative: false,
                exponent: 0,
                digits,
            });
        }
        let exponent = int_len - i64::try_from(leading).ok()? + exp;
        Some(Decimal::Finite {
            negative,
            exponent,
            digits,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::PosInfinity => 2,
            Decimal::NaN => 3,
        }
    }

    fn compare(&self, other: &Decimal) -> Ordering {
        let (
            Decimal::Finite {
                negative: an,
                exponent: ae,
                digits: ad,
            },
            Decimal::Finite {
                negative: bn,
                exponent: be,
                digits: bd,
            },
        ) = (self, other)
        else {
            return self.rank().cmp(&other.rank());
        };
        let sign = |negative: bool, digits: &[u8]| match (digits.is_empty(), negative) {
            (true, _) => 0i8,
            (false, true) => -1,
            (false, false) => 1,
        };
        let (sa, sb) = (sign(*an, ad), sign(*bn, bd));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        // Normalised digits make lexicographic order the magnitude order at equal exponent.
        let magnitude = ae.cmp(be).then_with(|| ad.cmp(bd));
        if sa < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

/// Byte cursor for the small hand-written grammars (numbers, dates, times).
#[derive(Debug)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek_digit(&self) -> bool {
        self.peek().is_some_and(|b| b.is_ascii_digit())
    }

    /// Between `min` and `max` (≤ 6, so no overflow) decimal digits.
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let mut value = 0i64;
        let mut count = 0;
        while count < max {
            match self.peek() {
                Some(d @ b'0'..=b'9') => {
                    value = value * 10 + i64::from(d - b'0');
                    self.pos += 1;
                    count += 1;
                }
                _ => break,
            }
        }
        (count >= min).then_some(value)
    }

    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Moment {
    NegInfinity,
    PosInfinity,
    At {
        /// Days since 1970-01-01 of the written (local) date.
        days: i64,
        time_us: i64,
        /// Seconds east of UTC; 0 when absent (the session time zone is UTC).
        offset_s: i64,
    },
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][ ][Z|UTC|GMT|±HH[[:]MM[[:]SS]]]` and ±infinity.
fn parse_moment(text: &str) -> Option<Moment> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(Moment::PosInfinity),
        "-infinity" => return Some(Moment::NegInfinity),
        _ => {}
    }
    let mut cur = Cursor::new(t);
    let year = cur.number(4, 6)?;
    if year < 1 || !cur.eat(b'-') {
        return None;
    }
    let month = cur.number(1, 2)?;
    if !cur.eat(b'-') {
        return None;
    }
    let day = cur.number(1, 2)?;
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )?;
    let days = i64::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE;
    if cur.at_end() {
        return Some(Moment::At {
            days,
            time_us: 0,
            offset_s: 0,
        });
    }
    if !(cur.eat(b'T') || cur.eat(b't') || cur.eat(b' ')) {
        return None;
    }
    cur.skip_spaces();
    let time_us = parse_clock(&mut cur)?;
    let offset_s = parse_zone(&mut cur)?;
    Some(Moment::At {
        days,
        time_us,
        offset_s,
    })
}

/// `HH:MM[:SS[.frac]]` in microseconds, fraction rounded to microseconds like Postgres.
fn parse_clock(cur: &mut Cursor) -> Option<i64> {
    let hour = cur.number(1, 2)?;
    if !cur.eat(b':') {
        return None;
    }
    let minute = cur.number(2, 2)?;
    let mut second = 0;
    let mut frac_us = 0;
    if cur.eat(b':') {
        second = cur.number(2, 2)?;
        if cur.eat(b'.') {
            let mut scale = 100_000;
            let mut count = 0;
            while let Some(d @ b'0'..=b'9') = cur.peek() {
                let d = i64::from(d - b'0');
                if count < 6 {
                    frac_us += d * scale;
                    scale /= 10;
                } else if count == 6 && d >= 5 {
                    frac_us += 1;
                }
                count += 1;
                cur.pos += 1;
            }
            if count == 0 {
                return None;
            }
        }
    }
    let midnight_24 = hour == 24 && minute == 0 && second == 0 && frac_us == 0;
    if (hour > 23 && !midnight_24) || minute > 59 || second > 60 {
        return None;
    }
    Some(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + frac_us)
}

fn parse_zone(cur: &mut Cursor) -> Option<i64> {
    cur.skip_spaces();
    let offset = match cur.peek() {
        None => return Some(0),
        Some(b'Z' | b'z') => {
            cur.pos += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            cur.pos += 1;
            let hours = cur.number(1, 2)?;
            let mut minutes = 0;
            let mut seconds = 0;
            if cur.eat(b':') || cur.peek_digit() {
                minutes = cur.number(2, 2)?;
                if cur.eat(b':') || cur.peek_digit() {
                    seconds = cur.number(2, 2)?;
                }
            }
            if hours > 15 || minutes > 59 || seconds > 59 {
                return None;
            }
            let total = (hours * 60 + minutes) * 60 + seconds;
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
        Some(_) => {
            let rest = cur.rest();
            if rest.eq_ignore_ascii_case(b"utc") || rest.eq_ignore_ascii_case(b"gmt") {
                cur.pos = cur.bytes.len();
                0
            } else {
                return None;
            }
        }
    };
    cur.at_end().then_some(offset)
}

fn parse_time_only(text: &str) -> Option<i64> {
    let mut cur = Cursor::new(text.trim());
    let us = parse_clock(&mut cur)?;
    cur.at_end().then_some(us)
}

/// One element of a Postgres array literal before casting.
#[derive(Debug)]
enum LitElem {
    Null,
    Text(String),
    Nested(Vec<LitElem>),
}

/// Postgres array input syntax: `{a,"b c",NULL,{1,2}}`.
fn parse_array_literal(text: &str) -> Option<Vec<LitElem>> {
    let mut chars = text.trim().chars().peekable();
    let elems = parse_array_level(&mut chars, 1)?;
    chars.next().is_none().then_some(elems)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_ws(chars: &mut Chars) {
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
}

fn parse_array_level(chars: &mut Chars, depth: usize) -> Option<Vec<LitElem>> {
    if depth > MAX_ARRAY_DEPTH || chars.next() != Some('{') {
        return None;
    }
    skip_ws(chars);
    let mut elems = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(elems);
    }
    loop {
        skip_ws(chars);
        let elem = match chars.peek() {
            Some('{') => LitElem::Nested(parse_array_level(chars, depth + 1)?),
            Some('"') => {
                chars.next();
                let mut out = String::new();
                loop {
                    match chars.next()? {
                        '\\' => out.push(chars.next()?),
                        '"' => break,
                        c => out.push(c),
                    }
                }
                LitElem::Text(out)
            }
            _ => {
                let mut out = String::new();
                let mut keep = 0;
                let mut escaped_any = false;
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '}' => break,
                        '{' | '"' => return None,
                        '\\' => {
                            chars.next();
                            out.push(chars.next()?);
                            keep = out.len();
                            escaped_any = true;
                            continue;
                        }
                        c => {
                            out.push(c);
                            if !c.is_whitespace() {
                                keep = out.len();
                            }
                        }
                    }
                    chars.next();
                }
                out.truncate(keep);
                if out.is_empty() {
                    return None;
                }
                if !escaped_any && out.eq_ignore_ascii_case("null") {
                    LitElem::Null
                } else {
                    LitElem::Text(out)
                }
            }
        };
        elems.push(elem);
        skip_ws(chars);
        match chars.next()? {
            ',' => {}
            '}' => break,
            _ => return None,
        }
    }
    // Postgres rejects mixing sub-arrays and scalars at one level.
    let nested = elems
        .iter()
        .filter(|e| matches!(e, LitElem::Nested(_)))
        .count();
    (nested == 0 || nested == elems.len()).then_some(elems)
}

fn cast_literal(elem_ty: &ColType, elems: Vec<LitElem>) -> Option<Vec<Elem<'static>>> {
    elems
        .into_iter()
        .map(|e| {
            Some(match e {
                LitElem::Null => Elem::Null,
                LitElem::Text(t) => Elem::Value(elem_ty.cast(&t)?),
                LitElem::Nested(inner) => Elem::Nested(cast_literal(elem_ty, inner)?),
            })
        })
        .collect()
}

/// `to_jsonb` of an array: nested JSON arrays are dimensions, except for json/jsonb elements,
/// whose own arrays are values.
fn json_elems<'a>(elem_ty: &ColType, items: &'a [Value], depth: usize) -> Option<Vec<Elem<'a>>> {
    if depth > MAX_ARRAY_DEPTH {
        return None;
    }
    items
        .iter()
        .map(|v| {
            Some(match v {
                Value::Null => Elem::Null,
                Value::Array(inner) if *elem_ty != ColType::Json => {
                    Elem::Nested(json_elems(elem_ty, inner, depth + 1)?)
                }
                other => Elem::Value(elem_ty.row_value(other)?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typname(column: &str) -> Option<&'static str> {
        Some(match column {
            "id" => "int8",
            "i2" => "int2",
            "i4" => "int4",
            "oid" => "oid",
            "f4" => "float4",
            "f8" => "float8",
            "n" => "numeric",
            "done" => "bool",
            "title" => "text",
            "vc" => "varchar",
            "bp" => "bpchar",
            "nm" => "name",
            "ci" => "citext",
            "u" => "uuid",
            "d" => "date",
            "ts" => "timestamp",
            "tz" => "timestamptz",
            "t" => "time",
            "ttz" => "timetz",
            "meta" => "jsonb",
            "js" => "json",
            "tags" => "_text",
            "nums" => "_int4",
            "mood" => "mood",
            _ => return None,
        })
    }

    fn parsed(text: &str) -> Filter {
        match parse(text) {
            Ok(Some(filter)) => filter,
            other => panic!("parse({text:?}) = {other:?}"),
        }
    }

    fn bound(text: &str) -> BoundFilter {
        match parsed(text).bind(typname) {
            Ok(filter) => filter,
            Err(e) => panic!("bind({text:?}) failed: {e}"),
        }
    }

    fn parse_err(text: &str) -> FilterError {
        match parse(text) {
            Err(e) => e,
            Ok(other) => panic!("parse({text:?}) unexpectedly gave {other:?}"),
        }
    }

    fn bind_err(text: &str) -> FilterError {
        match parsed(text).bind(typname) {
            Err(e) => e,
            Ok(other) => panic!("bind({text:?}) unexpectedly gave {other:?}"),
        }
    }

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn check(filter: &str, r: Value) -> bool {
        bound(filter).matches(&row(r))
    }

    /// Evaluate a filter against a one-column row `{column: value}`.
    fn on(filter: &str, column: &str, value: Value) -> bool {
        let mut r = Map::new();
        r.insert(column.to_owned(), value);
        bound(filter).matches(&r)
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

    // ---- parsing ----------------------------------------------------------------------

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

    // ---- bind errors ------------------------------------------------------------------

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
            FilterError::UnknownColumn(s("nope"))
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

    // ---- evaluation by type -----------------------------------------------------------

    #[test]
    fn integer_comparisons_are_numeric() {
        assert!(on("id=gt.9", "id", json!(10)));
        assert!(!on("title=gt.9", "title", json!("10")));
        let table = [
            ("eq", 5, true),
            ("eq", 6, false),
            ("neq", 6, true),
            ("neq", 5, false),
            ("lt", 4, true),
            ("lt", 5, false),
            ("lte", 5, true),
            ("lte", 6, false),
            ("gt", 6, true),
            ("gt", 5, false),
            ("gte", 5, true),
            ("gte", 4, false),
        ];
        for (op, value, expected) in table {
            assert_eq!(
                on(&format!("id={op}.5"), "id", json!(value)),
                expected,
                "{op} {value}"
            );
            assert_eq!(
                on(&format!("id=not.{op}.5"), "id", json!(value)),
                !expected,
                "not.{op} {value}"
            );
        }
        assert!(on("id=eq. +5 ", "id", json!(5)));
        assert!(on("id=eq.-9223372036854775808", "id", json!(i64::MIN)));
        assert!(on("oid=eq.4294967295", "oid", json!(4_294_967_295u64)));
        assert!(on("i2=lt.0", "i2", json!(-3)));
    }

    #[test]
    fn integer_rows_as_text_are_accepted_but_garbage_fails_closed() {
        assert!(on("id=eq.5", "id", json!("5")));
        for op in [
            "eq",
            "neq",
            "not.eq",
            "gt",
            "not.gt",
            "in",
            "not.in",
            "isdistinct",
        ] {
            let filter = if op.ends_with("in") {
                format!("id={op}.(5)")
            } else {
                format!("id={op}.5")
            };
            assert!(!on(&filter, "id", json!("abc")), "{filter}");
            assert!(!on(&filter, "id", json!(5.5)), "{filter}");
            assert!(!on(&filter, "id", json!([5])), "{filter}");
        }
    }

    #[test]
    fn float_comparisons() {
        assert!(on("f8=eq.0.1", "f8", json!(0.1)));
        assert!(on("f4=eq.0.1", "f4", json!(0.1)));
        assert!(!on("f4=eq.0.1000001", "f4", json!(0.1)));
        assert!(on("f8=eq.-0", "f8", json!(0.0)));
        assert!(on("f8=gt.1e300", "f8", json!("NaN")));
        assert!(on("f8=eq.NaN", "f8", json!("NaN")));
        assert!(on("f8=lt.Infinity", "f8", json!(1e308)));
        assert!(on("f8=gt.-Infinity", "f8", json!(-1e308)));
        assert!(on("f8=lt.2.5", "f8", json!(2)));
        assert!(!on("f8=lt.2.5", "f8", json!(3)));
    }

    #[test]
    fn numeric_is_exact_decimal() {
        assert!(on("n=eq.1.10", "n", json!(1.1)));
        assert!(on("n=eq.1.1", "n", json!("1.10")));
        assert!(on("n=eq.100", "n", json!(1e2)));
        assert!(on("n=eq.0.00", "n", json!("-0")));
        assert!(on("n=gt.1e2", "n", json!(100.5)));
        assert!(on("n=lt.-1.5", "n", json!(-2)));
        assert!(!on("n=lt.-1.5", "n", json!(-1)));
        assert!(on(
            "n=lt.12345678901234567890.5",
            "n",
            json!("12345678901234567890.4")
        ));
        assert!(!on(
            "n=eq.12345678901234567890.5",
            "n",
            json!("12345678901234567890.4")
        ));
        assert!(on("n=gt.Infinity", "n", json!("NaN")));
        assert!(on("n=lt.-99e99", "n", json!("-Infinity")));
        assert!(on("n=in.(1.50,2)", "n", json!(1.5)));
        assert!(!on("n=eq.1", "n", json!(true)));
    }

    #[test]
    fn decimal_parse_and_order() {
        let d = |t: &str| match Decimal::parse(t) {
            Some(d) => d,
            None => panic!("{t}"),
        };
        assert_eq!(d("1.10"), d("001.1"));
        assert_eq!(d(".5"), d("5e-1"));
        assert_eq!(d("5."), d("+0.5E1"));
        assert_eq!(d("0"), d("-0.000"));
        let ordered = [
            "-Infinity",
            "-1e5",
            "-10",
            "-9.99",
            "-0.001",
            "0",
            "1e-9",
            "0.5",
            "1",
            "10",
            "1e5",
            "Infinity",
            "NaN",
        ];
        for pair in ordered.windows(2) {
            if let [a, b] = pair {
                assert_eq!(d(a).compare(&d(b)), Ordering::Less, "{a} < {b}");
                assert_eq!(d(b).compare(&d(a)), Ordering::Greater, "{b} > {a}");
            }
        }
        for bad in [
            "",
            "-",
            ".",
            "1e",
            "e5",
            "1.2.3",
            "1e1234567",
            "0x10",
            "1 2",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bool_comparisons_and_is() {
        for word in ["true", "t", "TRUE", "yes", "y", "on", "1", "tr"] {
            assert!(
                on(&format!("done=eq.{word}"), "done", json!(true)),
                "{word}"
            );
        }
        for word in ["false", "f", "no", "n", "off", "0"] {
            assert!(
                on(&format!("done=eq.{word}"), "done", json!(false)),
                "{word}"
            );
        }
        assert!(on("done=eq.t", "done", json!("t")));
        assert!(on("done=lt.true", "done", json!(false)));
        assert!(on("done=is.true", "done", json!(true)));
        assert!(!on("done=is.true", "done", json!(false)));
        assert!(!on("done=is.true", "done", Value::Null));
        assert!(on("done=is.false", "done", json!(false)));
        assert!(!on("done=is.false", "done", Value::Null));
        assert!(on("done=not.is.true", "done", json!(false)));
        assert!(on("done=not.is.true", "done", Value::Null));
        assert!(!on("done=not.is.true", "done", json!(true)));
        assert!(on("done=not.is.false", "done", Value::Null));
        assert!(on("done=is.unknown", "done", Value::Null));
        assert!(!on("done=is.unknown", "done", json!(false)));
        assert!(on("done=not.is.unknown", "done", json!(false)));
        assert!(on("done=is.TRUE", "done", json!(true)));
        // Wrong shape fails closed even for is.
        assert!(!on("done=is.true", "done", json!(1)));
        assert!(!on("done=not.is.true", "done", json!(1)));
    }

    #[test]
    fn text_comparisons_are_bytewise() {
        assert!(on("title=eq.buy milk", "title", json!("buy milk")));
        assert!(!on("title=eq.Buy milk", "title", json!("buy milk")));
        assert!(on("title=neq.a", "title", json!("b")));
        assert!(on("title=lt.b", "title", json!("a")));
        assert!(on("title=gt.B", "title", json!("a")));
        assert!(on("title=gte.abc", "title", json!("abc")));
        assert!(on("vc=eq.x", "vc", json!("x")));
        assert!(on("title=eq.", "title", json!("")));
        assert!(!on("title=eq.5", "title", json!(5)));
        assert!(on(r#"title=eq."a,b""#, "title", json!("a,b")));
        assert!(on("title=eq.ünï", "title", json!("ünï")));
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
    fn bpchar_ignores_trailing_spaces() {
        assert!(on("bp=eq.ab", "bp", json!("ab   ")));
        assert!(on("bp=eq.ab  ", "bp", json!("ab")));
        assert!(!on("bp=eq. ab", "bp", json!("ab")));
        assert!(on("bp=like.ab", "bp", json!("ab  ")));
        assert!(on("bp=match.b$", "bp", json!("ab  ")));
        assert!(on("bp=in.(x,ab)", "bp", json!("ab ")));
    }

    #[test]
    fn name_truncates_filter_input_to_63_bytes() {
        let long = "n".repeat(70);
        assert!(on(&format!("nm=eq.{long}"), "nm", json!("n".repeat(63))));
        assert!(!on(&format!("nm=eq.{long}"), "nm", json!("n".repeat(62))));
        // Truncation respects UTF-8 boundaries (é is two bytes).
        let accents = "é".repeat(40);
        assert!(on(&format!("nm=eq.{accents}"), "nm", json!("é".repeat(31))));
    }

    #[test]
    fn citext_is_case_insensitive() {
        assert!(on("ci=eq.Hello", "ci", json!("hELLO")));
        assert!(on("ci=neq.Hello", "ci", json!("world")));
        assert!(on("ci=lt.B", "ci", json!("a")));
        assert!(on("ci=like.HE%", "ci", json!("hello")));
        assert!(on("ci=match.^HE", "ci", json!("hello")));
        assert!(on("ci=in.(X,HELLO)", "ci", json!("Hello")));
    }

    #[test]
    fn uuid_comparisons() {
        let lower = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let upper = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        assert!(on(&format!("u=eq.{upper}"), "u", json!(lower)));
        assert!(on(
            "u=eq.a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "u",
            json!(lower)
        ));
        assert!(on(
            "u=eq.{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "u",
            json!(lower)
        ));
        assert!(on(
            &format!("u=gt.{}", lower.replace('a', "0")),
            "u",
            json!(lower)
        ));
        assert!(!on(&format!("u=eq.{lower}"), "u", json!("a0eebc99")));
    }

    #[test]
    fn uuid_input_rules() {
        let ok = [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
        ];
        for text in ok {
            assert_eq!(
                parse_uuid(text),
                Some(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11),
                "{text}"
            );
        }
        let bad = [
            "",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
            "a0eebc99--9c0b4ef8bb6d6bb9bd380a11",
            "a0eeb-c999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a1",
            "a0eebc999c0b4ef8bb6d6bb9bd380a111",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
            " a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ];
        for text in bad {
            assert_eq!(parse_uuid(text), None, "{text}");
        }
    }

    #[test]
    fn timestamptz_compares_instants_across_zones() {
        let row_value = json!("2025-05-01T12:00:00+00:00");
        for text in [
            "2025-05-01T12:00:00Z",
            "2025-05-01T14:00:00+02:00",
            "2025-05-01 14:00:00+0200",
            "2025-05-01T07:00:00-05",
            "2025-05-01 12:00:00",
            "2025-05-01 12:00",
            "2025-05-01 12:00:00 UTC",
            "2025-05-01t12:00:00z",
            "2025-05-01T17:30:00+05:30",
        ] {
            assert!(
                on(&format!("tz=eq.{text}"), "tz", row_value.clone()),
                "{text}"
            );
        }
        assert!(on(
            "tz=gt.2025-05-01T12:00:00+00:00",
            "tz",
            json!("2025-05-01T12:00:00.101+00:00")
        ));
        assert!(on(
            "tz=eq.2025-05-01T12:00:00.5Z",
            "tz",
            json!("2025-05-01T12:00:00.500000+00:00")
        ));
        assert!(on(
            "tz=eq.2025-05-01T12:00:00.0000005Z",
            "tz",
            json!("2025-05-01T12:00:00.000001+00:00")
        ));
        assert!(on(
            "tz=gte.2025-05-01",
            "tz",
            json!("2025-05-01T00:00:00+00:00")
        ));
        assert!(on(
            "tz=lt.2025-05-01",
            "tz",
            json!("2025-05-01T01:00:00+02:00")
        ));
        assert!(on(
            "tz=gt.2025-05-01T13:59:59+02:00",
            "tz",
            json!("2025-05-01T12:00:00+00:00")
        ));
        assert!(on(
            "tz=lt.infinity",
            "tz",
            json!("9999-12-31T23:59:59+00:00")
        ));
        assert!(on(
            "tz=gt.-infinity",
            "tz",
            json!("0001-01-01T00:00:00+00:00")
        ));
        assert!(on("tz=gt.2025-01-01", "tz", json!("infinity")));
        assert!(on(
            "tz=eq.2025-05-02T00:00:00+00:00",
            "tz",
            json!("2025-05-01T24:00:00+00:00")
        ));
        assert!(!on("tz=gt.2025-01-01", "tz", json!("not a date")));
        assert!(!on("tz=gt.2025-01-01", "tz", json!(1_746_000_000)));
    }

    #[test]
    fn timestamp_ignores_zones_and_date_ignores_time() {
        assert!(on(
            "ts=eq.2025-05-01T12:00:00",
            "ts",
            json!("2025-05-01T12:00:00")
        ));
        // Postgres silently drops a zone written in a `timestamp` literal.
        assert!(on(
            "ts=eq.2025-05-01 12:00:00+02:00",
            "ts",
            json!("2025-05-01T12:00:00")
        ));
        assert!(on(
            "ts=lt.2025-05-01T12:00:00.000001",
            "ts",
            json!("2025-05-01T12:00:00")
        ));
        assert!(on("d=eq.2025-05-01", "d", json!("2025-05-01")));
        assert!(on("d=eq.2025-5-1", "d", json!("2025-05-01")));
        assert!(on(
            "d=eq.2025-05-01T23:00:00-05:00",
            "d",
            json!("2025-05-01")
        ));
        assert!(on("d=gt.2024-12-31", "d", json!("2025-01-01")));
        assert!(on("d=lt.2025-05-02", "d", json!("2025-05-01")));
        assert!(on("d=in.(2025-01-01,2025-05-01)", "d", json!("2025-05-01")));
        assert!(on("d=gt.1970-01-01", "d", json!("12345-01-01")));
        assert!(on("d=lt.1970-01-01", "d", json!("0001-01-01")));
    }

    #[test]
    fn epoch_constant_is_right() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).map(|d| i64::from(d.num_days_from_ce()));
        assert_eq!(epoch, Some(UNIX_EPOCH_DAYS_FROM_CE));
        match parse_moment("1970-01-02T00:00:01.5+00:00") {
            Some(m) => assert_eq!(
                ColType::Timestamptz.moment_micros(m),
                Some(MICROS_PER_DAY + 1_500_000)
            ),
            None => panic!("unparsed"),
        }
    }

    #[test]
    fn moment_input_rules() {
        for bad in [
            "",
            "2025",
            "2025-05",
            "25-05-01",
            "0000-01-01",
            "2025-13-01",
            "2025-02-29",
            "2025-05-01X12:00",
            "2025-05-01T12",
            "2025-05-01T12:60",
            "2025-05-01T24:00:01",
            "2025-05-01T12:00:00.",
            "2025-05-01T12:00:00+16:00",
            "2025-05-01T12:00:00+02:60",
            "2025-05-01T12:00:00 EST",
            "2025-05-01T12:00:00Zjunk",
            "2025-05-01T12:00:00+",
            "１２３４-05-01",
        ] {
            assert!(parse_moment(bad).is_none(), "{bad}");
        }
        assert!(parse_moment("2024-02-29").is_some());
    }

    #[test]
    fn time_compares_clock_values() {
        assert!(on("t=lt.12:30", "t", json!("12:00:00")));
        assert!(on("t=eq.9:05", "t", json!("09:05:00")));
        assert!(on("t=gt.23:59:59.999999", "t", json!("24:00:00")));
        assert!(!on("t=eq.12:00", "t", json!("noon")));
    }

    #[test]
    fn other_types_compare_text_form_for_equality() {
        assert!(on("mood=eq.happy", "mood", json!("happy")));
        assert!(on("mood=neq.happy", "mood", json!("sad")));
        assert!(on("mood=in.(sad,happy)", "mood", json!("happy")));
        assert!(on("ttz=eq.12:00:00+02", "ttz", json!("12:00:00+02")));
        assert!(on("mood=eq.5", "mood", json!(5)));
        assert!(on(r#"mood=eq.{"a":1}"#, "mood", json!({"a": 1})));
    }

    #[test]
    fn jsonb_equality_is_structural() {
        assert!(on(r#"meta=eq.{"k":1}"#, "meta", json!({"k": 1})));
        assert!(on(
            r#"meta=eq.{"b":[1,2],"a":null}"#,
            "meta",
            json!({"a": null, "b": [1, 2]})
        ));
        assert!(on(r#"meta=eq.{"k":1.0}"#, "meta", json!({"k": 1})));
        assert!(on(r#"meta=eq.{"k":1e2}"#, "meta", json!({"k": 100})));
        assert!(!on(r#"meta=eq.{"k":1}"#, "meta", json!({"k": "1"})));
        assert!(!on(r#"meta=eq.{"k":1}"#, "meta", json!({"k": 1, "x": 2})));
        assert!(!on("meta=eq.[1,2]", "meta", json!([2, 1])));
        assert!(on(r#"meta=neq.{"k":1}"#, "meta", json!({"k": 2})));
        assert!(on("meta=eq.hello", "meta", json!("hello")));
        assert!(on(r#"meta=eq."\"hello\"""#, "meta", json!("hello")));
        assert!(on("meta=eq.5", "meta", json!(5)));
        assert!(!on("meta=eq.5", "meta", json!("5")));
        assert!(on("meta=eq.true", "meta", json!(true)));
        assert!(!on("meta=eq.null", "meta", json!("null")));
        assert!(!on("meta=eq.null", "meta", Value::Null));
        assert!(on(r#"meta=in.("{\"k\":1}",2)"#, "meta", json!({"k": 1})));
        assert!(on(r#"js=eq.{"k":[true]}"#, "js", json!({"k": [true]})));
        assert!(on("meta=isdistinct.1", "meta", json!(2)));
        assert!(!on("meta=isdistinct.1", "meta", json!(1.0)));
    }

    #[test]
    fn array_equality_is_element_wise() {
        assert!(on("tags=eq.{a,b}", "tags", json!(["a", "b"])));
        assert!(!on("tags=eq.{a,b}", "tags", json!(["b", "a"])));
        assert!(!on("tags=eq.{a,b}", "tags", json!(["a"])));
        assert!(on("tags=neq.{a,b}", "tags", json!(["a"])));
        assert!(on("tags=eq.{}", "tags", json!([])));
        assert!(on(
            r#"tags=eq."{\"a,b\", c , NULL,\"NULL\"}""#,
            "tags",
            json!(["a,b", "c", null, "NULL"])
        ));
        assert!(on(r#"tags=eq.{a\,b}"#, "tags", json!(["a,b"])));
        assert!(on("nums=eq.{1,2}", "nums", json!([1, 2])));
        assert!(on("nums=eq.{ 1 , 2 }", "nums", json!([1, 2])));
        assert!(!on("nums=eq.{1,2}", "nums", json!(["1", "x"])));
        assert!(on("nums=eq.{{1,2},{3,4}}", "nums", json!([[1, 2], [3, 4]])));
        assert!(!on("nums=eq.{{1,2},{3,4}}", "nums", json!([1, 2, 3, 4])));
        assert!(on("nums=eq.{1,NULL}", "nums", json!([1, null])));
        assert!(!on("nums=eq.{1,NULL}", "nums", json!([1, 2])));
        assert!(on("nums=eq.{1,2}", "nums", json!("{1,2}")));
        assert!(on(r#"nums=in.("{1}","{1,2}")"#, "nums", json!([1, 2])));
        assert!(!on("nums=eq.{1}", "nums", json!(1)));
    }

    #[test]
    fn array_literal_rules() {
        for bad in [
            "",
            "{",
            "}",
            "{1",
            "{1,}",
            "{,1}",
            "{1,,2}",
            "{1}x",
            "{1,{2}}",
            "{a\"b}",
            "1,2",
            "{{{{{{{1}}}}}}}",
        ] {
            assert!(parse_array_literal(bad).is_none(), "{bad}");
        }
        assert!(parse_array_literal("{{{{{{1}}}}}}").is_some());
        assert!(parse_array_literal(r#" { "x\"" , y } "#).is_some());
    }

    #[test]
    fn in_membership_and_nulls_in_the_list() {
        assert!(on("id=in.(1,2,3)", "id", json!(2)));
        assert!(!on("id=in.(1,2,3)", "id", json!(4)));
        assert!(on("id=not.in.(1,2,3)", "id", json!(4)));
        assert!(!on("id=not.in.(1,2,3)", "id", json!(2)));
        assert!(!on("id=in.()", "id", json!(2)));
        assert!(on("id=not.in.()", "id", json!(2)));
        assert!(on("title=in.(red, blue, yellow)", "title", json!("blue")));
        assert!(on(r#"title=in.("a,b",c)"#, "title", json!("a,b")));
        assert!(!on(r#"title=in.("a,b",c)"#, "title", json!("a")));
        assert!(on(r#"title=in.("null")"#, "title", json!("null")));
        assert!(!on("title=in.(null)", "title", json!("null")));
        // x = ANY('{1,NULL}') is NULL when x <> 1, so NOT IN can never pass.
        assert!(on("id=in.(1,null)", "id", json!(1)));
        assert!(!on("id=in.(1,null)", "id", json!(2)));
        assert!(!on("id=not.in.(1,null)", "id", json!(2)));
        assert!(!on("id=not.in.(1,null)", "id", json!(1)));
    }

    #[test]
    fn is_distinct() {
        assert!(on("id=isdistinct.5", "id", json!(6)));
        assert!(!on("id=isdistinct.5", "id", json!(5)));
        assert!(on("id=isdistinct.5", "id", Value::Null));
        assert!(on("id=not.isdistinct.5", "id", json!(5)));
        assert!(!on("id=not.isdistinct.5", "id", json!(6)));
        assert!(!on("id=not.isdistinct.5", "id", Value::Null));
        assert!(on("title=isdistinct.null", "title", Value::Null));
        assert!(!on("title=isdistinct.null", "title", json!("null")));
    }

    #[test]
    fn nulls_fail_every_operator_except_is_and_isdistinct() {
        let failing = [
            "id=eq.1",
            "id=neq.1",
            "id=lt.1",
            "id=lte.1",
            "id=gt.1",
            "id=gte.1",
            "id=in.(1)",
            "title=like.%",
            "title=ilike.%",
            "title=match.",
            "title=imatch.",
            "id=is.null",
            "done=is.true",
            "done=is.false",
            "done=is.unknown",
            "id=isdistinct.1",
        ];
        let passing_on_null = ["id=is.null", "done=is.unknown", "id=isdistinct.1"];
        for filter in failing {
            let column = filter.split('=').next().unwrap_or_default();
            let expected = passing_on_null.contains(&filter);
            assert_eq!(on(filter, column, Value::Null), expected, "{filter}");
            let negated = filter.replacen('=', "=not.", 1);
            let expected_negated = matches!(filter, "done=is.true" | "done=is.false");
            assert_eq!(
                on(&negated, column, Value::Null),
                expected_negated,
                "{negated}"
            );
        }
        assert!(!on("id=not.is.null", "id", Value::Null));
        assert!(on("id=not.is.null", "id", json!(0)));
        assert!(!on("id=is.null", "id", json!(0)));
        // is.null needs no cast, so a mistyped value still counts as non-null.
        assert!(on("id=not.is.null", "id", json!("abc")));
    }

    #[test]
    fn missing_columns_fail_closed_for_every_operator() {
        let filters = [
            "id=eq.1",
            "id=not.eq.1",
            "id=neq.1",
            "id=not.in.(1)",
            "id=is.null",
            "id=not.is.null",
            "done=not.is.true",
            "id=isdistinct.1",
            "id=not.isdistinct.1",
            "title=not.like.x",
            "title=not.match.x",
        ];
        for filter in filters {
            assert!(!check(filter, json!({"other": 1})), "{filter}");
        }
    }

    #[test]
    fn conditions_are_anded() {
        let f = bound("id=gt.0,id=lt.100,title=like.a%,done=is.false");
        assert!(f.matches(&row(json!({"id": 5, "title": "abc", "done": false}))));
        assert!(!f.matches(&row(json!({"id": 500, "title": "abc", "done": false}))));
        assert!(!f.matches(&row(json!({"id": 5, "title": "xbc", "done": false}))));
        assert!(!f.matches(&row(json!({"id": 5, "title": "abc", "done": true}))));
        assert!(!f.matches(&row(json!({"id": 5, "title": "abc"}))));
        let f = bound(r#"title=eq."a,b",title=neq.x"#);
        assert!(f.matches(&row(json!({"title": "a,b"}))));
    }

    // ---- index keys -------------------------------------------------------------------

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
            Some(("title", &IndexKey::Text(s("x"))))
        );
        assert_eq!(
            bound("done=eq.yes").eq_index(),
            Some(("done", &IndexKey::Bool(true)))
        );
    }

    #[test]
    fn index_key_of_row_values() {
        assert_eq!(index_key("int8", &json!(7)), Some(IndexKey::Int(7)));
        assert_eq!(index_key("int4", &json!("7")), Some(IndexKey::Int(7)));
        assert_eq!(index_key("int8", &json!(7.5)), None);
        assert_eq!(index_key("int8", &Value::Null), None);
        assert_eq!(index_key("text", &json!("x")), Some(IndexKey::Text(s("x"))));
        assert_eq!(
            index_key("bpchar", &json!("x  ")),
            Some(IndexKey::Text(s("x")))
        );
        assert_eq!(index_key("text", &json!(1)), None);
        assert_eq!(index_key("citext", &json!("x")), None);
        assert_eq!(index_key("numeric", &json!(1)), None);
        assert_eq!(index_key("jsonb", &json!(1)), None);
        assert_eq!(index_key("_int4", &json!([1])), None);
        assert_eq!(
            index_key("bool", &json!(false)),
            Some(IndexKey::Bool(false))
        );
        assert_eq!(
            index_key("uuid", &json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")),
            index_key("uuid", &json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
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

    // ---- robustness -------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or_default()
        }
    }

    const COLUMNS: &[&str] = &[
        "id", "i2", "oid", "f4", "f8", "n", "done", "title", "bp", "nm", "ci", "u", "d", "ts",
        "tz", "t", "ttz", "meta", "js", "tags", "nums", "mood",
    ];
    const OPS: &[&str] = &[
        "eq",
        "neq",
        "lt",
        "lte",
        "gt",
        "gte",
        "in",
        "like",
        "ilike",
        "is",
        "match",
        "imatch",
        "isdistinct",
    ];
    const VALUES: &[&str] = &[
        "1",
        "-7",
        "0",
        "1.5",
        "1e3",
        "NaN",
        "Infinity",
        "t",
        "false",
        "null",
        "unknown",
        "abc",
        "%a_",
        "^a.*$",
        "(1,2)",
        "(a, \"b,c\", null)",
        "()",
        "{1,2}",
        "{a,NULL}",
        "{{1},{2}}",
        "{\"k\":1}",
        "[1,2]",
        "\"q\\\"x\"",
        "2025-05-01",
        "2025-05-01T12:00:00+02:00",
        "12:00",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "happy",
        "",
        " ",
    ];

    /// A syntactically plausible filter, so the fuzz loop reaches bind and evaluation.
    fn structured(rng: &mut XorShift) -> String {
        let pick = |rng: &mut XorShift, list: &[&'static str]| -> &'static str {
            list.get(rng.below(list.len())).copied().unwrap_or_default()
        };
        (0..=rng.below(3))
            .map(|_| {
                let not = if rng.below(3) == 0 { "not." } else { "" };
                let column = pick(rng, COLUMNS);
                let op = pick(rng, OPS);
                let value = pick(rng, VALUES);
                format!("{column}={not}{op}.{value}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn random_garbage_never_panics() {
        const PIECES: &[&str] = &[
            "id",
            "title",
            "u",
            "meta",
            "tags",
            "nums",
            "n",
            "f4",
            "done",
            "tz",
            "d",
            "t",
            "ci",
            "bp",
            "nm",
            "mood",
            "=",
            "=",
            ".",
            ".",
            "not.",
            "eq.",
            "neq.",
            "lt.",
            "gte.",
            "in.",
            "like.",
            "ilike.",
            "match.",
            "imatch.",
            "is.",
            "isdistinct.",
            "null",
            "true",
            "unknown",
            "(",
            ")",
            ",",
            ",",
            "\"",
            "\\",
            "%",
            "_",
            "*",
            "{",
            "}",
            "[",
            "]",
            "1",
            "-",
            "9e9",
            "NaN",
            "inf",
            "é",
            "\n",
            " ",
            "2025-05-01",
            "T",
            "12:00",
            "+02:00",
            "Z",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "(?",
            "a{9}",
            "\u{0}",
            "\u{10FFFF}",
        ];
        let rows = [
            json!({}),
            json!({"id": 1, "title": "abc", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                   "meta": {"k": [1]}, "tags": ["a", null], "nums": [[1], [2]], "n": 1.5,
                   "f4": "NaN", "done": true, "tz": "2025-05-01T12:00:00+00:00",
                   "d": "2025-05-01", "t": "12:00:00", "ci": "X", "bp": "a  ", "nm": "n",
                   "mood": "ok"}),
            json!({"id": null, "title": null, "u": null, "meta": null, "tags": null, "nums": null,
                   "n": null, "f4": null, "done": null, "tz": null, "d": null, "t": null}),
            json!({"id": "x", "title": 5, "u": [], "meta": "s", "tags": "{a,{b}}", "nums": [[[[[[[1]]]]]]],
                   "n": "1e99999999", "f4": {}, "done": "maybe", "tz": "infinity", "d": 3,
                   "t": "25:00", "ci": false, "bp": 1, "nm": [], "mood": {"a": 1}}),
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut bound_count = 0;
        for i in 0..20_000 {
            let text = if i % 2 == 1 {
                structured(&mut rng)
            } else if i % 4 == 0 {
                let bytes: Vec<u8> = (0..rng.below(64))
                    .map(|_| (rng.next() & 0xFF) as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..rng.below(24))
                    .map(|_| {
                        PIECES
                            .get(rng.below(PIECES.len()))
                            .copied()
                            .unwrap_or_default()
                    })
                    .collect()
            };
            if let Ok(Some(filter)) = parse(&text) {
                let _ = filter.columns().count();
                if let Ok(b) = filter.bind(typname) {
                    bound_count += 1;
                    let _ = b.eq_index();
                    for r in &rows {
                        if let Value::Object(map) = r {
                            let _ = b.matches(map);
                        }
                    }
                }
            }
            let type_name = [
                "int8",
                "uuid",
                "bpchar",
                "bool",
                "text",
                "_int4",
                "numeric",
                "timestamptz",
            ]
            .get(rng.below(8))
            .copied()
            .unwrap_or_default();
            let _ = index_key(type_name, &Value::String(text.clone()));
            let _ = Decimal::parse(&text);
            let _ = parse_moment(&text);
            let _ = parse_array_literal(&text);
        }
        // The generator must actually reach evaluation, not just parse errors.
        assert!(bound_count > 1000, "only {bound_count} filters bound");
    }

    #[test]
    fn hostile_but_valid_inputs_stay_bounded() {
        let underscores = format!("title=like.{}", "_".repeat(8000));
        if let Ok(Some(f)) = parse(&underscores) {
            if let Ok(b) = f.bind(typname) {
                assert!(!b.matches(&row(json!({"title": "short"}))));
            }
        }
        let nested = format!("nums=eq.{}{}", "{".repeat(4000), "}".repeat(4000));
        assert_eq!(bind_err(&nested).code(), "InvalidFilterValue");
        let deep_json = format!("meta=eq.{}{}", "[".repeat(4000), "]".repeat(4000));
        // serde_json's recursion limit turns this into the JSON string fallback.
        let b = bound(&deep_json);
        assert!(!b.matches(&row(json!({"meta": []}))));
    }
}
