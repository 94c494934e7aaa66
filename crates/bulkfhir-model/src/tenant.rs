//! Tenant names: the `{tenant}` of `[server]/fhir/t/{tenant}/...`.

use std::fmt;

use crate::{ModelError, resource_type::truncate_for_message};

/// The longest tenant name: `tenant_` and the name must fit PostgreSQL's 63-byte identifiers.
pub const MAX_TENANT_LEN: usize = 48;

/// A tenant's name: 1 to 48 characters of `a-z 0-9 -`, starting and ending with a letter or
/// digit. The same text names the tenant in URLs, folders and PostgreSQL schemas, so it is
/// lower case only (no two names that differ in case) and needs no escaping anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(String);

impl TenantName {
    /// Checks `value` against the grammar.
    pub fn parse(value: &str) -> Result<Self, ModelError> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_TENANT_LEN
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        if valid {
            Ok(TenantName(value.to_owned()))
        } else {
            Err(ModelError::InvalidTenant(truncate_for_message(value)))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The PostgreSQL schema that holds this tenant's tables: `tenant_` and the name with `-`
    /// as `_` (the grammar has no `_`, so no two names share a schema).
    pub fn schema(&self) -> String {
        format!("tenant_{}", self.0.replace('-', "_"))
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_letters_digits_and_inner_hyphens() {
        for good in ["a", "acme", "north-clinic-2", "9", &"x".repeat(MAX_TENANT_LEN)] {
            assert_eq!(TenantName::parse(good).map(|t| t.to_string()).ok().as_deref(), Some(good));
        }
        for bad in [
            "",
            "Acme",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a/b",
            "..",
            "é",
            &"x".repeat(MAX_TENANT_LEN + 1),
        ] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let name = TenantName::parse("north-clinic").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name.schema(), "tenant_north_clinic");
    }
}
