//! The fuzz targets (`fuzz/`) as bounded property tests that run in the ordinary `cargo test`:
//! the same checks (`fuzz/src/lib.rs`, included below) on random and structured inputs, plus
//! oracles for the documented result of each structured input.
//!
//! - text frames: arbitrary strings, 5-element vsn-2 arrays of random JSON types, vsn-1 objects
//!   with every field of a random type, truncated and deeply nested frames;
//! - binary frames: arbitrary bytes, honest kind-3 frames, frames whose header lengths lie,
//!   unknown kinds, bad encodings, invalid UTF-8 fields;
//! - filters: arbitrary strings, filters from a grammar of columns/operators/values over every
//!   column type, and an exact oracle for integer comparisons, `in` and `not.`.
//!
//! NOTIFY payloads are not parsed at all: a notification is only a doorbell, and every change
//! is read from the change log.
//!
//! No database needed. `PROPTEST_CASES` scales every test (default case counts keep the whole
//! module to a few seconds).

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

use pgrelay::protocol::{self, Message, ProtocolError, Vsn};
use pgrelay::route::filter::{self, FilterError};

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod checks;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures print their minimal input; don't write regression files into the repo.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

const WORDS: &[&str] = &[
    "",
    "phoenix",
    "realtime:room1",
    "6",
    "heartbeat",
    "phx_join",
];

/// Short strings of any Unicode scalar values (control characters, quotes, surrogates' range
/// neighbours, astral planes), or a realistic word.
fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        1 => prop::sample::select(WORDS).prop_map(str::to_owned),
    ]
}

/// Any JSON value, nested a few levels. Floats are dyadic so their text round-trips exactly.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5, -2.25, 1024.0, 0.125, -0.0, 1e10]).prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field value: mostly the right shape (a string), often any JSON type.
fn arb_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => arb_string().prop_map(Value::String),
        2 => arb_json(),
    ]
}

/// A ref: mostly a string, number or null (accepted), sometimes anything.
fn arb_ref() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => arb_string().prop_map(Value::String),
        1 => any::<u32>().prop_map(Value::from),
        1 => Just(Value::Null),
        2 => arb_json(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Oracles for text frames

/// What a ref decodes to: strings as is, numbers as their text, null as absent.
fn ref_of(v: &Value) -> Result<Option<String>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(()),
    }
}

/// `[join_ref, ref, topic, event, payload]` with refs string/number/null and topic and event
/// strings decodes; anything else is `Malformed`.
fn expected_v2(a: &[Value]) -> Option<Message> {
    let [jr, r, topic, event, payload] = a else {
        return None;
    };
    Some(Message {
        join_ref: ref_of(jr).ok()?,
        msg_ref: ref_of(r).ok()?,
        topic: topic.as_str()?.to_owned(),
        event: event.as_str()?.to_owned(),
        payload: payload.clone(),
    })
}

/// A vsn-1 object needs string `topic` and `event`; refs absent or string/number/null;
/// `payload` defaults to null; other keys are ignored.
fn expected_v1(o: &Map<String, Value>) -> Option<Message> {
    let opt_ref = |k: &str| o.get(k).map_or(Ok(None), ref_of);
    Some(Message {
        join_ref: opt_ref("join_ref").ok()?,
        msg_ref: opt_ref("ref").ok()?,
        topic: o.get("topic")?.as_str()?.to_owned(),
        event: o.get("event")?.as_str()?.to_owned(),
        payload: o.get("payload").cloned().unwrap_or(Value::Null),
    })
}

fn assert_decodes_as(vsn: Vsn, text: &str, expected: Option<Message>) {
    let got = protocol::decode_text(vsn, text);
    match expected {
        Some(m) => assert_eq!(got, Ok(m), "{vsn:?} {text}"),
        None => assert!(
            matches!(got, Err(ProtocolError::Malformed(_))),
            "{vsn:?} {text}: expected Malformed, got {got:?}"
        ),
    }
    checks::check_decoded(vsn, text, got);
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn text_frames_arbitrary_strings(text in any::<String>()) {
        checks::check_decode_text(text.as_bytes());
    }

    #[test]
    fn text_frames_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        checks::check_decode_text(&bytes);
    }

    #[test]
    fn text_frames_json_alphabet(text in r#"[\[\]{}",:0-9a-z\\ -]{0,40}"#) {
        checks::check_decode_text(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(config(250))]

    /// vsn 2: arrays of (mostly) 5 values, each of a random type.
    #[test]
    fn v2_arrays_of_random_types(
        items in prop_oneof![
            3 => (arb_ref(), arb_ref(), arb_field(), arb_field(), arb_json())
                .prop_map(|(a, b, c, d, e)| vec![a, b, c, d, e]),
            1 => prop::collection::vec(arb_json(), 0..8),
        ]
    ) {
        let text = Value::Array(items.clone()).to_string();
        assert_decodes_as(Vsn::V2, &text, expected_v2(&items));
        // The same text on a vsn-1 socket: never a panic, always a well-formed outcome.
        let v1 = protocol::decode_text(Vsn::V1, &text);
        checks::check_decoded(Vsn::V1, &text, v1);
    }

    /// vsn 1 (and v1-style objects on a vsn-2 socket): every field absent or of a random type.
    #[test]
    fn v1_objects_of_random_types(
        topic in prop::option::of(arb_field()),
        event in prop::option::of(arb_field()),
        payload in prop::option::of(arb_json()),
        msg_ref in prop::option::of(arb_ref()),
        join_ref in prop::option::of(arb_ref()),
        extra in prop::collection::btree_map("x_[a-z]{0,3}", arb_json(), 0..3),
    ) {
        let mut o = Map::new();
        for (k, v) in [("topic", topic), ("event", event), ("payload", payload),
                       ("ref", msg_ref), ("join_ref", join_ref)] {
            if let Some(v) = v {
                o.insert(k.to_owned(), v);
            }
        }
        o.extend(extra);
        let text = Value::Object(o.clone()).to_string();
        assert_decodes_as(Vsn::V1, &text, expected_v1(&o));
        assert_decodes_as(Vsn::V2, &text, expected_v1(&o));
    }

    /// Any proper prefix of a valid frame is `Malformed`.
    #[test]
    fn truncated_frames_are_malformed(
        (jr, r, topic, event, payload) in
            (arb_ref(), arb_ref(), arb_string(), arb_string(), arb_json()),
        v1 in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (vsn, text) = if v1 {
            let o = json!({"topic":topic,"event":event,"payload":payload,"ref":r,"join_ref":jr});
            (Vsn::V1, o.to_string())
        } else {
            (Vsn::V2, json!([jr, r, topic, event, payload]).to_string())
        };
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let got = protocol::decode_text(vsn, &text[..at]);
        prop_assert!(
            matches!(got, Err(ProtocolError::Malformed(_))),
            "{:?} -> {got:?}",
            &text[..at]
        );
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Deep nesting in the payload: serde_json's recursion limit (128) turns it into an error,
    /// never a stack overflow.
    #[test]
    fn deeply_nested_payloads(
        depth in prop_oneof![1usize..100, 200usize..200_000],
        objects in any::<bool>(),
        v1 in any::<bool>(),
    ) {
        let (open, close) = if objects { (r#"{"a":"#, "}") } else { ("[", "]") };
        let nested = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        let (vsn, text) = if v1 {
            let text = format!(
                r#"{{"topic":"phoenix","event":"heartbeat","ref":"1","payload":{nested}}}"#
            );
            (Vsn::V1, text)
        } else {
            (Vsn::V2, format!(r#"[null,"1","phoenix","heartbeat",{nested}]"#))
        };
        let got = protocol::decode_text(vsn, &text);
        if depth < 100 {
            prop_assert!(got.is_ok(), "depth {depth}: {got:?}");
        } else {
            match &got {
                Err(ProtocolError::Malformed(m)) => {
                    prop_assert!(m.contains("recursion limit exceeded"), "{m}")
                }
                other => prop_assert!(false, "depth {depth}: {other:?}"),
            }
        }
        checks::check_decoded(vsn, &text, got);
    }
}

// ---------------------------------------------------------------------------------------------
// Binary frames

/// A header field: any text of at most 255 UTF-8 bytes.
fn arb_field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        Just("realtime:room1".to_owned()),
        (200usize..=255).prop_map(|n| "t".repeat(n)),
    ]
    .prop_map(|s| {
        let mut s = s;
        while s.len() > 255 {
            s.pop();
        }
        s
    })
}

#[derive(Debug, Clone)]
struct Push {
    fields: [String; 5],
    encoding: u8,
    payload: Vec<u8>,
}

impl Push {
    fn header(&self) -> Vec<u8> {
        let mut h = vec![3u8];
        h.extend(self.fields.iter().map(|f| f.len() as u8));
        h.push(self.encoding);
        h
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.header();
        for f in &self.fields {
            b.extend_from_slice(f.as_bytes());
        }
        b.extend_from_slice(&self.payload);
        b
    }
}

fn arb_push() -> impl Strategy<Value = Push> {
    (
        [
            arb_field_text(),
            arb_field_text(),
            arb_field_text(),
            arb_field_text(),
            arb_field_text(),
        ],
        0u8..2,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(fields, encoding, payload)| Push {
            fields,
            encoding,
            payload,
        })
}

fn malformed(m: &str) -> Result<(), ProtocolError> {
    Err(ProtocolError::Malformed(m.to_owned()))
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn binary_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        checks::check_decode_binary(&bytes);
    }

    /// Kind 3 with a plausible header: the interesting region for length arithmetic.
    #[test]
    fn binary_kind3_small_lengths(
        header in prop::collection::vec(0u8..8, 5),
        enc in 0u8..3,
        body in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut bytes = vec![3u8];
        bytes.extend(header);
        bytes.push(enc);
        bytes.extend(body);
        checks::check_decode_binary(&bytes);
    }

    /// An honest frame decodes to exactly its fields.
    #[test]
    fn binary_honest_frames(push in arb_push()) {
        let bytes = push.bytes();
        let got = protocol::decode_binary(&bytes).map_err(|e| format!("{e:?}"));
        let got = got.unwrap();
        let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
        prop_assert_eq!(got.join_ref, opt(&push.fields[0]));
        prop_assert_eq!(got.msg_ref, opt(&push.fields[1]));
        prop_assert_eq!(&got.topic, &push.fields[2]);
        prop_assert_eq!(&got.event, &push.fields[3]);
        prop_assert_eq!(&got.metadata, &push.fields[4]);
        prop_assert_eq!(got.json, push.encoding == 1);
        prop_assert_eq!(&got.payload[..], &push.payload[..]);
        checks::check_decode_binary(&bytes);
    }

    /// One header length lies (any value, any field): lengths past the frame are the
    /// documented error; lengths that still fit shift the fields and may split a character.
    #[test]
    fn binary_lying_lengths(push in arb_push(), field in 0usize..5, lie in any::<u8>()) {
        let mut bytes = push.bytes();
        bytes[1 + field] = lie;
        let body = bytes.len() - checks::BINARY_HEADER;
        let sum: usize = bytes[1..6].iter().map(|&b| usize::from(b)).sum();
        let got = protocol::decode_binary(&bytes).map(|_| ());
        if sum > body {
            prop_assert_eq!(got, malformed("binary header lengths exceed the frame"));
        }
        checks::check_decode_binary(&bytes);
    }

    /// The frame cut anywhere: truncated header, or lengths past the end.
    #[test]
    fn binary_truncated(push in arb_push(), cut in any::<prop::sample::Index>()) {
        let bytes = push.bytes();
        let at = cut.index(bytes.len());
        let got = protocol::decode_binary(&bytes[..at]).map(|_| ());
        if at == 0 {
            prop_assert_eq!(got, malformed("empty binary frame"));
        } else if at < checks::BINARY_HEADER {
            prop_assert_eq!(got, malformed("binary header truncated"));
        }
        checks::check_decode_binary(&bytes[..at]);
    }

    #[test]
    fn binary_unknown_kinds(
        kind in any::<u8>(),
        rest in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        prop_assume!(kind != 3);
        let mut bytes = vec![kind];
        bytes.extend(rest);
        prop_assert_eq!(
            protocol::decode_binary(&bytes).map(|_| ()),
            Err(ProtocolError::UnsupportedBinaryKind(kind))
        );
        prop_assert_eq!(ProtocolError::UnsupportedBinaryKind(kind).code(), "UnsupportedMessage");
    }

    #[test]
    fn binary_unknown_encodings(push in arb_push(), enc in 2u8..=255) {
        let mut push = push;
        push.encoding = enc;
        prop_assert_eq!(
            protocol::decode_binary(&push.bytes()).map(|_| ()),
            malformed(&format!("unknown payload encoding {enc}"))
        );
    }

    #[test]
    fn binary_invalid_utf8_fields(
        push in arb_push(),
        field in 0usize..5,
        bad in prop::sample::select(vec![0xffu8, 0xc0, 0x80, 0xed]),
    ) {
        // A lone continuation/invalid byte in front of the field, keeping it <= 255 bytes.
        let mut f = push.fields[field].clone().into_bytes();
        f.truncate(254);
        f.insert(0, bad);
        let mut bytes = vec![3u8];
        for (i, other) in push.fields.iter().enumerate() {
            bytes.push(if i == field { f.len() as u8 } else { other.len() as u8 });
        }
        bytes.push(push.encoding);
        for (i, other) in push.fields.iter().enumerate() {
            if i == field {
                bytes.extend_from_slice(&f);
            } else {
                bytes.extend_from_slice(other.as_bytes());
            }
        }
        bytes.extend_from_slice(&push.payload);
        prop_assert_eq!(
            protocol::decode_binary(&bytes).map(|_| ()),
            malformed("binary header field is not UTF-8")
        );
        checks::check_decode_binary(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Filters

const OPS: &[&str] = &[
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "like",
    "ilike",
    "match",
    "imatch",
    "is",
    "isdistinct",
];
const BAD_OPS: &[&str] = &["", "EQ", "in ", "foo", "eq ", "between"];
const UNKNOWN_COLUMNS: &[&str] = &["nope", "ID", "name ", "id;drop", "ünï"];

/// Values for every column type, right and wrong; commas only inside brackets or quotes, so
/// segmentation is exact.
const VALUES: &[&str] = &[
    "0",
    "7",
    "-3",
    "42",
    " 7",
    "",
    "9223372036854775807",
    "9223372036854775808",
    "1.5",
    "abc",
    "NaN",
    "-Infinity",
    "1e309",
    "0.25",
    "-0",
    "12.50",
    "1e3",
    ".5",
    "true",
    "t",
    "yes",
    "off",
    "maybe",
    "TRUE",
    "null",
    "unknown",
    "alice",
    "Bob",
    "%li%",
    "a_ice",
    "*",
    "\"a,b\"",
    r#""x\"y""#,
    "\"\"",
    "MiXeD",
    "ab  ",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
    "a0eebc999c0b4ef8bb6d6bb9bd380a11",
    "2024-02-29",
    "2024-02-29T10:00:00",
    "2024-02-29 10:00:00+01",
    "2000-01-01T00:00:00.123456-08:30",
    "infinity",
    "-infinity",
    "2024-13-01",
    "10:00",
    "24:00:00",
    r#"{"a":[1,2],"b":null}"#,
    r#"[1,"x"]"#,
    "1e300",
    "{a,b,NULL}",
    "{{1,2},{3,4}}",
    "{}",
    r#"{"a b",c}"#,
    "^a(l|b)+i?ce$",
    "PG",
    "a{1000}{1000}",
    "(a+)+$",
    "happy",
    "1 day",
];
/// Values that break grouping (unbalanced brackets, open quotes): parse may go either way.
const WILD_VALUES: &[&str] = &["(", "[", "\\", "\"open", "a\"b", ")(", "x,y", "%\\"];

#[derive(Debug, Clone)]
struct Cond {
    text: String,
    /// Syntactically valid (known operator, non-empty column).
    valid: bool,
    /// Segmentation is exact (no value that breaks grouping).
    exact: bool,
}

fn arb_value() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        8 => prop::sample::select(VALUES).prop_map(|v| (v.to_owned(), true)),
        1 => prop::sample::select(WILD_VALUES).prop_map(|v| (v.to_owned(), false)),
        1 => "[a-zA-Z0-9 _:%*.-]{0,12}".prop_map(|v| (v, true)),
    ]
}

fn arb_cond() -> impl Strategy<Value = Cond> {
    let column = prop_oneof![
        6 => prop::sample::select(checks::COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
        1 => prop::sample::select(UNKNOWN_COLUMNS),
    ];
    let op = prop_oneof![
        8 => prop::sample::select(OPS).prop_map(|o| (o.to_owned(), true)),
        1 => prop::sample::select(BAD_OPS).prop_map(|o| (o.to_owned(), false)),
    ];
    let scalar =
        (op, arb_value()).prop_map(|((op, op_ok), (v, exact))| (format!("{op}.{v}"), op_ok, exact));
    let in_list = (
        prop_oneof![3 => 0usize..8, 1 => 95usize..=105],
        prop::collection::vec(
            prop_oneof![5 => arb_value(), 1 => Just(("NULL".to_owned(), true))],
            0..=105,
        ),
    )
        .prop_map(|(n, items)| {
            let items: Vec<_> = items.into_iter().take(n).collect();
            let exact = items.iter().all(|(_, e)| *e);
            let body: Vec<_> = items.into_iter().map(|(v, _)| v).collect();
            (format!("in.({})", body.join(",")), true, exact)
        });
    (
        column,
        any::<bool>(),
        prop_oneof![4 => scalar, 1 => in_list],
    )
        .prop_map(|(column, negated, (rest, op_ok, exact))| Cond {
            text: format!("{column}={}{rest}", if negated { "not." } else { "" }),
            valid: op_ok,
            exact,
        })
}

fn arb_filter() -> impl Strategy<Value = Vec<Cond>> {
    prop_oneof![
        6 => prop::collection::vec(arb_cond(), 1..5),
        1 => prop::collection::vec(arb_cond(), 95..110),
    ]
}

/// Postgres' three-valued logic for `id <op> v` with `id` = `w` (None = NULL).
fn int_cmp(op: &str, w: Option<i64>, v: i64) -> Option<bool> {
    let w = w?;
    Some(match op {
        "eq" => w == v,
        "neq" => w != v,
        "lt" => w < v,
        "lte" => w <= v,
        "gt" => w > v,
        "gte" => w >= v,
        _ => unreachable!("{op}"),
    })
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn filters_arbitrary_strings(text in any::<String>()) {
        checks::check_filter(&text, None);
    }

    #[test]
    fn filters_filter_alphabet(text in r#"[a-z_=.,()"\\ *%{}:!-]{0,40}"#) {
        checks::check_filter(&text, None);
    }

    #[test]
    fn filters_with_random_rows(text in prop::sample::select(vec![
        "id=eq.7", "name=eq.alice", "uid=eq.a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ok=eq.true",
        "code=eq.ab", "ci=eq.mixed", "nm=eq.pg", "small=eq.12", "o=eq.42", "n=in.(1,2,-3)",
        "f=gt.1", "amount=eq.12.5", "j=eq.{\"a\":[1,2],\"b\":null}", "tags=eq.{a,b,NULL}",
    ]), row in prop::collection::btree_map(
        prop::sample::select(checks::COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
        arb_json(), 0..6)
    ) {
        let row: Map<String, Value> = row.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        checks::check_filter(text, Some(&row));
    }
}

proptest! {
    #![proptest_config(config(100))]

    /// Filters from the grammar: valid ones parse (up to 100 conditions, 8192 bytes); the limits
    /// give their documented errors; bind and evaluation never panic and the eq index agrees.
    #[test]
    fn filters_from_grammar(conds in arb_filter()) {
        let text = conds.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(",");
        let parsed = filter::parse(&text);
        let exact = conds.iter().all(|c| c.exact);
        if text.len() > 8192 {
            prop_assert_eq!(parsed.clone().map(|_| ()), Err(FilterError::TooLong));
        } else if exact && conds.len() > 100 {
            prop_assert_eq!(parsed.clone().map(|_| ()), Err(FilterError::TooManyConditions));
        } else if exact && conds.iter().all(|c| c.valid) {
            prop_assert!(matches!(parsed, Ok(Some(_))), "{text:?}: {parsed:?}");
        } else if exact {
            prop_assert!(matches!(parsed, Err(FilterError::Syntax(_))), "{text:?}: {parsed:?}");
        }
        if let Ok(Some(f)) = &parsed {
            if let Err(e) = f.bind(checks::column_type) {
                prop_assert!(!e.code().is_empty());
                // With an unknown column the error need not be UnknownColumn (an earlier
                // condition may fail first); without one it must not be.
                if f.columns().all(|c| checks::column_type(c).is_some()) {
                    prop_assert!(!matches!(e, FilterError::UnknownColumn(_)), "{e:?}");
                }
            }
        }
        checks::check_filter(&text, None);
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// Exact semantics on an int8 column: comparisons, `not.`, NULL and missing values.
    #[test]
    fn filters_int_semantics(
        op in prop::sample::select(vec!["eq", "neq", "lt", "lte", "gt", "gte"]),
        negated in any::<bool>(),
        v in prop_oneof![any::<i64>(), -3i64..3],
        w in prop::option::of(prop_oneof![any::<i64>(), -3i64..3]),
        as_string in any::<bool>(),
    ) {
        let text = format!("id={}{op}.{v}", if negated { "not." } else { "" });
        let bound = filter::parse(&text).unwrap().unwrap().bind(checks::column_type).unwrap();
        let cell = match w {
            None => Value::Null,
            // A relay may ship Postgres text output for scalars.
            Some(w) if as_string => Value::String(w.to_string()),
            Some(w) => Value::from(w),
        };
        let row: Map<String, Value> = [("id".to_owned(), cell)].into_iter().collect();
        let truth = int_cmp(op, w, v).map(|t| t != negated);
        prop_assert_eq!(bound.matches(&row), truth == Some(true), "{} on {:?}", text, w);
        prop_assert!(!bound.matches(&Map::new()), "a missing column never matches");
        checks::check_filter(&text, Some(&row));
    }

    /// `in` with NULL items follows `= ANY`: a match is true, otherwise unknown if any item is
    /// NULL; `not.in` is never true on unknown. More than 100 values is the documented error.
    #[test]
    fn filters_in_semantics(
        items in prop::collection::vec(prop::option::of(-5i64..5), 0..120),
        negated in any::<bool>(),
        w in prop::option::of(-5i64..5),
    ) {
        let list: Vec<String> = items
            .iter()
            .map(|i| i.map_or_else(|| "NULL".to_owned(), |i| i.to_string()))
            .collect();
        let text = format!("id={}in.({})", if negated { "not." } else { "" }, list.join(","));
        let f = filter::parse(&text).unwrap().unwrap();
        let bound = f.bind(checks::column_type);
        if items.len() > 100 {
            prop_assert_eq!(bound.map(|_| ()).unwrap_err(), FilterError::TooManyInValues);
            return Ok(());
        }
        let bound = bound.unwrap();
        let row: Map<String, Value> =
            [("id".to_owned(), w.map_or(Value::Null, Value::from))].into_iter().collect();
        let truth = w.and_then(|w| {
            if items.contains(&Some(w)) {
                Some(true)
            } else if items.contains(&None) {
                None
            } else {
                Some(false)
            }
        });
        let expected = truth.map(|t| t != negated) == Some(true);
        prop_assert_eq!(bound.matches(&row), expected, "{} on {:?}", text, w);
    }
}
