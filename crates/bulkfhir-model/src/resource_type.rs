use std::fmt;

use crate::{ModelError, generated::r4::RESOURCE_TYPES};

/// A FHIR R4 resource type name, checked against the R4 definitions, or one of the few types
/// an implementation guide defines that this server stores ([`IG_TYPES`]).
///
/// It is `Copy` and compares by name; the name is always one of the 'static strings of the
/// generated table, so holding one costs nothing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// Looks up a resource type by its exact (case-sensitive) R4 name, or an [`IG_TYPES`] name.
    pub fn parse(name: &str) -> Result<Self, ModelError> {
        RESOURCE_TYPES
            .binary_search(&name)
            .map(|idx| ResourceType(RESOURCE_TYPES[idx]))
            .or_else(|_| IG_TYPES.iter().find(|t| **t == name).map(|t| ResourceType(t)).ok_or(()))
            .map_err(|_| ModelError::UnknownResourceType(truncate_for_message(name)))
    }

    /// The type's name, e.g. `Observation`.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Every concrete R4 resource type, sorted by name, then the [`IG_TYPES`].
    pub fn all() -> impl Iterator<Item = ResourceType> {
        RESOURCE_TYPES.iter().chain(IG_TYPES).map(|name| ResourceType(name))
    }

    /// Whether this is an R4 type (not one of the [`IG_TYPES`]).
    pub fn is_r4(self) -> bool {
        RESOURCE_TYPES.binary_search(&self.0).is_ok()
    }

    /// The `Patient` type.
    pub const PATIENT: ResourceType = ResourceType("Patient");
    /// The `Group` type.
    pub const GROUP: ResourceType = ResourceType("Group");
    /// The `Bundle` type.
    pub const BUNDLE: ResourceType = ResourceType("Bundle");
    /// The `ViewDefinition` type of SQL on FHIR v2 (an [`IG_TYPES`] type).
    pub const VIEW_DEFINITION: ResourceType = ResourceType("ViewDefinition");
}

/// Resource types outside R4 that this server stores like R4 ones: SQL on FHIR v2's
/// `ViewDefinition`, so that views can be kept on the server and referenced by
/// `$viewdefinition-run` and `$viewdefinition-export`. They are in no compartment; their
/// elements (for `_elements`) and search parameters come from small tables written from the
/// implementation guide beside the generated R4 ones.
pub const IG_TYPES: &[&str] = &["ViewDefinition"];

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Keeps error messages short when a client sends a huge bogus value.
pub(crate) fn truncate_for_message(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_parse_and_unknown_types_are_refused() {
        assert_eq!(ResourceType::parse("Observation").unwrap().as_str(), "Observation");
        assert!(ResourceType::parse("observation").is_err());
        assert!(ResourceType::parse("Resource").is_err());
        assert!(ResourceType::parse("").is_err());
        assert_eq!(ResourceType::parse("Patient").unwrap(), ResourceType::PATIENT);
        assert_eq!(ResourceType::parse("Group").unwrap(), ResourceType::GROUP);
        assert_eq!(ResourceType::parse("Bundle").unwrap(), ResourceType::BUNDLE);
    }
}
