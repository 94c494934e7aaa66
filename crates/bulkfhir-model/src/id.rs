use std::{fmt, ops::Deref};

use crate::{ModelError, resource_type::truncate_for_message};

/// A FHIR logical id: 1 to 64 characters of `A-Z a-z 0-9 - .`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(String);

impl ResourceId {
    /// Checks `value` against the FHIR id grammar.
    pub fn parse(value: &str) -> Result<Self, ModelError> {
        if is_valid_id(value) {
            Ok(ResourceId(value.to_owned()))
        } else {
            Err(ModelError::InvalidId(truncate_for_message(value)))
        }
    }

    /// Like [`parse`](Self::parse), taking an owned string (no copy when it is valid).
    pub fn from_string(value: String) -> Result<Self, ModelError> {
        if is_valid_id(&value) {
            Ok(ResourceId(value))
        } else {
            Err(ModelError::InvalidId(truncate_for_message(&value)))
        }
    }

    /// A fresh server-assigned id (a random UUID).
    pub fn new_random(uuid_text: String) -> Self {
        debug_assert!(is_valid_id(&uuid_text));
        ResourceId(uuid_text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `value` matches `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Deref for ResourceId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
}
