//! The embedded default backend of [`ResourceStore`](bulkfhir_store::ResourceStore) and [`JobStore`](bulkfhir_store::JobStore): one SQLite database (WAL mode) in the data
//! directory, through rusqlite.
//!
//! Layout (`schema.rs`): every version of every resource is a row of `resource_version` keyed by
//! its global sequence number (`seq`, the rowid), with the seq of the version that replaced it
//! (`next_seq`), so a snapshot read is a plain range filter `seq <= S AND next_seq > S`;
//! `compartment` indexes each version's Patient compartment membership.
//!
//! Concurrency: one writer connection behind a mutex (SQLite has one writer anyway) and a small
//! pool of reader connections; every call runs on a blocking thread. `BEGIN IMMEDIATE` makes the
//! writer the only one even when a second process (say `bulkfhir load`) opens the same file.
//! WAL checkpoints run on a thread of their own (`checkpoint.rs`), off the writer's path.
#![warn(missing_docs)]

mod bulk;
mod checkpoint;
mod clients;
mod jobs;
mod schema;
mod sqlite;

pub use sqlite::EmbeddedStore;
