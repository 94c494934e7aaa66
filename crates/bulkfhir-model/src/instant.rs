use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{ModelError, resource_type::truncate_for_message};

/// A point in time with microsecond precision, as the server stamps `meta.lastUpdated` and
/// `transactionTime`.
///
/// Stored as microseconds since the Unix epoch, so it orders and compares as an integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(i64);

impl Instant {
    /// The instant `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Instant(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Instant(Utc::now().timestamp_micros())
    }

    /// The next representable instant.
    pub const fn next(self) -> Self {
        Instant(self.0.saturating_add(1))
    }

    /// Parses a FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.fraction](Z|+hh:mm|-hh:mm)`, strictly (no
    /// lowercase `t`, no space separator, no missing seconds or zone). Precision past microseconds
    /// is truncated.
    pub fn parse_fhir(text: &str) -> Result<Self, ModelError> {
        let err = || ModelError::InvalidInstant(truncate_for_message(text));
        if !has_instant_shape(text.as_bytes()) {
            return Err(err());
        }
        let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| err())?;
        Ok(Instant(parsed.with_timezone(&Utc).timestamp_micros()))
    }

    /// Formats as a FHIR instant in UTC with microseconds, e.g. `2024-01-31T12:00:00.000001Z`.
    pub fn to_fhir(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => "1970-01-01T00:00:00.000000Z".to_owned(),
        }
    }

    /// Formats as an HTTP-date (RFC 7231), for `Last-Modified` and `Expires` headers.
    pub fn to_http_date(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            None => "Thu, 01 Jan 1970 00:00:00 GMT".to_owned(),
        }
    }
}

/// Checks the fixed-position parts of an instant so that chrono's lenient RFC 3339 reader only
/// ever sees text that FHIR allows.
fn has_instant_shape(b: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| {
        b.get(range).is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if !(b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let n_frac = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n_frac == 0 {
            return false;
        }
        rest = &rest[1 + n_frac..];
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_fhir())
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_fhir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_and_strict_parsing_refuses_near_misses() {
        let t = Instant::parse_fhir("2024-01-31T12:00:00.5+01:00").unwrap();
        assert_eq!(t.to_fhir(), "2024-01-31T11:00:00.500000Z");
        assert_eq!(Instant::parse_fhir(&t.to_fhir()).unwrap(), t);
        for bad in [
            "2024-01-31",
            "2024-01-31T12:00Z",
            "2024-01-31t12:00:00Z",
            "2024-01-31 12:00:00Z",
            "2024-01-31T12:00:00",
            "2024-01-31T12:00:00.Z",
            "2024-13-31T12:00:00Z",
            "2024-02-30T12:00:00Z",
            "2024-01-31T12:00:00+0100",
            "",
        ] {
            assert!(Instant::parse_fhir(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn http_dates_are_rfc7231() {
        let t = Instant::parse_fhir("2024-01-31T12:00:00Z").unwrap();
        assert_eq!(t.to_http_date(), "Wed, 31 Jan 2024 12:00:00 GMT");
    }
}
