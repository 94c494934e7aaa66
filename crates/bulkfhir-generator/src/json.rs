//! A minimal JSON writer over a reused byte buffer.
//!
//! Resources are written by hand as minified JSON: fixed structure goes in
//! as trusted literal fragments (`raw`), every piece of text goes through
//! [`Json::str`], which quotes and escapes it. Numbers are written with
//! `itoa` or as fixed-precision decimals computed with exact integer
//! arithmetic, so output is identical on every platform.

use crate::rng::Id;
use crate::time::{Local, civil_from_days};

/// UCUM, the code system of every `valueQuantity` unit.
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";

/// A growable JSON output buffer, cleared and reused for every resource.
#[derive(Debug, Default)]
pub(crate) struct Json {
    buf: Vec<u8>,
    /// The last instant converted to local time (the same instants recur
    /// many times within an encounter).
    local: Option<(i64, Local)>,
}

impl Json {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Self { buf: Vec::with_capacity(cap), local: None }
    }

    #[inline]
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends a trusted JSON fragment verbatim.
    #[inline]
    pub(crate) fn raw(&mut self, fragment: &str) {
        self.buf.extend_from_slice(fragment.as_bytes());
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// Appends `text` as a quoted, escaped JSON string.
    #[inline]
    pub(crate) fn str(&mut self, text: &str) {
        self.byte(b'"');
        self.escaped(text);
        self.byte(b'"');
    }

    /// Appends the escaped content of `text` without quotes (for building
    /// one string from several parts).
    pub(crate) fn escaped(&mut self, text: &str) {
        let bytes = text.as_bytes();
        if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
            self.buf.extend_from_slice(bytes);
            return;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0C => b"\\f",
                0..=0x1F => b"",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[start..i]);
            if esc.is_empty() {
                self.buf.extend_from_slice(b"\\u00");
                self.byte(HEX[usize::from(b >> 4)]);
                self.byte(HEX[usize::from(b & 0xF)]);
            } else {
                self.buf.extend_from_slice(esc);
            }
            start = i + 1;
        }
        self.buf.extend_from_slice(&bytes[start..]);
    }

    /// Appends an unsigned integer.
    #[inline]
    pub(crate) fn u64(&mut self, n: u64) {
        self.buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Appends a decimal rounded to `places` fractional digits, trailing
    /// zeros trimmed (`72.5`, `53`, `-0.25`).
    pub(crate) fn dec(&mut self, value: f64, places: u32) {
        let scale = 10u64.pow(places);
        let scaled = (value.abs() * scale as f64).round() as u64;
        if value < 0.0 && scaled != 0 {
            self.byte(b'-');
        }
        self.u64(scaled / scale);
        let mut frac = scaled % scale;
        if frac != 0 {
            let mut digits = places;
            while frac.is_multiple_of(10) {
                frac /= 10;
                digits -= 1;
            }
            self.byte(b'.');
            let text = itoa::Buffer::new().format(frac).len() as u32;
            for _ in text..digits {
                self.byte(b'0');
            }
            self.u64(frac);
        }
    }

    /// Appends an amount of cents as a decimal number of currency units.
    pub(crate) fn cents(&mut self, cents: i64) {
        if cents < 0 {
            self.byte(b'-');
        }
        let c = cents.unsigned_abs();
        self.u64(c / 100);
        self.byte(b'.');
        self.two(c % 100);
    }

    #[inline]
    fn two(&mut self, n: u64) {
        self.byte(b'0' + (n / 10 % 10) as u8);
        self.byte(b'0' + (n % 10) as u8);
    }

    #[inline]
    fn four(&mut self, n: i64) {
        let n = n.clamp(0, 9999) as u64;
        self.two(n / 100);
        self.two(n % 100);
    }

    /// Appends a quoted id.
    #[inline]
    pub(crate) fn id(&mut self, id: &Id) {
        self.byte(b'"');
        self.buf.extend_from_slice(id.as_bytes());
        self.byte(b'"');
    }

    /// Opens a resource: `{"resourceType":"<ty>","id":"<id>"`.
    #[inline]
    pub(crate) fn begin(&mut self, resource_type: &str, id: &Id) {
        self.raw("{\"resourceType\":\"");
        self.raw(resource_type);
        self.raw("\",\"id\":");
        self.id(id);
    }

    /// Closes the current object.
    #[inline]
    pub(crate) fn end(&mut self) {
        self.byte(b'}');
    }

    /// `{"reference":"<Type>/<id>"}`.
    #[inline]
    pub(crate) fn reference(&mut self, resource_type: &str, id: &Id) {
        self.ref_open(resource_type, id);
        self.byte(b'}');
    }

    /// `{"reference":"<Type>/<id>","display":"<display>"}`.
    #[inline]
    pub(crate) fn reference_display(&mut self, resource_type: &str, id: &Id, display: &str) {
        self.ref_open(resource_type, id);
        self.raw(",\"display\":");
        self.str(display);
        self.byte(b'}');
    }

    #[inline]
    fn ref_open(&mut self, resource_type: &str, id: &Id) {
        self.raw("{\"reference\":\"");
        self.raw(resource_type);
        self.byte(b'/');
        self.buf.extend_from_slice(id.as_bytes());
        self.byte(b'"');
    }

    /// `{"system":"..","code":"..","display":".."}`.
    #[inline]
    pub(crate) fn coding(&mut self, system: &str, code: &str, display: &str) {
        self.raw("{\"system\":");
        self.str(system);
        self.raw(",\"code\":");
        self.str(code);
        self.raw(",\"display\":");
        self.str(display);
        self.byte(b'}');
    }

    /// A CodeableConcept with one coding and `text` = display.
    #[inline]
    pub(crate) fn concept(&mut self, system: &str, code: &str, display: &str) {
        self.raw("{\"coding\":[");
        self.coding(system, code, display);
        self.raw("],\"text\":");
        self.str(display);
        self.byte(b'}');
    }

    /// A CodeableConcept with one coding and no text.
    #[inline]
    pub(crate) fn concept_no_text(&mut self, system: &str, code: &str, display: &str) {
        self.raw("{\"coding\":[");
        self.coding(system, code, display);
        self.raw("]}");
    }

    /// A Quantity in UCUM: `{"value":..,"unit":u,"system":UCUM,"code":u}`.
    #[inline]
    pub(crate) fn quantity(&mut self, value: f64, places: u32, unit: &str) {
        self.raw("{\"value\":");
        self.dec(value, places);
        self.raw(",\"unit\":");
        self.str(unit);
        self.raw(",\"system\":\"");
        self.raw(UCUM);
        self.raw("\",\"code\":");
        self.str(unit);
        self.byte(b'}');
    }

    /// A Money element in US dollars.
    #[inline]
    pub(crate) fn money(&mut self, cents: i64) {
        self.raw("{\"value\":");
        self.cents(cents);
        self.raw(",\"currency\":\"USD\"}");
    }

    /// A Period with both ends.
    #[inline]
    pub(crate) fn period(&mut self, start: i64, end: i64) {
        self.raw("{\"start\":");
        self.datetime(start);
        self.raw(",\"end\":");
        self.datetime(end);
        self.byte(b'}');
    }

    /// A quoted FHIR date (`"1965-01-13"`) from days since the epoch.
    pub(crate) fn date(&mut self, days: i64) {
        let (y, m, d) = civil_from_days(days);
        self.byte(b'"');
        self.ymd(y, m, d);
        self.byte(b'"');
    }

    /// A quoted FHIR dateTime in Eastern time (`"2011-02-02T16:30:49-05:00"`).
    #[inline]
    pub(crate) fn datetime(&mut self, utc: i64) {
        let local = self.local_time(utc);
        self.byte(b'"');
        self.local(local, None);
        self.byte(b'"');
    }

    /// A quoted FHIR instant with milliseconds (`"...T16:30:49.825-05:00"`).
    #[inline]
    pub(crate) fn instant(&mut self, utc: i64, millis: u32) {
        let local = self.local_time(utc);
        self.byte(b'"');
        self.local(local, Some(millis));
        self.byte(b'"');
    }

    #[inline]
    fn local_time(&mut self, utc: i64) -> Local {
        match self.local {
            Some((t, local)) if t == utc => local,
            _ => {
                let local = Local::from_utc(utc);
                self.local = Some((utc, local));
                local
            }
        }
    }

    fn ymd(&mut self, y: i64, m: u32, d: u32) {
        self.four(y);
        self.byte(b'-');
        self.two(u64::from(m));
        self.byte(b'-');
        self.two(u64::from(d));
    }

    fn local(&mut self, l: Local, millis: Option<u32>) {
        self.ymd(l.year, l.month, l.day);
        self.byte(b'T');
        self.two(u64::from(l.hour));
        self.byte(b':');
        self.two(u64::from(l.minute));
        self.byte(b':');
        self.two(u64::from(l.second));
        if let Some(ms) = millis {
            let ms = u64::from(ms % 1000);
            self.byte(b'.');
            self.byte(b'0' + (ms / 100) as u8);
            self.two(ms % 100);
        }
        self.byte(if l.offset_hours < 0 { b'-' } else { b'+' });
        self.two(l.offset_hours.unsigned_abs());
        self.raw(":00");
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{DAY, days_from_civil};

    fn out(f: impl FnOnce(&mut Json)) -> String {
        let mut j = Json::default();
        f(&mut j);
        String::from_utf8(j.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn escapes_strings() {
        let s = out(|j| j.str("a\"b\\c\nd\u{1}e\té"));
        assert_eq!(s, r#""a\"b\\c\nd\u0001e\té""#);
        let v: String = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}e\té");
        assert_eq!(out(|j| j.str("plain")), "\"plain\"");
    }

    #[test]
    fn decimals() {
        assert_eq!(out(|j| j.dec(72.5, 1)), "72.5");
        assert_eq!(out(|j| j.dec(72.54, 1)), "72.5");
        assert_eq!(out(|j| j.dec(53.0, 2)), "53");
        assert_eq!(out(|j| j.dec(0.05, 2)), "0.05");
        assert_eq!(out(|j| j.dec(1.005_1, 3)), "1.005");
        assert_eq!(out(|j| j.dec(-72.64290225, 6)), "-72.642902");
        assert_eq!(out(|j| j.dec(-0.0001, 2)), "0");
        assert_eq!(out(|j| j.cents(12_916)), "129.16");
        assert_eq!(out(|j| j.cents(5)), "0.05");
        assert_eq!(out(|j| j.cents(0)), "0.00");
    }

    #[test]
    fn datetimes() {
        let t = days_from_civil(2011, 2, 2) * DAY + 21 * 3600 + 30 * 60 + 49;
        assert_eq!(out(|j| j.datetime(t)), "\"2011-02-02T16:30:49-05:00\"");
        assert_eq!(out(|j| j.instant(t, 25)), "\"2011-02-02T16:30:49.025-05:00\"");
        assert_eq!(out(|j| j.date(days_from_civil(1965, 1, 13))), "\"1965-01-13\"");
    }
}
