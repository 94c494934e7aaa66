//! FHIR R4 vocabulary for bulkfhir, with no I/O.
//!
//! This crate holds what every other layer speaks: resource types ([`ResourceType`]), logical ids
//! ([`ResourceId`]), server instants ([`Instant`]), the preparation of an incoming resource into the
//! exact bytes the store keeps ([`PreparedResource`]), Patient compartment membership
//! ([`compartment`]), the shared error classification ([`ErrorKind`]) and `OperationOutcome`
//! construction ([`outcome`]), and the SQL on FHIR v2 ViewDefinition engine ([`view`]).
//!
//! It sits at the bottom of the tree: `model ← store ← export ← server`.
#![warn(missing_docs)]

pub mod compartment;
pub mod elements;
mod error;
pub mod export;
mod fhirpath;
mod generated;
mod id;
mod instant;
pub mod json;
pub mod outcome;
mod prepare;
mod resource_type;
pub mod search;
pub mod tabular;
mod tenant;
pub mod view;

pub use error::{ErrorKind, ModelError, error_chain};
pub use id::ResourceId;
pub use instant::Instant;
pub use prepare::{PreparedResource, ResourceRef};
pub use resource_type::{IG_TYPES, ResourceType};
pub use tenant::{MAX_TENANT_LEN, TenantName};

#[cfg(test)]
/// This crate's folder, as cargo tells the running test; the path compiled in is only the
/// fallback (a build cache reused from another checkout points at a folder that may be gone).
pub(crate) fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), Into::into)
}
