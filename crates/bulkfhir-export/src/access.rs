//! What a caller may export and which jobs it may see: inputs to the engine, decided by the
//! edge from the caller's credentials (SMART scopes there), enforced here, where the data flows.

use std::collections::BTreeSet;

use bulkfhir_model::{Instant, ResourceType, search::SearchQuery};

use crate::ExportError;

/// Which export jobs a caller may see, poll, cancel and download from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAccess {
    /// Every job (no authorization, or an administrator).
    Any,
    /// Only the jobs this client kicked off; every other job is "not found", so that a caller
    /// learns nothing of other clients' jobs, not even that they exist.
    Owner(String),
}

impl JobAccess {
    /// Whether a job kicked off by `requester` is visible.
    pub fn sees(&self, requester: Option<&str>) -> bool {
        match self {
            JobAccess::Any => true,
            JobAccess::Owner(client) => requester == Some(client.as_str()),
        }
    }

    /// The requester to limit a job search to.
    pub(crate) fn requester(&self) -> Option<String> {
        match self {
            JobAccess::Any => None,
            JobAccess::Owner(client) => Some(client.clone()),
        }
    }
}

/// The part of the data an export may cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportBound {
    /// The resource types it may hold; `None`: every type.
    pub types: Option<BTreeSet<ResourceType>>,
    /// Narrowing queries (`Observation?category=laboratory`): a resource of a type named here
    /// is exported only if one of its type's queries matches, whatever `_typeFilter` says (the
    /// two are AND-ed). Types not named here are not narrowed.
    pub required: Vec<String>,
}

impl ExportBound {
    /// No bound: everything.
    pub fn everything() -> Self {
        ExportBound::default()
    }

    /// Whether resources of `resource_type` may be exported at all.
    pub fn allows(&self, resource_type: ResourceType) -> bool {
        self.types.as_ref().is_none_or(|types| types.contains(&resource_type))
    }

    /// Whether some resources of `resource_type` are left out by a narrowing query.
    pub fn narrows(&self, resource_type: ResourceType) -> bool {
        self.required
            .iter()
            .any(|q| q.split_once('?').is_some_and(|(t, _)| t == resource_type.as_str()))
    }

    /// Checks that every narrowing query can be evaluated (a query that could not narrow
    /// would widen access).
    pub(crate) fn check(&self) -> Result<(), ExportError> {
        for query in &self.required {
            SearchQuery::parse_type_filter(query, Instant::now()).map_err(|e| {
                ExportError::Corrupt(format!("the access bound's query '{query}': {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_see_their_own_jobs_only() {
        let owner = JobAccess::Owner("c1".to_owned());
        assert!(owner.sees(Some("c1")));
        assert!(!owner.sees(Some("c2")));
        assert!(!owner.sees(None), "a job kicked off without a client belongs to nobody");
        assert!(JobAccess::Any.sees(None));
        let observation = ResourceType::parse("Observation").unwrap();
        let bound = ExportBound {
            types: Some([observation].into_iter().collect()),
            required: vec!["Observation?category=laboratory".to_owned()],
        };
        assert!(bound.allows(observation) && bound.narrows(observation));
        assert!(!bound.allows(ResourceType::PATIENT) && !bound.narrows(ResourceType::PATIENT));
        assert!(bound.check().is_ok());
    }
}
