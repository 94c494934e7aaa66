//! Byte-level JSON helpers for the store's write path.
//!
//! The store keeps each resource as the exact minified JSON an export will emit, so the write path
//! must never re-serialize numbers or strings (a `serde_json::Value` round trip turns `1.50` into
//! `1.5`). These helpers split an object into raw members, minify them by dropping insignificant
//! whitespace, and write JSON string literals.

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;

use crate::ModelError;

/// The deepest nesting of objects and arrays a stored resource may have (the resource itself is
/// level 1). Real FHIR data stays far below it (deeply nested `QuestionnaireResponse.item`s and
/// `contained` resources reach about 30); every write path refuses deeper JSON with a 400, so
/// that each stored resource can be parsed again by the `_typeFilter` evaluator and by common
/// JSON readers (many stop at 128).
pub const MAX_RESOURCE_DEPTH: usize = 100;

/// Whether arrays and objects in `body` nest deeper than `limit` (brackets inside strings do
/// not count). Cheap for almost every resource: fewer opening brackets than `limit` settle it.
pub fn nested_deeper_than(body: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'{', b'[', body).take(limit + 1).count() <= limit {
        return false;
    }
    let (mut depth, mut idx) = (0_usize, 0);
    while idx < body.len() {
        match body[idx] {
            // Skip the string: to the next quote not escaped by a backslash.
            b'"' => idx = string_end(body, idx + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        idx += 1;
    }
    false
}

/// The first number in `body` (valid JSON) whose magnitude is beyond what a 64-bit float holds
/// (about 1.8e308), such as `1e309` or a 400-digit integer.
///
/// Such a number is valid JSON text, but common readers refuse it (serde_json: "number out of
/// range") or turn it into infinity (JavaScript, Python), so a stored resource holding one could
/// not be read back by an export's consumers. Numbers too small to represent (`1e-400`) read as
/// zero everywhere and are not reported. Strings are skipped whole, so text inside them never
/// counts; only number tokens that carry an exponent or more than 300 digits are parsed.
pub fn number_out_of_range(body: &[u8]) -> Option<&str> {
    let mut idx = 0;
    while idx < body.len() {
        match body[idx] {
            b'"' => idx = string_end(body, idx + 1),
            b'-' | b'0'..=b'9' => {
                let start = idx;
                while idx < body.len()
                    && matches!(body[idx], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    idx += 1;
                }
                let token = &body[start..idx];
                let suspicious =
                    token.len() > 300 || token.iter().any(|b| matches!(b, b'e' | b'E'));
                if suspicious {
                    let text = std::str::from_utf8(token).unwrap_or("");
                    if text.parse::<f64>().is_ok_and(|value| value.is_infinite()) {
                        return Some(text);
                    }
                }
                continue;
            }
            _ => {}
        }
        idx += 1;
    }
    None
}

/// The index of the closing quote of the string whose contents start at `idx` (or the end of
/// `body` when it is unterminated).
fn string_end(body: &[u8], mut idx: usize) -> usize {
    loop {
        match body.get(idx..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
            Some(offset) if body[idx + offset] == b'"' => return idx + offset,
            Some(offset) => idx += offset + 2,
            None => return body.len(),
        }
    }
}

/// The members of a JSON object, in document order, with their values left as raw JSON.
#[derive(Debug)]
pub struct RawMembers<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawMembers<'a> {
    /// Splits `text`, which must be a JSON object, into its members. Duplicate keys are refused,
    /// because a FHIR resource with two `id`s or two `subject`s has no single meaning.
    pub fn parse(text: &'a str) -> Result<Self, ModelError> {
        let members: RawMembers<'a> = serde_json::from_str(text).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ModelError::InvalidResource("a resource must be a JSON object".to_owned())
            } else {
                ModelError::Json(e.to_string())
            }
        })?;
        for (idx, (key, _)) in members.0.iter().enumerate() {
            if members.0[..idx].iter().any(|(earlier, _)| earlier == key) {
                return Err(ModelError::InvalidResource(format!("duplicate JSON member '{key}'")));
            }
        }
        Ok(members)
    }

    /// The raw value of member `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key.0, value));
                }
                Ok(RawMembers(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A map key that borrows from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Appends `raw` to `out` without the whitespace JSON allows between tokens.
///
/// `raw` must already be valid JSON (validation first, then minification: minifying invalid input
/// could turn `1 2` into the valid `12`). String contents are copied untouched.
pub fn minify_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    let mut run_start = 0;
    for (idx, &byte) in raw.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            out.extend_from_slice(&raw[run_start..idx]);
            run_start = idx + 1;
        }
    }
    out.extend_from_slice(&raw[run_start..]);
}

/// Appends `value` to `out` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut run_start = 0;
    for (idx, &byte) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..idx]);
        match escape {
            Some(seq) => out.extend_from_slice(seq),
            None => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
        }
        run_start = idx + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_beyond_a_double_are_found_outside_strings_only() {
        assert_eq!(
            number_out_of_range(br#"[1.50,-100E000000000000307]"#),
            Some("-100E000000000000307")
        );
        assert_eq!(number_out_of_range(br#"{"a":1e309}"#), Some("1e309"));
        let long = format!("[{}]", "9".repeat(400));
        assert!(number_out_of_range(long.as_bytes()).is_some());
        assert_eq!(number_out_of_range(br#"{"a":"1e999","b":1e308,"c":1e-400,"d":true}"#), None);
        assert_eq!(number_out_of_range(br#"{"a\"1e999":-0.5E+3}"#), None);
        assert_eq!(number_out_of_range(br#"["unterminated 1e999"#), None);
    }

    #[test]
    fn minify_keeps_string_contents_and_number_text() {
        let mut out = Vec::new();
        minify_into(
            br#"{ "a" : [ 1.50 , "x  \" y" ],
 "b":	{"c" : true } }"#,
            &mut out,
        );
        assert_eq!(out, br#"{"a":[1.50,"x  \" y"],"b":{"c":true}}"#);
    }

    #[test]
    fn members_keep_order_and_refuse_duplicates() {
        let members = RawMembers::parse(r#"{"b":1,"a":{"x":2},"c\u0041":3}"#).unwrap();
        let keys: Vec<&str> = members.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "cA"]);
        assert_eq!(members.get("a").unwrap().get(), r#"{"x":2}"#);
        assert!(RawMembers::parse(r#"{"a":1,"a":2}"#).is_err());
        assert!(RawMembers::parse("[1]").is_err());
        assert!(RawMembers::parse(r#"{"a":1 2}"#).is_err());
        assert!(RawMembers::parse(r#"{"a":1} x"#).is_err());
    }

    proptest! {
        #[test]
        fn written_strings_parse_back(s in ".*") {
            let mut out = Vec::new();
            write_json_string(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn minified_json_means_the_same(v in arb_json()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let mut out = Vec::new();
            minify_into(pretty.as_bytes(), &mut out);
            let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, v);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z \" ]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
