//! Column types and values in comparable form: what `=` and `<` mean for each Postgres type.
//!
//! A column's `typname` gives its [`ColType`]. Filter text is cast to it once, as
//! `'text'::type` would be (`cast`); row values from `to_jsonb` are read per row
//! (`row_value`); the two meet in `typed_cmp` and `typed_eq`, which follow Postgres: exact
//! numeric, NaN above every float, bytewise text unless the type says otherwise, instants
//! across time zones, structural jsonb, element-wise arrays.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use crate::route::filter::array::{parse_array_literal, LitElem, MAX_ARRAY_DEPTH};
use crate::route::filter::input::{
    parse_bool, parse_float, parse_moment, parse_time_only, parse_uuid, Decimal, Moment,
    MICROS_PER_DAY, MICROS_PER_SECOND,
};

/// `NAMEDATALEN - 1`: Postgres silently truncates `name` input to this many bytes.
const NAME_MAX_BYTES: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextKind {
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
pub(super) enum ColType {
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
pub(super) enum Typed<'a> {
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
pub(super) enum Elem<'a> {
    Null,
    Value(Typed<'a>),
    Nested(Vec<Elem<'a>>),
}

impl ColType {
    pub(super) fn from_typname(typname: &str) -> ColType {
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

    pub(super) fn is_ordered(&self) -> bool {
        !matches!(self, ColType::Json | ColType::Array(_) | ColType::Other)
    }

    /// Cast filter text to this type, as `'text'::type` would (`None` = invalid input).
    pub(super) fn cast(&self, text: &str) -> Option<Typed<'static>> {
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
    pub(super) fn row_value<'a>(&self, value: &'a Value) -> Option<Typed<'a>> {
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
    pub(super) fn pattern_text<'a>(&self, value: &'a Value) -> Option<&'a str> {
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

pub(super) fn typed_cmp(a: &Typed, b: &Typed) -> Option<Ordering> {
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

pub(super) fn typed_eq(a: &Typed, b: &Typed) -> bool {
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
    use crate::route::filter::input::UNIX_EPOCH_DAYS_FROM_CE;
    use crate::route::filter::testing::on;
    use chrono::{Datelike, NaiveDate};
    use serde_json::json;

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
}
