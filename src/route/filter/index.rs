//! Equality keys for the router's hash index of single-`eq` subscriptions.
//!
//! A binding such as `id=eq.7` need not be evaluated per change: the router hashes the row's
//! value and looks the binding up. That is right only if two keys are equal exactly when the
//! column's SQL `=` holds, so one function, `key_of`, makes the key on both sides: from the
//! filter's value when binding, and from the row's value in [`index_key`].

use serde_json::Value;

use crate::route::filter::typed::{ColType, TextKind, Typed};

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
pub(super) fn key_of(ty: &ColType, value: &Typed) -> Option<IndexKey> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn index_key_of_row_values() {
        assert_eq!(index_key("int8", &json!(7)), Some(IndexKey::Int(7)));
        assert_eq!(index_key("int4", &json!("7")), Some(IndexKey::Int(7)));
        assert_eq!(index_key("int8", &json!(7.5)), None);
        assert_eq!(index_key("int8", &Value::Null), None);
        assert_eq!(
            index_key("text", &json!("x")),
            Some(IndexKey::Text("x".to_owned()))
        );
        assert_eq!(
            index_key("bpchar", &json!("x  ")),
            Some(IndexKey::Text("x".to_owned()))
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
}
