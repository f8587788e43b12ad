//! Parse and evaluate Supabase `postgres_changes` filter strings (`id=gt.5,status=in.(a,b)`)
//! against `to_jsonb` row images with Postgres comparison semantics for each column type.
//!
//! This folder owns the filter grammar, its limits and error texts, the typed evaluation and
//! the canonical equality keys the router uses to index single `eq` subscriptions. Client text
//! never reaches SQL: every comparison happens here, so everything is written to be total on
//! hostile input (no panics, bounded sizes, size-limited regexes).
//!
//! A filter goes through three steps, a file each:
//!
//! - `grammar.rs`: [`parse`] turns the client's text into an untyped [`Filter`] (conditions of
//!   column, operator and value text), with Supabase's parse error texts.
//! - `bind.rs`: [`Filter::bind`] checks each condition against its column's type, casts the
//!   values and compiles the patterns, once per subscription, into a [`BoundFilter`].
//! - `eval.rs`: [`BoundFilter::matches`] evaluates a row with SQL's three-valued logic.
//!
//! And what the steps share:
//!
//! - `error.rs`: [`FilterError`], the text and code of every rejection.
//! - `typed.rs`: column types (from a `typname`) and values in comparable form, with each
//!   Postgres type's equality and order.
//! - `input.rs`: Postgres' text input for the scalar types (numbers, bool, uuid, dates, times).
//! - `array.rs`: Postgres' array literal syntax.
//! - `index.rs`: [`IndexKey`], the equality key of the router's hash index, for a filter's
//!   value and for a row's.
//!
//! `testing.rs` holds the helpers the unit tests share; this file's own tests throw random
//! and hostile input at every step.

mod array;
mod bind;
mod error;
mod eval;
mod grammar;
mod index;
mod input;
mod typed;

#[cfg(test)]
mod testing;

pub use error::FilterError;
pub use eval::BoundFilter;
pub use grammar::{parse, Filter};
pub use index::{index_key, IndexKey};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::filter::array::parse_array_literal;
    use crate::route::filter::input::{parse_moment, Decimal};
    use crate::route::filter::testing::{bind_err, check, row, typname};
    use serde_json::{json, Value};

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
        assert!(!check(&deep_json, json!({"meta": []})));
    }
}
