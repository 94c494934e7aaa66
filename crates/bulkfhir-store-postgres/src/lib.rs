//! The PostgreSQL backend of [`ResourceStore`](bulkfhir_store::ResourceStore),
//! [`JobStore`](bulkfhir_store::JobStore) and [`ClientStore`](bulkfhir_store::ClientStore),
//! for several bulkfhir nodes on one database (`serve --database postgres://…`).
//!
//! Layout (`schema.rs`) mirrors the embedded store, so both answer the same queries the same
//! way: every version of every resource is a row of `resource_version` keyed by its global
//! sequence number `seq`, with the `seq` of the version that replaced it (`next_seq`); bodies
//! are the exact stored bytes (`bytea`, never `jsonb`, which would reorder keys and rewrite
//! numbers). Sequence numbers are assigned under one row lock, in commit order (`store.rs`),
//! which is what makes a snapshot true under concurrent writers on several nodes.
//!
//! Connections use TLS as libpq's `sslmode` and `sslrootcert` in the URL say (`tls.rs`; rustls
//! on aws-lc-rs, the server's own TLS stack).
#![warn(missing_docs)]

mod clients;
mod error;
mod jobs;
mod schema;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

pub use store::{
    CURRENTS_SQL, PostgresStore, Sequencing, create_schema, drop_schema, list_schemas,
    schema_exists,
};
