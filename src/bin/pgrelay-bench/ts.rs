//! Reading the send timestamp out of a change without parsing the whole frame: find the
//! `"record"` key, then the first timestamp key inside it, then parse PostgreSQL's ISO 8601
//! output (`2026-11-27T01:02:03.123456+00:00`, any offset, 0–6 fraction digits).
//!
//! Works on both the relay's frames (compact JSON, `old_record` before `record`) and the raw
//! trigger payloads of the baseline (`json_build_object` style `"key" : value` with spaces,
//! `record` before `old_record`): `"record"` with both quotes never matches `"old_record"`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, from the same clock PostgreSQL's `clock_timestamp()` reads.
pub(crate) fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Position of `needle` in `hay`, searching from the end.
pub(crate) fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let last = needle[needle.len() - 1];
    let mut end = hay.len();
    while end >= needle.len() {
        // Jump to the previous occurrence of the needle's last byte.
        let p = hay[..end].iter().rposition(|&b| b == last)?;
        if p + 1 >= needle.len() && &hay[p + 1 - needle.len()..=p] == needle {
            return Some(p + 1 - needle.len());
        }
        end = p;
    }
    None
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut start = 0;
    while start + needle.len() <= hay.len() {
        let p = start + hay[start..].iter().position(|&b| b == first)?;
        if hay.len() - p >= needle.len() && &hay[p..p + needle.len()] == needle {
            return Some(p);
        }
        start = p + 1;
    }
    None
}

/// The send timestamp of a change: the first of `keys` (each given with its quotes, e.g.
/// `"started_at"`) that holds a string inside the `record` object. `None` if there is no record
/// or none of the keys holds a timestamp.
pub(crate) fn change_ts_us(frame: &[u8], keys: &[&[u8]]) -> Option<i64> {
    let rec = rfind(frame, b"\"record\"")? + 8;
    let body = frame.get(rec..)?;
    for key in keys {
        let Some(p) = find(body, key) else { continue };
        let mut i = p + key.len();
        while body.get(i) == Some(&b' ') {
            i += 1;
        }
        if body.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while body.get(i) == Some(&b' ') {
            i += 1;
        }
        if body.get(i) != Some(&b'"') {
            continue; // null: try the next key
        }
        return parse_ts_us(body.get(i + 1..)?);
    }
    None
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
    let mut v = 0i64;
    for &b in s.get(at..at + n)? {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DD[T ]HH:MM:SS[.ffffff](Z|±HH[:MM[:SS]])` (what PostgreSQL prints for a
/// `timestamptz`, in JSON or text) into microseconds since the epoch. Anything after the
/// offset (the closing quote) is ignored.
pub(crate) fn parse_ts_us(s: &[u8]) -> Option<i64> {
    let year = digits(s, 0, 4)?;
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    if !matches!(s.get(10), Some(b'T' | b' ')) || s.get(13) != Some(&b':') {
        return None;
    }
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    if s.get(16) != Some(&b':') {
        return None;
    }
    let second = digits(s, 17, 2)?;
    let mut i = 19;
    let mut micros = 0i64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let mut n = 0;
        while let Some(&b) = s.get(i) {
            if !b.is_ascii_digit() {
                break;
            }
            if n < 6 {
                micros = micros * 10 + i64::from(b - b'0');
                n += 1;
            }
            i += 1;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_s = match s.get(i) {
        Some(b'Z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let h = digits(s, i + 1, 2)?;
            let mut off = h * 3600;
            if s.get(i + 3) == Some(&b':') {
                off += digits(s, i + 4, 2)? * 60;
                if s.get(i + 6) == Some(&b':') {
                    off += digits(s, i + 7, 2)?;
                }
            }
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_us(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_micros())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn parses_postgres_timestamps() {
        for s in [
            "2026-11-27T01:02:03.123456+00:00",
            "2026-11-27T01:02:03.1+00:00",
            "2026-11-27T01:02:03+00:00",
            "2026-11-27T07:32:54.418544+05:30",
            "1999-02-28T23:59:59.999999-08:00",
            "2024-02-29T12:00:00.5Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_ts_us(s.as_bytes()), Some(chrono_us(s)), "{s}");
        }
        assert_eq!(
            parse_ts_us(b"2026-11-27T01:02:03.123456+00\""),
            Some(chrono_us("2026-11-27T01:02:03.123456+00:00"))
        );
        assert_eq!(parse_ts_us(b"2026-11-27"), None);
        assert_eq!(parse_ts_us(b"not a time"), None);
    }

    #[test]
    fn finds_the_record_timestamp_in_a_relay_frame() {
        let frame = br#"[null,null,"realtime:bench","postgres_changes",{"ids":[1],"data":{"columns":[{"name":"started_at","type":"timestamptz"}],"commit_timestamp":"2026-11-27T01:02:03.123Z","errors":null,"old_record":{"ended_at":null,"started_at":"2020-01-01T00:00:00+00:00"},"record":{"ended_at":"2026-11-27T01:02:04.5+00:00","id":"x","started_at":"2026-11-27T01:02:03.123456+00:00"},"schema":"public","table":"button_holds","type":"UPDATE"}}]"#;
        assert_eq!(
            change_ts_us(frame, &[b"\"started_at\""]),
            Some(chrono_us("2026-11-27T01:02:03.123456+00:00"))
        );
        assert_eq!(
            change_ts_us(frame, &[b"\"ended_at\"", b"\"started_at\""]),
            Some(chrono_us("2026-11-27T01:02:04.5+00:00"))
        );
        assert_eq!(change_ts_us(frame, &[b"\"created_at\""]), None);
    }

    #[test]
    fn finds_the_record_timestamp_in_a_trigger_payload() {
        let payload = br#"{"v" : 1, "seq" : 5, "schema" : "public", "table" : "button_holds", "type" : "INSERT", "commit_timestamp" : "2026-11-27T01:02:03.123Z", "record" : {"id": "x", "poll_id": 1, "user_id": "y", "ended_at": null, "is_active": true, "started_at": "2026-11-27T01:02:03.123456+00:00"}}"#;
        assert_eq!(
            change_ts_us(payload, &[b"\"ended_at\"", b"\"started_at\""]),
            Some(chrono_us("2026-11-27T01:02:03.123456+00:00"))
        );
    }

    #[test]
    fn byte_search() {
        assert_eq!(find(b"abcabc", b"ca"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(rfind(b"abcabc", b"ab"), Some(3));
        assert_eq!(rfind(b"xx\"old_record\"", b"\"record\""), None);
        assert_eq!(rfind(b"\"record\"", b"\"record\""), Some(0));
    }
}
