//! Search values: prefixes, dates as time ranges, exact decimals, tokens, quantities, references,
//! and the case and accent folding of string search.

use std::cmp::Ordering;

use crate::ResourceType;

/// An ordered-type prefix (R4 search 3.1.1.4.5); `eq` when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a prefix off a date, number or quantity value. Two lower-case ASCII letters at the
    /// start are always a prefix, so `xx2020` is a bad prefix rather than a bad date.
    pub(crate) fn split(text: &str) -> Result<(Prefix, &str), String> {
        let bytes = text.as_bytes();
        if bytes.len() < 2 || !bytes[0].is_ascii_lowercase() || !bytes[1].is_ascii_lowercase() {
            return Ok((Prefix::Eq, text));
        }
        let prefix = match &bytes[..2] {
            b"eq" => Prefix::Eq,
            b"ne" => Prefix::Ne,
            b"gt" => Prefix::Gt,
            b"lt" => Prefix::Lt,
            b"ge" => Prefix::Ge,
            b"le" => Prefix::Le,
            b"sa" => Prefix::Sa,
            b"eb" => Prefix::Eb,
            b"ap" => Prefix::Ap,
            _ => {
                return Err(format!(
                    "unknown prefix '{}' (expected eq, ne, gt, lt, ge, le, sa, eb or ap)",
                    &text[..2]
                ));
            }
        };
        // Both bytes are ASCII, so index 2 is a character boundary.
        Ok((prefix, &text[2..]))
    }
}

/// One microsecond-precision time range, half-open: `[lo, hi)` in µs since the Unix epoch.
/// `i64::MIN` / `i64::MAX` stand for a missing lower / upper bound (an open Period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub(crate) lo: i64,
    pub(crate) hi: i64,
}

/// One day in microseconds: the smallest `ap` margin for dates.
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;
const MINUTE_MICROS: i64 = 60_000_000;

/// Parses a FHIR `date`, `dateTime` or `instant` (or a search value of that form) into the range
/// its precision covers: `2020` is the whole year, `2020-01-01T10:00Z` one minute,
/// `…T10:00:00.5Z` a tenth of a second. Time without a zone is taken as UTC. Hours without
/// minutes, a zone without a time, and out-of-range fields are refused.
///
/// `space_for_plus` accepts `2020-01-01T10:00:00 01:00`, which is what a `+01:00` becomes when a
/// client forgets to percent-encode `+` in a URL.
pub(crate) fn parse_date(text: &str, space_for_plus: bool) -> Option<TimeRange> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    if b.len() == 4 {
        return Some(TimeRange { lo: day_micros(year, 1, 1), hi: day_micros(year + 1, 1, 1) });
    }
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 {
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        return Some(TimeRange {
            lo: day_micros(year, month, 1),
            hi: day_micros(next_year, next_month, 1),
        });
    }
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = day_micros(year, month, day);
    if b.len() == 10 {
        return Some(TimeRange { lo: midnight, hi: midnight + DAY_MICROS });
    }
    expect(b, 10, b'T')?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut at = midnight + (hour * 60 + minute) * MINUTE_MICROS;
    let mut width = MINUTE_MICROS;
    let mut pos = 16;
    if b.get(pos) == Some(&b':') {
        let second = digits(b, 17, 2)?;
        if second > 60 {
            return None; // 60 is a leap second, which FHIR allows
        }
        at += second * 1_000_000;
        width = 1_000_000;
        pos = 19;
        if b.get(pos) == Some(&b'.') {
            let n_frac = b[pos + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n_frac == 0 {
                return None;
            }
            let mut fraction = 0;
            for (idx, digit) in b[pos + 1..pos + 1 + n_frac].iter().take(6).enumerate() {
                fraction += i64::from(digit - b'0') * 10_i64.pow(5 - idx as u32);
            }
            at += fraction;
            width = 10_i64.pow(6 - n_frac.min(6) as u32);
            pos += 1 + n_frac;
        }
    }
    let offset_minutes = match &b[pos..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-' | b' '), ..] if *sign != b' ' || space_for_plus => {
            expect(b, pos + 3, b':')?;
            if b.len() != pos + 6 {
                return None;
            }
            let (hours, minutes) = (digits(b, pos + 1, 2)?, digits(b, pos + 4, 2)?);
            if hours > 14 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    let lo = at - offset_minutes * MINUTE_MICROS;
    Some(TimeRange { lo, hi: lo + width })
}

fn digits(b: &[u8], start: usize, n: usize) -> Option<i64> {
    let slice = b.get(start..start + n)?;
    let mut value = 0_i64;
    for &c in slice {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    Some(value)
}

fn expect(b: &[u8], at: usize, byte: u8) -> Option<()> {
    (b.get(at) == Some(&byte)).then_some(())
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Midnight UTC of a proleptic Gregorian date, in µs since the Unix epoch (H. Hinnant's
/// `days_from_civil`).
fn day_micros(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era - 719_468) * DAY_MICROS
}

/// An exact decimal `mantissa × 10^exp`. The exponent keeps the written precision: `1.50` is
/// `150e-2`, so the implicit range of a search value can be derived from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decimal {
    mantissa: i128,
    exp: i32,
}

/// Significant digits kept. A search value with more is refused; a stored value with more is
/// truncated (38 digits of i128 leave room for the ×10 and ×11 of the range arithmetic).
pub(crate) const MAX_DIGITS: usize = 36;

impl Decimal {
    /// Parses a JSON number (`-1.50`, `5.4e-3`, `100`). `None` for anything else, including a
    /// search value with more than [`MAX_DIGITS`] significant digits when `truncate` is false.
    pub(crate) fn parse(text: &str, truncate: bool) -> Option<Decimal> {
        if text.len() > 4096 {
            return None;
        }
        let b = text.as_bytes();
        let mut pos = 0;
        let negative = b.first() == Some(&b'-');
        if negative {
            pos += 1;
        }
        let int_start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let int_digits = &b[int_start..pos];
        if int_digits.is_empty() {
            return None;
        }
        let mut frac_digits: &[u8] = &[];
        if b.get(pos) == Some(&b'.') {
            let start = pos + 1;
            pos = start;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            frac_digits = &b[start..pos];
            if frac_digits.is_empty() {
                return None;
            }
        }
        let mut exp: i64 = 0;
        if matches!(b.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            let exp_negative = match b.get(pos) {
                Some(b'-') => {
                    pos += 1;
                    true
                }
                Some(b'+') => {
                    pos += 1;
                    false
                }
                _ => false,
            };
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            if pos == start || pos - start > 6 {
                return None;
            }
            exp = b[start..pos].iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0'));
            if exp_negative {
                exp = -exp;
            }
        }
        if pos != b.len() {
            return None;
        }
        exp -= frac_digits.len() as i64;
        let mut mantissa: i128 = 0;
        let mut n_significant = 0;
        for &digit in int_digits.iter().chain(frac_digits) {
            if n_significant == 0 && digit == b'0' {
                continue; // leading zeros are not significant
            }
            if n_significant == MAX_DIGITS {
                if !truncate {
                    return None;
                }
                exp += 1; // drop this digit: the value is cut toward zero
                continue;
            }
            mantissa = mantissa * 10 + i128::from(digit - b'0');
            n_significant += 1;
        }
        let exp = i32::try_from(exp).ok()?;
        Some(Decimal { mantissa: if negative { -mantissa } else { mantissa }, exp })
    }

    /// The implicit range of a search value, `[v - ½ulp, v + ½ulp)` where ulp is the unit of its
    /// last written digit: `5.4` → `[5.35, 5.45)`, `100` → `[99.5, 100.5)`, `1e2` → `[50, 150)`.
    pub(crate) fn implicit_range(self) -> (Decimal, Decimal) {
        let exp = self.exp - 1;
        let low = Decimal { mantissa: self.mantissa * 10 - 5, exp };
        let high = Decimal { mantissa: self.mantissa * 10 + 5, exp };
        (low, high)
    }

    /// `[0.9 v, 1.1 v]` (ordered): the recommended 10 % of `ap`.
    pub(crate) fn approximate_range(self) -> (Decimal, Decimal) {
        let exp = self.exp - 1;
        let a = Decimal { mantissa: self.mantissa * 9, exp };
        let b = Decimal { mantissa: self.mantissa * 11, exp };
        if self.mantissa >= 0 { (a, b) } else { (b, a) }
    }

    /// Numeric order (`1.50` equals `1.5`).
    pub(crate) fn compare(self, other: Decimal) -> Ordering {
        let (sign_a, sign_b) = (self.mantissa.signum(), other.mantissa.signum());
        if sign_a != sign_b {
            return sign_a.cmp(&sign_b);
        }
        if sign_a == 0 {
            return Ordering::Equal;
        }
        let magnitude = compare_magnitude(self, other);
        if sign_a < 0 { magnitude.reverse() } else { magnitude }
    }
}

fn n_digits(mut value: u128) -> i64 {
    let mut n = 0;
    while value > 0 {
        value /= 10;
        n += 1;
    }
    n
}

/// Compares |a| and |b|, both non-zero.
fn compare_magnitude(a: Decimal, b: Decimal) -> Ordering {
    let (ma, mb) = (a.mantissa.unsigned_abs(), b.mantissa.unsigned_abs());
    let (da, db) = (n_digits(ma), n_digits(mb));
    // The position of the leading digit decides unless it is the same for both.
    let (lead_a, lead_b) = (da + i64::from(a.exp), db + i64::from(b.exp));
    if lead_a != lead_b {
        return lead_a.cmp(&lead_b);
    }
    // Same leading position: the exponents differ by less than the digit counts (≤ 39), so the
    // scaled mantissa has at most as many digits as the other one and cannot overflow.
    let shift = i64::from(a.exp) - i64::from(b.exp);
    let scale = |m: u128, by: i64| m * 10_u128.pow(u32::try_from(by).unwrap_or(0));
    match shift.cmp(&0) {
        Ordering::Greater => scale(ma, shift).cmp(&mb),
        Ordering::Less => ma.cmp(&scale(mb, -shift)),
        Ordering::Equal => ma.cmp(&mb),
    }
}

/// The system part of a token search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SystemMatch {
    /// `code`: any system or none.
    Any,
    /// `|code`: the element has no system.
    NoSystem,
    /// `system|code` or `system|`.
    Is(String),
}

/// A token search value: `code`, `system|code`, `|code` or `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenValue {
    pub(crate) system: SystemMatch,
    /// `None` for `system|` (any code in that system).
    pub(crate) code: Option<String>,
}

impl TokenValue {
    /// Builds a token from the `|`-separated, already unescaped parts of one value.
    pub(crate) fn from_parts(parts: &[String]) -> Result<TokenValue, String> {
        match parts {
            [code] => Ok(TokenValue { system: SystemMatch::Any, code: Some(code.clone()) }),
            [system, code] if system.is_empty() && code.is_empty() => {
                Err("a token value needs a system or a code around '|'".to_owned())
            }
            [system, code] if system.is_empty() => {
                Ok(TokenValue { system: SystemMatch::NoSystem, code: Some(code.clone()) })
            }
            [system, code] => Ok(TokenValue {
                system: SystemMatch::Is(system.clone()),
                code: (!code.is_empty()).then(|| code.clone()),
            }),
            _ => Err("a token value has at most one '|' (system|code)".to_owned()),
        }
    }
}

/// A quantity search value: `[prefix]number[|system|code]`.
#[derive(Debug, Clone)]
pub(crate) struct QuantityValue {
    pub(crate) prefix: Prefix,
    pub(crate) number: Decimal,
    pub(crate) system: Option<String>,
    pub(crate) code: Option<String>,
}

/// A reference search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefValue {
    /// `123`: a logical id, with the parameter's target types (or the `:Type` modifier).
    Id(String),
    /// `Patient/123` (a version suffix `/_history/2` is ignored).
    Typed { resource_type: String, id: String },
    /// An absolute URL or canonical; `local` is its `Type/id` tail when it has one.
    Url { url: String, local: Option<(String, String)> },
}

impl RefValue {
    /// Parses one (unescaped, decoded) reference search value.
    pub(crate) fn parse(text: &str) -> Result<RefValue, String> {
        if text.contains(':') {
            let local = split_reference(text).map(|(t, id)| (t.to_owned(), id.to_owned()));
            return Ok(RefValue::Url { url: strip_history(text).to_owned(), local });
        }
        if !text.contains('/') {
            return Ok(RefValue::Id(text.to_owned()));
        }
        match split_reference(text) {
            Some((resource_type, id)) if strip_history(text).matches('/').count() == 1 => {
                Ok(RefValue::Typed { resource_type: resource_type.to_owned(), id: id.to_owned() })
            }
            _ => Err(format!(
                "'{}' is not a reference (expected id, Type/id or an absolute URL)",
                crate::resource_type::truncate_for_message(text)
            )),
        }
    }

    /// The text a matching reference must contain, for the byte pre-check.
    pub(crate) fn needle(&self) -> String {
        match self {
            RefValue::Id(id) => format!("/{id}"),
            RefValue::Typed { resource_type, id } => format!("{resource_type}/{id}"),
            RefValue::Url { local: Some((resource_type, id)), .. } => {
                format!("{resource_type}/{id}")
            }
            RefValue::Url { url, local: None } => url.clone(),
        }
    }
}

/// `…/Type/id` or `…/Type/id/_history/v` → `…/Type/id`.
pub(crate) fn strip_history(reference: &str) -> &str {
    match reference.find("/_history/") {
        Some(at) => &reference[..at],
        None => reference,
    }
}

/// The `(Type, id)` at the end of a literal reference (relative `Type/id` or an absolute URL
/// ending in it), with any `/_history/v` ignored. `None` when the type is not an R4 type.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let mut segments = strip_history(reference).rsplitn(3, '/');
    let id = segments.next().filter(|id| !id.is_empty())?;
    let resource_type = segments.next()?;
    if let Some(base) = segments.next()
        && !base.contains("://")
    {
        return None;
    }
    ResourceType::parse(resource_type).ok().map(|t| (t.as_str(), id))
}

/// Case and accent folding for string search: lower case, Latin diacritics removed
/// (`Ë` → `e`, `ß` → `ss`, `Ø` → `o`), combining marks U+0300–U+036F dropped.
pub(crate) fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        match fold_latin(c) {
            Some(base) => out.push_str(base),
            None => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Latin-1 Supplement and Latin Extended-A letters with diacritics, by code point from U+00C0;
/// `""` where a code point is not a letter to fold (× ÷).
const LATIN_FOLDS: [&str; 0x180 - 0xC0] = [
    // U+00C0–U+00FF
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", //
    "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "ss", //
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", //
    "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "y", //
    // U+0100–U+017F
    "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d", //
    "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g", //
    "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i", //
    "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l", //
    "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "n", "n", "o", "o", "o", "o", //
    "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s", //
    "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u", //
    "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s", //
];

fn fold_latin(c: char) -> Option<&'static str> {
    let index = (c as usize).checked_sub(0xC0)?;
    LATIN_FOLDS.get(index).copied().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> TimeRange {
        parse_date(text, false).unwrap_or_else(|| panic!("{text} should parse"))
    }

    fn micros(instant: &str) -> i64 {
        crate::Instant::parse_fhir(instant).unwrap().as_micros()
    }

    #[test]
    fn dates_are_ranges_at_their_precision() {
        let year = range("2020");
        assert_eq!(
            (year.lo, year.hi),
            (micros("2020-01-01T00:00:00Z"), micros("2021-01-01T00:00:00Z"))
        );
        let feb = range("2024-02");
        assert_eq!(
            (feb.lo, feb.hi),
            (micros("2024-02-01T00:00:00Z"), micros("2024-03-01T00:00:00Z"))
        );
        let dec = range("1999-12");
        assert_eq!(dec.hi, micros("2000-01-01T00:00:00Z"));
        let day = range("2024-02-29");
        assert_eq!(day.hi - day.lo, DAY_MICROS);
        let minute = range("2020-01-01T10:00+01:00");
        assert_eq!(
            (minute.lo, minute.hi - minute.lo),
            (micros("2020-01-01T09:00:00Z"), 60_000_000)
        );
        let second = range("2020-01-01T10:00:00-02:30");
        assert_eq!(second.lo, micros("2020-01-01T12:30:00Z"));
        assert_eq!(second.hi - second.lo, 1_000_000);
        let milli = range("2020-01-01T10:00:00.123Z");
        assert_eq!(
            (milli.lo - micros("2020-01-01T10:00:00Z"), milli.hi - milli.lo),
            (123_000, 1_000)
        );
        let fine = range("2020-01-01T10:00:00.1234567Z");
        assert_eq!((fine.lo - micros("2020-01-01T10:00:00Z"), fine.hi - fine.lo), (123_456, 1));
        // No zone: UTC.
        assert_eq!(range("2020-01-01T10:00:00").lo, micros("2020-01-01T10:00:00Z"));
        assert_eq!(range("1969-12-31").lo, -DAY_MICROS);
        assert_eq!(
            parse_date("2020-01-01T10:00:00 01:00", true).unwrap().lo,
            micros("2020-01-01T09:00:00Z")
        );
        for bad in [
            "",
            "202",
            "20200",
            "2020-13",
            "2020-00",
            "2019-02-29",
            "2020-01-32",
            "2020-1-01",
            "2020-01-01T",
            "2020-01-01T10",
            "2020-01-01T24:00Z",
            "2020-01-01T10:60Z",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10:00:00+1:00",
            "2020-01-01T10:00:00+15:00",
            "2020-01-01T10:00:00 01:00",
            "2020-01-01Z",
            "2020-01-01T10:00:00Zx",
            "２０２０",
        ] {
            assert!(parse_date(bad, false).is_none(), "{bad:?} should be refused");
        }
    }

    fn dec(text: &str) -> Decimal {
        Decimal::parse(text, false).unwrap_or_else(|| panic!("{text} should parse"))
    }

    #[test]
    fn decimals_compare_exactly_and_keep_their_precision() {
        assert_eq!(dec("1.50").compare(dec("1.5")), Ordering::Equal);
        assert_eq!(dec("1e2").compare(dec("100")), Ordering::Equal);
        assert_eq!(dec("-0.0").compare(dec("0")), Ordering::Equal);
        assert_eq!(dec("5.45").compare(dec("5.4499999999999999999")), Ordering::Greater);
        assert_eq!(dec("-5.45").compare(dec("-5.4")), Ordering::Less);
        assert_eq!(dec("1e-300").compare(dec("1e300")), Ordering::Less);
        assert_eq!(dec("123456789012345678901234567890").compare(dec("1.2e29")), Ordering::Greater);
        let (low, high) = dec("5.4").implicit_range();
        assert_eq!(low.compare(dec("5.35")), Ordering::Equal);
        assert_eq!(high.compare(dec("5.45")), Ordering::Equal);
        let (low, high) = dec("100").implicit_range();
        assert_eq!(
            (low.compare(dec("99.5")), high.compare(dec("100.5"))),
            (Ordering::Equal, Ordering::Equal)
        );
        let (low, high) = dec("1e2").implicit_range();
        assert_eq!(
            (low.compare(dec("50")), high.compare(dec("150"))),
            (Ordering::Equal, Ordering::Equal)
        );
        let (low, high) = dec("-10").approximate_range();
        assert_eq!(
            (low.compare(dec("-11")), high.compare(dec("-9"))),
            (Ordering::Equal, Ordering::Equal)
        );
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "0x10", "1,5", "+1", "1 ", "1e1234567", "NaN"]
        {
            assert!(Decimal::parse(bad, true).is_none(), "{bad:?}");
        }
        let long = "1".repeat(MAX_DIGITS + 1);
        assert!(Decimal::parse(&long, false).is_none());
        let truncated = Decimal::parse(&long, true).unwrap();
        assert_eq!(truncated.compare(dec(&long[..MAX_DIGITS])), Ordering::Greater);
        assert_eq!(truncated.compare(dec(&format!("{}e1", &long[..MAX_DIGITS]))), Ordering::Equal);
    }

    #[test]
    fn prefixes_tokens_and_references_parse() {
        assert_eq!(Prefix::split("ge2020").unwrap(), (Prefix::Ge, "2020"));
        assert_eq!(Prefix::split("2020").unwrap(), (Prefix::Eq, "2020"));
        assert_eq!(Prefix::split("-5").unwrap(), (Prefix::Eq, "-5"));
        assert!(Prefix::split("xx2020").is_err());
        let parts = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(TokenValue::from_parts(&parts(&["x"])).unwrap().system, SystemMatch::Any);
        assert_eq!(
            TokenValue::from_parts(&parts(&["", "x"])).unwrap().system,
            SystemMatch::NoSystem
        );
        assert_eq!(TokenValue::from_parts(&parts(&["s", ""])).unwrap().code, None);
        assert!(TokenValue::from_parts(&parts(&["", ""])).is_err());
        assert!(TokenValue::from_parts(&parts(&["a", "b", "c"])).is_err());
        assert_eq!(RefValue::parse("123").unwrap(), RefValue::Id("123".into()));
        assert_eq!(
            RefValue::parse("Patient/1/_history/2").unwrap(),
            RefValue::Typed { resource_type: "Patient".into(), id: "1".into() }
        );
        assert_eq!(
            RefValue::parse("http://x.org/fhir/Patient/1").unwrap(),
            RefValue::Url {
                url: "http://x.org/fhir/Patient/1".into(),
                local: Some(("Patient".into(), "1".into()))
            }
        );
        assert!(matches!(
            RefValue::parse("urn:uuid:1").unwrap(),
            RefValue::Url { local: None, .. }
        ));
        for bad in ["Nope/1", "Patient/", "a/b/c", "/1"] {
            assert!(RefValue::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(split_reference("http://x/fhir/Patient/1/_history/3"), Some(("Patient", "1")));
        assert_eq!(split_reference("x/Patient/1"), None);
        assert_eq!(split_reference("#c1"), None);
    }

    #[test]
    fn folding_ignores_case_and_latin_accents() {
        assert_eq!(fold("ÉLODIE Øster"), "elodie oster");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("Łukasz Żółć"), "lukasz zolc");
        assert_eq!(fold("e\u{301}ve"), "eve");
        assert_eq!(fold("ΑΒΓ"), "αβγ");
        assert_eq!(fold("×÷"), "×÷");
        assert_eq!(LATIN_FOLDS[0x17F - 0xC0], "s");
    }
}
