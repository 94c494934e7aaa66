//! The resource store seam of bulkfhir.
//!
//! [`ResourceStore`] is the one trait every database backend implements (the embedded SQLite
//! default in `bulkfhir-store-embedded`, PostgreSQL later). Its contract — versioning, the global
//! sequence, snapshots, cursors and error kinds — is what the export engine builds on, and the
//! `testsuite` feature holds the conformance tests every backend must pass.
//!
//! Above the trait sit the backend-independent write workflows: FHIR transaction and batch
//! Bundles ([`bundle`]) and the NDJSON bulk loader ([`loader`]).
#![warn(missing_docs)]

pub mod bundle;
mod clients;
mod error;
pub mod jobs;
pub mod loader;
mod metered;
#[cfg(any(test, feature = "testsuite"))]
pub mod scratch;
mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod types;

pub use clients::{ClientRecord, ClientStore};
pub use error::StoreError;
pub use jobs::{JobId, JobQuery, JobRecord, JobStatus, JobStore, NewJob, UnitRecord};
pub use metered::{MeteredStore, STORE_OPERATION_SECONDS};
pub use store::ResourceStore;
pub use types::{
    Atomicity, HistoryEntry, ScanOptions, ScanPage, Snapshot, StoredResource, WriteOp,
    WriteOutcome, check_if_match,
};
