//! The Phoenix wire format spoken by `@supabase/realtime-js`: decoding client frames (vsn 1.0.0
//! JSON objects, vsn 2.0.0 JSON arrays and binary broadcast pushes) and encoding server frames.
//!
//! This module only turns bytes into [`Message`]s and back. What a message *does* is decided in
//! `channel`/`socket`.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

/// Topic of socket-level messages (heartbeat).
pub const PHOENIX_TOPIC: &str = "phoenix";
/// Every channel topic starts with this; the rest is the channel name ("sub-topic").
pub const TOPIC_PREFIX: &str = "realtime:";

/// Serializer version negotiated with `?vsn=` at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: every frame is a JSON object.
    V1,
    /// `2.0.0`: JSON arrays `[join_ref, ref, topic, event, payload]` plus binary broadcasts.
    V2,
}

impl Vsn {
    /// Phoenix's default is 1.0.0 when `vsn` is absent; supabase-js always sends 2.0.0.
    pub fn from_query(vsn: Option<&str>) -> Result<Vsn, ProtocolError> {
        match vsn {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(ProtocolError::UnsupportedVsn(
                other.chars().take(32).collect(),
            )),
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// What went wrong decoding a client frame. Each carries as much of the frame as could be read,
/// so the reply can still echo `topic` and `ref`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unsupported serializer version {0:?}: use 1.0.0 or 2.0.0")]
    UnsupportedVsn(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported binary message kind {0}")]
    UnsupportedBinaryKind(u8),
}

impl ProtocolError {
    /// Stable code for logs and `system` messages.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedVsn(_) => "UnsupportedSerializer",
            ProtocolError::Malformed(_) => "MalformedMessage",
            ProtocolError::UnsupportedBinaryKind(_) => "UnsupportedMessage",
        }
    }
}

/// Refs are strings holding a counter, but be lenient with other JSON scalars so a foreign
/// client's number still gets an echo it can match.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RefValue {
    Str(String),
    Num(serde_json::Number),
    Null,
}

impl RefValue {
    fn into_option(self) -> Option<String> {
        match self {
            RefValue::Str(s) => Some(s),
            RefValue::Num(n) => Some(n.to_string()),
            RefValue::Null => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct V1Frame {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Value,
    #[serde(rename = "ref")]
    msg_ref: Option<RefValue>,
    join_ref: Option<RefValue>,
}

#[derive(Debug, Deserialize)]
struct V2Frame(Option<RefValue>, Option<RefValue>, String, String, Value);

/// Decode a text frame in the socket's serializer.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Message, ProtocolError> {
    match vsn {
        Vsn::V1 => {
            let f: V1Frame = serde_json::from_str(text).map_err(malformed)?;
            Ok(Message {
                join_ref: f.join_ref.and_then(RefValue::into_option),
                msg_ref: f.msg_ref.and_then(RefValue::into_option),
                topic: f.topic,
                event: f.event,
                payload: f.payload,
            })
        }
        Vsn::V2 => {
            // Other SDKs send v1-style objects on a v2 socket; accept both shapes.
            if text.trim_start().starts_with('{') {
                return decode_text(Vsn::V1, text);
            }
            let V2Frame(join_ref, msg_ref, topic, event, payload) =
                serde_json::from_str(text).map_err(malformed)?;
            Ok(Message {
                join_ref: join_ref.and_then(RefValue::into_option),
                msg_ref: msg_ref.and_then(RefValue::into_option),
                topic,
                event,
                payload,
            })
        }
    }
}

fn malformed(err: serde_json::Error) -> ProtocolError {
    ProtocolError::Malformed(err.to_string())
}

/// Binary frame kind 3: a user broadcast pushed by the client (vsn 2.0.0 sends every
/// `channel.send({type:'broadcast'})` this way).
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryPush {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    /// Whitelisted metadata as JSON text (empty when absent).
    pub metadata: String,
    /// `true` when the payload is JSON text, `false` for raw bytes.
    pub json: bool,
    pub payload: bytes::Bytes,
}

/// Decode a binary frame. Only kind 3 is defined from client to server.
pub fn decode_binary(frame: &[u8]) -> Result<BinaryPush, ProtocolError> {
    const HEADER: usize = 7;
    let kind = *frame
        .first()
        .ok_or_else(|| ProtocolError::Malformed("empty binary frame".into()))?;
    if kind != 3 {
        return Err(ProtocolError::UnsupportedBinaryKind(kind));
    }
    let header = frame
        .get(..HEADER)
        .ok_or_else(|| ProtocolError::Malformed("binary header truncated".into()))?;
    let lens = [header[1], header[2], header[3], header[4], header[5]].map(usize::from);
    let encoding = header[6];
    let mut rest = &frame[HEADER..];
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for (field, len) in fields.iter_mut().zip(lens) {
        if rest.len() < len {
            return Err(ProtocolError::Malformed(
                "binary header lengths exceed the frame".into(),
            ));
        }
        let (head, tail) = rest.split_at(len);
        *field = head;
        rest = tail;
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::Malformed("binary header field is not UTF-8".into()))
    };
    let opt = |s: String| if s.is_empty() { None } else { Some(s) };
    Ok(BinaryPush {
        join_ref: opt(text(fields[0])?),
        msg_ref: opt(text(fields[1])?),
        topic: text(fields[2])?,
        event: text(fields[3])?,
        metadata: text(fields[4])?,
        json: match encoding {
            0 => false,
            1 => true,
            other => {
                return Err(ProtocolError::Malformed(format!(
                    "unknown payload encoding {other}"
                )))
            }
        },
        payload: bytes::Bytes::copy_from_slice(rest),
    })
}

/// Encode one server frame. `payload` must already be JSON text; it is embedded verbatim so a
/// row serialized once can be shared by every frame that carries it.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let mut out = String::with_capacity(payload.len() + topic.len() + event.len() + 64);
    match vsn {
        Vsn::V2 => {
            out.push('[');
            push_opt_str(&mut out, join_ref);
            out.push(',');
            push_opt_str(&mut out, msg_ref);
            out.push(',');
            push_str(&mut out, topic);
            out.push(',');
            push_str(&mut out, event);
            out.push(',');
            out.push_str(payload);
            out.push(']');
        }
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_str(&mut out, topic);
            out.push_str(",\"event\":");
            push_str(&mut out, event);
            out.push_str(",\"payload\":");
            out.push_str(payload);
            out.push_str(",\"ref\":");
            push_opt_str(&mut out, msg_ref);
            out.push_str(",\"join_ref\":");
            push_opt_str(&mut out, join_ref);
            out.push('}');
        }
    }
    out
}

/// Append `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    // serde_json's escaping is the reference; writing into a String cannot fail.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// `phx_reply` with status ok and the given response object (JSON text).
pub fn reply_ok(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    response: &str,
) -> String {
    let payload = format!("{{\"status\":\"ok\",\"response\":{response}}}");
    encode(vsn, join_ref, msg_ref, topic, "phx_reply", &payload)
}

/// `phx_reply` with status error and `{"reason": reason}`.
pub fn reply_error(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    reason: &str,
) -> String {
    let mut payload = String::from("{\"status\":\"error\",\"response\":{\"reason\":");
    push_str(&mut payload, reason);
    payload.push_str("}}");
    encode(vsn, join_ref, msg_ref, topic, "phx_reply", &payload)
}

/// A `system` message: `{"channel","extension","message","status"}`.
pub fn system(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    extension: &str,
    status: &str,
    message: &str,
) -> String {
    let mut payload = String::from("{\"channel\":");
    push_str(&mut payload, subtopic(topic));
    payload.push_str(",\"extension\":");
    push_str(&mut payload, extension);
    payload.push_str(",\"message\":");
    push_str(&mut payload, message);
    payload.push_str(",\"status\":");
    push_str(&mut payload, status);
    payload.push('}');
    encode(vsn, join_ref, None, topic, "system", &payload)
}

/// `postgres_changes` event for one channel: `{"ids":[…],"data":<data>}`; `data` is shared
/// JSON text built once per change.
pub fn postgres_changes(vsn: Vsn, topic: &str, ids: &[u32], data: &str) -> String {
    let mut payload = String::with_capacity(data.len() + 16 + ids.len() * 11);
    payload.push_str("{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        let _ = write!(payload, "{id}");
    }
    payload.push_str("],\"data\":");
    payload.push_str(data);
    payload.push('}');
    encode(vsn, None, None, topic, "postgres_changes", &payload)
}

/// Binary frame kind 4: a user broadcast with a raw payload, for vsn 2.0.0 clients. `None` when
/// the topic or event is longer than the one-byte length fields allow.
pub fn binary_broadcast(topic: &str, event: &str, payload: &[u8]) -> Option<bytes::Bytes> {
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(event.len()).ok()?;
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + payload.len());
    out.extend_from_slice(&[4, topic_len, event_len, 0, 0]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(payload);
    Some(out.into())
}

/// At most `max` characters of `s`, for echoing client or payload text in replies and logs.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The channel name without the `realtime:` prefix.
pub fn subtopic(topic: &str) -> &str {
    topic.strip_prefix(TOPIC_PREFIX).unwrap_or(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_v2_array() {
        let m = decode_text(
            Vsn::V2,
            r#"["6","6","realtime:room1","phx_join",{"config":{}}]"#,
        )
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("6"));
        assert_eq!(m.msg_ref.as_deref(), Some("6"));
        assert_eq!(m.topic, "realtime:room1");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload, json!({"config":{}}));
        let hb = decode_text(Vsn::V2, r#"[null,"10","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(hb.join_ref, None);
        assert_eq!(hb.msg_ref.as_deref(), Some("10"));
    }

    #[test]
    fn decodes_v1_object_with_missing_join_ref() {
        let m = decode_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}"#,
        )
        .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.msg_ref.as_deref(), Some("3"));
        assert_eq!(m.topic, "phoenix");
    }

    #[test]
    fn numeric_refs_become_strings() {
        let m = decode_text(Vsn::V2, r#"[1,2,"t","e",{}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.msg_ref.as_deref(), Some("2"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "[",
            "[1,2,3]",
            r#"["a","b","c"]"#,
            r#"[null,null,5,"e",{}]"#,
            "{}",
            r#"{"topic":1}"#,
            "\"str\"",
        ] {
            assert!(
                matches!(decode_text(Vsn::V2, bad), Err(ProtocolError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn encodes_both_vsns() {
        assert_eq!(
            reply_ok(Vsn::V2, Some("6"), Some("7"), "realtime:a", "{}"),
            r#"["6","7","realtime:a","phx_reply",{"status":"ok","response":{}}]"#
        );
        let v1 = reply_error(Vsn::V1, None, Some("7"), "realtime:\"a\"", "no \"way\"");
        let parsed: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(
            parsed,
            json!({"topic":"realtime:\"a\"","event":"phx_reply","ref":"7","join_ref":null,
                   "payload":{"status":"error","response":{"reason":"no \"way\""}}})
        );
    }

    #[test]
    fn encodes_system_and_changes() {
        let s = system(
            Vsn::V2,
            Some("6"),
            "realtime:room1",
            "postgres_changes",
            "ok",
            "Subscribed to PostgreSQL",
        );
        assert_eq!(
            s,
            r#"["6",null,"realtime:room1","system",{"channel":"room1","extension":"postgres_changes","message":"Subscribed to PostgreSQL","status":"ok"}]"#
        );
        let c = postgres_changes(Vsn::V2, "realtime:r", &[5, 7], r#"{"type":"INSERT"}"#);
        assert_eq!(
            c,
            r#"[null,null,"realtime:r","postgres_changes",{"ids":[5,7],"data":{"type":"INSERT"}}]"#
        );
    }

    #[test]
    fn decodes_binary_push() {
        let mut f = vec![3u8, 1, 1, 14, 6, 0, 1];
        f.extend_from_slice(b"67realtime:room1cursor{\"x\":42}");
        let p = decode_binary(&f).unwrap();
        assert_eq!(p.join_ref.as_deref(), Some("6"));
        assert_eq!(p.msg_ref.as_deref(), Some("7"));
        assert_eq!(p.topic, "realtime:room1");
        assert_eq!(p.event, "cursor");
        assert!(p.json);
        assert_eq!(&p.payload[..], b"{\"x\":42}");
    }

    #[test]
    fn binary_lengths_that_lie_are_errors() {
        assert!(decode_binary(&[]).is_err());
        assert!(decode_binary(&[3, 1]).is_err());
        assert!(decode_binary(&[3, 200, 1, 1, 1, 0, 1, b'a']).is_err());
        assert_eq!(
            decode_binary(&[0, 1, 2]),
            Err(ProtocolError::UnsupportedBinaryKind(0))
        );
        assert!(decode_binary(&[3, 0, 0, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn encodes_binary_broadcast() {
        let b = binary_broadcast("realtime:room1", "cursor", b"\x01\x02").unwrap();
        assert_eq!(&b[..5], &[4, 14, 6, 0, 0]);
        assert_eq!(&b[5..19], b"realtime:room1");
        assert_eq!(&b[19..25], b"cursor");
        assert_eq!(&b[25..], b"\x01\x02");
        assert!(binary_broadcast(&"x".repeat(256), "e", b"").is_none());
    }

    #[test]
    fn vsn_from_query() {
        assert_eq!(Vsn::from_query(Some("2.0.0")), Ok(Vsn::V2));
        assert_eq!(Vsn::from_query(None), Ok(Vsn::V1));
        assert!(Vsn::from_query(Some("3.0.0")).is_err());
    }
}
