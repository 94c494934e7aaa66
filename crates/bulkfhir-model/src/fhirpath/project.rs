//! Parsing a resource's JSON text into a `Value` that holds only the elements some expressions
//! can read ([`Reads`]): the others are scanned and checked as JSON but never built.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::reach::Reads;

/// Parses `json` keeping what `reads` names.
pub(crate) fn parse(json: &[u8], reads: &Reads) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = Element { reads }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// An element kept with only some of its children, in one pass over the text: an object keeps
/// the members `reads` names, an array projects each item, anything else is built as
/// `serde_json::Value` builds it (its numbers as `From<i64>`, `From<u64>` and `from_f64`, so a
/// value is the same either way; the official suite checks it).
#[derive(Clone, Copy)]
struct Element<'r> {
    reads: &'r Reads,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let mut matching = self.reads.matching(key.as_str());
            let found = (matching.next(), matching.next());
            drop(matching);
            let value = match found {
                (None, _) => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                // One element name that reads only part of it.
                (Some(reads), None) if !reads.whole => map.next_value_seed(Element { reads })?,
                // Kept whole, or an instance of two names (`value` and `valueQuantity`).
                _ => map.next_value()?,
            };
            // As `serde_json::Value`, a key given twice keeps its last value.
            out.insert(key.into_owned(), value);
        }
        Ok(Value::Object(out))
    }
}

/// An object key, borrowed from the text when it holds no escape.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyText<'_> {
    fn as_str(&self) -> &str {
        match self {
            KeyText::Borrowed(s) => s,
            KeyText::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            KeyText::Borrowed(s) => s.to_owned(),
            KeyText::Owned(s) => s,
        }
    }
}

struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = KeyText<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = KeyText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(KeyText::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(KeyText::Owned(v.to_owned()))
    }
}
