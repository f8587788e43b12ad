//! Query strings, parsed one way for every route: the socket's upgrade, the REST broadcast,
//! server-sent events and the JSON API.

use std::collections::HashMap;

/// `a=1&b=x%20y` → map. Only what the relay reads (`vsn`, `apikey`) matters; anything that does
/// not decode is kept raw.
pub(crate) fn parse_query(q: &str) -> HashMap<String, String> {
    query_pairs(q).into_iter().collect()
}

/// `a=1&b=x%20y` → pairs in order, percent-decoded (`+` is a space); anything that does not
/// decode is kept raw.
pub(crate) fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("apikey=a%2Bb&log_level=info&vsn=2.0.0&flag");
        assert_eq!(q["apikey"], "a+b");
        assert_eq!(q["vsn"], "2.0.0");
        assert_eq!(q["flag"], "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn pairs_keep_their_order() {
        assert_eq!(
            query_pairs("status=active&limit=5&x=a%20b+c"),
            vec![
                ("status".into(), "active".into()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b c".into())
            ]
        );
    }
}
