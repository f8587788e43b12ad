//! The properties every fuzz input must satisfy, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the proptest suite (`tests/it/fuzz.rs` includes this file).
//!
//! Each `check_*` function accepts any input and panics only when pgrelay breaks a documented
//! property: a decoder panicking, an error of the wrong kind, a reply that is not valid JSON, a
//! decoded message that does not survive re-encoding, a filter whose hash-index key disagrees
//! with its evaluation.

use pgrelay::protocol::{self, ProtocolError, Vsn};
use pgrelay::route::filter::{self, FilterError};
use serde_json::{json, Map, Value};

/// Filter errors echo client text clipped to 100 characters (escaped), so every message stays
/// small whatever the filter; this is a generous bound on that.
const MAX_FILTER_ERROR_CHARS: usize = 4000;

// ---------------------------------------------------------------------------------------------
// Text frames (vsn 1.0.0 and 2.0.0)

/// A text frame decoded in both serializers.
pub fn check_decode_text(data: &[u8]) {
    // A WebSocket text frame is UTF-8 by the time it reaches the decoder.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for vsn in [Vsn::V1, Vsn::V2] {
        check_decoded(vsn, text, protocol::decode_text(vsn, text));
    }
}

/// What the relay does with a decode result must itself be well-formed: an error becomes a
/// `phx_reply` error that decodes, a message re-encodes to itself.
pub fn check_decoded(vsn: Vsn, text: &str, decoded: Result<protocol::Message, ProtocolError>) {
    match decoded {
        Err(e) => {
            assert!(
                matches!(e, ProtocolError::Malformed(_)),
                "decode_text({vsn:?}, {text:?}) returned {e:?}, not Malformed"
            );
            assert_eq!(e.code(), "MalformedMessage");
            // As the socket answers it (topic/ref salvaged or absent).
            let reason = format!("{}: {e}", e.code());
            let reply = protocol::reply_error(vsn, None, None, protocol::PHOENIX_TOPIC, &reason);
            let back = protocol::decode_text(vsn, &reply)
                .unwrap_or_else(|e| panic!("error reply {reply:?} does not decode: {e}"));
            assert_eq!(back.topic, protocol::PHOENIX_TOPIC);
            assert_eq!(back.event, "phx_reply");
            assert_eq!(
                back.payload,
                json!({"status":"error","response":{"reason":reason}})
            );
        }
        Ok(m) => {
            let payload = m.payload.to_string();
            let encoded = protocol::encode(
                vsn,
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                &m.topic,
                &m.event,
                &payload,
            );
            let back = protocol::decode_text(vsn, &encoded).unwrap_or_else(|e| {
                panic!("{text:?} decoded to {m:?}, re-encoded as {encoded:?}, which fails: {e}")
            });
            assert_eq!(back.join_ref, m.join_ref, "{text:?}");
            assert_eq!(back.msg_ref, m.msg_ref, "{text:?}");
            assert_eq!(back.topic, m.topic, "{text:?}");
            assert_eq!(back.event, m.event, "{text:?}");
            assert!(
                json_close(&back.payload, &m.payload),
                "{text:?}: payload {} came back as {}",
                m.payload,
                back.payload
            );
            // The replies the socket builds from a decoded message are valid frames too.
            let ok = protocol::reply_ok(
                vsn,
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                &m.topic,
                "{}",
            );
            let ok = protocol::decode_text(vsn, &ok)
                .unwrap_or_else(|e| panic!("reply_ok for {m:?} does not decode: {e}"));
            assert_eq!((ok.topic, ok.msg_ref), (m.topic.clone(), m.msg_ref.clone()));
            let sys = protocol::system(
                vsn,
                m.join_ref.as_deref(),
                &m.topic,
                "postgres_changes",
                "error",
                &m.event,
            );
            let sys = protocol::decode_text(vsn, &sys)
                .unwrap_or_else(|e| panic!("system for {m:?} does not decode: {e}"));
            assert_eq!(sys.payload["message"], Value::String(m.event.clone()));
        }
    }
}

/// JSON equality, except that floats may differ in the last bits: serde_json's default float
/// parser is not guaranteed to round-trip every `f64` exactly.
pub fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                    (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Binary frames

/// Header of a kind-3 frame: kind plus five lengths plus the payload encoding.
pub const BINARY_HEADER: usize = 7;

/// A binary frame: the decoder agrees with an independent reading of the layout, and a
/// decoded push re-encodes to exactly the input.
pub fn check_decode_binary(data: &[u8]) {
    let result = protocol::decode_binary(data);
    let expected = expected_binary(data);
    match (&result, &expected) {
        (Ok(push), Ok(())) => {
            let fields = [
                push.join_ref.as_deref().unwrap_or(""),
                push.msg_ref.as_deref().unwrap_or(""),
                &push.topic,
                &push.event,
                &push.metadata,
            ];
            let mut rebuilt = vec![3u8];
            for f in fields {
                rebuilt.push(u8::try_from(f.len()).expect("field longer than 255 bytes"));
            }
            rebuilt.push(u8::from(push.json));
            for f in fields {
                rebuilt.extend_from_slice(f.as_bytes());
            }
            rebuilt.extend_from_slice(&push.payload);
            assert_eq!(rebuilt, data, "{push:?} does not re-encode to its frame");
            // The socket answers a push with an error reply echoing its refs and topic.
            let reply = protocol::reply_error(
                Vsn::V2,
                push.join_ref.as_deref(),
                push.msg_ref.as_deref(),
                &push.topic,
                "UnsupportedMessage: broadcast is not supported by this relay yet",
            );
            let back = protocol::decode_text(Vsn::V2, &reply)
                .unwrap_or_else(|e| panic!("reply to {push:?} does not decode: {e}"));
            assert_eq!(back.topic, push.topic);
            assert_eq!(back.msg_ref, push.msg_ref);
        }
        (Err(got), Err(want)) => assert_eq!(got, want, "decode_binary({data:?})"),
        _ => panic!("decode_binary({data:?}) = {result:?}, expected {expected:?}"),
    }
}

/// The documented layout, read independently of `protocol::decode_binary`, with the errors it
/// documents for each way a frame can be wrong (checked in the same order).
pub fn expected_binary(data: &[u8]) -> Result<(), ProtocolError> {
    let malformed = |m: &str| Err(ProtocolError::Malformed(m.to_owned()));
    let Some(&kind) = data.first() else {
        return malformed("empty binary frame");
    };
    if kind != 3 {
        return Err(ProtocolError::UnsupportedBinaryKind(kind));
    }
    if data.len() < BINARY_HEADER {
        return malformed("binary header truncated");
    }
    let body = data.len() - BINARY_HEADER;
    let lens: Vec<usize> = data[1..6].iter().map(|&b| usize::from(b)).collect();
    if lens.iter().sum::<usize>() > body {
        return malformed("binary header lengths exceed the frame");
    }
    let mut at = BINARY_HEADER;
    for len in lens {
        if std::str::from_utf8(&data[at..at + len]).is_err() {
            return malformed("binary header field is not UTF-8");
        }
        at += len;
    }
    match data[6] {
        0 | 1 => Ok(()),
        other => malformed(&format!("unknown payload encoding {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Filters

/// The table every fuzzed filter is bound against: one column per comparison family.
pub const COLUMNS: &[(&str, &str)] = &[
    ("id", "int8"),
    ("n", "int4"),
    ("small", "int2"),
    ("o", "oid"),
    ("f", "float8"),
    ("r", "float4"),
    ("amount", "numeric"),
    ("ok", "bool"),
    ("name", "text"),
    ("v", "varchar"),
    ("code", "bpchar"),
    ("nm", "name"),
    ("ci", "citext"),
    ("uid", "uuid"),
    ("d", "date"),
    ("ts", "timestamp"),
    ("tstz", "timestamptz"),
    ("t", "time"),
    ("j", "jsonb"),
    ("js", "json"),
    ("tags", "_text"),
    ("nums", "_int4"),
    ("mood", "mood"),
    ("iv", "interval"),
];

/// `pg_type.typname` of a column of the fuzz table.
pub fn column_type(column: &str) -> Option<&'static str> {
    COLUMNS
        .iter()
        .find(|(name, _)| *name == column)
        .map(|(_, ty)| *ty)
}

/// Rows as `to_jsonb` renders them, plus rows of the wrong shape, all-NULL and empty.
pub fn rows() -> Vec<Map<String, Value>> {
    let rows = [
        json!({"id":7,"n":-3,"small":12,"o":42,"f":1.5,"r":0.25,"amount":12.5,"ok":true,
               "name":"alice","v":"Bob","code":"ab  ","nm":"pg","ci":"MiXeD",
               "uid":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","d":"2024-02-29",
               "ts":"2024-02-29T10:00:00","tstz":"2024-02-29T10:00:00+00:00","t":"10:00:00",
               "j":{"a":[1,2],"b":null},"js":[1,"x"],"tags":["a","b",null],
               "nums":[[1,2],[3,4]],"mood":"happy","iv":"1 day"}),
        json!({"id":-9223372036854775807i64,"n":0,"small":-32768,"o":4294967295u64,
               "f":"NaN","r":"-Infinity","amount":"NaN","ok":false,"name":"","v":"%_\\",
               "code":"","nm":"a-very-long-name-that-postgres-would-truncate-to-sixty-three-bytes!!",
               "ci":"","uid":"00000000-0000-0000-0000-000000000000","d":"infinity",
               "ts":"-infinity","tstz":"2000-01-01T00:00:00.123456-08:30","t":"24:00:00",
               "j":"text","js":null,"tags":[],"nums":[],"mood":"","iv":"-1 mons"}),
        json!({"id":"7","n":1.5,"small":true,"o":-1,"f":"x","r":[],"amount":{},"ok":"maybe",
               "name":5,"v":null,"code":[" "],"nm":{},"ci":1,"uid":"not-a-uuid","d":"2024-13-01",
               "ts":1,"tstz":"yesterday","t":"25:61","j":1e300,"js":{"":""},"tags":"{a,b}",
               "nums":[["x"]],"mood":false,"iv":[]}),
        Value::Object(
            COLUMNS
                .iter()
                .map(|(c, _)| ((*c).to_owned(), Value::Null))
                .collect(),
        ),
        json!({}),
    ];
    rows.into_iter()
        .filter_map(|r| match r {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Parse a filter, bind it to [`COLUMNS`], evaluate it on [`rows`] (and `extra_row`), and check
/// that its `eq` index key agrees with its evaluation.
pub fn check_filter(text: &str, extra_row: Option<&Map<String, Value>>) {
    let parsed = filter::parse(text);
    let filter = match parsed {
        Err(FilterError::TooLong) => {
            assert!(text.len() > 8192, "TooLong for {} bytes", text.len());
            return;
        }
        Err(e @ (FilterError::TooManyConditions | FilterError::Syntax(_))) => {
            assert!(text.len() <= 8192, "{e:?} for an over-long filter");
            check_filter_error(&e);
            return;
        }
        Err(other) => panic!("parse({text:?}) returned the bind-time error {other:?}"),
        Ok(None) => {
            assert!(text.trim().is_empty(), "parse({text:?}) = no filter");
            return;
        }
        Ok(Some(f)) => f,
    };
    assert!(text.len() <= 8192 && !text.trim().is_empty());
    let all_known = filter.columns().all(|c| column_type(c).is_some());
    let bound = match filter.bind(column_type) {
        Ok(b) => b,
        Err(e) => {
            assert!(
                !matches!(
                    e,
                    FilterError::Syntax(_) | FilterError::TooLong | FilterError::TooManyConditions
                ),
                "bind({text:?}) returned the parse-time error {e:?}"
            );
            if all_known {
                assert!(
                    !matches!(e, FilterError::UnknownColumn(_)),
                    "{text:?}: {e:?}"
                );
            }
            check_filter_error(&e);
            return;
        }
    };
    assert!(all_known, "{text:?} bound with an unknown column");
    let mut rows = rows();
    rows.extend(extra_row.cloned());
    for row in &rows {
        let matched = bound.matches(row);
        if let Some((column, key)) = bound.eq_index() {
            // The router finds these bindings by hash lookup instead of evaluating them: the
            // two must agree on every row.
            let typname = column_type(column).expect("indexed column is known");
            let row_key = row.get(column).and_then(|v| filter::index_key(typname, v));
            assert_eq!(
                matched,
                row_key.as_ref() == Some(key),
                "{text:?}: matches() and the eq index disagree on {row:?} (index key {key:?}, row key {row_key:?})"
            );
        }
    }
}

fn check_filter_error(e: &FilterError) {
    let text = e.to_string();
    assert!(
        text.chars().count() <= MAX_FILTER_ERROR_CHARS,
        "error text of {} chars",
        text.chars().count()
    );
    assert!(!e.code().is_empty());
}
