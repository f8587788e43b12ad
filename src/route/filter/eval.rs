//! Evaluation: a [`BoundFilter`] against one row image, for every change a binding sees.
//!
//! SQL semantics, not Rust's: a condition is true, false or unknown (NULL), only true lets a
//! row through, and a missing column or a value of the wrong JSON shape fails closed whatever
//! the operator. Nothing here can fail: `bind` did the checking, once.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::{Map, Value};

use crate::route::filter::grammar::CmpOp;
use crate::route::filter::index::IndexKey;
use crate::route::filter::typed::{typed_cmp, typed_eq, ColType, Typed};

/// A filter bound to column types, ready to evaluate rows.
#[derive(Debug, Clone)]
pub struct BoundFilter {
    pub(super) conditions: Vec<BoundCondition>,
    pub(super) eq_index: Option<(String, IndexKey)>,
}

#[derive(Debug, Clone)]
pub(super) struct BoundCondition {
    pub(super) column: String,
    pub(super) negated: bool,
    pub(super) ty: ColType,
    pub(super) test: Test,
}

#[derive(Debug, Clone)]
pub(super) enum Test {
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

#[cfg(test)]
mod tests {
    use crate::route::filter::testing::{check, on};
    use serde_json::{json, Value};

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
        let f = "id=gt.0,id=lt.100,title=like.a%,done=is.false";
        assert!(check(f, json!({"id": 5, "title": "abc", "done": false})));
        assert!(!check(f, json!({"id": 500, "title": "abc", "done": false})));
        assert!(!check(f, json!({"id": 5, "title": "xbc", "done": false})));
        assert!(!check(f, json!({"id": 5, "title": "abc", "done": true})));
        assert!(!check(f, json!({"id": 5, "title": "abc"})));
        assert!(check(
            r#"title=eq."a,b",title=neq.x"#,
            json!({"title": "a,b"})
        ));
    }
}
