//! Postgres array literal syntax (`{a,"b c",NULL,{1,2}}`), as `array_in` reads it, into
//! untyped elements; `typed` casts them to the element type.

/// Postgres' MAXDIM; also bounds recursion when parsing array literals and JSON arrays.
pub(super) const MAX_ARRAY_DEPTH: usize = 6;

/// One element of a Postgres array literal before casting.
#[derive(Debug)]
pub(super) enum LitElem {
    Null,
    Text(String),
    Nested(Vec<LitElem>),
}

/// Postgres array input syntax: `{a,"b c",NULL,{1,2}}`.
pub(super) fn parse_array_literal(text: &str) -> Option<Vec<LitElem>> {
    let mut chars = text.trim().chars().peekable();
    let elems = parse_array_level(&mut chars, 1)?;
    chars.next().is_none().then_some(elems)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_ws(chars: &mut Chars) {
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
}

fn parse_array_level(chars: &mut Chars, depth: usize) -> Option<Vec<LitElem>> {
    if depth > MAX_ARRAY_DEPTH || chars.next() != Some('{') {
        return None;
    }
    skip_ws(chars);
    let mut elems = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(elems);
    }
    loop {
        skip_ws(chars);
        let elem = match chars.peek() {
            Some('{') => LitElem::Nested(parse_array_level(chars, depth + 1)?),
            Some('"') => {
                chars.next();
                let mut out = String::new();
                loop {
                    match chars.next()? {
                        '\\' => out.push(chars.next()?),
                        '"' => break,
                        c => out.push(c),
                    }
                }
                LitElem::Text(out)
            }
            _ => {
                let mut out = String::new();
                let mut keep = 0;
                let mut escaped_any = false;
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '}' => break,
                        '{' | '"' => return None,
                        '\\' => {
                            chars.next();
                            out.push(chars.next()?);
                            keep = out.len();
                            escaped_any = true;
                            continue;
                        }
                        c => {
                            out.push(c);
                            if !c.is_whitespace() {
                                keep = out.len();
                            }
                        }
                    }
                    chars.next();
                }
                out.truncate(keep);
                if out.is_empty() {
                    return None;
                }
                if !escaped_any && out.eq_ignore_ascii_case("null") {
                    LitElem::Null
                } else {
                    LitElem::Text(out)
                }
            }
        };
        elems.push(elem);
        skip_ws(chars);
        match chars.next()? {
            ',' => {}
            '}' => break,
            _ => return None,
        }
    }
    // Postgres rejects mixing sub-arrays and scalars at one level.
    let nested = elems
        .iter()
        .filter(|e| matches!(e, LitElem::Nested(_)))
        .count();
    (nested == 0 || nested == elems.len()).then_some(elems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literal_rules() {
        for bad in [
            "",
            "{",
            "}",
            "{1",
            "{1,}",
            "{,1}",
            "{1,,2}",
            "{1}x",
            "{1,{2}}",
            "{a\"b}",
            "1,2",
            "{{{{{{{1}}}}}}}",
        ] {
            assert!(parse_array_literal(bad).is_none(), "{bad}");
        }
        assert!(parse_array_literal("{{{{{{1}}}}}}").is_some());
        assert!(parse_array_literal(r#" { "x\"" , y } "#).is_some());
    }
}
