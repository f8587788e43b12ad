//! Postgres' text input for the scalar types a filter compares, as `float8in`, `boolin`,
//! `uuid_in`, `numeric_in` and the date and time inputs read it.
//!
//! The same text must mean here what it means to Postgres, or a filter would let through rows
//! that SQL would not. Filter values and rows shipped as text both come through here, so every
//! parser returns `None` on garbage rather than panicking.

use std::cmp::Ordering;

use chrono::{Datelike, NaiveDate};

pub(super) const MICROS_PER_SECOND: i64 = 1_000_000;
pub(super) const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// `NaiveDate::num_days_from_ce()` of 1970-01-01.
pub(super) const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

pub(super) fn parse_float(text: &str, single: bool) -> Option<f64> {
    let t = text.trim();
    let v = if single {
        f64::from(t.parse::<f32>().ok()?)
    } else {
        t.parse::<f64>().ok()?
    };
    // Rust saturates overflow to infinity where Postgres reports "out of range".
    if v.is_infinite() && !t.to_ascii_lowercase().contains("inf") {
        return None;
    }
    Some(v)
}

/// Postgres `boolin`: t/true/y/yes/on/1 and f/false/n/no/off/0, any unique prefix.
pub(super) fn parse_bool(text: &str) -> Option<bool> {
    let word = text.trim().to_ascii_lowercase();
    match word.as_str() {
        "" => None,
        "1" | "on" => Some(true),
        "0" | "of" | "off" => Some(false),
        w if "true".starts_with(w) || "yes".starts_with(w) => Some(true),
        w if "false".starts_with(w) || "no".starts_with(w) => Some(false),
        _ => None,
    }
}

/// Postgres `uuid_in`: 32 hex digits, optional braces, a hyphen allowed after any group of 4.
pub(super) fn parse_uuid(text: &str) -> Option<u128> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut value: u128 = 0;
    let mut digits = 0u32;
    let mut hyphen_ok = false;
    for c in inner.chars() {
        if c == '-' {
            if !hyphen_ok || digits == 32 {
                return None;
            }
            hyphen_ok = false;
            continue;
        }
        let d = c.to_digit(16)?;
        if digits == 32 {
            return None;
        }
        value = (value << 4) | u128::from(d);
        digits += 1;
        hyphen_ok = digits % 4 == 0;
    }
    (digits == 32).then_some(value)
}

/// Exact decimal for `numeric`, so `1.10 = 1.1` and large values keep their digits.
/// Finite values are normalised (no leading/trailing zeros; zero is non-negative), which
/// makes the derived equality numeric equality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decimal {
    NegInfinity,
    /// Value = ±0.DIGITS × 10^exponent.
    Finite {
        negative: bool,
        exponent: i64,
        digits: Vec<u8>,
    },
    PosInfinity,
    /// Postgres sorts NaN above everything and considers it equal to itself.
    NaN,
}

impl Decimal {
    pub(super) fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "nan" => return Some(Decimal::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Decimal::PosInfinity),
            "-infinity" | "-inf" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        let mut cur = Cursor::new(t);
        let negative = if cur.eat(b'-') {
            true
        } else {
            cur.eat(b'+');
            false
        };
        let mut digits = Vec::new();
        let mut int_len: i64 = 0;
        let mut seen_point = false;
        while let Some(c) = cur.peek() {
            match c {
                b'0'..=b'9' => {
                    digits.push(c - b'0');
                    if !seen_point {
                        int_len += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => break,
            }
            cur.pos += 1;
        }
        if digits.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if cur.eat(b'e') || cur.eat(b'E') {
            let exp_negative = if cur.eat(b'-') {
                true
            } else {
                cur.eat(b'+');
                false
            };
            exp = cur.number(1, 6)?;
            if exp_negative {
                exp = -exp;
            }
        }
        if !cur.at_end() {
            return None;
        }
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Decimal::Finite {
                negative: false,
                exponent: 0,
                digits,
            });
        }
        let exponent = int_len - i64::try_from(leading).ok()? + exp;
        Some(Decimal::Finite {
            negative,
            exponent,
            digits,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::PosInfinity => 2,
            Decimal::NaN => 3,
        }
    }

    pub(super) fn compare(&self, other: &Decimal) -> Ordering {
        let (
            Decimal::Finite {
                negative: an,
                exponent: ae,
                digits: ad,
            },
            Decimal::Finite {
                negative: bn,
                exponent: be,
                digits: bd,
            },
        ) = (self, other)
        else {
            return self.rank().cmp(&other.rank());
        };
        let sign = |negative: bool, digits: &[u8]| match (digits.is_empty(), negative) {
            (true, _) => 0i8,
            (false, true) => -1,
            (false, false) => 1,
        };
        let (sa, sb) = (sign(*an, ad), sign(*bn, bd));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        // Normalised digits make lexicographic order the magnitude order at equal exponent.
        let magnitude = ae.cmp(be).then_with(|| ad.cmp(bd));
        if sa < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

/// Byte cursor for the small hand-written grammars (numbers, dates, times).
#[derive(Debug)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek_digit(&self) -> bool {
        self.peek().is_some_and(|b| b.is_ascii_digit())
    }

    /// Between `min` and `max` (≤ 6, so no overflow) decimal digits.
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let mut value = 0i64;
        let mut count = 0;
        while count < max {
            match self.peek() {
                Some(d @ b'0'..=b'9') => {
                    value = value * 10 + i64::from(d - b'0');
                    self.pos += 1;
                    count += 1;
                }
                _ => break,
            }
        }
        (count >= min).then_some(value)
    }

    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Moment {
    NegInfinity,
    PosInfinity,
    At {
        /// Days since 1970-01-01 of the written (local) date.
        days: i64,
        time_us: i64,
        /// Seconds east of UTC; 0 when absent (the session time zone is UTC).
        offset_s: i64,
    },
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][ ][Z|UTC|GMT|±HH[[:]MM[[:]SS]]]` and ±infinity.
pub(super) fn parse_moment(text: &str) -> Option<Moment> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(Moment::PosInfinity),
        "-infinity" => return Some(Moment::NegInfinity),
        _ => {}
    }
    let mut cur = Cursor::new(t);
    let year = cur.number(4, 6)?;
    if year < 1 || !cur.eat(b'-') {
        return None;
    }
    let month = cur.number(1, 2)?;
    if !cur.eat(b'-') {
        return None;
    }
    let day = cur.number(1, 2)?;
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )?;
    let days = i64::from(date.num_days_from_ce()) - UNIX_EPOCH_DAYS_FROM_CE;
    if cur.at_end() {
        return Some(Moment::At {
            days,
            time_us: 0,
            offset_s: 0,
        });
    }
    if !(cur.eat(b'T') || cur.eat(b't') || cur.eat(b' ')) {
        return None;
    }
    cur.skip_spaces();
    let time_us = parse_clock(&mut cur)?;
    let offset_s = parse_zone(&mut cur)?;
    Some(Moment::At {
        days,
        time_us,
        offset_s,
    })
}

/// `HH:MM[:SS[.frac]]` in microseconds, fraction rounded to microseconds like Postgres.
fn parse_clock(cur: &mut Cursor) -> Option<i64> {
    let hour = cur.number(1, 2)?;
    if !cur.eat(b':') {
        return None;
    }
    let minute = cur.number(2, 2)?;
    let mut second = 0;
    let mut frac_us = 0;
    if cur.eat(b':') {
        second = cur.number(2, 2)?;
        if cur.eat(b'.') {
            let mut scale = 100_000;
            let mut count = 0;
            while let Some(d @ b'0'..=b'9') = cur.peek() {
                let d = i64::from(d - b'0');
                if count < 6 {
                    frac_us += d * scale;
                    scale /= 10;
                } else if count == 6 && d >= 5 {
                    frac_us += 1;
                }
                count += 1;
                cur.pos += 1;
            }
            if count == 0 {
                return None;
            }
        }
    }
    let midnight_24 = hour == 24 && minute == 0 && second == 0 && frac_us == 0;
    if (hour > 23 && !midnight_24) || minute > 59 || second > 60 {
        return None;
    }
    Some(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + frac_us)
}

fn parse_zone(cur: &mut Cursor) -> Option<i64> {
    cur.skip_spaces();
    let offset = match cur.peek() {
        None => return Some(0),
        Some(b'Z' | b'z') => {
            cur.pos += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            cur.pos += 1;
            let hours = cur.number(1, 2)?;
            let mut minutes = 0;
            let mut seconds = 0;
            if cur.eat(b':') || cur.peek_digit() {
                minutes = cur.number(2, 2)?;
                if cur.eat(b':') || cur.peek_digit() {
                    seconds = cur.number(2, 2)?;
                }
            }
            if hours > 15 || minutes > 59 || seconds > 59 {
                return None;
            }
            let total = (hours * 60 + minutes) * 60 + seconds;
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
        Some(_) => {
            let rest = cur.rest();
            if rest.eq_ignore_ascii_case(b"utc") || rest.eq_ignore_ascii_case(b"gmt") {
                cur.pos = cur.bytes.len();
                0
            } else {
                return None;
            }
        }
    };
    cur.at_end().then_some(offset)
}

pub(super) fn parse_time_only(text: &str) -> Option<i64> {
    let mut cur = Cursor::new(text.trim());
    let us = parse_clock(&mut cur)?;
    cur.at_end().then_some(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_parse_and_order() {
        let d = |t: &str| match Decimal::parse(t) {
            Some(d) => d,
            None => panic!("{t}"),
        };
        assert_eq!(d("1.10"), d("001.1"));
        assert_eq!(d(".5"), d("5e-1"));
        assert_eq!(d("5."), d("+0.5E1"));
        assert_eq!(d("0"), d("-0.000"));
        let ordered = [
            "-Infinity",
            "-1e5",
            "-10",
            "-9.99",
            "-0.001",
            "0",
            "1e-9",
            "0.5",
            "1",
            "10",
            "1e5",
            "Infinity",
            "NaN",
        ];
        for pair in ordered.windows(2) {
            if let [a, b] = pair {
                assert_eq!(d(a).compare(&d(b)), Ordering::Less, "{a} < {b}");
                assert_eq!(d(b).compare(&d(a)), Ordering::Greater, "{b} > {a}");
            }
        }
        for bad in [
            "",
            "-",
            ".",
            "1e",
            "e5",
            "1.2.3",
            "1e1234567",
            "0x10",
            "1 2",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuid_input_rules() {
        let ok = [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
        ];
        for text in ok {
            assert_eq!(
                parse_uuid(text),
                Some(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11),
                "{text}"
            );
        }
        let bad = [
            "",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
            "a0eebc99--9c0b4ef8bb6d6bb9bd380a11",
            "a0eeb-c999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a1",
            "a0eebc999c0b4ef8bb6d6bb9bd380a111",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
            " a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ];
        for text in bad {
            assert_eq!(parse_uuid(text), None, "{text}");
        }
    }

    #[test]
    fn moment_input_rules() {
        for bad in [
            "",
            "2025",
            "2025-05",
            "25-05-01",
            "0000-01-01",
            "2025-13-01",
            "2025-02-29",
            "2025-05-01X12:00",
            "2025-05-01T12",
            "2025-05-01T12:60",
            "2025-05-01T24:00:01",
            "2025-05-01T12:00:00.",
            "2025-05-01T12:00:00+16:00",
            "2025-05-01T12:00:00+02:60",
            "2025-05-01T12:00:00 EST",
            "2025-05-01T12:00:00Zjunk",
            "2025-05-01T12:00:00+",
            "１２３４-05-01",
        ] {
            assert!(parse_moment(bad).is_none(), "{bad}");
        }
        assert!(parse_moment("2024-02-29").is_some());
    }
}
