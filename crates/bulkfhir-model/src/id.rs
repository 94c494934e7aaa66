use std::{fmt, ops::Deref};

use crate::{ModelError, resource_type::truncate_for_message};

/// The longest id the grammar allows.
const MAX_ID_LEN: usize = 64;

/// A FHIR logical id: 1 to 64 characters of `A-Z a-z 0-9 - .`.
///
/// Stored inline (no heap allocation): an export creates one per resource it reads, and a
/// `String` per row showed up in export profiles. Equality, order and hashing are those of the
/// text.
#[derive(Clone)]
pub struct ResourceId {
    len: u8,
    bytes: [u8; MAX_ID_LEN],
}

impl ResourceId {
    /// Checks `value` against the FHIR id grammar.
    pub fn parse(value: &str) -> Result<Self, ModelError> {
        if is_valid_id(value) {
            let mut bytes = [0; MAX_ID_LEN];
            bytes[..value.len()].copy_from_slice(value.as_bytes());
            // `is_valid_id` bounds the length by 64.
            Ok(ResourceId { len: value.len() as u8, bytes })
        } else {
            Err(ModelError::InvalidId(truncate_for_message(value)))
        }
    }

    /// A fresh server-assigned id: a random (v4) UUID, 36 characters of the id grammar.
    pub fn new_random() -> Self {
        let mut bytes = [0; MAX_ID_LEN];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut bytes[..36]).len();
        ResourceId { len: text as u8, bytes }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored; the fallback is unreachable.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// True when `value` matches `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes[..usize::from(self.len)] == other.bytes[..usize::from(other.len)]
    }
}

impl Eq for ResourceId {}

impl PartialOrd for ResourceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ResourceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for ResourceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Deref for ResourceId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_grammar_is_enforced() {
        assert!(ResourceId::parse("abc-1.2").is_ok());
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
        assert!(ResourceId::parse(&"a".repeat(65)).is_err());
        assert!(ResourceId::parse("").is_err());
        assert!(ResourceId::parse("a/b").is_err());
        assert!(ResourceId::parse("a b").is_err());
        assert!(ResourceId::parse("é").is_err());
    }

    #[test]
    fn ids_compare_hash_and_sort_as_their_text() {
        use std::collections::HashSet;
        let ids: Vec<ResourceId> =
            ["b", "a", "ab", "a.b", "Z"].iter().map(|t| ResourceId::parse(t).unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let texts: Vec<&str> = sorted.iter().map(ResourceId::as_str).collect();
        assert_eq!(texts, ["Z", "a", "a.b", "ab", "b"]);
        let long = "x".repeat(64);
        assert_eq!(ResourceId::parse(&long).unwrap().as_str(), long);
        let set: HashSet<ResourceId> = ids.iter().cloned().collect();
        assert!(set.contains(&ResourceId::parse("ab").unwrap()));
        // Equality reads only the id's own bytes: a prefix is a different id.
        assert_ne!(ResourceId::parse("a").unwrap(), ResourceId::parse("ab").unwrap());
        assert_eq!(ResourceId::parse("ab").unwrap(), ResourceId::parse("ab").unwrap());
    }
}
