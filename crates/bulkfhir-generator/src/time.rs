//! Calendar arithmetic on plain integers: no clock, no time zone database.
//!
//! Instants are seconds since the Unix epoch (UTC). They are rendered in US
//! Eastern local time with its UTC offset (`-05:00`, or `-04:00` under
//! daylight saving time), like Synthea's Massachusetts population.

/// Seconds per day.
pub(crate) const DAY: i64 = 86_400;
/// Seconds per (average Gregorian) year.
pub(crate) const YEAR: i64 = 31_556_952;
/// The fixed "now" of the generated world: 2026-01-01T00:00:00Z. Every
/// generated date lies before it.
pub(crate) const REFERENCE: i64 = days_from_civil(2026, 1, 1) * DAY;

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `(year, month, day)` of a day count since 1970-01-01.
pub(crate) const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// 0 = Sunday.
const fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

const fn nth_sunday(y: i64, m: u32, n: i64) -> i64 {
    let first = days_from_civil(y, m, 1);
    first + (7 - weekday(first)) % 7 + 7 * (n - 1)
}

const fn last_sunday(y: i64, m: u32) -> i64 {
    let last =
        if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) } - 1;
    last - weekday(last)
}

/// The US Eastern UTC offset in seconds at a UTC instant, following the
/// US daylight-saving rules in force since 1967 (ignoring 1974/75).
pub(crate) const fn eastern_offset(utc: i64) -> i64 {
    const EST: i64 = -5 * 3600;
    let (y, _, _) = civil_from_days((utc + EST).div_euclid(DAY));
    let (start, end) = if y >= 2007 {
        (nth_sunday(y, 3, 2), nth_sunday(y, 11, 1))
    } else if y >= 1987 {
        (nth_sunday(y, 4, 1), last_sunday(y, 10))
    } else if y >= 1967 {
        (last_sunday(y, 4), last_sunday(y, 10))
    } else {
        return EST;
    };
    // Transitions happen at 02:00 local: 07:00 UTC in spring, 06:00 in fall.
    if utc >= start * DAY + 7 * 3600 && utc < end * DAY + 6 * 3600 { EST + 3600 } else { EST }
}

/// A UTC instant broken down into Eastern local wall-clock fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    /// Offset from UTC in whole hours (-5 or -4).
    pub(crate) offset_hours: i64,
}

impl Local {
    pub(crate) const fn from_utc(utc: i64) -> Self {
        let offset = eastern_offset(utc);
        let local = utc + offset;
        let (year, month, day) = civil_from_days(local.div_euclid(DAY));
        let sod = local.rem_euclid(DAY);
        Self {
            year,
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod / 60 % 60) as u32,
            second: (sod % 60) as u32,
            offset_hours: offset / 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_roundtrip() {
        for z in [-25_567, -1, 0, 1, 10_957, 20_454, 20_819] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(REFERENCE / DAY), (2026, 1, 1));
        assert_eq!(weekday(days_from_civil(2026, 1, 1)), 4); // Thursday
    }

    #[test]
    fn eastern_dst() {
        // 2011-02-02T21:30:49Z is 16:30:49-05:00.
        let t = days_from_civil(2011, 2, 2) * DAY + 21 * 3600 + 30 * 60 + 49;
        let l = Local::from_utc(t);
        assert_eq!(
            (l.year, l.month, l.day, l.hour, l.minute, l.second, l.offset_hours),
            (2011, 2, 2, 16, 30, 49, -5)
        );
        // 1985-06-18T21:30:49Z is 17:30:49-04:00.
        let t = days_from_civil(1985, 6, 18) * DAY + 21 * 3600 + 30 * 60 + 49;
        let l = Local::from_utc(t);
        assert_eq!((l.hour, l.offset_hours), (17, -4));
        // 2024: DST from March 10 07:00Z to November 3 06:00Z.
        let start = days_from_civil(2024, 3, 10) * DAY + 7 * 3600;
        assert_eq!(eastern_offset(start - 1), -5 * 3600);
        assert_eq!(eastern_offset(start), -4 * 3600);
        let end = days_from_civil(2024, 11, 3) * DAY + 6 * 3600;
        assert_eq!(eastern_offset(end - 1), -4 * 3600);
        assert_eq!(eastern_offset(end), -5 * 3600);
    }
}
