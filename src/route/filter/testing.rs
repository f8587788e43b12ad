//! Helpers for the filter's unit tests: a table with a column of every kind of type, and
//! shorthands that parse, bind and evaluate a filter in one call, panicking with the filter
//! text when a step the test relies on fails.

use serde_json::{Map, Value};

use crate::route::filter::error::FilterError;
use crate::route::filter::grammar::{parse, Filter};

pub(super) fn typname(column: &str) -> Option<&'static str> {
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

pub(super) fn parsed(text: &str) -> Filter {
    match parse(text) {
        Ok(Some(filter)) => filter,
        other => panic!("parse({text:?}) = {other:?}"),
    }
}

pub(super) fn bind_err(text: &str) -> FilterError {
    match parsed(text).bind(typname) {
        Err(e) => e,
        Ok(other) => panic!("bind({text:?}) unexpectedly gave {other:?}"),
    }
}

pub(super) fn row(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Whether `filter`, bound to [`typname`]'s columns, lets `row` through.
fn matches(filter: &str, row: &Map<String, Value>) -> bool {
    match parsed(filter).bind(typname) {
        Ok(bound) => bound.matches(row),
        Err(e) => panic!("bind({filter:?}) failed: {e}"),
    }
}

pub(super) fn check(filter: &str, r: Value) -> bool {
    matches(filter, &row(r))
}

/// Evaluate a filter against a one-column row `{column: value}`.
pub(super) fn on(filter: &str, column: &str, value: Value) -> bool {
    let mut r = Map::new();
    r.insert(column.to_owned(), value);
    matches(filter, &r)
}
